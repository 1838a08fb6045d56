//! The runner: takes one loaded task through its blueprint inside one sandbox, and tells an
//! [`EventSink`] everything that happens. It is a library call: the CLI, the daemon and tests
//! drive it the same way, each with its own sink and cancellation token.
//!
//! This file is the orchestrator (secrets, sandbox, the step loop, the result); each step kind
//! lives in `steps/`. Judgment steps (`agent`, `fix`) go to the agent; everything else is done
//! by maxions, deterministically, and git's network side (`checkout`, `push`) happens on the
//! trusted side, from maxions' own mirror, so that no credential ever enters the sandbox.

pub mod events;
mod exec;
mod launch;
pub mod result;
mod secrets;
mod steps;
mod workspace;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::load::LoadedTask;
use crate::config::{Step, StepKind};
use crate::forge::{Forge, GitCredentials, RunCredentials};
use crate::git::{Mirror, Oid};
use crate::sandbox::egress::EgressEvent;
use crate::sandbox::redact::Redactor;
use crate::sandbox::{ContainerSpec, Engine, Sandbox, SandboxError};
use crate::secret::Secret;
use crate::template::{Context, Mode, RunInfo, Templates};
pub use events::{Event, EventLine, EventSink, JsonlLog, RunStatus, StepStatus, Tee};
pub use launch::{Launch, LaunchError, forge_for, launch};
pub use result::{PullRequestRecord, RunResult, StepSummary};

/// Where the repository lives in the sandbox: `checkout` puts it there, `commit` reads it.
pub const REPO_DIR: &str = "/workspace/repo";
/// A run's time limit when the blueprint sets none: nothing runs unbounded.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);
/// How long a cancelled run waits for the sandbox being made, to remove it.
const CREATE_GRACE: Duration = Duration::from_secs(15);
/// How many egress decisions may wait to be logged; more are counted and reported, not kept.
const EGRESS_QUEUE: usize = 1024;

static EVENT_SCHEMA: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| crate::config::schema::generate::<EventLine>("event.schema.json"));
static RESULT_SCHEMA: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| crate::config::schema::generate::<RunResult>("result.schema.json"));

/// The schemas of what a run writes: one log line, and the result file.
#[must_use]
pub fn schemas() -> Vec<crate::config::schema::SchemaFile> {
    vec![
        crate::config::schema::SchemaFile {
            file_name: "event.schema.json",
            schema: &EVENT_SCHEMA,
        },
        crate::config::schema::SchemaFile {
            file_name: "result.schema.json",
            schema: &RESULT_SCHEMA,
        },
    ]
}

/// Reads an environment variable by name.
pub type EnvReader = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What a run needs besides the task.
pub struct RunOptions<'a> {
    pub engine: &'a dyn Engine,
    /// Where pull requests are opened and git credentials come from; `None` records the pull
    /// request that would be opened, and git runs without credentials.
    pub forge: Option<Arc<dyn Forge>>,
    pub run_id: String,
    /// Keep the sandbox when the run ends (for debugging).
    pub keep: bool,
    /// Reads the environment variables secrets come from (the process environment by default).
    pub env: EnvReader,
    /// Where maxions keeps its mirrors and per-run scratch files. Default: the task's
    /// [`LoadedTask::state_dir`].
    pub state_dir: Option<PathBuf>,
    /// Why the run happens, for its log (`run_started`'s `trigger`).
    pub trigger: Option<String>,
    /// Why it was cancelled, when whoever cancels it says so first.
    pub cancel_reason: CancelReason,
    /// The name of the engine it is placed on, for `sandbox_ready` and the reason of a run the
    /// engine ended.
    pub engine_name: Option<String>,
}

/// Why a run was cancelled: set by whoever cancels it, just before cancelling its token, and
/// shown in the log and the result instead of a bare "cancelled".
#[derive(Debug, Clone, Default)]
pub struct CancelReason(Arc<std::sync::OnceLock<String>>);

impl CancelReason {
    /// Records why; the first reason given wins.
    pub fn set(&self, reason: impl Into<String>) {
        let _ = self.0.set(reason.into());
    }

    #[must_use]
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

impl<'a> RunOptions<'a> {
    #[must_use]
    pub fn new(engine: &'a dyn Engine, run_id: impl Into<String>) -> Self {
        Self {
            engine,
            forge: None,
            run_id: run_id.into(),
            keep: false,
            env: Arc::new(|name| std::env::var(name).ok()),
            state_dir: None,
            trigger: None,
            cancel_reason: CancelReason::default(),
            engine_name: None,
        }
    }
}

/// A new run id: sortable by time, unique enough for one machine.
#[must_use]
pub fn new_run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = chrono::Utc::now();
    let salt = (u64::from(std::process::id()) << 16)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed)
        ^ u64::from(now.timestamp_subsec_nanos());
    format!("{}-{:06x}", now.format("%Y%m%dT%H%M%S"), salt & 0xff_ffff)
}

/// Runs `task` to the end and returns what happened; every event goes to `sink` first. Never
/// panics on bad input and never returns early without a `run_finished` event.
pub async fn run(
    task: &LoadedTask,
    options: RunOptions<'_>,
    sink: &dyn EventSink,
    cancel: CancellationToken,
) -> RunResult {
    let started = Instant::now();
    let mut runner = Runner::new(task, &options, sink);
    // The whole run's time limit, as a cancellation that says "timed out".
    let limit = task
        .blueprint
        .sandbox
        .timeout
        .map_or(DEFAULT_RUN_TIMEOUT, |t| t.0);
    let run_cancel = cancel.child_token();
    let timer = {
        let token = run_cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            token.cancel();
        })
    };
    let outcome = runner.run_all(&run_cancel, &options).await;
    timer.abort();
    // `run_started` is the first line of every log, even of a run that failed before it began.
    if !runner.started_event {
        runner.emit_started(&options);
    }
    let (status, reason) = match outcome {
        Ok(status) => (status, runner.failure.take()),
        Err(Stop::Failed(reason)) if runner.engine_fault => (
            RunStatus::Interrupted,
            Some(match &options.engine_name {
                Some(name) => format!("on engine `{name}`: {reason}"),
                None => reason,
            }),
        ),
        Err(Stop::Failed(reason)) => (RunStatus::Failed, Some(reason)),
        Err(Stop::Budget(reason)) => (RunStatus::BudgetExceeded, Some(reason)),
        Err(Stop::Cancelled) if cancel.is_cancelled() => (
            RunStatus::Cancelled,
            Some(
                options
                    .cancel_reason
                    .get()
                    .unwrap_or("cancelled")
                    .to_owned(),
            ),
        ),
        Err(Stop::Cancelled) => (
            RunStatus::TimedOut,
            Some(format!(
                "the run timed out after {} (`sandbox.timeout`)",
                crate::config::units::HumanDuration(limit)
            )),
        ),
    };
    let kept = runner.finish_sandbox(options.keep).await;
    runner.drain_egress();
    runner.revoke_credentials().await;
    runner.forget_refs().await;
    runner.remove_scratch();
    let reason = reason.map(|r| runner.redactor.redact_str(&r).into_owned());
    runner.emit(Event::RunFinished {
        status,
        reason: reason.clone(),
        duration_ms: millis(started.elapsed()),
    });
    RunResult {
        run: options.run_id.clone(),
        task: task.path.display().to_string(),
        status,
        reason,
        branch: task.branch.clone(),
        base: runner.context.base.clone(),
        commit: runner.commit.as_ref().map(ToString::to_string),
        pull_request: runner.pull_request.clone(),
        steps: runner.summaries.clone(),
        fix_rounds: runner.fix_rounds,
        failed_checks: runner.context.run.failed_checks,
        started_at: runner.started_at.clone(),
        finished_at: now_rfc3339(),
        duration_ms: millis(started.elapsed()),
        exec_ms: millis(runner.exec_time),
        agent_ms: millis(runner.agent_time),
        log: String::new(),
        kept_container: kept,
        usage: (!runner.agent_usage.is_empty()).then_some(runner.agent_usage),
        diagnostics: Vec::new(),
        task_hash: None,
    }
}

/// Why the step loop stopped early.
enum Stop {
    Failed(String),
    Cancelled,
    /// A budget stopped the agent and the blueprint says to fail.
    Budget(String),
}

/// What the `checkout` step left for `commit` and `push`.
struct CheckedOut {
    /// The base branch's commit the sandbox started from.
    base: Oid,
    /// Its tree: a commit of the same tree changes nothing.
    base_tree: Oid,
    /// What the remote's task branch was when the run began: the push replaces that and
    /// nothing else (a person's push during the run is refused, not overwritten).
    lease: Option<Oid>,
}

struct Runner<'a> {
    task: &'a LoadedTask,
    sink: &'a dyn EventSink,
    run_id: String,
    seq: AtomicU64,
    templates: Templates,
    context: Context,
    sandbox: Option<Box<dyn Sandbox>>,
    redactor: Redactor,
    secrets: BTreeMap<String, Secret>,
    /// The forge's git credentials for this run, minted again before they expire (never given
    /// to the sandbox).
    credentials: Option<RunCredentials>,
    /// Every token handed out so far, for the secret scan and the log redaction.
    tokens: Vec<GitCredentials>,
    /// maxions' own mirror of the repository, on this machine (blueprints with `checkout`).
    mirror: Option<Mirror>,
    checkout: Option<CheckedOut>,
    /// The tree the last check step ran on: only this tree may be committed.
    checked_tree: Option<(String, Oid)>,
    summaries: Vec<StepSummary>,
    commit: Option<Oid>,
    pull_request: Option<PullRequestRecord>,
    fix_rounds: u32,
    exec_time: Duration,
    started_at: String,
    started_event: bool,
    /// A failure of a `continue_on_error` step, reported if nothing worse happens.
    failure: Option<String>,
    /// The Docker engine went away under the run (see [`SandboxError::is_engine_fault`]): a
    /// failure it causes ends the run as `interrupted`.
    engine_fault: bool,
    no_changes: bool,
    /// Output bytes logged so far in this run (see [`exec::MAX_RUN_OUTPUT`]).
    logged_output: u64,
    /// maxions' private scratch directory on this machine for this run (bundles).
    scratch: Option<PathBuf>,
    egress: Option<tokio::sync::mpsc::Receiver<EgressEvent>>,
    egress_dropped: Arc<AtomicU64>,
    /// Keeps the run's secrets masked in every log line until the runner is gone.
    logged: Option<crate::logging::Guard>,
    extra_logged: Vec<crate::logging::Guard>,
    /// A command of the sandbox's user ran since the last sweep (see [`Runner::end_step`]).
    dirty: std::sync::atomic::AtomicBool,
    /// What the run's agents have spent, and for how long they ran.
    agent_usage: crate::agent::Usage,
    agent_time: Duration,
    /// Usage per step id, for the step summaries.
    step_usage: BTreeMap<String, crate::agent::Usage>,
    /// The budget stop, once a budget stopped the agent.
    budget_stop: Option<steps::agent::BudgetStop>,
    /// The checks that failed the last time checks ran.
    failed_checks: Vec<String>,
}

impl<'a> Runner<'a> {
    fn new(task: &'a LoadedTask, options: &RunOptions<'_>, sink: &'a dyn EventSink) -> Self {
        let context = Context {
            task: task.task.task.clone(),
            repo: (&task.repo).into(),
            branch: task.branch.clone(),
            base: task.task.base.clone().unwrap_or_default(),
            vars: task.task.vars.clone().into_iter().collect(),
            steps: BTreeMap::new(),
            run: RunInfo {
                id: options.run_id.clone(),
                failed_checks: 0,
            },
            failed: None,
        };
        Self {
            task,
            sink,
            run_id: options.run_id.clone(),
            seq: AtomicU64::new(0),
            templates: Templates::new(),
            context,
            sandbox: None,
            redactor: Redactor::none(),
            secrets: BTreeMap::new(),
            credentials: None,
            tokens: Vec::new(),
            mirror: None,
            checkout: None,
            checked_tree: None,
            summaries: Vec::new(),
            commit: None,
            pull_request: None,
            fix_rounds: 0,
            exec_time: Duration::ZERO,
            started_at: now_rfc3339(),
            started_event: false,
            failure: None,
            engine_fault: false,
            no_changes: false,
            logged_output: 0,
            scratch: None,
            egress: None,
            egress_dropped: Arc::new(AtomicU64::new(0)),
            logged: None,
            extra_logged: Vec::new(),
            dirty: std::sync::atomic::AtomicBool::new(false),
            agent_usage: crate::agent::Usage::default(),
            agent_time: Duration::ZERO,
            step_usage: BTreeMap::new(),
            budget_stop: None,
            failed_checks: Vec::new(),
        }
    }

    /// Whether a budget stop leads to a draft pull request rather than a failed run.
    fn draft_after_budget(&self) -> bool {
        self.task
            .blueprint
            .agent
            .as_ref()
            .and_then(|a| a.budget.as_ref())
            .is_some_and(|b| b.on_exceeded == crate::config::blueprint::OnExceeded::DraftPr)
    }

    fn emit(&self, event: Event) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.sink.emit(&EventLine {
            ts: now_rfc3339(),
            run: self.run_id.clone(),
            seq,
            event,
        });
    }

    fn emit_started(&mut self, options: &RunOptions<'_>) {
        self.started_event = true;
        self.emit(Event::RunStarted {
            task: self.task.path.display().to_string(),
            blueprint: self.task.blueprint.name.clone(),
            repo: self.task.repo.clone_url.clone(),
            branch: self.task.branch.clone(),
            base: self.context.base.clone(),
            trigger: options.trigger.clone(),
        });
    }

    /// Logs the egress proxy's decisions made since the last call, redacted: the agent chose
    /// the names and paths in them.
    fn drain_egress(&mut self) {
        let mut decisions = Vec::new();
        if let Some(rx) = &mut self.egress {
            while let Ok(decision) = rx.try_recv() {
                decisions.push(decision);
            }
        }
        for decision in decisions {
            let decision = decision.redacted(&self.redactor);
            self.emit(Event::Egress { decision });
        }
        let dropped = self.egress_dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            self.emit(Event::Warning {
                message: format!(
                    "{dropped} egress decisions were not logged: the sandbox made requests faster than they could be written"
                ),
            });
        }
    }

    /// A sandbox's error as the step's: the run cannot go on, and when the engine is at fault it
    /// ends as `interrupted`.
    fn sandbox_failed(&mut self, error: &SandboxError) -> steps::StepError {
        self.engine_fault |= error.is_engine_fault();
        steps::StepError::Fatal(error.to_string())
    }

    fn sandbox(&self) -> Result<&dyn Sandbox, steps::StepError> {
        self.sandbox
            .as_deref()
            .ok_or_else(|| steps::StepError::Fatal("the sandbox is gone".into()))
    }

    async fn run_all(
        &mut self,
        cancel: &CancellationToken,
        options: &RunOptions<'_>,
    ) -> Result<RunStatus, Stop> {
        self.secrets = secrets::resolve(self.task, &options.env).map_err(Stop::Failed)?;
        if let Some(forge) = &options.forge
            && forge.serves(&self.task.repo.clone_url)
        {
            let credentials = RunCredentials::new(Arc::clone(forge), self.task.repo.clone());
            let first = credentials
                .get()
                .await
                .map_err(|e| Stop::Failed(format!("cannot get git credentials: {e}")))?;
            self.tokens.push(first);
            self.credentials = Some(credentials);
        }
        let mut redact: Vec<Secret> = self.secrets.values().cloned().collect();
        for credentials in &self.tokens {
            redact.extend(credentials.redactions());
        }
        self.redactor = Redactor::new(&redact).map_err(|e| Stop::Failed(e.to_string()))?;
        // No log line shows them while the run lasts (`crate::logging`).
        self.logged =
            Some(crate::logging::register(&redact).map_err(|e| Stop::Failed(e.to_string()))?);
        let state_dir = options
            .state_dir
            .clone()
            .unwrap_or_else(|| self.task.state_dir());
        self.scratch = Some(
            workspace::scratch_dir(&state_dir, &self.run_id).map_err(|e| {
                Stop::Failed(format!("cannot make the run's scratch directory: {e}"))
            })?,
        );
        if self.uses_checkout() {
            let mirror = Mirror::open(&state_dir, &self.remote_url(), cancel)
                .await
                .map_err(|e| Stop::Failed(self.redacted(&e)))?;
            if self.context.base.is_empty() {
                let credentials =
                    self.git_credentials(mirror.url())
                        .await
                        .map_err(|e| match e {
                            steps::StepError::Failed { reason, .. }
                            | steps::StepError::Fatal(reason) => Stop::Failed(reason),
                            _ => Stop::Cancelled,
                        })?;
                let base = tokio::select! {
                    () = cancel.cancelled() => return Err(Stop::Cancelled),
                    base = mirror.default_branch(credentials.as_ref(), cancel) => base,
                };
                self.context.base = base.map_err(|e| {
                    Stop::Failed(format!(
                        "cannot find the default branch of {}: {}; name one with `base:` in the task",
                        self.task.repo.clone_url,
                        self.redacted(&e)
                    ))
                })?;
            }
            self.mirror = Some(mirror);
        } else if self.context.base.is_empty() {
            "main".clone_into(&mut self.context.base);
        }
        self.emit_started(options);

        let mut spec = ContainerSpec::from_blueprint(
            &self.run_id,
            &self.task.blueprint.sandbox,
            self.default_image(),
        )
        .map_err(|e| Stop::Failed(e.to_string()))?;
        // The proxy decides on its own tasks; its decisions reach the log between steps, through
        // a bounded queue: a flood of requests costs a count, not memory.
        let (egress_tx, egress_rx) = tokio::sync::mpsc::channel(EGRESS_QUEUE);
        let dropped = Arc::clone(&self.egress_dropped);
        spec.on_egress = Some(Arc::new(move |event| {
            if egress_tx.try_send(event).is_err() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }));
        self.egress = Some(egress_rx);
        // One of maxions' images (an agent's) may be missing on its first use: built here, so
        // that a daemon's run does not fail for it.
        let started = Instant::now();
        let prepared = tokio::select! {
            () = cancel.cancelled() => return Err(Stop::Cancelled),
            prepared = options.engine.prepare_image(&spec.image) => prepared,
        };
        if prepared.map_err(|e| Stop::Failed(e.to_string()))? {
            self.emit(Event::Warning {
                message: format!(
                    "image `{}` was missing and has been built ({:.0}s; first use)",
                    spec.image,
                    started.elapsed().as_secs_f64()
                ),
            });
        }
        let create = options.engine.create(&spec);
        tokio::pin!(create);
        let sandbox = tokio::select! {
            created = &mut create => created.map_err(|e| {
                self.engine_fault |= e.is_engine_fault();
                Stop::Failed(e.to_string())
            })?,
            () = cancel.cancelled() => {
                // The engine goes on making a container it was asked for: let it finish (for a
                // while) and remove it, rather than leave it behind.
                if let Ok(Ok(sandbox)) = tokio::time::timeout(CREATE_GRACE, create).await
                    && let Err(error) = sandbox.destroy().await
                {
                    tracing::warn!(%error, "cannot remove the sandbox of a cancelled run");
                }
                return Err(Stop::Cancelled);
            }
        };
        sandbox.set_redactor(self.redactor.clone());
        self.emit(Event::SandboxReady {
            container: sandbox.id().to_owned(),
            image: spec.image.clone(),
            engine: options.engine_name.clone(),
        });
        self.sandbox = Some(sandbox);

        let steps = &self.task.blueprint.steps;
        for (index, step) in steps.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let id = step_id(step, index);
            let kind = step.kind().map_or("unknown", |k| k.name()).to_owned();
            if self.no_changes
                && matches!(
                    step.kind(),
                    Some(StepKind::Push(_) | StepKind::PullRequest(_))
                )
            {
                self.skip(&id, &kind, "nothing was committed");
                continue;
            }
            if let Some(condition) = &step.condition {
                match self.templates.eval_condition(condition, &self.context) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.skip(&id, &kind, &format!("`if: {condition}` is false"));
                        continue;
                    }
                    Err(error) => {
                        return Err(Stop::Failed(format!(
                            "step `{id}`: cannot evaluate `if`: {error}"
                        )));
                    }
                }
            }
            self.emit(Event::StepStarted {
                step: id.clone(),
                kind: kind.clone(),
            });
            let started = Instant::now();
            let mut result = self.run_step(step, &id, cancel, options).await;
            // Whatever the step started is gone before anything else happens: nothing it left
            // behind can read a later step's environment or change the tree after the checks.
            if let Err(error) = self.end_step().await
                && result.is_ok()
            {
                result = Err(error);
            }
            let duration_ms = millis(started.elapsed());
            self.drain_egress();
            let (status, exit_code, reason) = match &result {
                Ok(done) => (done.status, done.exit_code, done.reason.clone()),
                Err(steps::StepError::Failed { code, reason }) => {
                    (StepStatus::Failed, *code, Some(reason.clone()))
                }
                Err(steps::StepError::TimedOut(reason)) => {
                    (StepStatus::TimedOut, None, Some(reason.clone()))
                }
                Err(steps::StepError::Cancelled) => (StepStatus::Cancelled, None, None),
                Err(steps::StepError::Fatal(reason)) => {
                    (StepStatus::Failed, None, Some(reason.clone()))
                }
                Err(steps::StepError::Budget(reason)) => {
                    (StepStatus::BudgetExceeded, None, Some(reason.clone()))
                }
            };
            let reason = reason.map(|r| self.redactor.redact_str(&r).into_owned());
            self.emit(Event::StepFinished {
                step: id.clone(),
                status,
                exit_code,
                duration_ms,
                reason: reason.clone(),
            });
            self.summaries.push(StepSummary {
                id: id.clone(),
                kind,
                status,
                exit_code,
                duration_ms,
                reason: reason.clone(),
                usage: self.step_usage.remove(&id),
            });
            match result {
                Ok(done) if done.status == StepStatus::Skipped => self.empty_outputs(step, &id),
                Ok(_) => {
                    self.read_outputs(step, &id).await?;
                }
                Err(steps::StepError::Budget(reason)) => {
                    if !self.draft_after_budget() {
                        return Err(Stop::Budget(reason));
                    }
                    self.emit(Event::Warning {
                        message: format!(
                            "step `{id}`: {reason}; going on to a draft pull request (`on_exceeded: draft_pr`)"
                        ),
                    });
                    self.empty_outputs(step, &id);
                }
                Err(steps::StepError::Cancelled) => return Err(Stop::Cancelled),
                Err(steps::StepError::Fatal(_)) => {
                    return Err(Stop::Failed(format!(
                        "step `{id}`: {}",
                        reason.unwrap_or_default()
                    )));
                }
                Err(steps::StepError::TimedOut(_) | steps::StepError::Failed { .. }) => {
                    let reason = format!("step `{id}` failed: {}", reason.unwrap_or_default());
                    if step.continue_on_error {
                        self.failure.get_or_insert(reason);
                        self.read_outputs(step, &id).await?;
                    } else {
                        return Err(Stop::Failed(reason));
                    }
                }
            }
        }
        if let Some(stop) = &self.budget_stop {
            return Err(Stop::Budget(stop.reason.clone()));
        }
        if self.no_changes {
            return Ok(RunStatus::NoChanges);
        }
        Ok(if self.failure.is_some() {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        })
    }

    /// The image when the blueprint names none (see [`default_image`]).
    fn default_image(&self) -> &str {
        default_image(self.task)
    }

    fn uses_checkout(&self) -> bool {
        self.task
            .blueprint
            .steps
            .iter()
            .any(|s| matches!(s.kind(), Some(StepKind::Checkout(_))))
    }

    /// Kills every process the step left in the sandbox, however it detached.
    /// Only needed when a command of the sandbox's user ran since the last sweep: steps that
    /// ran nothing there (push, pull request) cost nothing.
    async fn end_step(&self) -> Result<(), steps::StepError> {
        let Some(sandbox) = self.sandbox.as_deref() else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        match sandbox.end_step().await {
            Ok(killed) => {
                if killed > 0 {
                    tracing::debug!(killed, "processes left behind by the step were killed");
                }
                Ok(())
            }
            Err(error) => {
                self.dirty.store(true, Ordering::Release);
                Err(steps::StepError::Fatal(format!(
                    "cannot stop what the step left running: {error}"
                )))
            }
        }
    }

    fn skip(&mut self, id: &str, kind: &str, reason: &str) {
        self.emit(Event::StepSkipped {
            step: id.to_owned(),
            reason: reason.to_owned(),
        });
        self.summaries.push(StepSummary {
            id: id.to_owned(),
            kind: kind.to_owned(),
            status: StepStatus::Skipped,
            exit_code: None,
            duration_ms: 0,
            reason: Some(reason.to_owned()),
            usage: None,
        });
    }

    fn render(&self, source: &str, mode: Mode, id: &str) -> Result<String, steps::StepError> {
        self.templates
            .render(source, mode, &self.context)
            .map_err(|e| {
                steps::StepError::Fatal(format!("cannot render the template of step `{id}`: {e}"))
            })
    }

    /// An error's text with every secret of the run masked.
    fn redacted(&self, error: &dyn std::fmt::Display) -> String {
        self.redactor.redact_str(&error.to_string()).into_owned()
    }

    /// Reads a step's `outputs` files back into the context, trimmed and redacted.
    async fn read_outputs(&mut self, step: &Step, id: &str) -> Result<(), Stop> {
        if step.outputs.is_empty() {
            return Ok(());
        }
        let Some(sandbox) = self.sandbox.as_deref() else {
            return Err(Stop::Failed("the sandbox is gone".into()));
        };
        let mut values = BTreeMap::new();
        let mut warnings = Vec::new();
        for (name, path) in &step.outputs {
            match sandbox.read_file(path, steps::MAX_OUTPUT_FILE).await {
                Ok(contents) => {
                    if contents.truncated {
                        warnings.push(format!(
                            "step `{id}`: output `{name}` ({path}) is longer than {} bytes; the rest is cut",
                            steps::MAX_OUTPUT_FILE
                        ));
                    }
                    let text = String::from_utf8_lossy(&contents.bytes).trim().to_owned();
                    values.insert(name.clone(), text);
                }
                Err(error) => {
                    return Err(Stop::Failed(format!(
                        "step `{id}`: cannot read output `{name}`: {error}"
                    )));
                }
            }
        }
        for message in warnings {
            self.emit(Event::Warning { message });
        }
        self.context.steps.insert(id.to_owned(), values);
        Ok(())
    }

    /// The outputs of a step that did not run, as empty text: templates that read them still
    /// render (a pull request after a budget stop falls back to its own title).
    fn empty_outputs(&mut self, step: &Step, id: &str) {
        if step.outputs.is_empty() {
            return;
        }
        let values = step
            .outputs
            .keys()
            .map(|name| (name.clone(), String::new()))
            .collect();
        self.context.steps.insert(id.to_owned(), values);
    }

    /// Removes the sandbox (or keeps it, saying which); returns the kept container's id.
    async fn finish_sandbox(&mut self, keep: bool) -> Option<String> {
        let sandbox = self.sandbox.take()?;
        if keep {
            sandbox.keep();
            return Some(sandbox.id().to_owned());
        }
        if let Err(error) = sandbox.destroy().await {
            self.emit(Event::Warning {
                message: error.to_string(),
            });
        }
        None
    }

    /// Where the repository is fetched from: the checked local path of a `file://` repository
    /// (so a symlink swapped in after the check is not followed), else its URL.
    fn remote_url(&self) -> String {
        match &self.task.local_repo {
            Some(path) => format!("file://{}", path.display()),
            None => self.task.repo.clone_url.clone(),
        }
    }

    /// The run's git credentials for `remote`, fresh (minted again when they are about to
    /// expire), or `None` when the forge does not serve that remote: a token never goes to
    /// another host.
    async fn git_credentials(
        &mut self,
        remote: &str,
    ) -> Result<Option<GitCredentials>, steps::StepError> {
        let Some(credentials) = &self.credentials else {
            return Ok(None);
        };
        if !credentials.applies_to(remote) {
            return Ok(None);
        }
        let fresh = credentials
            .get()
            .await
            .map_err(|e| steps::StepError::Failed {
                code: None,
                reason: format!("cannot get git credentials: {}", self.redacted(&e)),
            })?;
        if !self.tokens.contains(&fresh) {
            // A token minted during the run is masked in the logs as the first one was.
            if let Ok(guard) = crate::logging::register(&fresh.redactions()) {
                self.extra_logged.push(guard);
            }
            self.tokens.push(fresh.clone());
        }
        Ok(Some(fresh))
    }

    /// An installation token lives an hour; this run is done with its tokens now.
    async fn revoke_credentials(&mut self) {
        let Some(credentials) = self.credentials.take() else {
            return;
        };
        for error in credentials.revoke_all().await {
            let message = format!("could not revoke a git token of the run: {error}");
            let message = self.redactor.redact_str(&message).into_owned();
            self.emit(Event::Warning { message });
        }
    }

    /// The mirror keeps no ref of this run (`refs/maxions/*/<run>`) once it is over.
    async fn forget_refs(&mut self) {
        if let Some(mirror) = &self.mirror
            && let Err(error) = mirror.forget(&self.run_id, &CancellationToken::new()).await
        {
            let message = self.redacted(&error);
            self.emit(Event::Warning {
                message: format!("could not tidy the mirror: {message}"),
            });
        }
    }

    fn remove_scratch(&mut self) {
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The image a task's sandbox runs when its blueprint names none: its real agent's own image
/// (which has the agent installed), else the config's default.
#[must_use]
pub fn default_image(task: &LoadedTask) -> &str {
    task.blueprint
        .agent
        .as_ref()
        .and_then(|a| crate::agent::image_for(a.kind))
        .unwrap_or(&task.config.default_image)
}

/// The image a task's sandbox runs.
#[must_use]
pub fn sandbox_image(task: &LoadedTask) -> &str {
    task.blueprint
        .sandbox
        .image
        .as_deref()
        .unwrap_or_else(|| default_image(task))
}

fn step_id(step: &Step, index: usize) -> String {
    step.id
        .clone()
        .unwrap_or_else(|| format!("step-{}", index + 1))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Now, as the logs write it: RFC 3339, UTC, milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}
