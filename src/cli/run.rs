//! `maxions run`: one task, in the foreground, with a live step timeline.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::terminal::{printable, short};
use super::{Output, exit};
use crate::config::diagnostic::{Styles, render};
use crate::config::load::{LoadedTask, load_task};
use crate::runner::{
    self, Event, EventLine, EventSink, Launch, RunResult, RunStatus, StepStatus, forge_for,
};
use crate::sandbox::{DockerEngine, Engine, OutputStream, Tail};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task file.
    #[arg(value_name = "TASK")]
    pub task: PathBuf,

    /// Use this blueprint instead of the one the task names.
    #[arg(long, value_name = "FILE")]
    pub blueprint: Option<PathBuf>,

    /// Keep the sandbox container when the run ends (its id is printed), for debugging.
    #[arg(long)]
    pub keep: bool,

    /// Print the events as JSON lines on stdout (the same lines as the run's log).
    #[arg(long)]
    pub json: bool,
}

/// Exit statuses of `maxions run` (also in `--help`).
pub mod code {
    /// Succeeded, or nothing to change.
    pub const OK: u8 = 0;
    /// A step failed.
    pub const FAILED: u8 = 1;
    /// The task or the environment is not usable (invalid files, no engine, no image).
    pub const SETUP: u8 = 2;
    /// The run exceeded `sandbox.timeout`.
    pub const TIMED_OUT: u8 = 124;
    /// Cancelled (Ctrl-C).
    pub const CANCELLED: u8 = 130;
}

pub fn run(args: &Args, output: Output) -> u8 {
    let loaded = match load_task(&args.task, args.blueprint.as_deref()) {
        Ok(loaded) => loaded,
        Err(validation) => {
            let styles = Styles::colored();
            let mut stderr = anstream::stderr().lock();
            for d in validation.diagnostics.iter().filter(|d| d.is_error()) {
                let source = validation.sources.get(&d.file).map(|s| &**s);
                let _ = writeln!(stderr, "{}", render(d, source, &styles));
            }
            let _ = writeln!(
                stderr,
                "error: {} is not valid; nothing was run",
                args.task.display()
            );
            return if validation.unreadable {
                exit::UNREADABLE
            } else {
                code::SETUP
            };
        }
    };
    let Some(runtime) = super::runtime() else {
        return code::SETUP;
    };
    if !runtime.block_on(super::image::prepare(&loaded, output)) {
        return code::SETUP;
    }
    runtime.block_on(run_loaded(&loaded, args, output))
}

/// Runs an already loaded task (also used by `maxions demo`) and prints as it goes.
pub async fn run_loaded(loaded: &LoadedTask, args: &Args, output: Output) -> u8 {
    let engine = match DockerEngine::connect().await {
        Ok(engine) => Arc::new(engine),
        Err(error) => {
            eprintln!("error: {error}");
            return code::SETUP;
        }
    };
    // Containers of runs that died with their process (kill -9, power loss) go first.
    if let Err(error) = engine.remove_orphans(&[]).await {
        tracing::warn!(%error, "could not look for orphaned sandboxes");
    }
    let forge = match forge_for(loaded) {
        Ok(forge) => forge,
        Err(error) => {
            eprintln!("error: {error}");
            return code::SETUP;
        }
    };
    let mut launch = Launch::new(Arc::new(loaded.clone()), engine, runner::new_run_id());
    launch.forge = forge;
    launch.keep = args.keep;
    let printer = Arc::new(Printer::new(args.json, output));

    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    // Ctrl-C and SIGTERM (a service manager stopping us) both end the run cleanly: the step is
    // stopped, the sandbox and its egress proxy removed, the log and result written.
    let signals = tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    term.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            result = tokio::signal::ctrl_c() => if result.is_err() { return },
            () = terminate => {}
        }
        eprintln!("\ncancelling: stopping the step and removing the sandbox…");
        on_signal.cancel();
    });
    let outcome = runner::launch(launch, Arc::clone(&printer) as Arc<dyn EventSink>, cancel).await;
    signals.abort();
    let (result, result_file) = match outcome {
        Ok(done) => done,
        Err(error) => {
            eprintln!("error: {error}");
            return code::SETUP;
        }
    };
    if !args.json {
        printer.summary(&result, &result_file);
    }
    exit_code(result.status)
}

/// The exit status of `maxions run` (and `maxions logs -f`) for a run that ended so.
#[must_use]
pub fn exit_code(status: RunStatus) -> u8 {
    match status {
        RunStatus::Succeeded | RunStatus::NoChanges => code::OK,
        RunStatus::Failed => code::FAILED,
        RunStatus::TimedOut => code::TIMED_OUT,
        RunStatus::Cancelled | RunStatus::Interrupted => code::CANCELLED,
        RunStatus::Invalid => code::SETUP,
    }
}

/// Prints the run as it goes: one line per step with its time (and, on a terminal, a spinner
/// with the running step's elapsed time), or the JSON lines.
struct Printer {
    json: bool,
    output: Output,
    started: Instant,
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
}

impl Printer {
    fn new(json: bool, output: Output) -> Self {
        Self {
            json,
            output,
            started: Instant::now(),
            live: !json && !output.quiet && std::io::stderr().is_terminal(),
            state: Mutex::new(PrinterState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PrinterState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Prints one line of the timeline. Everything in it may come from the run (output, reasons,
    /// titles), so the whole line is made printable; maxions' own parts are unchanged by that.
    fn line(&self, text: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let text = format!("[{elapsed:>6.1}s] {}", printable(text));
        let state = self.state();
        match &state.spinner {
            // Above the spinner, which redraws below.
            Some(spinner) => spinner.println(text),
            None => {
                let mut stderr = anstream::stderr().lock();
                let _ = writeln!(stderr, "{text}");
            }
        }
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

    fn summary(&self, result: &RunResult, result_file: &Path) {
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
            Event::SandboxReady { container, image } if !self.output.quiet => {
                self.line(&format!("sandbox {} ({image}) ready", short(container, 12)));
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
            // Not on the timeline (egress decisions, …) but worth seeing with `-vv`; the log
            // writer masks registered secrets in it.
            other => tracing::debug!(event = ?other, "run event"),
        }
    }
}
