//! Forges: where branches are pushed and pull requests opened. maxions talks to a forge only
//! through [`Forge`], so that GitHub (the one implementation today, [`github::GitHub`]) can be
//! joined later by GitLab or Gitea without the runner changing.
//!
//! A forge hands out two things: short-lived [`GitCredentials`] for one push or clone, and an
//! idempotent "open or update the pull request for this branch", so that a re-run of a task
//! updates its pull request instead of opening a second one.

pub mod credentials;
pub mod error;
pub mod github;
pub mod retry;
pub mod run_credentials;

use std::future::Future;
use std::pin::Pin;

pub use credentials::GitCredentials;
pub use error::ForgeError;
pub use github::GitHub;
pub use run_credentials::RunCredentials;

use crate::config::RepoRef;

/// A boxed future, so that [`Forge`] can be used as a trait object (`Arc<dyn Forge>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A code forge (GitHub, later GitLab or Gitea).
pub trait Forge: Send + Sync {
    /// Credentials for HTTPS git access to `repo`, for this run only, scoped to the forge's git
    /// origin (see [`GitCredentials::applies_to`]). A GitHub App mints a fresh installation token
    /// on every call (never cached across runs; hold them in a [`RunCredentials`], which re-mints
    /// before expiry and revokes them all at the end); a personal access token is handed out as
    /// it is.
    fn git_credentials<'a>(
        &'a self,
        repo: &'a RepoRef,
    ) -> BoxFuture<'a, Result<GitCredentials, ForgeError>>;

    /// Makes `credentials` (from [`Self::git_credentials`]) stop working now, instead of at their
    /// expiry: GitHub's `DELETE /installation/token`. A no-op for a personal access token, which
    /// maxions does not own. A token that no longer works counts as revoked.
    fn revoke<'a>(
        &'a self,
        credentials: &'a GitCredentials,
    ) -> BoxFuture<'a, Result<(), ForgeError>>;

    /// Whether `remote_url` is on this forge: its scheme, host and port are the forge's git
    /// origin. Only then do the forge's credentials and pull requests apply to it.
    fn serves(&self, remote_url: &str) -> bool;

    /// Opens the pull request described by `spec`, or updates the open one whose head is
    /// `spec.head_branch` (title, body, base and draft state), then adds labels and requests
    /// reviewers. Safe to call again and again for the same branch: one pull request results.
    fn open_or_update_pull_request<'a>(
        &'a self,
        repo: &'a RepoRef,
        spec: &'a PullRequestSpec,
    ) -> BoxFuture<'a, Result<PullRequestOutcome, ForgeError>>;

    /// The repository's default branch (the base of a task that names none).
    fn default_branch<'a>(&'a self, repo: &'a RepoRef)
    -> BoxFuture<'a, Result<String, ForgeError>>;
}

/// What the pull request for a branch should look like.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullRequestSpec {
    /// The branch with the changes, in the same repository (not a fork).
    pub head_branch: String,
    /// The branch to merge into.
    pub base: String,
    pub title: String,
    pub body: String,
    pub draft: bool,
    /// Labels to add (existing labels are kept).
    pub labels: Vec<String>,
    /// Reviewers to request: user logins, or `org/team-slug` for a team.
    pub reviewers: Vec<String>,
}

/// What [`Forge::open_or_update_pull_request`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestOutcome {
    pub number: u64,
    /// The page a person opens.
    pub url: String,
    /// `true` if this call opened it, `false` if it updated the one already open.
    pub created: bool,
    /// Whether the pull request is a draft now.
    pub draft: bool,
    /// Problems that did not stop the pull request from being opened (a label or reviewer
    /// GitHub refused), each a full sentence for the run's log.
    pub warnings: Vec<String>,
}
