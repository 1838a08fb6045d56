//! The HTTP API and the dashboard that `maxions daemon` serves: runs listed, followed live
//! (SSE), cancelled, re-run and deleted; task files submitted (written into the tasks folder,
//! which stays the one source of truth); schedules, health, metrics and the OpenAPI document.
//!
//! The router is a function of [`ApiState`], so handlers are tested without a port. Everything
//! it serves comes from the daemon's published [`View`](crate::daemon::handle::View) and from
//! the run logs on disk, which are redacted when written: no response can carry a secret the
//! logs do not, and none carries the token or an environment value.

pub mod auth;
mod dashboard;
mod error;
pub mod hub;
mod metrics;
pub mod openapi;
mod runs;
mod stream;
mod submit;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

pub use auth::Auth;
pub use error::ApiError;
pub use hub::Hub;

use crate::daemon::handle::Handle;

/// The largest request body taken (a task file is a few KiB).
pub const BODY_LIMIT: usize = 256 * 1024;
/// The file in the state dir that says where the API listens, for tools and tests.
pub const ADDRESS_FILE: &str = "api.json";
/// The file in the state dir holding a generated token (mode 0600).
pub const TOKEN_FILE: &str = "api-token";

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct ApiState(Arc<Inner>);

struct Inner {
    daemon: Handle,
    hub: Arc<Hub>,
    auth: Auth,
    /// Cancelled when the server stops: live streams end, so that shutdown does not wait on them.
    closing: CancellationToken,
    index: runs::Index,
    started: Instant,
}

impl ApiState {
    #[must_use]
    pub fn new(daemon: Handle, hub: Arc<Hub>, auth: Auth) -> Self {
        Self(Arc::new(Inner {
            daemon,
            hub,
            auth,
            closing: CancellationToken::new(),
            index: runs::Index::default(),
            started: Instant::now(),
        }))
    }

    /// Ends the live streams (the server is stopping).
    pub fn close(&self) {
        self.0.closing.cancel();
    }
}

/// Every route, with authentication, the body limit and JSON errors for what axum would answer
/// in plain text.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/maxions", get(runs::list).post(submit::submit))
        .route("/maxions/{id}", get(runs::detail).delete(runs::delete))
        .route("/maxions/{id}/kill", post(runs::kill))
        .route("/maxions/{id}/rerun", post(runs::rerun))
        .route("/maxions/{id}/logs", get(runs::logs))
        .route("/maxions/{id}/stream", get(stream::stream))
        .route("/schedules", get(runs::schedules))
        .route("/engines", get(runs::engines))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::document))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let public = Router::new()
        .route("/healthz", get(healthz))
        .route("/api/config", get(public_config))
        .merge(dashboard::routes());
    api.merge(public)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::same_origin,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown`, then ends the live streams and
/// waits for the requests in flight.
///
/// # Errors
/// When serving fails (not when one connection does).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let closing = state.clone();
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.cancelled().await;
        closing.close();
    })
    .await
}

/// Writes `<state_dir>/api.json` (`{"url", "pid"}`) atomically, for `maxions status`, tools and
/// tests that listen on port 0.
///
/// # Errors
/// When the file cannot be written.
pub fn write_address(state_dir: &Path, addr: SocketAddr) -> std::io::Result<PathBuf> {
    let path = state_dir.join(ADDRESS_FILE);
    let partial = state_dir.join(format!(".{ADDRESS_FILE}.{}.partial", std::process::id()));
    let body = serde_json::json!({ "url": format!("http://{addr}"), "pid": std::process::id() });
    std::fs::write(&partial, format!("{body}\n"))?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `stopping` while the daemon drains.
    pub status: String,
    pub version: String,
    /// Seconds since the API started.
    pub uptime_s: u64,
}

/// Whether the daemon is up. Needs no token.
#[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
    responses((status = 200, body = Health), (status = 503, body = Health, description = "The daemon is stopping")))]
async fn healthz(State(state): State<ApiState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let stopping = state.0.daemon.commands.is_closed();
    let body = Health {
        status: if stopping { "stopping" } else { "ok" }.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s: state.0.started.elapsed().as_secs(),
    };
    let status = if stopping {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        axum::http::StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct PublicConfig {
    /// `token`: send `Authorization: Bearer <token>`; `open`: no token (loopback only).
    pub auth: String,
}

/// What the dashboard needs before it has a token. Needs no token.
#[utoipa::path(get, path = "/api/config", tag = "meta", security(()),
    responses((status = 200, body = PublicConfig)))]
async fn public_config(State(state): State<ApiState>) -> axum::Json<PublicConfig> {
    axum::Json(PublicConfig {
        auth: if state.0.auth.is_open() {
            "open"
        } else {
            "token"
        }
        .to_owned(),
    })
}

#[cfg(test)]
mod tests;
