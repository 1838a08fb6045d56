//! The allowlist decision, free of any I/O: which host names and ports a sandbox may ask for,
//! and which resolved addresses may be dialed. The proxy calls [`EgressPolicy::check_target`]
//! before resolving and [`EgressPolicy::check_address`] on every resolved address before dialing.

use std::fmt;
use std::net::IpAddr;

use super::address::{self, Forbidden};
use super::pattern::{Access, Host, HostPattern, PatternError};

/// What a sandbox may reach. Closed (nothing allowed) when it has no entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    patterns: Vec<HostPattern>,
    allow_loopback: bool,
}

/// Why a request was refused. Every refusal happens before anything is dialed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The allowlist is empty.
    Closed,
    /// No entry matches this host and port.
    NotListed { host: Host, port: u16 },
    /// The host is listed, but not for this port and kind of request: a tunnel to port 80, say.
    PortNotListed {
        host: Host,
        port: u16,
        access: Access,
    },
    /// A raw IP address was asked for and that address is not itself listed.
    IpNotListed { ip: IpAddr, port: u16 },
    /// The name is allowed but resolved to an address the proxy never dials.
    ForbiddenAddress {
        host: Host,
        ip: IpAddr,
        reason: Forbidden,
    },
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("the egress allowlist is empty, so nothing may be reached"),
            Self::NotListed { host, port } => {
                write!(f, "{host}:{port} is not in the egress allowlist")
            }
            Self::PortNotListed {
                host,
                port,
                access: Access::Connect,
            } if *port == Access::Http.default_port() => write!(
                f,
                "a tunnel (CONNECT) to {host}:{port} is refused: it would carry plain HTTP \
                 unchecked; send plain HTTP through the proxy as `GET http://{host}/...`"
            ),
            Self::PortNotListed { host, port, access } => write!(
                f,
                "{host}:{port} is not in the egress allowlist for {}: an entry without a port \
                 allows tunnels to port 443 and plain HTTP to port 80 only (an entry \
                 `{host}:{port}` would allow it)",
                match access {
                    Access::Connect => "tunnels (CONNECT)",
                    Access::Http => "plain HTTP",
                },
            ),
            Self::IpNotListed { ip, port } => write!(
                f,
                "raw IP address {ip} (port {port}) is not in the egress allowlist; ask for a \
                 listed host name"
            ),
            Self::ForbiddenAddress { host, ip, reason } => write!(
                f,
                "{host} resolves to {ip}, {reason}; refused before connecting"
            ),
        }
    }
}

impl EgressPolicy {
    /// A policy allowing exactly the given entries.
    pub fn new(patterns: impl IntoIterator<Item = HostPattern>) -> Self {
        Self {
            patterns: patterns.into_iter().collect(),
            allow_loopback: false,
        }
    }

    /// Parses allowlist entries such as `github.com` or `*.githubusercontent.com`.
    ///
    /// # Errors
    /// The first entry that is not valid.
    pub fn parse<S: AsRef<str>>(
        entries: impl IntoIterator<Item = S>,
    ) -> Result<Self, PatternError> {
        entries
            .into_iter()
            .map(|entry| entry.as_ref().parse())
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }

    /// A policy that allows nothing.
    #[must_use]
    pub fn closed() -> Self {
        Self::default()
    }

    /// Lets allowed names resolve to plain loopback (127.0.0.0/8, `::1`), so that tests can map
    /// every allowed name to a server on 127.0.0.1 and nothing leaves the machine. Never set in
    /// production: there it would open the host's own services to the sandbox. IPv6 forms that
    /// embed a loopback address (`::ffff:127.0.0.1`) stay refused.
    #[must_use]
    pub fn allow_loopback_for_tests(mut self) -> Self {
        self.allow_loopback = true;
        self
    }

    /// The entries, in the order given.
    #[must_use]
    pub fn patterns(&self) -> &[HostPattern] {
        &self.patterns
    }

    /// Whether nothing is allowed.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The first check, on what the client asked for and how. Returns the entry that allows it.
    ///
    /// # Errors
    /// The reason to refuse.
    pub fn check_target(
        &self,
        host: &Host,
        port: u16,
        access: Access,
    ) -> Result<&HostPattern, Denial> {
        if self.is_closed() {
            return Err(Denial::Closed);
        }
        if let Some(pattern) = self.patterns.iter().find(|p| p.matches(host, port, access)) {
            return Ok(pattern);
        }
        let listed = self.patterns.iter().any(|p| p.matches_host(host));
        Err(match host {
            _ if listed => Denial::PortNotListed {
                host: host.clone(),
                port,
                access,
            },
            Host::Ip(ip) => Denial::IpNotListed { ip: *ip, port },
            Host::Name(_) => Denial::NotListed {
                host: host.clone(),
                port,
            },
        })
    }

    /// The second check, on each address a name resolved to (or on the listed IP itself).
    ///
    /// # Errors
    /// The reason to refuse.
    pub fn check_address(&self, host: &Host, ip: IpAddr) -> Result<(), Denial> {
        match address::forbidden(ip) {
            Some(reason) if !(self.allow_loopback && reason.is_plain_loopback()) => {
                Err(Denial::ForbiddenAddress {
                    host: host.clone(),
                    ip,
                    reason,
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> EgressPolicy {
        EgressPolicy::parse(entries).unwrap()
    }

    fn host(s: &str) -> Host {
        Host::parse(s).unwrap()
    }

    #[test]
    fn an_empty_policy_is_closed() {
        let closed = EgressPolicy::closed();
        assert!(closed.is_closed());
        assert_eq!(
            closed.check_target(&host("github.com"), 443, Access::Connect),
            Err(Denial::Closed)
        );
        assert_eq!(EgressPolicy::parse(Vec::<String>::new()).unwrap(), closed);
    }

    #[test]
    fn listed_hosts_pass_and_others_do_not() {
        let p = policy(&["github.com", "*.githubusercontent.com"]);
        assert_eq!(
            p.check_target(&host("github.com"), 443, Access::Connect),
            Ok(&p.patterns()[0])
        );
        assert_eq!(
            p.check_target(&host("raw.githubusercontent.com"), 443, Access::Connect),
            Ok(&p.patterns()[1])
        );
        for other in [
            "evilgithub.com",
            "github.com.evil.com",
            "githubusercontent.com",
        ] {
            assert!(
                matches!(
                    p.check_target(&host(other), 443, Access::Connect),
                    Err(Denial::NotListed { .. })
                ),
                "{other}"
            );
        }
    }

    #[test]
    fn raw_ips_need_their_own_entry() {
        let p = policy(&["github.com", "140.82.112.3"]);
        assert_eq!(
            p.check_target(&host("140.82.112.3"), 443, Access::Connect),
            Ok(&p.patterns()[1])
        );
        assert_eq!(
            p.check_target(&host("140.82.112.4"), 443, Access::Connect),
            Err(Denial::IpNotListed {
                ip: "140.82.112.4".parse().unwrap(),
                port: 443
            })
        );
    }

    #[test]
    fn a_listed_host_on_another_port_says_how_to_reach_it() {
        let p = policy(&["github.com"]);
        let github = host("github.com");
        let tunnel_80 = p.check_target(&github, 80, Access::Connect).unwrap_err();
        assert_eq!(
            tunnel_80.to_string(),
            "a tunnel (CONNECT) to github.com:80 is refused: it would carry plain HTTP \
             unchecked; send plain HTTP through the proxy as `GET http://github.com/...`"
        );
        let ssh = p.check_target(&github, 22, Access::Connect).unwrap_err();
        assert_eq!(
            ssh.to_string(),
            "github.com:22 is not in the egress allowlist for tunnels (CONNECT): an entry without \
             a port allows tunnels to port 443 and plain HTTP to port 80 only (an entry \
             `github.com:22` would allow it)"
        );
        assert!(p.check_target(&github, 443, Access::Http).is_err());
        assert!(p.check_target(&github, 80, Access::Http).is_ok());
    }

    #[test]
    fn loopback_is_refused_unless_the_test_switch_is_on() {
        let p = policy(&["example.com"]);
        let name = host("example.com");
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(matches!(
            p.check_address(&name, lo),
            Err(Denial::ForbiddenAddress { .. })
        ));
        let t = p.allow_loopback_for_tests();
        assert_eq!(t.check_address(&name, lo), Ok(()));
        assert_eq!(t.check_address(&name, "::1".parse().unwrap()), Ok(()));
        for never in ["::ffff:127.0.0.1", "169.254.169.254", "10.0.0.1", "0.0.0.0"] {
            assert!(
                t.check_address(&name, never.parse().unwrap()).is_err(),
                "{never} must stay refused"
            );
        }
    }

    #[test]
    fn denials_read_well() {
        let d = Denial::ForbiddenAddress {
            host: host("metadata.example.com"),
            ip: "169.254.169.254".parse().unwrap(),
            reason: address::forbidden("169.254.169.254".parse().unwrap()).unwrap(),
        };
        assert_eq!(
            d.to_string(),
            "metadata.example.com resolves to 169.254.169.254, a link-local address (where cloud \
             metadata endpoints live); refused before connecting"
        );
    }
}
