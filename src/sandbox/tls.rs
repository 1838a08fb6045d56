//! The Engine API over TCP with TLS client certificates (`dockerd --tlsverify`), as bollard's
//! custom transport: a hyper client whose connections keep `TCP_NODELAY` and are reused.
//!
//! bollard's own TLS transport opens a new connection for every request and leaves Nagle's
//! algorithm on; on this machine that made a one-command step cost 375 ms instead of 103 ms
//! over the engine's socket (`benches/engines.sh`). It also trusts the system's root
//! certificates for the engine. Here only the configured `ca.pem` is trusted, and this client
//! presents `cert.pem` with `key.pem`.

use std::path::Path;
use std::sync::Arc;

use bollard::{BollardRequest, Docker};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::SandboxError;

/// A client for the engine at `host` (`tcp://HOST:PORT`) with the certificates in `dir`.
///
/// # Errors
/// [`SandboxError::EngineUnreachable`] when a certificate or the key cannot be read.
pub fn connect(host: &str, dir: &Path, timeout: u64) -> Result<Docker, SandboxError> {
    let unreadable = |file: &str, e: &dyn std::fmt::Display| {
        SandboxError::EngineUnreachable(format!(
            "{host}: cannot read `{}`: {e}",
            dir.join(file).display()
        ))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(dir.join("ca.pem")).map_err(|e| unreadable("ca.pem", &e))?
    {
        roots
            .add(cert.map_err(|e| unreadable("ca.pem", &e))?)
            .map_err(|e| unreadable("ca.pem", &e))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .map_err(|e| unreadable("cert.pem", &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable("cert.pem", &e))?;
    let key =
        PrivateKeyDer::from_pem_file(dir.join("key.pem")).map_err(|e| unreadable("key.pem", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SandboxError::EngineUnreachable(format!("{host}: TLS: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| unreadable("cert.pem", &e))?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client = Arc::new(Client::builder(TokioExecutor::new()).build(https));
    let authority = host
        .strip_prefix("tcp://")
        .unwrap_or(host)
        .trim_end_matches('/');
    Docker::connect_with_custom_transport(
        move |request: BollardRequest| {
            let client = Arc::clone(&client);
            async move {
                client
                    .request(request)
                    .await
                    .map_err(bollard::errors::Error::from)
            }
        },
        Some(format!("https://{authority}")),
        timeout,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|e| SandboxError::EngineUnreachable(format!("{host}: {e}")))
}
