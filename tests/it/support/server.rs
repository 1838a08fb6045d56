//! An axum app served on 127.0.0.1:0 on a thread and runtime of its own, so that tests may block
//! (on git, on a child process) without stalling it. Dropping the handle stops it.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use axum::Router;
use tokio::sync::oneshot;

pub struct Served {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    /// Binds, then builds the app with the bound address (servers that put their own URL in
    /// responses need it) and serves it.
    pub fn start(app: impl FnOnce(SocketAddr) -> Router + Send + 'static) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1:0");
                let addr = listener.local_addr().expect("local addr");
                let app = app(addr);
                addr_tx.send(addr).expect("the test waits for the address");
                tokio::select! {
                    served = axum::serve(listener, app) => served.expect("serve"),
                    _ = stop_rx => {}
                }
            });
        });
        let addr = addr_rx.recv().expect("the server started");
        Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
