//! Runs as the API shows them: the daemon's queue and running runs (from its view) and every
//! run whose log is in the tasks folder (`<stem>.runs/<id>.jsonl`), folded into a summary and a
//! step timeline. The logs are the record: a run made by `maxions run` in the folder shows too,
//! and deleting a run deletes its log. Folded logs are cached by size and mtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::rejection;
use super::{ApiError, ApiState};
use crate::agent::Usage;
use crate::daemon::handle::{Activity, Command, View};
use crate::runner::{Event, EventLine, RunStatus};

/// The most runs one page holds.
const MAX_LIMIT: u32 = 500;
const DEFAULT_LIMIT: u32 = 50;
/// How deep below the tasks folder logs are looked for (task files may sit in subfolders).
const MAX_DEPTH: usize = 8;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    NoChanges,
    Cancelled,
    TimedOut,
    Interrupted,
    Invalid,
    BudgetExceeded,
}

impl From<RunStatus> for Status {
    fn from(status: RunStatus) -> Self {
        match status {
            RunStatus::Succeeded => Self::Succeeded,
            RunStatus::Failed => Self::Failed,
            RunStatus::NoChanges => Self::NoChanges,
            RunStatus::Cancelled => Self::Cancelled,
            RunStatus::TimedOut => Self::TimedOut,
            RunStatus::Interrupted => Self::Interrupted,
            RunStatus::Invalid => Self::Invalid,
            RunStatus::BudgetExceeded => Self::BudgetExceeded,
        }
    }
}

/// One run, as lists show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    /// The run's id (a queued run has one already).
    pub id: String,
    /// The task's name: its file name without `.yaml`.
    pub task: String,
    /// The task file, relative to the tasks folder.
    pub task_file: String,
    pub status: Status,
    /// Why the run happens: a new task file, an edit, a schedule slot, a re-run.
    pub trigger: Option<String>,
    /// Why it did not succeed, in words a person can act on.
    pub reason: Option<String>,
    pub branch: Option<String>,
    /// RFC 3339.
    pub queued_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    /// The pull request's URL, once opened or updated.
    pub pull_request: Option<String>,
    /// 1 for a first try; more when it was queued again after an interruption.
    pub attempt: Option<u32>,
    /// What the run's agents spent so far.
    pub usage: Option<Usage>,
    /// The Docker engine it runs or ran on (the daemon's `engines`).
    pub engine: Option<String>,
}

/// One run with its step timeline.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub steps: Vec<StepView>,
    /// The commit maxions made.
    pub commit: Option<String>,
    pub pull_request_detail: Option<PullRequestView>,
    /// The `seq` of the last event logged (0 before the first): a stream resumes after it.
    pub last_seq: u64,
    /// The run's log, relative to the tasks folder.
    pub log: Option<String>,
}

/// One step on the timeline.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StepView {
    pub id: String,
    /// `checkout`, `run`, `agent`, `check`, `commit`, `push`, `pull_request`.
    pub kind: String,
    /// `running`, or how it ended: `succeeded`, `failed`, `skipped`, `timed_out`, `cancelled`,
    /// `no_changes`, `budget_exceeded`.
    pub status: String,
    pub started_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    /// Fix rounds a check step used.
    pub fix_rounds: u32,
    /// What the agent spent in this step (its fix rounds included).
    pub usage: Option<Usage>,
}

impl StepView {
    fn new(id: String, kind: String, status: &str, started_at: String) -> Self {
        Self {
            id,
            kind,
            status: status.to_owned(),
            started_at: Some(started_at),
            duration_ms: None,
            exit_code: None,
            reason: None,
            fix_rounds: 0,
            usage: None,
        }
    }
}

/// The pull request a run opened or updated, or would have opened.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PullRequestView {
    /// `false`: no forge is configured; this is what would have been opened.
    pub opened: bool,
    pub url: Option<String>,
    pub number: Option<u64>,
    pub title: Option<String>,
    pub draft: bool,
    /// Whether this run opened it (rather than updating the open one).
    pub created: Option<bool>,
}

/// A page of runs, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunList {
    pub runs: Vec<RunSummary>,
    /// Pass as `before` for the next page; absent on the last one.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only runs with this status.
    pub status: Option<Status>,
    /// Only runs of this task (its name, or its file relative to the tasks folder).
    pub task: Option<String>,
    /// Runs per page, 1 to 500. Default: 50.
    pub limit: Option<u32>,
    /// Only runs older than this id (the previous page's `next`).
    pub before: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only events after this `seq`.
    pub after: Option<u64>,
}

// ---- the folded logs ---------------------------------------------------------------------------

/// What a log says about its run.
#[derive(Debug, Clone, Default)]
pub(super) struct Folded {
    task: Option<String>,
    trigger: Option<String>,
    branch: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    status: Option<RunStatus>,
    reason: Option<String>,
    duration_ms: Option<u64>,
    pull_request: Option<PullRequestView>,
    commit: Option<String>,
    usage: Option<Usage>,
    engine: Option<String>,
    steps: Vec<StepView>,
    pub(super) last_seq: u64,
}

/// Reads every line of a log into what it says; lines that do not parse (cut off by a crash,
/// or from a newer maxions) are passed over.
pub(super) fn fold(bytes: &[u8]) -> Folded {
    let mut folded = Folded::default();
    // Per step: what its finished agent execs spent, and the running exec's latest figure.
    let mut spent: HashMap<String, (Usage, Option<Usage>)> = HashMap::new();
    for line in bytes.split(|b| *b == b'\n') {
        let Ok(line) = serde_json::from_slice::<EventLine>(line) else {
            continue;
        };
        folded.last_seq = folded.last_seq.max(line.seq);
        if folded.started_at.is_none() {
            folded.started_at = Some(line.ts.clone());
        }
        match line.event {
            Event::RunStarted {
                task,
                branch,
                trigger,
                ..
            } => {
                folded.task = Some(task);
                folded.branch = Some(branch);
                folded.trigger = trigger;
                folded.started_at = Some(line.ts);
            }
            Event::SandboxReady {
                engine: Some(engine),
                ..
            } => folded.engine = Some(engine),
            Event::StepStarted { step, kind } => {
                folded
                    .steps
                    .push(StepView::new(step, kind, "running", line.ts));
            }
            Event::StepSkipped { step, reason } => folded.steps.push(StepView {
                duration_ms: Some(0),
                reason: Some(reason),
                ..StepView::new(step, String::new(), "skipped", line.ts)
            }),
            Event::StepFinished {
                step,
                status,
                exit_code,
                duration_ms,
                reason,
            } => {
                if let Some(view) = folded.steps.iter_mut().rev().find(|s| s.id == step) {
                    view.status = serde_json::to_value(status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    view.exit_code = exit_code;
                    view.duration_ms = Some(duration_ms);
                    view.reason = reason;
                }
            }
            Event::FixRound { step, round, .. } => {
                if let Some(view) = folded.steps.iter_mut().rev().find(|s| s.id == step) {
                    view.fix_rounds = view.fix_rounds.max(round);
                }
            }
            Event::Usage {
                step,
                usage,
                run_usage,
            } => {
                spent.entry(step).or_default().1 = Some(usage);
                folded.usage = Some(run_usage);
            }
            Event::AgentFinished { step, usage, .. } => {
                let entry = spent.entry(step).or_default();
                entry.0 = entry.0.plus(&usage);
                entry.1 = None;
            }
            Event::Commit { sha } => folded.commit = Some(sha),
            Event::Pr {
                number,
                url,
                created,
                draft,
            } => {
                folded.pull_request = Some(PullRequestView {
                    opened: true,
                    url: Some(url),
                    number: Some(number),
                    title: None,
                    draft,
                    created: Some(created),
                });
            }
            Event::PrNotOpened { title, draft, .. } => {
                folded.pull_request = Some(PullRequestView {
                    opened: false,
                    url: None,
                    number: None,
                    title: Some(title),
                    draft,
                    created: None,
                });
            }
            Event::RunFinished {
                status,
                reason,
                duration_ms,
            } => {
                folded.status = Some(status);
                folded.reason = reason;
                folded.duration_ms = Some(duration_ms);
                folded.finished_at = Some(line.ts);
            }
            _ => {}
        }
    }
    for step in &mut folded.steps {
        if let Some((done, current)) = spent.get(&step.id) {
            let total = current.map_or(*done, |c| done.plus(&c));
            step.usage = Some(total);
        }
    }
    folded
}

/// A run's log found in the tasks folder.
#[derive(Debug, Clone)]
pub(super) struct Logged {
    pub id: String,
    pub log: PathBuf,
    /// The task file the log belongs to (it may be gone).
    pub task: PathBuf,
}

/// Folded logs, by path, with the size and mtime they were folded at.
#[derive(Default)]
pub(super) struct Index {
    cache: Mutex<HashMap<PathBuf, Cached>>,
}

/// A folded log and the size and mtime it had.
type Cached = (u64, Option<SystemTime>, Arc<Folded>);

impl Index {
    /// The log folded, from the cache when it has not changed.
    pub(super) fn folded(&self, log: &Path) -> Option<Arc<Folded>> {
        let meta = std::fs::metadata(log).ok()?;
        let stamp = (meta.len(), meta.modified().ok());
        if let Ok(cache) = self.cache.lock()
            && let Some((len, mtime, folded)) = cache.get(log)
            && (*len, *mtime) == stamp
        {
            return Some(Arc::clone(folded));
        }
        let bytes = std::fs::read(log).ok()?;
        let folded = Arc::new(fold(&bytes));
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(log.to_path_buf(), (stamp.0, stamp.1, Arc::clone(&folded)));
        }
        Some(folded)
    }

    /// Forgets logs that are gone.
    fn retain(&self, present: &[Logged]) {
        if let Ok(mut cache) = self.cache.lock() {
            let keep: std::collections::HashSet<&Path> =
                present.iter().map(|l| l.log.as_path()).collect();
            cache.retain(|path, _| keep.contains(path.as_path()));
        }
    }
}

/// Every run log below `tasks_dir`.
pub(super) fn scan(tasks_dir: &Path) -> Vec<Logged> {
    let mut found = Vec::new();
    walk(tasks_dir, 0, &mut found);
    found
}

fn walk(dir: &Path, depth: usize, found: &mut Vec<Logged>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        // Links are not followed: the folder is walked as it is, not where links lead.
        if !kind.is_dir() {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if let Some(stem) = name.strip_suffix(".runs") {
            let task = task_file(dir, stem);
            let Ok(logs) = std::fs::read_dir(&path) else {
                continue;
            };
            for log in logs.filter_map(Result::ok) {
                let log_name = log.file_name();
                let Some(id) = log_name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
                    continue;
                };
                if valid_id(id) {
                    found.push(Logged {
                        id: id.to_owned(),
                        log: log.path(),
                        task: task.clone(),
                    });
                }
            }
        } else if depth < MAX_DEPTH {
            walk(&path, depth + 1, found);
        }
    }
}

/// The task file beside a `<stem>.runs` directory: `.yaml`, or `.yml` if only that exists.
fn task_file(dir: &Path, stem: &str) -> PathBuf {
    let yaml = dir.join(format!("{stem}.yaml"));
    let yml = dir.join(format!("{stem}.yml"));
    if !yaml.exists() && yml.exists() {
        yml
    } else {
        yaml
    }
}

/// Whether `id` can be a run id (and so a file name): no path, no hidden name, short.
#[must_use]
pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `path` relative to the tasks folder, as shown.
fn relative(view: &View, path: &Path) -> String {
    path.strip_prefix(&view.tasks_dir)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn task_name(path: &Path) -> String {
    path.file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}

/// Where a run's records are and what the daemon is doing with it.
pub(super) struct Located {
    pub log: PathBuf,
    pub task: PathBuf,
    pub active: Option<Status>,
}

impl ApiState {
    /// The run `id`: queued or running in the daemon, or logged in the tasks folder.
    pub(super) fn locate(&self, view: &View, id: &str) -> Option<Located> {
        if !valid_id(id) {
            return None;
        }
        match view.active(id) {
            Some(Activity::Running(active)) => {
                return Some(Located {
                    log: active.log.clone(),
                    task: active.entry.task.clone(),
                    active: Some(Status::Running),
                });
            }
            Some(Activity::Queued(entry)) => {
                return Some(Located {
                    log: crate::runner::result::log_path(&entry.task, &entry.id),
                    task: entry.task.clone(),
                    active: Some(Status::Queued),
                });
            }
            None => {}
        }
        scan(&view.tasks_dir)
            .into_iter()
            .find(|l| l.id == id)
            .map(|l| Located {
                log: l.log,
                task: l.task,
                active: None,
            })
    }

    /// The summary of a located run.
    fn summary(&self, view: &View, id: &str, located: &Located) -> RunSummary {
        let folded = self.0.index.folded(&located.log);
        let mut summary = summarize(view, id, &located.task, folded.as_deref());
        if let Some(Activity::Queued(entry)) = view.active(id) {
            summary.status = Status::Queued;
            summary.trigger = Some(entry.trigger.clone());
            summary.queued_at = Some(entry.queued_at.to_rfc3339());
            summary.attempt = Some(entry.attempt);
        }
        if let Some(Activity::Running(active)) = view.active(id) {
            // The log is ahead of the daemon's record: once it holds the run's end, the run
            // has ended, even if the daemon has not noted it yet (a client that saw `end` on the
            // stream must not read `running` here a moment later).
            if folded.as_ref().is_none_or(|f| f.status.is_none()) {
                summary.status = Status::Running;
            }
            summary.queued_at = Some(active.entry.queued_at.to_rfc3339());
            summary.attempt = Some(active.entry.attempt);
            summary.trigger = Some(active.entry.trigger.clone());
            summary.branch.get_or_insert_with(|| active.branch.clone());
            if !active.engine.is_empty() {
                summary.engine.get_or_insert_with(|| active.engine.clone());
            }
            summary
                .started_at
                .get_or_insert_with(|| active.started_at.to_rfc3339());
        }
        summary
    }
}

fn summarize(view: &View, id: &str, task: &Path, folded: Option<&Folded>) -> RunSummary {
    let folded = folded.cloned().unwrap_or_default();
    RunSummary {
        id: id.to_owned(),
        task: task_name(task),
        task_file: relative(view, task),
        // A log without its end: a run going on (here or in a `maxions run`).
        status: folded.status.map_or(Status::Running, Status::from),
        trigger: folded.trigger,
        reason: folded.reason,
        branch: folded.branch,
        queued_at: None,
        started_at: folded.started_at,
        finished_at: folded.finished_at,
        duration_ms: folded.duration_ms,
        pull_request: folded.pull_request.and_then(|pr| pr.url),
        attempt: None,
        usage: folded.usage,
        engine: folded.engine,
    }
}

// ---- handlers ----------------------------------------------------------------------------------

fn id_of(path: Result<UrlPath<String>, PathRejection>) -> Result<String, ApiError> {
    let UrlPath(id) = path.map_err(rejection)?;
    Ok(id)
}

/// Runs, newest first: queued, running and finished, paginated and filtered.
#[utoipa::path(get, path = "/maxions", tag = "runs", params(ListQuery),
    responses((status = 200, body = RunList), (status = 400, body = super::error::ErrorBody),
              (status = 401, body = super::error::ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RunList>, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_LIMIT}, not {limit}"
        )));
    }
    let view = state.0.daemon.now();
    let list_state = state.clone();
    let runs = tokio::task::spawn_blocking(move || {
        let state = list_state;
        let logged = scan(&view.tasks_dir);
        state.0.index.retain(&logged);
        let mut runs: HashMap<String, RunSummary> = HashMap::new();
        for found in &logged {
            let located = Located {
                log: found.log.clone(),
                task: found.task.clone(),
                active: None,
            };
            runs.insert(found.id.clone(), state.summary(&view, &found.id, &located));
        }
        for active in &view.running {
            if let Some(located) = state.locate_active(&view, &active.run) {
                runs.insert(
                    active.run.clone(),
                    state.summary(&view, &active.run, &located),
                );
            }
        }
        for entry in &view.queue {
            if let Some(located) = state.locate_active(&view, &entry.id) {
                runs.insert(entry.id.clone(), state.summary(&view, &entry.id, &located));
            }
        }
        runs
    })
    .await
    .map_err(|e| ApiError::internal(format!("listing the runs failed: {e}")))?;
    let mut runs: Vec<RunSummary> = runs
        .into_values()
        .filter(|r| query.status.is_none_or(|s| r.status == s))
        .filter(|r| {
            query
                .task
                .as_deref()
                .is_none_or(|t| r.task == t || r.task_file == t)
        })
        .filter(|r| query.before.as_deref().is_none_or(|b| r.id.as_str() < b))
        .collect();
    runs.sort_by(|a, b| b.id.cmp(&a.id));
    let next = (runs.len() > limit as usize).then(|| runs[limit as usize - 1].id.clone());
    runs.truncate(limit as usize);
    Ok(Json(RunList { runs, next }))
}

impl ApiState {
    /// Like [`ApiState::locate`] for a run the view has, without looking at the folder.
    fn locate_active(&self, view: &View, id: &str) -> Option<Located> {
        view.active(id)?;
        self.locate(view, id)
    }
}

/// One run with its step timeline.
#[utoipa::path(get, path = "/maxions/{id}", tag = "runs", params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, body = RunDetail), (status = 401, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody)))]
pub async fn detail(
    State(state): State<ApiState>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<RunDetail>, ApiError> {
    let id = id_of(id)?;
    let view = state.0.daemon.now();
    let located = state
        .locate(&view, &id)
        .ok_or_else(|| ApiError::no_run(&id))?;
    let summary = state.summary(&view, &id, &located);
    let folded = state.0.index.folded(&located.log).unwrap_or_default();
    let exists = located.log.exists();
    Ok(Json(RunDetail {
        summary,
        steps: folded.steps.clone(),
        commit: folded.commit.clone(),
        pull_request_detail: folded.pull_request.clone(),
        last_seq: folded.last_seq,
        log: exists.then(|| relative(&view, &located.log)),
    }))
}

/// Cancels a queued or running run: a queued one ends `cancelled` at once, a running one as
/// soon as its sandbox is stopped.
#[utoipa::path(post, path = "/maxions/{id}/kill", tag = "runs", params(("id" = String, Path, description = "The run's id")),
    responses((status = 202, body = RunSummary, description = "Cancelling"), (status = 401, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody, description = "The run has finished")))]
pub async fn kill(
    State(state): State<ApiState>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let view = state.0.daemon.now();
    let located = state
        .locate(&view, &id)
        .ok_or_else(|| ApiError::no_run(&id))?;
    let finished = || {
        ApiError::conflict(format!(
            "run `{id}` has finished: there is nothing to cancel"
        ))
    };
    if located.active.is_none() {
        return Err(finished());
    }
    let asked = state
        .0
        .daemon
        .ask(|reply| Command::Kill {
            run: id.clone(),
            why: "cancelled through the API".to_owned(),
            reply,
        })
        .await;
    match asked {
        Ok(()) => {}
        Err(crate::daemon::handle::Refusal::NotActive(_)) => return Err(finished()),
        Err(refusal) => return Err(refusal.into()),
    }
    let view = state.0.daemon.now();
    let located = state.locate(&view, &id).unwrap_or(located);
    let summary = state.summary(&view, &id, &located);
    Ok((StatusCode::ACCEPTED, Json(summary)).into_response())
}

/// Runs the run's task file again: a new run, queued (or the one already queued for it).
#[utoipa::path(post, path = "/maxions/{id}/rerun", tag = "runs", params(("id" = String, Path, description = "The run's id")),
    responses((status = 201, body = RunSummary, description = "The new run, queued"), (status = 401, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody, description = "The task file is gone or invalid"),
              (status = 503, body = super::error::ErrorBody, description = "The daemon is stopping")))]
pub async fn rerun(
    State(state): State<ApiState>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let view = state.0.daemon.now();
    let located = state
        .locate(&view, &id)
        .ok_or_else(|| ApiError::no_run(&id))?;
    let new = state
        .0
        .daemon
        .ask(|reply| Command::Rerun {
            task: located.task.clone(),
            after: id.clone(),
            reply,
        })
        .await?;
    let view = state.0.daemon.now();
    let located = state
        .locate(&view, &new)
        .ok_or_else(|| ApiError::internal("the new run is not in the daemon's queue"))?;
    let summary = state.summary(&view, &new, &located);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/maxions/{new}"))],
        Json(summary),
    )
        .into_response())
}

/// Deletes a finished run's log (and the task's result file, when it is this run's).
#[utoipa::path(delete, path = "/maxions/{id}", tag = "runs", params(("id" = String, Path, description = "The run's id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody, description = "Queued or running")))]
pub async fn delete(
    State(state): State<ApiState>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = id_of(id)?;
    let view = state.0.daemon.now();
    let located = state
        .locate(&view, &id)
        .ok_or_else(|| ApiError::no_run(&id))?;
    if let Some(status) = located.active {
        return Err(ApiError::conflict(format!(
            "run `{id}` is {}: cancel it first (POST /maxions/{id}/kill), then delete it",
            if status == Status::Queued {
                "queued"
            } else {
                "running"
            }
        )));
    }
    state
        .0
        .daemon
        .ask(|reply| Command::Forget {
            run: id.clone(),
            reply,
        })
        .await?;
    let removed = |path: &Path| match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ApiError::internal(format!(
            "cannot delete {}: {e}",
            relative(&view, path)
        ))),
    };
    removed(&located.log)?;
    let result = crate::runner::result::result_path(&located.task);
    if crate::runner::result::read_result(&located.task).is_some_and(|r| r.run == id) {
        removed(&result)?;
    }
    if let Some(dir) = located.log.parent() {
        // Only if empty: the other runs' logs stay.
        let _ = std::fs::remove_dir(dir);
    }
    tracing::info!(run = %id, task = %located.task.display(), "run deleted through the API");
    Ok(StatusCode::NO_CONTENT)
}

/// The run's events, as JSON lines.
#[utoipa::path(get, path = "/maxions/{id}/logs", tag = "runs",
    params(("id" = String, Path, description = "The run's id"), LogsQuery),
    responses((status = 200, description = "One JSON event per line", content_type = "application/x-ndjson", body = String),
              (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody)))]
pub async fn logs(
    State(state): State<ApiState>,
    id: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let Query(query) = query.map_err(rejection)?;
    let view = state.0.daemon.now();
    let located = state
        .locate(&view, &id)
        .ok_or_else(|| ApiError::no_run(&id))?;
    let bytes = match tokio::fs::read(&located.log).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(ApiError::internal(format!(
                "cannot read the run's log: {e}"
            )));
        }
    };
    let mut body = Vec::with_capacity(bytes.len());
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        // Only whole lines: one still being written is sent next time.
        if !line.ends_with(b"\n") {
            break;
        }
        if let Some(after) = query.after {
            let seq = serde_json::from_slice::<SeqOnly>(line).map_or(0, |s| s.seq);
            if seq <= after {
                continue;
            }
        }
        body.extend_from_slice(line);
    }
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson; charset=utf-8")],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
pub(super) struct SeqOnly {
    pub seq: u64,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub status: Option<String>,
}

/// A task with a `schedule:`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleView {
    pub task: String,
    pub task_file: String,
    /// The 5-field cron expression.
    pub schedule: String,
    /// The IANA time zone it is read in.
    pub timezone: String,
    /// The next slots, soonest first, RFC 3339 in the task's time zone.
    pub next: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}

/// The scheduled tasks and their next slots.
#[utoipa::path(get, path = "/schedules", tag = "schedules",
    responses((status = 200, body = ScheduleList), (status = 401, body = super::error::ErrorBody)))]
pub async fn schedules(State(state): State<ApiState>) -> Json<ScheduleList> {
    let view = state.0.daemon.now();
    let mut schedules: Vec<ScheduleView> = view
        .scheduled
        .iter()
        .map(|s| schedule_view(&view, s))
        .collect();
    schedules.sort_by(|a, b| a.task_file.cmp(&b.task_file));
    Json(ScheduleList { schedules })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EngineList {
    pub engines: Vec<crate::daemon::engines::EngineStatus>,
}

/// The Docker engines runs are placed on: each one's state (`up`, or `down` with why and when it
/// is asked again), capacity, load and labels.
#[utoipa::path(get, path = "/engines", tag = "engines",
    responses((status = 200, body = EngineList), (status = 401, body = super::error::ErrorBody)))]
pub async fn engines(State(state): State<ApiState>) -> Json<EngineList> {
    let view = state.0.daemon.now();
    Json(EngineList {
        engines: view.engines.clone(),
    })
}

pub(super) fn schedule_view(view: &View, s: &crate::daemon::handle::Scheduled) -> ScheduleView {
    ScheduleView {
        task: task_name(&s.task),
        task_file: relative(view, &s.task),
        schedule: s.expr.clone(),
        timezone: s.timezone.name().to_owned(),
        next: s
            .next
            .iter()
            .map(|at| at.with_timezone(&s.timezone).to_rfc3339())
            .collect(),
    }
}

impl ApiState {
    /// The summary of run `id` now (for answers about a run just queued).
    pub(super) fn summary_of(&self, id: &str) -> Option<RunSummary> {
        let view = self.0.daemon.now();
        let located = self.locate(&view, id)?;
        Some(self.summary(&view, id, &located))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_folds_into_a_timeline() {
        let log = concat!(
            r#"{"ts":"2026-12-02T10:00:00.000Z","run":"r","seq":1,"type":"run_started","task":"t.yaml","blueprint":"b","repo":"file:///x","branch":"maxions/t","base":"main","trigger":"new task file"}"#,
            "\n",
            r#"{"ts":"2026-12-02T10:00:01.000Z","run":"r","seq":2,"type":"step_started","step":"checks","kind":"check"}"#,
            "\n",
            r#"{"ts":"2026-12-02T10:00:02.000Z","run":"r","seq":3,"type":"fix_round","step":"checks","round":1,"max_rounds":2,"fixing":["test"],"passed":true}"#,
            "\n",
            r#"{"ts":"2026-12-02T10:00:02.000Z","run":"r","seq":4,"type":"agent_finished","step":"checks","agent":"command","duration_ms":5,"succeeded":true,"usage":{"input_tokens":10,"output_tokens":3}}"#,
            "\n",
            r#"{"ts":"2026-12-02T10:00:03.000Z","run":"r","seq":5,"type":"step_finished","step":"checks","status":"succeeded","exit_code":0,"duration_ms":2000}"#,
            "\n",
            "not json\n",
            r#"{"ts":"2026-12-02T10:00:04.000Z","run":"r","seq":6,"type":"run_finished","status":"failed","reason":"no","duration_ms":4000}"#,
            "\n",
        );
        let folded = fold(log.as_bytes());
        assert_eq!(folded.last_seq, 6);
        assert_eq!(folded.status, Some(RunStatus::Failed));
        assert_eq!(folded.trigger.as_deref(), Some("new task file"));
        let step = &folded.steps[0];
        assert_eq!(
            (step.id.as_str(), step.status.as_str(), step.fix_rounds),
            ("checks", "succeeded", 1)
        );
        assert_eq!(step.duration_ms, Some(2000));
        assert_eq!(step.usage.map(|u| u.input_tokens), Some(10));
    }

    #[test]
    fn ids_cannot_name_paths() {
        assert!(valid_id("20261202T004705-8ff976"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    /// Fuzz target (see `crate::fuzzing`): a log of real event lines, garbage and lines cut
    /// anywhere folds without a panic; `last_seq` is the highest seq of the lines that parse, and
    /// every step started or skipped is on the timeline in order.
    #[test]
    fn fuzz_fold_takes_any_log() {
        use proptest::prelude::*;
        let event = prop_oneof![
            Just(r#""type":"run_started","task":"t","blueprint":"b","repo":"r","branch":"x","base":"main""#.to_owned()),
            "[a-z]{1,3}".prop_map(|s| format!(r#""type":"step_started","step":"{s}","kind":"run""#)),
            "[a-z]{1,3}".prop_map(|s| format!(r#""type":"step_skipped","step":"{s}","reason":"r""#)),
            "[a-z]{1,3}".prop_map(|s| format!(r#""type":"step_finished","step":"{s}","status":"passed","exit_code":0,"duration_ms":3"#)),
            "[a-z]{1,3}".prop_map(|s| format!(r#""type":"fix_round","step":"{s}","round":2,"max_rounds":3,"fixing":[],"passed":false"#)),
            Just(r#""type":"run_finished","status":"failed","reason":"x","duration_ms":9"#.to_owned()),
            Just(r#""type":"from_the_future","x":1"#.to_owned()),
        ];
        let line = prop_oneof![
            4 => (any::<u64>(), event).prop_map(|(seq, e)| format!(r#"{{"ts":"2026-12-02T10:00:00.000Z","run":"r","seq":{seq},{e}}}"#)),
            1 => "[ -~\n]{0,30}",
            1 => any::<String>(),
        ];
        let log =
            (proptest::collection::vec((line, any::<prop::sample::Index>(), any::<bool>()), 0..24))
                .prop_map(|lines| {
                    let mut bytes = Vec::new();
                    for (line, cut, cut_it) in lines {
                        let line = line.into_bytes();
                        let end = if cut_it {
                            cut.index(line.len() + 1)
                        } else {
                            line.len()
                        };
                        bytes.extend_from_slice(&line[..end]);
                        bytes.push(b'\n');
                    }
                    bytes
                });
        crate::fuzzing::fuzz("api_fold", 512, log, |bytes| {
            let folded = fold(&bytes);
            let parsed: Vec<EventLine> = bytes
                .split(|b| *b == b'\n')
                .filter_map(|line| serde_json::from_slice(line).ok())
                .collect();
            prop_assert_eq!(
                folded.last_seq,
                parsed.iter().map(|l| l.seq).max().unwrap_or(0)
            );
            let steps: Vec<&str> = parsed
                .iter()
                .filter_map(|l| match &l.event {
                    Event::StepStarted { step, .. } | Event::StepSkipped { step, .. } => {
                        Some(step.as_str())
                    }
                    _ => None,
                })
                .collect();
            let folded_steps: Vec<&str> = folded.steps.iter().map(|s| s.id.as_str()).collect();
            prop_assert_eq!(folded_steps, steps);
            Ok(())
        });
    }
}
