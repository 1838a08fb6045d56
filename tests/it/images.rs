//! The agent images, as a run gets them: built on first use (or found current), labelled with
//! the agent and its pinned version, and answering in a hardened sandbox as its non-root user,
//! with Node only where the agent needs it. `.ci/run` builds them before the tests, so this is
//! quick there; on a machine without them the first test builds them (a minute or two).

use std::time::Duration;

use maxions::sandbox::bootstrap::{self, Progress};
use maxions::sandbox::image::{
    AGENT_LABEL, AGENT_PACKAGE_LABEL, AGENT_VERSION_LABEL, NODE_VERSION, NODE_VERSION_LABEL,
    Outcome, RECIPE_LABEL, SANDBOX_IMAGE, agent_recipe,
};
use maxions::sandbox::{ContainerSpec, DockerEngine, ExecRequest, OutputStream};
use tokio_util::sync::CancellationToken;

use crate::support::docker::{Guard, engine, unique};

/// Builds the agent's image unless it is current, then checks it from the outside (labels) and
/// from the inside (user, PATH, `--version`).
async fn agent_image_is_ready(kind: &str) {
    let Some(engine) = engine(&format!("image-{kind}")).await else {
        return;
    };
    let recipe = agent_recipe(kind).expect("an image for each agent kind");
    let agent = recipe.agent().expect("an agent image");
    let progress = Progress::new(|line| eprintln!("test setup: {line}"));
    let first = bootstrap::ensure_image(&engine, recipe.tag, &progress)
        .await
        .expect("the image builds");
    assert!(
        matches!(first, Outcome::Built | Outcome::Cached),
        "{first:?}"
    );
    let again = bootstrap::ensure_image(&engine, recipe.tag, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(again, Outcome::Cached, "a current image is not rebuilt");

    let labels = labels(&engine, recipe.tag).await;
    let label = |key: &str| labels.get(key).map(String::as_str);
    assert_eq!(label(RECIPE_LABEL), Some(recipe.id().as_str()));
    assert_eq!(label(AGENT_LABEL), Some(kind));
    assert_eq!(label(AGENT_PACKAGE_LABEL), Some(agent.package));
    assert_eq!(label(AGENT_VERSION_LABEL), Some(agent.version));
    assert_eq!(label(NODE_VERSION_LABEL), agent.node);

    // maxions' own sandbox: read-only root, /tmp tmpfs, no capabilities, no network.
    let sandbox = Guard::create(
        &engine,
        &ContainerSpec::new(&unique(&format!("image-{kind}")), recipe.tag),
    )
    .await;
    // The last line of `--version` (pi prints it on stderr; codex may warn before it).
    let script = format!(
        "id -u; command -v {kind}; {kind} --version 2>&1 | tail -n 1; node --version 2>/dev/null || echo no-node"
    );
    let mut stdout = Vec::new();
    let mut sink = |which: OutputStream, bytes: &[u8]| {
        if which == OutputStream::Stdout {
            stdout.extend_from_slice(bytes);
        }
    };
    let outcome = sandbox
        .exec(
            &ExecRequest::shell(script).timeout(Duration::from_secs(60)),
            &mut sink,
            &CancellationToken::new(),
        )
        .await
        .expect("the exec runs");
    let text = String::from_utf8_lossy(&stdout).into_owned();
    assert!(outcome.status.success(), "{outcome:?}\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "1000", "runs as the sandbox's user, not root");
    assert!(lines[1].starts_with('/'), "`{kind}` is on PATH: {text}");
    assert!(
        lines[2].contains(agent.version),
        "`{kind} --version` answers {}: {text}",
        agent.version
    );
    match agent.node {
        Some(_) => assert_eq!(lines[3], format!("v{NODE_VERSION}"), "{text}"),
        None => assert_eq!(lines[3], "no-node", "a native agent needs no Node: {text}"),
    }
}

async fn labels(engine: &DockerEngine, tag: &str) -> std::collections::HashMap<String, String> {
    engine
        .client()
        .inspect_image(tag)
        .await
        .expect("the image is there")
        .config
        .and_then(|c| c.labels)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pi_image_holds_the_pinned_pi_on_node_22() {
    agent_image_is_ready("pi").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_image_holds_the_pinned_claude_code_without_node() {
    agent_image_is_ready("claude").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_image_holds_the_pinned_codex_without_node() {
    agent_image_is_ready("codex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_maxions_does_not_build_are_left_alone() {
    let Some(engine) = engine("image-foreign").await else {
        return;
    };
    let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = said.clone();
    let progress = Progress::new(move |line| log.lock().unwrap().push(line.to_owned()));
    for tag in ["maxions-test/absent:never", "debian:bookworm"] {
        let outcome = bootstrap::ensure_image(&engine, tag, &progress)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::NotOurs, "{tag}");
    }
    assert_eq!(
        bootstrap::ensure_image(&engine, SANDBOX_IMAGE, &progress)
            .await
            .unwrap(),
        Outcome::Cached
    );
    assert!(said.lock().unwrap().is_empty(), "{said:?}");
}
