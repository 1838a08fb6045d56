//! `agent` steps and fix rounds: the blueprint's agent on a prompt. This version drives
//! `kind: command` agents (any program, the prompt on its stdin).
//!
//! An agent gets the agent's own secrets and, in an `agent` step, that step's env and secrets;
//! in a fix round it gets nothing of the check step's (those are for the checks).

use tokio_util::sync::CancellationToken;

use super::StepError;
use crate::config::Step;
use crate::config::blueprint::AgentKind;
use crate::runner::{REPO_DIR, Runner};
use crate::sandbox::{ExecOutcome, ExecRequest};

impl Runner<'_> {
    /// Runs the agent on `prompt`; `step` is the `agent` step whose env and secrets it gets, or
    /// `None` for a fix round.
    pub(in crate::runner) async fn agent(
        &mut self,
        step: Option<&Step>,
        id: &str,
        prompt: &str,
        cancel: &CancellationToken,
    ) -> Result<ExecOutcome, StepError> {
        let Some(agent) = &self.task.blueprint.agent else {
            return Err(StepError::Fatal("the blueprint has no `agent`".into()));
        };
        let argv = match (&agent.kind, &agent.command) {
            (AgentKind::Command, Some(command)) => {
                let mut argv = command.clone();
                argv.extend(agent.flags.iter().cloned());
                argv
            }
            (AgentKind::Command, None) => {
                return Err(StepError::Fatal(
                    "`agent.kind: command` needs `agent.command`".into(),
                ));
            }
            (other, _) => {
                return Err(StepError::Fatal(format!(
                    "agent kind `{}` is not supported by this version of maxions yet; use `kind: command`",
                    other.as_str()
                )));
            }
        };
        let base = ExecRequest::new(argv).stdin(prompt.as_bytes().to_vec());
        let mut request = match step {
            Some(step) => self.step_request(step, id, base)?,
            None => base,
        };
        request.workdir = Some(REPO_DIR.to_owned());
        for name in &agent.secrets {
            if let Some(secret) = self.secrets.get(&name.0)
                && !request.secrets.iter().any(|s| s.name() == secret.name())
            {
                request.secrets.push(secret.clone());
            }
        }
        self.exec_logged(id, &request, cancel).await
    }
}
