//! The forge credentials of one run: minted when first needed, minted again when a long run
//! comes near their expiry, and every token minted revoked when the run ends, so that none
//! outlives it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::{Forge, ForgeError, GitCredentials};
use crate::config::RepoRef;

/// Credentials that have less than this left are replaced before use: a clone or push that
/// starts with them must not fail halfway.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Hands out git credentials for one repository during one run.
///
/// ```ignore
/// let creds = RunCredentials::new(forge.clone(), repo.clone());
/// let now = creds.get().await?;   // mints (App) or hands out the PAT
/// // ... hours later: re-minted if fewer than 5 minutes remain
/// creds.revoke_all().await;       // at the end of the run, whatever happened
/// ```
pub struct RunCredentials {
    forge: Arc<dyn Forge>,
    repo: RepoRef,
    margin: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    current: Option<GitCredentials>,
    /// Every credential handed out and not yet revoked (older ones may still be in use by a
    /// git process that started with them, so they are revoked at the end, not on renewal).
    issued: Vec<GitCredentials>,
}

impl RunCredentials {
    #[must_use]
    pub fn new(forge: Arc<dyn Forge>, repo: RepoRef) -> Self {
        Self {
            forge,
            repo,
            margin: DEFAULT_MARGIN,
            state: Mutex::new(State::default()),
        }
    }

    /// Renews credentials that have less than `margin` left (default [`DEFAULT_MARGIN`]).
    #[must_use]
    pub fn with_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// Credentials that stay valid for at least the margin, minting new ones if there are none
    /// yet or the current ones are about to expire.
    ///
    /// # Errors
    /// What [`Forge::git_credentials`] returns.
    pub async fn get(&self) -> Result<GitCredentials, ForgeError> {
        let mut state = self.state.lock().await;
        if let Some(current) = &state.current
            && !current.expires_within(self.margin)
        {
            return Ok(current.clone());
        }
        let fresh = self.forge.git_credentials(&self.repo).await?;
        if !state.issued.contains(&fresh) {
            state.issued.push(fresh.clone());
        }
        state.current = Some(fresh.clone());
        Ok(fresh)
    }

    /// Whether `remote_url` may be given these credentials (it is on the forge they are for).
    #[must_use]
    pub fn applies_to(&self, remote_url: &str) -> bool {
        self.forge.serves(remote_url)
    }

    /// Revokes every credential handed out (a no-op for a PAT). Call it when the run ends, on
    /// every path; afterwards [`Self::get`] mints afresh. Tries them all and returns the errors,
    /// each safe to log.
    pub async fn revoke_all(&self) -> Vec<ForgeError> {
        let issued = {
            let mut state = self.state.lock().await;
            state.current = None;
            std::mem::take(&mut state.issued)
        };
        let mut errors = Vec::new();
        for credentials in &issued {
            if let Err(err) = self.forge.revoke(credentials).await {
                errors.push(err);
            }
        }
        errors
    }
}

impl Drop for RunCredentials {
    /// A run that ends without [`RunCredentials::revoke_all`] (a panic, an early return) still
    /// gets its tokens revoked, best effort, on the runtime it dropped in.
    fn drop(&mut self) {
        let issued = std::mem::take(&mut self.state.get_mut().issued);
        if issued.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let forge = Arc::clone(&self.forge);
            runtime.spawn(async move {
                for credentials in &issued {
                    if let Err(error) = forge.revoke(credentials).await {
                        tracing::warn!(%error, "could not revoke a run's git credentials");
                    }
                }
            });
        }
    }
}

impl std::fmt::Debug for RunCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCredentials")
            .field("repo", &self.repo.full_name)
            .field("margin", &self.margin)
            .finish_non_exhaustive()
    }
}
