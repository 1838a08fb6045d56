//! Credentials for one git push or clone over HTTPS. They reach git only through the environment
//! of the exec that needs them (see [`GitCredentials::git_env`]): never a remote URL, never
//! `.git/config`, never the container's own environment. They belong to one origin (the forge's
//! git host) and are given to no other: see [`GitCredentials::applies_to`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};

use crate::secret::Secret;

/// A username and token for HTTPS git, and the one origin they are for. `Debug` never shows the
/// token.
#[derive(Clone, PartialEq, Eq)]
pub struct GitCredentials {
    username: String,
    token: Secret,
    expires_at: Option<DateTime<Utc>>,
    /// The forge's git origin; `None` until [`Self::scoped_to`]: then they apply nowhere.
    origin: Option<Origin>,
}

impl GitCredentials {
    /// The username GitHub expects beside an App installation token or a PAT.
    pub const TOKEN_USERNAME: &str = "x-access-token";

    /// Credentials that apply to no remote until [`Self::scoped_to`] names their origin.
    #[must_use]
    pub fn new(
        username: impl Into<String>,
        token: Secret,
        expires_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            username: username.into(),
            token,
            expires_at,
            origin: None,
        }
    }

    /// The same credentials, for the origin (scheme, host and port) of `forge_url` only: the
    /// forge's web URL, e.g. `https://github.com`. A URL that is not plain `http(s)://host` (user
    /// info, odd characters) scopes them to nothing.
    #[must_use]
    pub fn scoped_to(mut self, forge_url: &str) -> Self {
        self.origin = Origin::parse(forge_url);
        self
    }

    /// Whether these credentials may be sent to `remote_url`: only if its scheme, host and port
    /// are exactly those of the forge they came from. A clone URL on any other host, a URL with
    /// user info (`https://github.com@evil.example/`), or one git and maxions might read
    /// differently gets nothing.
    #[must_use]
    pub fn applies_to(&self, remote_url: &str) -> bool {
        match (&self.origin, Origin::parse(remote_url)) {
            (Some(own), Some(remote)) => *own == remote,
            _ => false,
        }
    }

    /// Whether the token expires within `margin` from now (never, if the forge gave no expiry).
    #[must_use]
    pub fn expires_within(&self, margin: std::time::Duration) -> bool {
        let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::MAX);
        self.expires_at
            .is_some_and(|at| at <= Utc::now().checked_add_signed(margin).unwrap_or(at))
    }

    #[must_use]
    pub fn username(&self) -> &str {
        &self.username
    }

    #[must_use]
    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// When the token stops working, if the forge said (an App token lives one hour).
    #[must_use]
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// The value of an HTTP `Authorization` header: `Basic base64(username:token)`.
    #[must_use]
    pub fn authorization(&self) -> Secret {
        let basic = BASE64.encode(format!("{}:{}", self.username, self.token.expose()));
        Secret::new("GIT_AUTHORIZATION", format!("Basic {basic}"))
            .expect("a constant name and a long value make a valid secret")
    }

    /// Environment variables that make git send [`Self::authorization`] to `remote_url`'s origin
    /// (scheme, host and port) and nowhere else, for the one exec they are given to. They use
    /// git's `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n` (git 2.31+), so nothing
    /// is written to any config file and the token is not on a command line. Empty unless
    /// [`Self::applies_to`] `remote_url`: a remote on another host gets no header.
    ///
    /// The values contain the token: give them to one exec only, and feed
    /// [`Self::redactions`] to the redactor.
    #[must_use]
    pub fn git_env(&self, remote_url: &str) -> Vec<(String, String)> {
        if !self.applies_to(remote_url) {
            return Vec::new();
        }
        let Some(origin) = http_origin(remote_url) else {
            return Vec::new();
        };
        vec![
            ("GIT_CONFIG_COUNT".to_owned(), "1".to_owned()),
            (
                "GIT_CONFIG_KEY_0".to_owned(),
                format!("http.{origin}.extraHeader"),
            ),
            (
                "GIT_CONFIG_VALUE_0".to_owned(),
                format!("Authorization: {}", self.authorization().expose()),
            ),
        ]
    }

    /// Every form in which the token could show up in output (the token itself and the base64
    /// of `username:token` that the header carries), for the redactor.
    #[must_use]
    pub fn redactions(&self) -> Vec<Secret> {
        let encoded = BASE64.encode(format!("{}:{}", self.username, self.token.expose()));
        let encoded = Secret::new("GIT_AUTHORIZATION", encoded)
            .expect("a constant name and a long value make a valid secret");
        vec![self.token.clone(), encoded]
    }
}

impl fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitCredentials")
            .field("username", &self.username)
            .field("token", &self.token)
            .field("expires_at", &self.expires_at)
            .field("origin", &self.origin)
            .finish()
    }
}

/// Whether `a` and `b` are plain `http(s)://` URLs with the same scheme, host and port (see
/// [`GitCredentials::applies_to`] for what counts as plain).
#[must_use]
pub fn same_origin(a: &str, b: &str) -> bool {
    match (Origin::parse(a), Origin::parse(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The scheme, host and port of a plain `http(s)://host[:port]/...` URL, with the default port
/// filled in and the host in lower case. Anything unusual in the authority (user info, `%`,
/// `\`, an empty host, a port that is not a number) makes it `None`, so that no parser
/// difference between maxions and git (curl) can make a URL look like the forge's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn parse(url: &str) -> Option<Self> {
        let (scheme, rest) = url.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if authority.is_empty()
            || !authority
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        {
            return None;
        }
        let (host, port) = match authority.rsplit_once(':') {
            // An IPv6 literal without a port: `[::1]`.
            Some((_, tail)) if tail.ends_with(']') => (authority, None),
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let port = match port {
            Some(port) => port.parse::<u16>().ok()?,
            None => default_port,
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() || host.starts_with('.') {
            return None;
        }
        Some(Self { scheme, host, port })
    }
}

/// `scheme://host[:port]/` of an http(s) URL, without any user info; `None` for other URLs.
fn http_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{host}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> GitCredentials {
        GitCredentials::new(
            GitCredentials::TOKEN_USERNAME,
            Secret::new("GIT_TOKEN", "ghs_0123456789abcdef").unwrap(),
            None,
        )
        .scoped_to("https://github.com")
    }

    #[test]
    fn credentials_apply_to_their_forge_origin_only() {
        let creds = credentials();
        for yes in [
            "https://github.com/octo/hello.git",
            "https://GitHub.com:443/octo/hello",
            "HTTPS://github.com./x",
        ] {
            assert!(creds.applies_to(yes), "{yes}");
        }
        for no in [
            "http://github.com/octo/hello.git",
            "https://github.com:8443/octo/hello.git",
            "https://gitlab.com/octo/hello.git",
            "https://github.com.evil.example/octo/hello.git",
            "https://github.com@evil.example/octo/hello.git",
            "https://user:pw@github.com/octo/hello.git",
            "https://evil.example\\@github.com/x",
            "https://github.com%2eevil.example/x",
            "ssh://git@github.com/octo/hello.git",
            "git@github.com:octo/hello.git",
            "file:///tmp/repo",
            "",
        ] {
            assert!(!creds.applies_to(no), "{no}");
            assert!(creds.git_env(no).is_empty(), "{no}");
        }
        let unscoped = GitCredentials::new(
            GitCredentials::TOKEN_USERNAME,
            Secret::new("GIT_TOKEN", "ghs_0123456789abcdef").unwrap(),
            None,
        );
        assert!(!unscoped.applies_to("https://github.com/octo/hello.git"));
        let local = credentials().scoped_to("http://127.0.0.1:9000/");
        assert!(local.applies_to("http://127.0.0.1:9000/octo/hello.git"));
        assert!(!local.applies_to("http://127.0.0.1:9001/octo/hello.git"));
        assert!(!local.applies_to("http://localhost:9000/octo/hello.git"));
        let v6 = credentials().scoped_to("http://[::1]:9000");
        assert!(v6.applies_to("http://[::1]:9000/x"));
        assert!(!v6.applies_to("http://[::1]/x"));
    }

    #[test]
    fn expiry_margin() {
        let soon = GitCredentials::new(
            "x",
            Secret::new("T", "token-value").unwrap(),
            Some(Utc::now() + chrono::Duration::minutes(2)),
        );
        assert!(soon.expires_within(std::time::Duration::from_secs(300)));
        assert!(!soon.expires_within(std::time::Duration::from_secs(60)));
        assert!(!credentials().expires_within(std::time::Duration::from_secs(300)));
    }

    #[test]
    fn debug_hides_the_token() {
        let text = format!("{:?}", credentials());
        assert!(!text.contains("ghs_0123456789abcdef"), "{text}");
        assert!(text.contains("x-access-token"), "{text}");
    }

    #[test]
    fn authorization_is_basic_with_username_and_token() {
        let header = credentials().authorization();
        let encoded = header.expose().strip_prefix("Basic ").unwrap();
        let decoded = String::from_utf8(BASE64.decode(encoded).unwrap()).unwrap();
        assert_eq!(decoded, "x-access-token:ghs_0123456789abcdef");
        assert_eq!(format!("{header:?}"), "***");
    }

    #[test]
    fn git_env_scopes_the_header_to_the_remote_origin() {
        let env = credentials().git_env("https://github.com:443/octo/hello.git");
        assert_eq!(env[0], ("GIT_CONFIG_COUNT".into(), "1".into()));
        assert_eq!(
            env[1],
            (
                "GIT_CONFIG_KEY_0".into(),
                "http.https://github.com:443/.extraHeader".into()
            )
        );
        assert!(env[2].1.starts_with("Authorization: Basic "));
        assert!(credentials().git_env("file:///tmp/repo").is_empty());
        assert!(
            credentials()
                .git_env("git@github.com:octo/hello.git")
                .is_empty()
        );
    }

    #[test]
    fn redactions_cover_the_token_and_the_header() {
        let values: Vec<String> = credentials()
            .redactions()
            .iter()
            .map(|s| s.expose().to_owned())
            .collect();
        assert!(values.contains(&"ghs_0123456789abcdef".to_owned()));
        let header = credentials().authorization();
        assert!(header.expose().ends_with(&values[1]));
    }
}
