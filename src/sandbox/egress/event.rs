//! What the proxy reports about each request, for the runner to write to the run's log. The
//! text in an event comes partly from the sandbox (the host it asked for, what was wrong with its
//! request): the proxy keeps it short and printable, and [`EgressEvent::redacted`] masks secrets.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::sandbox::redact::Redactor;

/// One decision of the egress proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressEvent {
    /// Counts the proxy's client connections from 1, to tell requests apart.
    pub connection: u64,
    pub kind: RequestKind,
    /// The host asked for, as normalised (lowercase, no trailing dot); `None` when the request
    /// could not be read far enough to know.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub decision: Decision,
    /// For `allowed`, the address connected to; for a refused resolved address, that address.
    pub address: Option<IpAddr>,
    /// Why, in words a person can act on.
    pub reason: String,
    /// Whether anything was dialed for this request. Always `false` when `decision` is
    /// `denied`: every refusal is made before connecting.
    pub dialed: bool,
}

impl EgressEvent {
    /// This event with every secret masked in the text the sandbox had a hand in (the host and
    /// the reason), for logging: an agent that read a secret could otherwise write it into the
    /// run's log by asking for `<secret>.example.com`.
    #[must_use]
    pub fn redacted(&self, redactor: &Redactor) -> EgressEvent {
        EgressEvent {
            host: self
                .host
                .as_deref()
                .map(|host| redactor.redact_str(host).into_owned()),
            reason: redactor.redact_str(&self.reason).into_owned(),
            ..self.clone()
        }
    }
}

/// The most characters a reason has: it may quote what the sandbox sent.
pub(super) const MAX_REASON: usize = 400;

/// Text that may hold what the sandbox sent, made safe to log: at most `max` characters, with
/// control characters (terminal escape sequences, line breaks) escaped.
pub(super) fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 8);
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The kind of proxy request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `CONNECT host:port`, a tunnel (HTTPS and anything else over TCP).
    Connect,
    /// A plain-HTTP request in absolute form (`GET http://host/path`).
    Http,
    /// A request the proxy could not read or does not serve.
    Invalid,
}

/// The outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed by the policy and connected.
    Allowed,
    /// Refused by the policy (403) or refused as malformed (400, 408, 431, 503); nothing dialed.
    Denied,
    /// Allowed by the policy, but the name did not resolve or no address answered (502, 504).
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn redaction_masks_secrets_in_host_and_reason() {
        let secret = Secret::new("TOKEN", "s3cr3tvalue").unwrap();
        let redactor = Redactor::new([&secret]).unwrap();
        let event = EgressEvent {
            connection: 7,
            kind: RequestKind::Connect,
            host: Some("s3cr3tvalue.evil.test".to_owned()),
            port: Some(443),
            decision: Decision::Denied,
            address: None,
            reason: "s3cr3tvalue.evil.test:443 is not in the egress allowlist".to_owned(),
            dialed: false,
        };
        let clean = event.redacted(&redactor);
        assert_eq!(clean.host.as_deref(), Some("***.evil.test"));
        assert_eq!(
            clean.reason,
            "***.evil.test:443 is not in the egress allowlist"
        );
        assert_eq!((clean.connection, clean.port), (7, Some(443)));
        assert_eq!(event.redacted(&Redactor::none()), event);
    }

    #[test]
    fn reasons_are_short_and_printable() {
        assert_eq!(
            printable("a\x1b]52;c;eA==\x07b\n", 50),
            "a\\u{1b}]52;c;eA==\\u{7}b\\n"
        );
        let long = printable(&"x".repeat(1000), MAX_REASON);
        assert_eq!(long.len(), MAX_REASON + 3);
    }
}
