//! The runner: takes one loaded task through its blueprint inside one sandbox, and tells an
//! [`EventSink`] everything that happens. It is a library call: the CLI, the daemon and tests
//! drive it the same way, each with its own sink and cancellation token.
//!
//! Judgment steps (`agent`, `fix`) go to the agent; everything else (`run`, checks, commit, push,
//! pull request) is done by maxions, deterministically.

pub mod events;
pub mod result;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::blueprint::{AgentKind, Draft, GIT_TOKEN, OnFailure, PullRequest};
use crate::config::daemon::SecretSource;
use crate::config::load::LoadedTask;
use crate::config::{Step, StepKind};
use crate::forge::{Forge, PullRequestSpec};
use crate::sandbox::redact::Redactor;
use crate::sandbox::{
    ContainerSpec, Engine, ExecRequest, ExecStatus, OutputStream, Sandbox, SandboxError,
};
use crate::secret::Secret;
use crate::template::{Context, FailedCheck, Mode, RunInfo, Templates};
pub use events::{Event, EventLine, EventSink, JsonlLog, RunStatus, StepStatus, Tee};
pub use result::{PullRequestRecord, RunResult, StepSummary};

/// Where the repository lives in the sandbox: `commit` and `push` work there.
pub const REPO_DIR: &str = "/workspace/repo";
/// Where maxions keeps its own files in the sandbox.
const MAXIONS_DIR: &str = "/tmp/.maxions";
/// How much of one step's output goes to the log; the rest is counted.
const MAX_LOGGED_OUTPUT: u64 = 8 << 20;
/// The largest step output file read back.
const MAX_OUTPUT_FILE: usize = 1 << 20;
/// How much of a failed check's output the fix prompt gets.
const CHECK_OUTPUT_CHARS: usize = 16 << 10;

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
    /// Where pull requests are opened; `None` records the one that would be.
    pub forge: Option<&'a dyn Forge>,
    pub run_id: String,
    /// Keep the sandbox when the run ends (for debugging).
    pub keep: bool,
    /// Reads the environment variables secrets come from (the process environment by default).
    pub env: EnvReader,
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
    let mut runner = Runner::new(task, &options, sink);
    let started = Instant::now();
    runner.emit(Event::RunStarted {
        task: task.path.display().to_string(),
        blueprint: task.blueprint.name.clone(),
        repo: task.repo.clone_url.clone(),
        branch: task.branch.clone(),
        base: runner.base.clone(),
    });
    // The whole run's time limit, as a cancellation that says "timed out".
    let deadline = task.blueprint.sandbox.timeout.map(|t| t.0);
    let run_cancel = cancel.child_token();
    let timer = deadline.map(|limit| {
        let token = run_cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            token.cancel();
        })
    });
    let outcome = runner.run_all(&run_cancel, &options).await;
    if let Some(timer) = timer {
        timer.abort();
    }
    let (status, reason) = match outcome {
        Ok(status) => (status, runner.failure.take()),
        Err(Stop::Failed(reason)) => (RunStatus::Failed, Some(reason)),
        Err(Stop::Cancelled) if cancel.is_cancelled() => {
            (RunStatus::Cancelled, Some("cancelled".into()))
        }
        Err(Stop::Cancelled) => (
            RunStatus::TimedOut,
            Some(format!(
                "the run timed out after {} (`sandbox.timeout`)",
                crate::config::units::HumanDuration(deadline.unwrap_or_default())
            )),
        ),
    };
    let kept = runner.finish_sandbox(options.keep).await;
    runner.drain_egress();
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
        base: runner.base.clone(),
        commit: runner.commit.clone(),
        pull_request: runner.pull_request.clone(),
        steps: runner.summaries.clone(),
        fix_rounds: runner.fix_rounds,
        failed_checks: runner.context.run.failed_checks,
        started_at: runner.started_at.clone(),
        finished_at: now_rfc3339(),
        duration_ms: millis(started.elapsed()),
        exec_ms: millis(runner.exec_time),
        log: String::new(),
        kept_container: kept,
    }
}

/// Why the step loop stopped early.
enum Stop {
    Failed(String),
    Cancelled,
}

struct Runner<'a> {
    task: &'a LoadedTask,
    sink: &'a dyn EventSink,
    run_id: String,
    seq: AtomicU64,
    templates: Templates,
    context: Context,
    base: String,
    sandbox: Option<Box<dyn Sandbox>>,
    redactor: Redactor,
    secrets: BTreeMap<String, Secret>,
    summaries: Vec<StepSummary>,
    commit: Option<String>,
    pull_request: Option<PullRequestRecord>,
    fix_rounds: u32,
    exec_time: Duration,
    started_at: String,
    /// A failure of a `continue_on_error` step, reported if nothing worse happens.
    failure: Option<String>,
    no_changes: bool,
    /// For a `file://` repository on this machine: its path here.
    local_repo: Option<PathBuf>,
    egress: Option<tokio::sync::mpsc::UnboundedReceiver<crate::sandbox::egress::EgressEvent>>,
}

impl<'a> Runner<'a> {
    fn new(task: &'a LoadedTask, options: &RunOptions<'_>, sink: &'a dyn EventSink) -> Self {
        let base = task.task.base.clone().unwrap_or_else(|| "main".to_owned());
        let local_repo = task
            .repo
            .clone_url
            .strip_prefix("file://")
            .map(PathBuf::from)
            .filter(|p| p.exists());
        let mut repo = task.repo.clone();
        if local_repo.is_some() {
            // The sandbox sees its own copy of a local repository (see `import_local_repo`).
            repo.clone_url = format!("file://{MAXIONS_DIR}/origin.git");
        }
        let context = Context {
            task: task.task.task.clone(),
            repo,
            branch: task.branch.clone(),
            base: base.clone(),
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
            base,
            sandbox: None,
            redactor: Redactor::none(),
            secrets: BTreeMap::new(),
            summaries: Vec::new(),
            commit: None,
            pull_request: None,
            fix_rounds: 0,
            exec_time: Duration::ZERO,
            started_at: now_rfc3339(),
            failure: None,
            no_changes: false,
            local_repo,
            egress: None,
        }
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

    /// Logs the egress proxy's decisions made since the last call.
    fn drain_egress(&mut self) {
        let mut decisions = Vec::new();
        if let Some(rx) = &mut self.egress {
            while let Ok(decision) = rx.try_recv() {
                decisions.push(decision);
            }
        }
        for decision in decisions {
            self.emit(Event::Egress { decision });
        }
    }

    fn sandbox(&self) -> &dyn Sandbox {
        self.sandbox
            .as_deref()
            .expect("the sandbox exists while steps run")
    }

    async fn run_all(
        &mut self,
        cancel: &CancellationToken,
        options: &RunOptions<'_>,
    ) -> Result<RunStatus, Stop> {
        self.resolve_secrets(options)?;
        let forge_credentials = match options.forge {
            Some(forge) if self.local_repo.is_none() => Some(
                forge
                    .git_credentials(&self.task.repo)
                    .await
                    .map_err(|e| Stop::Failed(format!("cannot get git credentials: {e}")))?,
            ),
            _ => None,
        };
        let mut redact: Vec<Secret> = self.secrets.values().cloned().collect();
        if let Some(credentials) = &forge_credentials {
            redact.extend(credentials.redactions());
        }
        self.redactor = Redactor::new(&redact).map_err(|e| Stop::Failed(e.to_string()))?;
        // No log line shows them while the run lasts (`crate::logging`).
        let _logged = crate::logging::register(&redact).map_err(|e| Stop::Failed(e.to_string()))?;

        let mut spec = ContainerSpec::from_blueprint(
            &self.run_id,
            &self.task.blueprint.sandbox,
            &self.task.config.default_image,
        )
        .map_err(|e| Stop::Failed(e.to_string()))?;
        // The proxy decides on its own tasks; its decisions reach the log between steps.
        let (egress_tx, egress_rx) = tokio::sync::mpsc::unbounded_channel();
        spec.on_egress = Some(Arc::new(move |event| {
            let _ = egress_tx.send(event);
        }));
        self.egress = Some(egress_rx);
        let sandbox = tokio::select! {
            () = cancel.cancelled() => return Err(Stop::Cancelled),
            created = options.engine.create(&spec) => created.map_err(|e| Stop::Failed(e.to_string()))?,
        };
        sandbox.set_redactor(self.redactor.clone());
        self.emit(Event::SandboxReady {
            container: sandbox.id().to_owned(),
            image: spec.image.clone(),
        });
        self.sandbox = Some(sandbox);
        if self.local_repo.is_some() {
            self.import_local_repo(cancel).await?;
        }

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
            let result = self
                .run_step(step, &id, cancel, options, forge_credentials.as_ref())
                .await;
            let duration_ms = millis(started.elapsed());
            self.drain_egress();
            let (status, exit_code, reason) = match &result {
                Ok(done) => (done.status, done.exit_code, done.reason.clone()),
                Err(StepError::Failed { code, reason }) => {
                    (StepStatus::Failed, *code, Some(reason.clone()))
                }
                Err(StepError::TimedOut(reason)) => {
                    (StepStatus::TimedOut, None, Some(reason.clone()))
                }
                Err(StepError::Cancelled) => (StepStatus::Cancelled, None, None),
                Err(StepError::Fatal(reason)) => (StepStatus::Failed, None, Some(reason.clone())),
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
            });
            match result {
                Ok(_) => {
                    self.read_outputs(step, &id).await?;
                }
                Err(StepError::Cancelled) => return Err(Stop::Cancelled),
                Err(StepError::Fatal(reason)) => {
                    return Err(Stop::Failed(format!("step `{id}`: {reason}")));
                }
                Err(StepError::TimedOut(reason) | StepError::Failed { reason, .. }) => {
                    let reason = format!("step `{id}` failed: {}", reason);
                    if step.continue_on_error {
                        self.failure.get_or_insert(reason);
                        self.read_outputs(step, &id).await?;
                    } else {
                        return Err(Stop::Failed(reason));
                    }
                }
            }
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
        });
    }

    /// Reads every secret the blueprint names (steps and agent) from the config's sources, so
    /// that a missing one fails the run before anything starts.
    fn resolve_secrets(&mut self, options: &RunOptions<'_>) -> Result<(), Stop> {
        let blueprint = &self.task.blueprint;
        let mut names: Vec<&str> = blueprint
            .steps
            .iter()
            .flat_map(|s| s.secrets.iter().map(|n| n.0.as_str()))
            .collect();
        if let Some(agent) = &blueprint.agent {
            names.extend(agent.secrets.iter().map(|n| n.0.as_str()));
        }
        names.sort_unstable();
        names.dedup();
        for name in names {
            // With a forge, git's credentials come from it, per run (see `run_step`).
            if name == GIT_TOKEN && options.forge.is_some() && self.local_repo.is_none() {
                continue;
            }
            let source = self
                .task
                .config
                .secrets
                .iter()
                .find(|(k, _)| k.0 == name)
                .map(|(_, v)| v);
            let value = match source {
                Some(SecretSource::Env(var)) => (options.env)(var).ok_or_else(|| {
                    Stop::Failed(format!(
                        "secret `{name}` comes from the environment variable `{var}`, which is not set"
                    ))
                })?,
                Some(SecretSource::File(path)) => {
                    let path = match &self.task.config_dir {
                        Some(dir) if path.is_relative() => dir.join(path),
                        _ => path.clone(),
                    };
                    std::fs::read_to_string(&path)
                        .map_err(|e| {
                            Stop::Failed(format!(
                                "secret `{name}`: cannot read {}: {e}",
                                path.display()
                            ))
                        })?
                        .trim()
                        .to_owned()
                }
                // Not in maxions.yaml: the variable of the same name.
                None => (options.env)(name).ok_or_else(|| {
                    Stop::Failed(format!(
                        "secret `{name}` is not defined: add it under `secrets:` in maxions.yaml, or set the environment variable `{name}`"
                    ))
                })?,
            };
            let secret = Secret::new(name, value).map_err(|e| Stop::Failed(e.to_string()))?;
            self.secrets.insert(name.to_owned(), secret);
        }
        Ok(())
    }

    async fn run_step(
        &mut self,
        step: &Step,
        id: &str,
        cancel: &CancellationToken,
        options: &RunOptions<'_>,
        credentials: Option<&crate::forge::GitCredentials>,
    ) -> Result<Done, StepError> {
        let Some(kind) = step.kind() else {
            return Err(StepError::Fatal(
                "the step has no kind (run, agent, check, ...)".into(),
            ));
        };
        match kind {
            StepKind::Run(script) => {
                let script = self.render(script, Mode::Shell, id)?;
                let mut request =
                    self.request(step, id, ExecRequest::new(["sh", "-ec", &script]))?;
                if step.secrets.iter().any(|s| s.0 == GIT_TOKEN)
                    && let Some(credentials) = credentials
                {
                    request
                        .env
                        .extend(credentials.git_env(&self.task.repo.clone_url));
                }
                let outcome = self.exec_outcome(id, &request, cancel).await?;
                finish(&outcome)
            }
            StepKind::Agent(prompt) => {
                let prompt = self.render(prompt, Mode::Text, id)?;
                let outcome = self.agent(step, id, &prompt, cancel).await?;
                finish(&outcome)
            }
            StepKind::Check(checks, fix) => {
                let mut failed = self.run_checks(step, id, checks, 0, cancel).await?;
                let mut round = 0;
                if let Some(fix) = fix {
                    while !failed.is_empty() && round < fix.max_rounds {
                        round += 1;
                        self.fix_rounds += 1;
                        self.context.failed = Some(failed.clone());
                        let prompt = self.render(&fix.agent, Mode::Text, id);
                        self.context.failed = None;
                        let prompt = prompt?;
                        let fixing: Vec<String> = failed.iter().map(|f| f.id.clone()).collect();
                        let agent_status = self.agent(step, id, &prompt, cancel).await?.status;
                        if !agent_status.success() {
                            self.emit(Event::Warning {
                                message: format!(
                                    "step `{id}`: the agent {agent_status} in fix round {round}; running the checks anyway"
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
                self.context.run.failed_checks = u32::try_from(failed.len()).unwrap_or(u32::MAX);
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
                if fix.is_some_and(|f| f.on_failure == OnFailure::Continue) {
                    self.emit(Event::Warning {
                        message: format!(
                            "step `{id}`: {reason}; going on (`on_failure: continue`)"
                        ),
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
            StepKind::Commit(commit) => {
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
                self.commit_changes(&message, &name, &email, cancel).await
            }
            StepKind::Push(_) => self.push(id, step, cancel, credentials).await,
            StepKind::PullRequest(pr) => self.pull_request(id, pr, options).await,
        }
    }

    fn render(&self, source: &str, mode: Mode, id: &str) -> Result<String, StepError> {
        self.templates
            .render(source, mode, &self.context)
            .map_err(|e| {
                StepError::Fatal(format!("cannot render the template of step `{id}`: {e}"))
            })
    }

    /// An exec request with the step's env, secrets and timeout.
    fn request(
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

    /// Runs one command, logging its output as it comes.
    async fn exec_outcome(
        &mut self,
        id: &str,
        request: &ExecRequest,
        cancel: &CancellationToken,
    ) -> Result<crate::sandbox::ExecOutcome, StepError> {
        let mut text = [events::Utf8Chunks::default(), events::Utf8Chunks::default()];
        let mut logged = 0_u64;
        let mut truncated = false;
        let sandbox = self.sandbox.as_deref().expect("sandbox");
        let emit = |event: Event| self.emit(event);
        let mut sink = |stream: OutputStream, bytes: &[u8]| {
            if logged >= MAX_LOGGED_OUTPUT {
                if !truncated {
                    truncated = true;
                    emit(Event::OutputTruncated {
                        step: id.to_owned(),
                        logged_bytes: logged,
                    });
                }
                return;
            }
            logged += bytes.len() as u64;
            let chunk = text[stream as usize].push(bytes);
            if !chunk.is_empty() {
                emit(Event::Output {
                    step: id.to_owned(),
                    stream,
                    text: chunk,
                });
            }
        };
        let result = sandbox.exec(request, &mut sink, cancel).await;
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let rest = text[stream as usize].finish();
            if !rest.is_empty() && !truncated {
                emit(Event::Output {
                    step: id.to_owned(),
                    stream,
                    text: rest,
                });
            }
        }
        let outcome = result.map_err(|e| sandbox_error(&e))?;
        self.exec_time += outcome.duration;
        match &outcome.status {
            ExecStatus::Cancelled => Err(StepError::Cancelled),
            ExecStatus::TimedOut(_) => Err(StepError::TimedOut(outcome.status.to_string())),
            _ => Ok(outcome),
        }
    }

    /// Runs the blueprint's agent on a prompt. This version drives `kind: command` agents: any
    /// program, the prompt on its stdin.
    async fn agent(
        &mut self,
        step: &Step,
        id: &str,
        prompt: &str,
        cancel: &CancellationToken,
    ) -> Result<crate::sandbox::ExecOutcome, StepError> {
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
                    format!("{other:?}").to_lowercase()
                )));
            }
        };
        let mut request = self.request(
            step,
            id,
            ExecRequest::new(argv).stdin(prompt.as_bytes().to_vec()),
        )?;
        request.workdir = Some(REPO_DIR.to_owned());
        for name in &agent.secrets {
            if let Some(secret) = self.secrets.get(&name.0) {
                request.secrets.push(secret.clone());
            }
        }
        self.exec_outcome(id, &request, cancel).await
    }

    async fn run_checks(
        &mut self,
        step: &Step,
        id: &str,
        checks: &[crate::config::blueprint::Check],
        round: u32,
        cancel: &CancellationToken,
    ) -> Result<Vec<FailedCheck>, StepError> {
        let mut failed = Vec::new();
        for check in checks {
            let script = self.render(&check.run, Mode::Shell, id)?;
            let mut request = self.request(step, id, ExecRequest::new(["sh", "-ec", &script]))?;
            if let Some(timeout) = check.timeout {
                request.timeout = Some(timeout.0);
            }
            let outcome = match self.exec_outcome(id, &request, cancel).await {
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

    async fn commit_changes(
        &mut self,
        message: &str,
        name: &str,
        email: &str,
        cancel: &CancellationToken,
    ) -> Result<Done, StepError> {
        let file = format!("{MAXIONS_DIR}/commit-message");
        self.sandbox()
            .write_file(&file, message.as_bytes(), 0o600)
            .await
            .map_err(|e| sandbox_error(&e))?;
        let script = format!(
            "cd {REPO_DIR} && git add -A && if git diff --cached --quiet; then echo 'nothing to commit'; exit 3; fi && \
             git -c user.name=\"$MAXIONS_AUTHOR_NAME\" -c user.email=\"$MAXIONS_AUTHOR_EMAIL\" -c commit.gpgsign=false commit -q -F {file} && git rev-parse HEAD"
        );
        let request = ExecRequest::new(["sh", "-c", &script])
            .env("MAXIONS_AUTHOR_NAME", name)
            .env("MAXIONS_AUTHOR_EMAIL", email);
        let mut sha = Vec::new();
        let sandbox = self.sandbox.as_deref().expect("sandbox");
        let mut sink = |stream: OutputStream, bytes: &[u8]| {
            if stream == OutputStream::Stdout && sha.len() < 4096 {
                sha.extend_from_slice(bytes);
            }
        };
        let outcome = sandbox
            .exec(&request, &mut sink, cancel)
            .await
            .map_err(|e| sandbox_error(&e))?;
        match outcome.status {
            ExecStatus::Exited(0) => {
                let sha = String::from_utf8_lossy(&sha).trim().to_owned();
                self.emit(Event::Commit { sha: sha.clone() });
                self.commit = Some(sha);
                Ok(Done::ok())
            }
            ExecStatus::Exited(3) => {
                self.no_changes = true;
                Ok(Done {
                    status: StepStatus::NoChanges,
                    exit_code: Some(0),
                    reason: Some("nothing to commit: the working tree is unchanged".into()),
                })
            }
            ExecStatus::Cancelled => Err(StepError::Cancelled),
            ref other => Err(StepError::Failed {
                code: other.code(),
                reason: format!("git commit {other}: {}", outcome.tail_text().trim()),
            }),
        }
    }

    async fn push(
        &mut self,
        id: &str,
        step: &Step,
        cancel: &CancellationToken,
        credentials: Option<&crate::forge::GitCredentials>,
    ) -> Result<Done, StepError> {
        let branch = self.task.branch.clone();
        // Force only maxions' own branch, and only over what was there when we looked: the
        // lease names the remote's current commit (or none).
        let script = format!(
            r#"cd {REPO_DIR}
remote=$(git ls-remote origin "refs/heads/$MAXIONS_BRANCH" | cut -f1)
git push --porcelain --force-with-lease="refs/heads/$MAXIONS_BRANCH:$remote" origin "HEAD:refs/heads/$MAXIONS_BRANCH""#
        );
        let mut request = self.request(step, id, ExecRequest::new(["sh", "-ec", &script]))?;
        request = request.env("MAXIONS_BRANCH", branch.clone());
        if let Some(credentials) = credentials {
            request
                .env
                .extend(credentials.git_env(&self.task.repo.clone_url));
        }
        let status = self.exec_outcome(id, &request, cancel).await?.status;
        if !status.success() {
            return Err(StepError::Failed {
                code: status.code(),
                reason: format!("git push {status}"),
            });
        }
        if let Some(local) = self.local_repo.clone() {
            self.export_local_branch(&local, &branch, cancel).await?;
        }
        self.emit(Event::Pushed {
            branch,
            remote: self.task.repo.clone_url.clone(),
        });
        Ok(Done::ok())
    }

    async fn pull_request(
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
            base: self.base.clone(),
        };
        let Some(forge) = options.forge else {
            let reason = "no forge is configured (no `github:` in maxions.yaml, or a local repository): this is the pull request maxions would open".to_owned();
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
            base: self.base.clone(),
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

    /// Reads a step's `outputs` files back into the context, trimmed and redacted.
    async fn read_outputs(&mut self, step: &Step, id: &str) -> Result<(), Stop> {
        if step.outputs.is_empty() {
            return Ok(());
        }
        let mut values = BTreeMap::new();
        for (name, path) in &step.outputs {
            match self.sandbox().read_file(path, MAX_OUTPUT_FILE).await {
                Ok(contents) => {
                    if contents.truncated {
                        self.emit(Event::Warning {
                            message: format!(
                                "step `{id}`: output `{name}` ({path}) is longer than {} bytes; the rest is cut",
                                MAX_OUTPUT_FILE
                            ),
                        });
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
        self.context.steps.insert(id.to_owned(), values);
        Ok(())
    }

    /// Gives the sandbox its own bare copy of a local repository (a git bundle sent through
    /// the engine API), so that no host directory is mounted.
    async fn import_local_repo(&mut self, cancel: &CancellationToken) -> Result<(), Stop> {
        let local = self.local_repo.clone().expect("checked by the caller");
        let scratch = tempfile_path("maxions-bundle");
        let status = std::process::Command::new("git")
            .arg("-C")
            .arg(&local)
            .args(["bundle", "create", "-q"])
            .arg(&scratch)
            .arg("--all")
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| Stop::Failed(format!("cannot run git: {e}")))?;
        if !status.status.success() {
            return Err(Stop::Failed(format!(
                "cannot read the local repository {}: {}",
                local.display(),
                String::from_utf8_lossy(&status.stderr).trim()
            )));
        }
        let bundle = std::fs::read(&scratch).map_err(|e| Stop::Failed(e.to_string()))?;
        let _ = std::fs::remove_file(&scratch);
        let path = format!("{MAXIONS_DIR}/origin.bundle");
        self.sandbox()
            .write_file(&path, &bundle, 0o600)
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
        let request = ExecRequest::new([
            "sh",
            "-ec",
            &format!("git clone -q --bare {path} {MAXIONS_DIR}/origin.git && rm -f {path}"),
        ]);
        let mut sink = |_: OutputStream, _: &[u8]| {};
        let outcome = self
            .sandbox()
            .exec(&request, &mut sink, cancel)
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
        if !outcome.status.success() {
            return Err(Stop::Failed(format!(
                "cannot copy the local repository into the sandbox: {}",
                outcome.tail_text().trim()
            )));
        }
        Ok(())
    }

    /// Brings a branch pushed to the sandbox's copy back into the local repository.
    async fn export_local_branch(
        &mut self,
        local: &Path,
        branch: &str,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let path = format!("{MAXIONS_DIR}/push.bundle");
        let request = ExecRequest::new([
            "sh",
            "-ec",
            &format!("git -C {MAXIONS_DIR}/origin.git bundle create -q {path} \"refs/heads/$1\"",),
            "export",
            branch,
        ]);
        let mut sink = |_: OutputStream, _: &[u8]| {};
        let outcome = self
            .sandbox()
            .exec(&request, &mut sink, cancel)
            .await
            .map_err(|e| sandbox_error(&e))?;
        if !outcome.status.success() {
            return Err(StepError::Failed {
                code: outcome.status.code(),
                reason: format!(
                    "cannot bundle the pushed branch: {}",
                    outcome.tail_text().trim()
                ),
            });
        }
        let bundle = self
            .sandbox()
            .read_file(&path, 1 << 30)
            .await
            .map_err(|e| sandbox_error(&e))?;
        let scratch = tempfile_path("maxions-push");
        std::fs::write(&scratch, &bundle.bytes).map_err(|e| StepError::Fatal(e.to_string()))?;
        let fetched = std::process::Command::new("git")
            .arg("-C")
            .arg(local)
            .args(["fetch", "-q", "--force"])
            .arg(&scratch)
            .arg(format!("refs/heads/{branch}:refs/heads/{branch}"))
            .output();
        let _ = std::fs::remove_file(&scratch);
        match fetched {
            Ok(output) if output.status.success() => Ok(()),
            Ok(output) => Err(StepError::Failed {
                code: output.status.code().map(i64::from),
                reason: format!(
                    "cannot update {} in {}: {}",
                    branch,
                    local.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            }),
            Err(error) => Err(StepError::Fatal(format!("cannot run git: {error}"))),
        }
    }

    /// Removes the sandbox (or keeps it, saying which); returns the kept container's id.
    async fn finish_sandbox(&mut self, keep: bool) -> Option<String> {
        let sandbox = self.sandbox.take()?;
        if keep {
            return Some(sandbox.id().to_owned());
        }
        if let Err(error) = sandbox.destroy().await {
            self.emit(Event::Warning {
                message: error.to_string(),
            });
        }
        None
    }
}

/// What a step that ran to its end reports.
struct Done {
    status: StepStatus,
    exit_code: Option<i64>,
    reason: Option<String>,
}

impl Done {
    fn ok() -> Self {
        Self {
            status: StepStatus::Succeeded,
            exit_code: Some(0),
            reason: None,
        }
    }
}

enum StepError {
    Failed {
        code: Option<i64>,
        reason: String,
    },
    TimedOut(String),
    Cancelled,
    /// The sandbox or maxions itself failed: the run cannot go on.
    Fatal(String),
}

/// A command's outcome as a step's: on failure the reason ends with the last line the command
/// printed, which is usually what went wrong (`fatal: Authentication failed ...`).
fn finish(outcome: &crate::sandbox::ExecOutcome) -> Result<Done, StepError> {
    match &outcome.status {
        ExecStatus::Exited(0) => Ok(Done::ok()),
        ExecStatus::Cancelled => Err(StepError::Cancelled),
        ExecStatus::TimedOut(_) => Err(StepError::TimedOut(outcome.status.to_string())),
        other => {
            let tail = outcome.tail_text();
            let last = tail.lines().rev().map(str::trim).find(|l| !l.is_empty());
            let reason = match last {
                Some(line) => format!("{other}: {}", truncate(line, 200)),
                None => other.to_string(),
            };
            Err(StepError::Failed {
                code: other.code(),
                reason,
            })
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

fn sandbox_error(error: &SandboxError) -> StepError {
    StepError::Fatal(error.to_string())
}

fn step_id(step: &Step, index: usize) -> String {
    step.id
        .clone()
        .unwrap_or_else(|| format!("step-{}", index + 1))
}

fn first_line(text: &str) -> &str {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("update")
        .trim()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn now_rfc3339() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn tempfile_path(prefix: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}
