//! Step logic against the scripted in-memory sandbox (no Docker): who gets which environment
//! and secrets, when the processes of a step are swept, how output becomes events.

use std::sync::{Arc, Mutex};

use maxions::config::load::load_task;
use maxions::runner::{Event, EventLine, EventSink, RunOptions, RunStatus, run};
use tokio_util::sync::CancellationToken;

use crate::support::scripted::{Call, Reply, Scripted};

const CHECK_KEY: &str = "check-secret-value-31f9a";
const AGENT_KEY: &str = "agent-secret-value-84c2e";

#[derive(Default)]
struct Events(Mutex<Vec<EventLine>>);

impl EventSink for Events {
    fn emit(&self, line: &EventLine) {
        self.0.lock().unwrap().push(line.clone());
    }
}

/// A project with `maxions.yaml` (two secrets), the blueprint `steps` and a task using it.
fn project(steps: &str) -> tempfile::TempDir {
    let blueprint = format!(
        "name: scripted\nagent:\n  kind: command\n  command: [my-agent]\n  secrets: [AGENT_KEY]\nsteps:\n{steps}"
    );
    crate::support::tree(&[
        (
            "maxions.yaml",
            "secrets:\n  CHECK_KEY: { env: T_CHECK_KEY }\n  AGENT_KEY: { env: T_AGENT_KEY }\n",
        ),
        ("blueprints/scripted.yaml", &blueprint),
        (
            "tasks/t.yaml",
            "task: Do it.\nrepo: https://example.invalid/o/r.git\nblueprint: scripted\nbase: main\n",
        ),
    ])
}

async fn go(dir: &tempfile::TempDir, engine: &Scripted) -> (RunStatus, Vec<EventLine>) {
    let loaded = load_task(&dir.path().join("tasks/t.yaml"), None)
        .unwrap_or_else(|v| panic!("{:#?}", v.diagnostics));
    let mut options = RunOptions::new(engine, "scripted-run");
    options.env = Arc::new(|name| match name {
        "T_CHECK_KEY" => Some(CHECK_KEY.to_owned()),
        "T_AGENT_KEY" => Some(AGENT_KEY.to_owned()),
        _ => None,
    });
    let events = Events::default();
    let result = run(&loaded, options, &events, CancellationToken::new()).await;
    (result.status, events.0.into_inner().unwrap())
}

fn is_agent(request: &maxions::sandbox::ExecRequest) -> bool {
    request.argv.first().is_some_and(|a| a == "my-agent")
}

/// maxions making or removing the agent's home around each agent exec.
fn is_agent_home(request: &maxions::sandbox::ExecRequest) -> bool {
    request
        .argv
        .last()
        .is_some_and(|a| a.contains(maxions::agent::AGENT_HOME))
}

#[tokio::test]
async fn a_fix_round_agent_gets_the_agents_secrets_and_nothing_of_the_check_step() {
    let dir = project(
        r#"  - id: checks
    check:
      - { id: lint, run: "lint" }
    env: { CHECK_ONLY: only-for-checks }
    secrets: [CHECK_KEY]
    fix: { max_rounds: 1, agent: "fix {{ failed[0].id }}" }
"#,
    );
    let fixed = Arc::new(Mutex::new(false));
    let seen = Arc::clone(&fixed);
    let engine = Scripted::new(move |request| {
        if is_agent(request) {
            *seen.lock().unwrap() = true;
            return Reply::ok();
        }
        if is_agent_home(request) || *seen.lock().unwrap() {
            Reply::ok()
        } else {
            Reply::exit(1)
        }
    });
    let (status, _) = go(&dir, &engine).await;
    assert_eq!(status, RunStatus::Succeeded);

    let execs = engine.execs();
    let agent = execs
        .iter()
        .find(|r| is_agent(r))
        .expect("the fix agent ran");
    assert_eq!(agent.stdin.as_deref(), Some(b"fix lint".as_slice()));
    let secrets: Vec<&str> = agent.secrets.iter().map(|s| s.name()).collect();
    assert_eq!(secrets, ["AGENT_KEY"]);
    assert!(
        agent.env.iter().all(|(k, _)| k != "CHECK_ONLY"),
        "{:?}",
        agent.env
    );
    // The checks themselves got the step's env and secret.
    let check = execs
        .iter()
        .find(|r| r.argv.last().is_some_and(|a| a == "lint"))
        .unwrap();
    assert!(
        check
            .env
            .iter()
            .any(|(k, v)| k == "CHECK_ONLY" && v == "only-for-checks")
    );
    assert_eq!(
        check.secrets.iter().map(|s| s.name()).collect::<Vec<_>>(),
        ["CHECK_KEY"]
    );
}

#[tokio::test]
async fn every_step_and_every_fix_round_ends_with_its_processes_swept() {
    let dir = project(
        r#"  - id: first
    run: "one"
  - id: checks
    check:
      - { id: lint, run: "lint" }
    fix: { max_rounds: 1, agent: "fix it" }
  - id: last
    agent: "last"
"#,
    );
    let fixed = Arc::new(Mutex::new(false));
    let seen = Arc::clone(&fixed);
    let engine = Scripted::new(move |request| {
        if is_agent(request) {
            *seen.lock().unwrap() = true;
            return Reply::ok();
        }
        if request.argv.last().is_some_and(|a| a == "lint") && !*seen.lock().unwrap() {
            return Reply::exit(1);
        }
        Reply::ok()
    });
    let (status, _) = go(&dir, &engine).await;
    assert_eq!(status, RunStatus::Succeeded);
    // Reduce the log to its shape: which command ran, and where the sweeps fell.
    let shape: Vec<String> = engine
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Exec(r) if is_agent_home(&r) => None,
            Call::Exec(r) => Some(r.argv.last().cloned().unwrap_or_default()),
            Call::EndStep => Some("sweep".to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(
        shape,
        [
            "one", "sweep", "lint", "my-agent", "sweep", "lint", "sweep", "my-agent", "sweep"
        ],
    );
}

#[tokio::test]
async fn one_byte_writes_become_few_output_events_and_nothing_is_lost() {
    let dir = project("  - id: drip\n    run: \"drip\"\n");
    let engine = Scripted::new(|_| Reply {
        stdout: (0..50_000).map(|i| vec![b'a' + (i % 26) as u8]).collect(),
        ..Reply::default()
    });
    let (status, events) = go(&dir, &engine).await;
    assert_eq!(status, RunStatus::Succeeded);
    let outputs: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Output { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let expected: String = (0..50_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert_eq!(outputs.concat(), expected);
    assert!(
        outputs.len() <= 10,
        "{} events for 50,000 one-byte chunks",
        outputs.len()
    );
}

#[tokio::test]
async fn a_secret_maxions_yaml_does_not_define_is_an_error_not_an_environment_variable() {
    // No `maxions.yaml` entry for it, though the process environment has a variable of that
    // name: the run must not read it.
    let dir = project("  - id: first\n    run: \"one\"\n    secrets: [HOME]\n");
    let engine = Scripted::new(|_| Reply::ok());
    let loaded = load_task(&dir.path().join("tasks/t.yaml"), None);
    // Validation refuses it before any run; if it ever let it through, the run must refuse.
    if let Ok(loaded) = loaded {
        let options = RunOptions::new(&engine, "scripted-undefined");
        let result = run(
            &loaded,
            options,
            &Events::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(result.status, RunStatus::Failed);
        assert!(result.reason.unwrap_or_default().contains("not defined"));
        assert!(engine.execs().is_empty());
    }
}

fn denied(connection: u64, host: &str) -> maxions::sandbox::egress::EgressEvent {
    maxions::sandbox::egress::EgressEvent {
        connection,
        kind: maxions::sandbox::egress::RequestKind::Connect,
        host: Some(host.to_owned()),
        port: Some(443),
        decision: maxions::sandbox::egress::Decision::Denied,
        address: None,
        reason: format!("`{host}` is not in the allowlist"),
        dialed: false,
    }
}

#[tokio::test]
async fn egress_decisions_are_logged_with_the_secrets_the_agent_put_in_them_masked() {
    let dir = project("  - id: talk\n    agent: \"talk\"\n");
    // An agent that read its key and tried to smuggle it out in a host name.
    let host = format!("{AGENT_KEY}.exfil.invalid");
    let engine = Scripted::new(|_| Reply::ok()).with_egress(vec![denied(1, &host)]);
    let (status, events) = go(&dir, &engine).await;
    assert_eq!(status, RunStatus::Succeeded);
    let egress: Vec<String> = events
        .iter()
        .filter(|e| matches!(e.event, Event::Egress { .. }))
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    assert_eq!(egress.len(), 1, "{egress:?}");
    assert!(!egress[0].contains(AGENT_KEY), "{}", egress[0]);
    assert!(egress[0].contains("***.exfil.invalid"), "{}", egress[0]);
}

#[tokio::test]
async fn a_flood_of_egress_decisions_is_counted_not_stored() {
    let dir = project("  - id: talk\n    agent: \"talk\"\n");
    let flood = (1..=5000).map(|n| denied(n, "flood.invalid")).collect();
    let engine = Scripted::new(|_| Reply::ok()).with_egress(flood);
    let (_, events) = go(&dir, &engine).await;
    let logged = events
        .iter()
        .filter(|e| matches!(e.event, Event::Egress { .. }))
        .count();
    assert!(logged <= 1024, "{logged} decisions kept");
    assert!(logged > 0);
    let warning = events.iter().find_map(|e| match &e.event {
        Event::Warning { message } if message.contains("egress decisions were not logged") => {
            Some(message.clone())
        }
        _ => None,
    });
    let warning = warning.expect("the drop is reported");
    assert!(
        warning.starts_with(&format!("{} egress", 5000 - logged)),
        "{warning}"
    );
}

#[tokio::test]
async fn a_run_cancelled_while_its_sandbox_is_made_removes_it_once_made() {
    let dir = project("  - { id: work, run: \"work\" }\n");
    let engine = Scripted::new(|_| Reply::ok()).creating_for(std::time::Duration::from_millis(300));
    let loaded = load_task(&dir.path().join("tasks/t.yaml"), None)
        .unwrap_or_else(|v| panic!("{:#?}", v.diagnostics));
    let mut options = RunOptions::new(&engine, "scripted-cancelled");
    options.env = Arc::new(|_| Some("a-long-enough-secret".to_owned()));
    let cancel = CancellationToken::new();
    let later = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        later.cancel();
    });
    let events = Events::default();
    let result = run(&loaded, options, &events, cancel).await;
    assert_eq!(result.status, RunStatus::Cancelled, "{:?}", result.reason);
    assert_eq!(
        engine.live(),
        0,
        "the sandbox made after the cancel is left behind"
    );
    assert!(
        engine.calls().iter().any(|c| matches!(c, Call::Destroy)),
        "{:?}",
        engine.calls()
    );
}
