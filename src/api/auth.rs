//! Who may call the API: a bearer token (compared in constant time) unless the API is
//! configured open on a loopback address; and, for every request, a browser's cross-site
//! requests refused, so that a web page the operator visits cannot drive the daemon.

use std::io::Write;
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{ApiError, ApiState, TOKEN_FILE};

/// How requests are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// Only the SHA-256 of the token is kept: comparing digests of equal length in constant
    /// time says nothing about the token's length or prefix.
    Token([u8; 32]),
    /// No token: allowed only on a loopback address, where requests must also name a loopback
    /// host (a DNS-rebinding page cannot reach it).
    Open,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Token(_) => "Auth::Token(..)",
            Self::Open => "Auth::Open",
        })
    }
}

/// Where the token came from, for the daemon's log (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env(String),
    /// Generated now or by an earlier start, kept in this file.
    File(std::path::PathBuf, bool),
}

impl Auth {
    #[must_use]
    pub fn token(token: &str) -> Self {
        Self::Token(Sha256::digest(token.as_bytes()).into())
    }

    #[must_use]
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open)
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ.
    #[must_use]
    pub fn accepts(&self, presented: &str) -> bool {
        match self {
            Self::Open => true,
            Self::Token(expected) => {
                let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
                expected
                    .iter()
                    .zip(got.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
            }
        }
    }

    /// The token from the environment variable `env`, or the one kept in the state dir, or a
    /// new random one written there (0600): the operator reads it from the file; it is never
    /// logged.
    ///
    /// # Errors
    /// When no token is set and the file cannot be read or written.
    pub fn resolve(env: &str, state_dir: &Path) -> std::io::Result<(Self, TokenSource)> {
        if let Ok(token) = std::env::var(env)
            && !token.trim().is_empty()
        {
            return Ok((Self::token(token.trim()), TokenSource::Env(env.to_owned())));
        }
        let path = state_dir.join(TOKEN_FILE);
        if let Ok(token) = std::fs::read_to_string(&path)
            && !token.trim().is_empty()
        {
            return Ok((Self::token(token.trim()), TokenSource::File(path, false)));
        }
        let token = random_token()?;
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?
        };
        writeln!(file, "{token}")?;
        file.sync_all()?;
        Ok((Self::token(&token), TokenSource::File(path, true)))
    }
}

/// 32 random bytes from the kernel, hex.
fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Requires `Authorization: Bearer <token>` (unless the API is open).
pub async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let auth = &state.0.auth;
    if auth.is_open() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match presented {
        Some(token) if auth.accepts(token) => next.run(request).await,
        Some(_) => unauthorized("the bearer token is not the API's token"),
        None => unauthorized(
            "this route needs `Authorization: Bearer <token>`; the token is the value of the environment variable named by `api.token_env` in maxions.yaml (default MAXIONS_API_TOKEN), or the one the daemon generated in its state dir (`api-token`)",
        ),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "unauthorized",
        message,
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"maxions\""),
    );
    response
}

/// Refuses what a browser sends on behalf of another site: an `Origin` that is not this
/// server's own, or `Sec-Fetch-Site: cross-site`. With an open API, also a `Host` that is not a
/// loopback name (a DNS-rebinding page would send its own name).
pub async fn same_origin(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Err(message) = check_origin(request.headers(), state.0.auth.is_open()) {
        return ApiError::new(axum::http::StatusCode::FORBIDDEN, "forbidden", message)
            .into_response();
    }
    next.run(request).await
}

fn check_origin(headers: &HeaderMap, open: bool) -> Result<(), String> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if open && !loopback_host(host) {
        return Err(format!(
            "the API is open (no token) and answers only requests to a loopback host, not `{}`",
            crate::cli::terminal::printable(host)
        ));
    }
    // A link followed from another site (a top-level navigation) may open the dashboard: it
    // reads nothing and changes nothing, and the page then asks for the token. Anything else
    // a browser sends for another site is refused.
    let navigation = headers
        .get("sec-fetch-mode")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|mode| mode.eq_ignore_ascii_case("navigate"))
        && headers.get(header::ORIGIN).is_none();
    if !navigation
        && headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|site| site.eq_ignore_ascii_case("cross-site"))
    {
        return Err("cross-site requests are refused (CORS is off)".to_owned());
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let own = |scheme: &str| format!("{scheme}://{host}");
        if origin != own("http") && origin != own("https") {
            return Err(format!(
                "requests from the origin `{}` are refused: CORS is off, and only the dashboard this server serves may call it from a browser",
                crate::cli::terminal::printable(origin)
            ));
        }
    }
    Ok(())
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_accepted_and_nothing_else() {
        let auth = Auth::token("s3cret-token");
        assert!(auth.accepts("s3cret-token"));
        for wrong in ["", "s3cret-toke", "s3cret-token ", "S3CRET-TOKEN", "x"] {
            assert!(!auth.accepts(wrong), "{wrong:?}");
        }
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost:7878",
            "127.0.0.1:1",
            "127.1.2.3",
            "[::1]:80",
            "LOCALHOST",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:7878",
            "10.0.0.1",
            "",
            "localhost.evil.example",
            "[::2]",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, v.parse().unwrap());
            }
            map
        };
        let own = headers(&[
            ("host", "127.0.0.1:7878"),
            ("origin", "http://127.0.0.1:7878"),
        ]);
        assert!(check_origin(&own, false).is_ok());
        assert!(check_origin(&headers(&[("host", "127.0.0.1:7878")]), true).is_ok());
        let foreign = headers(&[
            ("host", "127.0.0.1:7878"),
            ("origin", "https://evil.example"),
        ]);
        assert!(check_origin(&foreign, false).is_err());
        let fetch = headers(&[("host", "127.0.0.1:7878"), ("sec-fetch-site", "cross-site")]);
        assert!(check_origin(&fetch, false).is_err());
        // Following a link from another site opens the page; a form posted from one does not
        // pass (it carries an Origin).
        let link = headers(&[
            ("host", "127.0.0.1:7878"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
        ]);
        assert!(check_origin(&link, false).is_ok());
        let form = headers(&[
            ("host", "127.0.0.1:7878"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
            ("origin", "https://evil.example"),
        ]);
        assert!(check_origin(&form, false).is_err());
        let rebound = headers(&[("host", "evil.example:7878")]);
        assert!(check_origin(&rebound, true).is_err());
        assert!(check_origin(&rebound, false).is_ok());
    }
}
