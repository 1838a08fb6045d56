//! The Docker backend of [`Sandbox`]: one hardened container per run, talked to through the
//! Engine API (bollard) on the local socket or `DOCKER_HOST`.
//!
//! Two uids share a container. The image's `USER` runs every step; maxions' own processes (the
//! reaper that is the main process, the egress relay, helper execs) run as uid 0 with no
//! capability but `KILL`, which the sandbox's user can neither signal nor ptrace. So a step ends
//! with `kill -9 -1` run as the sandbox's user, which the kernel applies to all of that user's
//! processes at once, and a fork bomb that leaves no slot for an exec is swept by the root
//! reaper with builtins only. Every exec runs under a tiny `sh` wrapper that records its process
//! id, so that a timeout or a cancellation can kill its process group at once. Files travel
//! through exec stdin/stdout: the root file system is read-only and `/tmp` is a tmpfs, neither
//! of which the archive API can write.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::egress::relay::{self, EgressDir};
use super::egress::{EgressEvent, EgressProxy, Resolver};
use super::egress_container::{ContainerEgress, EgressContainer};
use super::procs::{self, COPY_IN, END_STEP, PREPARE, REAPER, WRAPPER};
use super::redact::{RedactStream, Redactor};
use super::{
    BoxFuture, ContainerSpec, DISK_CHECK_EVERY, Engine, ExecOutcome, ExecRequest, ExecStatus,
    ExecUser, FileContents, NetworkPolicy, OutputSink, OutputStream, Sandbox, SandboxError,
    TAIL_BYTES, TMPFS_SIZE, Tail, WORKSPACE,
};

/// The label every maxions container carries, valued with its run id.
pub const RUN_LABEL: &str = "maxions.run";
/// Which maxions (daemon, CLI, test) made a container: orphan removal touches only its own.
pub const INSTANCE_LABEL: &str = "maxions.instance";
/// The process that made a container, as `<boot id>/<pid>`: while it lives, its runs are live.
pub const OWNER_LABEL: &str = "maxions.owner";
/// How long an exec may stay silent before maxions checks that the engine is still there.
const WATCHDOG: Duration = Duration::from_secs(20);
/// After a kill, how long to wait for the rest of the output.
const DRAIN: Duration = Duration::from_secs(5);
/// Seconds bollard waits for an API answer (not for a command: exec streams have no limit).
const API_TIMEOUT: u64 = 120;
/// The longest an internal command (a kill, a measurement, a check) may take, all told.
const QUIET_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one measurement of the workspace may take.
const DU_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest a file copy may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long an order to the reaper may take to deliver.
const REAPER_TIMEOUT: Duration = Duration::from_secs(5);
/// Who maxions' own processes are: uid 0, whose only capability is `KILL`.
const MAXIONS_USER: &str = "0:0";

/// Where a Docker engine listens, and the client certificates to reach it by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// `unix:///path`, `tcp://host:port`; empty for the local socket.
    pub host: String,
    /// For `tcp://`: a directory with `ca.pem`, `cert.pem` and `key.pem`. Without it, plain TCP.
    pub tls: Option<PathBuf>,
}

impl Endpoint {
    /// The one the Docker CLI would use: `DOCKER_HOST`, over TLS when `DOCKER_TLS_VERIFY` is set
    /// (certificates in `DOCKER_CERT_PATH`, default `~/.docker`).
    #[must_use]
    pub fn from_env() -> Self {
        let host = std::env::var("DOCKER_HOST").unwrap_or_default();
        let verify = std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty());
        let tls = (verify && host.starts_with("tcp://")).then(|| {
            std::env::var_os("DOCKER_CERT_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
                .unwrap_or_else(|| PathBuf::from(".docker"))
        });
        Self { host, tls }
    }

    /// Whether the engine shares this machine's files (a Unix socket): egress proxies then run
    /// in this process, their sockets bind-mounted into the sandboxes.
    #[must_use]
    pub fn is_local(&self) -> bool {
        self.host.is_empty() || self.host.starts_with("unix://")
    }

    /// How messages name it.
    #[must_use]
    pub fn describe(&self) -> String {
        match (&self.host, &self.tls) {
            (host, _) if host.is_empty() => "the local socket".to_owned(),
            (host, Some(_)) => format!("{host} (TLS)"),
            (host, None) => host.clone(),
        }
    }
}

/// A connection to a Docker engine.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    egress_root: PathBuf,
    local: bool,
    instance: String,
    resolver: Option<Arc<dyn Resolver>>,
    /// Tests only: the proxies may dial loopback (where the tests' servers listen).
    loopback: bool,
    /// Run each allowlisted sandbox's proxy in a container beside it, as this form says,
    /// instead of in this process (the default for an engine reached over TCP).
    egress_container: Option<EgressContainer>,
    /// The other engines of a daemon, to load a missing image from (see [`super::peers`]).
    peers: Option<Peers>,
    /// One image preparation at a time on this engine: two runs needing one missing image
    /// load it once.
    preparing: Arc<tokio::sync::Mutex<()>>,
}

/// What an engine knows of the daemon's other engines.
#[derive(Clone)]
struct Peers {
    /// Its own name among them.
    name: String,
    all: Arc<super::peers::Peers>,
    /// Whether the `docker` command (which builds maxions' images) reaches this engine.
    builds: bool,
}

impl DockerEngine {
    /// Connects to `DOCKER_HOST` (over TLS when `DOCKER_TLS_VERIFY` is set, with the
    /// certificates in `DOCKER_CERT_PATH`), or the local socket, and checks that the engine
    /// answers.
    ///
    /// # Errors
    /// [`SandboxError::EngineUnreachable`] when it does not.
    pub async fn connect() -> Result<Self, SandboxError> {
        Self::connect_endpoint(&Endpoint::from_env()).await
    }

    /// Connects to the engine at `host` (`unix:///path`, `tcp://host:port`; empty for the local
    /// socket), without TLS.
    ///
    /// # Errors
    /// [`SandboxError::EngineUnreachable`] when it does not answer.
    pub async fn connect_to(host: &str) -> Result<Self, SandboxError> {
        Self::connect_endpoint(&Endpoint {
            host: host.to_owned(),
            tls: None,
        })
        .await
    }

    /// Connects to the engine at `endpoint` and checks that it answers.
    ///
    /// # Errors
    /// [`SandboxError::EngineUnreachable`] when it does not answer (or its certificates cannot
    /// be read).
    pub async fn connect_endpoint(endpoint: &Endpoint) -> Result<Self, SandboxError> {
        let host = endpoint.host.as_str();
        let docker = if host.is_empty() {
            Docker::connect_with_unix_defaults()
        } else if let Some(path) = host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, API_TIMEOUT, bollard::API_DEFAULT_VERSION)
        } else if let Some(dir) = &endpoint.tls {
            Ok(super::tls::connect(host, dir, API_TIMEOUT)?)
        } else {
            Docker::connect_with_http(host, API_TIMEOUT, bollard::API_DEFAULT_VERSION)
        }
        .map_err(|e| SandboxError::EngineUnreachable(format!("{}: {e}", endpoint.describe())))?;
        let docker = docker
            .with_timeout(Duration::from_secs(API_TIMEOUT))
            .negotiate_version()
            .await
            .map_err(|e| {
                SandboxError::EngineUnreachable(format!(
                    "{}: {}",
                    endpoint.describe(),
                    unreachable_reason(&e)
                ))
            })?;
        docker.ping().await.map_err(|e| {
            SandboxError::EngineUnreachable(format!(
                "{}: {}",
                endpoint.describe(),
                unreachable_reason(&e)
            ))
        })?;
        let local = endpoint.is_local();
        Ok(Self {
            docker,
            egress_root: std::env::temp_dir().join("maxions-egress"),
            local,
            instance: "default".to_owned(),
            resolver: None,
            loopback: false,
            egress_container: (!local).then(EgressContainer::default),
            peers: None,
            preparing: Arc::default(),
        })
    }

    /// Makes this engine one of `peers` as `name`: an image missing here is loaded from
    /// another that has it current. `builds` says whether the `docker` command reaches this
    /// engine, so that maxions' images can be built on it.
    #[must_use]
    pub fn with_peers(mut self, name: &str, peers: Arc<super::peers::Peers>, builds: bool) -> Self {
        peers.join(name, self.docker.clone());
        if builds {
            peers.set_builder(name, self.clone());
        }
        self.peers = Some(Peers {
            name: name.to_owned(),
            all: peers,
            builds,
        });
        self
    }

    /// Makes `image` runnable here, when this engine is one of several (see
    /// [`DockerEngine::with_peers`]): present and current already; else loaded from another
    /// engine that has it current; else (one of maxions' images) built on the engine the
    /// `docker` command reaches and loaded from there. Returns whether anything was done.
    async fn prepare_among(&self, peers: &Peers, image: &str) -> Result<bool, SandboxError> {
        let _one = self.preparing.lock().await;
        if super::peers::has_current(&self.docker, image).await? {
            return Ok(false);
        }
        let here = super::peers::Peer {
            name: peers.name.clone(),
            docker: self.docker.clone(),
        };
        let others = peers.all.others(&peers.name);
        for other in &others {
            if super::peers::has_current(&other.docker, image)
                .await
                .unwrap_or(false)
            {
                tracing::info!(image, from = %other.name, to = %peers.name, "loading the image onto the engine");
                let started = Instant::now();
                let bytes = super::peers::copy_image(other, &here, image).await?;
                tracing::info!(image, from = %other.name, to = %peers.name, mb = bytes / 1_000_000, seconds = started.elapsed().as_secs_f32(), "image loaded");
                return Ok(true);
            }
        }
        if peers.builds {
            return self.prepare_here(image).await;
        }
        // Built where images are built, then loaded from there.
        if let Some((name, builder)) = peers.all.builder()
            && super::image::RECIPES.iter().any(|r| r.tag == image)
        {
            let _built = builder.prepare_here(image).await?;
            let from = super::peers::Peer {
                name,
                docker: builder.docker.clone(),
            };
            tracing::info!(image, from = %from.name, to = %peers.name, "loading the image onto the engine");
            super::peers::copy_image(&from, &here, image).await?;
            return Ok(true);
        }
        Err(SandboxError::Create(format!(
            "image `{image}` is not on engine `{name}`, and no other engine has it to load from: build it there (`maxions image build --engine {name}`), or load it (`docker save {image} | docker -H HOST load`)",
            name = peers.name
        )))
    }

    /// Builds `image` on this engine when it is one of maxions' and missing or stale.
    async fn prepare_here(&self, image: &str) -> Result<bool, SandboxError> {
        let progress = super::bootstrap::Progress::new(|line| tracing::info!("{line}"));
        let outcome = super::bootstrap::ensure_image(self, image, &progress)
            .await
            .map_err(|e| SandboxError::Create(format!("cannot build image `{image}`: {e}")))?;
        Ok(outcome == super::image::Outcome::Built)
    }

    /// Names this maxions among others using the same engine (two daemons, tests running side
    /// by side): containers carry it, and [`Engine::remove_orphans`] removes only its own.
    #[must_use]
    pub fn with_instance(mut self, name: impl Into<String>) -> Self {
        self.instance = name.into();
        self
    }

    /// How the egress proxies resolve names (tests map allowed names to 127.0.0.1).
    #[must_use]
    pub fn with_egress_resolver(mut self, resolver: impl Resolver) -> Self {
        self.resolver = Some(Arc::new(resolver));
        self
    }

    /// For tests: proxies resolve names with `resolver` (which maps them to 127.0.0.1) and may
    /// dial loopback, where the tests' servers listen. Never for real use: loopback is this
    /// machine's own services.
    #[must_use]
    pub fn with_egress_to_loopback_for_tests(mut self, resolver: impl Resolver) -> Self {
        self.resolver = Some(Arc::new(resolver));
        self.loopback = true;
        self
    }

    /// Runs each allowlisted sandbox's egress proxy in a container beside it on the engine (see
    /// [`super::egress_container`]), as an engine that does not share this machine's files
    /// needs, instead of in this process.
    #[must_use]
    pub fn with_egress_container(mut self, form: EgressContainer) -> Self {
        self.egress_container = Some(form);
        self
    }

    /// Where the egress directories of allowlisted sandboxes are made (one per run).
    #[must_use]
    pub fn with_egress_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.egress_root = dir.into();
        self
    }

    /// The bollard client, for tests and tools that need more than the trait.
    #[must_use]
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    async fn create_sandbox(&self, spec: &ContainerSpec) -> Result<DockerSandbox, SandboxError> {
        let image =
            self.docker
                .inspect_image(&spec.image)
                .await
                .map_err(|e| match status_of(&e) {
                    Some(404) => SandboxError::ImageMissing(spec.image.clone()),
                    _ => engine_error(&e),
                })?;
        let user = image
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default();
        if matches!(user.split(':').next(), None | Some("" | "root" | "0")) {
            return Err(SandboxError::Create(format!(
                "image `{}` runs as root; sandboxes run as a non-root user, so give the image one (`USER` in its Dockerfile), as maxions/sandbox:latest does",
                spec.image
            )));
        }
        let private = format!("/tmp/maxions-{}", random_hex()?);

        let name = format!("maxions-{}", sanitize(&spec.run_id));
        let labels = HashMap::from([
            (RUN_LABEL.to_owned(), spec.run_id.clone()),
            (INSTANCE_LABEL.to_owned(), self.instance.clone()),
            (OWNER_LABEL.to_owned(), owner()),
        ]);
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut mounts = vec![Mount {
            target: Some(WORKSPACE.to_owned()),
            typ: Some(MountType::VOLUME),
            volume_options: Some(MountVolumeOptions {
                labels: Some(labels.clone()),
                ..MountVolumeOptions::default()
            }),
            ..Mount::default()
        }];
        let mut cmd = vec!["sh".to_owned(), "-c".to_owned(), REAPER.to_owned()];
        // Dropped on any early return below: stops the proxy and removes its directory (or its
        // container and volume).
        let mut egress = None;
        let mut container_egress = None;
        let network_mode = match &spec.network {
            NetworkPolicy::None => "none",
            NetworkPolicy::Host => "host",
            NetworkPolicy::Allowlist(policy) if self.egress_container.is_some() => {
                let form = self
                    .egress_container
                    .as_ref()
                    .expect("checked by the guard");
                let proxy = ContainerEgress::start(
                    &self.docker,
                    &name,
                    &labels,
                    policy,
                    self.loopback,
                    form,
                    spec.on_egress.clone(),
                )
                .await?;
                mounts.push(Mount {
                    target: Some(relay::CONTAINER_DIR.to_owned()),
                    source: Some(proxy.volume().to_owned()),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(true),
                    ..Mount::default()
                });
                let relay_argv: Vec<String> = relay::container_command()
                    .iter()
                    .map(|a| shell_quote(a))
                    .collect();
                cmd[2] = format!("{} </dev/null & {REAPER}", relay_argv.join(" "));
                env.extend(
                    relay::proxy_env()
                        .into_iter()
                        .map(|(k, v)| format!("{k}={v}")),
                );
                container_egress = Some(proxy);
                "none"
            }
            NetworkPolicy::Allowlist(policy) => {
                let dir = self.egress_root.join(sanitize(&spec.run_id));
                let (egress_dir, listener) = EgressDir::prepare(&dir).map_err(|e| {
                    SandboxError::Create(format!(
                        "cannot prepare the egress proxy in {}: {e}",
                        dir.display()
                    ))
                })?;
                let cancel = CancellationToken::new();
                let sink = spec.on_egress.clone();
                let policy = if self.loopback {
                    policy.clone().allow_loopback_for_tests()
                } else {
                    policy.clone()
                };
                let mut proxy = EgressProxy::new(policy);
                if let Some(resolver) = &self.resolver {
                    proxy = proxy.with_shared_resolver(Arc::clone(resolver));
                }
                let proxy = proxy.on_event(move |event: EgressEvent| match &sink {
                    Some(sink) => sink(event),
                    None => tracing::info!(?event, "egress"),
                });
                let tracker = TaskTracker::new();
                let abort = tracker
                    .spawn(proxy.serve_unix(listener, cancel.clone()))
                    .abort_handle();
                tracker.close();
                egress = Some(Egress {
                    dir: egress_dir.clone(),
                    cancel,
                    tracker,
                    abort,
                });
                mounts.push(Mount {
                    target: Some(relay::CONTAINER_DIR.to_owned()),
                    source: Some(egress_dir.host_dir().display().to_string()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    ..Mount::default()
                });
                // The relay runs beside the reaper, as maxions' user; `exec` keeps it out of the
                // reaper's group.
                let relay_argv: Vec<String> = relay::container_command()
                    .iter()
                    .map(|a| shell_quote(a))
                    .collect();
                cmd[2] = format!("{} </dev/null & {REAPER}", relay_argv.join(" "));
                env.extend(
                    relay::proxy_env()
                        .into_iter()
                        .map(|(k, v)| format!("{k}={v}")),
                );
                "none"
            }
        };

        let host_config = HostConfig {
            readonly_rootfs: Some(true),
            // The main process is uid 0 so that the sandbox's user cannot signal it; `KILL` is
            // all it keeps, to kill the sandbox user's processes. Execs of the sandbox's user
            // get no capability at all (the kernel clears them for a non-root uid).
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: Some(vec!["KILL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            privileged: Some(false),
            memory: Some(i64::try_from(spec.memory).unwrap_or(i64::MAX)),
            // No swap: the memory limit is the limit.
            memory_swap: Some(i64::try_from(spec.memory).unwrap_or(i64::MAX)),
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: Some(i64::from(spec.pids)),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                format!("rw,nosuid,nodev,size={TMPFS_SIZE},mode=1777"),
            )])),
            mounts: Some(mounts),
            network_mode: Some(network_mode.to_owned()),
            // An init as PID 1 reaps what steps leave behind in a container that lives for hours.
            init: Some(true),
            ..HostConfig::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(cmd),
            env: Some(env),
            labels: Some(labels),
            user: Some(MAXIONS_USER.to_owned()),
            working_dir: Some(WORKSPACE.to_owned()),
            // The reaper's stdin stays open between attaches.
            open_stdin: Some(true),
            stdin_once: Some(false),
            attach_stdin: Some(false),
            network_disabled: Some(matches!(spec.network, NetworkPolicy::None)),
            host_config: Some(host_config),
            ..ContainerCreateBody::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| match status_of(&e) {
                Some(409) => SandboxError::Create(format!(
                    "a container named {name} exists already: another process runs {}? (`docker rm -f {name}` if not)",
                    spec.run_id
                )),
                _ => SandboxError::Create(engine_message(&e)),
            })?;
        // From here on the sandbox owns the container: dropping it (an error, a panic, the
        // caller's future dropped) removes the container.
        let mut sandbox = DockerSandbox {
            docker: self.docker.clone(),
            id: created.id,
            memory: spec.memory,
            disk: spec.disk,
            user,
            uid: 0,
            private,
            redactor: RwLock::new(Redactor::none()),
            oom_kills: AtomicU64::new(0),
            destroyed: AtomicBool::new(false),
            kept: AtomicBool::new(false),
            kept_dir: self.egress_root.join(KEPT_DIR),
            egress,
            container_egress,
            reaper: tokio::sync::Mutex::new(None),
        };
        if let Err(error) = self.docker.start_container(&sandbox.id, None).await {
            let _ = sandbox.remove().await;
            return Err(SandboxError::Create(engine_message(&error)));
        }
        match sandbox.prepare().await {
            Ok(uid) => sandbox.uid = uid,
            Err(error) => {
                let _ = sandbox.remove().await;
                return Err(error);
            }
        }
        // Open the line to the reaper now, so that no step pays for it.
        *sandbox.reaper.lock().await = sandbox.attach_reaper().await;
        Ok(sandbox)
    }

    async fn orphans(&self, live: &[String]) -> Result<usize, SandboxError> {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&HashMap::from([(
                "label",
                vec![format!("{INSTANCE_LABEL}={}", self.instance)],
            )]))
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| engine_error(&e))?;
        let mut removed = 0;
        let mut failed = None;
        for container in containers {
            let run = container
                .labels
                .as_ref()
                .and_then(|l| l.get(RUN_LABEL))
                .cloned()
                .unwrap_or_default();
            let owner = container
                .labels
                .as_ref()
                .and_then(|l| l.get(OWNER_LABEL))
                .map_or("", String::as_str);
            // Live: named by the caller, or made by another maxions process that still runs
            // (two `maxions run` side by side must not remove each other's sandboxes).
            if live.contains(&run) || (owner != self::owner() && owner_alive(owner, self.local)) {
                continue;
            }
            let Some(id) = container.id else { continue };
            // Kept on purpose (`--keep`): the user removes it.
            if self.egress_root.join(KEPT_DIR).join(&id).exists() {
                continue;
            }
            match self
                .docker
                .remove_container(&id, Some(force_remove()))
                .await
            {
                Ok(()) => {
                    removed += 1;
                    // A container without a run label must not take the whole root with it.
                    if !run.is_empty() {
                        let _ = std::fs::remove_dir_all(self.egress_root.join(sanitize(&run)));
                    }
                    tracing::info!(run, container = %id, "removed the sandbox of a run that is not live");
                }
                // Gone already, or another daemon sharing the engine is removing it (409
                // "removal … is already in progress"): either way it goes.
                Err(error) if matches!(status_of(&error), Some(404 | 409)) => {}
                // One container the engine will not remove must not keep the rest: carry on,
                // and report the first failure at the end.
                Err(error) => {
                    failed.get_or_insert_with(|| engine_error(&error));
                }
            }
        }
        // The volumes of egress proxies in containers (a sandbox's own volume goes with it).
        let volumes = self
            .docker
            .list_volumes(Some(
                bollard::query_parameters::ListVolumesOptionsBuilder::new()
                    .filters(&HashMap::from([(
                        "label",
                        vec![format!("{INSTANCE_LABEL}={}", self.instance)],
                    )]))
                    .build(),
            ))
            .await
            .map_err(|e| engine_error(&e))?;
        for volume in volumes.volumes.unwrap_or_default() {
            let run = volume.labels.get(RUN_LABEL).map_or("", String::as_str);
            let owner = volume.labels.get(OWNER_LABEL).map_or("", String::as_str);
            if live.iter().any(|l| l == run)
                || (owner != self::owner() && owner_alive(owner, self.local))
            {
                continue;
            }
            // In use (409: its proxy is still being removed) or gone: the next sweep has it.
            let _ = self
                .docker
                .remove_volume(
                    &volume.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await;
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(removed),
        }
    }
}

impl Engine for DockerEngine {
    fn ping(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        Box::pin(async move {
            self.docker
                .ping()
                .await
                .map(drop)
                .map_err(|e| SandboxError::EngineUnreachable(unreachable_reason(&e)))
        })
    }

    fn create<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Sandbox>, SandboxError>> {
        Box::pin(async move {
            let sandbox = self.create_sandbox(spec).await?;
            Ok(Box::new(sandbox) as Box<dyn Sandbox>)
        })
    }

    fn remove_orphans<'a>(
        &'a self,
        live: &'a [String],
    ) -> BoxFuture<'a, Result<usize, SandboxError>> {
        Box::pin(self.orphans(live))
    }

    fn prepare_image<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<bool, SandboxError>> {
        Box::pin(async move {
            match &self.peers {
                Some(peers) => self.prepare_among(peers, image).await,
                None => self.prepare_here(image).await,
            }
        })
    }
}

/// Below the egress root: one empty file per sandbox kept with `--keep`, named by its id. The
/// dot keeps it apart from the runs' directories there: a sanitized run id has none.
const KEPT_DIR: &str = ".kept";

/// This process, as the owner label names it. The boot id tells a pid reused after a reboot
/// from the same process.
fn owner() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("{}/{}", boot.trim(), std::process::id())
}

/// Whether the process an owner label names still runs. With a local engine every owner is a
/// process of this machine: another boot id means a boot gone by. With a remote engine an owner
/// of another boot id may be another machine sharing it, so it counts as alive.
fn owner_alive(owner: &str, local_engine: bool) -> bool {
    let Some((boot, pid)) = owner.rsplit_once('/') else {
        return false;
    };
    let this_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    if boot != this_boot.trim() {
        return !local_engine;
    }
    // A zombie is dead: killed, and not reaped yet (or never, under an init that does not reap).
    pid.parse::<u32>().is_ok_and(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            // The state is the field after the parenthesised command.
            !stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    })
}

/// One sandbox's egress proxy: its task and its directory. Dropped, it stops the proxy and
/// removes the directory; [`Egress::stop`] also waits for the proxy to end.
struct Egress {
    dir: EgressDir,
    cancel: CancellationToken,
    /// Holds the one proxy task, closed: `wait` returns once it has ended.
    tracker: TaskTracker,
    abort: tokio::task::AbortHandle,
}

impl Egress {
    async fn stop(&self) {
        self.cancel.cancel();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .is_err()
        {
            self.abort.abort();
        }
        let _ = std::fs::remove_dir_all(self.dir.host_dir());
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.abort.abort();
        let _ = std::fs::remove_dir_all(self.dir.host_dir());
    }
}

/// A running hardened container. Dropped without [`Sandbox::destroy`] (an error path, a panic,
/// a cancelled future) or [`Sandbox::keep`], it removes its container in the background: on the
/// current tokio runtime when there is one, else on a thread of its own. A process that exits
/// right after may not get that far; [`Engine::remove_orphans`] removes what is left at the next
/// start.
pub struct DockerSandbox {
    docker: Docker,
    id: String,
    memory: u64,
    disk: Option<u64>,
    /// The image's `USER`, as execs of [`ExecUser::Sandbox`] name it.
    user: String,
    /// Its numeric uid, never 0.
    uid: u32,
    private: String,
    redactor: RwLock<Redactor>,
    /// OOM kills already accounted for, to tell a new one from an old one.
    oom_kills: AtomicU64,
    destroyed: AtomicBool,
    kept: AtomicBool,
    /// Where `keep` marks it, so that sweeps for orphans (a daemon's, the next `maxions run`'s)
    /// leave a sandbox kept for debugging alone.
    kept_dir: PathBuf,
    egress: Option<Egress>,
    container_egress: Option<ContainerEgress>,
    /// An open attach to the reaper's stdin: killing a process group costs one small write.
    reaper: tokio::sync::Mutex<Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>>,
}

impl Drop for DockerSandbox {
    fn drop(&mut self) {
        if self.destroyed.load(Ordering::Acquire) || self.kept.load(Ordering::Acquire) {
            return;
        }
        let docker = self.docker.clone();
        let id = self.id.clone();
        let removal = async move {
            let removed = tokio::time::timeout(
                Duration::from_secs(API_TIMEOUT),
                docker.remove_container(&id, Some(force_remove())),
            )
            .await;
            if !matches!(removed, Ok(Ok(()))) {
                tracing::warn!(container = %short(&id), "could not remove a dropped sandbox; it goes at the next start of maxions");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(removal);
            }
            Err(_) => {
                let _ = std::thread::Builder::new()
                    .name("maxions-sandbox-drop".into())
                    .spawn(move || {
                        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            runtime.block_on(removal);
                        }
                    });
            }
        }
    }
}

/// Where an exec's stdin comes from.
enum Input {
    /// End of file at once.
    None,
    Bytes(Vec<u8>),
    /// Streamed, never held whole in memory.
    File(tokio::fs::File),
}

/// What reading an exec's output is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Redacted, as everything shown or kept.
    Redacted,
    /// Exactly as the command wrote it, for data the host verifies itself.
    Raw,
}

/// How the read loop of an exec ended.
enum Ending {
    Eof,
    TimedOut(Duration),
    Cancelled,
    DiskFull(u64),
}

impl DockerSandbox {
    fn redactor(&self) -> Redactor {
        self.redactor
            .read()
            .map_or_else(|e| e.into_inner().clone(), |r| r.clone())
    }

    async fn run(
        &self,
        request: &ExecRequest,
        sink: OutputSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        let input = request.stdin.clone().map_or(Input::None, Input::Bytes);
        self.run_with(request, input, Output::Redacted, sink, cancel)
            .await
    }

    fn exec_user(&self, user: ExecUser) -> String {
        match user {
            ExecUser::Sandbox => self.user.clone(),
            ExecUser::Maxions => MAXIONS_USER.to_owned(),
        }
    }

    /// The environment maxions' own execs start from: no file the sandbox wrote configures them.
    fn maxions_env(&self) -> Vec<String> {
        vec![
            format!("HOME={}", self.private),
            format!("XDG_CONFIG_HOME={}/.config", self.private),
        ]
    }

    async fn run_with(
        &self,
        request: &ExecRequest,
        input: Input,
        output_kind: Output,
        sink: OutputSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        let started = Instant::now();
        let redactor = self.redactor();
        let shown = redactor.redact_str(&describe(&request.argv)).into_owned();
        let mut cmd = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            WRAPPER.to_owned(),
            "maxions".to_owned(),
        ];
        cmd.extend(request.argv.iter().cloned());
        let mut env = match request.user {
            ExecUser::Maxions => self.maxions_env(),
            ExecUser::Sandbox => Vec::new(),
        };
        env.extend(request.env.iter().map(|(k, v)| format!("{k}={v}")));
        env.extend(
            request
                .secrets
                .iter()
                .map(|s| format!("{}={}", s.name(), s.expose())),
        );
        let options = CreateExecOptions {
            attach_stdin: Some(!matches!(input, Input::None)),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            env: Some(env),
            cmd: Some(cmd),
            user: Some(self.exec_user(request.user)),
            working_dir: Some(
                request
                    .workdir
                    .clone()
                    .unwrap_or_else(|| WORKSPACE.to_owned()),
            ),
            ..CreateExecOptions::default()
        };
        let exec = self
            .docker
            .create_exec(&self.id, options)
            .await
            .map_err(|e| self.lost(&shown, &e))?;
        let started_exec = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    output_capacity: Some(64 << 10),
                    ..StartExecOptions::default()
                }),
            )
            .await
            .map_err(|e| self.lost(&shown, &e))?;
        let StartExecResults::Attached {
            mut output,
            input: stdin,
        } = started_exec
        else {
            return Err(SandboxError::Engine("the exec started detached".into()));
        };

        // Feed stdin beside reading output: a command may print before it has read everything.
        let feeder = {
            let mut stdin = stdin;
            tokio::spawn(async move {
                match input {
                    Input::None => {}
                    Input::Bytes(bytes) => {
                        let _ = stdin.write_all(&bytes).await;
                    }
                    Input::File(mut file) => {
                        let _ = tokio::io::copy(&mut file, &mut stdin).await;
                    }
                }
                // End of file: a command reading stdin ends instead of waiting forever.
                let _ = stdin.shutdown().await;
            })
        };

        let mut out = Collector {
            sink,
            streams: [redactor.stream(), redactor.stream()],
            counts: [0; 2],
            tail: Tail::new(TAIL_BYTES),
            redacted: Vec::new(),
            pid: PidLine::default(),
            passthrough: redactor.is_empty() || output_kind == Output::Raw,
        };

        let deadline = request.timeout.map(|t| tokio::time::Instant::now() + t);
        let sleep_until_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep_until_deadline);
        // The workspace limit binds what the sandbox's user runs; maxions' helpers write to
        // their own directory on the bounded /tmp.
        let disk_limit = self.disk.filter(|_| request.user == ExecUser::Sandbox);
        let disk_watch = async {
            match disk_limit {
                Some(limit) => self.watch_disk(limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(disk_watch);
        let mut stream_error = None;
        let ending = loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Ending::Cancelled,
                () = &mut sleep_until_deadline => {
                    break Ending::TimedOut(request.timeout.unwrap_or_default());
                }
                limit = &mut disk_watch => break Ending::DiskFull(limit),
                item = tokio::time::timeout(WATCHDOG, output.next()) => match item {
                    Ok(Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message }))) => {
                        out.emit(OutputStream::Stdout, &message);
                    }
                    Ok(Some(Ok(LogOutput::StdErr { message }))) => {
                        out.emit(OutputStream::Stderr, &message);
                    }
                    Ok(Some(Ok(LogOutput::StdIn { .. }))) => {}
                    Ok(Some(Err(error))) => {
                        stream_error = Some(error.to_string());
                        break Ending::Eof;
                    }
                    Ok(None) => break Ending::Eof,
                    // Quiet for a while: fine, as long as the engine is still there.
                    Err(_) => {
                        if let Err(error) = self.docker.inspect_exec(&exec.id).await {
                            feeder.abort();
                            return Err(self.lost(&shown, &error));
                        }
                    }
                },
            }
        };

        if !matches!(ending, Ending::Eof) {
            match out.pid.pid() {
                Some(pid) => self.kill_group(pid).await,
                // Killed before the wrapper said who it is: it may still start, so wait a
                // moment for its pid line, then kill.
                None => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while out.pid.pid().is_none() {
                            match output.next().await {
                                Some(Ok(LogOutput::StdErr { message })) => {
                                    out.emit(OutputStream::Stderr, &message);
                                }
                                Some(Ok(LogOutput::StdOut { message })) => {
                                    out.emit(OutputStream::Stdout, &message);
                                }
                                Some(Ok(_)) => {}
                                Some(Err(_)) | None => break,
                            }
                        }
                    })
                    .await;
                    if let Some(pid) = out.pid.pid() {
                        self.kill_group(pid).await;
                    }
                }
            }
            // What escaped the group (setsid, double fork) ends too: the step is over.
            if request.user == ExecUser::Sandbox
                && let Err(error) = self.kill_all().await
            {
                tracing::warn!(%error, "ending the processes of a killed exec");
            }
            // Keep what the command printed before it died, but do not wait on it forever.
            let _ = tokio::time::timeout(DRAIN, async {
                while let Some(Ok(item)) = output.next().await {
                    match item {
                        LogOutput::StdOut { message } | LogOutput::Console { message } => {
                            out.emit(OutputStream::Stdout, &message);
                        }
                        LogOutput::StdErr { message } => {
                            out.emit(OutputStream::Stderr, &message);
                        }
                        LogOutput::StdIn { .. } => {}
                    }
                }
            })
            .await;
        }
        feeder.abort();
        out.finish();
        if matches!(ending, Ending::Eof)
            && let Some(pid) = out.pid.pid()
        {
            // What the step left running in the background ends with it.
            self.reap(pid).await;
        }

        let status = match ending {
            Ending::TimedOut(after) => ExecStatus::TimedOut(after),
            Ending::Cancelled => ExecStatus::Cancelled,
            Ending::DiskFull(limit) => ExecStatus::DiskFull { limit },
            Ending::Eof => self.exit_status(&exec.id, &shown, stream_error).await?,
        };
        Ok(ExecOutcome {
            status,
            duration: started.elapsed(),
            stdout_bytes: out.counts[0],
            stderr_bytes: out.counts[1],
            tail: out.tail.into_vec(),
        })
    }

    /// Measures the workspace every [`DISK_CHECK_EVERY`]; returns `limit` once it is over, or
    /// cannot be measured whole. An engine that does not answer is not a full disk: the exec's
    /// own watchdog reports that.
    ///
    /// What this does not do: the engine's `local` volumes have no quota (`--storage-opt size`
    /// bounds only a container's writable layer, which is read-only here), so this is a watchdog,
    /// not a quota. A step can overshoot by what it writes between two looks (a few GB at disk
    /// speed), and between execs nothing measures (steps end with `end_step`, so nothing writes
    /// then). Files the step deleted but holds open are not counted by `du`. A tree of millions
    /// of files makes the measurement slow; one that takes longer than 20 s counts as full.
    /// Execs of maxions' own user are not watched (they write to `/tmp`, a bounded tmpfs).
    async fn watch_disk(&self, limit: u64) -> u64 {
        loop {
            tokio::time::sleep(DISK_CHECK_EVERY).await;
            match self.workspace_size().await {
                Ok(Some(used)) if used <= limit => {}
                Ok(_) => return limit,
                Err(error) => tracing::debug!(%error, "measuring the workspace"),
            }
        }
    }

    /// The bytes `/workspace` holds, `None` when part of it cannot be read. Measured by
    /// maxions' user (which the sandbox cannot kill or slow down by signals), and, when a
    /// directory is closed to it (`mktemp -d` makes 0700 ones), again by the sandbox's user.
    async fn workspace_size(&self) -> Result<Option<u64>, SandboxError> {
        let Some(first) = self.du(ExecUser::Maxions).await? else {
            return Ok(None);
        };
        if !first.unreadable {
            return Ok(first.bytes);
        }
        let Some(second) = self.du(ExecUser::Sandbox).await? else {
            return Ok(None);
        };
        if second.unreadable {
            return Ok(None);
        }
        Ok(second.bytes.map(|b| b.max(first.bytes.unwrap_or(0))))
    }

    /// One `du` of the workspace as `user`; `None` when it took too long while the engine
    /// answers (a tree made to be slow to measure counts as unmeasurable, not as fine).
    async fn du(&self, user: ExecUser) -> Result<Option<procs::DiskUse>, SandboxError> {
        let measured =
            tokio::time::timeout(DU_TIMEOUT, self.quiet(user, &procs::DU, &["LC_ALL=C"])).await;
        match measured {
            Ok(result) => result.map(|(_, stdout, stderr)| Some(procs::disk_use(&stdout, &stderr))),
            Err(_) => match tokio::time::timeout(
                REAPER_TIMEOUT,
                self.docker.inspect_container(&self.id, None),
            )
            .await
            {
                Ok(Ok(_)) => Ok(None),
                _ => Err(SandboxError::EngineLost {
                    command: procs::DU.join(" "),
                    detail: "no answer from the engine".into(),
                }),
            },
        }
    }

    /// How an exec whose output ended actually ended: its exit code, an OOM kill, or the loss
    /// of the container or the engine.
    async fn exit_status(
        &self,
        exec_id: &str,
        shown: &str,
        stream_error: Option<String>,
    ) -> Result<ExecStatus, SandboxError> {
        let inspected = match self.docker.inspect_exec(exec_id).await {
            Ok(inspected) => inspected,
            Err(error) => return Err(self.lost(shown, &error)),
        };
        let code = inspected
            .exit_code
            .filter(|_| inspected.running != Some(true));
        if code.is_none() || code.is_some_and(|c| c >= 128) || stream_error.is_some() {
            // The container may be gone (killed from outside, engine restarting); the engine
            // may take a moment to notice that it died, so look twice.
            self.ensure_running(shown, stream_error.as_deref()).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.ensure_running(shown, stream_error.as_deref()).await?;
        }
        let Some(code) = code else {
            return Err(SandboxError::EngineLost {
                command: shown.to_owned(),
                detail: stream_error
                    .unwrap_or_else(|| "the output ended before the command".into()),
            });
        };
        if code == 137 && self.new_oom_kill().await {
            return Ok(ExecStatus::OutOfMemory { limit: self.memory });
        }
        Ok(ExecStatus::Exited(code))
    }

    async fn ensure_running(&self, shown: &str, detail: Option<&str>) -> Result<(), SandboxError> {
        match self.docker.inspect_container(&self.id, None).await {
            Ok(container) => {
                let state = container.state.unwrap_or_default();
                if state.running == Some(true) && state.restarting != Some(true) {
                    return Ok(());
                }
                let mut text = state
                    .status
                    .map_or_else(|| "not running".to_owned(), |s| s.to_string());
                if let Some(code) = state.exit_code {
                    text.push_str(&format!(", exit code {code}"));
                }
                if state.oom_killed == Some(true) {
                    text.push_str(", out of memory");
                }
                Err(SandboxError::ContainerGone {
                    id: short(&self.id).to_owned(),
                    command: shown.to_owned(),
                    state: text,
                })
            }
            Err(error) if status_of(&error) == Some(404) => Err(SandboxError::ContainerGone {
                id: short(&self.id).to_owned(),
                command: shown.to_owned(),
                state: "removed".into(),
            }),
            Err(error) => Err(SandboxError::EngineLost {
                command: shown.to_owned(),
                detail: detail.map_or_else(|| unreachable_reason(&error), str::to_owned),
            }),
        }
    }

    /// Whether the kernel's OOM killer struck in this container since the last look. Read from
    /// inside (cgroup v2 `memory.events`, or v1 `memory.oom_control`) so that it works with a
    /// remote engine too; the container's `OOMKilled` flag is the fallback.
    async fn new_oom_kill(&self) -> bool {
        let script = "cat /sys/fs/cgroup/memory.events 2>/dev/null || cat /sys/fs/cgroup/memory/memory.oom_control";
        if let Ok((0, text, _)) = self
            .quiet(ExecUser::Maxions, &["sh", "-c", script], &[])
            .await
        {
            let count = String::from_utf8_lossy(&text)
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok());
            if let Some(count) = count {
                let seen = self.oom_kills.swap(count, Ordering::AcqRel);
                return count > seen;
            }
        }
        self.docker
            .inspect_container(&self.id, None)
            .await
            .ok()
            .and_then(|c| c.state?.oom_killed)
            .unwrap_or(false)
    }

    async fn attach_reaper(&self) -> Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>> {
        let options = bollard::query_parameters::AttachContainerOptionsBuilder::new()
            .stdin(true)
            .stream(true)
            .build();
        tokio::time::timeout(
            REAPER_TIMEOUT,
            self.docker.attach_container(&self.id, Some(options)),
        )
        .await
        .ok()?
        .ok()
        .map(|attached| attached.input)
    }

    /// Sends one order to the reaper (no new process needed, so it works even when a fork bomb
    /// holds every process slot). Returns whether the reaper got it.
    async fn order(&self, line: &str) -> bool {
        let line = format!("{line}\n");
        let mut slot = self.reaper.lock().await;
        for _ in 0..2 {
            if slot.is_none() {
                *slot = self.attach_reaper().await;
            }
            if let Some(input) = slot.as_mut() {
                let sent = tokio::time::timeout(REAPER_TIMEOUT, async {
                    input.write_all(line.as_bytes()).await?;
                    input.flush().await
                })
                .await;
                if matches!(sent, Ok(Ok(()))) {
                    return true;
                }
            }
            *slot = None;
        }
        false
    }

    /// Kills an exec's process group through the reaper. Returns whether the reaper got the
    /// order.
    async fn reap(&self, pid: u32) -> bool {
        self.order(&pid.to_string()).await
    }

    /// Kills the process group of a timed-out or cancelled exec: through the reaper, or with a
    /// `kill` exec of maxions' user when the reaper cannot be reached.
    async fn kill_group(&self, pid: u32) {
        if self.reap(pid).await {
            return;
        }
        let _ = self
            .quiet(ExecUser::Maxions, &["kill", "-9", &format!("-{pid}")], &[])
            .await;
    }

    /// Kills every process of the sandbox's user: `kill -9 -1` as that user, which the kernel
    /// applies atomically; when that exec cannot start or does not finish (a fork bomb holds
    /// the slots, something kills every new process), the root reaper sweeps the uid first.
    async fn kill_all(&self) -> Result<u32, SandboxError> {
        let mut last = String::new();
        let mut reaper = true;
        for attempt in 0..6 {
            if attempt > 0 {
                reaper &= self.order(&format!("u{}", self.uid)).await;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            match self
                .quiet(ExecUser::Sandbox, &["sh", "-c", END_STEP], &[])
                .await
            {
                Ok((0, stdout, _)) => {
                    if let Some(killed) = procs::killed(&stdout) {
                        return Ok(killed);
                    }
                    last = "the kill printed no count".into();
                }
                Ok((code, _, stderr)) => {
                    last = format!(
                        "the kill exited with {code}: {}",
                        String::from_utf8_lossy(&stderr).trim()
                    );
                }
                Err(
                    error @ (SandboxError::ContainerGone { .. } | SandboxError::EngineLost { .. }),
                ) => {
                    return Err(error);
                }
                // Most often: no process slot left to start the exec in.
                Err(error) => last = error.to_string(),
            }
        }
        Err(SandboxError::Engine(format!(
            "processes of the sandbox's user in {} survive every kill ({}{}); destroy the sandbox",
            short(&self.id),
            self.redactor().redact_str(&last),
            if reaper {
                ""
            } else {
                "; the reaper does not answer"
            }
        )))
    }

    /// Makes the private directory and learns the sandbox user's uid, before any step runs
    /// (so no process of the sandbox sees this command line).
    async fn prepare(&self) -> Result<u32, SandboxError> {
        let user = self.user.split(':').next().unwrap_or_default().to_owned();
        let (code, stdout, stderr) = self
            .quiet(
                ExecUser::Maxions,
                &["sh", "-c", PREPARE, &self.private, &user],
                &[],
            )
            .await?;
        let uid = std::str::from_utf8(&stdout)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        match uid {
            Some(0) => Err(SandboxError::Create(format!(
                "the image's user `{}` is uid 0; sandboxes run as a non-root user, so give the image one (`USER` in its Dockerfile)",
                self.user
            ))),
            Some(uid) if code == 0 => Ok(uid),
            _ => Err(SandboxError::Create(format!(
                "cannot prepare the sandbox (private directory, uid of `{}`): {}",
                self.user,
                String::from_utf8_lossy(&stderr).trim()
            ))),
        }
    }

    /// A short internal command as `user`: its exit code, and at most 64 KiB of each of stdout
    /// and stderr. All of it, engine calls included, within [`QUIET_TIMEOUT`].
    async fn quiet(
        &self,
        user: ExecUser,
        argv: &[&str],
        env: &[&str],
    ) -> Result<(i64, Vec<u8>, Vec<u8>), SandboxError> {
        let shown = describe(&argv.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        match tokio::time::timeout(QUIET_TIMEOUT, self.quiet_untimed(user, argv, env, &shown)).await
        {
            Ok(result) => result,
            Err(_) => Err(SandboxError::EngineLost {
                command: shown,
                detail: format!("no answer within {} s", QUIET_TIMEOUT.as_secs()),
            }),
        }
    }

    async fn quiet_untimed(
        &self,
        user: ExecUser,
        argv: &[&str],
        env: &[&str],
        shown: &str,
    ) -> Result<(i64, Vec<u8>, Vec<u8>), SandboxError> {
        let mut all_env = match user {
            ExecUser::Maxions => self.maxions_env(),
            ExecUser::Sandbox => Vec::new(),
        };
        all_env.extend(env.iter().map(|e| (*e).to_owned()));
        let options = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(argv.iter().map(|s| (*s).to_owned()).collect()),
            env: Some(all_env),
            user: Some(self.exec_user(user)),
            ..CreateExecOptions::default()
        };
        let exec = self
            .docker
            .create_exec(&self.id, options)
            .await
            .map_err(|e| self.lost(shown, &e))?;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| self.lost(shown, &e))?
        {
            while let Some(Ok(item)) = output.next().await {
                match item {
                    LogOutput::StdOut { message } if stdout.len() < 64 << 10 => {
                        stdout.extend_from_slice(&message);
                    }
                    LogOutput::StdErr { message } if stderr.len() < 64 << 10 => {
                        stderr.extend_from_slice(&message);
                    }
                    _ => {}
                }
            }
        }
        let code = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| self.lost(shown, &e))?
            .exit_code
            .unwrap_or(-1);
        Ok((code, stdout, stderr))
    }

    fn lost(&self, shown: &str, error: &bollard::errors::Error) -> SandboxError {
        match status_of(error) {
            Some(404 | 409) => SandboxError::ContainerGone {
                id: short(&self.id).to_owned(),
                command: shown.to_owned(),
                state: engine_message(error),
            },
            Some(_) => SandboxError::Engine(engine_message(error)),
            None => SandboxError::EngineLost {
                command: shown.to_owned(),
                detail: unreachable_reason(error),
            },
        }
    }

    async fn remove(&self) -> Result<(), SandboxError> {
        if self.destroyed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(egress) = &self.egress {
            egress.stop().await;
        }
        let removed = self.remove_container().await;
        if let Some(egress) = &self.container_egress {
            egress.stop().await;
        }
        removed
    }

    async fn remove_container(&self) -> Result<(), SandboxError> {
        match self
            .docker
            .remove_container(&self.id, Some(force_remove()))
            .await
        {
            Ok(()) => Ok(()),
            Err(error) if status_of(&error) == Some(404) => Ok(()),
            Err(error) => {
                self.destroyed.store(false, Ordering::Release);
                Err(SandboxError::Engine(format!(
                    "cannot remove sandbox {}: {}; it will be removed at the next start of maxions",
                    short(&self.id),
                    engine_message(&error)
                )))
            }
        }
    }

    async fn write(&self, path: &str, contents: &[u8], mode: u32) -> Result<(), SandboxError> {
        let request = ExecRequest::new([
            "sh",
            "-c",
            r#"mkdir -p -- "$(dirname -- "$0")" && cat >"$0" && chmod "$1" -- "$0""#,
            path,
            &format!("{mode:o}"),
        ])
        .stdin(contents.to_vec())
        .timeout(Duration::from_secs(120));
        let mut errors = Vec::new();
        let mut sink = |which: OutputStream, bytes: &[u8]| {
            if which == OutputStream::Stderr && errors.len() < 4096 {
                errors.extend_from_slice(bytes);
            }
        };
        let outcome = self
            .run(&request, &mut sink, &CancellationToken::new())
            .await?;
        if outcome.status.success() {
            Ok(())
        } else {
            Err(SandboxError::File {
                path: path.to_owned(),
                detail: file_error(&outcome.status, &errors),
            })
        }
    }

    async fn read(&self, path: &str, limit: usize) -> Result<FileContents, SandboxError> {
        let request = ExecRequest::new(["head", "-c", &(limit + 1).to_string(), "--", path])
            .timeout(Duration::from_secs(120));
        let mut bytes = Vec::new();
        let mut errors = Vec::new();
        let mut sink = |which: OutputStream, chunk: &[u8]| match which {
            OutputStream::Stdout => bytes.extend_from_slice(chunk),
            OutputStream::Stderr if errors.len() < 4096 => errors.extend_from_slice(chunk),
            OutputStream::Stderr => {}
        };
        let outcome = self
            .run(&request, &mut sink, &CancellationToken::new())
            .await?;
        if !outcome.status.success() {
            return Err(SandboxError::File {
                path: path.to_owned(),
                detail: file_error(&outcome.status, &errors),
            });
        }
        // Redaction may have shortened it; the byte count before redaction tells the truth.
        let truncated = outcome.stdout_bytes > limit as u64;
        bytes.truncate(limit);
        Ok(FileContents { bytes, truncated })
    }

    async fn copy_to(
        &self,
        host: &Path,
        dest: &str,
        mode: u32,
        user: ExecUser,
    ) -> Result<u64, SandboxError> {
        let host_error = |e: std::io::Error| SandboxError::HostFile {
            path: host.display().to_string(),
            detail: e.to_string(),
        };
        let file = tokio::fs::File::open(host).await.map_err(host_error)?;
        let length = file.metadata().await.map_err(host_error)?.len();
        let request = ExecRequest {
            user,
            ..ExecRequest::new(["sh", "-c", COPY_IN, dest, &format!("{:o}", mode & 0o777)])
                .timeout(COPY_TIMEOUT)
        };
        let mut errors = Vec::new();
        let mut sink = |which: OutputStream, bytes: &[u8]| {
            if which == OutputStream::Stderr && errors.len() < 4096 {
                errors.extend_from_slice(bytes);
            }
        };
        let outcome = self
            .run_with(
                &request,
                Input::File(file),
                Output::Redacted,
                &mut sink,
                &CancellationToken::new(),
            )
            .await?;
        if outcome.status.success() {
            Ok(length)
        } else {
            Err(SandboxError::File {
                path: dest.to_owned(),
                detail: file_error(&outcome.status, &errors),
            })
        }
    }

    async fn copy_from(
        &self,
        src: &str,
        host: &Path,
        limit: u64,
        user: ExecUser,
    ) -> Result<u64, SandboxError> {
        use std::os::unix::fs::OpenOptionsExt;

        let host_error = |e: &std::io::Error| SandboxError::HostFile {
            path: host.display().to_string(),
            detail: e.to_string(),
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(host)
            .map_err(|e| host_error(&e))?;
        let request = ExecRequest {
            user,
            ..ExecRequest::new([
                "head",
                "-c",
                &limit.saturating_add(1).to_string(),
                "--",
                src,
            ])
            .timeout(COPY_TIMEOUT)
        };
        let mut written = 0_u64;
        let mut write_error = None;
        let mut errors = Vec::new();
        // Small blocking writes (64 KiB frames into the page cache): not worth a thread hop.
        let mut sink = |which: OutputStream, bytes: &[u8]| match which {
            OutputStream::Stdout => {
                let room = limit.saturating_sub(written);
                let take = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                written += bytes.len() as u64;
                if write_error.is_none()
                    && let Err(error) = file.write_all(&bytes[..take])
                {
                    write_error = Some(error);
                }
            }
            OutputStream::Stderr if errors.len() < 4096 => errors.extend_from_slice(bytes),
            OutputStream::Stderr => {}
        };
        let outcome = self
            .run_with(
                &request,
                Input::None,
                Output::Raw,
                &mut sink,
                &CancellationToken::new(),
            )
            .await;
        let failure = match outcome {
            Err(error) => Some(error),
            Ok(_) if write_error.is_some() => write_error.as_ref().map(host_error),
            Ok(outcome) if !outcome.status.success() => Some(SandboxError::File {
                path: src.to_owned(),
                detail: file_error(&outcome.status, &errors),
            }),
            Ok(_) if written > limit => Some(SandboxError::File {
                path: src.to_owned(),
                detail: format!(
                    "larger than the limit of {} for copying it out",
                    crate::config::units::ByteSize(limit)
                ),
            }),
            Ok(_) => file.sync_all().err().as_ref().map(host_error),
        };
        drop(file);
        match failure {
            Some(error) => {
                let _ = std::fs::remove_file(host);
                Err(error)
            }
            None => Ok(written),
        }
    }
}

impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn set_redactor(&self, redactor: Redactor) {
        match self.redactor.write() {
            Ok(mut slot) => *slot = redactor,
            Err(poisoned) => *poisoned.into_inner() = redactor,
        }
    }

    fn exec<'a>(
        &'a self,
        request: &'a ExecRequest,
        sink: OutputSink<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ExecOutcome, SandboxError>> {
        Box::pin(self.run(request, sink, cancel))
    }

    fn write_file<'a>(
        &'a self,
        path: &'a str,
        contents: &'a [u8],
        mode: u32,
    ) -> BoxFuture<'a, Result<(), SandboxError>> {
        Box::pin(self.write(path, contents, mode))
    }

    fn read_file<'a>(
        &'a self,
        path: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<FileContents, SandboxError>> {
        Box::pin(self.read(path, limit))
    }

    fn destroy(&self) -> BoxFuture<'_, Result<(), SandboxError>> {
        Box::pin(self.remove())
    }

    fn end_step(&self) -> BoxFuture<'_, Result<u32, SandboxError>> {
        Box::pin(self.kill_all())
    }

    fn private_dir(&self) -> &str {
        &self.private
    }

    fn copy_in<'a>(
        &'a self,
        host: &'a Path,
        dest: &'a str,
        mode: u32,
        user: ExecUser,
    ) -> BoxFuture<'a, Result<u64, SandboxError>> {
        Box::pin(self.copy_to(host, dest, mode, user))
    }

    fn copy_out<'a>(
        &'a self,
        src: &'a str,
        host: &'a Path,
        limit: u64,
        user: ExecUser,
    ) -> BoxFuture<'a, Result<u64, SandboxError>> {
        Box::pin(self.copy_from(src, host, limit, user))
    }

    fn keep(&self) {
        self.kept.store(true, Ordering::Release);
        let marked = std::fs::create_dir_all(&self.kept_dir)
            .and_then(|()| std::fs::write(self.kept_dir.join(&self.id), b""));
        if let Err(error) = marked {
            tracing::warn!(%error, container = %short(&self.id), "cannot mark the sandbox as kept; the next sweep for orphaned sandboxes may remove it");
        }
    }
}

fn file_error(status: &ExecStatus, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        status.to_string()
    } else {
        // `head: cannot open '/x' for reading: No such file or directory` → the reason only.
        text.rsplit(": ").next().unwrap_or(text).to_owned()
    }
}

/// Where an exec's output goes: pid line split off, redacted per stream, counted, its tail kept,
/// then handed to the caller's sink.
struct Collector<'s> {
    sink: OutputSink<'s>,
    streams: [RedactStream; 2],
    counts: [u64; 2],
    tail: Tail,
    redacted: Vec<u8>,
    /// The wrapper's first stderr line is its pid, not the command's output.
    pid: PidLine,
    /// No secrets: bytes go to the sink as they came, without a copy.
    passthrough: bool,
}

impl Collector<'_> {
    fn emit(&mut self, which: OutputStream, bytes: &[u8]) {
        let bytes = match which {
            OutputStream::Stderr => self.pid.strip(bytes),
            OutputStream::Stdout => bytes,
        };
        if bytes.is_empty() {
            return;
        }
        let index = which as usize;
        self.counts[index] += bytes.len() as u64;
        if self.passthrough {
            self.tail.push(bytes);
            (self.sink)(which, bytes);
            return;
        }
        self.redacted.clear();
        self.streams[index].write(bytes, &mut self.redacted);
        self.send(which);
    }

    /// Flushes what the redactors held back in case a secret continued.
    fn finish(&mut self) {
        for (index, which) in [OutputStream::Stdout, OutputStream::Stderr]
            .into_iter()
            .enumerate()
        {
            self.redacted.clear();
            self.streams[index].finish(&mut self.redacted);
            self.send(which);
        }
    }

    fn send(&mut self, which: OutputStream) {
        if !self.redacted.is_empty() {
            self.tail.push(&self.redacted);
            (self.sink)(which, &self.redacted);
        }
    }
}

/// Separates the wrapper's pid line from the rest of stderr, across chunks.
#[derive(Default)]
struct PidLine {
    line: Vec<u8>,
    pid: Option<u32>,
    done: bool,
}

impl PidLine {
    /// The part of `chunk` that is the command's own stderr.
    fn strip<'c>(&mut self, chunk: &'c [u8]) -> &'c [u8] {
        if self.done {
            return chunk;
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => {
                self.line.extend_from_slice(&chunk[..at]);
                self.pid = std::str::from_utf8(&self.line)
                    .ok()
                    .and_then(|l| l.trim().parse().ok());
                self.done = true;
                &chunk[at + 1..]
            }
            // A pid line is short: anything longer means the wrapper never ran.
            None if self.line.len() + chunk.len() > 32 => {
                self.done = true;
                chunk
            }
            None => {
                self.line.extend_from_slice(chunk);
                &[]
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }
}

/// 128 random bits as hex, for names the sandbox must not guess.
fn random_hex() -> Result<String, SandboxError> {
    use std::io::Read as _;
    let mut bytes = [0_u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| SandboxError::Create(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn force_remove() -> bollard::query_parameters::RemoveContainerOptions {
    RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build()
}

pub(super) fn status_of(error: &bollard::errors::Error) -> Option<u16> {
    match error {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

pub(super) fn engine_message(error: &bollard::errors::Error) -> String {
    match error {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

pub(super) fn engine_error(error: &bollard::errors::Error) -> SandboxError {
    match status_of(error) {
        Some(_) => SandboxError::Engine(engine_message(error)),
        None => SandboxError::EngineUnreachable(unreachable_reason(error)),
    }
}

/// What went wrong talking to the engine, down to the root cause (bollard wraps it).
fn unreachable_reason(error: &bollard::errors::Error) -> String {
    crate::error_chain::error_chain(error)
}

/// A command as shown in messages: at most 80 characters of it.
fn describe(argv: &[String]) -> String {
    let joined = argv.join(" ");
    let line = joined.lines().next().unwrap_or_default();
    if line.chars().count() > 80 || line.len() < joined.len() {
        format!("{}…", line.chars().take(80).collect::<String>())
    } else {
        line.to_owned()
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A run id made safe for a container name and a directory name.
pub(crate) fn sanitize(run_id: &str) -> String {
    run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_owner_is_dead_even_before_it_is_reaped() {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let label = format!("{}/{}", boot.trim(), child.id());
        assert!(owner_alive(&label, true), "running");
        child.kill().unwrap();
        // Not waited for: a zombie until reaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while owner_alive(&label, true) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !owner_alive(&label, true),
            "a zombie does not count as alive"
        );
        assert!(
            Path::new(&format!("/proc/{}", child.id())).exists(),
            "still unreaped"
        );
        child.wait().unwrap();
        assert!(!owner_alive(&label, true));
        assert!(owner_alive(
            &format!("another-boot/{}", std::process::id()),
            false
        ));
        assert!(!owner_alive(
            &format!("another-boot/{}", std::process::id()),
            true
        ));
    }

    #[test]
    fn describe_keeps_messages_short_and_on_one_line() {
        assert_eq!(describe(&["echo".into(), "hi".into()]), "echo hi");
        let long = describe(&["sh".into(), "-c".into(), "x".repeat(200)]);
        assert_eq!(long.chars().count(), 81);
        assert_eq!(
            describe(&["sh".into(), "-c".into(), "a\nb".into()]),
            "sh -c a…"
        );
    }

    #[test]
    fn sanitize_keeps_names_docker_accepts() {
        assert_eq!(sanitize("0193-7a"), "0193-7a");
        assert_eq!(sanitize("a/b c"), "a_b_c");
    }
}
