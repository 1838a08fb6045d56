//! Credentials for one git push or clone over HTTPS. They reach git only through the environment
//! of the exec that needs them (see [`GitCredentials::git_env`]): never a remote URL, never
//! `.git/config`, never the container's own environment.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};

use crate::secret::Secret;

/// A username and token for HTTPS git. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct GitCredentials {
    username: String,
    token: Secret,
    expires_at: Option<DateTime<Utc>>,
}

impl GitCredentials {
    /// The username GitHub expects beside an App installation token or a PAT.
    pub const TOKEN_USERNAME: &str = "x-access-token";

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
        }
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
    /// is written to any config file and the token is not on a command line. Empty for a
    /// remote that is not `http(s)://` (no header is needed there).
    ///
    /// The values contain the token: give them to one exec only, and feed
    /// [`Self::redactions`] to the redactor.
    #[must_use]
    pub fn git_env(&self, remote_url: &str) -> Vec<(String, String)> {
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
            .finish()
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
        let env = credentials().git_env("https://user@github.com:443/octo/hello.git");
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
