//! `check` steps and their `fix` rounds: run the checks; while some fail and rounds are left,
//! give the failures to the agent, stop everything it started, and run the checks again. The
//! tree the checks last ran on is recorded: `commit` commits that tree or nothing.

use tokio_util::sync::CancellationToken;

use super::{Done, StepError};
use crate::config::Step;
use crate::config::blueprint::{Check, Fix, OnFailure};
use crate::runner::{Event, Runner, StepStatus};
use crate::sandbox::ExecRequest;
use crate::template::{FailedCheck, Mode};

/// How much of a failed check's output the fix prompt gets.
const CHECK_OUTPUT_CHARS: usize = 16 << 10;

impl Runner<'_> {
    pub(in crate::runner) async fn check(
        &mut self,
        step: &Step,
        id: &str,
        checks: &[Check],
        fix: Option<&Fix>,
        cancel: &CancellationToken,
    ) -> Result<Done, StepError> {
        let mut failed = self.run_checks(step, id, checks, 0, cancel).await?;
        let mut round = 0;
        // Once a budget stopped the agent (`on_exceeded: draft_pr`), checks run without fixes.
        let fix = fix.filter(|_| self.budget_stop.is_none());
        if let Some(fix) = fix {
            while !failed.is_empty() && round < fix.max_rounds {
                round += 1;
                self.fix_rounds += 1;
                self.context.failed = Some(failed.clone());
                let prompt = self.render(&fix.agent, Mode::Text, id);
                self.context.failed = None;
                let prompt = prompt?;
                let fixing: Vec<String> = failed.iter().map(|f| f.id.clone()).collect();
                let verdict = match self.agent(None, id, &prompt, cancel).await {
                    Ok(outcome) => outcome.verdict,
                    Err(StepError::Budget(reason)) => {
                        return self
                            .after_budget(step, id, checks, round, reason, cancel)
                            .await;
                    }
                    Err(other) => return Err(other),
                };
                // The checks judge what the agent left in the tree, not a process of its that is
                // still editing it.
                self.end_step().await?;
                if let crate::agent::Verdict::Failed { reason, .. } = &verdict {
                    self.emit(Event::Warning {
                        message: format!(
                            "step `{id}`: the agent failed in fix round {round} ({reason}); running the checks anyway"
                        ),
                    });
                }
                failed = self.run_checks(step, id, checks, round, cancel).await?;
                self.emit(Event::FixRound {
                    step: id.to_owned(),
                    round,
                    max_rounds: fix.max_rounds,
                    fixing,
                    passed: failed.is_empty(),
                });
            }
        }
        self.record_checks(id, &failed, cancel).await?;
        if failed.is_empty() {
            return Ok(Done::ok());
        }
        let names: Vec<&str> = failed.iter().map(|f| f.id.as_str()).collect();
        let reason = if round > 0 {
            format!(
                "checks still failing after {round} fix round(s): {}",
                names.join(", ")
            )
        } else {
            format!("checks failed: {}", names.join(", "))
        };
        if self.budget_stop.is_some() {
            // The draft pull request reports them; the run goes on to it.
            return Ok(Done {
                status: StepStatus::Failed,
                exit_code: failed.first().map(|f| f.exit_code),
                reason: Some(reason),
            });
        }
        if fix.is_some_and(|f| f.on_failure == OnFailure::Continue) {
            self.emit(Event::Warning {
                message: format!("step `{id}`: {reason}; going on (`on_failure: continue`)"),
            });
            return Ok(Done {
                status: StepStatus::Failed,
                exit_code: failed.first().map(|f| f.exit_code),
                reason: Some(reason),
            });
        }
        Err(StepError::Failed {
            code: failed.first().map(|f| f.exit_code),
            reason,
        })
    }

    /// Records what the last run of the checks found, and the tree they ran on (the only tree
    /// `commit` may commit).
    async fn record_checks(
        &mut self,
        id: &str,
        failed: &[FailedCheck],
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        self.context.run.failed_checks = u32::try_from(failed.len()).unwrap_or(u32::MAX);
        self.failed_checks = failed.iter().map(|f| f.id.clone()).collect();
        if self.checkout.is_some() {
            self.end_step().await?;
            let tree = self.snapshot_tree(id, cancel).await?;
            self.checked_tree = Some((id.to_owned(), tree));
        }
        Ok(())
    }

    /// A budget stopped the agent in fix round `round`. With `on_exceeded: draft_pr` the checks
    /// run once more on what the agent left, so that it can be committed and reported in the
    /// draft pull request; otherwise the stop ends the step.
    async fn after_budget(
        &mut self,
        step: &Step,
        id: &str,
        checks: &[Check],
        round: u32,
        reason: String,
        cancel: &CancellationToken,
    ) -> Result<Done, StepError> {
        if !self.draft_after_budget() {
            return Err(StepError::Budget(reason));
        }
        self.end_step().await?;
        let failed = self.run_checks(step, id, checks, round, cancel).await?;
        self.record_checks(id, &failed, cancel).await?;
        Ok(Done {
            status: StepStatus::BudgetExceeded,
            exit_code: None,
            reason: Some(reason),
        })
    }

    async fn run_checks(
        &mut self,
        step: &Step,
        id: &str,
        checks: &[Check],
        round: u32,
        cancel: &CancellationToken,
    ) -> Result<Vec<FailedCheck>, StepError> {
        let mut failed = Vec::new();
        for check in checks {
            let script = self.render(&check.run, Mode::Shell, id)?;
            let mut request =
                self.step_request(step, id, ExecRequest::new(["sh", "-ec", &script]))?;
            if let Some(timeout) = check.timeout {
                request.timeout = Some(timeout.0);
            }
            let outcome = match self.exec_logged(id, &request, cancel).await {
                Ok(outcome) => outcome,
                Err(StepError::TimedOut(reason)) => {
                    failed.push(FailedCheck {
                        id: check.id.clone(),
                        exit_code: -1,
                        output: reason,
                    });
                    continue;
                }
                Err(other) => return Err(other),
            };
            if !outcome.status.success() {
                let code = outcome.status.code().unwrap_or(-1);
                self.emit(Event::CheckFailed {
                    step: id.to_owned(),
                    check: check.id.clone(),
                    exit_code: outcome.status.code(),
                    round,
                });
                let text = outcome.tail_text();
                let start = text.len().saturating_sub(CHECK_OUTPUT_CHARS);
                let start = (start..text.len())
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                failed.push(FailedCheck {
                    id: check.id.clone(),
                    exit_code: code,
                    output: text[start..].to_owned(),
                });
            }
        }
        Ok(failed)
    }
}
