//! Reaching the real Docker engine from tests. Tests that need it fail with a clear message when
//! no engine answers, unless `MAXIONS_SKIP_DOCKER=1` says to skip them (and then they say so):
//! they never pass silently.

use maxions::sandbox::image::SANDBOX_IMAGE;
use maxions::sandbox::{ContainerSpec, DockerEngine, Engine, Sandbox};

/// An engine whose containers carry the instance label `test-<name>`, so that orphan removal in
/// one test never touches another's containers. `None` only when skipping was asked for.
pub async fn engine(name: &str) -> Option<DockerEngine> {
    match DockerEngine::connect().await {
        Ok(engine) => {
            assert!(
                maxions::sandbox::image::exists(SANDBOX_IMAGE),
                "{SANDBOX_IMAGE} is missing: run `cargo run -- image build` (or .ci/run) first"
            );
            Some(engine.with_instance(format!("test-{name}")))
        }
        Err(error) if std::env::var_os("MAXIONS_SKIP_DOCKER").is_some_and(|v| v == "1") => {
            eprintln!("SKIPPED {name}: no Docker engine ({error})");
            None
        }
        Err(error) => panic!(
            "{error}\n(this test needs a Docker engine: run `scripts/docker-engine.sh`, or set MAXIONS_SKIP_DOCKER=1 to skip the Docker tests and say so)"
        ),
    }
}

/// A spec for the default image with a unique run id.
pub fn spec(name: &str) -> ContainerSpec {
    ContainerSpec::new(&unique(name), SANDBOX_IMAGE)
}

pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Destroys the sandbox when dropped, so a failing assertion leaks no container.
pub struct Guard(pub Option<Box<dyn Sandbox>>);

impl Guard {
    pub async fn create(engine: &DockerEngine, spec: &ContainerSpec) -> Self {
        Self(Some(engine.create(spec).await.expect("create the sandbox")))
    }
}

impl std::ops::Deref for Guard {
    type Target = dyn Sandbox;
    fn deref(&self) -> &Self::Target {
        self.0.as_deref().expect("not yet destroyed")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(sandbox) = self.0.take() {
            let id = sandbox.id().to_owned();
            // Blocking removal through the CLI: a Drop cannot await.
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v", &id])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
