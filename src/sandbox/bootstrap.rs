//! A fresh machine made ready to run sandboxes: a Docker engine that answers (installed and
//! started when this process may: root, with apt), and the images maxions builds itself, built on
//! first use. `maxions demo`, `maxions run` and the integration tests all start here.
//!
//! The engine script ships inside the binary, so none of this needs the repository.

use std::fs::File;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::image::{self, ImageError, Outcome, RECIPES, is_root, which};
use super::{DockerEngine, SandboxError};

/// `scripts/docker-engine.sh`: installs docker.io and debootstrap when missing, starts dockerd
/// detached (setsid, logging to a file) and waits for `docker info`.
const ENGINE_SCRIPT: &str = include_str!("../../scripts/docker-engine.sh");

/// Where progress goes: one line per thing being done, for a person to read.
#[derive(Clone)]
pub struct Progress(Arc<dyn Fn(&str) + Send + Sync>);

impl Progress {
    pub fn new(say: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(say))
    }

    /// Says nothing (`--quiet`).
    #[must_use]
    pub fn silent() -> Self {
        Self::new(|_| {})
    }

    pub fn say(&self, line: &str) {
        (self.0)(line);
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// Why the machine could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("no Docker engine answers ({reason}); {advice}")]
    NoEngine { reason: String, advice: String },
    #[error("could not start a Docker engine:\n{0}")]
    EngineStart(String),
    #[error("cannot look for image {tag} in the engine: {detail}")]
    Inspect { tag: String, detail: String },
    #[error("cannot build {tag}: {source}")]
    Image {
        tag: String,
        #[source]
        source: ImageError,
    },
    #[error("cannot take the image build lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An engine that answers: the one at `DOCKER_HOST` or the local socket; when none answers and
/// this process is root with no `DOCKER_HOST`, Debian's docker.io is installed if missing and
/// dockerd started detached (it outlives maxions, like a service would).
///
/// # Errors
/// [`BootstrapError::NoEngine`] saying what to do when no engine can be started from here,
/// [`BootstrapError::EngineStart`] with the end of the engine's log when starting failed.
pub async fn ensure_engine(progress: &Progress) -> Result<DockerEngine, BootstrapError> {
    let reason = match DockerEngine::connect().await {
        Ok(engine) => return Ok(engine),
        // The bare reason: the advice below replaces the error's own.
        Err(SandboxError::EngineUnreachable(reason)) => reason,
        Err(error) => error.to_string(),
    };
    let no_engine = |advice: &str| BootstrapError::NoEngine {
        reason: reason.clone(),
        advice: advice.to_owned(),
    };
    if let Some(host) = std::env::var_os("DOCKER_HOST").filter(|h| !h.is_empty()) {
        return Err(no_engine(&format!(
            "DOCKER_HOST={} is set, so maxions does not start a local engine: start that one, or unset DOCKER_HOST",
            host.to_string_lossy()
        )));
    }
    if reason.contains("Permission denied") {
        return Err(no_engine(
            "an engine runs but this user may not use its socket: add the user to the `docker` group (and log in again), or run as root",
        ));
    }
    if !is_root() {
        return Err(no_engine(
            "only root can install and start one: start dockerd (e.g. `sudo systemctl start docker`), run this once as root, or set DOCKER_HOST; your user needs access to /var/run/docker.sock (the `docker` group)",
        ));
    }
    if which("dockerd").is_none() && which("apt-get").is_none() {
        return Err(no_engine(
            "this machine has neither dockerd nor apt-get: install Docker Engine for your system and start it",
        ));
    }
    progress.say("no Docker engine answers: starting one (installing docker.io first if needed)");
    run_engine_script(progress).await?;
    DockerEngine::connect()
        .await
        .map_err(|e| BootstrapError::EngineStart(e.to_string()))
}

/// Makes each of `images` ready with [`ensure_image`]: those maxions builds are built when missing
/// or stale, the others left alone.
///
/// # Errors
/// When the engine cannot be asked, the lock cannot be taken, or a build fails.
pub async fn ensure_images(
    engine: &DockerEngine,
    images: &[&str],
    progress: &Progress,
) -> Result<(), BootstrapError> {
    for tag in images {
        ensure_image(engine, tag, progress).await?;
    }
    Ok(())
}

/// Before a sandbox is created from `tag`: when it is one of maxions' images ([`RECIPES`]) and
/// is missing or stale (its recipe label is another recipe's: an older maxions built it), it is
/// built, after the images it starts `FROM` when they need it too, saying what it does on
/// `progress` (a first build takes about a minute per image). A present, current image costs one
/// inspect through the Engine API; an image maxions does not build is left alone
/// ([`Outcome::NotOurs`]: a run that needs a missing one fails with the engine's own error).
/// Builds are serialised across processes by a file lock, so test binaries or runs starting
/// together build each image once.
///
/// # Errors
/// When the engine cannot be asked, the lock cannot be taken, or a build fails.
pub async fn ensure_image(
    engine: &DockerEngine,
    tag: &str,
    progress: &Progress,
) -> Result<Outcome, BootstrapError> {
    let Some(recipe) = RECIPES.iter().find(|r| r.tag == tag) else {
        return Ok(Outcome::NotOurs);
    };
    let label = match recipe_label(engine, tag).await? {
        Some(label) if image::is_current(recipe, Some(&label)) => return Ok(Outcome::Cached),
        Some(_) => format!("{tag} was built from another recipe: rebuilding it"),
        None => format!("{tag} is missing: building it (first use only)"),
    };
    if recipe_label(engine, image::BASE_IMAGE).await?.is_none()
        && which("debootstrap").is_none()
        && is_root()
    {
        // The script installs what the images need (and returns at once: the engine answers).
        progress.say("installing debootstrap to build the Debian base image");
        run_engine_script(progress).await?;
    }
    let lock = lock_path();
    let progress = progress.clone();
    let owned = tag.to_owned();
    let built = tokio::task::spawn_blocking(move || -> Result<Outcome, BootstrapError> {
        let _held = hold(&lock, &progress)?;
        progress.say(&label);
        // Checked again under the lock: another process may have built it meanwhile.
        let mut say = |line: &str| progress.say(line);
        image::ensure(&owned, &mut say).map_err(|source| BootstrapError::Image {
            tag: owned.clone(),
            source,
        })
    });
    built.await.map_err(|e| BootstrapError::Image {
        tag: tag.to_owned(),
        source: ImageError::Io("the build task ended".into(), std::io::Error::other(e)),
    })?
}

/// The recipe label of a local image: `Some("")` for an image without one, `None` when absent.
async fn recipe_label(engine: &DockerEngine, tag: &str) -> Result<Option<String>, BootstrapError> {
    match engine.client().inspect_image(tag).await {
        Ok(inspect) => Ok(Some(
            inspect
                .config
                .and_then(|c| c.labels)
                .and_then(|mut labels| labels.remove(image::RECIPE_LABEL))
                .unwrap_or_default(),
        )),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(error) => Err(BootstrapError::Inspect {
            tag: tag.to_owned(),
            detail: error.to_string(),
        }),
    }
}

/// Runs the embedded engine script, passing its lines on as progress.
async fn run_engine_script(progress: &Progress) -> Result<(), BootstrapError> {
    let mut child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(ENGINE_SCRIPT)
        .arg("docker-engine")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BootstrapError::EngineStart(format!("cannot run bash: {e}")))?;
    let mut said = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            progress.say(&line);
            said.push(line);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| BootstrapError::EngineStart(format!("waiting for the engine script: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        let tail = said[said.len().saturating_sub(20)..].join("\n");
        Err(BootstrapError::EngineStart(format!(
            "the engine script failed ({status}):\n{tail}"
        )))
    }
}

/// The build lock: per user, in their cache directory rather than a shared `/tmp` where another
/// user could hold or replace it.
fn lock_path() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("maxions").join("image-build.lock")
}

/// Waits for the build lock, saying so when another process holds it. Released on drop (and by
/// the kernel when the process dies).
fn hold(path: &std::path::Path, progress: &Progress) -> Result<File, BootstrapError> {
    let error = |source| BootstrapError::Lock {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(error)?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            progress.say("another maxions is building images: waiting for it");
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(error(e)),
    }
    file.lock().map_err(error)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_lock_is_not_in_a_shared_directory_when_home_is_known() {
        if std::env::var_os("HOME").is_some() || std::env::var_os("XDG_CACHE_HOME").is_some() {
            assert!(!lock_path().starts_with(std::env::temp_dir()));
        }
        assert!(lock_path().ends_with("maxions/image-build.lock"));
    }

    #[test]
    fn the_lock_excludes_a_second_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/lock");
        let first = hold(&path, &Progress::silent()).unwrap();
        let second = File::options().write(true).open(&path).unwrap();
        assert!(matches!(
            second.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(first);
        second.try_lock().unwrap();
    }
}
