//! Reaching the real Docker engine from tests. The first test to ask sets the machine up the way
//! `maxions demo` does (engine started when none answers and this is root, missing images built
//! under a file lock), once per test process. Tests that need it fail with a clear message when
//! that is impossible, unless `MAXIONS_SKIP_DOCKER=1` says to skip them (and then they say so):
//! they never pass silently.

use maxions::sandbox::bootstrap::{self, Progress};
use maxions::sandbox::image::{BASE_IMAGE, SANDBOX_IMAGE};
use maxions::sandbox::{ContainerSpec, DockerEngine, Engine, Sandbox};
use tokio::sync::OnceCell;

/// The outcome of setting the machine up, shared by every test of this process.
static READY: OnceCell<Result<(), String>> = OnceCell::const_new();

/// An engine whose containers carry the instance label `test-<name>`, so that orphan removal in
/// one test never touches another's containers. `None` only when skipping was asked for.
pub async fn engine(name: &str) -> Option<DockerEngine> {
    let skip = std::env::var_os("MAXIONS_SKIP_DOCKER").is_some_and(|v| v == "1");
    if skip && let Err(error) = DockerEngine::connect().await {
        // Skipping asked for: no engine is installed or started on the tests' behalf.
        eprintln!("SKIPPED {name}: no Docker engine ({error})");
        return None;
    }
    let ready = READY.get_or_init(set_up).await;
    if let Err(error) = ready {
        panic!(
            "{error}\n(this test needs a Docker engine and the maxions images; or set MAXIONS_SKIP_DOCKER=1 to skip the Docker tests and say so)"
        );
    }
    // Each test its own client: a connection belongs to the runtime of the test that made it.
    match DockerEngine::connect().await {
        Ok(engine) => Some(engine.with_instance(format!("test-{name}"))),
        Err(error) => panic!("the Docker engine stopped answering: {error}"),
    }
}

async fn set_up() -> Result<(), String> {
    let progress = Progress::new(|line| eprintln!("test setup: {line}"));
    let engine = bootstrap::ensure_engine(&progress)
        .await
        .map_err(|e| e.to_string())?;
    bootstrap::ensure_images(&engine, &[BASE_IMAGE, SANDBOX_IMAGE], &progress)
        .await
        .map_err(|e| e.to_string())
}

/// Makes sure the image of agent `kind` (`pi`, `claude`, `codex`) is present and current,
/// building it (once per test process) if not.
pub async fn agent_image(kind: &str) {
    static BUILT: tokio::sync::Mutex<Vec<String>> = tokio::sync::Mutex::const_new(Vec::new());
    let mut built = BUILT.lock().await;
    if built.iter().any(|k| k == kind) {
        return;
    }
    let kind_value: maxions::config::blueprint::AgentKind =
        serde_json::from_value(serde_json::json!(kind)).expect("an agent kind");
    let tag = maxions::agent::image_for(kind_value).expect("a real agent");
    let progress = Progress::new(|line| eprintln!("test setup: {line}"));
    let engine = bootstrap::ensure_engine(&progress)
        .await
        .expect("a Docker engine");
    bootstrap::ensure_images(&engine, &[tag], &progress)
        .await
        .unwrap_or_else(|e| panic!("cannot build {tag}: {e}"));
    built.push(kind.to_owned());
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

/// [`engine`] for tests that are not async: whether Docker is there (set up on first use);
/// `false` only when `MAXIONS_SKIP_DOCKER=1` asks to skip, which it then says.
pub fn available(name: &str) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(engine(name)).is_some()
}
