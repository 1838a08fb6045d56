//! The egress proxy server: HTTP CONNECT tunnels and absolute-form plain-HTTP requests, served on
//! a Unix socket (bind-mounted into local sandboxes) or on TCP (beside a sandbox on a remote
//! engine). For each request it checks the host against the policy, resolves the name itself,
//! checks every address, and only then dials, so a refusal never sends a packet anywhere. Each
//! decision is reported as an [`EgressEvent`].
//!
//! What is checked beyond the name: a tunnel to port 443 must open with a TLS ClientHello naming
//! the CONNECT host (read before dialing); a plain-HTTP request must name one host in its URL and
//! `Host` header alike, have unambiguous framing, and be the only request of its connection.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::body;
use super::event::{Decision, EgressEvent, MAX_REASON, RequestKind, printable};
use super::http::{self, HeadError, HttpRequest, Request};
use super::net::{Connector, Resolver, SystemResolver, TcpConnector};
use super::pattern::{Access, Host, TLS_PORT};
use super::policy::EgressPolicy;
use super::tls::{self, ClientHello, HelloError};

/// Bounds on what one client may cost the proxy.
#[derive(Debug, Clone)]
pub struct ProxyLimits {
    /// Largest request head accepted (answered with 431 past it).
    pub max_head_bytes: usize,
    /// Time for a client to send its whole request head (408 after it), and, in a tunnel to
    /// port 443, its whole TLS ClientHello.
    pub head_timeout: Duration,
    pub resolve_timeout: Duration,
    /// Per address tried.
    pub connect_timeout: Duration,
    /// A tunnel or exchange with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Client connections served at once; a few more are answered with 503, and beyond those the
    /// proxy stops accepting until one ends (clients wait in the socket's backlog), so that one
    /// sandbox cannot exhaust the daemon's file descriptors.
    pub max_connections: usize,
    /// Largest TLS ClientHello accepted at the start of a tunnel to port 443.
    pub max_client_hello_bytes: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            head_timeout: Duration::from_secs(10),
            resolve_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_mins(10),
            max_connections: 256,
            max_client_hello_bytes: 32 * 1024,
        }
    }
}

/// Connections accepted beyond [`ProxyLimits::max_connections`] only to be told 503.
const REFUSAL_SLOTS: usize = 16;
/// Addresses of one name tried in turn before giving up (all of them are checked first).
const MAX_DIAL_ADDRESSES: usize = 4;

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

    /// Where every decision goes. Called on the proxy's tasks, which wait for it: keep it quick
    /// and bounded (`try_send` down a bounded channel, counting what it drops). The proxy keeps
    /// no queue of its own; it makes at most two events per client connection.
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
        let serving = self
            .limits
            .max_connections
            .min(Semaphore::MAX_PERMITS - REFUSAL_SLOTS);
        let admitted = Arc::new(Semaphore::new(serving + REFUSAL_SLOTS));
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(serving)),
            proxy: self,
            connections: AtomicU64::new(0),
        });
        let tracker = TaskTracker::new();
        loop {
            // Accept only with a permit in hand: past the limit, clients queue in the kernel's
            // backlog instead of costing this process a descriptor and a task each.
            let admission = tokio::select! {
                () = cancel.cancelled() => break,
                permit = Arc::clone(&admitted).acquire_owned() => permit,
            };
            let Ok(admission) = admission else { break };
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
            tracker.spawn(async move {
                shared.handle(client, id, cancel).await;
                drop(admission);
            });
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

/// A connected upstream and what to do with it.
enum Opened {
    /// Relay bytes both ways, starting with `first_bytes` from the client.
    Tunnel {
        upstream: TcpStream,
        first_bytes: Vec<u8>,
    },
    /// Send one checked request and relay the response.
    Http {
        upstream: TcpStream,
        request: HttpRequest,
        leftover: Vec<u8>,
    },
}

/// A request the proxy refuses or cannot carry out.
struct Refusal {
    /// The HTTP status to answer with; `None` once a tunnel is established, when only closing
    /// (after `answer`, raw bytes such as a TLS alert) is left.
    status: Option<u16>,
    decision: Decision,
    address: Option<IpAddr>,
    message: String,
    dialed: bool,
    answer: &'static [u8],
}

impl Refusal {
    /// Refused by policy or as unusable: nothing was dialed.
    fn denied(status: u16, address: Option<IpAddr>, message: String) -> Self {
        Self {
            status: Some(status),
            decision: Decision::Denied,
            address,
            message,
            dialed: false,
            answer: b"",
        }
    }

    /// Refused inside an established tunnel (the `200` is sent): nothing was dialed.
    fn in_tunnel(message: String, answer: &'static [u8]) -> Self {
        Self {
            status: None,
            decision: Decision::Denied,
            address: None,
            message,
            dialed: false,
            answer,
        }
    }

    fn failed(status: u16, message: String, dialed: bool) -> Self {
        Self {
            status: Some(status),
            decision: Decision::Failed,
            address: None,
            message,
            dialed,
            answer: b"",
        }
    }
}

/// What is known about a request when its decision is reported.
struct Subject {
    connection: u64,
    kind: RequestKind,
    target: Option<(Host, u16)>,
}

/// A target that passed the policy, with its checked addresses.
struct Checked {
    ips: Vec<IpAddr>,
    allowed_by: String,
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
            let message = format!(
                "too many connections at once (at most {}); try again",
                self.proxy.limits.max_connections
            );
            let refusal = Refusal::denied(503, None, message);
            self.refuse(&mut client, subject, refusal).await;
            return;
        };
        let opened = tokio::select! {
            () = cancel.cancelled() => return,
            opened = self.open(&mut client, id) => opened,
        };
        let idle = self.proxy.limits.idle_timeout;
        match opened {
            Some(Opened::Tunnel {
                upstream,
                first_bytes,
            }) => tunnel(client, upstream, first_bytes, idle, cancel).await,
            Some(Opened::Http {
                upstream,
                request,
                leftover,
            }) => {
                self.exchange(client, upstream, request, leftover, id, cancel)
                    .await;
            }
            None => {}
        }
    }

    /// Reads the request, decides, dials. `None` when the request was refused or failed (the
    /// client has had its answer).
    async fn open<S>(&self, client: &mut S, connection: u64) -> Option<Opened>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (request, leftover) = self.read_request(client, connection).await?;
        match request {
            Request::Connect { host, port } => {
                self.open_tunnel(client, connection, host, port, leftover)
                    .await
            }
            Request::Http(request) => {
                let subject = Subject {
                    connection,
                    kind: RequestKind::Http,
                    target: Some((request.host.clone(), request.port)),
                };
                let dialed = self
                    .check_and_dial(&request.host, request.port, Access::Http)
                    .await;
                let (upstream, ip, allowed_by) = match dialed {
                    Ok(dialed) => dialed,
                    Err(refusal) => {
                        self.refuse(client, subject, refusal).await;
                        return None;
                    }
                };
                let reason = format!("allowed by `{allowed_by}`");
                self.emit(subject, Decision::Allowed, Some(ip), reason, true);
                Some(Opened::Http {
                    upstream,
                    request,
                    leftover,
                })
            }
        }
    }

    /// A CONNECT: to port 443, the tunnel must start with a TLS ClientHello naming the host,
    /// read before anything is dialed; to another (explicitly listed) port, it is not inspected.
    async fn open_tunnel<S>(
        &self,
        client: &mut S,
        connection: u64,
        host: Host,
        port: u16,
        leftover: Vec<u8>,
    ) -> Option<Opened>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let subject = Subject {
            connection,
            kind: RequestKind::Connect,
            target: Some((host.clone(), port)),
        };
        let limit = self.proxy.limits.head_timeout;
        if port != TLS_PORT {
            let (upstream, ip, allowed_by) =
                match self.check_and_dial(&host, port, Access::Connect).await {
                    Ok(dialed) => dialed,
                    Err(refusal) => {
                        self.refuse(client, subject, refusal).await;
                        return None;
                    }
                };
            let answered = timeout(limit, client.write_all(http::CONNECTED)).await;
            if !matches!(answered, Ok(Ok(()))) {
                return None;
            }
            let reason = format!("allowed by `{allowed_by}` (a tunnel not inspected)");
            self.emit(subject, Decision::Allowed, Some(ip), reason, true);
            return Some(Opened::Tunnel {
                upstream,
                first_bytes: leftover,
            });
        }
        let checked = match self.check(&host, port, Access::Connect).await {
            Ok(checked) => checked,
            Err(refusal) => {
                self.refuse(client, subject, refusal).await;
                return None;
            }
        };
        let answered = timeout(limit, client.write_all(http::CONNECTED)).await;
        if !matches!(answered, Ok(Ok(()))) {
            return None;
        }
        let max = self.proxy.limits.max_client_hello_bytes;
        let hello = match timeout(limit, read_client_hello(client, leftover, max)).await {
            Ok(Ok(hello)) => hello,
            Ok(Err(HelloRead::Closed)) => return None,
            Ok(Err(HelloRead::Invalid(error))) => {
                let message = format!("{error}; a tunnel to port 443 must carry TLS");
                let answer = match error {
                    HelloError::NotTls => &b""[..],
                    _ => tls::UNRECOGNIZED_NAME_ALERT,
                };
                self.refuse(client, subject, Refusal::in_tunnel(message, answer))
                    .await;
                return None;
            }
            Err(_elapsed) => {
                let message = format!("no TLS ClientHello within {} s", limit.as_secs());
                self.refuse(client, subject, Refusal::in_tunnel(message, b""))
                    .await;
                return None;
            }
        };
        if let Err(message) = tls::check_server_name(&hello.0, &host) {
            let refusal = Refusal::in_tunnel(message, tls::UNRECOGNIZED_NAME_ALERT);
            self.refuse(client, subject, refusal).await;
            return None;
        }
        let (upstream, ip) = match self.dial(&host, port, &checked.ips).await {
            Ok(dialed) => dialed,
            Err(mut refusal) => {
                refusal.status = None;
                self.refuse(client, subject, refusal).await;
                return None;
            }
        };
        let reason = format!(
            "allowed by `{}` (TLS server name checked)",
            checked.allowed_by
        );
        self.emit(subject, Decision::Allowed, Some(ip), reason, true);
        Some(Opened::Tunnel {
            upstream,
            first_bytes: hello.1,
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
            Ok(Err(error @ (HeadError::TooLarge(_) | HeadError::LineTooLong))) => {
                (431, error.to_string())
            }
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

    /// [`Shared::check`], then [`Shared::dial`]. Returns the connection, the address and the
    /// allowlist entry that allowed it.
    async fn check_and_dial(
        &self,
        host: &Host,
        port: u16,
        access: Access,
    ) -> Result<(TcpStream, IpAddr, String), Refusal> {
        let checked = self.check(host, port, access).await?;
        let (upstream, ip) = self.dial(host, port, &checked.ips).await?;
        Ok((upstream, ip, checked.allowed_by))
    }

    /// Checks the target, resolves it and checks every address; nothing is dialed.
    async fn check(&self, host: &Host, port: u16, access: Access) -> Result<Checked, Refusal> {
        let policy = &self.proxy.policy;
        let allowed_by = policy
            .check_target(host, port, access)
            .map_err(|denial| Refusal::denied(403, None, denial.to_string()))?
            .to_string();
        let ips = self
            .resolve(host)
            .await
            .map_err(|message| Refusal::failed(502, message, false))?;
        // Every address is checked before any is dialed: a name with one bad address is refused.
        for &ip in &ips {
            policy
                .check_address(host, ip)
                .map_err(|denial| Refusal::denied(403, Some(ip), denial.to_string()))?;
        }
        Ok(Checked { ips, allowed_by })
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

    /// Tries the checked addresses in turn (the first few): 502 when none answers, 504 when the
    /// last attempt timed out.
    async fn dial(
        &self,
        host: &Host,
        port: u16,
        ips: &[IpAddr],
    ) -> Result<(TcpStream, IpAddr), Refusal> {
        let limit = self.proxy.limits.connect_timeout;
        let mut failure = (502, String::from("no address to try"));
        for &ip in ips.iter().take(MAX_DIAL_ADDRESSES) {
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
        let (status, why) = failure;
        Err(Refusal::failed(
            status,
            format!("could not connect to {host}:{port}: {why}"),
            true,
        ))
    }

    /// Forwards one checked plain-HTTP request and relays its response. Anything the client
    /// sends after the request's body is not forwarded: a second request on the connection is
    /// reported as refused (it could name another host), and the connection ends with the
    /// response.
    async fn exchange<S>(
        &self,
        client: S,
        upstream: TcpStream,
        request: HttpRequest,
        leftover: Vec<u8>,
        connection: u64,
        cancel: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let activity = Activity::new();
        let client = Tracked {
            inner: client,
            activity: activity.clone(),
        };
        let (client_read, mut client_write) = tokio::io::split(client);
        let mut from_client = BufReader::new(io::Cursor::new(leftover).chain(client_read));
        let (mut from_upstream, mut to_upstream) = upstream.into_split();
        let requested = async {
            to_upstream.write_all(&request.head).await?;
            body::forward(request.body, &mut from_client, &mut to_upstream).await?;
            to_upstream.flush().await?;
            activity.touch();
            self.refuse_further_requests(&mut from_client, connection)
                .await;
            // The response may still be on its way: only its end, or idleness, ends this.
            std::future::pending::<()>().await;
            Ok::<(), body::BodyError>(())
        };
        let responded = async {
            let copied = tokio::io::copy(&mut from_upstream, &mut client_write).await;
            let _ = client_write.shutdown().await;
            copied
        };
        tokio::select! {
            result = requested => {
                if let Err(error) = result {
                    tracing::debug!(%error, "egress: plain-HTTP request not carried to its end");
                }
            }
            result = responded => {
                if let Err(error) = result {
                    tracing::debug!(%error, "egress: plain-HTTP response ended with an error");
                }
            }
            () = activity.idle_for(self.proxy.limits.idle_timeout) => {
                tracing::debug!("egress exchange closed after being idle");
            }
            () = cancel.cancelled() => {}
        }
    }

    /// Waits for bytes after a forwarded request and reports them as a refused request.
    async fn refuse_further_requests<R>(&self, from_client: &mut R, connection: u64)
    where
        R: AsyncRead + Unpin,
    {
        let limits = &self.proxy.limits;
        let mut first = [0; 1];
        let Ok(1) = from_client.read(&mut first).await else {
            return;
        };
        let read = timeout(
            limits.head_timeout,
            http::read_request_after(from_client, first.to_vec(), limits.max_head_bytes),
        )
        .await;
        let (kind, target) = match read {
            Ok(Ok((Request::Connect { host, port }, _))) => {
                (RequestKind::Connect, Some((host, port)))
            }
            Ok(Ok((Request::Http(next), _))) => (RequestKind::Http, Some((next.host, next.port))),
            _ => (RequestKind::Invalid, None),
        };
        let subject = Subject {
            connection,
            kind,
            target,
        };
        let reason = "only one request per connection is forwarded, so that a connection \
                      cannot switch hosts; send the next request on a new connection"
            .to_owned();
        self.emit(subject, Decision::Denied, None, reason, false);
    }

    /// Reports the refusal, then answers the client and closes.
    async fn refuse<S>(&self, client: &mut S, subject: Subject, refusal: Refusal)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let message = printable(&refusal.message, MAX_REASON);
        let answer = match refusal.status {
            Some(status) => http::response(status, &message),
            None => refusal.answer.to_vec(),
        };
        self.emit(
            subject,
            refusal.decision,
            refusal.address,
            message,
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
            reason: printable(&reason, MAX_REASON),
            dialed,
        });
    }
}

/// Why no ClientHello could be read.
enum HelloRead {
    /// The client went away; nobody to tell.
    Closed,
    Invalid(HelloError),
}

/// Reads from the client until its first bytes hold a complete ClientHello. Returns it and every
/// byte read (to be sent on once the tunnel is allowed).
async fn read_client_hello<S: AsyncRead + Unpin>(
    client: &mut S,
    mut buffer: Vec<u8>,
    max: usize,
) -> Result<(ClientHello, Vec<u8>), HelloRead> {
    // A ClientHello of `max` bytes in records of one byte each, plus one full record after it.
    let cap = max.saturating_mul(6).saturating_add(1 << 15);
    loop {
        match tls::parse_client_hello(&buffer, max) {
            Ok(Some(hello)) => return Ok((hello, buffer)),
            Ok(None) => {}
            Err(error) => return Err(HelloRead::Invalid(error)),
        }
        if buffer.len() > cap {
            return Err(HelloRead::Invalid(HelloError::TooLarge(max)));
        }
        let mut chunk = [0; 4096];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(HelloRead::Closed),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Relays bytes both ways until both sides are done, the tunnel sits idle for `idle`, or the
/// proxy shuts down.
async fn tunnel<S>(
    client: S,
    mut upstream: TcpStream,
    first_bytes: Vec<u8>,
    idle: Duration,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let activity = Activity::new();
    let mut client = Tracked {
        inner: client,
        activity: activity.clone(),
    };
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
