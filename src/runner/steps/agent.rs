//! `agent` steps and fix rounds: the blueprint's agent on a prompt, through its adapter in
//! [`crate::agent`]. The runner streams what the agent prints into `agent`, `usage` and
//! `output` events, sums usage per step and per run, and stops the agent (every process it
//! started is killed) the moment a budget is spent or it has been silent for too long.
//!
//! An agent gets the agent's own secrets and, in an `agent` step, that step's env and secrets;
//! in a fix round it gets nothing of the check step's (those are for the checks). Its home
//! directory is made fresh for every exec and removed after it, once nothing of it runs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::StepError;
use crate::agent::{self, Activity, Call, NetworkNote, Parser, Usage, Verdict};
use crate::config::Step;
use crate::config::blueprint::{AgentSpec, Budget, Network};
use crate::runner::exec::{Batch, ticking};
use crate::runner::{Event, REPO_DIR, Runner};
use crate::sandbox::{ExecOutcome, ExecRequest, ExecStatus, OutputStream};
use crate::secret::Secret;

/// An agent silent this long is killed unless the blueprint says otherwise.
pub(in crate::runner) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How many more times an agent runs when its model provider failed, unless the blueprint says.
/// Every agent already retries a failed call itself (bounded by its adapter), so once is enough.
const DEFAULT_RETRIES: u32 = 1;
/// The wait before the first retry; each next one waits five times longer, at most a minute.
const RETRY_BACKOFF: Duration = Duration::from_secs(2);
/// The longest line of an agent's event stream that is parsed; longer ones are logged as cut.
const MAX_LINE: usize = 4 << 20;
/// `usage` events are written at most this often while an agent streams (and at its end).
const USAGE_EVERY: Duration = Duration::from_millis(500);

/// What stopped an agent before it ended on its own.
#[derive(Debug, Clone)]
pub(in crate::runner) struct BudgetStop {
    pub step: String,
    /// The budget's field: `max_tokens`, `max_cost_usd`, `max_duration`, `idle_timeout`.
    pub limit: &'static str,
    pub reason: String,
}

/// How one agent exec ended.
pub(in crate::runner) struct AgentOutcome {
    pub exec: ExecOutcome,
    pub verdict: Verdict,
    /// Whether the agent's stdout was its event stream (else text, as a command's).
    pub structured: bool,
}

impl Runner<'_> {
    /// Runs the agent on `prompt` (again, with backoff, when its model provider failed before
    /// it did anything); `step` is the `agent` step whose env and secrets it gets, or `None`
    /// for a fix round. A budget stop is [`StepError::Budget`].
    pub(in crate::runner) async fn agent(
        &mut self,
        step: Option<&Step>,
        id: &str,
        prompt: &str,
        cancel: &CancellationToken,
    ) -> Result<AgentOutcome, StepError> {
        let Some(spec) = self.task.blueprint.agent.clone() else {
            return Err(StepError::Fatal("the blueprint has no `agent`".into()));
        };
        if let Some(stop) = &self.budget_stop {
            return Err(StepError::Budget(stop.reason.clone()));
        }
        let retries = spec.retries.unwrap_or(DEFAULT_RETRIES);
        let mut attempt = 1;
        loop {
            let (outcome, acted) = self.agent_once(&spec, step, id, prompt, cancel).await?;
            let Verdict::Failed {
                reason,
                provider: true,
            } = &outcome.verdict
            else {
                return Ok(outcome);
            };
            // A retry is safe only when the agent changed nothing: it failed before any tool.
            if acted || attempt > retries {
                return Ok(outcome);
            }
            let delay = RETRY_BACKOFF
                .saturating_mul(5u32.saturating_pow(attempt - 1))
                .min(Duration::from_secs(60));
            self.emit(Event::AgentRetry {
                step: id.to_owned(),
                attempt: attempt + 1,
                max_attempts: retries + 1,
                delay_ms: super::super::millis(delay),
                reason: reason.clone(),
            });
            tokio::select! {
                () = cancel.cancelled() => return Err(StepError::Cancelled),
                () = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
        }
    }

    /// One exec of the agent. Returns how it ended and whether it called any tool.
    async fn agent_once(
        &mut self,
        spec: &AgentSpec,
        step: Option<&Step>,
        id: &str,
        prompt: &str,
        cancel: &CancellationToken,
    ) -> Result<(AgentOutcome, bool), StepError> {
        let adapter = agent::for_kind(spec.kind);
        let home = format!("{}/{}", agent::AGENT_HOME, spec.kind.as_str());
        let instructions = self.instructions(spec);
        let mut secrets: BTreeMap<String, Secret> = BTreeMap::new();
        for name in spec
            .secrets
            .iter()
            .chain(spec.provider.as_ref().and_then(|p| p.key.as_ref()))
        {
            if let Some(secret) = self.secrets.get(&name.0) {
                secrets.insert(name.0.clone(), secret.clone());
            }
        }
        let invocation = adapter
            .invocation(&Call {
                spec,
                prompt,
                home: &home,
                workdir: self.agent_workdir(),
                instructions: &instructions,
                secrets: &secrets,
            })
            .map_err(|e| StepError::Fatal(e.to_string()))?;
        self.reset_home(&home, cancel).await?;
        let sandbox = self.sandbox()?;
        for (path, contents) in &invocation.files {
            sandbox
                .write_file(path, contents, 0o600)
                .await
                .map_err(|e| StepError::Fatal(format!("cannot prepare the agent: {e}")))?;
        }
        let mut request = match step {
            Some(step) => self.step_request(step, id, invocation.request)?,
            None => invocation.request,
        };
        request.workdir = Some(self.agent_workdir().to_owned());
        for secret in secrets.into_values() {
            if !request.secrets.iter().any(|s| s.name() == secret.name()) {
                request.secrets.push(secret);
            }
        }
        let run = self
            .stream_agent(
                id,
                &request,
                adapter.parser(spec),
                adapter.structured(),
                spec,
                cancel,
            )
            .await;
        // Nothing the agent started outlives it, and nothing it left in its home (a session, a
        // key's fingerprint) reaches the next step.
        self.end_step().await?;
        self.remove_home(&home, cancel).await;
        run
    }

    /// Where the agent works: the repository once a `checkout` step put it there, else the
    /// workspace.
    fn agent_workdir(&self) -> &'static str {
        if self.uses_checkout() {
            REPO_DIR
        } else {
            crate::sandbox::WORKSPACE
        }
    }

    /// maxions' system prompt, then the blueprint's instructions.
    fn instructions(&self, spec: &AgentSpec) -> String {
        let sandbox = &self.task.blueprint.sandbox;
        let network = match sandbox.network {
            Network::None => NetworkNote::None,
            Network::Host => NetworkNote::Host,
            Network::Allowlist => {
                NetworkNote::Allowlist(sandbox.allow.iter().map(|p| p.0.clone()).collect())
            }
        };
        let mut text = agent::system_prompt(self.agent_workdir(), &network);
        if let Some(extra) = &spec.instructions {
            text.push('\n');
            text.push_str(extra);
            if !extra.ends_with('\n') {
                text.push('\n');
            }
        }
        text
    }

    async fn reset_home(&self, home: &str, cancel: &CancellationToken) -> Result<(), StepError> {
        let script =
            format!("chmod -R u+rwx {home} 2>/dev/null; rm -rf {home} && mkdir -p -m 0700 {home}");
        self.run_quiet(
            "preparing the agent's home",
            &ExecRequest::new(["sh", "-c", &script]),
            cancel,
        )
        .await
        .map(drop)
    }

    async fn remove_home(&self, home: &str, cancel: &CancellationToken) {
        let script = format!("chmod -R u+rwx {home} 2>/dev/null; rm -rf {home}");
        if let Err(StepError::Failed { reason, .. } | StepError::Fatal(reason)) = self
            .run_quiet(
                "removing the agent's home",
                &ExecRequest::new(["sh", "-c", &script]),
                cancel,
            )
            .await
        {
            self.emit(Event::Warning { message: reason });
        }
    }

    /// Runs the agent's command, turning its output into events as it comes, and stops it when
    /// a budget is spent or it is silent for too long.
    async fn stream_agent(
        &mut self,
        id: &str,
        request: &ExecRequest,
        parser: Box<dyn Parser>,
        structured: bool,
        spec: &AgentSpec,
        cancel: &CancellationToken,
    ) -> Result<(AgentOutcome, bool), StepError> {
        let budget = spec.budget.clone().unwrap_or_default();
        let idle_limit = budget.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |t| t.0);
        let stop_token = cancel.child_token();
        let state = Mutex::new(Stream {
            batch: Batch::new(id, self.logged_output),
            parser,
            structured,
            line: Vec::new(),
            cut_line: false,
            acted: false,
            last_output: Instant::now(),
            first_output: None,
            gave_up: None,
            base: self.agent_usage,
            usage: Usage::default(),
            usage_sent: None,
            stop: None,
        });
        let lock = || {
            state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let this = &*self;
        let emit = |event: Event| this.emit(event);
        let sandbox = this.sandbox()?;
        this.mark_dirty(request);
        let started = Instant::now();
        let used_time = this.agent_time;
        let mut sink = |stream: OutputStream, bytes: &[u8]| {
            let mut state = lock();
            state.push(stream, bytes, &emit);
            if state.stop.is_none()
                && let Some((limit, reason)) = over_budget(&budget, &state.total())
            {
                state.stop = Some((limit, reason));
                stop_token.cancel();
            }
            if state.gave_up.is_none()
                && let Some(reason) = state.parser.give_up()
            {
                state.gave_up = Some(reason);
                stop_token.cancel();
            }
        };
        let result = ticking(sandbox.exec(request, &mut sink, &stop_token), || {
            let mut state = lock();
            state.batch.flush(&emit);
            state.send_usage(id, &emit, false);
            if state.stop.is_none() {
                let silent = state.last_output.elapsed();
                let spent = used_time + started.elapsed();
                let stop = if silent >= idle_limit {
                    Some(("idle_timeout", format!(
                        "the agent printed nothing for {} (`budget.idle_timeout`); it was killed",
                        crate::config::units::HumanDuration(idle_limit)
                    )))
                } else {
                    budget.max_duration.filter(|max| spent >= max.0).map(|max| (
                        "max_duration",
                        format!(
                            "the run's agents have worked for {} (`budget.max_duration`); the agent was stopped",
                            crate::config::units::HumanDuration(max.0)
                        ),
                    ))
                };
                if let Some(stop) = stop {
                    state.stop = Some(stop);
                    stop_token.cancel();
                }
            }
        })
        .await;
        let mut state = state
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.finish(&emit);
        state.send_usage(id, &emit, true);
        let logged = state.batch.logged();
        let (stop, usage, acted) = (state.stop.take(), state.usage, state.acted);
        let first_output = state.first_output;
        let gave_up = state.gave_up.take();
        let parser = state.parser;
        self.logged_output += logged;
        self.agent_usage = self.agent_usage.plus(&usage);
        let entry = self.step_usage.entry(id.to_owned()).or_default();
        *entry = entry.plus(&usage);
        let outcome = result.map_err(|e| self.sandbox_failed(&e))?;
        self.exec_time += outcome.duration;
        self.agent_time += outcome.duration;
        if let Some((limit, reason)) = stop
            && !cancel.is_cancelled()
        {
            self.emit(Event::BudgetExceeded {
                step: id.to_owned(),
                limit: limit.to_owned(),
                reason: reason.clone(),
            });
            self.budget_stop = Some(BudgetStop {
                step: id.to_owned(),
                limit,
                reason: reason.clone(),
            });
            return Err(StepError::Budget(reason));
        }
        match &outcome.status {
            ExecStatus::Cancelled if gave_up.is_some() && !cancel.is_cancelled() => {}
            ExecStatus::Cancelled => return Err(StepError::Cancelled),
            ExecStatus::TimedOut(_) => {
                return Err(StepError::TimedOut(outcome.status.to_string()));
            }
            _ => {}
        }
        let verdict = match gave_up {
            Some(reason) => Verdict::Failed {
                reason,
                provider: true,
            },
            None => parser.verdict(&outcome.status),
        };
        self.emit(Event::AgentFinished {
            step: id.to_owned(),
            agent: spec.kind.as_str().to_owned(),
            duration_ms: super::super::millis(outcome.duration),
            first_output_ms: first_output.map(|at| super::super::millis(at - started)),
            succeeded: verdict == Verdict::Succeeded,
            reason: match &verdict {
                Verdict::Failed { reason, .. } => Some(reason.clone()),
                Verdict::Succeeded => None,
            },
            usage,
        });
        Ok((
            AgentOutcome {
                exec: outcome,
                verdict,
                structured,
            },
            acted,
        ))
    }
}

/// The first limit `total` is over, and why, in words.
fn over_budget(budget: &Budget, total: &Usage) -> Option<(&'static str, String)> {
    if let Some(max) = budget.max_tokens
        && total.total_tokens() >= max
    {
        return Some((
            "max_tokens",
            format!(
                "the run's agents have used {} tokens, the budget is {max} (`budget.max_tokens`); the agent was stopped",
                total.total_tokens()
            ),
        ));
    }
    if let Some(max) = budget.max_cost_usd
        && let Some(cost) = total.cost_usd
        && cost >= max
    {
        return Some((
            "max_cost_usd",
            format!(
                "the run's agents have spent ${cost:.4}, the budget is ${max:.2} (`budget.max_cost_usd`); the agent was stopped"
            ),
        ));
    }
    None
}

/// One agent exec's output on its way to events.
struct Stream<'a> {
    batch: Batch<'a>,
    parser: Box<dyn Parser>,
    structured: bool,
    /// The stdout line being read.
    line: Vec<u8>,
    cut_line: bool,
    /// The agent called a tool (so it may have changed something).
    acted: bool,
    last_output: Instant,
    /// When the first byte of output came.
    first_output: Option<Instant>,
    /// Why the agent was stopped although it still worked (see [`Parser::give_up`]).
    gave_up: Option<String>,
    /// What the run's agents had spent before this exec.
    base: Usage,
    usage: Usage,
    /// When the last `usage` event went out, and what it said.
    usage_sent: Option<(Instant, Usage)>,
    stop: Option<(&'static str, String)>,
}

impl Stream<'_> {
    fn total(&self) -> Usage {
        self.base.plus(&self.usage)
    }

    fn push(&mut self, stream: OutputStream, bytes: &[u8], emit: &dyn Fn(Event)) {
        self.last_output = Instant::now();
        self.first_output.get_or_insert(self.last_output);
        if stream == OutputStream::Stderr {
            self.batch.push(stream, bytes, emit);
            return;
        }
        if !self.structured {
            self.batch.push(stream, bytes, emit);
        }
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.take(&rest[..end]);
            self.end_line(emit);
            rest = &rest[end + 1..];
        }
        self.take(rest);
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.line.len() + bytes.len() > MAX_LINE {
            self.cut_line = true;
            let room = MAX_LINE.saturating_sub(self.line.len());
            self.line.extend_from_slice(&bytes[..room.min(bytes.len())]);
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn end_line(&mut self, emit: &dyn Fn(Event)) {
        let line = std::mem::take(&mut self.line);
        let cut = std::mem::take(&mut self.cut_line);
        let text = String::from_utf8_lossy(&line);
        let mut activities = Vec::new();
        let understood = !cut && self.parser.line(&text, &mut activities);
        if self.structured && !understood && !text.trim().is_empty() {
            let mut shown = agent::clip(&text);
            if cut {
                shown.push_str(" (a line longer than 4 MiB, cut)");
            }
            shown.push('\n');
            self.batch
                .push(OutputStream::Stdout, shown.as_bytes(), emit);
        }
        for activity in activities {
            if matches!(activity, Activity::ToolCall { .. }) {
                self.acted = true;
            }
            emit(Event::Agent {
                step: self.batch.step().to_owned(),
                activity,
            });
        }
        self.usage = self.parser.usage();
    }

    fn finish(&mut self, emit: &dyn Fn(Event)) {
        if !self.line.is_empty() {
            self.end_line(emit);
        }
        self.batch.finish(emit);
    }

    /// A `usage` event when the usage changed (at most every [`USAGE_EVERY`] unless `last`).
    fn send_usage(&mut self, step: &str, emit: &dyn Fn(Event), last: bool) {
        let changed = self.usage_sent.is_none_or(|(_, sent)| sent != self.usage);
        let due = last
            || self
                .usage_sent
                .is_none_or(|(at, _)| at.elapsed() >= USAGE_EVERY);
        if !changed || !due || (self.usage.is_empty() && !last) {
            return;
        }
        if last && self.usage.is_empty() && self.usage_sent.is_none() {
            return;
        }
        self.usage_sent = Some((Instant::now(), self.usage));
        emit(Event::Usage {
            step: step.to_owned(),
            usage: self.usage,
            run_usage: self.total(),
        });
    }
}
