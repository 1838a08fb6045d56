//! Just enough HTTP/1 for a forward proxy: read one request head (bounded in size), tell a
//! CONNECT from an absolute-form plain-HTTP request, rewrite the latter for the origin server, and
//! write short error responses. Bodies and responses are never parsed: after the head, bytes are
//! relayed as they are.

use std::fmt::Write as _;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::pattern::{Host, PatternError, parse_authority};

/// The most headers a request head may have.
const MAX_HEADERS: usize = 100;

/// A request head the proxy can act on.
#[derive(Debug)]
pub(super) enum Request {
    Connect {
        host: Host,
        port: u16,
    },
    Http {
        host: Host,
        port: u16,
        /// The head to send to the origin server: origin-form target, `Host` set from the URL,
        /// hop-by-hop proxy headers dropped, `Connection: close`.
        head: Vec<u8>,
    },
}

/// Why a request head could not be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum HeadError {
    #[error("the connection closed before a request arrived")]
    Closed,
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("bad target: {0}")]
    Target(#[from] PatternError),
    #[error("reading the request failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one request head. Returns the request and any bytes read past the head (a client may
/// send the start of its tunnelled data without waiting for the `200`).
pub(super) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_bytes: usize,
) -> Result<(Request, Vec<u8>), HeadError> {
    let mut buffer = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0; 4096];
        let room = (max_bytes + 1 - buffer.len()).min(chunk.len());
        let read = stream.read(&mut chunk[..room]).await?;
        if read == 0 {
            return Err(if buffer.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed("the connection closed in the middle of the head".into())
            });
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some((request, head_len)) = parse(&buffer, max_bytes)? {
            buffer.drain(..head_len);
            return Ok((request, buffer));
        }
        if buffer.len() > max_bytes {
            return Err(HeadError::TooLarge(max_bytes));
        }
    }
}

/// `Ok(None)` while the head is incomplete.
fn parse(buffer: &[u8], max_bytes: usize) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buffer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge(max_bytes)),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if head_len > max_bytes {
        return Err(HeadError::TooLarge(max_bytes));
    }
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };
    let request = if method == "CONNECT" {
        let (host, port) = parse_authority(target, None)?;
        Request::Connect { host, port }
    } else {
        let (authority, path) = split_http_url(target)?;
        let (host, port) = parse_authority(authority, Some(80))?;
        let head = origin_head(method, path, version, &host, port, request.headers);
        Request::Http { host, port, head }
    };
    Ok(Some((request, head_len)))
}

/// `http://authority/path?query#fragment` → (`authority`, `/path?query`).
fn split_http_url(target: &str) -> Result<(&str, &str), HeadError> {
    let scheme_len = "http://".len();
    let scheme = target.get(..scheme_len).unwrap_or_default();
    if !scheme.eq_ignore_ascii_case("http://") {
        return Err(HeadError::Unsupported(
            if target
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
            {
                "send https:// requests through a CONNECT tunnel"
            } else {
                "this is a proxy: send CONNECT host:port or an absolute http:// URL"
            },
        ));
    }
    let rest = &target[scheme_len..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let path = path.split('#').next().unwrap_or_default();
    Ok((authority, path))
}

fn origin_head(
    method: &str,
    path: &str,
    version: u8,
    host: &Host,
    port: u16,
    headers: &[httparse::Header<'_>],
) -> Vec<u8> {
    const DROPPED: [&str; 5] = [
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
    ];
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    let mut head = format!("{method} {path} HTTP/1.{version}\r\n").into_bytes();
    let mut host_header = match host {
        Host::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        other => other.to_string(),
    };
    if port != 80 {
        let _ = write!(host_header, ":{port}");
    }
    head.extend_from_slice(format!("Host: {host_header}\r\n").as_bytes());
    for header in headers {
        if DROPPED.iter().any(|d| header.name.eq_ignore_ascii_case(d)) {
            continue;
        }
        head.extend_from_slice(header.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(header.value);
        head.extend_from_slice(b"\r\n");
    }
    // One request per connection: a second request on it could name another host.
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    head
}

/// A complete, short response that ends the exchange.
pub(super) fn response(status: u16, message: &str) -> Vec<u8> {
    let phrase = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let body = format!("maxions egress proxy: {message}\n");
    format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The answer to an allowed CONNECT.
pub(super) const CONNECTED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(input: &[u8]) -> Result<(Request, Vec<u8>), HeadError> {
        let mut input = input;
        read_request(&mut input, 1024).await
    }

    #[tokio::test]
    async fn connect_requests_name_host_and_port() {
        let (request, rest) = read(b"CONNECT GitHub.com:443 HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03")
            .await
            .unwrap();
        assert!(matches!(
            request,
            Request::Connect { host: Host::Name(ref n), port: 443 } if n == "github.com"
        ));
        assert_eq!(rest, b"\x16\x03");
    }

    #[tokio::test]
    async fn plain_http_requests_are_rewritten_for_the_origin() {
        let (request, rest) = read(
            b"POST http://Example.com:8080/a/b?c=d#frag HTTP/1.1\r\nHost: evil.com\r\n\
              Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\n\
              Content-Length: 4\r\n\r\nbody",
        )
        .await
        .unwrap();
        let Request::Http { host, port, head } = request else {
            panic!("expected a plain-HTTP request");
        };
        assert_eq!((host, port), (Host::Name("example.com".into()), 8080));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 4\r\n\
             Connection: close\r\n\r\n"
        );
        assert_eq!(rest, b"body");
    }

    #[tokio::test]
    async fn bare_authorities_get_a_root_path() {
        let (request, _) = read(b"GET http://example.com?q HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let Request::Http { head, .. } = request else {
            panic!("expected a plain-HTTP request");
        };
        assert!(head.starts_with(b"GET /?q HTTP/1.0\r\nHost: example.com\r\n"));
    }

    #[tokio::test]
    async fn unusable_requests_are_refused() {
        assert!(matches!(read(b"").await, Err(HeadError::Closed)));
        assert!(matches!(
            read(b"GET / HTTP/1.1\r\n\r\n").await,
            Err(HeadError::Unsupported(_))
        ));
        assert!(matches!(
            read(b"GET https://x.com/ HTTP/1.1\r\n\r\n").await,
            Err(HeadError::Unsupported(_))
        ));
        assert!(matches!(
            read(b"CONNECT x.com HTTP/1.1\r\n\r\n").await,
            Err(HeadError::Target(_))
        ));
        assert!(matches!(
            read(b"GET http://u@x.com/ HTTP/1.1\r\n\r\n").await,
            Err(HeadError::Target(_))
        ));
        assert!(matches!(
            read(b"\x00\x01 garbage\r\n\r\n").await,
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            read(b"CONNECT x.com:443 HTTP/1.1\r\n").await,
            Err(HeadError::Malformed(_))
        ));
        let huge = format!(
            "GET http://x.com/ HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(2000)
        );
        assert!(matches!(
            read(huge.as_bytes()).await,
            Err(HeadError::TooLarge(1024))
        ));
    }
}
