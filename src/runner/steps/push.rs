//! `push`: maxions pushes the commit it made, and only that, to the task's branch, from its
//! mirror on this machine, then reads the remote branch back. The branch must differ from the
//! base and carry the configured prefix, checked again here against the resolved base.

use tokio_util::sync::CancellationToken;

use super::{Done, StepError};
use crate::runner::{Event, Runner};

impl Runner<'_> {
    pub(in crate::runner) async fn push(
        &mut self,
        _id: &str,
        cancel: &CancellationToken,
    ) -> Result<Done, StepError> {
        let branch = self.task.branch.clone();
        crate::config::task::check_push_branch(
            &branch,
            Some(&self.context.base),
            &self.task.config.branch_prefix,
        )
        .map_err(|reason| StepError::Failed { code: None, reason })?;
        let Some(url) = self.mirror.as_ref().map(|m| m.url().to_owned()) else {
            return Err(StepError::Fatal("`push` needs a `checkout` step".into()));
        };
        let credentials = self.git_credentials(&url).await?;
        let (Some(mirror), Some(commit), Some(checkout)) =
            (&self.mirror, &self.commit, &self.checkout)
        else {
            return Err(StepError::Fatal(
                "`push` needs a commit from a `commit` step".into(),
            ));
        };
        let pushed = tokio::select! {
            () = cancel.cancelled() => return Err(StepError::Cancelled),
            pushed = mirror.push_with_lease(
                commit,
                &branch,
                checkout.lease.as_ref(),
                credentials.as_ref(),
                cancel,
            ) => pushed,
        };
        pushed.map_err(|e| StepError::Failed {
            code: None,
            reason: format!("cannot push {branch}: {}", self.redacted(&e)),
        })?;
        self.emit(Event::Pushed {
            branch,
            remote: self.task.repo.clone_url.clone(),
        });
        Ok(Done::ok())
    }
}
