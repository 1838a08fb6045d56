//! Budgets against a real container: an agent that keeps spending, one that hangs, one that
//! keeps working past its time. Each is stopped while it runs (not when it ends on its own),
//! with every process it started killed and the reason recorded.

use std::time::{Duration, Instant};

use maxions::config::load::load_task;
use maxions::runner::{RunOptions, RunResult, RunStatus, StepStatus, run};
use tokio_util::sync::CancellationToken;

use crate::support::docker::engine;
use crate::support::events::Events;

/// Runs a task whose command agent is `script` (sh), with `budget`, then a step that lists the
/// sandbox user's processes (none of the agent's may be left).
async fn go(name: &str, script: &str, budget: &str) -> Option<(RunResult, Events, Duration)> {
    let engine = engine(name).await?;
    let script: String = script.lines().map(|l| format!("      {l}\n")).collect();
    let blueprint = format!(
        "name: limits\nsandbox:\n  image: maxions/sandbox:latest\n  timeout: 2m\nagent:\n  kind: command\n  command:\n    - sh\n    - -c\n    - |\n{script}  budget: {budget}\nsteps:\n  - {{ id: work, agent: \"go\" }}\n  - id: after\n    run: \"ps -eo user,args | grep -v -e 'ps -eo' -e grep | grep sandbox || true\"\n"
    );
    let dir = crate::support::tree(&[
        ("blueprints/limits.yaml", &blueprint),
        (
            "tasks/t.yaml",
            "task: Spend.\nrepo: https://example.invalid/o/r.git\nblueprint: limits\nbase: main\n",
        ),
    ]);
    let loaded = load_task(&dir.path().join("tasks/t.yaml"), None)
        .unwrap_or_else(|v| panic!("{:#?}", v.diagnostics));
    let events = Events::default();
    let started = Instant::now();
    let result = run(
        &loaded,
        RunOptions::new(&engine, crate::support::docker::unique(name)),
        &events,
        CancellationToken::new(),
    )
    .await;
    Some((result, events, started.elapsed()))
}

fn assert_stopped(result: &RunResult, events: &Events, limit: &str, elapsed: Duration) {
    assert_eq!(
        result.status,
        RunStatus::BudgetExceeded,
        "{:?}",
        result.reason
    );
    assert_eq!(result.steps[0].status, StepStatus::BudgetExceeded);
    let stop = events.of("budget_exceeded");
    assert_eq!(stop.len(), 1, "{stop:?}");
    assert_eq!(stop[0]["limit"], limit);
    assert!(
        elapsed < Duration::from_secs(60),
        "stopped only after {elapsed:?}: the agent was not killed while it ran"
    );
}

#[tokio::test]
async fn an_agent_over_its_token_budget_is_killed_while_it_streams() {
    let script = "cat >/dev/null\nwhile true; do\n  echo '{\"type\":\"usage\",\"input_tokens\":100,\"output_tokens\":20}'\n  sleep 0.2\ndone\n";
    let Some((result, events, elapsed)) = go("limits-tokens", script, "{ max_tokens: 500 }").await
    else {
        return;
    };
    assert_stopped(&result, &events, "max_tokens", elapsed);
    let usage = result.usage.expect("usage recorded");
    assert!(
        (500..1200).contains(&usage.total_tokens()),
        "{usage:?}: stopped within a second of the line that went over (a line every 0.2 s)"
    );
}

#[tokio::test]
async fn a_silent_agent_is_killed_after_its_idle_timeout() {
    let script = "cat >/dev/null\necho thinking\nsleep 600\n";
    let Some((result, events, elapsed)) = go("limits-idle", script, "{ idle_timeout: 2s }").await
    else {
        return;
    };
    assert_stopped(&result, &events, "idle_timeout", elapsed);
    let step = &result.steps[0];
    assert!(
        step.duration_ms >= 2000 && step.duration_ms < 20_000,
        "{}",
        step.duration_ms
    );
    assert!(
        result
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("printed nothing for 2s"),
        "{:?}",
        result.reason
    );
}

#[tokio::test]
async fn a_busy_agent_is_stopped_at_its_duration_budget_with_nothing_left_running() {
    // It detaches a helper too: the stop must take that down as well.
    let script = "cat >/dev/null\nsetsid sh -c 'sleep 600' &\nwhile true; do echo working; sleep 0.3; done\n";
    let Some((result, events, elapsed)) = go(
        "limits-duration",
        script,
        "{ max_duration: 3s, on_exceeded: draft_pr }",
    )
    .await
    else {
        return;
    };
    assert_stopped(&result, &events, "max_duration", elapsed);
    // `on_exceeded: draft_pr` goes on: the next step lists what runs, and none of it is the
    // agent's.
    assert_eq!(result.steps[1].status, StepStatus::Succeeded);
    let listed: String = events
        .of("output")
        .iter()
        .filter(|o| o["step"] == "after")
        .map(|o| o["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(!listed.contains("sleep 600"), "left running: {listed}");
    assert!(!listed.contains("working"), "left running: {listed}");
}
