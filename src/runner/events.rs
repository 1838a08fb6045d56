//! What a run reports as it goes: one [`Event`] per thing that happened, stamped into an
//! [`EventLine`] (`ts`, `run`, `seq`) and handed to an [`EventSink`]. The JSONL log, the terminal
//! timeline and (later) the daemon's live stream are all sinks; the runner knows none of them.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::{Activity, Usage};
use crate::sandbox::OutputStream;
use crate::sandbox::egress::EgressEvent;

/// One thing that happened in a run. Serialised with `type` naming the variant. Readers of a log
/// (`maxions logs`) must expect `type`s they do not know: a newer maxions may have written it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        task: String,
        blueprint: String,
        repo: String,
        branch: String,
        base: String,
        /// Why this run happens (the daemon says: a new task file, an edit, a schedule slot…).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trigger: Option<String>,
    },
    SandboxReady {
        container: String,
        image: String,
        /// The engine it runs on (the daemon's `engines`), when the daemon placed the run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        engine: Option<String>,
    },
    StepStarted {
        step: String,
        kind: String,
    },
    StepSkipped {
        step: String,
        reason: String,
    },
    /// Output of a step's command, redacted. Text is UTF-8 with invalid bytes replaced.
    Output {
        step: String,
        #[schemars(with = "String")]
        stream: OutputStream,
        text: String,
    },
    /// The step printed more than the log keeps; the rest is counted, not logged.
    OutputTruncated {
        step: String,
        logged_bytes: u64,
    },
    CheckFailed {
        step: String,
        check: String,
        exit_code: Option<i64>,
        /// 0 before any fix, then the fix round after which it still failed.
        round: u32,
    },
    FixRound {
        step: String,
        round: u32,
        max_rounds: u32,
        /// The checks the agent was asked to fix.
        fixing: Vec<String>,
        /// Whether every check passed after this round.
        passed: bool,
    },
    StepFinished {
        step: String,
        status: StepStatus,
        exit_code: Option<i64>,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Commit {
        sha: String,
    },
    Pushed {
        branch: String,
        remote: String,
    },
    /// A pull request was opened or updated.
    Pr {
        number: u64,
        url: String,
        created: bool,
        draft: bool,
    },
    /// No forge is configured: the pull request that would have been opened.
    PrNotOpened {
        title: String,
        body: String,
        draft: bool,
        reason: String,
    },
    /// Something the agent did: said, called a tool, got a tool's result, reported an error.
    Agent {
        step: String,
        #[serde(flatten)]
        #[schemars(with = "serde_json::Value")]
        activity: Activity,
    },
    /// What the agent has spent: this exec so far (`usage`) and the run's agents in all
    /// (`run_usage`). Written as the agent reports it, and once more when its exec ends.
    Usage {
        step: String,
        usage: Usage,
        run_usage: Usage,
    },
    /// One exec of the agent ended (an agent step or fix round may run it more than once).
    AgentFinished {
        step: String,
        /// `pi`, `claude`, `codex`, `command`.
        agent: String,
        duration_ms: u64,
        /// From the exec's start to the agent's first line of output: its start-up time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_output_ms: Option<u64>,
        /// Whether the agent did its job (from its stream and exit status).
        succeeded: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        usage: Usage,
    },
    /// A budget stopped the agent: its processes were killed.
    BudgetExceeded {
        step: String,
        /// `max_tokens`, `max_cost_usd`, `max_duration` or `idle_timeout`.
        limit: String,
        reason: String,
    },
    /// The agent's model provider failed before the agent changed anything; maxions runs it
    /// again after `delay_ms`.
    AgentRetry {
        step: String,
        attempt: u32,
        max_attempts: u32,
        delay_ms: u64,
        reason: String,
    },
    /// A decision of the egress proxy.
    Egress {
        #[serde(flatten)]
        #[schemars(with = "serde_json::Value")]
        decision: EgressEvent,
    },
    Warning {
        message: String,
    },
    RunFinished {
        status: RunStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        duration_ms: u64,
    },
}

/// How a step ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Failed,
    Skipped,
    TimedOut,
    Cancelled,
    /// `commit` found nothing to commit.
    NoChanges,
    /// A budget (`agent.budget`) stopped the agent.
    BudgetExceeded,
}

/// How a run ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    Failed,
    NoChanges,
    Cancelled,
    TimedOut,
    /// The process running it died (`kill -9`, power loss), and the daemon recorded it at its
    /// next start; or the Docker engine went away under it (stopped, crashed, unreachable).
    /// Nothing says the task was at fault: the daemon queues it again (`interrupted`).
    Interrupted,
    /// The task file is not valid: nothing ran (the result lists the problems).
    Invalid,
    /// A budget (`agent.budget`) stopped the agent; with `on_exceeded: draft_pr` the result
    /// holds the draft pull request that reports it.
    BudgetExceeded,
}

/// One line of a run's log: `{"ts","run","seq","type",...}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EventLine {
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    pub run: String,
    /// Strictly increasing from 1 within a run, so that readers can resume.
    pub seq: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// Receives every event of a run, in order. Called on the runner's task: keep it quick.
pub trait EventSink: Send + Sync {
    fn emit(&self, line: &EventLine);
}

/// Sends each event to several sinks.
pub struct Tee<'a>(pub Vec<&'a dyn EventSink>);

impl EventSink for Tee<'_> {
    fn emit(&self, line: &EventLine) {
        for sink in &self.0 {
            sink.emit(line);
        }
    }
}

/// Appends each event as a JSON line and flushes it, so that a crash loses nothing written.
///
/// A write that fails (a full disk) is undone: the file is cut back to its last whole line, so
/// that the log stays one JSON object per line and a later line (once there is room again) does
/// not glue onto half of an earlier one. The failure is reported once, with the number of lines
/// lost when writing works again, not once per event.
pub struct JsonlLog {
    path: PathBuf,
    file: Mutex<Writer>,
}

struct Writer {
    file: File,
    /// The length of the whole lines written.
    len: u64,
    /// Lines that could not be written since the last one that could.
    lost: u64,
}

impl JsonlLog {
    /// Creates the log (and its directory); refuses to overwrite an existing one.
    ///
    /// # Errors
    /// When the directory or file cannot be created.
    pub fn create(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::options().write(true).create_new(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(Writer {
                file,
                len: 0,
                lost: 0,
            }),
        })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl EventSink for JsonlLog {
    fn emit(&self, line: &EventLine) {
        use std::io::{Seek, SeekFrom};
        let Ok(mut json) = serde_json::to_vec(line) else {
            return;
        };
        json.push(b'\n');
        let mut writer = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // One write per line: a reader never sees half a line from us.
        match writer
            .file
            .write_all(&json)
            .and_then(|()| writer.file.flush())
        {
            Ok(()) => {
                writer.len += json.len() as u64;
                if writer.lost > 0 {
                    tracing::warn!(path = %self.path.display(), lost = writer.lost, "the run's log can be written again; lines were lost while it could not");
                    writer.lost = 0;
                }
            }
            Err(error) => {
                // What part of the line was written goes again: the log ends on a whole line.
                let len = writer.len;
                let _ = writer.file.set_len(len);
                let _ = writer.file.seek(SeekFrom::Start(len));
                if writer.lost == 0 {
                    tracing::error!(%error, path = %self.path.display(), "cannot write the run's log (is the disk full?); its lines are lost until it can");
                }
                writer.lost += 1;
            }
        }
    }
}

/// Turns a byte stream into text chunks without splitting a UTF-8 character between two of them.
#[derive(Debug, Default)]
pub struct Utf8Chunks {
    carry: Vec<u8>,
}

impl Utf8Chunks {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.carry.extend_from_slice(bytes);
        // Keep back an incomplete character at the end (at most 3 bytes).
        let mut cut = self.carry.len();
        for back in 1..=3.min(self.carry.len()) {
            let byte = self.carry[self.carry.len() - back];
            if byte & 0b1100_0000 == 0b1100_0000 {
                let needed = match byte {
                    b if b >= 0xF0 => 4,
                    b if b >= 0xE0 => 3,
                    _ => 2,
                };
                if needed > back {
                    cut = self.carry.len() - back;
                }
                break;
            }
            if byte & 0b1000_0000 == 0 {
                break;
            }
        }
        let rest = self.carry.split_off(cut);
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry = rest;
        text
    }

    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_chunks_never_split_a_character() {
        let text = "héllo → wörld 🚀!";
        let bytes = text.as_bytes();
        for size in 1..5 {
            let mut chunks = Utf8Chunks::default();
            let mut out = String::new();
            for chunk in bytes.chunks(size) {
                out.push_str(&chunks.push(chunk));
            }
            out.push_str(&chunks.finish());
            assert_eq!(out, text, "chunk size {size}");
        }
        let mut bad = Utf8Chunks::default();
        assert_eq!(bad.push(b"a\xffb"), "a\u{fffd}b");
    }

    /// One event of every kind, with every optional field both set and not.
    fn every_event() -> Vec<Event> {
        use crate::sandbox::egress::{Decision, RequestKind};
        let egress = EgressEvent {
            connection: 3,
            kind: RequestKind::Connect,
            host: Some("example.com".into()),
            port: Some(443),
            decision: Decision::Allowed,
            address: Some("93.184.216.34".parse().unwrap()),
            reason: "allowed by the allowlist".into(),
            dialed: true,
        };
        let refused = EgressEvent {
            kind: RequestKind::Invalid,
            host: None,
            port: None,
            decision: Decision::Denied,
            address: None,
            dialed: false,
            ..egress.clone()
        };
        vec![
            Event::RunStarted {
                task: "t".into(),
                blueprint: "b".into(),
                repo: "file:///r".into(),
                branch: "maxions/t".into(),
                base: "main".into(),
                trigger: Some("a new task file".into()),
            },
            Event::RunStarted {
                task: "t".into(),
                blueprint: "b".into(),
                repo: "file:///r".into(),
                branch: "maxions/t".into(),
                base: "main".into(),
                trigger: None,
            },
            Event::SandboxReady {
                container: "c0ffee".into(),
                image: "maxions/sandbox:latest".into(),
                engine: Some("local".into()),
            },
            Event::StepStarted {
                step: "s".into(),
                kind: "run".into(),
            },
            Event::StepSkipped {
                step: "s".into(),
                reason: "when is false".into(),
            },
            Event::Output {
                step: "s".into(),
                stream: OutputStream::Stdout,
                text: "héllo\n\u{1b}[31m".into(),
            },
            Event::Output {
                step: "s".into(),
                stream: OutputStream::Stderr,
                text: String::new(),
            },
            Event::OutputTruncated {
                step: "s".into(),
                logged_bytes: u64::MAX,
            },
            Event::CheckFailed {
                step: "s".into(),
                check: "test".into(),
                exit_code: Some(-1),
                round: 0,
            },
            Event::CheckFailed {
                step: "s".into(),
                check: "test".into(),
                exit_code: None,
                round: 2,
            },
            Event::FixRound {
                step: "s".into(),
                round: 1,
                max_rounds: 2,
                fixing: vec!["test".into(), "lint".into()],
                passed: false,
            },
            Event::StepFinished {
                step: "s".into(),
                status: StepStatus::TimedOut,
                exit_code: None,
                duration_ms: 1234,
                reason: Some("timed out after 10m".into()),
            },
            Event::StepFinished {
                step: "s".into(),
                status: StepStatus::NoChanges,
                exit_code: Some(0),
                duration_ms: 0,
                reason: None,
            },
            Event::Commit { sha: "abc".into() },
            Event::Pushed {
                branch: "maxions/t".into(),
                remote: "origin".into(),
            },
            Event::Pr {
                number: 7,
                url: "https://example.com/pr/7".into(),
                created: true,
                draft: false,
            },
            Event::PrNotOpened {
                title: "t".into(),
                body: "b\nc".into(),
                draft: true,
                reason: "no forge".into(),
            },
            Event::Agent {
                step: "implement".into(),
                activity: Activity::ToolCall {
                    tool: "bash".into(),
                    input: "{\"command\":\"ls\"}".into(),
                },
            },
            Event::Agent {
                step: "implement".into(),
                activity: Activity::ToolResult {
                    tool: None,
                    output: "a.txt".into(),
                    error: true,
                },
            },
            Event::Agent {
                step: "implement".into(),
                activity: Activity::Text {
                    text: "done".into(),
                },
            },
            Event::Agent {
                step: "implement".into(),
                activity: Activity::Error {
                    message: "429".into(),
                },
            },
            Event::Usage {
                step: "implement".into(),
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 2,
                    cache_read_tokens: 1,
                    cache_write_tokens: 0,
                    cost_usd: Some(0.5),
                },
                run_usage: Usage::default(),
            },
            Event::AgentFinished {
                step: "implement".into(),
                agent: "pi".into(),
                duration_ms: 1500,
                first_output_ms: Some(300),
                succeeded: false,
                reason: Some("pi stopped: 500".into()),
                usage: Usage::default(),
            },
            Event::BudgetExceeded {
                step: "implement".into(),
                limit: "max_tokens".into(),
                reason: "spent".into(),
            },
            Event::AgentRetry {
                step: "implement".into(),
                attempt: 2,
                max_attempts: 3,
                delay_ms: 2000,
                reason: "500".into(),
            },
            Event::Egress { decision: egress },
            Event::Egress { decision: refused },
            Event::Warning {
                message: "w".into(),
            },
            Event::RunFinished {
                status: RunStatus::Interrupted,
                reason: Some("killed".into()),
                duration_ms: 99,
            },
            Event::RunFinished {
                status: RunStatus::Succeeded,
                reason: None,
                duration_ms: 1,
            },
        ]
    }

    #[test]
    fn every_event_reads_back_as_it_was_written() {
        let mut types = std::collections::BTreeSet::new();
        for (seq, event) in every_event().into_iter().enumerate() {
            let line = EventLine {
                ts: "2026-11-25T12:00:00.000Z".into(),
                run: "r1".into(),
                seq: seq as u64 + 1,
                event,
            };
            let written = serde_json::to_string(&line).unwrap();
            let read: EventLine = serde_json::from_str(&written)
                .unwrap_or_else(|e| panic!("{written} does not read back: {e}"));
            assert_eq!(serde_json::to_string(&read).unwrap(), written);
            let value: serde_json::Value = serde_json::from_str(&written).unwrap();
            types.insert(value["type"].as_str().unwrap().to_owned());
        }
        // Every kind the schema knows is covered: a new event kind fails here until it is added.
        let schema = serde_json::to_value(schemars::schema_for!(Event)).unwrap();
        let known: std::collections::BTreeSet<String> = schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let t = &v["properties"]["type"];
                t.get("const")
                    .or_else(|| t["enum"].get(0))
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_else(|| panic!("no type in {v}"))
                    .to_owned()
            })
            .collect();
        assert_eq!(types, known);
    }

    #[test]
    fn event_lines_carry_type_and_sequence() {
        let line = EventLine {
            ts: "2026-11-25T12:00:00.000Z".into(),
            run: "r1".into(),
            seq: 7,
            event: Event::StepStarted {
                step: "setup".into(),
                kind: "run".into(),
            },
        };
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"ts": "2026-11-25T12:00:00.000Z", "run": "r1", "seq": 7, "type": "step_started", "step": "setup", "kind": "run"})
        );
    }
}
