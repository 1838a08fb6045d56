//! `maxions logs`: a run's events from its log, in the form `maxions run` prints them as it goes;
//! `-f` follows a run still going until its `run_finished` line. The log is found from its path,
//! its task file (the newest run) or its run id (searched for below the tasks dir).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::Output;
use super::run::{code, exit_code};
use super::timeline::Printer;
use crate::config::DaemonConfig;
use crate::config::validate::{FileKind, Validator, typed};
use crate::runner::result::log_path;
use crate::runner::{Event, EventLine, EventSink, RunStatus};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run's log (`*.jsonl`), a task file (shows its newest run), or a run id (looked for as
    /// `*.runs/ID.jsonl` below the tasks dir).
    #[arg(value_name = "TARGET")]
    pub target: PathBuf,

    /// Keep printing events as the run writes them, until it finishes; then exit with the
    /// status `maxions run` would have.
    #[arg(short, long)]
    pub follow: bool,

    /// Print the log's JSON lines as they are.
    #[arg(long)]
    pub json: bool,

    /// The maxions.yaml whose `tasks_dir` a run id is looked for in. Default: the one in the
    /// current directory, else `./tasks`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// How often `-f` looks for new lines: quick enough to feel live, and a read of a file that did
/// not grow costs nothing.
const POLL: Duration = Duration::from_millis(200);

/// Why no log could be shown.
#[derive(Debug, thiserror::Error)]
pub(super) enum LogsError {
    #[error("cannot read the log {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no runs of {} yet: no `*.jsonl` log in {}",
        task.display(),
        dir.display()
    )]
    NoRuns { task: PathBuf, dir: PathBuf },
    #[error(
        "no run `{id}` found: looked for `*.runs/{id}.jsonl` below {} ({why}); pass the log or \
         the task file instead, or `--config` for another maxions.yaml",
        dir.display()
    )]
    NotFound {
        id: String,
        dir: PathBuf,
        /// Where that directory came from.
        why: String,
    },
    #[error(
        "run `{id}` has several logs: {}; pass the one you mean",
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Ambiguous { id: String, paths: Vec<PathBuf> },
    #[error("`{}` is not a log, a task file or a run id", target.display())]
    NotATarget { target: PathBuf },
    #[error(
        "cannot read {} to find the tasks dir: {message}; see `maxions validate {}`",
        path.display(),
        path.display()
    )]
    Config { path: PathBuf, message: String },
}

pub fn run(args: &Args, output: Output) -> u8 {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let path = match resolve(&args.target, args.config.as_deref(), &cwd) {
        Ok(path) => path,
        Err(error) => {
            eprintln!("error: {error}");
            return super::exit::UNREADABLE;
        }
    };
    if !args.json && !output.quiet {
        eprintln!("log: {}", path.display());
    }
    match show(&path, args, output) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            super::exit::UNREADABLE
        }
    }
}

/// The log `target` names: a log file, a task file's newest log, or the log of a run id found
/// below the tasks dir of `config` (default: `maxions.yaml` in `cwd`, else `cwd/tasks`).
pub(super) fn resolve(
    target: &Path,
    config: Option<&Path>,
    cwd: &Path,
) -> Result<PathBuf, LogsError> {
    let ext = target.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "jsonl" {
        return if target.is_file() {
            Ok(target.to_path_buf())
        } else {
            Err(LogsError::Read {
                path: target.to_path_buf(),
                source: io::Error::from(io::ErrorKind::NotFound),
            })
        };
    }
    if target.is_dir() && target.to_string_lossy().ends_with(".runs") {
        return newest_log(target).ok_or_else(|| LogsError::NoRuns {
            task: target.to_path_buf(),
            dir: target.to_path_buf(),
        });
    }
    // A task file, or one that was deleted since: its runs stay beside where it was.
    if target.is_file() || matches!(ext, "yaml" | "yml") {
        let dir = runs_dir(target);
        return newest_log(&dir).ok_or_else(|| LogsError::NoRuns {
            task: target.to_path_buf(),
            dir,
        });
    }
    // A run id is one plain file name: anything else would let it point outside the tasks dir.
    let mut parts = target.components();
    let id = match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(id)), None) => id.to_string_lossy().into_owned(),
        _ => {
            return Err(LogsError::NotATarget {
                target: target.to_path_buf(),
            });
        }
    };
    find_run(&id, config, cwd)
}

/// `<stem>.runs/` beside a task file.
fn runs_dir(task: &Path) -> PathBuf {
    let log = log_path(task, "run");
    log.parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The newest `*.jsonl` in `dir`. Run ids start with their start time to the second, so names
/// sort by time; two runs started in the same second are told apart by the file's age.
fn newest_log(dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .max_by_key(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let second = name.split('-').next().unwrap_or_default().to_owned();
            let born = e
                .metadata()
                .and_then(|m| m.created().or_else(|_| m.modified()))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (second, born, name)
        })
        .map(|e| e.path())
}

/// Looks for `*.runs/<id>.jsonl` below the tasks dir.
fn find_run(id: &str, config: Option<&Path>, cwd: &Path) -> Result<PathBuf, LogsError> {
    let config_file = match config {
        Some(path) => Some(cwd.join(path)),
        None => ["maxions.yaml", "maxions.yml"]
            .iter()
            .map(|name| cwd.join(name))
            .find(|p| p.is_file()),
    };
    let (dir, why) = match &config_file {
        Some(file) => {
            let tasks = tasks_dir(file)?;
            let base = file.parent().unwrap_or(cwd);
            (
                base.join(tasks),
                format!("the tasks_dir of {}", file.display()),
            )
        }
        None => (
            cwd.join("tasks"),
            format!(
                "the default tasks dir: no maxions.yaml in {}",
                cwd.display()
            ),
        ),
    };
    let mut found = Vec::new();
    search(&dir, &format!("{id}.jsonl"), 0, &mut found);
    found.sort();
    match found.len() {
        0 => Err(LogsError::NotFound {
            id: id.to_owned(),
            why: if dir.is_dir() {
                why
            } else {
                format!("{why}; it does not exist")
            },
            dir,
        }),
        1 => Ok(found.remove(0)),
        _ => Err(LogsError::Ambiguous {
            id: id.to_owned(),
            paths: found,
        }),
    }
}

/// The tasks dir a config names (relative to it). A config with other problems still says where
/// its tasks are: only one that does not load at all is refused.
fn tasks_dir(file: &Path) -> Result<PathBuf, LogsError> {
    let mut validator = Validator::new();
    let doc = validator.validate_file(file, Some(FileKind::Config));
    match doc.and_then(|doc| typed::<DaemonConfig>(&doc.tree)) {
        Some(config) => Ok(config.tasks_dir),
        None => Err(LogsError::Config {
            path: file.to_path_buf(),
            message: validator
                .result
                .diagnostics
                .iter()
                .find(|d| d.is_error())
                .map_or_else(
                    || "it is not a valid maxions.yaml".into(),
                    |d| d.message.clone(),
                ),
        }),
    }
}

/// Deep enough for any folder layout people use; a bound all the same, and symbolic links are
/// not followed, so that a link loop cannot make the search endless.
const MAX_DEPTH: usize = 32;

fn search(dir: &Path, log: &str, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if entry.file_name().to_string_lossy().ends_with(".runs") {
            let candidate = path.join(log);
            if candidate.is_file() {
                found.push(candidate);
            }
        } else if depth < MAX_DEPTH {
            search(&path, log, depth + 1, found);
        }
    }
}

/// Prints the log at `path`; with `-f`, waits for new lines until `run_finished`. Returns the
/// exit status.
fn show(path: &Path, args: &Args, output: Output) -> Result<u8, LogsError> {
    let read_error = |source| LogsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let mut view = View {
        printer: Printer::new(false, output).timed_by_log(),
        json: args.json,
        quiet: output.quiet,
        path,
        number: 0,
    };
    let mut lines = Lines::default();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        if n > 0 {
            for line in lines.push(&buf[..n]) {
                if let Some(code) = view.line(&line)
                    && args.follow
                {
                    return Ok(code);
                }
            }
            continue;
        }
        if !args.follow {
            // The last line has no newline: shown if it is whole (a log written by hand), not
            // if it is half a line (a run writing it right now, or one killed mid-write).
            if let Some(rest) = lines.rest() {
                if serde_json::from_slice::<serde_json::Value>(&rest).is_ok() {
                    view.line(&rest);
                } else if !output.quiet {
                    eprintln!(
                        "note: the last line of {} is incomplete, not shown",
                        path.display()
                    );
                }
            }
            return Ok(code::OK);
        }
        std::thread::sleep(POLL);
    }
}

/// Shows one line at a time, human or JSON.
struct View<'a> {
    printer: Printer,
    json: bool,
    quiet: bool,
    path: &'a Path,
    number: u64,
}

impl View<'_> {
    /// Shows one complete line; returns the exit status if it is the run's `run_finished`.
    fn line(&mut self, raw: &[u8]) -> Option<u8> {
        self.number += 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        if self.json {
            let mut stdout = io::stdout().lock();
            let _ = stdout
                .write_all(raw)
                .and_then(|()| stdout.write_all(b"\n"))
                .and_then(|()| stdout.flush());
            return serde_json::from_slice::<serde_json::Value>(raw)
                .ok()
                .and_then(|v| finished_code(&v));
        }
        if let Ok(line) = serde_json::from_slice::<EventLine>(raw) {
            self.printer.emit(&line);
            if let Event::RunFinished {
                status,
                reason,
                duration_ms,
            } = &line.event
            {
                let status_code = exit_code(*status);
                // `-q` says only what went wrong.
                if !self.quiet || status_code != code::OK {
                    self.printer
                        .finished(&status_name(*status), reason.as_deref(), *duration_ms);
                }
                return Some(status_code);
            }
            return None;
        }
        // A kind of event from a newer maxions, or fields this one does not expect: shown as
        // they are rather than stopping.
        match serde_json::from_slice::<serde_json::Value>(raw) {
            Ok(serde_json::Value::Object(map)) => {
                self.printer.unknown(&map);
                finished_code(&serde_json::Value::Object(map))
            }
            _ => {
                eprintln!(
                    "warning: line {} of {} is not a JSON event, skipped",
                    self.number,
                    self.path.display()
                );
                None
            }
        }
    }
}

/// The exit status for a `run_finished` line read only as JSON: a status this maxions does not
/// know counts as a failure.
fn finished_code(line: &serde_json::Value) -> Option<u8> {
    if line.get("type").and_then(serde_json::Value::as_str) != Some("run_finished") {
        return None;
    }
    let status = line
        .get("status")
        .and_then(|s| serde_json::from_value::<RunStatus>(s.clone()).ok());
    Some(status.map_or(code::FAILED, exit_code))
}

/// The status as the log spells it.
fn status_name(status: RunStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Splits bytes read from a growing file into complete lines. A line whose `\n` has not been
/// written yet is kept back until it is, so that half an event is never shown.
#[derive(Debug, Default)]
struct Lines {
    carry: Vec<u8>,
}

impl Lines {
    /// The lines `bytes` completes, without their `\n`.
    fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.carry.extend_from_slice(bytes);
        let Some(last) = self.carry.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = self.carry.split_off(last + 1);
        let done = std::mem::replace(&mut self.carry, rest);
        done[..last]
            .split(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// What is left after the last `\n`, if anything.
    fn rest(&mut self) -> Option<Vec<u8>> {
        (!self.carry.is_empty()).then(|| std::mem::take(&mut self.carry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "{}\n").unwrap();
    }

    #[test]
    fn a_partial_line_waits_for_its_newline() {
        let mut lines = Lines::default();
        assert!(lines.push(b"{\"a\":").is_empty());
        assert!(lines.push(b"1}").is_empty());
        assert_eq!(lines.push(b"\n{\"b\""), vec![b"{\"a\":1}".to_vec()]);
        assert_eq!(
            lines.push(b":2}\n\n{\"c\":3}\n{"),
            vec![b"{\"b\":2}".to_vec(), Vec::new(), b"{\"c\":3}".to_vec()]
        );
        assert_eq!(lines.rest(), Some(b"{".to_vec()));
        assert_eq!(lines.rest(), None);
    }

    #[test]
    fn a_log_file_is_itself() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.runs/r.jsonl");
        touch(&log);
        assert_eq!(resolve(&log, None, dir.path()).unwrap(), log);
        let missing = dir.path().join("x.runs/gone.jsonl");
        let error = resolve(&missing, None, dir.path()).unwrap_err().to_string();
        assert!(error.contains("gone.jsonl"), "{error}");
    }

    #[test]
    fn a_task_file_shows_its_newest_run() {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("tasks/fix.yaml");
        touch(&task);
        let error = resolve(&task, None, dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("no runs of") && error.contains("fix.runs"),
            "{error}"
        );
        for id in [
            "20261125T120000-00aaaa",
            "20261125T130000-000001",
            "20261125T110000-ffffff",
        ] {
            touch(&dir.path().join(format!("tasks/fix.runs/{id}.jsonl")));
        }
        // Other files in the runs dir are not logs.
        touch(&dir.path().join("tasks/fix.runs/zzz.txt"));
        let newest = dir
            .path()
            .join("tasks/fix.runs/20261125T130000-000001.jsonl");
        assert_eq!(resolve(&task, None, dir.path()).unwrap(), newest);
        // The task file deleted since: its runs are still found.
        std::fs::remove_file(&task).unwrap();
        assert_eq!(resolve(&task, None, dir.path()).unwrap(), newest);
        let runs = dir.path().join("tasks/fix.runs");
        assert_eq!(resolve(&runs, None, dir.path()).unwrap(), newest);
    }

    #[test]
    fn a_run_id_is_found_below_the_tasks_dir() {
        let dir = tempfile::tempdir().unwrap();
        let id = "20261125T120000-abcdef";
        let log = dir.path().join(format!("tasks/team/a/fix.runs/{id}.jsonl"));
        touch(&log);
        touch(
            &dir.path()
                .join("tasks/other.runs/20261125T120000-000000.jsonl"),
        );
        // No maxions.yaml: ./tasks.
        assert_eq!(resolve(Path::new(id), None, dir.path()).unwrap(), log);
        // A maxions.yaml here names another tasks dir, which does not hold it.
        std::fs::write(dir.path().join("maxions.yaml"), "tasks_dir: queue\n").unwrap();
        let error = resolve(Path::new(id), None, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("no run `{id}` found"))
                && error.contains(&dir.path().join("queue").display().to_string())
                && error.contains("maxions.yaml")
                && error.contains("does not exist"),
            "{error}"
        );
        // `--config` elsewhere, relative to the current directory.
        let other = dir.path().join("conf");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("maxions.yaml"), "tasks_dir: ../tasks\n").unwrap();
        let config = Path::new("conf/maxions.yaml");
        let found = resolve(Path::new(id), Some(config), dir.path()).unwrap();
        assert_eq!(found.canonicalize().unwrap(), log.canonicalize().unwrap());
        // A config that does not load says so.
        std::fs::write(other.join("maxions.yaml"), "tasks_dir: [1\n").unwrap();
        let error = resolve(Path::new(id), Some(config), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cannot read") && error.contains("maxions validate"),
            "{error}"
        );
    }

    #[test]
    fn a_run_id_is_a_plain_name() {
        let dir = tempfile::tempdir().unwrap();
        for target in ["../x", "a/b", "/etc"] {
            let error = resolve(Path::new(target), None, dir.path()).unwrap_err();
            assert!(
                matches!(error, LogsError::NotATarget { .. }),
                "{target}: {error}"
            );
        }
    }

    #[test]
    fn the_same_id_twice_is_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("tasks/a.runs/r1.jsonl"));
        touch(&dir.path().join("tasks/b.runs/r1.jsonl"));
        let error = resolve(Path::new("r1"), None, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("a.runs") && error.contains("b.runs"),
            "{error}"
        );
    }

    /// Fuzz target (see `crate::fuzzing`): however a log's bytes arrive, the lines shown are its
    /// lines, none is cut, none is lost, and what is left is the unfinished last line.
    #[test]
    fn fuzz_log_lines_survive_any_chunking() {
        use proptest::prelude::*;
        let bytes = proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'{'), Just(b'}'), any::<u8>()],
            0..400,
        );
        crate::fuzzing::fuzz(
            "log_lines",
            512,
            (bytes, proptest::collection::vec(1usize..64, 1..16)),
            |(input, sizes)| {
                let mut lines = Lines::default();
                let mut shown = Vec::new();
                let mut rest = input.as_slice();
                for size in sizes.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                    shown.extend(lines.push(chunk));
                    rest = tail;
                }
                let last = input.iter().rposition(|&b| b == b'\n');
                let whole: Vec<Vec<u8>> = match last {
                    Some(last) => input[..last]
                        .split(|&b| b == b'\n')
                        .map(<[u8]>::to_vec)
                        .collect(),
                    None => Vec::new(),
                };
                prop_assert_eq!(shown, whole);
                let tail = last.map_or(input.as_slice(), |last| &input[last + 1..]);
                prop_assert_eq!(lines.rest(), (!tail.is_empty()).then(|| tail.to_vec()));
                Ok(())
            },
        );
    }
}
