//! What the daemon writes beside a task file when no run writes it: the end of a log whose
//! process died, the record of a run that never started, the result of an invalid task file;
//! and the pruning of old logs.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::config::validate::Validation;
use crate::runner::result::{log_path, read_result, result_path, write_result};
use crate::runner::{Event, EventLine, RunResult, RunStatus};

/// What is known of a run the daemon must record itself.
#[derive(Debug, Clone)]
pub struct Ended<'a> {
    pub task: &'a Path,
    pub run: &'a str,
    pub repo: &'a str,
    pub branch: &'a str,
    pub trigger: Option<&'a str>,
    pub started_at: DateTime<Utc>,
    pub status: RunStatus,
    pub reason: String,
}

impl<'a> Ended<'a> {
    /// The end of a run the daemon started.
    #[must_use]
    pub fn of(active: &'a crate::daemon::state::Active, status: RunStatus, reason: &str) -> Self {
        Self {
            task: &active.entry.task,
            run: &active.run,
            repo: &active.entry.repo,
            branch: &active.branch,
            trigger: Some(&active.entry.trigger),
            started_at: active.started_at,
            status,
            reason: reason.to_owned(),
        }
    }

    /// Finishes the run's log (creating it if the run never wrote one) with a `run_finished`
    /// line, and writes the task's result. A log cut off in the middle of a line is completed
    /// with a newline first, so that every line stays one JSON object.
    ///
    /// # Errors
    /// When the log or the result cannot be written.
    pub fn record(&self) -> io::Result<PathBuf> {
        let log = log_path(self.task, self.run);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (last_seq, started, ends_cleanly) = read_log_tail(&log)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut out = Vec::new();
        if !ends_cleanly {
            out.push(b'\n');
        }
        let mut seq = last_seq;
        let mut line = |event: Event| -> io::Result<()> {
            // A log whose last seq is u64::MAX (written by hand, or corrupt) cannot be continued
            // in order; overflowing would panic, or wrap to a seq that goes backwards.
            seq = seq.checked_add(1).ok_or_else(|| {
                io::Error::other(format!(
                    "{} ends at the largest seq there is; move it away to record the run's end",
                    log.display()
                ))
            })?;
            let line = EventLine {
                ts: crate::runner::now_rfc3339(),
                run: self.run.to_owned(),
                seq,
                event,
            };
            serde_json::to_writer(&mut out, &line).map_err(io::Error::other)?;
            out.push(b'\n');
            Ok(())
        };
        if !started {
            line(Event::RunStarted {
                task: self.task.display().to_string(),
                blueprint: String::new(),
                repo: self.repo.to_owned(),
                branch: self.branch.to_owned(),
                base: String::new(),
                trigger: self.trigger.map(str::to_owned),
            })?;
        }
        let duration_ms = u64::try_from((Utc::now() - self.started_at).num_milliseconds().max(0))
            .unwrap_or_default();
        line(Event::RunFinished {
            status: self.status,
            reason: Some(self.reason.clone()),
            duration_ms,
        })?;
        file.write_all(&out)?;
        file.sync_all()?;
        self.write_result()?;
        Ok(log)
    }

    /// Writes the task's result for this run (without touching its log).
    ///
    /// # Errors
    /// When the result cannot be written.
    pub fn write_result(&self) -> io::Result<()> {
        let log = log_path(self.task, self.run);
        let duration_ms = u64::try_from((Utc::now() - self.started_at).num_milliseconds().max(0))
            .unwrap_or_default();
        let result = RunResult {
            run: self.run.to_owned(),
            task: self.task.display().to_string(),
            status: self.status,
            reason: Some(self.reason.clone()),
            branch: self.branch.to_owned(),
            base: String::new(),
            commit: None,
            pull_request: None,
            steps: Vec::new(),
            fix_rounds: 0,
            failed_checks: 0,
            started_at: self
                .started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            finished_at: crate::runner::now_rfc3339(),
            duration_ms,
            exec_ms: 0,
            agent_ms: 0,
            log: log.display().to_string(),
            kept_container: None,
            usage: None,
            diagnostics: Vec::new(),
            task_hash: None,
        };
        write_result(&result_path(self.task), &result)
    }
}

/// The last `seq` in a log, whether it has a `run_started` line, and whether it ends with a
/// newline. A log that does not exist is empty. (Read whole: a log is at most the run's output
/// cap, and this happens once per interrupted run.)
fn read_log_tail(log: &Path) -> io::Result<(u64, bool, bool)> {
    let bytes = match std::fs::read(log) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, false, true)),
        Err(e) => return Err(e),
    };
    let mut last_seq = 0;
    let mut started = false;
    for line in bytes.split(|b| *b == b'\n') {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(seq) = value.get("seq").and_then(serde_json::Value::as_u64) {
            last_seq = last_seq.max(seq);
        }
        started |= value.get("type").and_then(serde_json::Value::as_str) == Some("run_started");
    }
    Ok((last_seq, started, bytes.last().is_none_or(|b| *b == b'\n')))
}

/// How a run ended by its own account: the status and reason of its log's `run_finished` line
/// and the pull request of its result (when the result is this run's). `None` when the log has
/// no such line: the run did not end.
///
/// A daemon killed after a run's log ended but before it saved that finds the run still
/// `running` in its state; this tells it the run need not be recorded again nor run again.
#[must_use]
pub fn logged_end(task: &Path, run: &str) -> Option<(RunStatus, Option<String>, Option<String>)> {
    let bytes = std::fs::read(log_path(task, run)).ok()?;
    let finished = bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .rfind(|value| {
            value.get("type").and_then(serde_json::Value::as_str) == Some("run_finished")
        })?;
    let status = serde_json::from_value(finished.get("status")?.clone()).ok()?;
    let reason = finished
        .get("reason")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let pull_request = read_result(task)
        .filter(|result| result.run == run)
        .and_then(|result| result.pull_request?.url);
    Some((status, reason, pull_request))
}

/// Writes `<stem>.result.json` with status `invalid` and the same diagnostics `maxions validate
/// --format json` gives.
///
/// # Errors
/// When the result cannot be written.
pub fn write_invalid(task: &Path, validation: &Validation) -> io::Result<PathBuf> {
    let now = crate::runner::now_rfc3339();
    let diagnostics: Vec<serde_json::Value> = validation
        .diagnostics
        .iter()
        .filter_map(|d| serde_json::to_value(d).ok())
        .collect();
    let first = validation
        .diagnostics
        .iter()
        .find(|d| d.is_error())
        .map(|d| match (d.line, d.column) {
            (Some(line), Some(column)) => format!("{}:{line}:{column}: {}", d.file, d.message),
            _ => format!("{}: {}", d.file, d.message),
        })
        .unwrap_or_else(|| "the task file is not valid".to_owned());
    let result = RunResult {
        run: String::new(),
        task: task.display().to_string(),
        status: RunStatus::Invalid,
        reason: Some(format!(
            "{first} (see `diagnostics`, or run `maxions validate {}`); nothing ran",
            task.display()
        )),
        branch: String::new(),
        base: String::new(),
        commit: None,
        pull_request: None,
        steps: Vec::new(),
        fix_rounds: 0,
        failed_checks: 0,
        started_at: now.clone(),
        finished_at: now,
        duration_ms: 0,
        exec_ms: 0,
        agent_ms: 0,
        log: String::new(),
        kept_container: None,
        usage: None,
        diagnostics,
        task_hash: None,
    };
    let path = result_path(task);
    write_result(&path, &result)?;
    Ok(path)
}

/// Deletes the oldest logs in `<stem>.runs/` beyond `keep`, never one of `protect` (runs still
/// going). Run ids start with their second, so names sort by age except within one second
/// (the rest of an id is random): there the log last written counts as the newer. Returns how
/// many were deleted.
///
/// # Errors
/// When the directory cannot be listed.
pub fn prune_logs(task: &Path, keep: usize, protect: &[&str]) -> io::Result<usize> {
    let Some(dir) = log_path(task, "x").parent().map(Path::to_path_buf) else {
        return Ok(0);
    };
    let mut logs: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.ends_with(".jsonl"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    logs.sort_by_cached_key(|name| {
        let second = name.split('-').next().unwrap_or_default().to_owned();
        let written = std::fs::metadata(dir.join(name))
            .and_then(|m| m.modified())
            .ok();
        (second, written, name.clone())
    });
    let excess = logs.len().saturating_sub(keep);
    let mut removed = 0;
    for name in logs.into_iter().take(excess) {
        let run = name.trim_end_matches(".jsonl");
        if protect.contains(&run) {
            continue;
        }
        if std::fs::remove_file(dir.join(&name)).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(task: &Path) -> Ended<'_> {
        Ended {
            task,
            run: "20261202T000000-abcdef",
            repo: "file:///r",
            branch: "maxions/t",
            trigger: Some("new task file"),
            started_at: Utc::now(),
            status: RunStatus::Interrupted,
            reason: "the daemon died".into(),
        }
    }

    #[test]
    fn a_cut_log_is_completed_and_continues_its_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("t.yaml");
        let e = ended(&task);
        let log = log_path(&task, e.run);
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(
            &log,
            concat!(
                r#"{"ts":"x","run":"r","seq":1,"type":"run_started","task":"t","blueprint":"b","repo":"r","branch":"b","base":"main"}"#,
                "\n",
                r#"{"ts":"x","run":"r","seq":2,"type":"step_started","step":"s","kind":"run"}"#,
                "\n",
                r#"{"ts":"x","run":"r","seq":3,"type":"outp"#
            ),
        )
        .unwrap();
        e.record().unwrap();
        let read = lines(&log);
        let last = read.last().unwrap();
        assert_eq!(last["type"], "run_finished");
        assert_eq!(last["status"], "interrupted");
        assert_eq!(last["seq"], 3, "after the last complete line");
        assert_eq!(
            read.iter().filter(|l| l["type"] == "run_started").count(),
            1
        );
        let result: RunResult =
            serde_json::from_slice(&std::fs::read(result_path(&task)).unwrap()).unwrap();
        assert_eq!(result.status, RunStatus::Interrupted);
        assert_eq!(result.log, log.display().to_string());
    }

    /// The log's lines that parse (a cut line does not).
    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    #[test]
    fn a_run_that_never_wrote_its_log_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("t.yaml");
        let log = ended(&task).record().unwrap();
        let read = lines(&log);
        assert_eq!(read.len(), 2);
        assert_eq!(read[0]["type"], "run_started");
        assert_eq!(read[0]["trigger"], "new task file");
        assert_eq!(read[1]["seq"], 2);
    }

    #[test]
    fn pruning_within_one_second_keeps_the_log_written_last() {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("t.yaml");
        let runs = dir.path().join("t.runs");
        std::fs::create_dir_all(&runs).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        // The older run has the larger random part.
        let older = runs.join("20261201T000000-ffffff.jsonl");
        std::fs::write(&older, "").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&older)
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::fs::write(runs.join("20261201T000000-000000.jsonl"), "").unwrap();
        assert_eq!(prune_logs(&task, 1, &[]).unwrap(), 1);
        assert!(runs.join("20261201T000000-000000.jsonl").exists());
        assert!(!older.exists());
    }

    #[test]
    fn a_log_ended_by_its_run_is_told_from_one_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("t.yaml");
        let run = "20261202T000000-abcdef";
        let log = log_path(&task, run);
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let started = r#"{"ts":"x","run":"r","seq":1,"type":"run_started","task":"t","blueprint":"b","repo":"r","branch":"b","base":"main"}"#;
        std::fs::write(&log, format!("{started}\n{{\"ts\":\"x\",\"ty")).unwrap();
        assert_eq!(logged_end(&task, run), None);
        std::fs::write(
            &log,
            format!(
                "{started}\n{}\n",
                r#"{"ts":"x","run":"r","seq":2,"type":"run_finished","status":"failed","reason":"step `s` failed","duration_ms":5}"#
            ),
        )
        .unwrap();
        assert_eq!(
            logged_end(&task, run),
            Some((RunStatus::Failed, Some("step `s` failed".into()), None))
        );
    }

    #[test]
    fn pruning_keeps_the_newest_and_running_logs() {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("t.yaml");
        let runs = dir.path().join("t.runs");
        std::fs::create_dir_all(&runs).unwrap();
        for i in 0..6 {
            std::fs::write(runs.join(format!("2026120{i}T000000-000000.jsonl")), "").unwrap();
        }
        let removed = prune_logs(&task, 2, &["20261200T000000-000000"]).unwrap();
        assert_eq!(removed, 3);
        let mut left: Vec<String> = std::fs::read_dir(&runs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "20261200T000000-000000.jsonl",
                "20261204T000000-000000.jsonl",
                "20261205T000000-000000.jsonl"
            ]
        );
    }
}
