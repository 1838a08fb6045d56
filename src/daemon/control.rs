//! How `maxions cancel` reaches a running daemon: a Unix socket in the state dir (0600, so only
//! the daemon's user), one JSON request line and one JSON reply line per connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// The socket's file name in the state dir.
pub const SOCKET: &str = "daemon.sock";
/// A request longer than this is refused (the socket is local, but still input).
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Cancels a task's queued and running runs, or one run: `target` is a run id, a task
    /// file's path (absolute), or a task file's name without `.yaml`.
    Cancel { target: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    /// What was done, one line each, or why nothing was.
    pub lines: Vec<String>,
}

/// A request with where its reply goes, for the daemon's loop.
#[derive(Debug)]
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}

/// Where `dir`'s daemon listens.
#[must_use]
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// Listens on the state dir's socket. The caller holds the state dir's lock, so a socket file
/// found there is a dead daemon's and is replaced.
///
/// # Errors
/// When the socket cannot be made.
pub fn listen(state_dir: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts connections until the listener's task is aborted, handing each request to `calls`.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(answer(stream, calls.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "control socket: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn answer(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    let reply =
        match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await {
            Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    if calls.send(Call { request, reply: tx }).await.is_err() {
                        refused("the daemon is stopping")
                    } else {
                        rx.await
                            .unwrap_or_else(|_| refused("the daemon is stopping"))
                    }
                }
                Err(error) => refused(&format!("not a request: {error}")),
            },
            _ => refused("no request received"),
        };
    if let Ok(mut json) = serde_json::to_vec(&reply) {
        json.push(b'\n');
        let _ = write.write_all(&json).await;
    }
}

fn refused(why: &str) -> Reply {
    Reply {
        ok: false,
        lines: vec![why.to_owned()],
    }
}

/// Why a request did not reach a daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no maxions daemon is running for the state dir {} (no socket at {}); start one with `maxions daemon`", dir.display(), socket.display())]
    NotRunning { dir: PathBuf, socket: PathBuf },
    #[error("the daemon at {} did not answer: {detail}", socket.display())]
    NoAnswer { socket: PathBuf, detail: String },
}

/// Sends one request to the daemon of `state_dir` and waits for its reply.
///
/// # Errors
/// [`ClientError`] when no daemon listens or it does not answer.
pub async fn send(state_dir: &Path, request: &Request) -> Result<Reply, ClientError> {
    let socket = socket_path(state_dir);
    let no_answer = |detail: String| ClientError::NoAnswer {
        socket: socket.clone(),
        detail,
    };
    let stream = UnixStream::connect(&socket)
        .await
        .map_err(|_| ClientError::NotRunning {
            dir: state_dir.to_path_buf(),
            socket: socket.clone(),
        })?;
    let (read, mut write) = stream.into_split();
    let mut json = serde_json::to_vec(request).map_err(|e| no_answer(e.to_string()))?;
    json.push(b'\n');
    write
        .write_all(&json)
        .await
        .map_err(|e| no_answer(e.to_string()))?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(read).read_line(&mut line),
    )
    .await
    .map_err(|_| no_answer("no reply within 30s".into()))?
    .map_err(|e| no_answer(e.to_string()))?;
    serde_json::from_str(&line).map_err(|e| no_answer(format!("unreadable reply: {e}")))
}
