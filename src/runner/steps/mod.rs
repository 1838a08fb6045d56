//! One module per step kind; this file dispatches to them and holds what they share: how a step
//! reports its end, and how an exec request gets a step's environment and secrets.

pub(super) mod agent;
mod check;
mod checkout;
mod commit;
mod pull_request;
mod push;

use tokio_util::sync::CancellationToken;

use super::{RunOptions, Runner};
use crate::config::{Step, StepKind};
use crate::sandbox::{ExecOutcome, ExecRequest, ExecStatus};
use crate::template::Mode;

/// The largest step output file read back.
pub(super) const MAX_OUTPUT_FILE: usize = 1 << 20;

/// What a step that ran to its end reports.
pub(super) struct Done {
    pub status: super::StepStatus,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
}

impl Done {
    pub fn ok() -> Self {
        Self {
            status: super::StepStatus::Succeeded,
            exit_code: Some(0),
            reason: None,
        }
    }
}

pub(super) enum StepError {
    Failed {
        code: Option<i64>,
        reason: String,
    },
    TimedOut(String),
    Cancelled,
    /// The sandbox or maxions itself failed: the run cannot go on.
    Fatal(String),
    /// A budget stopped the agent (`agent.budget`); the run goes on as `on_exceeded` says.
    Budget(String),
}

impl Runner<'_> {
    pub(super) async fn run_step(
        &mut self,
        step: &Step,
        id: &str,
        cancel: &CancellationToken,
        options: &RunOptions<'_>,
    ) -> Result<Done, StepError> {
        let Some(kind) = step.kind() else {
            return Err(StepError::Fatal(
                "the step has no kind (checkout, run, agent, check, ...)".into(),
            ));
        };
        match kind {
            StepKind::Checkout(_) => self.checkout(id, cancel).await,
            StepKind::Run(script) => {
                let script = self.render(script, Mode::Shell, id)?;
                let request =
                    self.step_request(step, id, ExecRequest::new(["sh", "-ec", &script]))?;
                let outcome = self.exec_logged(id, &request, cancel).await?;
                finish(&outcome)
            }
            StepKind::Agent(prompt) => {
                if let Some(stop) = &self.budget_stop {
                    return Ok(Done {
                        status: super::StepStatus::Skipped,
                        exit_code: None,
                        reason: Some(format!(
                            "the agent's budget is spent (step `{}`)",
                            stop.step
                        )),
                    });
                }
                let prompt = self.render(prompt, Mode::Text, id)?;
                let outcome = self.agent(Some(step), id, &prompt, cancel).await?;
                match outcome.verdict {
                    crate::agent::Verdict::Succeeded => Ok(Done::ok()),
                    // A program's own words say best what went wrong: its last line.
                    crate::agent::Verdict::Failed { .. } if !outcome.structured => {
                        finish(&outcome.exec)
                    }
                    crate::agent::Verdict::Failed { reason, .. } => Err(StepError::Failed {
                        code: outcome.exec.status.code(),
                        reason,
                    }),
                }
            }
            StepKind::Check(checks, fix) => self.check(step, id, checks, fix, cancel).await,
            StepKind::Commit(commit) => self.commit_step(id, commit, cancel).await,
            StepKind::Push(_) => self.push(id, cancel).await,
            StepKind::PullRequest(pr) => self.pull_request(id, pr, options).await,
        }
    }

    /// An exec request with the step's own env, secrets and timeout (and nothing of any other
    /// step's).
    pub(super) fn step_request(
        &self,
        step: &Step,
        id: &str,
        mut request: ExecRequest,
    ) -> Result<ExecRequest, StepError> {
        for (name, value) in &step.env {
            let value = self.render(value, Mode::Text, id)?;
            request.env.push((name.clone(), value));
        }
        for name in &step.secrets {
            if let Some(secret) = self.secrets.get(&name.0) {
                request.secrets.push(secret.clone());
            }
        }
        request.timeout = step.timeout.map(|t| t.0);
        Ok(request)
    }
}

/// A command's outcome as a step's: on failure the reason ends with the last line the command
/// printed, which is usually what went wrong.
pub(super) fn finish(outcome: &ExecOutcome) -> Result<Done, StepError> {
    match &outcome.status {
        ExecStatus::Exited(0) => Ok(Done::ok()),
        ExecStatus::Cancelled => Err(StepError::Cancelled),
        ExecStatus::TimedOut(_) => Err(StepError::TimedOut(outcome.status.to_string())),
        other => {
            let reason = match last_line(outcome) {
                Some(line) => format!("{other}: {}", truncate(&line, 200)),
                None => other.to_string(),
            };
            Err(StepError::Failed {
                code: other.code(),
                reason,
            })
        }
    }
}

/// The last line a command printed that is not blank: usually what went wrong.
pub(super) fn last_line(outcome: &ExecOutcome) -> Option<String> {
    let tail = outcome.tail_text();
    tail.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

pub(super) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}
