//! Images between engines: the engines of one daemon know each other as [`Peers`], so that an
//! image missing (or stale) on one is loaded from another that has it current, streamed through
//! the two Engine APIs (`docker save | docker load`, without the CLI or a registry), or built on
//! the engine the `docker` command reaches and loaded from there.

use std::sync::{Arc, RwLock};

use bollard::Docker;
use futures_util::StreamExt;

use super::SandboxError;
use super::docker::{engine_message, status_of};
use super::image::{self, RECIPE_LABEL, RECIPES};

/// One engine as the others see it.
#[derive(Clone)]
pub struct Peer {
    pub name: String,
    pub docker: Docker,
}

/// The engines of one daemon, shared by all of them. An engine joins once it has answered.
#[derive(Default)]
pub struct Peers {
    members: RwLock<Vec<Peer>>,
    /// The engine the `docker` command reaches, where maxions' images are built, by name.
    builder: RwLock<Option<(String, super::DockerEngine)>>,
}

impl Peers {
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds (or replaces) the engine named `name`.
    pub fn join(&self, name: &str, docker: Docker) {
        let mut members = match self.members.write() {
            Ok(members) => members,
            Err(poisoned) => poisoned.into_inner(),
        };
        members.retain(|p| p.name != name);
        members.push(Peer {
            name: name.to_owned(),
            docker,
        });
    }

    /// Names `engine` (as `name`) the one maxions' images are built on.
    pub fn set_builder(&self, name: &str, engine: super::DockerEngine) {
        let mut builder = match self.builder.write() {
            Ok(builder) => builder,
            Err(poisoned) => poisoned.into_inner(),
        };
        *builder = Some((name.to_owned(), engine));
    }

    /// The engine maxions' images are built on, with its name.
    #[must_use]
    pub fn builder(&self) -> Option<(String, super::DockerEngine)> {
        match self.builder.read() {
            Ok(builder) => builder.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Every engine but `name`.
    #[must_use]
    pub fn others(&self, name: &str) -> Vec<Peer> {
        let members = match self.members.read() {
            Ok(members) => members,
            Err(poisoned) => poisoned.into_inner(),
        };
        members.iter().filter(|p| p.name != name).cloned().collect()
    }
}

/// Whether `docker` has `tag` ready to run: present, and for one of maxions' images, built from
/// the recipe this maxions has (its recipe label, checked on that engine).
///
/// # Errors
/// When the engine cannot be asked.
pub async fn has_current(docker: &Docker, tag: &str) -> Result<bool, SandboxError> {
    let inspect = match docker.inspect_image(tag).await {
        Ok(inspect) => inspect,
        Err(error) if status_of(&error) == Some(404) => return Ok(false),
        Err(error) => return Err(super::docker::engine_error(&error)),
    };
    let Some(recipe) = RECIPES.iter().find(|r| r.tag == tag) else {
        return Ok(true);
    };
    let label = inspect
        .config
        .and_then(|c| c.labels)
        .and_then(|mut labels| labels.remove(RECIPE_LABEL));
    Ok(image::is_current(recipe, label.as_deref()))
}

/// Streams `tag` from one engine to another (`docker save | docker load` through the Engine
/// API); returns how many bytes went.
///
/// # Errors
/// When either engine fails; the message names both.
pub async fn copy_image(from: &Peer, to: &Peer, tag: &str) -> Result<u64, SandboxError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(8);
    let source = from.docker.clone();
    let owned = tag.to_owned();
    let sent = tokio::spawn(async move {
        let mut total = 0u64;
        let mut export = std::pin::pin!(source.export_image(&owned));
        while let Some(chunk) = export.next().await {
            match chunk {
                Ok(bytes) => {
                    total += bytes.len() as u64;
                    if tx.send(Ok(bytes)).await.is_err() {
                        return Err(None);
                    }
                }
                Err(error) => {
                    let message = engine_message(&error);
                    let _ = tx.send(Err(std::io::Error::other(message.clone()))).await;
                    return Err(Some(message));
                }
            }
        }
        Ok(total)
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let options = bollard::query_parameters::ImportImageOptionsBuilder::new()
        .quiet(true)
        .build();
    let mut load = std::pin::pin!(to.docker.import_image_stream(options, body, None));
    let mut refused = None;
    while let Some(answer) = load.next().await {
        match answer {
            Ok(info) => {
                if let Some(error) = info.error_detail.and_then(|d| d.message) {
                    refused = Some(error);
                }
            }
            Err(error) => refused = Some(engine_message(&error)),
        }
    }
    let exported = sent
        .await
        .map_err(|e| SandboxError::Engine(format!("copying `{tag}`: {e}")))?;
    if let Err(Some(message)) = &exported {
        return Err(SandboxError::Engine(format!(
            "cannot read image `{tag}` from engine `{}`: {message}",
            from.name
        )));
    }
    if let Some(message) = refused {
        return Err(SandboxError::Engine(format!(
            "engine `{}` did not load image `{tag}` from engine `{}`: {message}",
            to.name, from.name
        )));
    }
    exported.map_err(|_| {
        SandboxError::Engine(format!(
            "engine `{}` stopped reading image `{tag}`",
            to.name
        ))
    })
}
