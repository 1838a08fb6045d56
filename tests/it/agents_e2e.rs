//! Each real agent CLI in its real, hardened container, driven by the scripted LLM through
//! maxions' egress proxy (the proxy's resolver maps `llm.test` to the scripted server on
//! 127.0.0.1; nothing else resolves): implement → the check fails → a fix round → the check
//! passes → maxions commits, pushes and opens the pull request on the fake GitHub. Also: a
//! budget spent mid-run ends in a draft pull request that says so, a stalled provider is
//! killed by the idle timeout, and a host not on the list is refused and logged.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use maxions::config::load::load_task;
use maxions::forge::GitHub;
use maxions::runner::{RunOptions, RunResult, RunStatus, StepStatus, run};
use maxions::sandbox::DockerEngine;
use maxions::sandbox::egress::StaticResolver;
use tokio_util::sync::CancellationToken;

use crate::support::docker::{engine, unique};
use crate::support::events::Events;
use crate::support::git_http::GitServer;
use crate::support::github::{APP_ID, FakeGitHub, INSTALLATION, app_key};
use crate::support::llm::{ScriptedLlm, Turn};

const LLM_KEY: &str = "sk-scripted-e2e-6f1c2b9a8d7e";
const PAT: &str = "github_pat_11AGENTS0000123456789abcdefghij";
/// The name the agents are given for the model provider; only the test resolver knows it.
const LLM_HOST: &str = "llm.test";
/// What the check wants, and what the scripted agent writes only in its fix round.
const CHECK: &str = "cd /workspace/repo && grep -q hello greeting.txt";

#[derive(Clone, Copy)]
enum Kind {
    Pi,
    Claude,
    Codex,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pi => "pi",
            Kind::Claude => "claude",
            Kind::Codex => "codex",
        }
    }

    /// The `agent:` block for a scripted provider on `port`.
    fn agent(self, port: u16, budget: &str) -> String {
        let (model, base) = match self {
            Kind::Pi => ("fake-model", format!("http://{LLM_HOST}:{port}/v1")),
            Kind::Claude => ("claude-scripted", format!("http://{LLM_HOST}:{port}")),
            Kind::Codex => ("gpt-scripted", format!("http://{LLM_HOST}:{port}/v1")),
        };
        format!(
            "agent:\n  kind: {}\n  model: {model}\n  provider: {{ base_url: \"{base}\", key: LLM_KEY }}\n  prices: {{ input: 3, output: 15 }}\n  instructions: \"MAXIONS-E2E-INSTRUCTIONS\"\n  budget: {budget}\n",
            self.name()
        )
    }
}

struct World {
    fake: FakeGitHub,
    git: GitServer,
    llm: ScriptedLlm,
    url: String,
    dir: tempfile::TempDir,
}

impl World {
    fn new(llm: ScriptedLlm) -> Self {
        let fake = FakeGitHub::standard(PAT);
        let git = GitServer::start_with(fake.token_check());
        let url = git.create_repo("octo", "hello");
        let dir = crate::support::tree(&[(
            "maxions.yaml",
            "secrets:\n  LLM_KEY: { env: E2E_LLM_KEY }\n",
        )]);
        Self {
            fake,
            git,
            llm,
            url,
            dir,
        }
    }

    fn blueprint(&self, kind: Kind, budget: &str, pr: bool) -> String {
        let port = self.llm.addr().port();
        let pr = if pr {
            "  - { id: commit, commit: { message: \"Add a greeting\" } }\n  - { id: push, push: {} }\n  - { id: pr, pull_request: { title: \"Add a greeting\", body: \"Written by the agent.\" } }\n"
        } else {
            ""
        };
        format!(
            "name: e2e\nsandbox:\n  network: allowlist\n  allow: [\"{LLM_HOST}:{port}\"]\n  memory: 2g\n  timeout: 5m\n{}steps:\n  - {{ id: checkout, checkout: {{}} }}\n  - {{ id: implement, agent: \"{{{{ task }}}}\" }}\n  - id: checks\n    check:\n      - {{ id: greeting, run: \"{CHECK}\" }}\n    fix: {{ max_rounds: 2, agent: \"The check failed. Fix it.\" }}\n{pr}",
            kind.agent(port, budget)
        )
    }

    async fn go(&self, engine: &DockerEngine, kind: Kind, blueprint: &str) -> (RunResult, Events) {
        crate::support::write(self.dir.path(), "blueprints/e2e.yaml", blueprint);
        let task = serde_json::json!({
            "task": "Create greeting.txt saying hello.",
            "repo": self.url,
            "blueprint": "e2e",
            "base": "main",
        });
        crate::support::write(
            self.dir.path(),
            "tasks/greet.yaml",
            &serde_yaml::to_string(&task).unwrap(),
        );
        let loaded = load_task(&self.dir.path().join("tasks/greet.yaml"), None)
            .unwrap_or_else(|v| panic!("{:#?}", v.diagnostics));
        let forge = GitHub::with_app(
            &self.fake.base_url(),
            APP_ID,
            INSTALLATION,
            &app_key().private_pem,
        )
        .and_then(|f| f.with_web_url(&self.git.base_url()))
        .expect("forge");
        let mut options = RunOptions::new(engine, unique(&format!("e2e-{}", kind.name())));
        options.forge = Some(Arc::new(forge));
        options.env = Arc::new(|name| (name == "E2E_LLM_KEY").then(|| LLM_KEY.to_owned()));
        let events = Events::default();
        let result = run(&loaded, options, &events, CancellationToken::new()).await;
        (result, events)
    }

    fn assert_no_key_in(&self, events: &Events, result: &RunResult) {
        let text = format!(
            "{}\n{}",
            serde_json::to_string(&events.all()).unwrap(),
            serde_json::to_string(result).unwrap()
        );
        assert!(
            !text.contains(LLM_KEY),
            "the provider key leaked into the records"
        );
        for pull in self.fake.pulls() {
            assert!(!pull.body.contains(LLM_KEY));
        }
    }
}

/// A Docker engine whose egress proxies resolve only `llm.test`, to the scripted server.
async fn agent_engine(name: &str, kind: Kind) -> Option<DockerEngine> {
    let engine = engine(name).await?;
    crate::support::docker::agent_image(kind.name()).await;
    Some(engine.with_egress_to_loopback_for_tests(
        StaticResolver::new().with(LLM_HOST, [IpAddr::V4(Ipv4Addr::LOCALHOST)]),
    ))
}

/// The whole loop with one agent: two tool calls in `implement` (one writes the wrong greeting,
/// one tries a host not on the list), a fix round that writes the right one, then the PR.
async fn implement_fix_and_open_a_pull_request(kind: Kind) {
    let llm = ScriptedLlm::builder()
        .turn(Turn::shell(
            "echo MARK-ENV; env | sort; git remote -v; cat .git/config",
        ))
        .turn(Turn::shell("echo hi > greeting.txt"))
        .turn(Turn::shell(
            "curl -sS --max-time 10 http://evil.test/ || echo refused",
        ))
        .turn(Turn::text("I wrote greeting.txt."))
        .turn(Turn::shell("echo hello > greeting.txt"))
        .turn(Turn::text("Fixed."))
        .start();
    let world = World::new(llm);
    let Some(engine) = agent_engine(&format!("e2e-{}", kind.name()), kind).await else {
        return;
    };
    let blueprint = world.blueprint(kind, "{ idle_timeout: 2m }", true);
    let (result, events) = world.go(&engine, kind, &blueprint).await;

    assert_eq!(
        result.status,
        RunStatus::Succeeded,
        "{:?}\n{:#?}",
        result.reason,
        events.all()
    );
    assert_eq!(result.fix_rounds, 1);
    assert_eq!(
        world
            .git
            .file("octo", "hello", "maxions/greet", "greeting.txt")
            .as_deref(),
        Some("hello\n")
    );
    let pulls = world.fake.pulls();
    assert_eq!(pulls.len(), 1);
    assert!(!pulls[0].draft);

    // The agent really went through maxions' proxy, with its key, and was told where it runs.
    let requests = world.llm.model_requests();
    assert!(
        requests.len() >= 6,
        "{} model requests: {:#?}",
        requests.len(),
        requests
            .iter()
            .map(|r| (
                r.answer.clone(),
                r.last_message_text().chars().take(300).collect::<String>()
            ))
            .collect::<Vec<_>>()
    );
    // What the agent saw of its environment went back to the model: its own key is there, no
    // forge credential is (not in its environment, not in the repository's git config).
    let env = requests
        .iter()
        .map(|r| r.last_message_text())
        .find(|t| t.contains("MARK-ENV") && t.contains("PATH="))
        .expect("the env listing reached the model");
    assert!(
        env.contains(&format!("={LLM_KEY}")),
        "the agent lacks its own key"
    );
    let mut forge_tokens: Vec<String> = world
        .fake
        .minted_tokens()
        .into_iter()
        .map(|t| t.token)
        .collect();
    forge_tokens.push(PAT.to_owned());
    for token in &forge_tokens {
        assert!(
            !env.contains(token.as_str()),
            "a forge credential reached the agent"
        );
    }
    assert!(
        !env.contains("extraheader")
            && !env.contains("x-access-token")
            && !env.contains("@127.0.0.1"),
        "{env}"
    );
    assert!(requests.iter().all(|r| r.api_key() == Some(LLM_KEY)));
    let first = serde_json::to_string(&requests[0].body).unwrap();
    assert!(
        first.contains("running unattended inside maxions"),
        "no system prompt"
    );
    assert!(
        first.contains("MAXIONS-E2E-INSTRUCTIONS"),
        "no instructions"
    );
    let egress = events.of("egress");
    assert!(
        egress
            .iter()
            .any(|e| e["host"] == LLM_HOST && e["decision"] == "allowed"),
        "{egress:#?}"
    );
    let refused: Vec<_> = egress.iter().filter(|e| e["host"] == "evil.test").collect();
    assert!(!refused.is_empty(), "{egress:#?}");
    assert!(
        refused
            .iter()
            .all(|e| e["decision"] == "denied" && e["dialed"] == false)
    );

    // What it did and spent is in the log and the result.
    let activities: Vec<String> = events
        .of("agent")
        .iter()
        .map(|a| a["activity"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        activities.iter().any(|a| a == "tool_call"),
        "{activities:?}"
    );
    assert!(
        activities.iter().any(|a| a == "tool_result"),
        "{activities:?}"
    );
    let usage = result.usage.expect("usage");
    assert!(usage.total_tokens() >= 6 * 120, "{usage:?}");
    assert!(usage.cost_usd.is_some_and(|c| c > 0.0), "{usage:?}");
    assert!(
        result
            .steps
            .iter()
            .find(|s| s.id == "implement")
            .unwrap()
            .usage
            .is_some()
    );
    world.assert_no_key_in(&events, &result);

    // Figures for the record (`cargo test agents_e2e -- --nocapture`).
    let starts: Vec<u64> = events
        .of("agent_finished")
        .iter()
        .filter_map(|e| e["first_output_ms"].as_u64())
        .collect();
    assert_eq!(starts.len(), 2, "implement and one fix round");
    eprintln!(
        "FIGURES {}: run {} ms, inside the agent {} ms ({:.0}% outside), exec to first output {starts:?} ms",
        kind.name(),
        result.duration_ms,
        result.agent_ms,
        100.0 * (1.0 - result.agent_ms as f64 / result.duration_ms as f64),
    );
}

#[tokio::test]
async fn pi_implements_fixes_and_opens_a_pull_request() {
    implement_fix_and_open_a_pull_request(Kind::Pi).await;
}

#[tokio::test]
async fn claude_implements_fixes_and_opens_a_pull_request() {
    implement_fix_and_open_a_pull_request(Kind::Claude).await;
}

#[tokio::test]
async fn codex_implements_fixes_and_opens_a_pull_request() {
    implement_fix_and_open_a_pull_request(Kind::Codex).await;
}

#[tokio::test]
async fn a_spent_token_budget_ends_in_a_draft_pull_request_that_says_so() {
    // Each call reports 1000 tokens; the budget allows one: the second call stops the agent,
    // after the first wrote a (wrong) greeting.
    let llm = ScriptedLlm::builder()
        .turn(Turn::shell("echo hi > greeting.txt").tokens(900, 100))
        .turn(Turn::shell("echo more >> greeting.txt").tokens(900, 100))
        .turn(Turn::text("never reached").tokens(900, 100))
        .start();
    let world = World::new(llm);
    let Some(engine) = agent_engine("e2e-budget", Kind::Pi).await else {
        return;
    };
    let blueprint = world.blueprint(
        Kind::Pi,
        "{ max_tokens: 1500, on_exceeded: draft_pr }",
        true,
    );
    let (result, events) = world.go(&engine, Kind::Pi, &blueprint).await;

    assert_eq!(
        result.status,
        RunStatus::BudgetExceeded,
        "{:?}",
        result.reason
    );
    let implement = result.steps.iter().find(|s| s.id == "implement").unwrap();
    assert_eq!(implement.status, StepStatus::BudgetExceeded);
    assert_eq!(
        result.fix_rounds, 0,
        "no fix round after the budget is spent"
    );
    let stop = events.of("budget_exceeded");
    assert_eq!(stop.len(), 1);
    assert_eq!(stop[0]["limit"], "max_tokens");
    let pulls = world.fake.pulls();
    assert_eq!(pulls.len(), 1, "the draft is opened");
    assert!(pulls[0].draft);
    assert!(
        pulls[0].body.contains("maxions stopped the agent"),
        "{}",
        pulls[0].body
    );
    assert!(
        pulls[0].body.contains("`budget.max_tokens`"),
        "{}",
        pulls[0].body
    );
    assert!(
        pulls[0]
            .body
            .contains("These checks still fail: `greeting`"),
        "{}",
        pulls[0].body
    );
    // What the agent left is what the draft holds. The tool call that came with the answer
    // that spent the budget may or may not have run (it starts the moment that answer ends,
    // as the kill goes out), and on a loaded machine the request the agent makes right after
    // it can leave before the kill lands; but nothing after that one.
    let left = world
        .git
        .file("octo", "hello", "maxions/greet", "greeting.txt")
        .unwrap_or_default();
    assert!(left == "hi\n" || left == "hi\nmore\n", "{left:?}");
    let asked = world.llm.model_requests().len();
    assert!(
        asked == 2 || (asked == 3 && left == "hi\nmore\n"),
        "{asked} model calls (the agent left {left:?}): more than the one in flight when the budget was spent"
    );
    world.assert_no_key_in(&events, &result);
}

#[tokio::test]
async fn a_stalled_provider_is_killed_by_the_idle_timeout() {
    let llm = ScriptedLlm::builder().turn(Turn::stall()).start();
    let world = World::new(llm);
    let Some(engine) = agent_engine("e2e-stall", Kind::Pi).await else {
        return;
    };
    let blueprint = world.blueprint(Kind::Pi, "{ idle_timeout: 5s }", false);
    let started = std::time::Instant::now();
    let (result, events) = world.go(&engine, Kind::Pi, &blueprint).await;
    assert_eq!(
        result.status,
        RunStatus::BudgetExceeded,
        "{:?}",
        result.reason
    );
    let stop = events.of("budget_exceeded");
    assert_eq!(stop[0]["limit"], "idle_timeout");
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(world.llm.wait_for_requests(1, Duration::from_secs(1)));
}

#[tokio::test]
async fn a_rate_limited_provider_is_waited_for_and_the_run_goes_on() {
    let llm = ScriptedLlm::builder()
        .turn(Turn::rate_limited(1))
        .turn(Turn::shell("echo hello > greeting.txt"))
        .turn(Turn::text("Done."))
        .start();
    let world = World::new(llm);
    let Some(engine) = agent_engine("e2e-429", Kind::Pi).await else {
        return;
    };
    let blueprint = world.blueprint(Kind::Pi, "{ idle_timeout: 2m }", false);
    let (result, events) = world.go(&engine, Kind::Pi, &blueprint).await;
    assert_eq!(result.status, RunStatus::Succeeded, "{:?}", result.reason);
    let requests = world.llm.model_requests();
    assert!(requests.len() >= 3, "{}", requests.len());
    // The retry honoured `Retry-After: 1`.
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(900));
    assert!(
        events.of("agent_retry").is_empty(),
        "the agent's own retry was enough"
    );
}

#[tokio::test]
async fn a_failing_provider_is_retried_a_bounded_number_of_times_then_fails_clearly() {
    let llm = ScriptedLlm::builder().fallback(Turn::error(500)).start();
    let world = World::new(llm);
    let Some(engine) = agent_engine("e2e-500", Kind::Codex).await else {
        return;
    };
    let blueprint = world.blueprint(Kind::Codex, "{ idle_timeout: 2m }", false);
    let (result, events) = world.go(&engine, Kind::Codex, &blueprint).await;
    assert_eq!(result.status, RunStatus::Failed);
    let reason = result.reason.unwrap_or_default();
    assert!(
        reason.contains("step `implement` failed: Codex stopped:"),
        "{reason}"
    );
    let retries = events.of("agent_retry");
    assert_eq!(retries.len(), 1, "maxions runs the agent once more");
    // Codex retries each request twice and each stream twice: 9 calls per run of it.
    let requests = world.llm.model_requests().len();
    assert!(
        (2..=18).contains(&requests),
        "{requests} requests: the retries are not bounded"
    );
    let finished = events.of("agent_finished");
    assert_eq!(finished.len(), 2);
    assert!(finished.iter().all(|f| f["succeeded"] == false));
}
