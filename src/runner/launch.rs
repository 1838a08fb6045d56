//! One run with its records, as `maxions run` and the daemon both start it: the forge for the
//! task, the JSONL log beside the task file, the run itself, and the result file. The caller
//! owns the handles (`Arc`s) and the cancellation token, so a run can be spawned and owned.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::result::{log_path, result_path, write_result};
use super::{CancelReason, EventLine, EventSink, JsonlLog, RunOptions, RunResult};
use crate::config::load::LoadedTask;
use crate::forge::{Forge, ForgeError, GitHub};
use crate::sandbox::Engine;

/// Everything a run is started with. Cheap to clone: the task and handles are shared.
#[derive(Clone)]
pub struct Launch {
    pub task: Arc<LoadedTask>,
    pub engine: Arc<dyn Engine>,
    /// Where pull requests go; see [`forge_for`].
    pub forge: Option<Arc<dyn Forge>>,
    pub run_id: String,
    /// Keep the sandbox when the run ends (for debugging).
    pub keep: bool,
    /// Why the run happens, for its log.
    pub trigger: Option<String>,
    pub cancel_reason: CancelReason,
    /// Where mirrors and scratch files go. Default: the task's own state dir.
    pub state_dir: Option<PathBuf>,
    /// The name of the engine the run is placed on (the daemon's `engines`), for its log and
    /// for the reason of a run the engine ended.
    pub engine_name: Option<String>,
}

impl Launch {
    #[must_use]
    pub fn new(task: Arc<LoadedTask>, engine: Arc<dyn Engine>, run_id: String) -> Self {
        Self {
            task,
            engine,
            forge: None,
            run_id,
            keep: false,
            trigger: None,
            cancel_reason: CancelReason::default(),
            state_dir: None,
            engine_name: None,
        }
    }

    /// The run's log: `<stem>.runs/<run>.jsonl` beside the task file.
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        log_path(&self.task.path, &self.run_id)
    }
}

/// Why a run could not be recorded. The run itself never fails this way: its failures are in
/// its result.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot create the run's log {}: {source}; check that the task's directory is writable", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The forge that serves `task`'s repository: GitHub when `maxions.yaml` configures it and the
/// repository is not a local one. A forge opens pull requests only for repositories it serves:
/// a clone URL on another host gets neither its token nor a pull request on its `owner/name`.
///
/// # Errors
/// When the configured credentials cannot be read.
pub fn forge_for(task: &LoadedTask) -> Result<Option<Arc<dyn Forge>>, ForgeError> {
    let Some(config) = &task.config.github else {
        return Ok(None);
    };
    if task.repo.clone_url.starts_with("file://") {
        return Ok(None);
    }
    let github = GitHub::from_config(config, task.config_dir.as_deref())?;
    Ok(github
        .serves(&task.repo.clone_url)
        .then(|| Arc::new(github) as Arc<dyn Forge>))
}

/// Runs `launch.task` to the end: every event goes to the run's log (created first, flushed per
/// line) and then to `sink`; the result is written to `<stem>.result.json`, atomically. Returns
/// the result (its `log` set) and where it was written.
///
/// # Errors
/// [`LaunchError`] when the log cannot be created; then nothing ran.
pub async fn launch(
    launch: Launch,
    sink: Arc<dyn EventSink>,
    cancel: CancellationToken,
) -> Result<(RunResult, PathBuf), LaunchError> {
    // What the file held when the run began (read before the run: an edit during it is a new task).
    let task_hash = std::fs::read(&launch.task.path)
        .ok()
        .map(|bytes| super::result::content_hash(&bytes));
    let log_file = launch.log_path();
    let log = JsonlLog::create(&log_file).map_err(|source| LaunchError::Log {
        path: log_file.clone(),
        source,
    })?;
    let both = Both {
        log: &log,
        sink: &*sink,
    };
    let mut options = RunOptions::new(&*launch.engine, launch.run_id.clone());
    options.forge = launch.forge.clone();
    options.keep = launch.keep;
    options.trigger = launch.trigger.clone();
    options.cancel_reason = launch.cancel_reason.clone();
    options.state_dir = launch.state_dir.clone();
    options.engine_name = launch.engine_name.clone();
    let mut result = super::run(&launch.task, options, &both, cancel).await;
    result.log = log_file.display().to_string();
    result.task_hash = task_hash;
    let result_file = result_path(&launch.task.path);
    if let Err(error) = write_result(&result_file, &result) {
        tracing::error!(%error, path = %result_file.display(), "cannot write the run's result");
    }
    Ok((result, result_file))
}

/// The log first: whatever another sink does with a line, the log has it already.
struct Both<'a> {
    log: &'a JsonlLog,
    sink: &'a dyn EventSink,
}

impl EventSink for Both<'_> {
    fn emit(&self, line: &EventLine) {
        self.log.emit(line);
        self.sink.emit(line);
    }
}
