//! Allowlist entries and the hosts they are matched against.
//!
//! An entry is anchored at both ends, never a substring or a regex:
//! - `github.com` matches that host only (not `evilgithub.com`, not `github.com.evil.com`, not
//!   `api.github.com`);
//! - `*.githubusercontent.com` matches any name below it, at any depth, but not the apex itself;
//! - `140.82.112.3` or `[2606:4700::1111]` allow that one public address when a client asks
//!   for it as a raw IP.
//!
//! Without a port an entry allows tunnels (CONNECT) to port 443, which the proxy checks are TLS
//! to that very name, and plain-HTTP requests to port 80, which it checks one by one. `host:port`
//! allows that port only, for both; a tunnel to a port other than 443 is not inspected. Names are
//! compared case-insensitively and a trailing dot is ignored.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::address::{self, Forbidden};

/// A host a client asked for: a validated, lowercased DNS name or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.suffix`: names ending in `.suffix`.
    Below(String),
    Ip(IpAddr),
}

/// Why a host or an allowlist entry is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("allowlist entry is empty")]
    Empty,
    #[error("`{0}`: give a host name, not a URL (drop the `scheme://`)")]
    Scheme(String),
    #[error("`{0}`: give a host name, not a URL (drop the path)")]
    Path(String),
    #[error("`{0}`: user names and passwords are not part of an allowlist entry")]
    UserInfo(String),
    #[error("`{0}`: a port must be a number from 1 to 65535")]
    Port(String),
    #[error(
        "`{0}`: a wildcard must be a whole first label followed by at least two labels, as in \
         `*.githubusercontent.com`"
    )]
    Wildcard(String),
    #[error("`{0}`: non-ASCII host names must be written in their punycode (`xn--`) form")]
    NonAscii(String),
    #[error("`{0}` is not a valid host name")]
    InvalidName(String),
    #[error("`{entry}` is {reason}; the egress proxy never connects to such addresses")]
    ForbiddenAddress { entry: String, reason: Forbidden },
}

/// How a client asks the proxy for a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `CONNECT host:port`, a tunnel.
    Connect,
    /// An absolute-form plain-HTTP request (`GET http://host/path`).
    Http,
}

/// The port of tunnels an entry without a port allows; tunnels there must be TLS to the name.
pub const TLS_PORT: u16 = 443;
/// The port of plain-HTTP requests an entry without a port allows.
pub const HTTP_PORT: u16 = 80;

impl Access {
    /// The one port an entry without a port allows for this kind of request.
    #[must_use]
    pub fn default_port(self) -> u16 {
        match self {
            Self::Connect => TLS_PORT,
            Self::Http => HTTP_PORT,
        }
    }
}

impl HostPattern {
    /// Whether this entry allows `host:port` asked for by `access`.
    #[must_use]
    pub fn matches(&self, host: &Host, port: u16, access: Access) -> bool {
        self.port.unwrap_or(access.default_port()) == port && self.matches_host(host)
    }

    /// Whether this entry names `host`, on whatever port.
    #[must_use]
    pub fn matches_host(&self, host: &Host) -> bool {
        match (&self.host, host) {
            (HostMatch::Exact(pattern), Host::Name(name)) => pattern == name,
            (HostMatch::Below(suffix), Host::Name(name)) => name
                .strip_suffix(suffix.as_str())
                .and_then(|label| label.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty()),
            (HostMatch::Ip(pattern), Host::Ip(ip)) => pattern == ip,
            _ => false,
        }
    }
}

impl FromStr for HostPattern {
    type Err = PatternError;

    fn from_str(entry: &str) -> Result<Self, PatternError> {
        let fail = |make: fn(String) -> PatternError| make(entry.to_owned());
        if entry.is_empty() {
            return Err(PatternError::Empty);
        }
        if entry.contains("://") {
            return Err(fail(PatternError::Scheme));
        }
        if entry.contains(['/', '?', '#']) {
            return Err(fail(PatternError::Path));
        }
        if entry.contains('@') {
            return Err(fail(PatternError::UserInfo));
        }
        let (host, port) = split_host_port(entry).ok_or_else(|| fail(PatternError::Port))?;
        let port = port
            .map(|p| parse_port(p).ok_or_else(|| fail(PatternError::Port)))
            .transpose()?;
        let host = if let Some(ip) = parse_ip(host) {
            if let Some(reason) = address::forbidden(ip) {
                return Err(PatternError::ForbiddenAddress {
                    entry: entry.to_owned(),
                    reason,
                });
            }
            HostMatch::Ip(ip)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            let suffix = normalize_name(suffix, entry).map_err(|e| {
                if suffix.contains('*') {
                    fail(PatternError::Wildcard)
                } else {
                    e
                }
            })?;
            if suffix.split('.').count() < 2 {
                return Err(fail(PatternError::Wildcard));
            }
            HostMatch::Below(suffix)
        } else if host.contains('*') {
            return Err(fail(PatternError::Wildcard));
        } else {
            HostMatch::Exact(normalize_name(host, entry)?)
        };
        Ok(Self { host, port })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostMatch::Exact(name) => f.write_str(name)?,
            HostMatch::Below(suffix) => write!(f, "*.{suffix}")?,
            HostMatch::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            HostMatch::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl Host {
    /// Parses the host part of a request target (no port; an IPv6 literal without brackets).
    ///
    /// # Errors
    /// When it is neither a valid DNS name nor an IP literal.
    pub fn parse(host: &str) -> Result<Self, PatternError> {
        match parse_ip(host) {
            Some(ip) => Ok(Self::Ip(ip)),
            None => normalize_name(host, host).map(Self::Name),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Ip(ip) => ip.fmt(f),
        }
    }
}

/// Splits a request's `host:port` (the target of a CONNECT, the authority of a URL), with
/// `[v6]:port` for IPv6. `default_port` applies when there is no port.
///
/// # Errors
/// When the host or the port is not valid, or there is no port and no default.
pub fn parse_authority(
    authority: &str,
    default_port: Option<u16>,
) -> Result<(Host, u16), PatternError> {
    let fail = |make: fn(String) -> PatternError| make(authority.to_owned());
    if authority.contains('@') {
        return Err(fail(PatternError::UserInfo));
    }
    let (host, port) = split_host_port(authority).ok_or_else(|| fail(PatternError::Port))?;
    let port = match port {
        Some(port) => parse_port(port).ok_or_else(|| fail(PatternError::Port))?,
        None => default_port.ok_or_else(|| fail(PatternError::Port))?,
    };
    // A bare IPv6 literal needs brackets when a port may follow.
    if host.contains(':') && !authority.starts_with('[') {
        return Err(fail(PatternError::InvalidName));
    }
    Ok((Host::parse(host)?, port))
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 literal. `None` when the part after
/// `]` is neither empty nor `:port`.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Some((s, None));
    }
    Some(match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    })
}

fn parse_port(port: &str) -> Option<u16> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok().filter(|&p| p != 0)
}

/// Only the canonical textual forms: `Ipv4Addr`'s parser refuses `127.1`, `0x7f.0.0.1` and
/// leading zeros, which `normalize_name` then refuses too (their last label is numeric).
fn parse_ip(host: &str) -> Option<IpAddr> {
    host.parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .or_else(|_| host.parse::<Ipv6Addr>().map(IpAddr::V6))
        .ok()
}

/// Lowercases, drops one trailing dot and checks the name: labels of letters, digits, `-` and
/// `_`, 1 to 63 bytes each, no leading or trailing `-`, at most 253 bytes in all, and a last
/// label that is not all digits (resolvers would read `2130706433` or `127.1` as an address).
fn normalize_name(name: &str, entry: &str) -> Result<String, PatternError> {
    let invalid = || PatternError::InvalidName(entry.to_owned());
    if !name.is_ascii() {
        return Err(PatternError::NonAscii(entry.to_owned()));
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(invalid());
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !name.split('.').all(label_ok) {
        return Err(invalid());
    }
    let last = name.rsplit('.').next().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> HostPattern {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn name(s: &str) -> Host {
        Host::parse(s).unwrap()
    }

    #[test]
    fn exact_entries_are_anchored() {
        let github = pattern("github.com");
        assert!(github.matches(&name("github.com"), 443, Access::Connect));
        assert!(github.matches(&name("GitHub.COM."), 80, Access::Http));
        for other in [
            "evilgithub.com",
            "github.com.evil.com",
            "api.github.com",
            "github.co",
        ] {
            assert!(
                !github.matches(&name(other), 443, Access::Connect),
                "{other}"
            );
        }
    }

    #[test]
    fn wildcards_match_subdomains_but_not_the_apex() {
        let content = pattern("*.githubusercontent.com");
        let tls = |host: &str| content.matches(&name(host), 443, Access::Connect);
        assert!(tls("raw.githubusercontent.com"));
        assert!(tls("a.b.githubusercontent.com"));
        assert!(!tls("githubusercontent.com"));
        assert!(!tls("evilgithubusercontent.com"));
        assert!(!tls("raw.githubusercontent.com.evil.com"));
    }

    #[test]
    fn ports_default_to_tls_tunnels_and_plain_http_on_80() {
        let github = pattern("github.com");
        let host = name("github.com");
        assert!(github.matches(&host, 443, Access::Connect));
        assert!(github.matches(&host, 80, Access::Http));
        // A tunnel to port 80 would carry plain HTTP to any virtual host, unchecked.
        assert!(!github.matches(&host, 80, Access::Connect));
        assert!(!github.matches(&host, 443, Access::Http));
        assert!(!github.matches(&host, 22, Access::Connect));
        let ssh = pattern("github.com:22");
        assert!(ssh.matches(&host, 22, Access::Connect));
        assert!(ssh.matches(&host, 22, Access::Http));
        assert!(!ssh.matches(&host, 443, Access::Connect));
        assert!(ssh.matches_host(&host));
    }

    #[test]
    fn ip_entries_match_only_that_address() {
        let ip = pattern("140.82.112.3");
        assert!(ip.matches(&Host::parse("140.82.112.3").unwrap(), 443, Access::Connect));
        assert!(!ip.matches(&Host::parse("140.82.112.4").unwrap(), 443, Access::Connect));
        let v6 = pattern("[2606:4700::1111]:8443");
        assert!(v6.matches(
            &Host::parse("2606:4700::1111").unwrap(),
            8443,
            Access::Connect
        ));
        assert_eq!(v6.to_string(), "[2606:4700::1111]:8443");
    }

    #[test]
    fn entries_are_displayed_in_canonical_form() {
        assert_eq!(pattern("GitHub.com.").to_string(), "github.com");
        assert_eq!(
            pattern("*.Example.org:8080").to_string(),
            "*.example.org:8080"
        );
    }

    #[test]
    fn invalid_entries_are_refused_with_a_reason() {
        type Expect = fn(&PatternError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("", |e| matches!(e, PatternError::Empty)),
            ("https://github.com", |e| {
                matches!(e, PatternError::Scheme(_))
            }),
            ("github.com/org", |e| matches!(e, PatternError::Path(_))),
            ("user@github.com", |e| {
                matches!(e, PatternError::UserInfo(_))
            }),
            ("github.com:0", |e| matches!(e, PatternError::Port(_))),
            ("github.com:http", |e| matches!(e, PatternError::Port(_))),
            ("github.com:70000", |e| matches!(e, PatternError::Port(_))),
            ("*foo.com", |e| matches!(e, PatternError::Wildcard(_))),
            ("*.*", |e| matches!(e, PatternError::Wildcard(_))),
            ("*.*.com", |e| matches!(e, PatternError::Wildcard(_))),
            ("*.com", |e| matches!(e, PatternError::Wildcard(_))),
            ("api.*.com", |e| matches!(e, PatternError::Wildcard(_))),
            ("*", |e| matches!(e, PatternError::Wildcard(_))),
            ("bücher.de", |e| matches!(e, PatternError::NonAscii(_))),
            ("-bad.com", |e| matches!(e, PatternError::InvalidName(_))),
            ("a..com", |e| matches!(e, PatternError::InvalidName(_))),
            ("127.1", |e| matches!(e, PatternError::InvalidName(_))),
            ("2130706433", |e| matches!(e, PatternError::InvalidName(_))),
            ("169.254.169.254", |e| {
                matches!(e, PatternError::ForbiddenAddress { .. })
            }),
            ("10.0.0.1:443", |e| {
                matches!(e, PatternError::ForbiddenAddress { .. })
            }),
            ("[::ffff:127.0.0.1]", |e| {
                matches!(e, PatternError::ForbiddenAddress { .. })
            }),
            ("127.0.0.1", |e| {
                matches!(e, PatternError::ForbiddenAddress { .. })
            }),
        ];
        for (entry, expected) in cases {
            let err = entry.parse::<HostPattern>().expect_err(entry);
            assert!(expected(&err), "{entry}: {err:?}");
        }
        assert_eq!(
            "169.254.169.254"
                .parse::<HostPattern>()
                .unwrap_err()
                .to_string(),
            "`169.254.169.254` is a link-local address (where cloud metadata endpoints live); \
             the egress proxy never connects to such addresses"
        );
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(
            parse_authority("GitHub.com:443", None),
            Ok((name("github.com"), 443))
        );
        assert_eq!(
            parse_authority("github.com", Some(80)),
            Ok((name("github.com"), 80))
        );
        assert_eq!(
            parse_authority("[::1]:8080", None),
            Ok((Host::Ip("::1".parse().unwrap()), 8080))
        );
        assert!(parse_authority("github.com", None).is_err());
        assert!(parse_authority("::1", Some(80)).is_err());
        assert!(parse_authority("user:pw@github.com:443", None).is_err());
        assert!(parse_authority("github.com:", None).is_err());
        assert!(parse_authority("0x7f.1:80", None).is_err());
    }
}
