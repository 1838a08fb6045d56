//! `<stem>.result.json`: the latest outcome of a task, written atomically beside it.

use std::io;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::events::{RunStatus, StepStatus};

/// The outcome of one run, as written to `<stem>.result.json`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunResult {
    pub run: String,
    /// The task file.
    pub task: String,
    pub status: RunStatus,
    /// Why the run did not succeed, in words a person can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub branch: String,
    pub base: String,
    /// The commit maxions made, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestRecord>,
    pub steps: Vec<StepSummary>,
    /// Fix rounds used, over all check steps.
    pub fix_rounds: u32,
    /// Checks still failing at the end.
    pub failed_checks: u32,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    /// Time spent inside step commands (the rest is maxions' own overhead and the sandbox's).
    pub exec_ms: u64,
    /// Time spent inside agent execs (part of `exec_ms`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub agent_ms: u64,
    /// The run's event log.
    pub log: String,
    /// What the run's agents spent, summed over every agent step and fix round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::agent::Usage>,
    /// The sandbox kept for debugging (`--keep`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_container: Option<String>,
    /// The sha-256 of the task file this run was made from: a daemon that finds this result
    /// beside an unchanged file (its state lost, or the task run by `maxions run`) does not run
    /// it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_hash: Option<String>,
    /// Status `invalid`: every problem found, as `maxions validate --format json` gives them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<crate::config::Diagnostic>")]
    pub diagnostics: Vec<serde_json::Value>,
}

/// The pull request a run opened or updated, or would have opened.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PullRequestRecord {
    /// `false` when no forge is configured: this is what would have been opened.
    pub opened: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `true` if this run opened it, `false` if it updated the open one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    pub title: String,
    pub body: String,
    pub draft: bool,
    pub head: String,
    pub base: String,
}

/// One step's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StepSummary {
    pub id: String,
    pub kind: String,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the agent spent in this step (agent steps and check steps with fix rounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::agent::Usage>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The content hash a task is known by: sha-256 of its bytes, hex.
#[must_use]
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a task's records go: `<dir>/<stem>.result.json` and `<dir>/<stem>.runs/<run>.jsonl`.
#[must_use]
pub fn result_path(task: &Path) -> PathBuf {
    sibling(task, ".result.json")
}

#[must_use]
pub fn log_path(task: &Path, run: &str) -> PathBuf {
    sibling(task, ".runs").join(format!("{run}.jsonl"))
}

fn sibling(task: &Path, suffix: &str) -> PathBuf {
    let stem = task
        .file_stem()
        .map_or_else(|| "task".into(), |s| s.to_string_lossy().into_owned());
    task.with_file_name(format!("{stem}{suffix}"))
}

/// The task's result file as last written, if there is one that parses.
#[must_use]
pub fn read_result(task: &Path) -> Option<RunResult> {
    let bytes = std::fs::read(result_path(task)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes the result atomically: a temporary file beside it, then a rename, so that a reader
/// (or a crash) never sees half a file.
///
/// # Errors
/// When the file cannot be written.
pub fn write_result(path: &Path, result: &RunResult) -> io::Result<()> {
    let mut json = serde_json::to_vec_pretty(result).map_err(io::Error::other)?;
    json.push(b'\n');
    let partial = path.with_extension(format!("json.{}.partial", std::process::id()));
    std::fs::write(&partial, &json)?;
    std::fs::rename(&partial, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_sit_beside_the_task() {
        let task = Path::new("/x/tasks/dark-mode.yaml");
        assert_eq!(
            result_path(task),
            Path::new("/x/tasks/dark-mode.result.json")
        );
        assert_eq!(
            log_path(task, "r1"),
            Path::new("/x/tasks/dark-mode.runs/r1.jsonl")
        );
    }
}
