//! `commit`: with no process of the sandbox user alive, maxions hashes the work tree with its
//! own git, refuses a tree other than the one the checks last ran on, bundles it out, and makes
//! the commit itself in its mirror after verifying the bundle (one ref, descends from the base,
//! the expected tree, no secret in any new file). Parent, message and author are maxions'; only
//! the tree comes from the sandbox.

use tokio_util::sync::CancellationToken;

use super::{Done, StepError};
use crate::config::blueprint::Commit;
use crate::git::{Author, Expect, Import};
use crate::runner::workspace::MAX_BUNDLE;
use crate::runner::{Event, Runner, StepStatus};
use crate::sandbox::ExecUser;
use crate::template::Mode;

impl Runner<'_> {
    pub(in crate::runner) async fn commit_step(
        &mut self,
        id: &str,
        commit: &Commit,
        cancel: &CancellationToken,
    ) -> Result<Done, StepError> {
        let Some(checkout) = &self.checkout else {
            return Err(StepError::Fatal(
                "`commit` needs the repository from a `checkout` step".into(),
            ));
        };
        let (base, base_tree) = (checkout.base.clone(), checkout.base_tree.clone());
        let message = self.render(&commit.message, Mode::Text, id)?;
        let message = if message.trim().is_empty() {
            format!("maxions: {}", first_line(&self.context.task))
        } else {
            message
        };
        let author = commit
            .author
            .clone()
            .or_else(|| self.task.config.git.as_ref().map(|g| g.author.clone()));
        let (name, email) = author.map_or_else(
            || ("maxions".to_owned(), "maxions@localhost".to_owned()),
            |a| (a.name, a.email),
        );
        // Nothing the agent started may still be changing the tree while it is hashed.
        self.end_step().await?;
        let tree = self.snapshot_tree(id, cancel).await?;
        if let Some((check, checked)) = &self.checked_tree
            && *checked != tree
        {
            return Err(StepError::Failed {
                code: None,
                reason: format!(
                    "the work tree changed after step `{check}` checked it; maxions commits only checked code (run the checks after the last change)"
                ),
            });
        }
        if tree == base_tree {
            self.no_changes = true;
            return Ok(Done {
                status: StepStatus::NoChanges,
                exit_code: Some(0),
                reason: Some("nothing to commit: the working tree is unchanged".into()),
            });
        }
        let inside = self.bundle_tree(&base, &tree, cancel).await?;
        let Some(scratch) = self.scratch.clone() else {
            return Err(StepError::Fatal("the run has no scratch directory".into()));
        };
        let bundle = scratch.join("out.bundle");
        self.sandbox()?
            .copy_out(&inside, &bundle, MAX_BUNDLE, ExecUser::Maxions)
            .await
            .map_err(|e| StepError::Fatal(format!("cannot copy the change out: {e}")))?;
        let Some(mirror) = &self.mirror else {
            return Err(StepError::Fatal("no mirror for `commit`".into()));
        };
        let expect = Expect {
            run_id: self.run_id.clone(),
            branch: self.task.branch.clone(),
            base,
            tree: Some(tree),
            secrets: self.scan_secrets(),
            message,
            author: Author { name, email },
        };
        let imported = mirror.import(&bundle, &expect, cancel).await;
        let _ = std::fs::remove_file(&bundle);
        let imported = match imported {
            Ok(Import::Changed(imported)) => imported,
            Ok(Import::Unchanged) => {
                self.no_changes = true;
                return Ok(Done {
                    status: StepStatus::NoChanges,
                    exit_code: Some(0),
                    reason: Some("nothing to commit: the working tree is unchanged".into()),
                });
            }
            Err(error) => {
                return Err(StepError::Failed {
                    code: None,
                    reason: self.redacted(&error),
                });
            }
        };
        self.emit(Event::Commit {
            sha: imported.commit.to_string(),
        });
        self.commit = Some(imported.commit);
        Ok(Done::ok())
    }

    /// Every value the run could have seen and must never push: its secrets and the forge's
    /// token.
    fn scan_secrets(&self) -> Vec<crate::secret::Secret> {
        let mut secrets: Vec<_> = self.secrets.values().cloned().collect();
        for credentials in &self.tokens {
            secrets.extend(credentials.redactions());
        }
        secrets
    }
}

pub(super) fn first_line(text: &str) -> &str {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("update")
        .trim()
}
