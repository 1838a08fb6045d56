//! `checkout: {}`: maxions fetches the repository into its own mirror on this machine (with the
//! forge's token, which never leaves maxions), bundles the base branch and streams the bundle
//! into the sandbox through the engine API. The sandbox never talks to the git host.

use tokio_util::sync::CancellationToken;

use super::{Done, StepError};
use crate::runner::workspace::BASE_BUNDLE;
use crate::runner::{CheckedOut, Runner};
use crate::sandbox::ExecUser;

impl Runner<'_> {
    pub(in crate::runner) async fn checkout(
        &mut self,
        _id: &str,
        cancel: &CancellationToken,
    ) -> Result<Done, StepError> {
        let Some(url) = self.mirror.as_ref().map(|m| m.url().to_owned()) else {
            return Err(StepError::Fatal(
                "no mirror was opened for `checkout`".into(),
            ));
        };
        let credentials = self.git_credentials(&url).await?;
        let (Some(mirror), Some(scratch)) = (&self.mirror, self.scratch.clone()) else {
            return Err(StepError::Fatal("the run has no scratch directory".into()));
        };
        let fetched = tokio::select! {
            () = cancel.cancelled() => return Err(StepError::Cancelled),
            fetched = mirror.fetch(credentials.as_ref(), cancel) => fetched,
        };
        fetched.map_err(|e| StepError::Failed {
            code: None,
            reason: format!(
                "cannot fetch {}: {}",
                self.task.repo.clone_url,
                self.redacted(&e)
            ),
        })?;
        let lease = mirror
            .remote_branch(&self.task.branch, credentials.as_ref(), cancel)
            .await
            .map_err(|e| StepError::Failed {
                code: None,
                reason: format!(
                    "cannot read branch {} of {}: {}",
                    self.task.branch,
                    self.task.repo.clone_url,
                    self.redacted(&e)
                ),
            })?;
        let bundle = scratch.join("base.bundle");
        let base = mirror
            .bundle_base(&self.context.base, &bundle, cancel)
            .await
            .map_err(|e| StepError::Failed {
                code: None,
                reason: self.redacted(&e),
            })?;
        // Read by both users while no process of the sandbox's user lives.
        self.sandbox()?
            .copy_in(&bundle, BASE_BUNDLE, 0o644, ExecUser::Sandbox)
            .await
            .map_err(|e| StepError::Fatal(format!("cannot copy the repository in: {e}")))?;
        let _ = std::fs::remove_file(&bundle);
        let base_tree = self
            .seed_repo(&self.context.base.clone(), &base, cancel)
            .await?;
        self.checkout = Some(CheckedOut {
            base,
            base_tree,
            lease,
        });
        Ok(Done {
            reason: Some(format!(
                "{} at {} on branch {}",
                self.context.base,
                self.checkout.as_ref().map_or("", |c| c.base.short()),
                self.task.branch
            )),
            ..Done::ok()
        })
    }
}
