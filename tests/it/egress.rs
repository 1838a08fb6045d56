//! The egress proxy end to end, on this machine only: every allowed name resolves to 127.0.0.1,
//! where the test runs its own HTTP server, and the proxy dials through a connector that refuses
//! anything but 127.0.0.1 (and carries the web ports 80 and 443 to the test's servers). Denials
//! are proven by the proxy's own events (nothing dialed) and by that connector's record of what
//! it was asked to dial.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maxions::sandbox::egress::relay::EgressDir;
use maxions::sandbox::egress::{
    BoxFuture, Connector, Decision, EgressEvent, EgressPolicy, EgressProxy, ProxyLimits,
    RequestKind, StaticResolver, bind_unix,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(10);

/// A plain HTTP server on 127.0.0.1 that answers every request with a fixed body and keeps the
/// request heads it saw.
struct Upstream {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

const BODY: &str = "hello from upstream";

impl Upstream {
    async fn start() -> Self {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let heads = Arc::clone(&heads);
            let cancel = cancel.clone();
            async move {
                let tracker = tokio_util::task::TaskTracker::new();
                loop {
                    let (mut stream, _) = tokio::select! {
                        () = cancel.cancelled() => break,
                        accepted = listener.accept() => accepted.unwrap(),
                    };
                    let heads = Arc::clone(&heads);
                    tracker.spawn(async move {
                        let head = read_head(&mut stream).await;
                        heads.lock().unwrap().push(head);
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
                            BODY.len()
                        );
                        let _ = stream.write_all(reply.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
                tracker.close();
                tracker.wait().await;
            }
        });
        Self {
            port,
            heads,
            cancel,
            task,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

/// Reads up to the blank line that ends an HTTP head.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Dials 127.0.0.1 only, and records every address it was asked to dial. Ports listed in
/// `redirect` are dialed on another port of 127.0.0.1 (a test cannot listen on 443 or 80).
#[derive(Clone, Default)]
struct LoopbackOnly {
    asked: Arc<Mutex<Vec<SocketAddr>>>,
    redirect: Vec<(u16, u16)>,
}

impl LoopbackOnly {
    fn redirecting(redirect: &[(u16, u16)]) -> Self {
        Self {
            redirect: redirect.to_vec(),
            ..Self::default()
        }
    }
}

impl Connector for LoopbackOnly {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
        self.asked.lock().unwrap().push(addr);
        let port = self
            .redirect
            .iter()
            .find(|(from, _)| *from == addr.port())
            .map_or(addr.port(), |(_, to)| *to);
        Box::pin(async move {
            if addr.ip() != LOOPBACK {
                return Err(io::Error::other("test guard: only 127.0.0.1 may be dialed"));
            }
            TcpStream::connect((LOOPBACK, port)).await
        })
    }
}

/// A proxy serving a Unix socket in a temporary directory.
struct Proxy {
    socket: PathBuf,
    events: mpsc::UnboundedReceiver<EgressEvent>,
    dialer: LoopbackOnly,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn proxy(policy: EgressPolicy, resolver: StaticResolver) -> EgressProxy {
    EgressProxy::new(policy).with_resolver(resolver)
}

impl Proxy {
    async fn start(proxy: EgressProxy) -> Self {
        Self::start_with(proxy, LoopbackOnly::default()).await
    }

    /// A proxy whose dials to port 443 and 80 reach `port` on 127.0.0.1.
    async fn start_web(proxy: EgressProxy, port: u16) -> Self {
        Self::start_with(proxy, LoopbackOnly::redirecting(&[(443, port), (80, port)])).await
    }

    async fn start_with(proxy: EgressProxy, dialer: LoopbackOnly) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("egress.sock");
        let listener = bind_unix(&socket).unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let proxy = proxy.with_connector(dialer.clone()).on_event(move |event| {
            let _ = tx.send(event);
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(proxy.serve_unix(listener, cancel.clone()));
        Self {
            socket,
            events,
            dialer,
            cancel,
            task,
            _dir: dir,
        }
    }

    async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket).await.unwrap()
    }

    /// Sends one request and reads the whole answer.
    async fn exchange(&self, request: &str) -> String {
        exchange(self.connect().await, request).await
    }

    async fn event(&mut self) -> EgressEvent {
        timeout(WAIT, self.events.recv())
            .await
            .expect("an event in time")
            .expect("the proxy is running")
    }

    fn dialed(&self) -> Vec<SocketAddr> {
        self.dialer.asked.lock().unwrap().clone()
    }

    /// No event has arrived (beyond those already read).
    fn no_more_events(&mut self) {
        if let Ok(event) = self.events.try_recv() {
            panic!("unexpected event: {event:?}");
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        timeout(WAIT, self.task)
            .await
            .expect("shutdown in time")
            .unwrap();
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

fn allowed(port: u16) -> EgressPolicy {
    EgressPolicy::parse([format!("allowed.test:{port}")])
        .unwrap()
        .allow_loopback_for_tests()
}

fn resolver() -> StaticResolver {
    StaticResolver::new().with("allowed.test", [LOOPBACK])
}

fn get(port: u16) -> String {
    format!("GET http://allowed.test:{port}/path?q=1 HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n")
}

#[tokio::test]
async fn connect_to_an_allowed_host_tunnels_to_the_server() {
    let upstream = Upstream::start().await;
    let mut proxy = Proxy::start(proxy(allowed(upstream.port), resolver())).await;

    let mut client = proxy.connect().await;
    let connect = format!("CONNECT allowed.test:{} HTTP/1.1\r\n\r\n", upstream.port);
    client.write_all(connect.as_bytes()).await.unwrap();
    assert_eq!(
        read_head(&mut client).await,
        "HTTP/1.1 200 Connection Established\r\n\r\n"
    );
    // Inside the tunnel the bytes are the client's own: here, plain HTTP in origin form.
    let answer = exchange(client, "GET /inside HTTP/1.1\r\nHost: allowed.test\r\n\r\n").await;
    assert!(answer.ends_with(BODY), "{answer}");
    assert!(upstream.heads()[0].starts_with("GET /inside HTTP/1.1\r\n"));

    let event = proxy.event().await;
    assert_eq!(event.kind, RequestKind::Connect);
    assert_eq!(event.decision, Decision::Allowed);
    assert_eq!(event.host.as_deref(), Some("allowed.test"));
    assert_eq!(event.port, Some(upstream.port));
    assert_eq!(event.address, Some(LOOPBACK));
    assert!(event.dialed);
    assert_eq!(
        event.reason,
        format!(
            "allowed by `allowed.test:{}` (a tunnel not inspected)",
            upstream.port
        )
    );
    proxy.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn plain_http_to_an_allowed_host_is_forwarded_in_origin_form() {
    let upstream = Upstream::start().await;
    let mut proxy = Proxy::start(proxy(allowed(upstream.port), resolver())).await;

    let answer = proxy.exchange(&get(upstream.port)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with(BODY), "{answer}");
    let head = &upstream.heads()[0];
    assert!(head.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("Host: allowed.test:{}\r\n", upstream.port)),
        "{head}"
    );
    assert!(head.contains("Connection: close\r\n"), "{head}");

    let event = proxy.event().await;
    assert_eq!(
        (event.kind, event.decision),
        (RequestKind::Http, Decision::Allowed)
    );
    proxy.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn the_proxy_serves_tcp_too() {
    let upstream = Upstream::start().await;
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let server = proxy(allowed(upstream.port), resolver()).with_connector(LoopbackOnly::default());
    let task = tokio::spawn(server.serve_tcp(listener, cancel.clone()));

    let answer = exchange(TcpStream::connect(addr).await.unwrap(), &get(upstream.port)).await;
    assert!(answer.ends_with(BODY), "{answer}");
    cancel.cancel();
    timeout(WAIT, task).await.unwrap().unwrap();
    upstream.stop().await;
}

/// Asserts a 403 whose event says it was denied before anything was dialed.
async fn assert_denied_before_dialing(
    proxy: &mut Proxy,
    request: &str,
    reason: &str,
) -> EgressEvent {
    let answer = proxy.exchange(request).await;
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    assert!(answer.contains(reason), "{answer}");
    let event = proxy.event().await;
    assert_eq!(event.decision, Decision::Denied);
    assert!(!event.dialed, "{event:?}");
    assert!(event.reason.contains(reason), "{event:?}");
    assert_eq!(
        proxy.dialed(),
        [],
        "nothing may be dialed for a denied request"
    );
    event
}

#[tokio::test]
async fn an_unlisted_host_is_refused() {
    let resolver = resolver().with("other.test", [LOOPBACK]);
    let mut proxy = Proxy::start(proxy(allowed(8080), resolver)).await;
    let event = assert_denied_before_dialing(
        &mut proxy,
        "CONNECT other.test:8080 HTTP/1.1\r\n\r\n",
        "other.test:8080 is not in the egress allowlist",
    )
    .await;
    assert_eq!(event.host.as_deref(), Some("other.test"));
    // The right host on another port is not listed either.
    assert_denied_before_dialing(
        &mut proxy,
        "CONNECT allowed.test:8081 HTTP/1.1\r\n\r\n",
        "not in",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_empty_allowlist_refuses_everything() {
    let policy = EgressPolicy::closed().allow_loopback_for_tests();
    let mut proxy = Proxy::start(proxy(policy, resolver())).await;
    assert_denied_before_dialing(
        &mut proxy,
        "CONNECT allowed.test:443 HTTP/1.1\r\n\r\n",
        "allowlist is empty",
    )
    .await;
    assert_denied_before_dialing(&mut proxy, &get(80), "allowlist is empty").await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_raw_ip_that_is_not_listed_is_refused() {
    let upstream = Upstream::start().await;
    let mut proxy = Proxy::start(proxy(allowed(upstream.port), resolver())).await;
    let connect = format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", upstream.port);
    assert_denied_before_dialing(&mut proxy, &connect, "raw IP address 127.0.0.1").await;
    let connect = format!("CONNECT [::1]:{} HTTP/1.1\r\n\r\n", upstream.port);
    assert_denied_before_dialing(&mut proxy, &connect, "raw IP address ::1").await;
    proxy.stop().await;
    assert!(upstream.heads().is_empty());
    upstream.stop().await;
}

#[tokio::test]
async fn names_that_resolve_to_forbidden_addresses_are_refused_before_dialing() {
    // The resolver hands these out; the proxy must refuse them without dialing (and the test
    // connector would refuse to dial them anyway).
    let cases = [
        ("169.254.169.254", "link-local"),
        ("10.0.0.1", "private"),
        ("100.64.0.1", "CGNAT"),
        (
            "::ffff:127.0.0.1",
            "IPv4-mapped IPv6 form of a loopback address",
        ),
        (
            "::ffff:169.254.169.254",
            "IPv4-mapped IPv6 form of a link-local",
        ),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
    ];
    for (ip, reason) in cases {
        let ip: IpAddr = ip.parse().unwrap();
        let resolver = StaticResolver::new().with("allowed.test", [ip]);
        let mut proxy = Proxy::start(proxy(allowed(443), resolver)).await;
        let event = assert_denied_before_dialing(
            &mut proxy,
            "CONNECT allowed.test:443 HTTP/1.1\r\n\r\n",
            reason,
        )
        .await;
        assert_eq!(event.address, Some(ip));
        assert!(
            event.reason.contains("refused before connecting"),
            "{event:?}"
        );
        proxy.stop().await;
    }
}

#[tokio::test]
async fn one_forbidden_address_among_good_ones_refuses_the_name() {
    let resolver =
        StaticResolver::new().with("allowed.test", [LOOPBACK, "10.0.0.1".parse().unwrap()]);
    let mut proxy = Proxy::start(proxy(allowed(443), resolver)).await;
    assert_denied_before_dialing(
        &mut proxy,
        "CONNECT allowed.test:443 HTTP/1.1\r\n\r\n",
        "10.0.0.1",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn loopback_needs_the_test_switch() {
    let upstream = Upstream::start().await;
    let policy = EgressPolicy::parse([format!("allowed.test:{}", upstream.port)]).unwrap();
    let mut proxy = Proxy::start(proxy(policy, resolver())).await;
    assert_denied_before_dialing(&mut proxy, &get(upstream.port), "a loopback address").await;
    proxy.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn patterns_are_anchored() {
    let policy = EgressPolicy::parse(["github.com", "*.githubusercontent.com"])
        .unwrap()
        .allow_loopback_for_tests();
    let resolver = [
        "evilgithub.com",
        "github.com.evil.com",
        "githubusercontent.com",
        "github.co",
    ]
    .into_iter()
    .fold(StaticResolver::new(), |r, name| r.with(name, [LOOPBACK]));
    let mut proxy = Proxy::start(proxy(policy, resolver)).await;
    for host in [
        "evilgithub.com",
        "github.com.evil.com",
        "githubusercontent.com",
        "github.co",
    ] {
        let request = format!("CONNECT {host}:443 HTTP/1.1\r\n\r\n");
        assert_denied_before_dialing(&mut proxy, &request, "not in the egress allowlist").await;
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_name_that_does_not_resolve_fails_with_502() {
    let mut proxy = Proxy::start(proxy(allowed(443), StaticResolver::new())).await;
    let answer = proxy
        .exchange("CONNECT allowed.test:443 HTTP/1.1\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 502 Bad Gateway"), "{answer}");
    let event = proxy.event().await;
    assert_eq!(event.decision, Decision::Failed);
    assert!(
        event.reason.contains("allowed.test does not resolve"),
        "{event:?}"
    );
    assert_eq!(proxy.dialed(), []);
    proxy.stop().await;
}

#[tokio::test]
async fn unusable_requests_get_4xx_answers() {
    let limits = ProxyLimits {
        max_head_bytes: 1024,
        head_timeout: Duration::from_millis(300),
        ..ProxyLimits::default()
    };
    let mut proxy = Proxy::start(proxy(allowed(443), resolver()).with_limits(limits)).await;
    let cases = [
        (
            "GET /origin-form HTTP/1.1\r\n\r\n",
            "400 Bad Request",
            "send CONNECT host:port",
        ),
        (
            "GET https://allowed.test/ HTTP/1.1\r\n\r\n",
            "400 Bad Request",
            "CONNECT tunnel",
        ),
        (
            "CONNECT allowed.test HTTP/1.1\r\n\r\n",
            "400 Bad Request",
            "port",
        ),
        (
            "\x01\x02\x03 nonsense\r\n\r\n",
            "400 Bad Request",
            "malformed",
        ),
    ];
    for (request, status, reason) in cases {
        let answer = proxy.exchange(request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{request:?}: {answer}"
        );
        assert!(answer.contains(reason), "{request:?}: {answer}");
        let event = proxy.event().await;
        assert_eq!(
            (event.kind, event.decision),
            (RequestKind::Invalid, Decision::Denied)
        );
    }
    let huge = format!(
        "GET http://allowed.test/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let answer = proxy.exchange(&huge).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    // A client that never finishes its head is cut off.
    let mut slow = proxy.connect().await;
    slow.write_all(b"CONNECT allowed.test:443 HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    timeout(WAIT, slow.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout"),
        "{answer}"
    );
    assert_eq!(proxy.dialed(), []);
    proxy.stop().await;
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    let upstream = Upstream::start().await;
    let limits = ProxyLimits {
        idle_timeout: Duration::from_millis(300),
        ..ProxyLimits::default()
    };
    let proxy = Proxy::start(proxy(allowed(upstream.port), resolver()).with_limits(limits)).await;
    let mut client = proxy.connect().await;
    let connect = format!("CONNECT allowed.test:{} HTTP/1.1\r\n\r\n", upstream.port);
    client.write_all(connect.as_bytes()).await.unwrap();
    read_head(&mut client).await;
    let mut rest = Vec::new();
    // The upstream waits for a request that never comes; the proxy gives up on the silence.
    timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .expect("closed for idleness")
        .unwrap();
    proxy.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn shutdown_closes_open_tunnels_and_waits_for_them() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(proxy(allowed(upstream.port), resolver())).await;
    let mut client = proxy.connect().await;
    let connect = format!("CONNECT allowed.test:{} HTTP/1.1\r\n\r\n", upstream.port);
    client.write_all(connect.as_bytes()).await.unwrap();
    read_head(&mut client).await;
    // The tunnel is open and idle; stopping the proxy must not wait for it.
    proxy.stop().await;
    let mut rest = Vec::new();
    timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    upstream.stop().await;
}

#[tokio::test]
async fn the_socket_is_usable_by_any_user() {
    use std::os::unix::fs::PermissionsExt;
    let proxy = Proxy::start(proxy(EgressPolicy::closed(), resolver())).await;
    let mode = std::fs::metadata(&proxy.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
    // A socket still served is not taken over; once its server is gone, it is replaced.
    let socket = proxy.socket.clone();
    let err = bind_unix(&socket).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    let file = socket.with_file_name("not-a-socket");
    std::fs::write(&file, "x").unwrap();
    assert_eq!(
        bind_unix(&file).unwrap_err().kind(),
        io::ErrorKind::AlreadyExists
    );
    let Proxy {
        cancel, task, _dir, ..
    } = proxy;
    cancel.cancel();
    task.await.unwrap();
    drop(bind_unix(&socket).expect("a stale socket is replaced"));
}

/// The relay binary, as a container would run it, but on this machine: a client talks to the
/// relay's TCP port, the relay forwards to the proxy's socket, the proxy to the test server.
struct Relay {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Relay {
    async fn start(binary: &Path, socket: &Path) -> Self {
        let mut child = tokio::process::Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--socket"])
            .arg(socket)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let line = timeout(WAIT, read_line(&mut stderr)).await.unwrap();
        let addr = line
            .strip_prefix("maxions-relay: listening on ")
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

async fn read_line<R: AsyncRead + Unpin>(reader: &mut R) -> String {
    let mut line = Vec::new();
    let mut byte = [0; 1];
    while reader.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[tokio::test]
async fn the_relay_carries_requests_to_the_proxy_socket() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let egress_dir = dir.path().join("egress");
    let (egress, listener) = EgressDir::prepare(&egress_dir).unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let server = proxy(allowed(upstream.port), resolver())
        .with_connector(LoopbackOnly::default())
        .on_event(move |event| {
            let _ = tx.send(event);
        });
    let task = tokio::spawn(server.serve_unix(listener, cancel.clone()));
    let relay = Relay::start(&egress.binary_path(), &egress.socket_path()).await;

    let answer = exchange(
        TcpStream::connect(relay.addr).await.unwrap(),
        &get(upstream.port),
    )
    .await;
    assert!(answer.ends_with(BODY), "{answer}");
    let mut client = TcpStream::connect(relay.addr).await.unwrap();
    let connect = format!("CONNECT allowed.test:{} HTTP/1.1\r\n\r\n", upstream.port);
    client.write_all(connect.as_bytes()).await.unwrap();
    assert_eq!(
        read_head(&mut client).await,
        "HTTP/1.1 200 Connection Established\r\n\r\n"
    );
    let answer = exchange(client, "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n").await;
    assert!(answer.ends_with(BODY), "{answer}");
    let denied = exchange(
        TcpStream::connect(relay.addr).await.unwrap(),
        "CONNECT elsewhere.test:443 HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(denied.starts_with("HTTP/1.1 403 Forbidden"), "{denied}");

    let decisions: Vec<Decision> = [
        events.recv().await,
        events.recv().await,
        events.recv().await,
    ]
    .into_iter()
    .map(|event| event.unwrap().decision)
    .collect();
    assert_eq!(
        decisions,
        [Decision::Allowed, Decision::Allowed, Decision::Denied]
    );

    // With the proxy gone, the relay explains instead of hanging up silently.
    cancel.cancel();
    timeout(WAIT, task).await.unwrap().unwrap();
    std::fs::remove_file(egress.socket_path()).unwrap();
    let answer = exchange(
        TcpStream::connect(relay.addr).await.unwrap(),
        &get(upstream.port),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502 Bad Gateway"), "{answer}");
    assert!(answer.contains("egress proxy"), "{answer}");
    relay.stop().await;
    upstream.stop().await;
}

/// The web policy of production: a host without a port (tunnels to 443, plain HTTP to 80).
fn web(host: &str) -> EgressPolicy {
    EgressPolicy::parse([host])
        .unwrap()
        .allow_loopback_for_tests()
}

/// Records every byte a connection sends until it goes quiet, then hangs up.
struct Recorder {
    port: u16,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Self {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let received = Arc::clone(&received);
            async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let mut bytes = Vec::new();
                    let mut chunk = [0; 4096];
                    while let Ok(Ok(n @ 1..)) =
                        timeout(Duration::from_millis(300), stream.read(&mut chunk)).await
                    {
                        bytes.extend_from_slice(&chunk[..n]);
                    }
                    received.lock().unwrap().push(bytes);
                }
            }
        });
        Self {
            port,
            received,
            task,
        }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The first flight of a real TLS client (rustls) to `server_name`.
fn client_hello(server_name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut bytes = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut bytes).unwrap();
    }
    bytes
}

/// Opens a tunnel, checks the `200`, sends `first` through it and returns what comes back
/// before the proxy closes.
async fn through_tunnel(proxy: &Proxy, connect: &str, first: &[u8]) -> Vec<u8> {
    let mut client = proxy.connect().await;
    client.write_all(connect.as_bytes()).await.unwrap();
    assert_eq!(
        read_head(&mut client).await,
        "HTTP/1.1 200 Connection Established\r\n\r\n"
    );
    client.write_all(first).await.unwrap();
    let mut rest = Vec::new();
    let _ = timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .expect("the proxy closes in time");
    rest
}

#[tokio::test]
async fn a_tunnel_to_port_80_of_an_allowed_host_is_refused() {
    // Through a tunnel to port 80, plain HTTP would reach any virtual host at that address with
    // no request checked.
    let upstream = Upstream::start().await;
    let mut proxy = Proxy::start_web(proxy(web("allowed.test"), resolver()), upstream.port).await;
    assert_denied_before_dialing(
        &mut proxy,
        "CONNECT allowed.test:80 HTTP/1.1\r\n\r\n",
        "send plain HTTP through the proxy as `GET http://allowed.test/...`",
    )
    .await;
    assert_denied_before_dialing(
        &mut proxy,
        "CONNECT allowed.test:22 HTTP/1.1\r\n\r\n",
        "an entry `allowed.test:22` would allow it",
    )
    .await;
    // Plain HTTP to port 80 itself is served, and checked.
    let answer = proxy
        .exchange("GET http://allowed.test/x HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        .await;
    assert!(answer.ends_with(BODY), "{answer}");
    assert_eq!(proxy.event().await.decision, Decision::Allowed);
    assert_eq!(upstream.heads().len(), 1);
    proxy.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_tls_tunnel_to_the_connect_host_carries_the_client_hello() {
    let recorder = Recorder::start().await;
    let mut proxy = Proxy::start_web(proxy(web("allowed.test"), resolver()), recorder.port).await;
    let hello = client_hello("allowed.test");
    // The ClientHello may come with the CONNECT, before the `200`, as some clients send it.
    let mut client = proxy.connect().await;
    let mut request = b"CONNECT Allowed.Test:443 HTTP/1.1\r\n\r\n".to_vec();
    request.extend_from_slice(&hello[..10]);
    client.write_all(&request).await.unwrap();
    assert_eq!(
        read_head(&mut client).await,
        "HTTP/1.1 200 Connection Established\r\n\r\n"
    );
    client.write_all(&hello[10..]).await.unwrap();
    let event = proxy.event().await;
    assert_eq!(
        (event.kind, event.decision),
        (RequestKind::Connect, Decision::Allowed)
    );
    assert!(
        event.reason.contains("TLS server name checked"),
        "{event:?}"
    );
    assert_eq!(proxy.dialed(), [SocketAddr::new(LOOPBACK, 443)]);
    let mut rest = Vec::new();
    timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorder.received(), [hello], "the bytes arrive unchanged");
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_hello_for_another_server_is_refused_before_dialing() {
    let recorder = Recorder::start().await;
    let resolver = resolver().with("evil.test", [LOOPBACK]);
    let mut proxy = Proxy::start_web(proxy(web("allowed.test"), resolver), recorder.port).await;
    let connect = "CONNECT allowed.test:443 HTTP/1.1\r\n\r\n";
    let cases: [(Vec<u8>, &str); 3] = [
        (
            client_hello("evil.test"),
            "the TLS server name (SNI) evil.test is not the CONNECT host allowed.test",
        ),
        (
            client_hello("127.0.0.1"),
            "the TLS ClientHello names no server (SNI)",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n".to_vec(),
            "the tunnel did not start with a TLS handshake",
        ),
    ];
    for (first, reason) in cases {
        let answer = through_tunnel(&proxy, connect, &first).await;
        let event = proxy.event().await;
        assert_eq!(event.decision, Decision::Denied, "{event:?}");
        assert!(event.reason.contains(reason), "{event:?}");
        assert!(!event.dialed);
        assert_eq!(event.host.as_deref(), Some("allowed.test"));
        if first[0] == 0x16 {
            // A TLS alert (unrecognized_name), so that the client's error names the cause.
            assert_eq!(answer, [21, 3, 3, 0, 2, 2, 112]);
        }
    }
    assert_eq!(proxy.dialed(), [], "nothing dialed for a refused tunnel");
    assert!(recorder.received().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn a_tunnel_that_sends_no_client_hello_is_closed() {
    let limits = ProxyLimits {
        head_timeout: Duration::from_millis(300),
        ..ProxyLimits::default()
    };
    let proxy = proxy(web("allowed.test"), resolver()).with_limits(limits);
    let mut proxy = Proxy::start_web(proxy, 9).await;
    // Half a record header, then silence (a slow-loris inside the tunnel).
    let answer = through_tunnel(
        &proxy,
        "CONNECT allowed.test:443 HTTP/1.1\r\n\r\n",
        b"\x16\x03",
    )
    .await;
    assert!(answer.is_empty());
    let event = proxy.event().await;
    assert_eq!(event.decision, Decision::Denied);
    assert!(
        event.reason.contains("no TLS ClientHello within"),
        "{event:?}"
    );
    assert_eq!(proxy.dialed(), []);
    proxy.stop().await;
}

#[tokio::test]
async fn curl_cannot_front_another_host_through_an_allowed_tunnel() {
    // A real client: curl names evil.test in its ClientHello while tunnelling to allowed.test.
    let recorder = Recorder::start().await;
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let dialer = LoopbackOnly::redirecting(&[(443, recorder.port)]);
    let server = proxy(web("allowed.test"), resolver())
        .with_connector(dialer.clone())
        .on_event(move |event| {
            let _ = tx.send(event);
        });
    let cancel = CancellationToken::new();
    let task = tokio::spawn(server.serve_tcp(listener, cancel.clone()));
    let curl = |url: &str, extra: &[&str]| {
        let mut command = tokio::process::Command::new("curl");
        command
            .args(["-sS", "--max-time", "5", "--noproxy", "", "-x"])
            .arg(format!("http://{addr}"))
            .args(extra)
            .arg(url);
        command.output()
    };
    let Ok(fronted) = curl(
        "https://evil.test/",
        &["--connect-to", "evil.test:443:allowed.test:443"],
    )
    .await
    else {
        eprintln!("curl is not installed; skipping");
        return;
    };
    assert!(!fronted.status.success());
    let event = timeout(WAIT, events.recv()).await.unwrap().unwrap();
    assert_eq!(event.decision, Decision::Denied, "{event:?}");
    assert!(
        event
            .reason
            .contains("(SNI) evil.test is not the CONNECT host"),
        "{event:?}"
    );
    assert!(dialer.asked.lock().unwrap().is_empty());
    // The honest request is let through (and fails the handshake with the recorder, which is
    // no TLS server: what matters is that its ClientHello arrived).
    let honest = curl("https://allowed.test/", &[]).await.unwrap();
    assert!(!honest.status.success());
    let event = timeout(WAIT, events.recv()).await.unwrap().unwrap();
    assert_eq!(event.decision, Decision::Allowed, "{event:?}");
    let received = recorder.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0][0], 0x16, "a TLS handshake reached the upstream");
    cancel.cancel();
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn plain_http_with_another_host_header_is_refused() {
    let upstream = Upstream::start().await;
    let mut proxy = Proxy::start_web(proxy(web("allowed.test"), resolver()), upstream.port).await;
    let cases = [
        (
            "GET http://allowed.test/ HTTP/1.1\r\nHost: tenant.example\r\n\r\n",
            "the Host header names tenant.example, but the request is for allowed.test",
        ),
        (
            "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nHost: tenant.example\r\n\r\n",
            "more than one Host header",
        ),
        (
            "GET http://allowed.test/ HTTP/1.1\r\nHost: user@allowed.test\r\n\r\n",
            "the Host header names user@allowed.test",
        ),
        (
            // Request smuggling: which framing wins decides whether the body is a second request.
            "POST http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 0\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: tenant.example\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nX-A: 1\r\n Host: tenant.example\r\n\r\n",
            "malformed request",
        ),
        (
            "GET http://allowed%2etest/ HTTP/1.1\r\n\r\n",
            "is not a valid host name",
        ),
    ];
    for (request, reason) in cases {
        let answer = proxy.exchange(request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{request:?}: {answer}"
        );
        assert!(answer.contains(reason), "{request:?}: {answer}");
        let event = proxy.event().await;
        assert_eq!(
            (event.kind, event.decision),
            (RequestKind::Invalid, Decision::Denied)
        );
        assert!(event.reason.contains(reason), "{event:?}");
    }
    assert_eq!(proxy.dialed(), []);
    assert!(upstream.heads().is_empty());
    proxy.stop().await;
    upstream.stop().await;
}

/// An HTTP server that keeps its connections open and answers every request on them, the way a
/// server that ignores `Connection: close` would.
struct KeepAlive {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl KeepAlive {
    async fn start() -> Self {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let heads = Arc::clone(&heads);
            async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let heads = Arc::clone(&heads);
                    tokio::spawn(async move {
                        loop {
                            let head = read_head(&mut stream).await;
                            if head.is_empty() {
                                break;
                            }
                            if head.contains("Transfer-Encoding: chunked\r\n") {
                                // Enough for the test's bodies: up to the last chunk.
                                let mut body = Vec::new();
                                let mut byte = [0; 1];
                                while !body.ends_with(b"0\r\n\r\n") {
                                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                                        break;
                                    }
                                    body.push(byte[0]);
                                }
                            }
                            heads.lock().unwrap().push(head);
                            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if stream.write_all(reply).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        });
        Self { port, heads, task }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_keep_alive_connection_cannot_switch_hosts() {
    let upstream = KeepAlive::start().await;
    let resolver = resolver().with("tenant.example", [LOOPBACK]);
    let mut proxy = Proxy::start_web(proxy(web("allowed.test"), resolver), upstream.port).await;
    let mut client = proxy.connect().await;
    let first = "POST http://allowed.test/a HTTP/1.1\r\nHost: allowed.test\r\n\
                 Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let second = "GET http://tenant.example/b HTTP/1.1\r\nHost: tenant.example\r\n\r\n";
    let third = "GET /c HTTP/1.1\r\nHost: tenant.example\r\n\r\n";
    client
        .write_all(format!("{first}{second}{third}").as_bytes())
        .await
        .unwrap();
    let mut answer = [0; 64];
    let n = timeout(WAIT, client.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"));
    let allowed = proxy.event().await;
    assert_eq!(allowed.decision, Decision::Allowed);
    let refused = proxy.event().await;
    assert_eq!(
        (refused.kind, refused.decision, refused.host.as_deref()),
        (RequestKind::Http, Decision::Denied, Some("tenant.example"))
    );
    assert!(
        refused.reason.contains("only one request per connection"),
        "{refused:?}"
    );
    // Whatever the server does with `Connection: close`, it saw one request, re-framed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heads = upstream.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with("POST /a HTTP/1.1\r\nHost: allowed.test\r\n"),
        "{heads:?}"
    );
    assert_eq!(proxy.dialed(), [SocketAddr::new(LOOPBACK, 80)]);
    proxy.no_more_events();
    drop(client);
    proxy.stop().await;
}

#[tokio::test]
async fn connections_past_the_limit_wait_in_the_backlog() {
    let upstream = Upstream::start().await;
    let limits = ProxyLimits {
        max_connections: 2,
        ..ProxyLimits::default()
    };
    let mut proxy =
        Proxy::start(proxy(allowed(upstream.port), resolver()).with_limits(limits)).await;
    // Two tunnels hold both slots.
    let connect = format!("CONNECT allowed.test:{} HTTP/1.1\r\n\r\n", upstream.port);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = proxy.connect().await;
        client.write_all(connect.as_bytes()).await.unwrap();
        read_head(&mut client).await;
        held.push(client);
    }
    // A flood: a few are told 503 at once, the rest are not even accepted while those last.
    let mut flood = Vec::new();
    for _ in 0..40 {
        let mut client = proxy.connect().await;
        client.write_all(connect.as_bytes()).await.unwrap();
        flood.push(client);
    }
    let mut answered = 0;
    for client in &mut flood {
        let mut first = [0; 12];
        if let Ok(Ok(12)) = timeout(Duration::from_millis(20), client.read_exact(&mut first)).await
        {
            assert_eq!(&first, b"HTTP/1.1 503");
            answered += 1;
        }
    }
    assert_eq!(
        answered, 16,
        "the proxy holds at most max_connections + 16 clients"
    );
    for _ in 0..2 {
        assert_eq!(proxy.event().await.decision, Decision::Allowed);
    }
    for _ in 0..16 {
        let event = proxy.event().await;
        assert!(
            event
                .reason
                .contains("too many connections at once (at most 2)"),
            "{event:?}"
        );
    }
    proxy.no_more_events();
    // Once the tunnels end, the next client in the backlog is served.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(flood.drain(..16));
    let answer = timeout(WAIT, read_head(&mut flood[0])).await.unwrap();
    assert_eq!(answer, "HTTP/1.1 200 Connection Established\r\n\r\n");
    drop(flood);
    proxy.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn event_reasons_quote_little_of_what_the_sandbox_sent() {
    let mut proxy = Proxy::start(proxy(allowed(443), resolver())).await;
    let name = format!("{}.test", "a".repeat(5000));
    let answer = proxy
        .exchange(&format!("CONNECT {name}:443 HTTP/1.1\r\n\r\n"))
        .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let event = proxy.event().await;
    assert!(event.reason.len() < 500, "{} bytes", event.reason.len());
    let mismatch = "GET http://allowed.test/ HTTP/1.1\r\nHost: \x1b]52;c;c2VjcmV0\x07\r\n\r\n";
    proxy.exchange(mismatch).await;
    let event = proxy.event().await;
    assert!(!event.reason.contains('\x1b'), "{event:?}");
    proxy.stop().await;
}
