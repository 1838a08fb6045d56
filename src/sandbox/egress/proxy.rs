//! The egress proxy server: HTTP CONNECT tunnels and absolute-form plain-HTTP requests, served on
//! a Unix socket (bind-mounted into local sandboxes) or on TCP (beside a sandbox on a remote
//! engine). For each request it checks the host against the policy, resolves the name itself,
//! checks every address, and only then dials, so a refusal never sends a packet anywhere. Each
//! decision is reported as an [`EgressEvent`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::event::{Decision, EgressEvent, RequestKind};
use super::http::{self, HeadError, Request};
use super::net::{Connector, Resolver, SystemResolver, TcpConnector};
use super::pattern::Host;
use super::policy::EgressPolicy;

/// Bounds on what one client may cost the proxy.
#[derive(Debug, Clone)]
pub struct ProxyLimits {
    /// Largest request head accepted (answered with 431 past it).
    pub max_head_bytes: usize,
    /// Time for a client to send its whole request head (408 after it).
    pub head_timeout: Duration,
    pub resolve_timeout: Duration,
    /// Per address tried.
    pub connect_timeout: Duration,
    /// A tunnel with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Client connections served at once; more are answered with 503.
    pub max_connections: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            head_timeout: Duration::from_secs(10),
            resolve_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_mins(10),
            max_connections: 512,
        }
    }
}

type EventSink = Box<dyn Fn(EgressEvent) + Send + Sync>;

/// An egress proxy for one policy. Configure it, then run [`EgressProxy::serve_unix`] or
/// [`EgressProxy::serve_tcp`] until the cancellation token fires.
pub struct EgressProxy {
    policy: EgressPolicy,
    resolver: Arc<dyn Resolver>,
    connector: Arc<dyn Connector>,
    on_event: EventSink,
    limits: ProxyLimits,
}

impl EgressProxy {
    /// A proxy using the system resolver and plain TCP, logging its events with `tracing` until
    /// [`EgressProxy::on_event`] says otherwise.
    #[must_use]
    pub fn new(policy: EgressPolicy) -> Self {
        Self {
            policy,
            resolver: Arc::new(SystemResolver),
            connector: Arc::new(TcpConnector),
            on_event: Box::new(|event| tracing::info!(?event, "egress")),
            limits: ProxyLimits::default(),
        }
    }

    #[must_use]
    pub fn with_resolver(mut self, resolver: impl Resolver) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// [`EgressProxy::with_resolver`] for a resolver that serves many proxies (one per sandbox).
    #[must_use]
    pub fn with_shared_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    #[must_use]
    pub fn with_connector(mut self, connector: impl Connector) -> Self {
        self.connector = Arc::new(connector);
        self
    }

    #[must_use]
    pub fn with_limits(mut self, limits: ProxyLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Where every decision goes. Called on the proxy's tasks: keep it quick (send it down a
    /// channel, append it to a log).
    #[must_use]
    pub fn on_event(mut self, sink: impl Fn(EgressEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Box::new(sink);
        self
    }

    /// Serves clients on a Unix socket (see [`bind_unix`]) until `cancel` fires, then closes
    /// every open tunnel and returns once all of them have ended.
    pub async fn serve_unix(self, listener: UnixListener, cancel: CancellationToken) {
        self.serve(listener, cancel).await;
    }

    /// Serves clients on TCP until `cancel` fires, like [`EgressProxy::serve_unix`].
    pub async fn serve_tcp(self, listener: TcpListener, cancel: CancellationToken) {
        self.serve(listener, cancel).await;
    }

    async fn serve<L: Listen>(self, listener: L, cancel: CancellationToken) {
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(self.limits.max_connections)),
            proxy: self,
            connections: AtomicU64::new(0),
        });
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let client = match accepted {
                Ok(client) => client,
                Err(error) => {
                    // Out of file descriptors and the like: report, pause, keep serving.
                    tracing::warn!(%error, "egress proxy: accepting a connection failed");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            };
            let id = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
            let shared = Arc::clone(&shared);
            let cancel = cancel.clone();
            tracker.spawn(async move { shared.handle(client, id, cancel).await });
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// Binds the proxy's Unix socket at `path`, readable and writable by everyone (mode 0666) so that
/// a sandbox's non-root user can connect through a read-only bind mount. A socket left behind by
/// an earlier process is replaced; a socket still served, or any other file, is an error. Call within a tokio runtime.
///
/// # Errors
/// When the path is too long for a Unix socket, is taken by something that is not a socket, or
/// cannot be bound.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    // sun_path holds 108 bytes including the terminating NUL.
    let len = path.as_os_str().len();
    if len > 107 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the egress socket path {} is {len} bytes long, more than the 107 a Unix socket \
                 allows; use a shorter state directory",
                path.display()
            ),
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Replace a socket nobody serves any more, never one that is still in use.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another process is serving {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Something clients connect to.
trait Listen: Send + 'static {
    type Client: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Client>> + Send;
}

impl Listen for UnixListener {
    type Client = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Client> {
        UnixListener::accept(self).await.map(|(stream, _)| stream)
    }
}

impl Listen for TcpListener {
    type Client = TcpStream;
    async fn accept(&self) -> io::Result<Self::Client> {
        let (stream, _) = TcpListener::accept(self).await?;
        // Small request heads and interactive tunnels: do not wait to fill packets.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

struct Shared {
    proxy: EgressProxy,
    slots: Arc<Semaphore>,
    connections: AtomicU64,
}

/// A connected upstream and what to send it before relaying.
struct Opened {
    upstream: TcpStream,
    first_bytes: Vec<u8>,
}

/// A request the proxy answers itself, with an error status.
struct Refusal {
    status: u16,
    decision: Decision,
    address: Option<IpAddr>,
    message: String,
    dialed: bool,
}

impl Refusal {
    /// Refused by policy or as unusable: nothing was dialed.
    fn denied(status: u16, address: Option<IpAddr>, message: String) -> Self {
        Self {
            status,
            decision: Decision::Denied,
            address,
            message,
            dialed: false,
        }
    }
}

/// What is known about a request when its decision is reported.
struct Subject {
    connection: u64,
    kind: RequestKind,
    target: Option<(Host, u16)>,
}

impl Shared {
    async fn handle<S>(&self, mut client: S, id: u64, cancel: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Ok(_slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            let subject = Subject {
                connection: id,
                kind: RequestKind::Invalid,
                target: None,
            };
            let message = "too many connections at once; try again".to_owned();
            let refusal = Refusal::denied(503, None, message);
            self.refuse(&mut client, subject, refusal).await;
            return;
        };
        let opened = tokio::select! {
            () = cancel.cancelled() => return,
            opened = self.open(&mut client, id) => opened,
        };
        if let Some(opened) = opened {
            let idle = self.proxy.limits.idle_timeout;
            tunnel(client, opened, idle, cancel).await;
        }
    }

    /// Reads the request, decides, dials. `None` when the request was refused or failed (the
    /// client has had its answer).
    async fn open<S>(&self, client: &mut S, connection: u64) -> Option<Opened>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (request, leftover) = self.read_request(client, connection).await?;
        let (kind, host, port, first_bytes) = match request {
            Request::Connect { host, port } => (RequestKind::Connect, host, port, leftover),
            Request::Http {
                host,
                port,
                mut head,
            } => {
                head.extend_from_slice(&leftover);
                (RequestKind::Http, host, port, head)
            }
        };
        let subject = Subject {
            connection,
            kind,
            target: Some((host.clone(), port)),
        };
        let (upstream, ip, allowed_by) = match self.connect(&host, port).await {
            Ok(connected) => connected,
            Err(refusal) => {
                self.refuse(client, subject, refusal).await;
                return None;
            }
        };
        if kind == RequestKind::Connect {
            let limit = self.proxy.limits.head_timeout;
            let answered = timeout(limit, client.write_all(http::CONNECTED)).await;
            if !matches!(answered, Ok(Ok(()))) {
                return None;
            }
        }
        self.emit(
            subject,
            Decision::Allowed,
            Some(ip),
            format!("allowed by `{allowed_by}`"),
            true,
        );
        Some(Opened {
            upstream,
            first_bytes,
        })
    }

    /// Reads the request head within the limits, answering the client when it cannot be used.
    async fn read_request<S>(&self, client: &mut S, connection: u64) -> Option<(Request, Vec<u8>)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let limits = &self.proxy.limits;
        let read = timeout(
            limits.head_timeout,
            http::read_request(client, limits.max_head_bytes),
        )
        .await;
        let (status, message) = match read {
            Ok(Ok(request)) => return Some(request),
            Ok(Err(HeadError::Closed | HeadError::Io(_))) => return None,
            Ok(Err(error @ HeadError::TooLarge(_))) => (431, error.to_string()),
            Ok(Err(error)) => (400, error.to_string()),
            Err(_elapsed) => (
                408,
                format!(
                    "no complete request head within {} s",
                    limits.head_timeout.as_secs()
                ),
            ),
        };
        let subject = Subject {
            connection,
            kind: RequestKind::Invalid,
            target: None,
        };
        self.refuse(client, subject, Refusal::denied(status, None, message))
            .await;
        None
    }

    /// Checks the target, resolves it, checks every address, and only then dials. Returns the
    /// connection, the address and the allowlist entry that allowed it.
    async fn connect(
        &self,
        host: &Host,
        port: u16,
    ) -> Result<(TcpStream, IpAddr, String), Refusal> {
        let policy = &self.proxy.policy;
        let allowed_by = policy
            .check_target(host, port)
            .map_err(|denial| Refusal::denied(403, None, denial.to_string()))?
            .to_string();
        let ips = self.resolve(host).await.map_err(|message| Refusal {
            status: 502,
            decision: Decision::Failed,
            address: None,
            message,
            dialed: false,
        })?;
        // Every address is checked before any is dialed: a name with one bad address is refused.
        for &ip in &ips {
            policy
                .check_address(host, ip)
                .map_err(|denial| Refusal::denied(403, Some(ip), denial.to_string()))?;
        }
        let (upstream, ip) = self
            .dial(&ips, port)
            .await
            .map_err(|(status, why)| Refusal {
                status,
                decision: Decision::Failed,
                address: None,
                message: format!("could not connect to {host}:{port}: {why}"),
                dialed: true,
            })?;
        Ok((upstream, ip, allowed_by))
    }

    async fn resolve(&self, host: &Host) -> Result<Vec<IpAddr>, String> {
        let name = match host {
            Host::Ip(ip) => return Ok(vec![*ip]),
            Host::Name(name) => name,
        };
        let limit = self.proxy.limits.resolve_timeout;
        match timeout(limit, self.proxy.resolver.resolve(name)).await {
            Ok(Ok(ips)) if ips.is_empty() => Err(format!("{name} does not resolve")),
            Ok(Ok(ips)) => Ok(ips),
            Ok(Err(error)) => Err(format!("could not resolve {name}: {error}")),
            Err(_) => Err(format!(
                "resolving {name} took longer than {} s",
                limit.as_secs()
            )),
        }
    }

    /// Tries each address in turn. On failure, the status to answer (502, or 504 when the last
    /// attempt timed out) and why.
    async fn dial(&self, ips: &[IpAddr], port: u16) -> Result<(TcpStream, IpAddr), (u16, String)> {
        let limit = self.proxy.limits.connect_timeout;
        let mut failure = (502, String::from("no address to try"));
        for &ip in ips {
            match timeout(
                limit,
                self.proxy.connector.connect(SocketAddr::new(ip, port)),
            )
            .await
            {
                Ok(Ok(stream)) => return Ok((stream, ip)),
                Ok(Err(error)) => failure = (502, format!("{ip}: {error}")),
                Err(_) => failure = (504, format!("{ip}: timed out after {} s", limit.as_secs())),
            }
        }
        Err(failure)
    }

    /// Reports the refusal, then answers the client and closes.
    async fn refuse<S>(&self, client: &mut S, subject: Subject, refusal: Refusal)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let answer = http::response(refusal.status, &refusal.message);
        self.emit(
            subject,
            refusal.decision,
            refusal.address,
            refusal.message,
            refusal.dialed,
        );
        let linger = self.proxy.limits.head_timeout.min(Duration::from_secs(2));
        let _ = timeout(linger, async {
            client.write_all(&answer).await?;
            client.shutdown().await?;
            // Read what the client sent past the point where we stopped listening: closing with
            // unread input makes the kernel reset the connection, and the answer would be lost.
            let mut sink = [0; 4096];
            let mut drained = 0;
            while drained < 1 << 20 {
                match client.read(&mut sink).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            io::Result::Ok(())
        })
        .await;
    }

    fn emit(
        &self,
        subject: Subject,
        decision: Decision,
        address: Option<IpAddr>,
        reason: String,
        dialed: bool,
    ) {
        let (host, port) = match subject.target {
            Some((host, port)) => (Some(host.to_string()), Some(port)),
            None => (None, None),
        };
        (self.proxy.on_event)(EgressEvent {
            connection: subject.connection,
            kind: subject.kind,
            host,
            port,
            decision,
            address,
            reason,
            dialed,
        });
    }
}

/// Relays bytes both ways until both sides are done, the tunnel sits idle for `idle`, or the
/// proxy shuts down.
async fn tunnel<S>(client: S, opened: Opened, idle: Duration, cancel: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let activity = Activity::new();
    let mut client = Tracked {
        inner: client,
        activity: activity.clone(),
    };
    let Opened {
        mut upstream,
        first_bytes,
    } = opened;
    let relay = async {
        upstream.write_all(&first_bytes).await?;
        activity.touch();
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    };
    tokio::select! {
        result = relay => {
            if let Err(error) = result {
                tracing::debug!(%error, "egress tunnel ended with an error");
            }
        }
        () = activity.idle_for(idle) => tracing::debug!("egress tunnel closed after being idle"),
        () = cancel.cancelled() => {}
    }
}

/// When a tunnel last moved a byte.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_millis: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_millis: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(millis, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
            let deadline = self.start + last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// The client side of a tunnel, noting activity in both directions (reads are uploads, writes
/// are downloads).
struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
