//! Allowlisted network egress for sandboxes. The policy ([`EgressPolicy`], built from anchored
//! [`HostPattern`]s) decides; the proxy ([`EgressProxy`]) enforces it for HTTP CONNECT and
//! plain-HTTP requests, resolving names itself and refusing non-public addresses before it dials;
//! the relay ([`relay`]) carries a container's connections to the proxy's Unix socket.
//!
//! Nothing here assumes where it runs: the proxy serves a Unix socket (mounted into local
//! sandboxes) or TCP (beside a sandbox on a remote engine), and reports its decisions as
//! [`EgressEvent`]s either way.

pub mod address;
mod body;
mod event;
mod http;
mod net;
mod pattern;
mod policy;
mod proxy;
pub mod relay;
pub mod relay_program;
mod tls;

pub use event::{Decision, EgressEvent, RequestKind};
pub use net::{BoxFuture, Connector, Resolver, StaticResolver, SystemResolver, TcpConnector};
pub use pattern::{Access, HTTP_PORT, Host, HostPattern, PatternError, TLS_PORT};
pub use policy::{Denial, EgressPolicy};
pub use proxy::{EgressProxy, ProxyLimits, bind_unix};
