//! `pull_request`: open the pull request for the task's branch, or update the open one (done by
//! maxions through the forge's API, never by the agent). Title and body are redacted first.

use super::{Done, StepError};
use crate::config::blueprint::{Draft, PullRequest};
use crate::forge::PullRequestSpec;
use crate::runner::{Event, PullRequestRecord, RunOptions, Runner, StepStatus};
use crate::template::Mode;

impl Runner<'_> {
    /// What the pull request reports after a budget stopped the agent, if one did.
    fn budget_report(&self) -> Option<String> {
        let stop = self.budget_stop.as_ref()?;
        let usage = &self.agent_usage;
        let cost = usage
            .cost_usd
            .map_or_else(String::new, |c| format!(", ${c:.4}"));
        let checks = if self.failed_checks.is_empty() {
            "The checks passed on the code as the agent left it.".to_owned()
        } else {
            format!(
                "These checks still fail: {}.",
                self.failed_checks
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Some(format!(
            "---\n**maxions stopped the agent before it finished** (step `{step}`, `budget.{limit}`): {reason}.\n\nThe run's agents used {tokens} tokens{cost}. {checks}\n\nThis is a draft: review what the agent left before relying on it.\n",
            step = stop.step,
            limit = stop.limit,
            reason = stop.reason,
            tokens = usage.total_tokens(),
        ))
    }

    pub(in crate::runner) async fn pull_request(
        &mut self,
        id: &str,
        pr: &PullRequest,
        options: &RunOptions<'_>,
    ) -> Result<Done, StepError> {
        let title = self.render(&pr.title, Mode::Text, id)?.trim().to_owned();
        let body = self.render(&pr.body, Mode::Text, id)?;
        let draft = match &pr.draft {
            Draft::Fixed(value) => *value,
            Draft::Template(source) => {
                let text = self.render(source, Mode::Text, id)?;
                matches!(
                    text.trim().to_ascii_lowercase().as_str(),
                    "true" | "yes" | "1"
                )
            }
        };
        let (title, body, draft) = match self.budget_report() {
            // The agent did not finish: the pull request is a draft that says so, and its title
            // stands even when the step that was to write it did not run.
            Some(report) => (
                if title.is_empty() {
                    format!(
                        "maxions (unfinished): {}",
                        super::commit::first_line(&self.context.task)
                    )
                } else {
                    title
                },
                if body.trim().is_empty() {
                    report
                } else {
                    format!("{}\n\n{report}", body.trim_end())
                },
                true,
            ),
            None => (title, body, draft),
        };
        let title = self.redactor.redact_str(&title).into_owned();
        let body = self.redactor.redact_str(&body).into_owned();
        let mut record = PullRequestRecord {
            opened: false,
            number: None,
            url: None,
            created: None,
            title: title.clone(),
            body: body.clone(),
            draft,
            head: self.task.branch.clone(),
            base: self.context.base.clone(),
        };
        // A forge opens pull requests only on repositories it serves: never on its own
        // `owner/name` for a clone URL of another host.
        let forge = options
            .forge
            .as_ref()
            .filter(|f| f.serves(&self.task.repo.clone_url));
        let Some(forge) = forge else {
            let reason = "no forge is configured for this repository (no `github:` in maxions.yaml, a local repository, or one on another host): this is the pull request maxions would open".to_owned();
            self.emit(Event::PrNotOpened {
                title,
                body,
                draft,
                reason: reason.clone(),
            });
            self.pull_request = Some(record);
            return Ok(Done {
                status: StepStatus::Succeeded,
                exit_code: None,
                reason: Some(reason),
            });
        };
        let spec = PullRequestSpec {
            head_branch: self.task.branch.clone(),
            base: self.context.base.clone(),
            title,
            body,
            draft,
            labels: pr.labels.clone(),
            reviewers: pr.reviewers.clone(),
        };
        let outcome = forge
            .open_or_update_pull_request(&self.task.repo, &spec)
            .await
            .map_err(|e| StepError::Failed {
                code: None,
                reason: format!("cannot open the pull request: {e}"),
            })?;
        for warning in &outcome.warnings {
            self.emit(Event::Warning {
                message: warning.clone(),
            });
        }
        self.emit(Event::Pr {
            number: outcome.number,
            url: outcome.url.clone(),
            created: outcome.created,
            draft: outcome.draft,
        });
        record.opened = true;
        record.number = Some(outcome.number);
        record.url = Some(outcome.url);
        record.created = Some(outcome.created);
        record.draft = outcome.draft;
        self.pull_request = Some(record);
        Ok(Done::ok())
    }
}
