//! Running one command in the sandbox with its output logged as it comes: batched into events
//! (at most one per stream every [`FLUSH_EVERY`], or sooner when [`FLUSH_BYTES`] wait), capped
//! per command and per run, so that a command writing one byte at a time cannot turn into a
//! gigabyte of log lines.

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Runner;
use super::events::{Event, Utf8Chunks};
use super::steps::StepError;
use crate::sandbox::{ExecOutcome, ExecRequest, ExecStatus, ExecUser, OutputStream};

/// How much of one command's output goes to the log; the rest is counted.
pub(super) const MAX_EXEC_OUTPUT: u64 = 8 << 20;
/// How much output one run logs in all; the rest is counted.
pub(super) const MAX_RUN_OUTPUT: u64 = 64 << 20;
/// Output waits at most this long before it becomes an event.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// ... or until this much of it waits.
const FLUSH_BYTES: usize = 16 << 10;

/// Output on its way to the log.
pub(super) struct Batch<'a> {
    step: &'a str,
    text: [Utf8Chunks; 2],
    pending: [String; 2],
    /// Bytes logged by this command, and by the run before it.
    logged: u64,
    run_logged: u64,
    truncated: bool,
}

impl<'a> Batch<'a> {
    pub(super) fn new(step: &'a str, run_logged: u64) -> Self {
        Batch {
            step,
            text: [Utf8Chunks::default(), Utf8Chunks::default()],
            pending: [String::new(), String::new()],
            logged: 0,
            run_logged,
            truncated: false,
        }
    }

    pub(super) fn step(&self) -> &str {
        self.step
    }

    /// Bytes of output this command logged.
    pub(super) fn logged(&self) -> u64 {
        self.logged
    }

    pub(super) fn push(&mut self, stream: OutputStream, bytes: &[u8], emit: &dyn Fn(Event)) {
        if self.truncated {
            return;
        }
        if self.logged >= MAX_EXEC_OUTPUT || self.run_logged + self.logged >= MAX_RUN_OUTPUT {
            self.flush(emit);
            self.truncated = true;
            emit(Event::OutputTruncated {
                step: self.step.to_owned(),
                logged_bytes: self.logged,
            });
            return;
        }
        self.logged += bytes.len() as u64;
        let index = stream as usize;
        let text = self.text[index].push(bytes);
        self.pending[index].push_str(&text);
        if self.pending[index].len() >= FLUSH_BYTES {
            self.flush_stream(stream, emit);
        }
    }

    fn flush_stream(&mut self, stream: OutputStream, emit: &dyn Fn(Event)) {
        let text = std::mem::take(&mut self.pending[stream as usize]);
        if !text.is_empty() {
            emit(Event::Output {
                step: self.step.to_owned(),
                stream,
                text,
            });
        }
    }

    pub(super) fn flush(&mut self, emit: &dyn Fn(Event)) {
        self.flush_stream(OutputStream::Stdout, emit);
        self.flush_stream(OutputStream::Stderr, emit);
    }

    pub(super) fn finish(&mut self, emit: &dyn Fn(Event)) {
        if !self.truncated {
            for stream in [OutputStream::Stdout, OutputStream::Stderr] {
                let rest = self.text[stream as usize].finish();
                self.pending[stream as usize].push_str(&rest);
            }
        }
        self.flush(emit);
    }
}

/// Awaits `work`, calling `tick` every [`FLUSH_EVERY`] while it runs (to flush batched output,
/// to check limits).
pub(super) async fn ticking<T>(work: impl Future<Output = T>, mut tick: impl FnMut()) -> T {
    tokio::pin!(work);
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = every.tick() => tick(),
        }
    }
}

impl Runner<'_> {
    /// Runs one command, logging its output as it comes. A timeout or cancellation is an error;
    /// any exit status is an outcome.
    pub(super) async fn exec_logged(
        &mut self,
        step: &str,
        request: &ExecRequest,
        cancel: &CancellationToken,
    ) -> Result<ExecOutcome, StepError> {
        let batch = Mutex::new(Batch::new(step, self.logged_output));
        let lock = || {
            batch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let this = &*self;
        let emit = |event: Event| this.emit(event);
        let sandbox = this.sandbox()?;
        this.mark_dirty(request);
        let mut sink = |stream: OutputStream, bytes: &[u8]| lock().push(stream, bytes, &emit);
        let result = ticking(sandbox.exec(request, &mut sink, cancel), || {
            lock().flush(&emit);
        })
        .await;
        let logged = {
            let mut batch = lock();
            batch.finish(&emit);
            batch.logged
        };
        self.logged_output += logged;
        let outcome = result.map_err(|e| self.sandbox_failed(&e))?;
        self.exec_time += outcome.duration;
        match &outcome.status {
            ExecStatus::Cancelled => Err(StepError::Cancelled),
            ExecStatus::TimedOut(_) => Err(StepError::TimedOut(outcome.status.to_string())),
            _ => Ok(outcome),
        }
    }

    /// A command of the sandbox's user may leave processes behind: the next sweep must run.
    pub(super) fn mark_dirty(&self, request: &ExecRequest) {
        if request.user == ExecUser::Sandbox {
            self.dirty.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Runs one of maxions' own commands quietly: its stdout (at most 64 KiB) on success, a
    /// failure naming `what` with the command's last line otherwise.
    pub(super) async fn exec_quiet(
        &self,
        what: &str,
        request: &ExecRequest,
        cancel: &CancellationToken,
    ) -> Result<String, StepError> {
        self.mark_dirty(request);
        self.run_quiet(what, request, cancel).await
    }

    /// [`Self::exec_quiet`] for a fixed command that starts no process (so no sweep is owed).
    pub(super) async fn run_quiet(
        &self,
        what: &str,
        request: &ExecRequest,
        cancel: &CancellationToken,
    ) -> Result<String, StepError> {
        let sandbox = self.sandbox()?;
        let mut stdout = Vec::new();
        let mut sink = |stream: OutputStream, bytes: &[u8]| {
            if stream == OutputStream::Stdout && stdout.len() < 64 << 10 {
                stdout.extend_from_slice(bytes);
            }
        };
        let outcome = sandbox
            .exec(request, &mut sink, cancel)
            .await
            .map_err(|e| StepError::Fatal(format!("{what}: {e}")))?;
        match &outcome.status {
            ExecStatus::Exited(0) => Ok(String::from_utf8_lossy(&stdout).into_owned()),
            ExecStatus::Cancelled => Err(StepError::Cancelled),
            other => {
                let last = super::steps::last_line(&outcome).unwrap_or_default();
                Err(StepError::Failed {
                    code: other.code(),
                    reason: format!("{what} {other}: {}", super::steps::truncate(&last, 300)),
                })
            }
        }
    }
}
