//! The proxy's two doors to the network, injectable so that tests never touch anything but
//! 127.0.0.1: a [`Resolver`] turns a name into addresses (the proxy resolves names itself, then
//! checks every address before dialing), and a [`Connector`] dials one checked address.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use tokio::net::TcpStream;

/// A boxed future, so that resolvers and connectors can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resolves a host name to IP addresses.
pub trait Resolver: Send + Sync + 'static {
    /// All addresses `name` resolves to (an empty list means it does not resolve).
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;
}

/// Dials a TCP connection to an address the policy has already allowed.
pub trait Connector: Send + Sync + 'static {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>>;
}

/// The system resolver (`getaddrinfo`, through tokio's `lookup_host`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name, 0)).await?;
            let mut ips: Vec<IpAddr> = Vec::new();
            for addr in addrs {
                if !ips.contains(&addr.ip()) {
                    ips.push(addr.ip());
                }
            }
            Ok(ips)
        })
    }
}

/// A fixed name → addresses table; names not in it do not resolve. Made for tests, which map
/// allowed names to 127.0.0.1 (and hostile names to addresses that must be refused).
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    table: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the addresses of `name` (compared in lowercase).
    #[must_use]
    pub fn with(mut self, name: &str, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.table
            .insert(name.to_ascii_lowercase(), ips.into_iter().collect());
        self
    }
}

impl Resolver for StaticResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        let ips = self.table.get(name).cloned().unwrap_or_default();
        Box::pin(async move { Ok(ips) })
    }
}

/// Plain TCP dialing.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
        Box::pin(TcpStream::connect(addr))
    }
}
