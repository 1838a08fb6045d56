//! Where steps execute: the [`Sandbox`] trait (one persistent container per run), its Docker
//! backend, the egress proxy, the image builder, the engine bootstrap and the streaming secret
//! redactor that every byte leaving a sandbox passes through.
//!
//! The runner sees only the traits here: [`Engine`] makes sandboxes, a [`Sandbox`] runs commands
//! and moves files. Nothing here knows about tasks or blueprints beyond the sandbox settings.

pub mod bootstrap;
pub mod docker;
pub mod egress;
pub mod egress_container;
pub mod image;
pub mod peers;
mod procs;
pub mod redact;
mod tail;
mod tls;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use self::docker::{DockerEngine, Endpoint};
pub use self::tail::Tail;
use crate::config::blueprint::{Network, SandboxSpec};
use crate::secret::Secret;
use egress::{EgressEvent, EgressPolicy};
use redact::Redactor;

/// A boxed future, so that the traits stay usable as `dyn` objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The working directory of every exec unless the request names another, and the only writable
/// place besides `/tmp` (a volume that lives as long as the sandbox).
pub const WORKSPACE: &str = "/workspace";
/// Memory limit when the blueprint names none.
pub const DEFAULT_MEMORY: u64 = 4 << 30;
/// Process limit when the blueprint names none: enough for builds, too few for a fork bomb.
pub const DEFAULT_PIDS: u32 = 1024;
/// Workspace size limit when the blueprint names none (`sandbox.disk`).
pub const DEFAULT_DISK: u64 = 10 << 30;
/// How often a running exec's workspace is measured against its size limit.
pub const DISK_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Size of the `/tmp` tmpfs (it counts against the memory limit, and is capped by it).
pub const TMPFS_SIZE: u64 = 1 << 30;
/// How much output an [`ExecOutcome`] keeps (the end of it), for error messages and fix prompts.
pub const TAIL_BYTES: usize = 64 << 10;

/// Where a sandbox's network traffic may go.
#[derive(Clone, Debug)]
pub enum NetworkPolicy {
    /// Only a loopback interface.
    None,
    /// The host's network, unfiltered.
    Host,
    /// Only what the policy allows, through maxions' egress proxy (closed when the list is empty).
    Allowlist(EgressPolicy),
}

/// Receives each egress decision of a sandbox.
pub type EgressSink = Arc<dyn Fn(EgressEvent) + Send + Sync>;

/// Everything needed to create one sandbox.
#[derive(Clone)]
pub struct ContainerSpec {
    /// Labels the container (`maxions.run=<id>`) so that orphans of dead runs can be found.
    pub run_id: String,
    pub image: String,
    pub network: NetworkPolicy,
    /// Bytes.
    pub memory: u64,
    /// Cores; `None` leaves the CPU unlimited.
    pub cpus: Option<f64>,
    pub pids: u32,
    /// Bytes `/workspace` may hold; `None`: unlimited. Measured while execs of the sandbox's
    /// user run (see [`ExecStatus::DiskFull`]).
    pub disk: Option<u64>,
    /// Non-secret environment for every exec. Secrets never go here (they would show in
    /// `docker inspect`): they travel with each [`ExecRequest`].
    pub env: Vec<(String, String)>,
    /// Where egress decisions go (allowlist only). Default: the `tracing` log.
    pub on_egress: Option<EgressSink>,
}

impl std::fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerSpec")
            .field("run_id", &self.run_id)
            .field("image", &self.image)
            .field("network", &self.network)
            .field("memory", &self.memory)
            .field("cpus", &self.cpus)
            .field("pids", &self.pids)
            .field("disk", &self.disk)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl ContainerSpec {
    /// The hardened defaults with a blueprint's sandbox settings applied.
    ///
    /// # Errors
    /// When an allowlist entry is not a valid host pattern (validation catches this earlier).
    pub fn from_blueprint(
        run_id: &str,
        spec: &SandboxSpec,
        default_image: &str,
    ) -> Result<Self, SandboxError> {
        let network = match spec.network {
            Network::None => NetworkPolicy::None,
            Network::Host => NetworkPolicy::Host,
            Network::Allowlist => NetworkPolicy::Allowlist(
                EgressPolicy::parse(spec.allow.iter().map(|p| p.0.as_str()))
                    .map_err(|e| SandboxError::Config(e.to_string()))?,
            ),
        };
        Ok(Self {
            network,
            memory: spec.memory.map_or(DEFAULT_MEMORY, |m| m.0),
            cpus: spec.cpus,
            pids: spec.pids.unwrap_or(DEFAULT_PIDS),
            disk: Some(spec.disk.map_or(DEFAULT_DISK, |d| d.0)),
            ..Self::new(run_id, spec.image.as_deref().unwrap_or(default_image))
        })
    }

    /// A spec with the defaults, for `image`.
    #[must_use]
    pub fn new(run_id: &str, image: &str) -> Self {
        Self {
            run_id: run_id.to_owned(),
            image: image.to_owned(),
            network: NetworkPolicy::None,
            memory: DEFAULT_MEMORY,
            cpus: None,
            pids: DEFAULT_PIDS,
            disk: Some(DEFAULT_DISK),
            env: Vec::new(),
            on_egress: None,
        }
    }
}

/// Whom an exec runs as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExecUser {
    /// The image's `USER`: every step, the agent, anything untrusted.
    #[default]
    Sandbox,
    /// maxions' own helpers: uid 0 with no capability but `KILL` (no `DAC_OVERRIDE`, no
    /// `DAC_READ_SEARCH`: it reads and writes only what file modes let uid 0 without privileges).
    /// The sandbox's user cannot signal, ptrace or read the environment of these processes; it
    /// can see their command lines in `/proc`, so never put anything secret in an argv. `HOME`
    /// is [`Sandbox::private_dir`], so no file the sandbox wrote configures them.
    Maxions,
}

/// One command to run in a sandbox.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    /// The program and its arguments: never parsed by a shell unless the program is one.
    pub argv: Vec<String>,
    /// Extra non-secret environment for this exec.
    pub env: Vec<(String, String)>,
    /// Secrets this exec may see, as environment variables named after them.
    pub secrets: Vec<Secret>,
    /// Default: [`WORKSPACE`].
    pub workdir: Option<String>,
    /// Bytes for the command's stdin, then end-of-file. Without it, stdin is at end-of-file
    /// from the start: a command that reads stdin never waits.
    pub stdin: Option<Vec<u8>>,
    /// After this long, every process the command started is killed.
    pub timeout: Option<Duration>,
    /// Default: [`ExecUser::Sandbox`].
    pub user: ExecUser,
}

impl ExecRequest {
    #[must_use]
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// `sh -c SCRIPT`.
    #[must_use]
    pub fn shell(script: impl Into<String>) -> Self {
        Self::new(["sh".to_owned(), "-c".to_owned(), script.into()])
    }

    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    #[must_use]
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    #[must_use]
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    #[must_use]
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secrets.push(secret);
        self
    }

    #[must_use]
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Runs it as maxions' own helper ([`ExecUser::Maxions`]), out of the sandbox user's reach.
    #[must_use]
    pub fn as_maxions(mut self) -> Self {
        self.user = ExecUser::Maxions;
        self
    }
}

/// Which stream a chunk of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Where an exec's output goes, chunk by chunk, already redacted. Chunks are raw bytes: they may
/// split a line or a UTF-8 character anywhere.
pub type OutputSink<'a> = &'a mut (dyn FnMut(OutputStream, &[u8]) + Send);

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecStatus {
    /// It exited on its own (or was killed by a signal, as `128 + signal`).
    Exited(i64),
    /// The kernel killed it for using more memory than the sandbox may.
    OutOfMemory { limit: u64 },
    /// It ran past its timeout; all of its processes were killed.
    TimedOut(Duration),
    /// The caller cancelled it; all of its processes were killed.
    Cancelled,
    /// `/workspace` grew past the sandbox's size limit, or part of it could not be measured
    /// (a directory that even its owner cannot read); the exec was killed as on a timeout.
    DiskFull { limit: u64 },
}

impl ExecStatus {
    #[must_use]
    pub fn success(&self) -> bool {
        *self == Self::Exited(0)
    }

    /// The exit code, when there was one.
    #[must_use]
    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Exited(code) => Some(*code),
            Self::OutOfMemory { .. } => Some(137),
            Self::TimedOut(_) | Self::Cancelled | Self::DiskFull { .. } => None,
        }
    }
}

impl std::fmt::Display for ExecStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(0) => f.write_str("succeeded"),
            Self::Exited(code) if *code > 128 && *code < 160 => {
                write!(f, "killed by signal {} (exit code {code})", code - 128)
            }
            Self::Exited(code) => write!(f, "exited with code {code}"),
            Self::OutOfMemory { limit } => write!(
                f,
                "killed: out of memory (the sandbox's limit is {}); raise `sandbox.memory` in the blueprint or use less",
                crate::config::units::ByteSize(*limit)
            ),
            Self::TimedOut(after) => write!(
                f,
                "timed out after {}",
                crate::config::units::HumanDuration(*after)
            ),
            Self::Cancelled => f.write_str("cancelled"),
            Self::DiskFull { limit } => write!(
                f,
                "killed: the workspace grew past its {} limit (`sandbox.disk`), or hid part of itself from measurement (a directory its own user cannot read); delete what the step does not need (build outputs, caches) or raise `sandbox.disk` in the blueprint",
                crate::config::units::ByteSize(*limit)
            ),
        }
    }
}

/// What an exec did.
#[derive(Clone, Debug)]
pub struct ExecOutcome {
    pub status: ExecStatus,
    pub duration: Duration,
    /// How many bytes each stream produced (before redaction).
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// The last [`TAIL_BYTES`] of stdout and stderr interleaved, redacted.
    pub tail: Vec<u8>,
}

impl ExecOutcome {
    /// The tail as text, invalid UTF-8 replaced.
    #[must_use]
    pub fn tail_text(&self) -> String {
        String::from_utf8_lossy(&self.tail).into_owned()
    }
}

/// A file read back from a sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileContents {
    /// Redacted. At most the limit asked for.
    pub bytes: Vec<u8>,
    /// The file was longer than the limit.
    pub truncated: bool,
}

/// What can go wrong with a sandbox itself (a command failing is not an error: see
/// [`ExecStatus`]). Messages say what happened and what to do; none contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "cannot reach the Docker engine ({0}); is it running? Start it (as root, `maxions demo` installs and starts one), or point DOCKER_HOST at one"
    )]
    EngineUnreachable(String),
    #[error(
        "the Docker engine went away during `{command}` ({detail}); the step's result is unknown, the sandbox is lost"
    )]
    EngineLost { command: String, detail: String },
    #[error("image `{0}` is not present; build it with `maxions image build`")]
    ImageMissing(String),
    #[error(
        "the sandbox container {id} stopped while `{command}` ran ({state}); was it killed from outside?"
    )]
    ContainerGone {
        id: String,
        command: String,
        state: String,
    },
    #[error("cannot create the sandbox: {0}")]
    Create(String),
    #[error("sandbox setting: {0}")]
    Config(String),
    #[error("`{path}` in the sandbox: {detail}")]
    File { path: String, detail: String },
    #[error("`{path}` on this machine: {detail}")]
    HostFile { path: String, detail: String },
    #[error("Docker engine: {0}")]
    Engine(String),
}

impl SandboxError {
    /// Whether the engine, not the task, ended the run: it went away or cannot be reached, or
    /// the sandbox stopped under a command. Such a run is `interrupted`, and worth running again.
    #[must_use]
    pub fn is_engine_fault(&self) -> bool {
        matches!(
            self,
            Self::EngineUnreachable(_) | Self::EngineLost { .. } | Self::ContainerGone { .. }
        )
    }
}

/// Makes sandboxes. One per process is enough; cheap to share.
pub trait Engine: Send + Sync {
    /// Creates and starts a hardened container for `spec`, ready for [`Sandbox::exec`].
    fn create<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Sandbox>, SandboxError>>;

    /// Makes sure `image` can run: builds it when it is one of maxions' own images and missing
    /// (its first use). Returns whether it was built. Default: nothing to do.
    fn prepare_image<'a>(&'a self, _image: &'a str) -> BoxFuture<'a, Result<bool, SandboxError>> {
        Box::pin(async { Ok(false) })
    }

    /// Whether the engine answers now. Default: it does.
    fn ping(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        Box::pin(async { Ok(()) })
    }

    /// Removes the containers (and their volumes) of runs that are not in `live`: left behind by
    /// a process that died. Returns how many were removed.
    fn remove_orphans<'a>(
        &'a self,
        live: &'a [String],
    ) -> BoxFuture<'a, Result<usize, SandboxError>>;
}

/// One persistent container: every step of a run executes in it.
pub trait Sandbox: Send + Sync {
    /// The engine's id for it (shown to users who `--keep` it).
    fn id(&self) -> &str;

    /// Masks these secrets in everything that leaves the sandbox from now on (output, files read
    /// back, error messages).
    fn set_redactor(&self, redactor: Redactor);

    /// Runs one command, streaming its output to `sink` as it comes. Returns when the command and
    /// everything it started in the foreground have ended, it timed out, or `cancel` fired.
    fn exec<'a>(
        &'a self,
        request: &'a ExecRequest,
        sink: OutputSink<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ExecOutcome, SandboxError>>;

    /// Writes a file (creating parent directories) in the workspace or `/tmp`, owned by the
    /// sandbox's user.
    fn write_file<'a>(
        &'a self,
        path: &'a str,
        contents: &'a [u8],
        mode: u32,
    ) -> BoxFuture<'a, Result<(), SandboxError>>;

    /// Reads a file, at most `limit` bytes of it, redacted.
    fn read_file<'a>(
        &'a self,
        path: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<FileContents, SandboxError>>;

    /// Removes the container and its workspace. Idempotent.
    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>>;

    /// Ends a step: kills every process of the sandbox's user, however it detached (`setsid`,
    /// double fork, `nohup`, ignoring SIGTERM, respawning, a fork bomb). maxions' own helpers
    /// ([`ExecUser::Maxions`]) live on. Returns how many processes the final kill found (a fork
    /// bomb first swept process by process is not counted whole). Call it after every step and
    /// before anything trusted reads the workspace.
    fn end_step(&self) -> BoxFuture<'_, Result<u32, SandboxError>>;

    /// A directory made at start by maxions' own user (mode 0711, an unguessable name under
    /// `/tmp`): the sandbox's user may open a file inside whose exact name it knows, but can
    /// neither list nor change it. Keep its name from the sandbox: never write it where the
    /// sandbox's user can read it, and run the helpers that name it while no step runs.
    fn private_dir(&self) -> &str;

    /// Streams a host file into the sandbox at `dest` (an absolute path; parent directories are
    /// made), owned by `user`, with `mode`. An existing `dest` is replaced, never written
    /// through (a symbolic link planted there is removed, not followed). Returns the bytes sent.
    fn copy_in<'a>(
        &'a self,
        host: &'a Path,
        dest: &'a str,
        mode: u32,
        user: ExecUser,
    ) -> BoxFuture<'a, Result<u64, SandboxError>>;

    /// Streams a sandbox file, read as `user`, to a new host file (created exclusively, mode
    /// 0600): raw bytes, not redacted, for data the host verifies itself (git bundles). A file
    /// longer than `limit` bytes is an error and leaves no host file. Returns its length.
    fn copy_out<'a>(
        &'a self,
        src: &'a str,
        host: &'a Path,
        limit: u64,
        user: ExecUser,
    ) -> BoxFuture<'a, Result<u64, SandboxError>>;

    /// Lets the container outlive this handle (`--keep`): dropping the handle without
    /// [`Sandbox::destroy`] otherwise removes the container.
    fn keep(&self);
}
