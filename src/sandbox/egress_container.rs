//! The egress proxy in a container of its own, beside a sandbox on an engine that does not share
//! this machine's file system (a remote engine over TCP), where the daemon cannot bind-mount its
//! socket into the sandbox.
//!
//! ```text
//! engine:  volume maxions-<run>-egress
//!          ├─ proxy container  (maxions/egress: `maxions egress-proxy`, the volume read-write,
//!          │                    the engine's network; binds egress.sock, writes the relay)
//!          └─ sandbox          (the volume read-only at /run/maxions, no network: its relay
//!                               carries connections to egress.sock)
//! ```
//!
//! The sandbox reaches the proxy only through the socket; the proxy's decisions come back as
//! JSON lines in its container's log, which this module reads and hands to the run's sink, as the
//! in-process proxy does. The proxy container is as locked down as the sandbox (read-only root,
//! no capabilities, no new privileges, a non-root user, small memory and pids limits), carries
//! the run's labels so that the sweep for orphans removes it, and goes with the sandbox.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;

use super::egress::{EgressEvent, EgressPolicy};
use super::image::EGRESS_IMAGE;
use super::{EgressSink, SandboxError};

/// Where the shared volume is mounted, in both containers.
pub const DIR: &str = super::egress::relay::CONTAINER_DIR;
/// The label that tells a proxy container from a sandbox.
pub const ROLE_LABEL: &str = "maxions.role";
/// The line the proxy prints once its socket is bound and the relay is in place.
pub const READY: &str = "maxions-egress-proxy ready";
/// How long the proxy may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const MEMORY: i64 = 128 * 1024 * 1024;

/// How to run the proxy beside a sandbox: which image, on which of the engine's networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressContainer {
    /// The image holding `maxions egress-proxy` (`maxions image build egress`).
    pub image: String,
    /// The network the proxy container joins (`bridge`, `host`, a network the engine has): the
    /// one the sandbox's allowed traffic leaves by.
    pub network: String,
    /// Tests only: names the proxy resolves to fixed addresses instead of asking the system.
    pub resolve: Vec<(String, IpAddr)>,
}

impl Default for EgressContainer {
    fn default() -> Self {
        Self {
            image: EGRESS_IMAGE.to_owned(),
            network: "bridge".to_owned(),
            resolve: Vec::new(),
        }
    }
}

/// A running proxy container and its volume. [`ContainerEgress::stop`] removes both; dropped
/// without it, the removal runs in the background (and the sweep for orphans catches what a
/// dying process leaves).
pub struct ContainerEgress {
    docker: Docker,
    id: String,
    volume: String,
    events: tokio::task::JoinHandle<()>,
}

impl ContainerEgress {
    /// The volume to mount read-only at [`DIR`] in the sandbox.
    #[must_use]
    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// Starts the proxy for one sandbox and waits until it serves.
    ///
    /// # Errors
    /// When the image is missing on the engine, or the proxy does not come up (its own words
    /// are in the error).
    pub(super) async fn start(
        docker: &Docker,
        name: &str,
        labels: &HashMap<String, String>,
        policy: &EgressPolicy,
        loopback: bool,
        form: &EgressContainer,
        sink: Option<EgressSink>,
    ) -> Result<Self, SandboxError> {
        match docker.inspect_image(&form.image).await {
            Ok(_) => {}
            Err(error) if super::docker::status_of(&error) == Some(404) => {
                return Err(SandboxError::Create(format!(
                    "the egress proxy's image `{}` is not on this engine; build it there (`maxions image build egress` with DOCKER_HOST pointing at the engine)",
                    form.image
                )));
            }
            Err(error) => return Err(super::docker::engine_error(&error)),
        }
        let volume = format!("{name}-egress");
        let mut volume_labels = labels.clone();
        volume_labels.insert(ROLE_LABEL.to_owned(), "egress".to_owned());
        docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(volume_labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| SandboxError::Create(super::docker::engine_message(&e)))?;
        let mut cmd = vec!["--dir".to_owned(), DIR.to_owned()];
        for pattern in policy.patterns() {
            cmd.push("--allow".to_owned());
            cmd.push(pattern.to_string());
        }
        if loopback {
            cmd.push("--loopback-for-tests".to_owned());
        }
        for (host, ip) in &form.resolve {
            cmd.push("--resolve-for-tests".to_owned());
            cmd.push(format!("{host}={ip}"));
        }
        let body = ContainerCreateBody {
            image: Some(form.image.clone()),
            cmd: Some(cmd),
            labels: Some(volume_labels),
            host_config: Some(HostConfig {
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                privileged: Some(false),
                memory: Some(MEMORY),
                memory_swap: Some(MEMORY),
                pids_limit: Some(64),
                network_mode: Some(form.network.clone()),
                init: Some(true),
                mounts: Some(vec![Mount {
                    target: Some(DIR.to_owned()),
                    source: Some(volume.clone()),
                    typ: Some(MountType::VOLUME),
                    ..Mount::default()
                }]),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let created = match docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::new()
                        .name(&format!("{name}-egress"))
                        .build(),
                ),
                body,
            )
            .await
        {
            Ok(created) => created,
            Err(error) => {
                let _ = docker
                    .remove_volume(
                        &volume,
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await;
                return Err(SandboxError::Create(format!(
                    "cannot create the egress proxy: {}",
                    super::docker::engine_message(&error)
                )));
            }
        };
        let mut egress = Self {
            docker: docker.clone(),
            id: created.id,
            volume,
            events: tokio::spawn(async {}),
        };
        if let Err(error) = docker.start_container(&egress.id, None).await {
            egress.stop().await;
            return Err(SandboxError::Create(format!(
                "cannot start the egress proxy: {}",
                super::docker::engine_message(&error)
            )));
        }
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        egress.events = tokio::spawn(follow(docker.clone(), egress.id.clone(), sink, ready_tx));
        let why = match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(Ok(()))) => return Ok(egress),
            Ok(Ok(Err(said))) if !said.is_empty() => format!("it ended saying: {said}"),
            Ok(_) => "it ended without a word".to_owned(),
            Err(_) => format!("it was not ready within {}s", READY_TIMEOUT.as_secs()),
        };
        egress.stop().await;
        Err(SandboxError::Create(format!(
            "the egress proxy did not start ({why})"
        )))
    }

    /// Stops and removes the proxy container and its volume.
    pub(super) async fn stop(&self) {
        let _ = self
            .docker
            .stop_container(
                &self.id,
                Some(StopContainerOptionsBuilder::new().t(2).build()),
            )
            .await;
        self.events.abort();
        let _ = self
            .docker
            .remove_container(
                &self.id,
                Some(
                    RemoveContainerOptionsBuilder::new()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await;
        let _ = self
            .docker
            .remove_volume(
                &self.volume,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await;
    }
}

impl Drop for ContainerEgress {
    fn drop(&mut self) {
        self.events.abort();
        let (docker, id, volume) = (self.docker.clone(), self.id.clone(), self.volume.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let options = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                let _ = docker.remove_container(&id, Some(options)).await;
                let _ = docker
                    .remove_volume(
                        &volume,
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await;
            });
        }
    }
}

/// Reads the proxy's log: the ready line (then `ready` gets `Ok`), then one event per line for
/// `sink`. What it says on stderr before it is ready is what `ready` gets if it ends instead.
async fn follow(
    docker: Docker,
    id: String,
    sink: Option<EgressSink>,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let options = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut logs = docker.logs(&id, Some(options));
    let mut ready = Some(ready);
    let mut line = Vec::new();
    let mut said = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        let (out, bytes) = match chunk {
            LogOutput::StdOut { message } => (true, message),
            LogOutput::StdErr { message } => (false, message),
            _ => continue,
        };
        if !out {
            if said.len() < 2000 {
                said.push_str(&String::from_utf8_lossy(&bytes));
            }
            continue;
        }
        for &byte in &bytes {
            if byte != b'\n' {
                // An event line is short; a longer one is not the proxy's and is dropped.
                if line.len() < 64 * 1024 {
                    line.push(byte);
                }
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            if text == READY {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
            } else if let Ok(event) = serde_json::from_str::<EgressEvent>(&text) {
                match &sink {
                    Some(sink) => sink(event),
                    None => tracing::info!(?event, "egress"),
                }
            } else {
                tracing::debug!(line = %text, "egress proxy: a line that is not an event");
            }
            line.clear();
        }
    }
    if let Some(ready) = ready.take() {
        let _ = ready.send(Err(said.trim().to_owned()));
    }
}
