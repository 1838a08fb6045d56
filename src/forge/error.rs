//! What can go wrong talking to a forge, each with what happened and what to do about it. No
//! variant ever holds a token or key: messages that come back from the forge are scrubbed of the
//! secrets in play before they are kept here.

use std::path::PathBuf;

/// A forge failure, worded for the person who has to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForgeError {
    #[error(
        "no GitHub credentials are configured: set `github.app` (app_id, installation_id and \
         private_key_env or private_key_file) or `github.token_env` in maxions.yaml"
    )]
    NotConfigured,

    #[error(
        "environment variable `{var}` ({what}) is not set or is empty; export it in the \
         environment maxions runs in"
    )]
    MissingEnv { var: String, what: &'static str },

    #[error(
        "`github.app` names no private key: set `private_key_env` (an environment variable \
         holding the PEM) or `private_key_file` in maxions.yaml"
    )]
    NoPrivateKey,

    #[error(
        "could not read the GitHub App private key from `{path}`: {reason}; check \
         `github.app.private_key_file` and the file's permissions",
        path = path.display()
    )]
    UnreadableKeyFile { path: PathBuf, reason: String },

    #[error(
        "the GitHub App private key in {origin} is not usable: {problem}; download a new private \
         key (a .pem file) from the App's settings page"
    )]
    InvalidPrivateKey { origin: String, problem: String },

    #[error("the token in {origin} is not usable: {problem}; set it to a GitHub token")]
    InvalidToken { origin: String, problem: String },

    #[error(
        "`{url}` is not a usable GitHub API URL: {problem}; use `https://api.github.com`, or \
         `https://HOST/api/v3` for GitHub Enterprise"
    )]
    InvalidApiUrl { url: String, problem: String },

    #[error(
        "`{url}` is not a usable `github.web_url`: {problem}; use the address repositories are \
         cloned from, e.g. `https://github.com` or `https://HOST` for GitHub Enterprise"
    )]
    InvalidWebUrl { url: String, problem: String },

    #[error("GitHub refused the credentials while {action} (401 {message}); {hint}")]
    Unauthorized {
        action: String,
        message: String,
        hint: String,
    },

    #[error("GitHub did not allow {action} (403 {message}); {hint}")]
    Forbidden {
        action: String,
        message: String,
        hint: String,
    },

    #[error("GitHub found nothing while {action} (404 {message}); {hint}")]
    NotFound {
        action: String,
        message: String,
        hint: String,
    },

    #[error("GitHub rejected {action} (422 {message}{details}); {hint}")]
    Rejected {
        action: String,
        message: String,
        /// GitHub's list of validation errors, already formatted (`: a; b`), or empty.
        details: String,
        hint: String,
    },

    #[error("GitHub answered {status} while {action}: {message}; {hint}")]
    Api {
        action: String,
        status: u16,
        message: String,
        hint: String,
    },

    #[error(
        "could not reach GitHub at {api_url} while {action}: {reason}; check the network and \
         `github.api_url`"
    )]
    Unreachable {
        api_url: String,
        action: String,
        reason: String,
    },

    #[error("unexpected answer from GitHub while {action}: {reason}")]
    UnexpectedResponse { action: String, reason: String },

    /// A passing failure (5xx, 429, a secondary rate limit, a dropped connection) that lasted
    /// through every attempt.
    #[error("{last} (maxions tried {attempts} times, with pauses, and gave up)")]
    GaveUp {
        attempts: u32,
        last: Box<ForgeError>,
    },

    #[error(
        "GitHub asked maxions to wait {wait_secs} s while {action} ({status} {message}), longer \
         than the {max_secs} s maxions waits; run the task again after that, and if it keeps \
         happening lower `concurrency` or the number of scheduled tasks"
    )]
    WaitTooLong {
        action: String,
        status: u16,
        message: String,
        wait_secs: u64,
        max_secs: u64,
    },
}

impl ForgeError {
    /// The HTTP status GitHub answered with, if it answered.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized { .. } => Some(401),
            Self::Forbidden { .. } => Some(403),
            Self::NotFound { .. } => Some(404),
            Self::Rejected { .. } => Some(422),
            Self::Api { status, .. } | Self::WaitTooLong { status, .. } => Some(*status),
            Self::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }
}
