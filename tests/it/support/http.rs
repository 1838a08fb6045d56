//! A plain HTTP/1.1 client over `std::net::TcpStream`, for the API tests and `benches/api.rs`:
//! one request per connection (`Connection: close`), the response head parsed with httparse,
//! bodies sized, chunked or read to the end, and an event-stream reader that hands out SSE events
//! as they arrive and can cut its connection mid-stream. A pooling client library would hide the
//! socket, and these tests need to hold it: drop it mid-run, keep a hundred open, see every byte
//! the daemon sent (to prove a token is never echoed). Meant for 127.0.0.1 only.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a read may wait before a test fails rather than hangs.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A client for one daemon's API, with or without a bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    token: Option<String>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        assert!(
            addr.ip().is_loopback(),
            "the API tests talk to 127.0.0.1 only"
        );
        Self { addr, token: None }
    }

    /// From the daemon's `api.json` URL (`http://127.0.0.1:PORT`).
    pub fn from_url(url: &str) -> Self {
        let host = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("an http:// URL: {url}"))
            .trim_end_matches('/');
        Self::new(host.parse().unwrap_or_else(|e| panic!("{url}: {e}")))
    }

    /// Sends `Authorization: Bearer <token>` on every request.
    #[must_use]
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn get(&self, path: &str) -> Request {
        self.request("GET", path)
    }

    pub fn post(&self, path: &str) -> Request {
        self.request("POST", path)
    }

    pub fn delete(&self, path: &str) -> Request {
        self.request("DELETE", path)
    }

    pub fn request(&self, method: &str, path: &str) -> Request {
        let mut headers = Vec::new();
        if let Some(token) = &self.token {
            headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
        }
        Request {
            addr: self.addr,
            method: method.to_owned(),
            path: path.to_owned(),
            headers,
            body: Vec::new(),
        }
    }
}

/// One request, sent by [`Request::send`] or opened as a stream by [`Request::stream`].
#[derive(Debug, Clone)]
pub struct Request {
    addr: SocketAddr,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Replaces the `Authorization` header (or drops it with `None`).
    #[must_use]
    pub fn auth(mut self, value: Option<&str>) -> Self {
        self.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case("authorization"));
        if let Some(value) = value {
            self.headers
                .push(("Authorization".to_owned(), value.to_owned()));
        }
        self
    }

    #[must_use]
    pub fn json(self, value: &Value) -> Self {
        self.body("application/json", value.to_string().into_bytes())
    }

    #[must_use]
    pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.headers
            .push(("Content-Type".to_owned(), content_type.to_owned()));
        self.body = body.into();
        self
    }

    fn head(&self, content_length: bool) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nConnection: close\r\n",
            self.method, self.path
        );
        // A `Host` of the caller's (a DNS-rebinding page's name) replaces the address.
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            head.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if content_length {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.addr));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set a read timeout");
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        stream
    }

    /// Sends the request and reads the whole response. The body is written from a thread of
    /// its own while the response is read, so that a server that answers before it has read
    /// the body (413 on a body over the limit) is heard rather than deadlocked on.
    pub fn send(mut self) -> Response {
        let stream = self.connect();
        let mut writer = stream.try_clone().expect("clone the socket");
        let head = self.head(self.method != "GET" || !self.body.is_empty());
        let body = std::mem::take(&mut self.body);
        let sender = std::thread::spawn(move || {
            // The server may close once it has answered; what it did not read is its choice.
            let _ = writer.write_all(&head);
            for chunk in body.chunks(64 << 10) {
                if writer.write_all(chunk).is_err() {
                    break;
                }
            }
        });
        let response = Response::read(stream)
            .unwrap_or_else(|e| panic!("{} {}: reading the response: {e}", self.method, self.path));
        let _ = sender.join();
        response
    }

    /// Sends the request and returns the response head with the body still unread, as an
    /// event stream.
    pub fn stream(self) -> EventStream {
        let mut stream = self.connect();
        stream
            .write_all(&self.head(!self.body.is_empty()))
            .and_then(|()| stream.write_all(&self.body))
            .unwrap_or_else(|e| panic!("{} {}: {e}", self.method, self.path));
        let socket = stream.try_clone().expect("clone the socket");
        let mut reader = BufReader::new(stream);
        let head = read_head(&mut reader)
            .unwrap_or_else(|e| panic!("{} {}: reading the head: {e}", self.method, self.path));
        let body = Body::new(reader, &head.headers);
        EventStream {
            head,
            lines: BufReader::new(body),
            socket,
            deadline: None,
        }
    }
}

/// A response's status line and headers.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The bytes of the head as they came.
    pub raw: Vec<u8>,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    fn read(stream: TcpStream) -> io::Result<Self> {
        let mut reader = BufReader::new(stream);
        let head = read_head(&mut reader)?;
        let mut body = Vec::new();
        Body::new(reader, &head.headers).read_to_end(&mut body)?;
        Ok(Self { head, body })
    }

    pub fn status(&self) -> u16 {
        self.head.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The media type of `Content-Type`, without parameters.
    pub fn media_type(&self) -> String {
        self.header("content-type")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; fails the test, showing the response, when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("a JSON body ({e}): {}\n{}", self.head.status, self.text()))
    }

    /// Head and body, as text, for asserting on everything the server sent.
    pub fn everything(&self) -> String {
        format!("{}{}", String::from_utf8_lossy(&self.head.raw), self.text())
    }

    /// Fails the test unless the status is `status`, showing the response.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.head.status,
            status,
            "unexpected status; the response:\n{}",
            self.everything()
        );
        self
    }

    /// Fails the test unless this is the API's JSON error with `status` and `code`; returns
    /// the error object.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Value {
        let response = self.expect(status);
        assert_eq!(
            response.media_type(),
            "application/json",
            "an error is JSON: {}",
            response.everything()
        );
        let error = response.json();
        assert_eq!(error["error"], code, "the error code: {error}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "an error says what went wrong: {error}"
        );
        error
    }
}

fn read_head(reader: &mut impl BufRead) -> io::Result<Head> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        reader.read_until(b'\n', &mut raw)?;
        if raw.len() == before {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the connection closed within the head: {:?}",
                    String::from_utf8_lossy(&raw)
                ),
            ));
        }
        if raw.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => {}
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a bad head ({other:?}): {:?}",
                    String::from_utf8_lossy(&raw)
                ),
            ));
        }
    }
    let status = response.code.unwrap_or_default();
    let headers = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Ok(Head {
        status,
        headers,
        raw,
    })
}

/// A response body: `Content-Length` bytes, chunks, or everything to the close.
enum Body<R> {
    Sized(io::Take<R>),
    Chunked { inner: R, left: u64, done: bool },
    ToClose(R),
}

impl<R: BufRead> Body<R> {
    fn new(inner: R, headers: &[(String, String)]) -> Self {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_ascii_lowercase())
        };
        if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            Self::Chunked {
                inner,
                left: 0,
                done: false,
            }
        } else if let Some(length) = header("content-length").and_then(|v| v.parse().ok()) {
            Self::Sized(inner.take(length))
        } else {
            Self::ToClose(inner)
        }
    }
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Sized(inner) => inner.read(buf),
            Self::ToClose(inner) => inner.read(buf),
            Self::Chunked { inner, left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let mut line = String::new();
                    inner.read_line(&mut line)?;
                    let size = line.trim().split(';').next().unwrap_or_default();
                    *left = u64::from_str_radix(size, 16).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("a bad chunk size {line:?}: {e}"),
                        )
                    })?;
                    if *left == 0 {
                        // Trailers, then the empty line that ends the body.
                        loop {
                            line.clear();
                            if inner.read_line(&mut line)? == 0 || line.trim().is_empty() {
                                break;
                            }
                        }
                        *done = true;
                        return Ok(0);
                    }
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed within a chunk",
                    ));
                }
                *left -= n as u64;
                if *left == 0 {
                    let mut crlf = [0; 2];
                    inner.read_exact(&mut crlf)?;
                }
                Ok(n)
            }
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    /// `message` when the event names none.
    pub event: String,
    pub data: String,
}

impl Event {
    /// The data as JSON; fails the test when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("an event with JSON data ({e}): {self:?}"))
    }
}

/// An open `text/event-stream` response.
pub struct EventStream {
    pub head: Head,
    lines: BufReader<Body<BufReader<TcpStream>>>,
    socket: TcpStream,
    /// When reading gives up even though heartbeats keep coming (a stream that never ends).
    deadline: Option<Instant>,
}

impl EventStream {
    /// The next event, or `None` once the server has closed the stream. Comments (heartbeats)
    /// are skipped. Fails the test when nothing comes for a minute.
    pub fn next_event(&mut self) -> Option<Event> {
        self.try_next_event()
            .unwrap_or_else(|e| panic!("reading the event stream: {e}"))
    }

    /// Like [`EventStream::next_event`], with the read error given back.
    pub fn try_next_event(&mut self) -> io::Result<Option<Event>> {
        let mut id = None;
        let mut event = None;
        let mut data: Option<String> = None;
        let mut line = String::new();
        loop {
            if self.deadline.is_some_and(|d| Instant::now() > d) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the stream went on past its deadline (only heartbeats came)",
                ));
            }
            line.clear();
            if self.lines.read_line(&mut line)? == 0 {
                return Ok(None);
            }
            let line = line.strip_suffix('\n').unwrap_or(&line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                if let Some(data) = data.take() {
                    return Ok(Some(Event {
                        id,
                        event: event.unwrap_or_else(|| "message".to_owned()),
                        data,
                    }));
                }
                id = None;
                event = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => event = Some(value.to_owned()),
                "data" => match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
    }

    /// Gives up reading (an error) once `within` has passed, even while heartbeats come.
    pub fn deadline(&mut self, within: Duration) {
        self.deadline = Some(Instant::now() + within);
    }

    /// Every event until the server closes the stream, failing the test after `within`.
    pub fn rest(&mut self, within: Duration) -> Vec<Event> {
        self.deadline(within);
        let mut events = Vec::new();
        loop {
            match self.try_next_event() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => return events,
                Err(e) => panic!(
                    "the stream did not end within {within:?} ({e}); {} events so far, the last {:?}",
                    events.len(),
                    events.last()
                ),
            }
        }
    }

    /// Drops the connection at once, as a client that lost its network would.
    pub fn cut(self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}
