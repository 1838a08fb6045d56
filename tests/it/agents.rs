//! The agent adapters inside the runner, against the scripted in-memory sandbox (no Docker):
//! what each agent is given (argv, environment, files, which secrets), how usage is summed,
//! how budgets stop it and what the run does then, and when a provider failure is retried.
//! The real CLIs in their real containers are in `agents_e2e`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use maxions::agent::AGENT_HOME;
use maxions::config::load::load_task;
use maxions::runner::{RunOptions, RunResult, RunStatus, StepStatus, run};
use maxions::sandbox::ExecRequest;
use tokio_util::sync::CancellationToken;

use crate::support::events::Events;
use crate::support::scripted::{Call, Reply, Scripted};

const LLM_KEY: &str = "llm-key-value-5e1a9c";
const OTHER_KEY: &str = "other-secret-value-0b7d2";

/// A project whose blueprint has `agent` (YAML, indented two spaces) and `steps`.
fn project(agent: &str, steps: &str) -> tempfile::TempDir {
    let blueprint = format!(
        "name: agents\nsandbox:\n  network: allowlist\n  allow: [\"llm.test:8080\", api.anthropic.com, api.openai.com]\nagent:\n{agent}steps:\n{steps}"
    );
    crate::support::tree(&[
        (
            "maxions.yaml",
            "secrets:\n  LLM_KEY: { env: T_LLM_KEY }\n  OTHER_KEY: { env: T_OTHER_KEY }\n",
        ),
        ("blueprints/agents.yaml", &blueprint),
        (
            "tasks/t.yaml",
            "task: Add a greeting.\nrepo: https://example.invalid/o/r.git\nblueprint: agents\nbase: main\n",
        ),
    ])
}

async fn go(dir: &tempfile::TempDir, engine: &Scripted) -> (RunResult, Events) {
    let loaded = load_task(&dir.path().join("tasks/t.yaml"), None)
        .unwrap_or_else(|v| panic!("{:#?}", v.diagnostics));
    let mut options = RunOptions::new(engine, "agents-run");
    options.env = Arc::new(|name| match name {
        "T_LLM_KEY" => Some(LLM_KEY.to_owned()),
        "T_OTHER_KEY" => Some(OTHER_KEY.to_owned()),
        _ => None,
    });
    let events = Events::default();
    let result = run(&loaded, options, &events, CancellationToken::new()).await;
    (result, events)
}

fn is_home(request: &ExecRequest) -> bool {
    request.argv.last().is_some_and(|a| a.contains(AGENT_HOME))
}

fn usage_line(input: u64, output: u64, cost: f64) -> String {
    format!(
        "{{\"type\":\"usage\",\"input_tokens\":{input},\"output_tokens\":{output},\"cost_usd\":{cost}}}\n"
    )
}

const COMMAND_AGENT: &str = "  kind: command\n  command: [my-agent]\n";

#[tokio::test]
async fn a_token_budget_stops_the_agent_and_fails_the_run_by_default() {
    let dir = project(
        &format!("{COMMAND_AGENT}  budget: {{ max_tokens: 1000 }}\n"),
        "  - { id: implement, agent: \"go\" }\n  - { id: after, run: \"after\" }\n",
    );
    let engine = Scripted::new(|request| {
        if request.argv[0] == "my-agent" {
            Reply::ok()
                .stdout(&usage_line(500, 100, 0.0))
                .stdout(&usage_line(500, 100, 0.0))
        } else {
            Reply::ok()
        }
    });
    let (result, events) = go(&dir, &engine).await;
    assert_eq!(
        result.status,
        RunStatus::BudgetExceeded,
        "{:?}",
        result.reason
    );
    let reason = result.reason.clone().unwrap();
    assert!(
        reason.contains("1200 tokens") && reason.contains("max_tokens"),
        "{reason}"
    );
    assert_eq!(result.steps[0].status, StepStatus::BudgetExceeded);
    assert_eq!(result.steps.len(), 1, "no step runs after the stop");
    assert_eq!(result.usage.unwrap().total_tokens(), 1200);
    let stop = events.of("budget_exceeded");
    assert_eq!(stop.len(), 1);
    assert_eq!(stop[0]["limit"], "max_tokens");
    assert!(
        engine
            .execs()
            .iter()
            .all(|r| r.argv.last().is_none_or(|a| a != "after"))
    );
}

#[tokio::test]
async fn after_a_budget_stop_draft_pr_runs_the_checks_once_and_opens_a_draft_that_says_so() {
    let dir = project(
        &format!("{COMMAND_AGENT}  budget: {{ max_cost_usd: 0.5, on_exceeded: draft_pr }}\n"),
        r#"  - { id: implement, agent: "go" }
  - id: checks
    check:
      - { id: lint, run: "lint" }
    fix: { max_rounds: 2, agent: "fix" }
  - id: describe
    agent: "describe"
    outputs: { title: /tmp/title.txt }
  - id: pr
    pull_request: { title: "{{ steps.describe.title }}", body: "Agent's body." }
"#,
    );
    let agents = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&agents);
    let engine = Scripted::new(move |request| match request.argv[0].as_str() {
        "my-agent" => {
            counted.fetch_add(1, Ordering::SeqCst);
            Reply::ok().stdout(&usage_line(10, 10, 0.75))
        }
        _ if request.argv.last().is_some_and(|a| a == "lint") => Reply::exit(1),
        _ => Reply::ok(),
    });
    let (result, events) = go(&dir, &engine).await;
    assert_eq!(
        result.status,
        RunStatus::BudgetExceeded,
        "{:?}",
        result.reason
    );
    assert_eq!(
        agents.load(Ordering::SeqCst),
        1,
        "no fix round, no describe"
    );
    let statuses: Vec<(&str, StepStatus)> = result
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("implement", StepStatus::BudgetExceeded),
            ("checks", StepStatus::Failed),
            ("describe", StepStatus::Skipped),
            ("pr", StepStatus::Succeeded),
        ]
    );
    let pr = result.pull_request.expect("the draft is recorded");
    assert!(pr.draft);
    assert!(
        pr.title
            .starts_with("maxions (unfinished): Add a greeting."),
        "{}",
        pr.title
    );
    assert!(pr.body.starts_with("Agent's body."), "{}", pr.body);
    assert!(pr.body.contains("budget.max_cost_usd"), "{}", pr.body);
    assert!(
        pr.body.contains("These checks still fail: `lint`"),
        "{}",
        pr.body
    );
    assert_eq!(events.of("pr_not_opened")[0]["draft"], true);
}

#[tokio::test]
async fn usage_is_summed_per_step_and_per_run_with_usage_events() {
    let dir = project(
        COMMAND_AGENT,
        "  - { id: one, agent: \"one\" }\n  - { id: two, agent: \"two\" }\n",
    );
    let engine = Scripted::new(|request| {
        if request.argv[0] == "my-agent" {
            Reply::ok()
                .stdout("working\n")
                .stdout(&usage_line(100, 10, 0.25))
        } else {
            Reply::ok()
        }
    });
    let (result, events) = go(&dir, &engine).await;
    assert_eq!(result.status, RunStatus::Succeeded, "{:?}", result.reason);
    for step in &result.steps {
        let usage = step.usage.expect("each agent step has its usage");
        assert_eq!(usage.total_tokens(), 110);
        assert_eq!(usage.cost_usd, Some(0.25));
    }
    let run = result.usage.unwrap();
    assert_eq!(run.total_tokens(), 220);
    assert_eq!(run.cost_usd, Some(0.5));
    let last = events.of("usage").pop().unwrap();
    assert_eq!(last["step"], "two");
    assert_eq!(last["run_usage"]["input_tokens"], 200);
    // A command agent's other lines are its output, as before.
    assert!(
        events
            .of("output")
            .iter()
            .any(|o| o["text"].as_str().unwrap().contains("working"))
    );
}

const PI_PROVIDER: &str = "  kind: pi\n  model: fake-model\n  provider: { base_url: \"http://llm.test:8080/v1\", key: LLM_KEY }\n  prices: { input: 3, output: 15 }\n  instructions: \"Use tabs.\"\n";

fn pi_message(stop: &str, error: Option<&str>, input: u64) -> String {
    let error = error.map_or(String::new(), |e| format!(",\"errorMessage\":\"{e}\""));
    format!(
        "{{\"type\":\"message_end\",\"message\":{{\"role\":\"assistant\",\"content\":[{{\"type\":\"text\",\"text\":\"ok\"}}],\"stopReason\":\"{stop}\"{error},\"usage\":{{\"input\":{input},\"output\":5,\"cacheRead\":0,\"cacheWrite\":0,\"cost\":{{\"total\":0.001}}}}}}}}\n"
    )
}

#[tokio::test]
async fn pi_gets_its_config_its_key_by_name_and_the_prompt_as_one_argument() {
    let dir = project(
        PI_PROVIDER,
        "  - { id: implement, agent: \"Say $(whoami) {{ task }}\", secrets: [OTHER_KEY] }\n",
    );
    let engine = Scripted::new(|request| {
        if request.argv[0] == "pi" {
            Reply::ok().stdout(&pi_message("stop", None, 10))
        } else {
            Reply::ok()
        }
    });
    let (result, _) = go(&dir, &engine).await;
    assert_eq!(result.status, RunStatus::Succeeded, "{:?}", result.reason);
    let execs = engine.execs();
    let pi = execs.iter().find(|r| r.argv[0] == "pi").unwrap();
    assert_eq!(
        pi.argv.last().unwrap(),
        "Say $(whoami) Add a greeting.",
        "the prompt is one argument, never run by a shell"
    );
    for flag in ["--mode", "json", "-p", "--no-session", "--no-extensions"] {
        assert!(pi.argv.iter().any(|a| a == flag), "{flag} in {:?}", pi.argv);
    }
    let env = |name: &str| {
        pi.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        env("PI_CODING_AGENT_DIR"),
        Some(&*format!("{AGENT_HOME}/pi"))
    );
    assert_eq!(env("CI"), Some("1"));
    assert_eq!(env("GIT_TERMINAL_PROMPT"), Some("0"));
    assert_eq!(env("PAGER"), Some("cat"));
    assert!(pi.stdin.is_none(), "stdin is at end-of-file");
    let mut secrets: Vec<&str> = pi.secrets.iter().map(|s| s.name()).collect();
    secrets.sort_unstable();
    assert_eq!(secrets, ["LLM_KEY", "OTHER_KEY"]);
    // The files: the provider names the key's variable, never its value.
    let written: Vec<String> = engine
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Write(path) => Some(path),
            _ => None,
        })
        .collect();
    assert!(
        written.contains(&format!("{AGENT_HOME}/pi/models.json")),
        "{written:?}"
    );
    assert!(
        written.contains(&format!("{AGENT_HOME}/pi/instructions.md")),
        "{written:?}"
    );
    // The home is made before the agent and removed after it.
    let homes: Vec<usize> = execs
        .iter()
        .enumerate()
        .filter(|(_, r)| is_home(r))
        .map(|(i, _)| i)
        .collect();
    let at = execs.iter().position(|r| r.argv[0] == "pi").unwrap();
    assert_eq!(homes.len(), 2);
    assert!(homes[0] < at && homes[1] > at);
    assert!(
        execs[homes[1]]
            .argv
            .last()
            .unwrap()
            .starts_with("chmod -R u+rwx")
    );
    assert_eq!(result.usage.unwrap().total_tokens(), 15);
}

#[tokio::test]
async fn a_provider_failure_before_any_tool_is_retried_then_succeeds() {
    let dir = project(PI_PROVIDER, "  - { id: implement, agent: \"go\" }\n");
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let engine = Scripted::new(move |request| {
        if request.argv[0] != "pi" {
            return Reply::ok();
        }
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::ok().stdout(&pi_message("error", Some("429 Too Many Requests"), 0))
        } else {
            Reply::ok().stdout(&pi_message("stop", None, 10))
        }
    });
    let (result, events) = go(&dir, &engine).await;
    assert_eq!(result.status, RunStatus::Succeeded, "{:?}", result.reason);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let retry = events.of("agent_retry");
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0]["attempt"], 2);
    assert!(retry[0]["reason"].as_str().unwrap().contains("429"));
}

#[tokio::test]
async fn a_provider_failure_after_a_tool_call_is_not_retried_and_fails_clearly() {
    let dir = project(
        &format!("{PI_PROVIDER}  retries: 3\n"),
        "  - { id: implement, agent: \"go\" }\n",
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let engine = Scripted::new(move |request| {
        if request.argv[0] != "pi" {
            return Reply::ok();
        }
        seen.fetch_add(1, Ordering::SeqCst);
        Reply::ok()
            .stdout("{\"type\":\"tool_execution_start\",\"toolName\":\"bash\",\"args\":{\"command\":\"touch x\"}}\n")
            .stdout(&pi_message("error", Some("500 Internal Server Error"), 0))
    });
    let (result, events) = go(&dir, &engine).await;
    assert_eq!(result.status, RunStatus::Failed);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "it may have changed something"
    );
    assert!(events.of("agent_retry").is_empty());
    let reason = result.reason.unwrap();
    assert!(
        reason.contains("pi stopped: 500 Internal Server Error"),
        "{reason}"
    );
    assert_eq!(events.of("agent")[0]["activity"], "tool_call");
}

#[tokio::test]
async fn claude_gets_the_provider_key_as_anthropic_api_key_and_nothing_else() {
    let dir = project(
        "  kind: claude\n  model: claude-test\n  provider: { base_url: \"http://llm.test:8080\", key: LLM_KEY }\n",
        "  - { id: implement, agent: \"go\" }\n",
    );
    let engine = Scripted::new(|request| {
        if request.argv[0] == "claude" {
            Reply::ok().stdout(
                "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"done\",\"total_cost_usd\":0.01,\"usage\":{\"input_tokens\":7,\"output_tokens\":3}}\n",
            )
        } else {
            Reply::ok()
        }
    });
    let (result, _) = go(&dir, &engine).await;
    assert_eq!(result.status, RunStatus::Succeeded, "{:?}", result.reason);
    let execs = engine.execs();
    let claude = execs.iter().find(|r| r.argv[0] == "claude").unwrap();
    let secrets: Vec<(&str, &str)> = claude
        .secrets
        .iter()
        .map(|s| (s.name(), s.expose()))
        .collect();
    assert!(
        secrets.contains(&("ANTHROPIC_API_KEY", LLM_KEY)),
        "{secrets:?}"
    );
    assert!(secrets.iter().all(|(_, v)| *v != OTHER_KEY));
    assert!(
        claude
            .env
            .iter()
            .any(|(k, v)| k == "ANTHROPIC_BASE_URL" && v == "http://llm.test:8080")
    );
    assert!(
        claude
            .env
            .iter()
            .any(|(k, v)| k == "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC" && v == "1")
    );
    let usage = result.usage.unwrap();
    assert_eq!((usage.total_tokens(), usage.cost_usd), (10, Some(0.01)));
}

#[tokio::test]
async fn codex_reconnecting_for_ever_is_stopped_as_a_provider_failure() {
    let dir = project(
        "  kind: codex\n  model: gpt-test\n  provider: { base_url: \"http://llm.test:8080/v1\", key: LLM_KEY }\n  retries: 0\n",
        "  - { id: implement, agent: \"go\" }\n",
    );
    let engine = Scripted::new(|request| {
        if request.argv[0] != "codex" {
            return Reply::ok();
        }
        (1..=20).fold(Reply::ok(), |reply, n| {
            reply.stdout(&format!(
                "{{\"type\":\"error\",\"message\":\"Reconnecting... {n}/5 (waiting for network)\"}}\n"
            ))
        })
    });
    let (result, events) = go(&dir, &engine).await;
    assert_eq!(result.status, RunStatus::Failed);
    let reason = result.reason.unwrap();
    assert!(reason.contains("reconnected 8 times"), "{reason}");
    let finished = events.of("agent_finished");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["succeeded"], false);
}
