//! An in-memory [`Engine`] and [`Sandbox`] whose commands answer from a script, and which
//! records every call: step logic (which exec gets which env and secrets, when processes are
//! swept, how output is logged) is tested without Docker. The real-container tests stay too.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maxions::sandbox::egress::EgressEvent;
use maxions::sandbox::redact::Redactor;
use maxions::sandbox::{
    BoxFuture, ContainerSpec, Engine, ExecOutcome, ExecRequest, ExecStatus, ExecUser, FileContents,
    OutputSink, OutputStream, Sandbox, SandboxError,
};
use tokio_util::sync::CancellationToken;

/// What the runner asked of the sandbox, in order.
#[derive(Debug, Clone)]
pub enum Call {
    Create,
    Exec(ExecRequest),
    EndStep,
    Write(String),
    Read(String),
    CopyIn(String),
    CopyOut(String),
    Destroy,
}

/// How a scripted command answers: its output chunks, then its exit code.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub stdout: Vec<Vec<u8>>,
    pub stderr: Vec<Vec<u8>>,
    pub code: i64,
    /// How long the command "runs" (cancellable).
    pub takes: Duration,
}

impl Reply {
    pub fn ok() -> Self {
        Self::default()
    }

    pub fn exit(code: i64) -> Self {
        Self {
            code,
            ..Self::default()
        }
    }

    pub fn taking(mut self, time: Duration) -> Self {
        self.takes = time;
        self
    }

    pub fn stdout(mut self, text: &str) -> Self {
        self.stdout.push(text.as_bytes().to_vec());
        self
    }
}

type Handler = dyn Fn(&ExecRequest) -> Reply + Send + Sync;

/// The engine: every sandbox it makes shares the same script and call log.
#[derive(Clone)]
pub struct Scripted {
    calls: Arc<Mutex<Vec<Call>>>,
    handler: Arc<Handler>,
    /// Decisions "the egress proxy" reports while the first command runs.
    egress: Arc<Mutex<Vec<EgressEvent>>>,
    /// Sandboxes alive now, and the most ever alive at once.
    live: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// How long making a sandbox takes.
    create_takes: Duration,
}

impl Scripted {
    pub fn new(handler: impl Fn(&ExecRequest) -> Reply + Send + Sync + 'static) -> Self {
        Self {
            calls: Arc::new(Mutex::new(Vec::new())),
            handler: Arc::new(handler),
            egress: Arc::new(Mutex::new(Vec::new())),
            live: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
            create_takes: Duration::ZERO,
        }
    }

    /// Making a sandbox takes `time` (as a real engine's create and start do).
    pub fn creating_for(mut self, time: Duration) -> Self {
        self.create_takes = time;
        self
    }

    /// The most sandboxes that were alive at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Sandboxes alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// The sandbox's egress proxy will report `events` during the first command.
    pub fn with_egress(self, events: Vec<EgressEvent>) -> Self {
        *self.egress.lock().unwrap() = events;
        self
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The commands run, in order.
    pub fn execs(&self) -> Vec<ExecRequest> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Exec(r) => Some(r),
                _ => None,
            })
            .collect()
    }
}

impl Engine for Scripted {
    fn create<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Sandbox>, SandboxError>> {
        self.calls.lock().unwrap().push(Call::Create);
        let now = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let takes = self.create_takes;
        let sandbox = ScriptedSandbox {
            live: Arc::clone(&self.live),
            destroyed: std::sync::atomic::AtomicBool::new(false),
            calls: Arc::clone(&self.calls),
            handler: Arc::clone(&self.handler),
            redactor: Mutex::new(Redactor::none()),
            egress: std::mem::take(&mut *self.egress.lock().unwrap()),
            on_egress: spec.on_egress.clone(),
        };
        // Like an engine, the container exists from the request on: a caller that drops this
        // future half-way leaves it behind (`live` stays up).
        let sandbox = std::mem::ManuallyDrop::new(sandbox);
        Box::pin(async move {
            tokio::time::sleep(takes).await;
            Ok(Box::new(std::mem::ManuallyDrop::into_inner(sandbox)) as Box<dyn Sandbox>)
        })
    }

    fn remove_orphans<'a>(
        &'a self,
        _live: &'a [String],
    ) -> BoxFuture<'a, Result<usize, SandboxError>> {
        Box::pin(async { Ok(0) })
    }
}

struct ScriptedSandbox {
    live: Arc<AtomicUsize>,
    destroyed: std::sync::atomic::AtomicBool,
    calls: Arc<Mutex<Vec<Call>>>,
    handler: Arc<Handler>,
    redactor: Mutex<Redactor>,
    egress: Vec<EgressEvent>,
    on_egress: Option<maxions::sandbox::EgressSink>,
}

impl ScriptedSandbox {
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }
}

impl Sandbox for ScriptedSandbox {
    fn id(&self) -> &str {
        "scripted0000000000"
    }

    fn set_redactor(&self, redactor: Redactor) {
        *self.redactor.lock().unwrap() = redactor;
    }

    fn private_dir(&self) -> &str {
        "/tmp/.maxions-scripted"
    }

    fn exec<'a>(
        &'a self,
        request: &'a ExecRequest,
        sink: OutputSink<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ExecOutcome, SandboxError>> {
        self.record(Call::Exec(request.clone()));
        let first = self
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| matches!(c, Call::Exec(_)))
            .count()
            == 1;
        if first && let Some(sink) = &self.on_egress {
            for event in &self.egress {
                sink(event.clone());
            }
        }
        let reply = (self.handler)(request);
        let redactor = self.redactor.lock().unwrap().clone();
        Box::pin(async move {
            if !reply.takes.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(reply.takes) => {}
                    () = cancel.cancelled() => {
                        return Ok(ExecOutcome {
                            status: ExecStatus::Cancelled,
                            duration: Duration::from_millis(1),
                            stdout_bytes: 0,
                            stderr_bytes: 0,
                            tail: Vec::new(),
                        });
                    }
                }
            }
            let mut tail = Vec::new();
            for (stream, chunks) in [
                (OutputStream::Stdout, &reply.stdout),
                (OutputStream::Stderr, &reply.stderr),
            ] {
                for chunk in chunks {
                    let chunk = redactor.redact(chunk).into_owned();
                    tail.extend_from_slice(&chunk);
                    sink(stream, &chunk);
                }
            }
            Ok(ExecOutcome {
                status: ExecStatus::Exited(reply.code),
                duration: Duration::from_millis(1),
                stdout_bytes: reply.stdout.iter().map(|c| c.len() as u64).sum(),
                stderr_bytes: reply.stderr.iter().map(|c| c.len() as u64).sum(),
                tail,
            })
        })
    }

    fn end_step(&self) -> BoxFuture<'_, Result<u32, SandboxError>> {
        self.record(Call::EndStep);
        Box::pin(async { Ok(0) })
    }

    fn write_file<'a>(
        &'a self,
        path: &'a str,
        _contents: &'a [u8],
        _mode: u32,
    ) -> BoxFuture<'a, Result<(), SandboxError>> {
        self.record(Call::Write(path.to_owned()));
        Box::pin(async { Ok(()) })
    }

    fn read_file<'a>(
        &'a self,
        path: &'a str,
        _limit: usize,
    ) -> BoxFuture<'a, Result<FileContents, SandboxError>> {
        self.record(Call::Read(path.to_owned()));
        Box::pin(async {
            Ok(FileContents {
                bytes: Vec::new(),
                truncated: false,
            })
        })
    }

    fn copy_in<'a>(
        &'a self,
        _host: &'a Path,
        dest: &'a str,
        _mode: u32,
        _user: ExecUser,
    ) -> BoxFuture<'a, Result<u64, SandboxError>> {
        self.record(Call::CopyIn(dest.to_owned()));
        Box::pin(async { Ok(0) })
    }

    fn copy_out<'a>(
        &'a self,
        src: &'a str,
        _host: &'a Path,
        _limit: u64,
        _user: ExecUser,
    ) -> BoxFuture<'a, Result<u64, SandboxError>> {
        self.record(Call::CopyOut(src.to_owned()));
        Box::pin(async { Ok(0) })
    }

    fn keep(&self) {}

    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        self.record(Call::Destroy);
        if !self.destroyed.swap(true, Ordering::SeqCst) {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
        Box::pin(async { Ok(()) })
    }
}

impl Drop for ScriptedSandbox {
    fn drop(&mut self) {
        if !self.destroyed.swap(true, Ordering::SeqCst) {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
