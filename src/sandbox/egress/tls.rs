//! Just enough TLS to see where a tunnel is going: the server name (SNI) in a client's first
//! handshake message, read from the plaintext records that open every TLS connection. The parser
//! is strict and bounded: anything it does not fully understand is refused, never guessed at.
//!
//! Nothing here decrypts anything. What a client sends after the ClientHello is opaque.

use std::fmt;

use super::pattern::Host;

/// TLS record content type of handshake messages.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The largest plaintext record TLS allows (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
/// Encrypted Client Hello (RFC 9849) and its draft predecessor ESNI: they carry a second,
/// encrypted server name that a front end would route by, so the visible one proves nothing.
const EXT_ECH: u16 = 0xfe0d;
const EXT_ESNI: u16 = 0xffce;

/// What the proxy needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClientHello {
    /// The `host_name` of the server_name extension, as sent (not yet validated as a name).
    pub server_name: Option<String>,
}

/// Why the bytes are not a ClientHello the proxy accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HelloError {
    NotTls,
    Malformed(&'static str),
    TooLarge(usize),
    EncryptedClientHello,
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotTls => f.write_str("the tunnel did not start with a TLS handshake"),
            Self::Malformed(what) => write!(f, "malformed TLS ClientHello: {what}"),
            Self::TooLarge(max) => write!(f, "TLS ClientHello larger than {max} bytes"),
            Self::EncryptedClientHello => f.write_str(
                "the ClientHello uses Encrypted Client Hello, which hides the real server name",
            ),
        }
    }
}

/// Parses the ClientHello at the start of `bytes`, which may hold more than it (the client's next
/// records) or less (`Ok(None)`: read more and call again). `max` bounds the handshake message.
///
/// # Errors
/// When the bytes are not, or cannot become, a TLS ClientHello within `max` bytes.
pub(super) fn parse_client_hello(
    bytes: &[u8],
    max: usize,
) -> Result<Option<ClientHello>, HelloError> {
    let Some(message) = handshake_message(bytes, max)? else {
        return Ok(None);
    };
    parse_body(message).map(Some)
}

/// Reassembles the first handshake message from the records at the start of `bytes` (a
/// ClientHello may be split across several records).
fn handshake_message(bytes: &[u8], max: usize) -> Result<Option<Vec<u8>>, HelloError> {
    let mut message = Vec::new();
    let mut rest = bytes;
    loop {
        let Some(header) = rest.get(..5) else {
            // The first byte alone tells a TLS record from anything else: fail early on plain
            // HTTP or SSH instead of waiting for more.
            if rest.first().is_some_and(|&t| t != HANDSHAKE) {
                return Err(HelloError::NotTls);
            }
            return Ok(None);
        };
        if header[0] != HANDSHAKE || header[1] != 3 {
            return Err(if message.is_empty() {
                HelloError::NotTls
            } else {
                HelloError::Malformed("records of another type inside the ClientHello")
            });
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err(HelloError::Malformed("record length out of range"));
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return Ok(None);
        };
        message.extend_from_slice(fragment);
        rest = &rest[5 + len..];
        if let Some(head) = message.get(..4) {
            if head[0] != CLIENT_HELLO {
                return Err(HelloError::Malformed(
                    "the first handshake message is not a ClientHello",
                ));
            }
            let body_len =
                usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3]);
            if body_len > max {
                return Err(HelloError::TooLarge(max));
            }
            if message.len() >= 4 + body_len {
                // Bytes past the ClientHello in the same record would be a second handshake
                // message before the server spoke: no client does that.
                if message.len() > 4 + body_len {
                    return Err(HelloError::Malformed("data after the ClientHello"));
                }
                message.drain(..4);
                return Ok(Some(message));
            }
        }
        if message.len() > max + 4 {
            return Err(HelloError::TooLarge(max));
        }
    }
}

/// A cursor over a byte string that fails instead of panicking when it runs out.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if n > self.bytes.len() {
            return Err(HelloError::Malformed(what));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one- or two-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = self.u8(what)?;
        self.take(usize::from(len), what)
    }

    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The ClientHello body (RFC 8446 §4.1.2; TLS 1.0 to 1.2 share its layout).
fn parse_body(body: Vec<u8>) -> Result<ClientHello, HelloError> {
    let mut r = Reader { bytes: &body };
    let version = r.u16("no version")?;
    if version >> 8 != 3 {
        return Err(HelloError::Malformed("not a TLS version"));
    }
    r.take(32, "no random")?;
    if r.vec8("no session id")?.len() > 32 {
        return Err(HelloError::Malformed("session id longer than 32 bytes"));
    }
    let suites = r.vec16("no cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("bad cipher suite list"));
    }
    if r.vec8("no compression methods")?.is_empty() {
        return Err(HelloError::Malformed("empty compression method list"));
    }
    if r.is_empty() {
        // No extensions at all (old clients): no server name either.
        return Ok(ClientHello { server_name: None });
    }
    let mut extensions = Reader {
        bytes: r.vec16("bad extensions length")?,
    };
    if !r.is_empty() {
        return Err(HelloError::Malformed("data after the extensions"));
    }
    let mut seen = Vec::new();
    let mut server_name = None;
    while !extensions.is_empty() {
        let kind = extensions.u16("truncated extension")?;
        let data = extensions.vec16("truncated extension")?;
        // TLS forbids repeating an extension; a parser that read the first server_name while
        // the server read the last would be fooled.
        if seen.contains(&kind) {
            return Err(HelloError::Malformed("an extension appears twice"));
        }
        seen.push(kind);
        match kind {
            EXT_SERVER_NAME => server_name = Some(parse_server_name(data)?),
            EXT_ECH | EXT_ESNI => return Err(HelloError::EncryptedClientHello),
            _ => {}
        }
    }
    Ok(ClientHello { server_name })
}

/// The server_name extension (RFC 6066 §3): exactly one `host_name` entry.
fn parse_server_name(data: &[u8]) -> Result<String, HelloError> {
    let mut outer = Reader { bytes: data };
    let mut list = Reader {
        bytes: outer.vec16("truncated server name list")?,
    };
    if !outer.is_empty() {
        return Err(HelloError::Malformed("data after the server name list"));
    }
    let mut name = None;
    while !list.is_empty() {
        let kind = list.u8("truncated server name")?;
        let value = list.vec16("truncated server name")?;
        if kind != 0 {
            return Err(HelloError::Malformed(
                "a server name that is not a host name",
            ));
        }
        if name.is_some() {
            return Err(HelloError::Malformed("more than one server name"));
        }
        let text = std::str::from_utf8(value)
            .ok()
            .filter(|t| t.is_ascii() && !t.is_empty())
            .ok_or(HelloError::Malformed(
                "the server name is not an ASCII host name",
            ))?;
        name = Some(text.to_owned());
    }
    name.ok_or(HelloError::Malformed("an empty server name list"))
}

/// Whether the ClientHello's server name is the host the tunnel was opened to. A name must be
/// sent, and equal the CONNECT host after normalising both (case, trailing dot). An IP target
/// must come without a name: TLS never puts an address there (RFC 6066), so a name means a
/// virtual host at that address the allowlist did not name.
///
/// # Errors
/// Why the two do not agree, in words for the refusal event.
pub(super) fn check_server_name(hello: &ClientHello, target: &Host) -> Result<(), String> {
    match (&hello.server_name, target) {
        (None, Host::Ip(_)) => Ok(()),
        (None, Host::Name(_)) => Err(format!(
            "the TLS ClientHello names no server (SNI); a tunnel to {target} must send \
             server name {target}"
        )),
        (Some(sent), _) => match Host::parse(sent) {
            Ok(Host::Name(name)) if Host::Name(name.clone()) == *target => Ok(()),
            Ok(Host::Name(name)) => Err(format!(
                "the TLS server name (SNI) {name} is not the CONNECT host {target}"
            )),
            _ => Err(format!(
                "the TLS server name (SNI) is not a valid host name, and the CONNECT host is \
                 {target}"
            )),
        },
    }
}

/// A fatal TLS alert to send before closing a refused tunnel, so the client's error names the
/// cause (`unrecognized_name`, 112) instead of an unexplained end of stream.
pub(super) const UNRECOGNIZED_NAME_ALERT: &[u8] = &[21, 3, 3, 0, 2, 2, 112];

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal well-formed ClientHello carrying `extensions`, in records of at most `split`
    /// bytes of payload.
    fn hello_with(extensions: &[u8], split: usize) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
        body.extend_from_slice(extensions);
        let mut message = vec![CLIENT_HELLO, 0];
        message.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        message.extend_from_slice(&body);
        let mut out = Vec::new();
        for fragment in message.chunks(split) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&u16::try_from(fragment.len()).unwrap().to_be_bytes());
            out.extend_from_slice(fragment);
        }
        out
    }

    fn sni(name: &str) -> Vec<u8> {
        let name = name.as_bytes();
        let len = u16::try_from(name.len()).unwrap();
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&(len + 5).to_be_bytes());
        ext.extend_from_slice(&(len + 3).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&len.to_be_bytes());
        ext.extend_from_slice(name);
        ext
    }

    fn parse(bytes: &[u8]) -> Result<Option<ClientHello>, HelloError> {
        parse_client_hello(bytes, 16 * 1024)
    }

    fn named(name: &str) -> ClientHello {
        ClientHello {
            server_name: Some(name.to_owned()),
        }
    }

    #[test]
    fn the_server_name_is_read_even_across_records() {
        let bytes = hello_with(&sni("Allowed.Test."), 1 << 14);
        assert_eq!(parse(&bytes), Ok(Some(named("Allowed.Test."))));
        let split = hello_with(&sni("allowed.test"), 7);
        assert_eq!(parse(&split), Ok(Some(named("allowed.test"))));
        // Every prefix asks for more, never errs or answers early.
        for end in 0..split.len() {
            assert_eq!(parse(&split[..end]), Ok(None), "prefix of {end} bytes");
        }
    }

    #[test]
    fn what_is_not_a_clean_client_hello_is_refused() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert_eq!(parse(b"S"), Err(HelloError::NotTls));
        assert_eq!(parse(b"SSH-2.0-OpenSSH_9.2\r\n"), Err(HelloError::NotTls));
        let mut twice = sni("a.test");
        twice.extend_from_slice(&sni("b.test"));
        assert!(matches!(
            parse(&hello_with(&twice, 1 << 14)),
            Err(HelloError::Malformed(_))
        ));
        let ech = [0xfe, 0x0d, 0, 1, 0];
        let mut with_ech = sni("a.test");
        with_ech.extend_from_slice(&ech);
        assert_eq!(
            parse(&hello_with(&with_ech, 1 << 14)),
            Err(HelloError::EncryptedClientHello)
        );
        let mut trailing = hello_with(&sni("a.test"), 1 << 14);
        // Grow the handshake length by one byte that is not there as data of the message, but
        // as an extra byte in the record.
        trailing[4] += 1;
        trailing.push(0);
        assert!(matches!(parse(&trailing), Err(HelloError::Malformed(_))));
        let huge = hello_with(&sni("a.test"), 1 << 14);
        assert_eq!(parse_client_hello(&huge, 16), Err(HelloError::TooLarge(16)));
        assert_eq!(
            parse(&hello_with(&[], 1 << 14)),
            Ok(Some(ClientHello { server_name: None }))
        );
    }

    #[test]
    fn the_name_must_be_the_connect_host() {
        let target = Host::parse("allowed.test").unwrap();
        assert_eq!(check_server_name(&named("ALLOWED.test."), &target), Ok(()));
        for bad in ["other.test", "allowed.test.evil", "a llowed", "127.0.0.1"] {
            assert!(check_server_name(&named(bad), &target).is_err(), "{bad}");
        }
        let none = ClientHello { server_name: None };
        assert!(check_server_name(&none, &target).is_err());
        let ip = Host::parse("140.82.112.3").unwrap();
        assert_eq!(check_server_name(&none, &ip), Ok(()));
        assert!(check_server_name(&named("github.com"), &ip).is_err());
    }

    /// ClientHellos as real clients send them: rustls' (which offers TLS 1.3 and 1.2).
    #[test]
    fn real_client_hellos_are_understood() {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("allowed.test").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes).unwrap();
        }
        assert_eq!(parse(&bytes), Ok(Some(named("allowed.test"))));
        for end in 0..bytes.len() {
            assert_eq!(parse(&bytes[..end]), Ok(None), "prefix of {end} bytes");
        }
    }

    /// A ClientHello captured from `openssl s_client -servername github.com` (OpenSSL 3.0).
    #[test]
    fn an_openssl_client_hello_is_understood() {
        let bytes = include_bytes!("testdata/openssl-client-hello.bin");
        assert_eq!(parse(bytes), Ok(Some(named("github.com"))));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_client_hello(&bytes, 1024);
        }

        #[test]
        fn random_records_never_panic(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            len_skew in 0usize..8,
        ) {
            // Well-framed records around random handshake bytes reach the inner parser.
            let mut message = vec![CLIENT_HELLO, 0];
            let len = u16::try_from(body.len().saturating_sub(len_skew)).unwrap_or(0);
            message.extend_from_slice(&len.to_be_bytes());
            message.extend_from_slice(&body);
            let mut bytes = vec![HANDSHAKE, 3, 1];
            bytes.extend_from_slice(&u16::try_from(message.len()).unwrap_or(0).to_be_bytes());
            bytes.extend_from_slice(&message);
            let _ = parse_client_hello(&bytes, 1024);
        }
    }
}
