//! Just enough HTTP/1 for a forward proxy: read one request head (bounded in size), tell a
//! CONNECT from an absolute-form plain-HTTP request, check the latter strictly (one `Host`, equal
//! to the URL's authority; unambiguous body framing) and rewrite it for the origin server, and
//! write short error responses. Responses are never parsed: they are relayed as they are.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::pattern::{Host, PatternError, parse_authority};

/// The most headers a request head may have.
const MAX_HEADERS: usize = 100;
/// The longest line (request line or one header) of a head.
pub(super) const MAX_LINE_BYTES: usize = 8 * 1024;

/// A request head the proxy can act on.
#[derive(Debug)]
pub(super) enum Request {
    Connect { host: Host, port: u16 },
    Http(HttpRequest),
}

/// An absolute-form plain-HTTP request, checked and rewritten.
#[derive(Debug)]
pub(super) struct HttpRequest {
    pub host: Host,
    pub port: u16,
    /// The head to send to the origin server: origin-form target, `Host` set from the URL,
    /// hop-by-hop and routing-override headers dropped, `Connection: close`.
    pub head: Vec<u8>,
    pub body: Body,
}

/// How the request's body is delimited, decided by the proxy (and re-framed by it), so that the
/// origin server cannot read a different body, or a second request, out of the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Body {
    None,
    Length(u64),
    Chunked,
}

/// Why a request head could not be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum HeadError {
    #[error("the connection closed before a request arrived")]
    Closed,
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("a line of the request head is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("refused: {0}")]
    Ambiguous(&'static str),
    #[error("the Host header names {header}, but the request is for {target}")]
    HostMismatch { header: String, target: String },
    #[error("bad target: {0}")]
    Target(#[from] PatternError),
    #[error("reading the request failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one request head. Returns the request and any bytes read past the head (a client may
/// send the start of its tunnelled data, or its body, without waiting).
pub(super) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_bytes: usize,
) -> Result<(Request, Vec<u8>), HeadError> {
    read_request_after(stream, Vec::new(), max_bytes).await
}

/// [`read_request`], for a head of which `buffer` holds the first bytes already read.
pub(super) async fn read_request_after<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buffer: Vec<u8>,
    max_bytes: usize,
) -> Result<(Request, Vec<u8>), HeadError> {
    loop {
        if !buffer.is_empty() {
            if let Some((request, head_len)) = parse(&buffer, max_bytes)? {
                buffer.drain(..head_len);
                return Ok((request, buffer));
            }
            if buffer.len() > max_bytes {
                return Err(HeadError::TooLarge(max_bytes));
            }
        }
        let mut chunk = [0; 4096];
        let room = (max_bytes + 1)
            .saturating_sub(buffer.len())
            .clamp(1, chunk.len());
        let read = stream.read(&mut chunk[..room]).await?;
        if read == 0 {
            return Err(if buffer.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed("the connection closed in the middle of the head".into())
            });
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// `Ok(None)` while the head is incomplete.
fn parse(buffer: &[u8], max_bytes: usize) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = request.parse(buffer);
    // Checked before the verdict on completeness, so that a long line fails as soon as it is
    // seen instead of when the head is complete.
    let seen = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        _ => buffer.len(),
    };
    if buffer[..seen]
        .split(|&b| b == b'\n')
        .any(|line| line.len() > MAX_LINE_BYTES)
    {
        return Err(HeadError::LineTooLong);
    }
    let head_len = match parsed {
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
    if !target.is_ascii() {
        return Err(HeadError::Malformed(
            "the request target has bytes that are not ASCII".into(),
        ));
    }
    let request = if method == "CONNECT" {
        let (host, port) = parse_authority(target, None)?;
        Request::Connect { host, port }
    } else {
        let (authority, path) = split_http_url(target)?;
        let (host, port) = parse_authority(authority, Some(80))?;
        check_host_header(request.headers, &host, port)?;
        let body = framing(request.headers, version)?;
        let head = origin_head(method, path, version, &host, port, request.headers);
        Request::Http(HttpRequest {
            host,
            port,
            head,
            body,
        })
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

/// At most one `Host`, and it names the URL's host and port: an origin server (or the front end
/// of a shared address) routes by `Host`, so a different one would reach a host nobody listed.
fn check_host_header(
    headers: &[httparse::Header<'_>],
    host: &Host,
    port: u16,
) -> Result<(), HeadError> {
    let mut values = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    let Some(value) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(HeadError::Ambiguous("more than one Host header"));
    }
    let mismatch = || HeadError::HostMismatch {
        header: String::from_utf8_lossy(value).into_owned(),
        target: authority_text(host, port),
    };
    let text = std::str::from_utf8(value).map_err(|_| mismatch())?;
    match parse_authority(text.trim_matches([' ', '\t']), Some(80)) {
        Ok((h, p)) if h == *host && p == port => Ok(()),
        _ => Err(mismatch()),
    }
}

/// The body framing of a request (RFC 9112 §6), refusing every ambiguous form instead of picking
/// one reading: a server behind the proxy might pick the other.
fn framing(headers: &[httparse::Header<'_>], version: u8) -> Result<Body, HeadError> {
    let named = |name: &'static str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let lengths = named("content-length");
    let encodings = named("transfer-encoding");
    match (lengths.as_slice(), encodings.as_slice()) {
        ([], []) => Ok(Body::None),
        ([_, ..], [_, ..]) => Err(HeadError::Ambiguous(
            "both Content-Length and Transfer-Encoding",
        )),
        ([length], []) => {
            let length = trim(length);
            if length.is_empty() || length.len() > 18 || !length.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Ambiguous(
                    "a Content-Length that is not one number",
                ));
            }
            // At most 18 digits: always fits.
            let n = std::str::from_utf8(length)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(HeadError::Ambiguous(
                    "a Content-Length that is not one number",
                ))?;
            Ok(if n == 0 { Body::None } else { Body::Length(n) })
        }
        (_, []) => Err(HeadError::Ambiguous("more than one Content-Length header")),
        ([], [encoding]) if version == 1 && trim(encoding).eq_ignore_ascii_case(b"chunked") => {
            Ok(Body::Chunked)
        }
        ([], _) => Err(HeadError::Ambiguous(
            "a Transfer-Encoding other than a single `chunked` on HTTP/1.1",
        )),
    }
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// `host` or `host:port` as a `Host` header writes it.
fn authority_text(host: &Host, port: u16) -> String {
    let host = match host {
        Host::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        other => other.to_string(),
    };
    if port == 80 {
        host
    } else {
        format!("{host}:{port}")
    }
}

fn origin_head(
    method: &str,
    path: &str,
    version: u8,
    host: &Host,
    port: u16,
    headers: &[httparse::Header<'_>],
) -> Vec<u8> {
    // Hop-by-hop headers (the proxy frames the connection itself), the proxy's own, and the
    // headers some front ends route by instead of `Host`.
    const DROPPED: [&str; 16] = [
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
        "forwarded",
        "x-forwarded-host",
        "x-forwarded-server",
        "x-host",
        "x-original-url",
        "x-rewrite-url",
    ];
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    let mut head = format!("{method} {path} HTTP/1.{version}\r\n").into_bytes();
    head.extend_from_slice(format!("Host: {}\r\n", authority_text(host, port)).as_bytes());
    let mut chunked = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
        if DROPPED.iter().any(|d| header.name.eq_ignore_ascii_case(d)) {
            continue;
        }
        head.extend_from_slice(header.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(trim(header.value));
        head.extend_from_slice(b"\r\n");
    }
    // Written by the proxy in one canonical spelling, as the proxy re-frames the body.
    if chunked {
        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
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

    async fn http(input: &[u8]) -> (HttpRequest, Vec<u8>) {
        match read(input).await {
            Ok((Request::Http(request), rest)) => (request, rest),
            other => panic!("expected a plain-HTTP request, got {other:?}"),
        }
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
        let (request, rest) = http(
            b"POST http://Example.com:8080/a/b?c=d#frag HTTP/1.1\r\nHost: example.COM:8080\r\n\
              Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\n\
              X-Forwarded-Host: other.test\r\nUpgrade: h2c\r\n\
              Content-Length: 4\r\n\r\nbody",
        )
        .await;
        assert_eq!(
            (request.host, request.port, request.body),
            (Host::Name("example.com".into()), 8080, Body::Length(4))
        );
        assert_eq!(
            String::from_utf8(request.head).unwrap(),
            "POST /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 4\r\n\
             Connection: close\r\n\r\n"
        );
        assert_eq!(rest, b"body");
    }

    #[tokio::test]
    async fn bare_authorities_get_a_root_path() {
        let (request, _) = http(b"GET http://example.com?q HTTP/1.0\r\n\r\n").await;
        assert!(
            request
                .head
                .starts_with(b"GET /?q HTTP/1.0\r\nHost: example.com\r\n")
        );
        assert_eq!(request.body, Body::None);
    }

    #[tokio::test]
    async fn the_host_header_must_name_the_url_host() {
        // Equal after normalising, with the default port spelled out or not.
        for same in [
            "allowed.test",
            "ALLOWED.test.",
            "allowed.test:80",
            " allowed.test ",
        ] {
            let head = format!("GET http://allowed.test/ HTTP/1.1\r\nHost: {same}\r\n\r\n");
            http(head.as_bytes()).await;
        }
        for other in [
            "other.test",
            "allowed.test:8080",
            "user@allowed.test",
            "allowed.test.other.test",
            "allowed%2etest",
            "",
        ] {
            let head = format!("GET http://allowed.test/ HTTP/1.1\r\nHost: {other}\r\n\r\n");
            assert!(
                matches!(
                    read(head.as_bytes()).await,
                    Err(HeadError::HostMismatch { .. })
                ),
                "Host: {other}"
            );
        }
        let twice = b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nhost: allowed.test\r\n\r\n";
        assert!(matches!(read(twice).await, Err(HeadError::Ambiguous(_))));
    }

    #[tokio::test]
    async fn ambiguous_framing_is_refused() {
        let with = |headers: &str| {
            format!("POST http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n{headers}\r\n")
        };
        for headers in [
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            "Content-Length: 4\r\nContent-Length: 4\r\n",
            "Content-Length: 4, 4\r\n",
            "Content-Length: +4\r\n",
            "Content-Length: 99999999999999999999\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: xchunked\r\n",
        ] {
            assert!(
                matches!(
                    read(with(headers).as_bytes()).await,
                    Err(HeadError::Ambiguous(_))
                ),
                "{headers:?}"
            );
        }
        let http10 = b"POST http://allowed.test/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(read(http10).await, Err(HeadError::Ambiguous(_))));
        let (chunked, _) = http(with("Transfer-Encoding:  Chunked \r\n").as_bytes()).await;
        assert_eq!(chunked.body, Body::Chunked);
        let text = String::from_utf8(chunked.head).unwrap();
        assert!(
            text.ends_with("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"),
            "{text}"
        );
        // Obsolete line folding and whitespace before the colon are malformed, not merged.
        for bad in [
            "X-A: 1\r\n Host: other.test\r\n",
            "X-A: 1\r\n\tTransfer-Encoding: chunked\r\n",
            "Content-Length : 4\r\n",
        ] {
            assert!(
                matches!(
                    read(with(bad).as_bytes()).await,
                    Err(HeadError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
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
        for target in [
            "http://u@x.com/",
            "http://x.com%2eevil.com/",
            "http://x.com\\@evil.com/",
            "http://[::1%25eth0]/",
        ] {
            let head = format!("GET {target} HTTP/1.1\r\n\r\n");
            assert!(
                matches!(read(head.as_bytes()).await, Err(HeadError::Target(_))),
                "{target}"
            );
        }
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
        let long_line = format!(
            "GET http://x.com/{} HTTP/1.1\r\n\r\n",
            "a".repeat(MAX_LINE_BYTES)
        );
        let mut input = long_line.as_bytes();
        assert!(matches!(
            read_request(&mut input, 64 * 1024).await,
            Err(HeadError::LineTooLong)
        ));
    }

    /// Fuzz targets (see `crate::fuzzing`): any bytes are answered, and an authority that parses
    /// comes back out as the same host and port.
    mod fuzz {
        use proptest::prelude::*;

        use super::*;
        use crate::fuzzing::fuzz;

        /// Request-ish bytes: pieces of real heads mixed with arbitrary bytes, so that the parser
        /// gets past httparse often enough to reach the proxy's own checks.
        fn head_bytes() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                Just(b"CONNECT ".to_vec()),
                Just(b"GET ".to_vec()),
                Just(b"POST ".to_vec()),
                Just(b"http://".to_vec()),
                Just(b"https://".to_vec()),
                Just(b"[::1]".to_vec()),
                Just(b"example.com".to_vec()),
                Just(b":443".to_vec()),
                Just(b":0".to_vec()),
                Just(b":99999".to_vec()),
                Just(b"@".to_vec()),
                Just(b"/".to_vec()),
                Just(b" HTTP/1.1\r\n".to_vec()),
                Just(b" HTTP/1.0\r\n".to_vec()),
                Just(b"Host: example.com\r\n".to_vec()),
                Just(b"Host: \r\n".to_vec()),
                Just(b"Content-Length: 5\r\n".to_vec()),
                Just(b"Content-Length: -1\r\n".to_vec()),
                Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
                Just(b"Transfer-Encoding: gzip, chunked\r\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\n".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..12),
                "[ -~]{0,12}".prop_map(String::into_bytes),
            ];
            proptest::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
        }

        fn host_text() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,8}[a-zA-Z0-9_])?(\\.[a-zA-Z][a-zA-Z0-9-]{0,6}[a-zA-Z0-9]){0,3}\\.?",
                any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
                any::<std::net::Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
                "[ -~]{0,16}",
            ]
        }

        #[test]
        fn fuzz_proxy_heads_never_panic() {
            fuzz(
                "proxy_heads",
                256,
                (
                    prop_oneof![head_bytes(), proptest::collection::vec(any::<u8>(), 0..300)],
                    1usize..400,
                ),
                |(bytes, max)| {
                    // Every prefix too: the proxy parses the head as it arrives.
                    for end in [bytes.len() / 3, bytes.len() / 2, bytes.len()] {
                        if let Ok(Some((_, head_len))) = parse(&bytes[..end], max) {
                            prop_assert!(head_len <= end && head_len <= max);
                        }
                    }
                    Ok(())
                },
            );
        }

        #[test]
        fn fuzz_proxy_authorities_round_trip() {
            fuzz(
                "proxy_authorities",
                512,
                (host_text(), 0u32..70_000, any::<bool>()),
                |(host, port, connect)| {
                    let authority = format!("{host}:{port}");
                    let head = if connect {
                        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
                    } else {
                        format!("GET http://{authority}/x HTTP/1.1\r\nHost: {authority}\r\n\r\n")
                    };
                    let Ok(Some((request, len))) = parse(head.as_bytes(), 16 * 1024) else {
                        return Ok(());
                    };
                    prop_assert_eq!(len, head.len());
                    let (parsed, parsed_port) = match request {
                        Request::Connect { host, port } => (host, port),
                        Request::Http(r) => (r.host, r.port),
                    };
                    prop_assert_eq!(u32::from(parsed_port), port);
                    // The host as the proxy will name and match it: the input, lowercased, one
                    // trailing dot dropped, brackets of an IPv6 literal off.
                    let expected = host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_ascii_lowercase();
                    let expected = expected.strip_suffix('.').unwrap_or(&expected);
                    let shown = parsed.to_string();
                    match parsed {
                        Host::Ip(ip) => {
                            prop_assert_eq!(Ok(ip), expected.parse::<std::net::IpAddr>());
                        }
                        Host::Name(_) => prop_assert_eq!(shown.as_str(), expected),
                    }
                    // And it parses again to the same thing.
                    let again = parse_authority(&authority_text(&parsed, parsed_port), Some(80));
                    prop_assert_eq!(again.ok(), Some((parsed, parsed_port)));
                    Ok(())
                },
            );
        }
    }
}
