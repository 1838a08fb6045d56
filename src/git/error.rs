//! What can go wrong in host-side git: running git itself, the mirror on disk, and the checks a
//! bundle from the sandbox must pass. Every message is lowercase, says which git command or which
//! check failed, and never holds a secret value (git's stderr is redacted before it lands here).

use std::path::PathBuf;
use std::time::Duration;

use super::oid::Oid;
use super::scan::Encoding;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run `{command}`: {source} (is git installed and on PATH?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}){}", stderr_suffix(.stderr))]
    Failed {
        command: String,
        status: String,
        /// The last lines of git's stderr, redacted and with control characters escaped.
        stderr: String,
    },
    #[error("`{command}` timed out after {}s and was killed", .after.as_secs())]
    TimedOut { command: String, after: Duration },
    #[error("`{command}` was cancelled")]
    Cancelled { command: String },
    #[error("`{command}` printed something unexpected: {output}")]
    Unexpected { command: String, output: String },
    #[error("cannot {action} `{}`: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the mirror `{}` stayed locked by another run for {}s; try again when that run's git \
         work is done",
        .path.display(), .after.as_secs()
    )]
    LockTimedOut { path: PathBuf, after: Duration },
    #[error("remote URL `{url}` is not supported: {reason}")]
    UnsupportedUrl { url: String, reason: &'static str },
    #[error("{what} `{value}` is not valid: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("branch `{branch}` does not exist in {url}")]
    BranchMissing { branch: String, url: String },
    #[error("{url} has no default branch (HEAD is not a symbolic ref; is the repository empty?)")]
    NoDefaultBranch { url: String },
    #[error("the branch bundle from the sandbox was refused: {0}; nothing was pushed")]
    BundleRejected(BundleRejection),
    #[error(
        "{place} holds the value of secret `{name}`{}; nothing was pushed (remove it from the \
         branch, or stop giving that secret to the step that wrote it)",
        encoding.describe()
    )]
    SecretFound {
        /// Where, e.g. "file `src/config.rs`"; paths are escaped, never raw.
        place: String,
        name: String,
        encoding: Encoding,
    },
    #[error(
        "the push to `{branch}` was refused because the remote branch moved since it was read \
         (expected {}); fetch again and re-run",
        .expected.as_ref().map_or("no branch", Oid::as_str)
    )]
    LeaseBroken {
        branch: String,
        expected: Option<Oid>,
    },
    #[error(
        "after the push, `{branch}` on the remote is {} instead of {expected}; something else \
         moved it",
        .found.as_ref().map_or("missing", Oid::as_str)
    )]
    ReadBack {
        branch: String,
        expected: Oid,
        found: Option<Oid>,
    },
}

/// Why a bundle from the sandbox was refused. The sandbox is hostile, so each reason is a check
/// it could try to get past.
#[derive(Debug, thiserror::Error)]
pub enum BundleRejection {
    #[error("it is not a valid bundle for this repository: {0}")]
    Corrupt(String),
    #[error("it must hold exactly one ref, `refs/heads/{expected}`, but holds {found}")]
    Refs { expected: String, found: String },
    #[error("its branch points at a {kind}, not a commit")]
    NotACommit { kind: String },
    #[error("its commit {commit} does not descend from the base {base}")]
    NotFromBase { commit: Oid, base: Oid },
    #[error("its tree {found} is not the tree that passed the checks ({expected})")]
    TreeMismatch { expected: Oid, found: Oid },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}
