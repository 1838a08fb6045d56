//! What the proxy reports about each request, for the runner to write to the run's log.

use std::net::IpAddr;

use serde::Serialize;

/// One decision of the egress proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// The kind of proxy request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed by the policy and connected.
    Allowed,
    /// Refused by the policy (403) or refused as malformed (400, 408, 431, 503); nothing dialed.
    Denied,
    /// Allowed by the policy, but the name did not resolve or no address answered (502, 504).
    Failed,
}
