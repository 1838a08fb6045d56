//! The human timeline of a run: one line per step with its time, warnings, and on a failure the
//! end of the step's output. `maxions run` and `maxions demo` print it as the run goes; `maxions
//! logs` prints it from a run's log, with each line's own time.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, FixedOffset};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Output;
use super::terminal::{printable, short};
use crate::agent::Activity;
use crate::runner::{Event, EventLine, EventSink, RunResult, StepStatus};
use crate::sandbox::{OutputStream, Tail};

/// Prints the run as it goes: one line per step with its time (and, on a terminal, a spinner
/// with the running step's elapsed time), or the JSON lines.
pub(super) struct Printer {
    json: bool,
    output: Output,
    clock: Clock,
    /// Where the timeline goes: stderr while a run goes (stdout has `--json`), stdout for
    /// `maxions logs`, whose output it is.
    to_stdout: bool,
    /// Whether stderr is a terminal: spinners then, plain lines otherwise.
    live: bool,
    state: Mutex<PrinterState>,
}

#[derive(Default)]
struct PrinterState {
    /// The end of each step's output, shown when the step fails.
    tails: HashMap<String, Tail>,
    /// The running step's spinner (terminal only).
    spinner: Option<ProgressBar>,
    /// [`Clock::Log`]: the first line's time, and the current line's seconds after it.
    first: Option<DateTime<FixedOffset>>,
    at: f64,
}

/// Where the times on the timeline come from.
enum Clock {
    /// Time since the printer was made: the run is printed as it goes.
    Process(Instant),
    /// Each line's own `ts`, relative to the first line's: a log read back later, when this
    /// process's clock says nothing about the run.
    Log,
}

impl Printer {
    pub(super) fn new(json: bool, output: Output) -> Self {
        Self {
            json,
            output,
            clock: Clock::Process(Instant::now()),
            to_stdout: false,
            live: !json && !output.quiet && std::io::stderr().is_terminal(),
            state: Mutex::new(PrinterState::default()),
        }
    }

    /// Times each line by its own `ts` (relative to the first line's) and prints on stdout, for
    /// a log read back. No spinner: its elapsed time would be this process's, not the step's.
    #[must_use]
    pub(super) fn timed_by_log(mut self) -> Self {
        self.clock = Clock::Log;
        self.to_stdout = true;
        self.live = false;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PrinterState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Prints one line of the timeline. Everything in it may come from the run (output, reasons,
    /// titles), so the whole line is made printable; maxions' own parts are unchanged by that.
    fn line(&self, text: &str) {
        let state = self.state();
        let elapsed = match self.clock {
            Clock::Process(started) => started.elapsed().as_secs_f64(),
            Clock::Log => state.at,
        };
        let text = format!("[{elapsed:>6.1}s] {}", printable(text));
        match &state.spinner {
            // Above the spinner, which redraws below.
            Some(spinner) => spinner.println(text),
            None if self.to_stdout => {
                let mut stdout = anstream::stdout().lock();
                let _ = writeln!(stdout, "{text}");
            }
            None => {
                let mut stderr = anstream::stderr().lock();
                let _ = writeln!(stderr, "{text}");
            }
        }
    }

    /// [`Clock::Log`]: the lines that follow are at `ts`. A time that does not parse (a log
    /// edited by hand) keeps the previous line's.
    fn stamp(&self, ts: &str) {
        if !matches!(self.clock, Clock::Log) {
            return;
        }
        let Ok(ts) = DateTime::parse_from_rfc3339(ts) else {
            return;
        };
        let mut state = self.state();
        let first = *state.first.get_or_insert(ts);
        state.at = (ts - first).num_milliseconds() as f64 / 1000.0;
    }

    /// A line this maxions cannot read as an event (a `type` from a newer maxions, or fields it
    /// does not expect): its type and fields as JSON, so that nothing in a log goes unseen.
    pub(super) fn unknown(&self, line: &serde_json::Map<String, serde_json::Value>) {
        if let Some(ts) = line.get("ts").and_then(serde_json::Value::as_str) {
            self.stamp(ts);
        }
        let kind = line
            .get("type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("(no type)");
        let mut rest = line.clone();
        for known in ["ts", "run", "seq", "type"] {
            rest.remove(known);
        }
        let fields = serde_json::Value::Object(rest).to_string();
        self.line(&format!("? {kind} {fields}"));
    }

    /// The run's end, as its log says it: `maxions run` prints [`Printer::summary`] instead,
    /// from the result.
    pub(super) fn finished(&self, status: &str, reason: Option<&str>, duration_ms: u64) {
        let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
        let seconds = duration_ms as f64 / 1000.0;
        self.line(&format!("run {status} after {seconds:.1}s{why}"));
    }

    fn start_spinner(&self, step: &str, kind: &str) {
        let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("          {spinner} {msg} {elapsed}") {
            spinner.set_style(style);
        }
        spinner.set_message(printable(&format!("{step} ({kind})")).into_owned());
        spinner.enable_steady_tick(std::time::Duration::from_millis(100));
        self.state().spinner = Some(spinner);
    }

    fn stop_spinner(&self) {
        if let Some(spinner) = self.state().spinner.take() {
            spinner.finish_and_clear();
        }
    }

    pub(super) fn summary(&self, result: &RunResult, result_file: &Path) {
        let status = serde_json::to_value(result.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut lines = vec![String::new(), format!("status:  {status}")];
        if let Some(reason) = &result.reason {
            lines.push(format!("reason:  {reason}"));
        }
        lines.push(format!("branch:  {}", result.branch));
        if let Some(commit) = &result.commit {
            lines.push(format!("commit:  {commit}"));
        }
        if let Some(pr) = &result.pull_request {
            match (&pr.url, pr.opened) {
                (Some(url), true) => lines.push(format!("pull request: {url}")),
                _ => lines.push(format!(
                    "pull request (not opened, no forge configured): {}{}",
                    pr.title,
                    if pr.draft { " [draft]" } else { "" }
                )),
            }
        }
        if let Some(id) = &result.kept_container {
            let id_short = short(id, 12);
            lines.push(format!(
                "sandbox kept: {id} (docker exec -it {id_short} bash; docker rm -f {id_short} when done)"
            ));
        }
        if let Some(usage) = &result.usage {
            lines.push(format!("agents:  {}", usage_text(usage)));
        }
        lines.push(format!(
            "took {:.1}s ({:.1}s inside step commands)",
            result.duration_ms as f64 / 1000.0,
            result.exec_ms as f64 / 1000.0
        ));
        lines.push(format!("result:  {}", result_file.display()));
        lines.push(format!("log:     {}", result.log));
        let mut stderr = anstream::stderr().lock();
        for line in lines {
            // Reasons, branch and title come from the run: printable, one line each.
            let _ = writeln!(stderr, "{}", printable(&line));
        }
    }
}

impl EventSink for Printer {
    fn emit(&self, line: &EventLine) {
        self.stamp(&line.ts);
        if self.json {
            if let Ok(json) = serde_json::to_string(line) {
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{json}");
            }
            return;
        }
        match &line.event {
            Event::RunStarted {
                task,
                blueprint,
                branch,
                ..
            } if !self.output.quiet => {
                self.line(&format!(
                    "run {} of {task} (blueprint {blueprint}, branch {branch})",
                    line.run
                ));
            }
            Event::SandboxReady {
                container,
                image,
                engine,
            } if !self.output.quiet => {
                let on = engine
                    .as_deref()
                    .map_or_else(String::new, |e| format!(" on engine {e}"));
                self.line(&format!(
                    "sandbox {} ({image}) ready{on}",
                    short(container, 12)
                ));
            }
            Event::StepStarted { step, kind } => {
                self.state().tails.insert(step.clone(), Tail::new(4096));
                if self.live {
                    self.start_spinner(step, kind);
                } else if !self.output.quiet {
                    self.line(&format!("▶ {step} ({kind})"));
                }
            }
            Event::StepSkipped { step, reason } if !self.output.quiet => {
                self.line(&format!("- {step} skipped: {reason}"));
            }
            Event::Output { step, stream, text } => {
                if let Some(tail) = self.state().tails.get_mut(step) {
                    tail.push(text.as_bytes());
                }
                if self.output.verbose > 0 {
                    let mark = if *stream == OutputStream::Stderr {
                        "!"
                    } else {
                        "|"
                    };
                    for l in text.lines() {
                        self.line(&format!("  {mark} {l}"));
                    }
                }
            }
            Event::CheckFailed {
                check,
                exit_code,
                round,
                ..
            } if !self.output.quiet => {
                let code = exit_code.map_or_else(|| "no exit code".into(), |c| format!("exit {c}"));
                let when = if *round == 0 {
                    String::new()
                } else {
                    format!(" after fix round {round}")
                };
                self.line(&format!("  ✗ check {check} failed ({code}){when}"));
            }
            Event::FixRound {
                round,
                max_rounds,
                passed,
                ..
            } if !self.output.quiet => {
                let verdict = if *passed {
                    "checks pass"
                } else {
                    "checks still fail"
                };
                self.line(&format!("  ↻ fix round {round}/{max_rounds}: {verdict}"));
            }
            Event::StepFinished {
                step,
                status,
                duration_ms,
                reason,
                ..
            } => {
                self.stop_spinner();
                let seconds = *duration_ms as f64 / 1000.0;
                let (mark, failed) = match status {
                    StepStatus::Succeeded => ("✓", false),
                    StepStatus::NoChanges => ("=", false),
                    StepStatus::Skipped => ("-", false),
                    _ => ("✗", true),
                };
                if failed || !self.output.quiet {
                    let why = reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    self.line(&format!("{mark} {step} {seconds:.1}s{why}"));
                }
                // Taken out first: `line` locks the state too.
                let tail = self.state().tails.remove(step);
                if failed
                    && self.output.verbose == 0
                    && let Some(tail) = tail
                {
                    let text = String::from_utf8_lossy(&tail.into_vec()).into_owned();
                    let lines: Vec<&str> = text.lines().collect();
                    for l in &lines[lines.len().saturating_sub(20)..] {
                        self.line(&format!("  | {l}"));
                    }
                }
            }
            Event::Commit { sha } if !self.output.quiet => {
                self.line(&format!("  committed {}", short(sha, 12)));
            }
            Event::Pushed { branch, .. } if !self.output.quiet => {
                self.line(&format!("  pushed {branch}"));
            }
            Event::Pr { url, created, .. } if !self.output.quiet => {
                let verb = if *created { "opened" } else { "updated" };
                self.line(&format!("  {verb} {url}"));
            }
            Event::Warning { message } => self.line(&format!("warning: {message}")),
            Event::Agent { activity, .. } if self.output.verbose > 0 => {
                let text = match activity {
                    Activity::Text { text } => format!("  » {}", first_lines(text, 3)),
                    Activity::ToolCall { tool, input } => {
                        format!("  ⚙ {tool} {}", first_lines(input, 1))
                    }
                    Activity::ToolResult { output, error, .. } => format!(
                        "  {} {}",
                        if *error { "✗" } else { "←" },
                        first_lines(output, 2)
                    ),
                    Activity::Error { message } => format!("  ! {}", first_lines(message, 2)),
                };
                for l in text.lines() {
                    self.line(l);
                }
            }
            Event::BudgetExceeded { reason, .. } => self.line(&format!("  ■ {reason}")),
            Event::AgentRetry {
                attempt,
                max_attempts,
                delay_ms,
                reason,
                ..
            } if !self.output.quiet => self.line(&format!(
                "  ↻ the model provider failed ({}); attempt {attempt}/{max_attempts} in {:.0}s",
                first_lines(reason, 1),
                *delay_ms as f64 / 1000.0
            )),
            Event::Usage { usage, .. } if self.output.verbose > 1 => {
                self.line(&format!("  $ {}", usage_text(usage)));
            }
            // Not on the timeline (egress decisions, …) but worth seeing with `-vv`; the log
            // writer masks registered secrets in it.
            other => tracing::debug!(event = ?other, "run event"),
        }
    }
}

/// Tokens and cost, as a person reads them.
fn usage_text(usage: &crate::agent::Usage) -> String {
    let cost = usage
        .cost_usd
        .map_or_else(String::new, |c| format!(", ${c:.4}"));
    format!(
        "{} tokens ({} in, {} out, {} cached){cost}",
        usage.total_tokens(),
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens
    )
}

/// The first `n` lines of `text`, with an ellipsis when there is more.
fn first_lines(text: &str, n: usize) -> String {
    let mut lines = text.lines();
    let kept: Vec<&str> = lines.by_ref().take(n).collect();
    let mut out = kept.join("\n");
    if lines.next().is_some() {
        out.push_str(" …");
    }
    out
}
