//! The daemon: watches the tasks folder and cron schedules, queues runs with bounded
//! concurrency, persists its state so that a crash loses nothing, and takes control requests.
//!
//! One loop owns everything (state, queue, runs); runs are tasks in its [`JoinSet`], each with
//! its own child cancellation token. Errors come in two kinds, as in watchexec: a
//! [`DaemonError`] (state dir unusable, lock held, config or engine unusable at start) stops the
//! daemon with a message; everything else (a bad task file, a failed run, inotify limits, a
//! broken `maxions.yaml` edit) is reported and the daemon carries on.

pub mod control;
pub mod engines;
pub mod handle;
pub mod queue;
pub mod records;
pub mod schedule;
pub mod state;
pub mod watch;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::DaemonConfig;
use crate::config::daemon::{Interrupted, Overlap};
use crate::config::load::{LoadedTask, load_config, load_task_with_config};
use crate::config::validate::{FileKind, Validation};
use crate::runner::{
    self, CancelReason, EventSink, Launch, LaunchError, RunResult, RunStatus, forge_for,
};
use crate::sandbox::Engine;
use engines::{Engines, Placement};
use handle::{Command, Handle, Refusal, Submitted, View};
use schedule::Schedule;
use state::{Active, Entry, State, Store, StoreError, content_hash};

/// How often blueprints and `maxions.yaml` are looked at for edits.
const REFERENCES_EVERY: Duration = Duration::from_secs(2);
/// How long the watcher gathers events before it hints.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A task file must be unchanged this long before it is read: a half-written file is read once
/// it settles, not failed. About the debounce, so that a file written in one go is settled by
/// the time its hint arrives, and one moved in (an old mtime) at once.
const SETTLE: Duration = Duration::from_millis(250);
/// When to look for sandboxes no run owns again after the sweep at start-up, then how often: a
/// create request in flight when a daemon died (or when a run was cancelled) is completed by the
/// engine after the sweep that looked for it.
const FIRST_SWEEP: Duration = Duration::from_secs(10);
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// The longest a sweep may hold up the loop.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the daemon stopped. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Config(String),
    #[error("cannot create the tasks folder {}: {source}", path.display())]
    TasksDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on the control socket {}: {source}; a state dir path must be short (a Unix socket path has at most 107 bytes)", path.display())]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the daemon finds its config: `maxions.yaml` (if any) and the directory everything is
/// relative to.
#[derive(Debug, Clone)]
pub struct Setup {
    pub dir: PathBuf,
    pub config_file: Option<PathBuf>,
}

impl Setup {
    /// `file`, or `./maxions.yaml` when there is one, or the defaults in the current directory.
    #[must_use]
    pub fn locate(file: Option<&Path>) -> Self {
        let file = file.map(Path::to_path_buf).or_else(|| {
            ["maxions.yaml", "maxions.yml"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        });
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        match file {
            Some(file) => {
                let file = absolute(&file);
                let dir = file.parent().map_or_else(|| ".".into(), Path::to_path_buf);
                Self {
                    dir,
                    config_file: Some(file),
                }
            }
            None => Self {
                dir: absolute(Path::new(".")),
                config_file: None,
            },
        }
    }

    /// Reads and validates the config, or says every problem.
    ///
    /// # Errors
    /// The problems, rendered as `maxions validate` shows them.
    pub fn config(&self) -> Result<DaemonConfig, String> {
        let Some(file) = &self.config_file else {
            return Ok(DaemonConfig::default());
        };
        load_config(file).map_err(|validation| describe(&validation, file))
    }

    #[must_use]
    pub fn state_dir(&self, config: &DaemonConfig) -> PathBuf {
        self.dir.join(&config.state_dir)
    }

    #[must_use]
    pub fn tasks_dir(&self, config: &DaemonConfig) -> PathBuf {
        self.dir.join(&config.tasks_dir)
    }
}

/// Every error of a validation, one per line, with file:line:column.
fn describe(validation: &Validation, file: &Path) -> String {
    let lines: Vec<String> = validation
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| match (d.line, d.column) {
            (Some(line), Some(column)) => format!("{}:{line}:{column}: {}", d.file, d.message),
            _ => format!("{}: {}", d.file, d.message),
        })
        .collect();
    if lines.is_empty() {
        format!("{} is not valid", file.display())
    } else {
        lines.join("\n")
    }
}

/// How the daemon is asked to stop: `graceful` first (finish running steps within the grace
/// period), `now` to cancel everything at once.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub graceful: CancellationToken,
    pub now: CancellationToken,
}

/// A run the loop owns.
struct Running {
    cancel: CancellationToken,
    reason: CancelReason,
    /// Cancelled because the daemon stops: queued again for the next start.
    stopping: bool,
}

/// What a run's task returns.
struct Ended {
    run: String,
    outcome: Result<(RunResult, PathBuf), LaunchError>,
}

pub struct Daemon {
    setup: Setup,
    config: DaemonConfig,
    /// `maxions.yaml` as last read (length, mtime), to notice edits.
    config_seen: Option<(u64, SystemTime)>,
    tasks_dir: PathBuf,
    engines: Engines,
    sink: Arc<dyn EventSink>,
    store: Store,
    state: State,
    dirty: bool,
    runs: JoinSet<Ended>,
    /// Every run's token is a child of this one: cancelled, nothing goes on.
    root: CancellationToken,
    /// The run of each task in `runs`, to know which one a panic ended.
    run_ids: HashMap<tokio::task::Id, String>,
    handles: HashMap<String, Running>,
    schedules: HashMap<PathBuf, Schedule>,
    settle: watch::Settle,
    /// What blueprints and `maxions.yaml` looked like at the last scan.
    references: Option<u64>,
    /// Problems of the last scan, so each is reported once.
    problems: BTreeSet<String>,
    /// When the loop last scanned, and whether watching works.
    last_scan: Instant,
    watching: bool,
    /// When to look for orphaned sandboxes again.
    next_sweep: Instant,
    /// What [`Handle`]s see, republished at every change.
    view: tokio::sync::watch::Sender<Arc<View>>,
    commands: mpsc::Sender<Command>,
    commands_rx: Option<mpsc::Receiver<Command>>,
    /// No new runs: the daemon is stopping.
    draining: bool,
    /// When the engines that answer are asked again.
    next_health: Instant,
    /// The engine labels each queued run needs, once read: a run that waits for its engine is
    /// passed over without reading its task and blueprint again at every turn of the loop.
    /// Forgotten when blueprints or `maxions.yaml` change.
    needs: HashMap<String, BTreeSet<String>>,
}

impl Daemon {
    /// Reads the config, takes the state dir's lock, and records what a previous daemon left
    /// running when it died.
    ///
    /// # Errors
    /// [`DaemonError`]: nothing can run.
    pub async fn start(
        setup: Setup,
        engine: Arc<dyn Engine>,
        sink: Arc<dyn EventSink>,
    ) -> Result<Self, DaemonError> {
        let config = setup.config().map_err(DaemonError::Config)?;
        let engines = Engines::single(engine, config.concurrency());
        Self::start_on(setup, engines, sink).await
    }

    /// [`Daemon::start`] with the engines runs are placed on (see [`Engines::connect`]).
    ///
    /// # Errors
    /// [`DaemonError`]: nothing can run.
    pub async fn start_on(
        setup: Setup,
        engines: Engines,
        sink: Arc<dyn EventSink>,
    ) -> Result<Self, DaemonError> {
        let config = setup.config().map_err(DaemonError::Config)?;
        let config_seen = setup.config_file.as_deref().and_then(file_stamp);
        let tasks_dir = setup.tasks_dir(&config);
        std::fs::create_dir_all(&tasks_dir).map_err(|source| DaemonError::TasksDir {
            path: tasks_dir.clone(),
            source,
        })?;
        let tasks_dir = std::fs::canonicalize(&tasks_dir).unwrap_or(tasks_dir);
        let (store, state) = Store::open(&setup.state_dir(&config))?;
        let (commands, commands_rx) = mpsc::channel(64);
        let mut daemon = Self {
            setup,
            config,
            config_seen,
            tasks_dir,
            engines,
            sink,
            store,
            state,
            dirty: false,
            runs: JoinSet::new(),
            root: CancellationToken::new(),
            run_ids: HashMap::new(),
            handles: HashMap::new(),
            schedules: HashMap::new(),
            settle: watch::Settle::new(SETTLE),
            references: None,
            problems: BTreeSet::new(),
            last_scan: Instant::now(),
            watching: false,
            next_sweep: Instant::now() + FIRST_SWEEP,
            next_health: Instant::now() + engines::HEALTH_EVERY,
            needs: HashMap::new(),
            view: tokio::sync::watch::Sender::new(Arc::default()),
            commands,
            commands_rx: Some(commands_rx),
            draining: false,
        };
        daemon.recover().await;
        daemon.dirty = true;
        daemon.persist();
        Ok(daemon)
    }

    /// A handle on this daemon for others (the HTTP API): its view and its commands. The
    /// commands are answered once [`Daemon::run`] runs.
    #[must_use]
    pub fn handle(&self) -> Handle {
        Handle {
            view: self.view.subscribe(),
            commands: self.commands.clone(),
        }
    }

    /// The config in force at start.
    #[must_use]
    pub fn config(&self) -> &DaemonConfig {
        &self.config
    }

    /// Where the state (and the control socket) lives.
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        self.store.dir()
    }

    /// Runs until `shutdown`, then waits for the runs to end. Returns early only if the state
    /// can no longer be written.
    ///
    /// # Errors
    /// [`DaemonError`] when the control socket cannot be made or the state not written.
    pub async fn run(mut self, shutdown: Shutdown) -> Result<(), DaemonError> {
        let socket = control::socket_path(self.store.dir());
        let listener = control::listen(self.store.dir()).map_err(|source| DaemonError::Socket {
            path: socket.clone(),
            source,
        })?;
        let (calls_tx, mut calls) = mpsc::channel(16);
        let mut commands = self.commands_rx.take();
        let server = tokio::spawn(control::serve(listener, calls_tx));
        let (mut watcher, mut hints) = self.start_watching();
        tracing::info!(
            tasks = %self.tasks_dir.display(),
            state = %self.store.dir().display(),
            concurrency = self.config.concurrency(),
            engines = self.engines.slots.len(),
            "maxions daemon started"
        );
        let mut recheck = self.rescan();
        let mut draining = false;
        let mut grace_over: Option<Instant> = None;
        let mut cancelled_all = false;
        loop {
            self.reload_config();
            self.check_references();
            self.fire_schedules(Utc::now());
            if !draining {
                self.dispatch();
            }
            self.persist();
            if draining && self.runs.is_empty() {
                break;
            }
            let rescan_every = if self.watching {
                watch::SAFETY_RESCAN
            } else {
                watch::FALLBACK_RESCAN
            };
            // Blueprints and maxions.yaml are not watched: looked at (a few `stat`s) this often.
            let mut wake = (self.last_scan + rescan_every)
                .min(self.next_sweep)
                .min(Instant::now() + REFERENCES_EVERY);
            if let Some(at) = recheck {
                wake = wake.min(at);
            }
            if let Some(at) = self.next_slot() {
                wake = wake.min(at);
            }
            if let Some(at) = self.engines.next_retry() {
                wake = wake.min(at);
            }
            wake = wake.min(self.next_health);
            if let Some(at) = grace_over
                && !cancelled_all
            {
                wake = wake.min(at);
            }
            tokio::select! {
                hint = recv(&mut hints) => match hint {
                    Some(watch::Hint::Error(error)) => {
                        tracing::warn!("{error}");
                        if matches!(error, watch::WatchError::Gone { .. }) {
                            watcher = None;
                            hints = None;
                        }
                        self.watching = false;
                        recheck = self.rescan();
                    }
                    Some(_) => recheck = self.rescan(),
                    None => {
                        hints = None;
                        self.watching = false;
                    }
                },
                Some(joined) = self.runs.join_next_with_id(), if !self.runs.is_empty() => {
                    self.finish(joined);
                }
                Some(call) = calls.recv() => self.control(call),
                Some(command) = recv_command(&mut commands) => self.command(command),
                () = shutdown.graceful.cancelled(), if !draining => {
                    draining = true;
                    self.draining = true;
                    let grace = self.config.shutdown_grace.0;
                    grace_over = Some(Instant::now() + grace);
                    tracing::info!(
                        running = self.handles.len(),
                        "stopping: no new runs; running ones may finish within {} (send the signal again to cancel them now)",
                        crate::config::units::HumanDuration(grace)
                    );
                }
                () = shutdown.now.cancelled(), if !cancelled_all => {
                    draining = true;
                    self.draining = true;
                    cancelled_all = true;
                    self.cancel_all("the daemon was stopped");
                }
                () = tokio::time::sleep_until(wake) => {
                    if grace_over.is_some_and(|at| at <= Instant::now()) && !cancelled_all {
                        cancelled_all = true;
                        self.cancel_all("the daemon was stopped and its grace period ended");
                    }
                    if watcher.is_none() && !draining && self.tasks_dir.is_dir() {
                        (watcher, hints) = self.start_watching();
                    }
                    self.ask_engines().await;
                    if self.next_sweep <= Instant::now() {
                        self.sweep().await;
                    }
                    if recheck.is_some_and(|at| at <= Instant::now())
                        || self.last_scan + rescan_every <= Instant::now()
                    {
                        recheck = self.rescan();
                    }
                }
            }
        }
        server.abort();
        let _ = server.await;
        let _ = std::fs::remove_file(&socket);
        drop(watcher);
        self.persist();
        tracing::info!("maxions daemon stopped");
        Ok(())
    }

    fn start_watching(&mut self) -> (Option<watch::Watcher>, Option<watch::Hints>) {
        match watch::watch(&self.tasks_dir, DEBOUNCE) {
            Ok((watcher, hints)) => {
                self.watching = true;
                (Some(watcher), Some(hints))
            }
            Err(error) => {
                tracing::warn!("{error}");
                self.watching = false;
                (None, None)
            }
        }
    }

    // ---- crash recovery --------------------------------------------------------------------

    /// Runs in flight when the last daemon died: their logs and results say `interrupted`,
    /// their containers go, and they are queued again per `interrupted` (and `max_attempts`).
    async fn recover(&mut self) {
        let interrupted = std::mem::take(&mut self.state.running);
        for active in interrupted {
            // Its log ended before the daemon could save that: the run ended on its own, and
            // its log and result are whole. Recording it again would give it two ends, and
            // queueing it again would run it twice. (`interrupted` is a daemon's own record of
            // it, by one that died recovering it: that one is recovered again.)
            let logged = records::logged_end(&active.entry.task, &active.run);
            if let Some((status, reason, pull_request)) = logged.clone()
                && status != RunStatus::Interrupted
            {
                tracing::info!(run = %active.run, task = %active.entry.task.display(), status = ?status, "the run had ended when the last daemon stopped; recorded as it ended");
                let recorded = runner::result::read_result(&active.entry.task)
                    .is_some_and(|r| r.run == active.run);
                if !recorded {
                    // It died between the log's last line and the result: the result says so now.
                    let ended =
                        records::Ended::of(&active, status, reason.as_deref().unwrap_or_default());
                    if let Err(error) = ended.write_result() {
                        tracing::error!(%error, run = %active.run, "cannot write the run's result");
                    }
                }
                self.state
                    .finished(active.done(status, reason, pull_request));
                self.mark_handled(&active.entry);
                self.dirty = true;
                continue;
            }
            let again = self.tries_again(&active);
            let reason = format!(
                "interrupted: the daemon running it stopped unexpectedly (killed, or the machine went down){}",
                if again {
                    format!(
                        "; queued again (attempt {} of {})",
                        active.entry.attempt + 1,
                        self.config.max_attempts
                    )
                } else if self.config.interrupted == Interrupted::Requeue {
                    format!(
                        "; not queued again: it was tried {} times (`max_attempts`)",
                        active.entry.attempt
                    )
                } else {
                    String::new()
                }
            );
            if logged.is_some() {
                self.state.finished(active.done(
                    RunStatus::Interrupted,
                    Some(reason.clone()),
                    None,
                ));
            } else {
                self.record_ended(&active, RunStatus::Interrupted, &reason);
            }
            tracing::warn!(run = %active.run, task = %active.entry.task.display(), "{reason}");
            if again {
                self.requeue(&active, "");
            } else {
                // Not to be tried again: the next scan must not take it for a new file.
                self.mark_handled(&active.entry);
            }
            self.dirty = true;
        }
        // Their containers: every maxions container whose process is gone, on every engine.
        for (name, engine) in self.engines.up() {
            match engine.remove_orphans(&[]).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    engine = name,
                    "removed {n} sandbox containers of runs that were interrupted"
                ),
                Err(error) => {
                    tracing::warn!(engine = name, %error, "cannot look for the sandboxes of interrupted runs")
                }
            }
        }
    }

    /// Removes the sandboxes of this instance that no live run owns: those whose create request
    /// was still in flight when a daemon died or a run was cancelled.
    async fn sweep(&mut self) {
        self.next_sweep = Instant::now() + SWEEP_EVERY;
        let live: Vec<String> = self.handles.keys().cloned().collect();
        for (name, engine) in self.engines.up() {
            match tokio::time::timeout(SWEEP_TIMEOUT, engine.remove_orphans(&live)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    tracing::info!(
                        engine = name,
                        "removed {n} sandbox containers that no run owns"
                    );
                }
                Ok(Err(error)) => {
                    tracing::warn!(engine = name, %error, "cannot look for orphaned sandboxes");
                }
                Err(_) => tracing::warn!(
                    engine = name,
                    "looking for orphaned sandboxes took longer than {}s; trying again later",
                    SWEEP_TIMEOUT.as_secs()
                ),
            }
        }
    }

    /// Writes the end of a run no run will write (its log, its result) and remembers it.
    fn record_ended(&mut self, active: &Active, status: RunStatus, reason: &str) {
        if let Err(error) = records::Ended::of(active, status, reason).record() {
            tracing::error!(%error, run = %active.run, "cannot record the end of the run beside its task file");
        }
        self.state
            .finished(active.done(status, Some(reason.to_owned()), None));
        self.dirty = true;
    }

    // ---- the folder ------------------------------------------------------------------------

    /// Looks at the folder, acts on what settled or went, and says when to look again.
    fn rescan(&mut self) -> Option<Instant> {
        self.last_scan = Instant::now();
        let scan = watch::scan(&self.tasks_dir);
        let problems: BTreeSet<String> = scan.problems.iter().map(ToString::to_string).collect();
        for problem in problems.difference(&self.problems) {
            tracing::warn!("tasks folder: {problem}");
        }
        self.problems = problems;
        let now = SystemTime::now();
        let observed = self.settle.observe(&scan, now);
        for path in observed.removed {
            self.removed(&path);
        }
        for path in observed.settled {
            self.changed(&path, false);
        }
        // Task files the state knows that are gone while the daemon was down.
        let present: BTreeSet<&Path> = scan.files.iter().map(|e| e.path.as_path()).collect();
        let gone: Vec<PathBuf> = self
            .state
            .tasks
            .keys()
            .filter(|p| !present.contains(p.as_path()) && !scan.unknown(p))
            .cloned()
            .collect();
        for path in gone {
            self.removed(&path);
        }
        observed.recheck_at.map(|at| {
            let wait = at.duration_since(now).unwrap_or_default();
            Instant::now() + wait
        })
    }

    /// A blueprint or `maxions.yaml` changed: tasks that were invalid may be valid now.
    fn check_references(&mut self) {
        let stamp = self.references_stamp();
        if stamp == self.references {
            return;
        }
        // At start-up too: what they refer to may have been fixed while the daemon was down.
        self.references = stamp;
        self.needs.clear();
        let invalid: Vec<PathBuf> = self
            .state
            .tasks
            .iter()
            .filter(|(_, t)| t.invalid)
            .map(|(p, _)| p.clone())
            .collect();
        for path in invalid {
            if path.is_file() {
                self.changed(&path, true);
            }
        }
    }

    /// A task file appeared or changed (and settled); `force`: read it again even if its content
    /// is the same (what it refers to changed).
    fn changed(&mut self, path: &Path, force: bool) {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(%error, task = %path.display(), "cannot read the task file");
                return;
            }
        };
        let hash = content_hash(&bytes);
        if let Err(problem) = self.confined(path, &bytes) {
            self.invalid(path, &hash, &outside_project(path, problem));
            return;
        }
        let known = self.state.tasks.get(path).cloned();
        if let Some(known) = &known
            && known.hash == hash
            && !force
        {
            // Unchanged since the daemon last saw it (a restart, a touch): nothing new, unless
            // this daemon has not registered its schedule yet.
            let in_flight = self.state.queue.iter().any(|e| e.task == path)
                || self.state.running.iter().any(|a| a.entry.task == path);
            if self.schedules.contains_key(path)
                || known.handled.as_deref() == Some(hash.as_str())
                || in_flight
            {
                return;
            }
        }
        let loaded = match self.load(path) {
            Ok(loaded) => loaded,
            Err(validation) => {
                if not_a_task(&validation, path) {
                    tracing::debug!(file = %path.display(), "not a task file: ignored");
                    return;
                }
                self.invalid(path, &hash, &validation);
                return;
            }
        };
        let was_invalid = known.as_ref().is_some_and(|k| k.invalid);
        let previous = known.map(|k| k.hash);
        let task = self.state.tasks.entry(path.to_path_buf()).or_default();
        task.hash.clone_from(&hash);
        task.invalid = false;
        if was_invalid && previous.as_deref() == Some(hash.as_str()) {
            // Valid now without an edit of its own: what it refers to was fixed.
            task.handled = None;
        }
        self.dirty = true;
        if let Some(expr) = &loaded.task.schedule {
            match Schedule::new(expr, loaded.task.timezone.as_deref()) {
                Ok(schedule) => {
                    if task.last_slot.is_none() {
                        task.last_slot = Some(Utc::now());
                    }
                    let next = schedule.next_after(Utc::now());
                    tracing::info!(
                        task = %path.display(),
                        schedule = %expr,
                        timezone = %schedule.timezone(),
                        next = %next.map_or_else(|| "never".to_owned(), |n| n.with_timezone(&schedule.timezone()).to_rfc3339()),
                        "scheduled task"
                    );
                    self.schedules.insert(path.to_path_buf(), schedule);
                }
                Err(error) => {
                    tracing::error!(task = %path.display(), "{error}");
                }
            }
            return;
        }
        self.schedules.remove(path);
        task.last_slot = None;
        if task.handled.as_ref() == Some(&hash) {
            return;
        }
        // New to this daemon, but run already: its result beside it says so (a lost state, or
        // `maxions run`). A cancelled or interrupted one did not finish: it runs.
        if previous.is_none() && already_ran(path, &hash) {
            task.handled = Some(hash);
            tracing::info!(task = %path.display(), "already run (the result beside it is for this content): not run again");
            return;
        }
        let trigger = match previous {
            Some(_) if was_invalid => {
                "the task is valid now (a blueprint or maxions.yaml changed)".to_owned()
            }
            Some(old) if old != hash => format!(
                "the task file changed (content {} → {})",
                &old[..12.min(old.len())],
                &hash[..12]
            ),
            _ => "new task file".to_owned(),
        };
        tracing::info!(task = %path.display(), "{trigger}: queued");
        // Queued already: the entry now stands for the new content.
        if let Some(entry) = self.state.queue.iter_mut().find(|e| e.task == path) {
            entry.hash = hash;
            entry.trigger = trigger;
            return;
        }
        // Running the old content: that run is superseded.
        for active in self.state.running.iter().filter(|a| a.entry.task == path) {
            if let Some(handle) = self.handles.get(&active.run) {
                handle
                    .reason
                    .set("cancelled: the task file changed; the new version runs next");
                handle.cancel.cancel();
            }
        }
        self.state.enqueue(Entry {
            id: String::new(),
            seq: 0,
            task: path.to_path_buf(),
            hash,
            repo: loaded.repo.clone_url.clone(),
            trigger,
            queued_at: Utc::now(),
            attempt: 1,
        });
    }

    /// A task file went: its runs are cancelled, its queue entries dropped, its state forgotten.
    fn removed(&mut self, path: &Path) {
        self.schedules.remove(path);
        let had_state = self.state.tasks.remove(path).is_some();
        let before = self.state.queue.len();
        self.state.queue.retain(|e| e.task != path);
        let dropped = before - self.state.queue.len();
        let mut cancelled = 0;
        for active in self.state.running.iter().filter(|a| a.entry.task == path) {
            if let Some(handle) = self.handles.get(&active.run) {
                handle.reason.set("cancelled: the task file was deleted");
                handle.cancel.cancel();
                cancelled += 1;
            }
        }
        if had_state || dropped > 0 || cancelled > 0 {
            self.dirty = true;
            tracing::info!(
                task = %path.display(),
                cancelled,
                dropped_from_queue = dropped,
                "task file removed"
            );
        }
    }

    fn invalid(&mut self, path: &Path, hash: &str, validation: &Validation) {
        let task = self.state.tasks.entry(path.to_path_buf()).or_default();
        if task.hash == hash && task.invalid {
            return;
        }
        task.hash = hash.to_owned();
        task.handled = Some(hash.to_owned());
        task.invalid = true;
        if task.last_slot.is_none() {
            self.schedules.remove(path);
        }
        self.dirty = true;
        match records::write_invalid(path, validation) {
            Ok(result) => tracing::warn!(
                task = %path.display(),
                result = %result.display(),
                "invalid task file; nothing runs until it is fixed:\n{}",
                describe(validation, path)
            ),
            Err(error) => {
                tracing::error!(%error, task = %path.display(), "invalid task file, and its result cannot be written")
            }
        }
    }

    /// What the daemon reads for a task stays in its project: whoever may drop a task file must
    /// not make the daemon read (and quote in diagnostics) any file it can read. A task file that
    /// is a symbolic link must lead into the tasks folder, and a blueprint named by path must lie
    /// in the project (the directory of `maxions.yaml`).
    fn confined(&self, path: &Path, bytes: &[u8]) -> Result<(), String> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            let target = std::fs::canonicalize(path)
                .map_err(|e| format!("cannot follow the symbolic link: {e}"))?;
            if !target.starts_with(&self.tasks_dir) {
                return Err(format!(
                    "the task file is a symbolic link to `{}`, outside the tasks folder: the daemon does not follow it",
                    target.display()
                ));
            }
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Ok(());
        };
        let Ok(tree) = crate::config::yaml::parse(text) else {
            return Ok(());
        };
        let Some(name) = tree
            .get("blueprint")
            .and_then(crate::config::yaml::Node::as_str)
        else {
            return Ok(());
        };
        if !(name.contains('/') || name.ends_with(".yaml") || name.ends_with(".yml")) {
            return Ok(());
        }
        let project =
            std::fs::canonicalize(&self.setup.dir).unwrap_or_else(|_| self.setup.dir.clone());
        let wanted = path.parent().unwrap_or(Path::new("/")).join(name);
        let resolved = std::fs::canonicalize(&wanted).unwrap_or(wanted);
        let plain = !resolved
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
        if plain && resolved.starts_with(&project) {
            return Ok(());
        }
        Err(format!(
            "the blueprint `{name}` is outside the project `{}`: name a blueprint in `blueprints_dir`, or a path inside the project",
            project.display()
        ))
    }

    /// A fingerprint of the blueprints dir and `maxions.yaml` (names, sizes, mtimes).
    fn references_stamp(&self) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let dir = self.setup.dir.join(&self.config.blueprints_dir);
        let mut entries: Vec<(std::ffi::OsString, u64, Option<SystemTime>)> =
            std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    Some((e.file_name(), meta.len(), meta.modified().ok()))
                })
                .collect();
        entries.sort();
        entries.hash(&mut hasher);
        self.setup
            .config_file
            .as_deref()
            .and_then(file_stamp)
            .hash(&mut hasher);
        Some(hasher.finish())
    }

    fn load(&self, path: &Path) -> Result<LoadedTask, Validation> {
        load_task_with_config(path, &self.setup.dir, self.config.clone())
    }

    // ---- maxions.yaml ----------------------------------------------------------------------

    /// Takes up an edited `maxions.yaml`; a broken one is reported and the last good one kept.
    fn reload_config(&mut self) {
        let Some(file) = self.setup.config_file.clone() else {
            return;
        };
        let stamp = file_stamp(&file);
        if stamp == self.config_seen {
            return;
        }
        self.config_seen = stamp;
        match self.setup.config() {
            Ok(config) if config == self.config => {}
            Ok(config) => {
                if config.tasks_dir != self.config.tasks_dir
                    || config.state_dir != self.config.state_dir
                {
                    tracing::warn!(
                        "maxions.yaml: `tasks_dir` and `state_dir` take effect when the daemon restarts"
                    );
                }
                tracing::info!(file = %file.display(), "maxions.yaml changed: the next runs use it");
                if config.engines != self.config.engines
                    || config.concurrency() != self.config.concurrency()
                {
                    self.engines.reconfigure(&config, &self.setup.dir);
                }
                self.needs.clear();
                self.config = DaemonConfig {
                    tasks_dir: self.config.tasks_dir.clone(),
                    state_dir: self.config.state_dir.clone(),
                    ..config
                };
                self.dirty = true;
            }
            Err(problems) => tracing::error!(
                "maxions.yaml is not valid; the daemon keeps the last good config until it is fixed:\n{problems}"
            ),
        }
    }

    // ---- schedules -------------------------------------------------------------------------

    fn next_slot(&self) -> Option<Instant> {
        let now = Utc::now();
        self.schedules
            .iter()
            .filter_map(|(path, schedule)| {
                let last = self.state.tasks.get(path)?.last_slot?;
                schedule.next_after(now.max(last))
            })
            .min()
            .map(|at| {
                let wait = (at - now).to_std().unwrap_or_default();
                Instant::now() + wait
            })
    }

    /// Queues the scheduled tasks whose slot has come at `now` (the slot arithmetic is
    /// `schedule::due`, tested on a fake clock).
    fn fire_schedules(&mut self, now: DateTime<Utc>) {
        let paths: Vec<PathBuf> = self.schedules.keys().cloned().collect();
        for path in paths {
            let Some(schedule) = self.schedules.get(&path) else {
                continue;
            };
            let Some(task) = self.state.tasks.get(&path) else {
                continue;
            };
            let last = task.last_slot.unwrap_or(now);
            let due = schedule::due(schedule, last, now, self.config.missed_runs);
            if due.fire.is_none() && due.missed == 0 {
                continue;
            }
            let expr = schedule.expr().to_owned();
            let tz = schedule.timezone();
            let hash = task.hash.clone();
            if let Some(task) = self.state.tasks.get_mut(&path) {
                task.last_slot = Some(now);
            }
            self.dirty = true;
            let Some(slot) = due.fire else {
                tracing::info!(
                    task = %path.display(),
                    missed = due.missed,
                    "schedule slots passed while the daemon was down; not run (`missed_runs: skip`)"
                );
                continue;
            };
            let late =
                now - slot > chrono::Duration::from_std(schedule::ON_TIME).unwrap_or_default();
            let trigger = if late {
                format!(
                    "schedule `{expr}` ({tz}): the slot of {} passed while the daemon was down; run once now{}",
                    slot.with_timezone(&tz).to_rfc3339(),
                    if due.missed > 0 {
                        format!(" ({} earlier slots not run)", due.missed)
                    } else {
                        String::new()
                    }
                )
            } else {
                format!(
                    "schedule `{expr}` ({tz}), slot {}",
                    slot.with_timezone(&tz).to_rfc3339()
                )
            };
            let busy = self.state.running.iter().any(|a| a.entry.task == path);
            let queued = self.state.queue.iter().any(|e| e.task == path);
            // Two runs of one task never overlap; `queue` lets one wait.
            let (skip, setting) = match self.config.overlap {
                Overlap::Skip => (busy || queued, "skip"),
                Overlap::Queue => (queued, "queue"),
            };
            if skip {
                tracing::info!(
                    task = %path.display(),
                    slot = %slot.with_timezone(&tz).to_rfc3339(),
                    "schedule slot skipped: the previous run of this task is still {} (`overlap: {setting}`)",
                    if queued { "queued" } else { "running" },
                );
                continue;
            }
            let repo = match self.load(&path) {
                Ok(loaded) => loaded.repo.clone_url,
                Err(_) => String::new(),
            };
            tracing::info!(task = %path.display(), "{trigger}: queued");
            self.state.enqueue(Entry {
                id: String::new(),
                seq: 0,
                task: path.clone(),
                hash,
                repo,
                trigger,
                queued_at: Utc::now(),
                attempt: 1,
            });
        }
    }

    // ---- runs ------------------------------------------------------------------------------

    /// Starts queued runs while there are free slots: each on an engine with its labels and a
    /// free slot. One that must wait for its engine does not hold up those behind it.
    fn dispatch(&mut self) {
        if self.state.queue.is_empty() {
            self.needs.clear();
        }
        let mut waiting: Vec<String> = Vec::new();
        while self.engines.any_free()
            && self.state.running.len() < self.config.concurrency() as usize
        {
            let Some(index) = queue::pick_except(&self.state.queue, &self.state.running, &waiting)
            else {
                break;
            };
            let id = &self.state.queue[index].id;
            if let Some(needs) = self.needs.get(id)
                && self.engines.place(needs) == Placement::Wait
            {
                waiting.push(id.clone());
                continue;
            }
            let entry = self.state.queue.remove(index);
            self.dirty = true;
            if let Some(entry) = self.start_run(entry) {
                waiting.push(entry.id.clone());
                self.state.queue.insert(index, entry);
            }
        }
    }

    /// Starts `entry` on an engine, or ends it when it cannot run; gives it back when no engine
    /// it may use has a free slot now.
    fn start_run(&mut self, mut entry: Entry) -> Option<Entry> {
        // Checked again: the file may have been swapped for a link since it was queued.
        if let Err(problem) = std::fs::read(&entry.task)
            .map_err(|e| format!("cannot read the task file: {e}"))
            .and_then(|bytes| self.confined(&entry.task, &bytes))
        {
            self.invalid(
                &entry.task,
                &entry.hash,
                &outside_project(&entry.task, problem),
            );
            return None;
        }
        // Loaded now, not when queued: an edited blueprint or maxions.yaml counts from the next run.
        let loaded = match self.load(&entry.task) {
            Ok(loaded) => loaded,
            Err(validation) => {
                if entry.task.is_file() {
                    self.invalid(&entry.task, &entry.hash, &validation);
                }
                return None;
            }
        };
        if entry.id.is_empty() {
            entry.id = runner::new_run_id();
        }
        let needs: BTreeSet<String> = loaded
            .blueprint
            .sandbox
            .engine_labels
            .iter()
            .map(|l| l.0.clone())
            .collect();
        let slot = match self.engines.place(&needs) {
            Placement::On(slot) => {
                self.needs.remove(&entry.id);
                slot
            }
            Placement::Wait => {
                self.needs.insert(entry.id.clone(), needs);
                return Some(entry);
            }
            Placement::Nowhere => {
                let offered: Vec<String> = self
                    .engines
                    .slots
                    .iter()
                    .map(|s| {
                        let labels: Vec<&str> = s.labels.iter().map(String::as_str).collect();
                        format!("`{}` [{}]", s.name, labels.join(", "))
                    })
                    .collect();
                let needs: Vec<&str> = needs.iter().map(String::as_str).collect();
                let reason = format!(
                    "no engine has every label the blueprint's `sandbox.engine_labels` names ({}); the engines offer: {}. Add the labels to an engine in maxions.yaml, or drop them from the blueprint",
                    needs.join(", "),
                    offered.join("; ")
                );
                let active = Active {
                    log: runner::result::log_path(&entry.task, &entry.id),
                    run: entry.id.clone(),
                    branch: loaded.branch.clone(),
                    started_at: Utc::now(),
                    engine: String::new(),
                    entry,
                };
                tracing::error!(run = %active.run, task = %active.entry.task.display(), "{reason}");
                self.record_ended(&active, RunStatus::Failed, &reason);
                self.mark_handled(&active.entry);
                return None;
            }
        };
        let run_id = entry.id.clone();
        let engine_name = self.engines.slots[slot].name.clone();
        let Some(engine) = self.engines.slots[slot].engine().cloned() else {
            return Some(entry);
        };
        let active = Active {
            log: runner::result::log_path(&entry.task, &run_id),
            run: run_id.clone(),
            branch: loaded.branch.clone(),
            started_at: Utc::now(),
            engine: engine_name.clone(),
            entry,
        };
        let forge = match forge_for(&loaded) {
            Ok(forge) => forge,
            Err(error) => {
                let reason = format!("cannot use the forge: {error}");
                self.record_ended(&active, RunStatus::Failed, &reason);
                self.mark_handled(&active.entry);
                return None;
            }
        };
        self.engines.slots[slot].running += 1;
        // Persisted before it starts: a crash from here on finds it and records it interrupted.
        self.state.running.push(active.clone());
        self.dirty = true;
        self.persist();
        let cancel = self.root.child_token();
        let reason = CancelReason::default();
        let mut launch = Launch::new(Arc::new(loaded), engine, run_id.clone());
        launch.forge = forge;
        launch.engine_name = Some(engine_name.clone());
        launch.trigger = Some(active.entry.trigger.clone());
        launch.cancel_reason = reason.clone();
        launch.state_dir = Some(self.store.dir().to_path_buf());
        let sink = Arc::clone(&self.sink);
        let token = cancel.clone();
        let run = run_id.clone();
        let task = self.runs.spawn(async move {
            let outcome = runner::launch(launch, sink, token).await;
            Ended { run, outcome }
        });
        self.run_ids.insert(task.id(), run_id.clone());
        tracing::info!(run = %run_id, task = %active.entry.task.display(), engine = %engine_name, trigger = %active.entry.trigger, "run started");
        self.handles.insert(
            run_id,
            Running {
                cancel,
                reason,
                stopping: false,
            },
        );
        None
    }

    fn finish(&mut self, joined: Result<(tokio::task::Id, Ended), tokio::task::JoinError>) {
        let ended = match joined {
            Ok((id, ended)) => {
                self.run_ids.remove(&id);
                ended
            }
            Err(error) => {
                // The run's task panicked (a bug) or was aborted: its log and result say so.
                let Some(run) = self.run_ids.remove(&error.id()) else {
                    return;
                };
                let reason =
                    format!("maxions failed inside this run (a bug; please report it): {error}");
                tracing::error!(%run, "{reason}");
                self.handles.remove(&run);
                if let Some(index) = self.state.running.iter().position(|a| a.run == run) {
                    let active = self.state.running.remove(index);
                    self.release(&active);
                    self.record_ended(&active, RunStatus::Failed, &reason);
                    self.mark_handled(&active.entry);
                }
                return;
            }
        };
        let handle = self.handles.remove(&ended.run);
        let Some(index) = self.state.running.iter().position(|a| a.run == ended.run) else {
            return;
        };
        let active = self.state.running.remove(index);
        self.release(&active);
        self.dirty = true;
        let (status, reason, pull_request) = match ended.outcome {
            Ok((result, _)) => (
                result.status,
                result.reason.clone(),
                result.pull_request.as_ref().and_then(|pr| pr.url.clone()),
            ),
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(run = %active.run, "{reason}");
                (RunStatus::Failed, Some(reason), None)
            }
        };
        tracing::info!(
            run = %active.run,
            task = %active.entry.task.display(),
            status = ?status,
            reason = reason.as_deref().unwrap_or(""),
            "run finished"
        );
        self.state
            .finished(active.done(status, reason.clone(), pull_request));
        let stopping = handle.as_ref().is_some_and(|h| h.stopping);
        if status == RunStatus::Interrupted && !stopping {
            // The engine went away under it (the runner says `interrupted` for nothing else):
            // nothing is placed on it until it answers, and the run is tried again (on another
            // engine, or on this one once it answers), a bounded number of times.
            self.engine_gone(&active.engine, reason.as_deref().unwrap_or_default());
            if self.tries_again(&active) {
                let by = format!(" by the Docker engine `{}`", active.engine);
                let trigger = self.requeue(&active, &by);
                tracing::warn!(run = %active.run, task = %active.entry.task.display(), "{trigger}");
            } else {
                if self.config.interrupted == Interrupted::Requeue {
                    tracing::warn!(run = %active.run, task = %active.entry.task.display(), "not queued again: it was tried {} times (`max_attempts`)", active.entry.attempt);
                }
                self.mark_handled(&active.entry);
            }
        } else if stopping
            && self.config.interrupted == Interrupted::Requeue
            && active.entry.task.is_file()
        {
            let mut entry = active.entry.clone();
            entry.id = runner::new_run_id();
            entry.trigger = format!(
                "queued again: the daemon stopped before run {} finished",
                active.run
            );
            self.state.queue.insert(0, entry);
        } else {
            self.mark_handled(&active.entry);
        }
        let protect: Vec<&str> = self.state.running.iter().map(|a| a.run.as_str()).collect();
        if let Err(error) =
            records::prune_logs(&active.entry.task, self.config.keep_runs as usize, &protect)
        {
            tracing::warn!(%error, task = %active.entry.task.display(), "cannot prune old run logs");
        }
    }

    /// Whether an interrupted run is tried again: `interrupted: requeue`, attempts left, and
    /// its task file still there.
    fn tries_again(&self, active: &Active) -> bool {
        self.config.interrupted == Interrupted::Requeue
            && active.entry.attempt < self.config.max_attempts
            && active.entry.task.is_file()
    }

    /// Queues an interrupted run again as its next attempt, first in line (its old place: it
    /// was taken first). `by` says what interrupted it. Returns the new entry's trigger.
    fn requeue(&mut self, active: &Active, by: &str) -> String {
        let mut entry = active.entry.clone();
        entry.id = runner::new_run_id();
        entry.attempt += 1;
        entry.trigger = format!(
            "queued again after run {} was interrupted{by} (attempt {} of {})",
            active.run, entry.attempt, self.config.max_attempts
        );
        let trigger = entry.trigger.clone();
        self.state.queue.insert(0, entry);
        self.dirty = true;
        trigger
    }

    // ---- the engine going away ------------------------------------------------------------

    /// A run's engine slot is free again.
    fn release(&mut self, active: &Active) {
        if let Some(slot) = self
            .engines
            .index_of(&active.engine)
            .map(|i| &mut self.engines.slots[i])
        {
            slot.running = slot.running.saturating_sub(1);
        }
    }

    /// A run says its engine went away: nothing is placed on it until it answers.
    fn engine_gone(&mut self, name: &str, why: &str) {
        let Some(slot) = self
            .engines
            .index_of(name)
            .map(|i| &mut self.engines.slots[i])
        else {
            return;
        };
        if slot.down.is_none() {
            tracing::warn!(
                engine = name,
                "the Docker engine went away under a run; no run is placed on it until it answers again (asked again in {})",
                crate::config::units::HumanDuration(engines::RETRY_FIRST)
            );
            slot.mark_down(why.to_owned());
            self.dirty = true;
        }
    }

    /// Asks the down engines whose time has come whether they are back, and, every
    /// [`engines::HEALTH_EVERY`], the others whether they still answer (all at once, each within
    /// [`engines::PING_TIMEOUT`]).
    async fn ask_engines(&mut self) {
        let now = Instant::now();
        let health = self.next_health <= now;
        if health {
            self.next_health = now + engines::HEALTH_EVERY;
        }
        let before: Vec<bool> = self
            .engines
            .slots
            .iter()
            .map(|s| s.down.is_some())
            .collect();
        let due = self.engines.slots.iter_mut().filter(|s| match &s.down {
            Some(down) => down.retry_at <= now,
            None => health,
        });
        let back = futures_util::future::join_all(due.map(engines::Slot::ask)).await;
        if back.iter().any(|&b| b) {
            // What the runs it lost left behind goes now, not at the next sweep.
            self.next_sweep = Instant::now();
        }
        let after: Vec<bool> = self
            .engines
            .slots
            .iter()
            .map(|s| s.down.is_some())
            .collect();
        if before != after {
            self.dirty = true;
        }
    }

    fn mark_handled(&mut self, entry: &Entry) {
        if let Some(task) = self.state.tasks.get_mut(&entry.task)
            && task.last_slot.is_none()
            && task.hash == entry.hash
        {
            task.handled = Some(entry.hash.clone());
            self.dirty = true;
        }
    }

    fn cancel_all(&mut self, why: &str) {
        for handle in self.handles.values_mut() {
            handle.reason.set(format!("cancelled: {why}"));
            handle.stopping = true;
        }
        self.root.cancel();
        if !self.handles.is_empty() {
            tracing::warn!(
                runs = self.handles.len(),
                "cancelling the running runs: {why}"
            );
        }
    }

    // ---- control ---------------------------------------------------------------------------

    fn control(&mut self, call: control::Call) {
        let reply = match call.request {
            control::Request::Cancel { target } => self.cancel(&target),
        };
        let _ = call.reply.send(reply);
    }

    /// Cancels `target`: a run id, a task file's path, or a task file's name without `.yaml`.
    fn cancel(&mut self, target: &str) -> control::Reply {
        let matches = |task: &Path| {
            task == Path::new(target)
                || task.file_stem().is_some_and(|s| s == target)
                || task.file_name().is_some_and(|s| s == target)
        };
        let lines = self.cancel_where(
            |run, task| run == target || matches(task),
            "cancelled by `maxions cancel`",
        );
        if lines.is_empty() {
            return control::Reply {
                ok: false,
                lines: vec![format!(
                    "nothing queued or running matches `{target}` (a run id, a task file, or its name); see `maxions status`"
                )],
            };
        }
        control::Reply { ok: true, lines }
    }

    /// Cancels the running runs and drops the queued ones that `matches` (run id, task file),
    /// each with `why`; says what it did, a line each.
    fn cancel_where(&mut self, matches: impl Fn(&str, &Path) -> bool, why: &str) -> Vec<String> {
        let mut lines = Vec::new();
        for active in &self.state.running {
            if matches(&active.run, &active.entry.task)
                && let Some(handle) = self.handles.get(&active.run)
            {
                handle.reason.set(why);
                handle.cancel.cancel();
                lines.push(format!(
                    "cancelling run {} of {}",
                    active.run,
                    active.entry.task.display()
                ));
            }
        }
        let (gone, kept): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.state.queue)
            .into_iter()
            .partition(|e| matches(&e.id, &e.task));
        self.state.queue = kept;
        for entry in gone {
            self.dirty = true;
            let run = if entry.id.is_empty() {
                runner::new_run_id()
            } else {
                entry.id.clone()
            };
            let active = Active {
                log: runner::result::log_path(&entry.task, &run),
                run,
                branch: String::new(),
                started_at: Utc::now(),
                engine: String::new(),
                entry,
            };
            self.record_ended(
                &active,
                RunStatus::Cancelled,
                &format!("{why} before it started"),
            );
            self.mark_handled(&active.entry);
            lines.push(format!(
                "removed {} from the queue",
                active.entry.task.display()
            ));
        }
        lines
    }

    // ---- commands (the HTTP API) -------------------------------------------------------------

    /// Does what a [`Handle`] asked, publishes the view it left, then answers: whoever asked
    /// reads a view that has the change.
    fn command(&mut self, command: Command) {
        match command {
            Command::Submit { task, reply } => {
                let answer = self.submit(&task);
                self.persist();
                let _ = reply.send(answer);
            }
            Command::Kill { run, why, reply } => {
                let done = self.cancel_where(|id, _| id == run, &why);
                self.persist();
                let _ = reply.send(if done.is_empty() {
                    Err(Refusal::NotActive(run))
                } else {
                    Ok(())
                });
            }
            Command::Rerun { task, after, reply } => {
                let answer = self.rerun(&task, &after);
                self.persist();
                let _ = reply.send(answer);
            }
            Command::Forget { run, reply } => {
                let answer = if self.state.running.iter().any(|a| a.run == run) {
                    Err(Refusal::Busy(run, "running"))
                } else if self.state.queue.iter().any(|e| e.id == run) {
                    Err(Refusal::Busy(run, "queued"))
                } else {
                    let before = self.state.recent.len();
                    self.state.recent.retain(|d| d.run != run);
                    self.dirty |= self.state.recent.len() != before;
                    Ok(())
                };
                self.persist();
                let _ = reply.send(answer);
            }
        }
    }

    /// A task file written through the API: read now, so that the caller learns its run id.
    fn submit(&mut self, task: &Path) -> Result<Submitted, Refusal> {
        if self.draining {
            return Err(Refusal::Stopping);
        }
        self.changed(task, false);
        if let Some(entry) = self.state.queue.iter_mut().find(|e| e.task == task) {
            entry.trigger = "submitted through the API".to_owned();
            return Ok(Submitted::Queued(entry.id.clone()));
        }
        if self.schedules.contains_key(task) {
            return Ok(Submitted::Scheduled);
        }
        let invalid = self.state.tasks.get(task).is_some_and(|t| t.invalid);
        Ok(Submitted::Ignored(if invalid {
            "the daemon found the task file invalid (its result file says why)".to_owned()
        } else {
            "the daemon did not queue it (see its log)".to_owned()
        }))
    }

    /// Queues `task` once more, whatever its history; a run of it already queued is the answer.
    fn rerun(&mut self, task: &Path, after: &str) -> Result<String, Refusal> {
        if self.draining {
            return Err(Refusal::Stopping);
        }
        if let Some(entry) = self.state.queue.iter().find(|e| e.task == task) {
            return Ok(entry.id.clone());
        }
        let bytes = std::fs::read(task).map_err(|_| Refusal::TaskGone(task.to_path_buf()))?;
        if let Err(problem) = self.confined(task, &bytes) {
            return Err(Refusal::Invalid(
                task.to_path_buf(),
                Box::new(outside_project(task, problem)),
            ));
        }
        let loaded = self
            .load(task)
            .map_err(|v| Refusal::Invalid(task.to_path_buf(), Box::new(v)))?;
        let hash = content_hash(&bytes);
        let known = self.state.tasks.entry(task.to_path_buf()).or_default();
        known.hash.clone_from(&hash);
        known.invalid = false;
        self.state.enqueue(Entry {
            id: String::new(),
            seq: 0,
            task: task.to_path_buf(),
            hash,
            repo: loaded.repo.clone_url.clone(),
            trigger: format!("re-run of run {after}, asked for through the API"),
            queued_at: Utc::now(),
            attempt: 1,
        });
        self.dirty = true;
        tracing::info!(task = %task.display(), after, "re-run asked for through the API: queued");
        Ok(self
            .state
            .queue
            .last()
            .map(|e| e.id.clone())
            .unwrap_or_default())
    }

    /// Tells the [`Handle`]s what the daemon looks like now.
    fn publish(&mut self) {
        let now = Utc::now();
        let scheduled = self
            .schedules
            .iter()
            .map(|(path, schedule)| {
                let from = self
                    .state
                    .tasks
                    .get(path)
                    .and_then(|t| t.last_slot)
                    .map_or(now, |last| last.max(now));
                let mut next = Vec::new();
                let mut at = from;
                while next.len() < 3 {
                    let Some(slot) = schedule.next_after(at) else {
                        break;
                    };
                    next.push(slot);
                    at = slot;
                }
                handle::Scheduled {
                    task: path.clone(),
                    expr: schedule.expr().to_owned(),
                    timezone: schedule.timezone(),
                    next,
                }
            })
            .collect();
        let version = self.view.borrow().version + 1;
        self.view.send_replace(Arc::new(View {
            queue: self.state.queue.clone(),
            running: self.state.running.clone(),
            scheduled,
            config: Arc::new(self.config.clone()),
            engines: self.state.engines.clone(),
            project: self.setup.dir.clone(),
            tasks_dir: self.tasks_dir.clone(),
            version,
        }));
    }

    // ---- state -----------------------------------------------------------------------------

    fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        self.state.engines = self.engines.status();
        self.publish();
        match self.store.save(&self.state) {
            Ok(()) => self.dirty = false,
            Err(error) => tracing::error!("{error}; retrying at the next change"),
        }
    }
}

async fn recv_command(commands: &mut Option<mpsc::Receiver<Command>>) -> Option<Command> {
    match commands {
        Some(commands) => commands.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv(hints: &mut Option<watch::Hints>) -> Option<watch::Hint> {
    match hints {
        Some(hints) => hints.recv().await,
        None => std::future::pending().await,
    }
}

/// Why a task file is refused when it would make the daemon read outside its project, as the
/// located diagnostics an invalid result carries.
fn outside_project(path: &Path, problem: String) -> Validation {
    let mut validation = Validation::default();
    validation.diagnostics.push(
        crate::config::Diagnostic::error("outside-project", problem)
            .in_file(path.display().to_string()),
    );
    validation
}

/// Whether `<stem>.result.json` records a finished run of this content.
fn already_ran(task: &Path, hash: &str) -> bool {
    runner::result::read_result(task).is_some_and(|result| {
        result.task_hash.as_deref() == Some(hash)
            && matches!(
                result.status,
                RunStatus::Succeeded
                    | RunStatus::NoChanges
                    | RunStatus::Failed
                    | RunStatus::TimedOut
                    | RunStatus::BudgetExceeded
            )
    })
}

fn file_stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Whether the file is a blueprint or a config rather than a task: not for the daemon to run.
fn not_a_task(validation: &Validation, path: &Path) -> bool {
    let name = path.display().to_string();
    validation.files.iter().any(|(file, kind)| {
        file == &name && matches!(kind, Some(FileKind::Blueprint | FileKind::Config))
    })
}
