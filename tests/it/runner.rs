//! The runner end to end, in real containers: a task goes from its file to a branch pushed to a
//! real `git http-backend` and a pull request on the fake GitHub API (which the real octocrab
//! talks to), with the JSONL log and the result file written beside the task. Every scenario
//! asserts on the pushed branch, the fake's recorded requests, the events and the result, and
//! that no token or secret leaks and no container survives.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use maxions::config::load::load_task;
use maxions::forge::GitHub;
use maxions::runner::result::{log_path, result_path, write_result};
use maxions::runner::{
    Event, EventLine, JsonlLog, RunOptions, RunResult, RunStatus, StepStatus, Tee, run,
};
use maxions::sandbox::DockerEngine;
use maxions::secret::Secret;
use tokio_util::sync::CancellationToken;

use crate::support::docker::{engine, unique};
use crate::support::events::Events;
use crate::support::git_http::GitServer;
use crate::support::github::{APP_ID, FakeGitHub, INSTALLATION, PULLS, app_key, other_key};

const PAT: &str = "github_pat_11E2E0000000123456789abcdefghij";
/// A secret a step prints, defined in `maxions.yaml` as `API_KEY: { env: E2E_API_KEY }`.
const API_KEY: &str = "sk-e2e-9f8e7d6c5b4a39281706f5e4d3c2b1a0";
/// What `E2E_GIT_TOKEN` holds where `maxions.yaml` must define `GIT_TOKEN` (unused by git: the
/// forge's minted token goes to git).
const DUMMY_GIT_TOKEN: &str = "unused-e2e-git-token-4b1d";

// ---------------------------------------------------------------------------------------------
// The world: a fake GitHub, a git server that takes the tokens it mints, a repository, and a
// directory with `maxions.yaml`, `tasks/` and `blueprints/`.

struct World {
    fake: FakeGitHub,
    git: GitServer,
    url: String,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let fake = fake();
        let git = GitServer::start_with(fake.token_check());
        Self::with(fake, git)
    }

    fn with(fake: FakeGitHub, git: GitServer) -> Self {
        let url = git.create_repo("octo", "hello");
        // Secrets come only from `maxions.yaml`, `GIT_TOKEN` included (until the blueprints here
        // use a `checkout` step, the forge's token still stands in for it).
        let dir = tempfile::tempdir().expect("temp dir");
        crate::support::write(
            dir.path(),
            "maxions.yaml",
            "secrets:\n  GIT_TOKEN: { env: E2E_GIT_TOKEN }\n",
        );
        Self {
            fake,
            git,
            url,
            dir,
        }
    }

    /// Writes `tasks/<stem>.yaml` (on this world's repository, with blueprint `<stem>`) and
    /// `blueprints/<stem>.yaml`, and returns the task's path.
    fn task(&self, stem: &str, text: &str, blueprint: &str) -> PathBuf {
        self.write_task(stem, text);
        crate::support::write(
            self.dir.path(),
            &format!("blueprints/{stem}.yaml"),
            blueprint,
        );
        self.dir.path().join(format!("tasks/{stem}.yaml"))
    }

    fn write_task(&self, stem: &str, text: &str) {
        let task = serde_json::json!({
            "task": text,
            "repo": self.url,
            "blueprint": stem,
            "base": "main",
        });
        let yaml = serde_yaml::to_string(&task).expect("task yaml");
        crate::support::write(self.dir.path(), &format!("tasks/{stem}.yaml"), &yaml);
    }

    fn app_forge(&self) -> Arc<GitHub> {
        GitHub::with_app(
            &self.fake.base_url(),
            APP_ID,
            INSTALLATION,
            &app_key().private_pem,
        )
        .and_then(|forge| forge.with_web_url(&self.git.base_url()))
        .map(Arc::new)
        .expect("app forge")
    }

    fn branch(&self, branch: &str) -> Option<String> {
        self.git.branch("octo", "hello", branch)
    }

    fn file(&self, branch: &str, path: &str) -> Option<String> {
        self.git.file("octo", "hello", branch, path)
    }

    /// The tokens minted for git (`contents: write` on this repository only), in order.
    fn git_tokens(&self) -> Vec<String> {
        self.fake
            .minted_tokens()
            .into_iter()
            .filter(|t| {
                t.permissions == Some(serde_json::json!({ "contents": "write" }))
                    && t.repositories == Some(vec!["hello".to_owned()])
            })
            .map(|t| t.token)
            .collect()
    }

    /// Every token that may have existed during the runs, in every form it could leak in.
    fn tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .fake
            .minted_tokens()
            .into_iter()
            .map(|t| t.token)
            .collect();
        tokens.push(PAT.to_owned());
        let encoded: Vec<String> = tokens
            .iter()
            .map(|t| BASE64.encode(format!("x-access-token:{t}")))
            .collect();
        tokens.extend(encoded);
        tokens
    }

    /// No token or secret in any file below the world's directory (task, logs, results).
    fn assert_no_leak_in_files(&self, extra: &[&str]) {
        let mut needles = self.tokens();
        needles.extend(extra.iter().map(|s| (*s).to_owned()));
        for file in walk(self.dir.path()) {
            let text = String::from_utf8_lossy(&std::fs::read(&file).expect("read")).into_owned();
            for needle in &needles {
                assert!(
                    !text.contains(needle.as_str()),
                    "{} contains a secret ({needle:.12}…)",
                    file.display()
                );
            }
        }
    }
}

fn fake() -> FakeGitHub {
    FakeGitHub::standard(PAT)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

// ---------------------------------------------------------------------------------------------
// Blueprints.

/// The agent of most scenarios: writes its prompt to `TASK.md`, byte for byte; asked to fix the
/// failing checks, it creates `fixed.txt` instead.
const AGENT: &str = r#"cat > /tmp/prompt.txt
if grep -q 'fix the failing checks' /tmp/prompt.txt; then
  echo fixed > fixed.txt
  echo "agent: fixed"
else
  cp /tmp/prompt.txt TASK.md
  echo "agent: wrote TASK.md"
fi
"#;

const PR: &str = r#"  - id: pr
    pull_request:
      title: "e2e: {{ branch }}"
      body: |
        Task:

        {{ task }}
      labels: [maxions]
"#;

/// A check that passes once the fix agent made `fixed.txt`.
const CHECK_FIXABLE: &str = r#"  - id: checks
    check:
      - { id: greeting, run: "cd /workspace/repo && test -f fixed.txt" }
    fix:
      max_rounds: 2
      agent: |
        fix the failing checks:
        {% for c in failed %}{{ c.id }} exited {{ c.exit_code }}
        {% endfor %}
"#;

/// A check that always fails, with `@ROUNDS@` fix rounds and `@ON_FAILURE@`; its output is the
/// step's output `lint`.
const CHECK_HOPELESS: &str = r#"  - id: checks
    check:
      - id: lint
        run: |
          echo "lint: 3 problems in src/app.js" > /tmp/lint.log
          cat /tmp/lint.log
          exit 1
    fix:
      max_rounds: @ROUNDS@
      on_failure: @ON_FAILURE@
      agent: |
        fix the failing checks:
        {% for c in failed %}{{ c.id }} exited {{ c.exit_code }}
        {% endfor %}
    outputs: { lint: /tmp/lint.log }
"#;

struct Blueprint<'a> {
    agent: &'a str,
    /// Steps between `implement` and `commit`.
    middle: &'a str,
    pr: &'a str,
}

impl Default for Blueprint<'_> {
    fn default() -> Self {
        Self {
            agent: AGENT,
            middle: "",
            pr: PR,
        }
    }
}

impl Blueprint<'_> {
    fn yaml(&self) -> String {
        let template = r#"name: e2e
sandbox:
  image: maxions/sandbox:latest
  network: host
  memory: 1g
  timeout: 5m
agent:
  kind: command
  command:
    - sh
    - -c
    - |
@AGENT@
steps:
  - id: checkout
    checkout: {}
  - id: implement
    agent: "{{ task }}"
@MIDDLE@  - id: commit
    commit: { message: "e2e: work on {{ branch }}" }
  - id: push
    push: {}
@PR@  - id: audit
    run: |
      cd /workspace/repo
      echo "origin: $(git remote get-url origin)"
      if grep -qiE 'authorization|extraheader|access-token|@127' .git/config; then echo LEAK-IN-GIT-CONFIG; exit 1; fi
      if env | grep -qiE 'authorization|GIT_CONFIG_|GIT_TOKEN|API_KEY'; then echo LEAK-IN-ENV; exit 1; fi
      for f in /tmp/pwned*; do if [ -e "$f" ]; then echo "PWNED: $f"; exit 1; fi; done
      echo audit-ok
"#;
        let agent: String = self.agent.lines().map(|l| format!("      {l}\n")).collect();
        template
            .replace("@AGENT@\n", &agent)
            .replace("@MIDDLE@", self.middle)
            .replace("@PR@", self.pr)
    }
}

// ---------------------------------------------------------------------------------------------
// Running a task and reading back what it wrote.

struct Outcome {
    run_id: String,
    result: RunResult,
    events: Vec<EventLine>,
    /// The JSONL log as written.
    jsonl: String,
    /// The result file as written.
    result_json: String,
}

impl Outcome {
    fn events_of(&self, kind: &str) -> Vec<serde_json::Value> {
        self.events
            .iter()
            .map(|e| serde_json::to_value(e).expect("event json"))
            .filter(|v| v["type"] == kind)
            .collect()
    }

    /// Everything the steps printed, stdout and stderr, for `step`.
    fn output(&self, step: &str) -> String {
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Event::Output { step: s, text, .. } if s == step => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn step(&self, id: &str) -> &maxions::runner::StepSummary {
        self.result
            .steps
            .iter()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("no step `{id}` in {:#?}", self.result.steps))
    }

    fn reason(&self) -> &str {
        self.result.reason.as_deref().unwrap_or("")
    }

    fn assert_status(&self, status: RunStatus) {
        assert_eq!(
            self.result.status, status,
            "reason: {:?}\nevents:\n{}",
            self.result.reason, self.jsonl
        );
    }

    /// Neither the log nor the result contains any of `needles`.
    fn assert_no_leak(&self, needles: &[String]) {
        for needle in needles {
            for (what, text) in [("log", &self.jsonl), ("result", &self.result_json)] {
                assert!(
                    !text.contains(needle.as_str()),
                    "the {what} contains a secret ({needle:.12}…):\n{text}"
                );
            }
        }
    }
}

struct Run<'a> {
    engine: &'a DockerEngine,
    task: &'a Path,
    forge: Option<Arc<GitHub>>,
    keep: bool,
    cancel: CancellationToken,
}

impl<'a> Run<'a> {
    fn new(engine: &'a DockerEngine, task: &'a Path, forge: Option<&Arc<GitHub>>) -> Self {
        Self {
            engine,
            task,
            forge: forge.cloned(),
            keep: false,
            cancel: CancellationToken::new(),
        }
    }

    async fn go(self) -> Outcome {
        self.go_with(&Events::default()).await
    }

    /// Runs the task with the JSONL log and the result file where the CLI puts them, checks the
    /// records' shape and that the sandbox is gone (unless kept).
    async fn go_with(self, events: &Events) -> Outcome {
        let loaded = load_task(self.task, None).unwrap_or_else(|v| {
            panic!("the task does not load: {:#?}", v.diagnostics);
        });
        let stem = self
            .task
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let run_id = unique(&format!("e2e-{stem}"));
        let log = JsonlLog::create(&log_path(self.task, &run_id)).expect("create the log");
        let mut options = RunOptions::new(self.engine, run_id.clone());
        options.forge = self
            .forge
            .clone()
            .map(|f| f as Arc<dyn maxions::forge::Forge>);
        options.keep = self.keep;
        // The only environment the run sees: no `GIT_TOKEN`, so git gets the forge's token.
        options.env = Arc::new(|name| match name {
            "E2E_API_KEY" => Some(API_KEY.to_owned()),
            "E2E_GIT_TOKEN" => Some(DUMMY_GIT_TOKEN.to_owned()),
            _ => None,
        });
        let tee = Tee(vec![events, &log]);
        let mut result = run(&loaded, options, &tee, self.cancel).await;
        result.log = log.path().display().to_string();
        let result_file = result_path(self.task);
        write_result(&result_file, &result).expect("write the result");
        let outcome = Outcome {
            jsonl: std::fs::read_to_string(log.path()).expect("read the log"),
            result_json: std::fs::read_to_string(&result_file).expect("read the result"),
            run_id,
            result,
            events: events.snapshot(),
        };
        assert_records(&outcome);
        if !self.keep {
            assert_no_container(&outcome.run_id);
        }
        outcome
    }
}

/// `seq` strictly increasing from 1, `run_started` first and `run_finished` last (with the
/// result's status), the JSONL file holding the same lines, and the result file parsing back.
fn assert_records(outcome: &Outcome) {
    let events = &outcome.events;
    assert!(events.len() >= 2, "{events:#?}");
    for (i, line) in events.iter().enumerate() {
        assert_eq!(line.seq, i as u64 + 1, "seq of event {i}");
        assert_eq!(line.run, outcome.run_id);
    }
    assert!(
        matches!(events[0].event, Event::RunStarted { .. }),
        "{:?}",
        events[0]
    );
    let Event::RunFinished { status, reason, .. } = &events.last().unwrap().event else {
        panic!("the last event is not run_finished: {:?}", events.last());
    };
    assert_eq!(*status, outcome.result.status);
    assert_eq!(reason, &outcome.result.reason);
    let lines: Vec<serde_json::Value> = outcome
        .jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("each log line is JSON"))
        .collect();
    assert_eq!(lines.len(), events.len(), "one JSONL line per event");
    for (line, event) in lines.iter().zip(events) {
        assert_eq!(line["seq"], event.seq);
        assert_eq!(line, &serde_json::to_value(event).unwrap());
    }
    for line in &lines {
        let errors: Vec<String> = schema("event.schema.json")
            .iter_errors(line)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{line}\n{errors:#?}");
    }
    let result: serde_json::Value = serde_json::from_str(&outcome.result_json).unwrap();
    let errors: Vec<String> = schema("result.schema.json")
        .iter_errors(&result)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{result}\n{errors:#?}");
    let back: RunResult = serde_json::from_str(&outcome.result_json).expect("result json");
    assert_eq!(back.status, outcome.result.status);
    assert_eq!(back.run, outcome.run_id);
}

/// The shipped schema `schemas/<name>`, compiled once.
fn schema(name: &str) -> &'static jsonschema::Validator {
    static EVENT: OnceLock<jsonschema::Validator> = OnceLock::new();
    static RESULT: OnceLock<jsonschema::Validator> = OnceLock::new();
    let cell = if name == "event.schema.json" {
        &EVENT
    } else {
        &RESULT
    };
    cell.get_or_init(|| {
        let path = crate::support::root().join("schemas").join(name);
        let text = std::fs::read_to_string(&path).expect("read the schema");
        let schema: serde_json::Value = serde_json::from_str(&text).expect("schema json");
        jsonschema::draft7::new(&schema).expect("a draft-07 schema")
    })
}

fn containers_of(run_id: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("label=maxions.run={run_id}"))
        .output()
        .expect("docker ps");
    assert!(output.status.success(), "docker ps failed");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn assert_no_container(run_id: &str) {
    let left = containers_of(run_id);
    assert!(left.is_empty(), "containers of {run_id} survive: {left:?}");
}

fn docker(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker").args(args).output().expect("docker");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// Removes a kept container when dropped, so a failing assertion leaks nothing.
struct Kept(String);

impl Drop for Kept {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.0]);
    }
}

/// Each step of the result with its status, in order.
fn step_statuses(outcome: &Outcome) -> Vec<(String, StepStatus)> {
    outcome
        .result
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.status))
        .collect()
}

fn standard_task(world: &World, stem: &str, text: &str) -> PathBuf {
    world.task(stem, text, &Blueprint::default().yaml())
}

// ---------------------------------------------------------------------------------------------
// 1. Happy path.

#[tokio::test]
async fn happy_path_pushes_the_branch_and_opens_one_pull_request() {
    let Some(engine) = engine("runner-happy").await else {
        return;
    };
    let world = World::new();
    let text = "Write the task to TASK.md.\n";
    let task = standard_task(&world, "happy", text);
    let forge = world.app_forge();
    let mut run = Run::new(&engine, &task, Some(&forge));
    run.keep = true;
    let outcome = run.go().await;
    let kept = Kept(
        outcome
            .result
            .kept_container
            .clone()
            .expect("--keep keeps the sandbox"),
    );

    outcome.assert_status(RunStatus::Succeeded);
    assert_eq!(outcome.result.reason, None);
    let branch = "maxions/happy";
    assert_eq!(outcome.result.branch, branch);
    assert_eq!(outcome.result.base, "main");
    for (id, status) in step_statuses(&outcome) {
        assert_eq!(status, StepStatus::Succeeded, "step {id}");
    }
    let ids: Vec<&str> = outcome.result.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["checkout", "implement", "commit", "push", "pr", "audit"]
    );
    assert!(outcome.output("audit").contains("audit-ok"));
    assert!(
        outcome
            .output("audit")
            .contains(&format!("origin: {}", world.url)),
        "the remote URL carries no credentials: {}",
        outcome.output("audit")
    );

    // The branch, with the agent's change, at the commit the result names.
    let head = world.branch(branch).expect("the branch was pushed");
    assert_eq!(outcome.result.commit.as_deref(), Some(head.as_str()));
    assert_eq!(world.file(branch, "TASK.md").as_deref(), Some(text));
    assert_eq!(
        world.file(branch, "README.md").as_deref(),
        Some("# hello\n")
    );
    assert_eq!(world.git.pushes().len(), 1);

    // Exactly one pull request, opened with a token minted for this run.
    assert_eq!(world.fake.count("POST", PULLS), 1);
    // Tokens minted for this run: one for git that can write contents of this repository and
    // nothing else (the only one the sandbox saw), one for the API calls.
    let git_tokens = world.git_tokens();
    assert_eq!(git_tokens.len(), 1);
    let git_seen: Vec<Option<String>> = world.git.requests().into_iter().map(|r| r.token).collect();
    assert!(!git_seen.is_empty());
    assert!(
        git_seen.iter().all(|t| t.as_ref() == Some(&git_tokens[0])),
        "{git_seen:?}"
    );
    let create = world
        .fake
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path == PULLS)
        .unwrap();
    assert_ne!(create.token, Some(git_tokens[0].clone()));
    let pulls = world.fake.pulls();
    assert_eq!(pulls.len(), 1);
    let pull = &pulls[0];
    assert_eq!(pull.head, branch);
    assert_eq!(pull.base, "main");
    assert_eq!(pull.title, "e2e: maxions/happy");
    assert!(pull.body.contains(text), "{}", pull.body);
    assert!(!pull.draft);
    assert_eq!(pull.labels, ["maxions"]);
    let record = outcome.result.pull_request.as_ref().expect("a PR record");
    assert!(record.opened);
    assert_eq!(record.number, Some(pull.number));
    assert_eq!(record.created, Some(true));
    let url = record.url.clone().expect("a PR url");
    assert!(
        url.ends_with(&format!("/octo/hello/pull/{}", pull.number)),
        "{url}"
    );
    let pr_events = outcome.events_of("pr");
    assert_eq!(pr_events.len(), 1);
    assert_eq!(pr_events[0]["url"], url.as_str());
    assert_eq!(pr_events[0]["created"], true);
    assert_eq!(outcome.events_of("commit")[0]["sha"], head.as_str());
    assert_eq!(outcome.events_of("pushed")[0]["branch"], branch);

    // The token never reached `.git/config`, the container's environment or any file in it.
    let tokens: Vec<String> = world
        .fake
        .minted_tokens()
        .into_iter()
        .map(|t| t.token)
        .collect();
    assert!(!tokens.is_empty());
    // A sweep for orphaned sandboxes (the daemon's every minute, the next `maxions run`'s)
    // leaves a sandbox kept for debugging alone.
    maxions::sandbox::Engine::remove_orphans(&engine, &[])
        .await
        .expect("sweep");
    let (ok, config) = docker(&["exec", &kept.0, "cat", "/workspace/repo/.git/config"]);
    assert!(ok, "{config}");
    assert!(config.contains(&world.url), "{config}");
    let (ok, inspect) = docker(&["inspect", &kept.0]);
    assert!(ok, "{inspect}");
    for token in &tokens {
        assert!(!config.contains(token.as_str()), "{config}");
        assert!(
            !inspect.contains(token.as_str()),
            "docker inspect shows the token"
        );
        let (found, files) =
            docker(&["exec", &kept.0, "grep", "-rlF", token, "/workspace", "/tmp"]);
        assert!(!found, "the token is in files of the sandbox: {files}");
    }
    assert!(
        !config.to_ascii_lowercase().contains("extraheader"),
        "{config}"
    );
    drop(kept);
    assert_no_container(&outcome.run_id);

    outcome.assert_no_leak(&world.tokens());
    world.assert_no_leak_in_files(&[]);
}

// ---------------------------------------------------------------------------------------------
// 2. Checks fail; the fix loop repairs them in round 1.

#[tokio::test]
async fn failing_checks_are_repaired_by_the_first_fix_round() {
    let Some(engine) = engine("runner-fix").await else {
        return;
    };
    let world = World::new();
    let blueprint = Blueprint {
        middle: CHECK_FIXABLE,
        ..Blueprint::default()
    };
    let task = world.task("fix", "Add a greeting.", &blueprint.yaml());
    let forge = world.app_forge();
    let outcome = Run::new(&engine, &task, Some(&forge)).go().await;

    outcome.assert_status(RunStatus::Succeeded);
    assert_eq!(outcome.result.fix_rounds, 1);
    assert_eq!(outcome.result.failed_checks, 0);
    assert_eq!(outcome.step("checks").status, StepStatus::Succeeded);
    let failed = outcome.events_of("check_failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["check"], "greeting");
    assert_eq!(failed[0]["round"], 0);
    let rounds = outcome.events_of("fix_round");
    assert_eq!(rounds.len(), 1, "{rounds:?}");
    assert_eq!(rounds[0]["round"], 1);
    assert_eq!(rounds[0]["passed"], true);
    assert_eq!(rounds[0]["fixing"], serde_json::json!(["greeting"]));
    assert!(outcome.output("checks").contains("agent: fixed"));

    let branch = "maxions/fix";
    assert_eq!(world.file(branch, "fixed.txt").as_deref(), Some("fixed\n"));
    assert_eq!(
        world.file(branch, "TASK.md").as_deref(),
        Some("Add a greeting.")
    );
    assert_eq!(world.fake.count("POST", PULLS), 1);
    assert!(!world.fake.pulls()[0].draft);
    outcome.assert_no_leak(&world.tokens());
}

// ---------------------------------------------------------------------------------------------
// 3. Checks still failing after `max_rounds`: fail, or a draft PR with the failures.

#[tokio::test]
async fn checks_still_failing_with_on_failure_fail_stop_before_the_push() {
    let Some(engine) = engine("runner-hopeless-fail").await else {
        return;
    };
    let world = World::new();
    let middle = CHECK_HOPELESS
        .replace("@ROUNDS@", "2")
        .replace("@ON_FAILURE@", "fail");
    let blueprint = Blueprint {
        middle: &middle,
        ..Blueprint::default()
    };
    let task = world.task("hopeless", "Make lint pass.", &blueprint.yaml());
    let forge = world.app_forge();
    let outcome = Run::new(&engine, &task, Some(&forge)).go().await;

    outcome.assert_status(RunStatus::Failed);
    assert!(
        outcome
            .reason()
            .contains("step `checks` failed: checks still failing after 2 fix round(s): lint"),
        "{}",
        outcome.reason()
    );
    assert_eq!(outcome.result.fix_rounds, 2);
    assert_eq!(outcome.result.failed_checks, 1);
    let rounds = outcome.events_of("fix_round");
    assert_eq!(rounds.len(), 2);
    assert!(rounds.iter().all(|r| r["passed"] == false));
    assert_eq!(outcome.events_of("check_failed").len(), 3);
    assert_eq!(outcome.step("checks").status, StepStatus::Failed);
    assert_eq!(outcome.step("checks").exit_code, Some(1));
    // Nothing after the failed step ran.
    let ids: Vec<&str> = outcome.result.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["checkout", "implement", "checks"]);
    assert_eq!(outcome.result.commit, None);
    assert!(world.git.pushes().is_empty());
    assert_eq!(world.branch("maxions/hopeless"), None);
    assert_eq!(world.fake.count("POST", PULLS), 0);
    assert!(outcome.result.pull_request.is_none());
    outcome.assert_no_leak(&world.tokens());
}

#[tokio::test]
async fn checks_still_failing_with_on_failure_continue_open_a_draft_with_the_failures() {
    let Some(engine) = engine("runner-hopeless-draft").await else {
        return;
    };
    let world = World::new();
    let middle = CHECK_HOPELESS
        .replace("@ROUNDS@", "1")
        .replace("@ON_FAILURE@", "continue");
    let pr = r#"  - id: pr
    pull_request:
      title: "e2e: {{ branch }}"
      body: |
        {% if run.failed_checks > 0 %}Checks still failing: {{ run.failed_checks }}
        {{ steps.checks.lint }}{% endif %}
      draft: "{{ run.failed_checks > 0 }}"
"#;
    let blueprint = Blueprint {
        middle: &middle,
        pr,
        ..Blueprint::default()
    };
    let task = world.task("draft", "Make lint pass.", &blueprint.yaml());
    let forge = world.app_forge();
    let outcome = Run::new(&engine, &task, Some(&forge)).go().await;

    // The configured outcome: the run goes on and opens a draft that says what still fails.
    outcome.assert_status(RunStatus::Succeeded);
    assert_eq!(outcome.result.fix_rounds, 1);
    assert_eq!(outcome.result.failed_checks, 1);
    let checks = outcome.step("checks");
    assert_eq!(checks.status, StepStatus::Failed);
    assert!(
        checks
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("checks still failing after 1 fix round(s): lint"),
        "{checks:?}"
    );
    let warnings = outcome.events_of("warning");
    assert!(
        warnings.iter().any(|w| w["message"]
            .as_str()
            .unwrap()
            .contains("on_failure: continue")),
        "{warnings:?}"
    );
    let branch = "maxions/draft";
    assert!(world.branch(branch).is_some());
    assert_eq!(world.file(branch, "fixed.txt").as_deref(), Some("fixed\n"));
    assert_eq!(world.fake.count("POST", PULLS), 1);
    let pull = &world.fake.pulls()[0];
    assert!(pull.draft, "{pull:?}");
    assert!(
        pull.body.contains("Checks still failing: 1"),
        "{}",
        pull.body
    );
    assert!(
        pull.body.contains("lint: 3 problems in src/app.js"),
        "{}",
        pull.body
    );
    let record = outcome.result.pull_request.as_ref().unwrap();
    assert!(record.draft);
    assert_eq!(outcome.events_of("pr")[0]["draft"], true);
    outcome.assert_no_leak(&world.tokens());
}

// ---------------------------------------------------------------------------------------------
// 4. No changes.

#[tokio::test]
async fn no_changes_means_no_commit_no_push_and_no_pull_request() {
    let Some(engine) = engine("runner-nochanges").await else {
        return;
    };
    let world = World::new();
    let blueprint = Blueprint {
        agent: "cat > /dev/null\necho 'agent: nothing to do'\n",
        ..Blueprint::default()
    };
    let task = world.task("idle", "Nothing to do.", &blueprint.yaml());
    let forge = world.app_forge();
    let outcome = Run::new(&engine, &task, Some(&forge)).go().await;

    outcome.assert_status(RunStatus::NoChanges);
    assert_eq!(outcome.result.commit, None);
    assert!(outcome.result.pull_request.is_none());
    assert_eq!(outcome.step("commit").status, StepStatus::NoChanges);
    assert_eq!(outcome.step("push").status, StepStatus::Skipped);
    assert_eq!(outcome.step("pr").status, StepStatus::Skipped);
    assert!(outcome.events_of("commit").is_empty());
    assert!(outcome.events_of("pushed").is_empty());
    assert!(outcome.events_of("pr").is_empty());
    assert_eq!(outcome.events_of("step_skipped").len(), 2);
    assert!(world.git.pushes().is_empty());
    assert_eq!(world.branch("maxions/idle"), None);
    assert!(
        world
            .fake
            .requests()
            .iter()
            .all(|r| !r.path.starts_with(PULLS)),
        "{:#?}",
        world.fake.requests()
    );
    outcome.assert_no_leak(&world.tokens());
}

// ---------------------------------------------------------------------------------------------
// 5. A re-run updates the same pull request.

#[tokio::test]
async fn a_rerun_updates_the_same_pull_request() {
    let Some(engine) = engine("runner-rerun").await else {
        return;
    };
    let world = World::new();
    let task = standard_task(&world, "rerun", "First attempt.");
    let forge = world.app_forge();
    let first = Run::new(&engine, &task, Some(&forge)).go().await;
    first.assert_status(RunStatus::Succeeded);
    let first_head = world.branch("maxions/rerun").unwrap();

    world.write_task("rerun", "Second attempt.");
    let second = Run::new(&engine, &task, Some(&forge)).go().await;
    second.assert_status(RunStatus::Succeeded);
    assert_ne!(first.run_id, second.run_id);

    assert_eq!(world.fake.count("POST", PULLS), 1, "one PR for the branch");
    let pulls = world.fake.pulls();
    assert_eq!(pulls.len(), 1);
    let number = pulls[0].number;
    assert!(world.fake.count("PATCH", &format!("{PULLS}/{number}")) >= 1);
    assert!(
        pulls[0].body.contains("Second attempt."),
        "{}",
        pulls[0].body
    );
    let a = first.result.pull_request.as_ref().unwrap();
    let b = second.result.pull_request.as_ref().unwrap();
    assert_eq!((a.created, b.created), (Some(true), Some(false)));
    assert_eq!(a.number, b.number);
    assert_eq!(a.url, b.url);
    assert_eq!(second.events_of("pr")[0]["created"], false);
    // The branch moved to the second run's commit.
    let head = world.branch("maxions/rerun").unwrap();
    assert_ne!(head, first_head);
    assert_eq!(second.result.commit.as_deref(), Some(head.as_str()));
    assert_eq!(
        world.file("maxions/rerun", "TASK.md").as_deref(),
        Some("Second attempt.")
    );
    assert_eq!(world.git.pushes().len(), 2);
    // Each run minted its own token for git, never reused.
    let git_tokens = world.git_tokens();
    assert_eq!(git_tokens.len(), 2);
    assert_ne!(git_tokens[0], git_tokens[1]);
    first.assert_no_leak(&world.tokens());
    second.assert_no_leak(&world.tokens());
    world.assert_no_leak_in_files(&[]);
}

// ---------------------------------------------------------------------------------------------
// 6. The branch already exists on the remote.

#[tokio::test]
async fn a_stale_branch_on_the_remote_is_replaced() {
    let Some(engine) = engine("runner-stale").await else {
        return;
    };
    let world = World::new();
    let branch = "maxions/stale";
    // Someone (an earlier run) pushed the branch before, with other content.
    let work = tempfile::tempdir().unwrap();
    let header = format!("http.extraHeader=Authorization: Bearer {PAT}");
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .arg("-C")
            .arg(work.path())
            .args([
                "-c",
                &header,
                "-c",
                "user.name=Old",
                "-c",
                "user.email=old@example.invalid",
            ])
            .args(args)
            .output()
            .expect("git");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    git(&["clone", "-q", &world.url, "."]);
    git(&["checkout", "-q", "-b", branch]);
    std::fs::write(work.path().join("STALE.md"), "old work\n").unwrap();
    git(&["add", "STALE.md"]);
    git(&["commit", "-q", "-m", "old work"]);
    git(&["push", "-q", "origin", branch]);
    let stale = world.branch(branch).expect("the stale branch exists");

    let task = standard_task(&world, "stale", "Replace the stale work.");
    let forge = world.app_forge();
    let outcome = Run::new(&engine, &task, Some(&forge)).go().await;

    outcome.assert_status(RunStatus::Succeeded);
    let head = world.branch(branch).unwrap();
    assert_ne!(head, stale);
    assert_eq!(outcome.result.commit.as_deref(), Some(head.as_str()));
    assert_eq!(
        world.file(branch, "TASK.md").as_deref(),
        Some("Replace the stale work.")
    );
    assert_eq!(world.file(branch, "STALE.md"), None);
    assert_eq!(world.git.pushes().len(), 2);
    assert_eq!(world.fake.count("POST", PULLS), 1);
    outcome.assert_no_leak(&world.tokens());
}

// ---------------------------------------------------------------------------------------------
// 7. Wrong credentials: clear errors, nothing leaked.

#[tokio::test]
async fn a_token_the_git_server_rejects_fails_the_run_without_leaking_it() {
    let Some(engine) = engine("runner-badtoken").await else {
        return;
    };
    // The forge accepts the PAT; the git server does not.
    let world = World::with(
        fake(),
        GitServer::with_tokens(&["only-this-other-token-123"]),
    );
    let task = standard_task(&world, "badtoken", "Anything.");
    let forge = GitHub::with_token(
        &world.fake.base_url(),
        Secret::new("GITHUB_TOKEN", PAT).unwrap(),
    )
    .and_then(|forge| forge.with_web_url(&world.git.base_url()))
    .unwrap();
    let outcome = Run::new(&engine, &task, Some(&Arc::new(forge))).go().await;

    outcome.assert_status(RunStatus::Failed);
    let reason = outcome.reason();
    assert!(reason.contains("step `checkout` failed"), "{reason}");
    // The reason carries git's own last words, so the result file alone says what to fix.
    assert!(
        reason.contains("Authentication failed") || reason.contains("could not read Username"),
        "{reason}"
    );
    assert_eq!(outcome.step("checkout").status, StepStatus::Failed);
    // maxions fetched on its own side: no sandbox step saw the token or the git server.
    assert!(outcome.output("checkout").is_empty());
    // The git server saw the PAT and refused it.
    let requests = world.git.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.status == 401), "{requests:?}");
    assert!(requests.iter().any(|r| r.token.as_deref() == Some(PAT)));
    assert!(world.git.pushes().is_empty());
    assert_eq!(world.fake.count("POST", PULLS), 0);
    outcome.assert_no_leak(&world.tokens());
    world.assert_no_leak_in_files(&[]);
}

#[tokio::test]
async fn a_wrong_app_key_fails_the_run_clearly_before_any_sandbox() {
    let Some(engine) = engine("runner-badkey").await else {
        return;
    };
    let world = World::new();
    let task = standard_task(&world, "badkey", "Anything.");
    let forge = GitHub::with_app(
        &world.fake.base_url(),
        APP_ID,
        INSTALLATION,
        &other_key().private_pem,
    )
    .and_then(|forge| forge.with_web_url(&world.git.base_url()))
    .unwrap();
    let outcome = Run::new(&engine, &task, Some(&Arc::new(forge))).go().await;

    outcome.assert_status(RunStatus::Failed);
    let reason = outcome.reason();
    assert!(reason.contains("cannot get git credentials"), "{reason}");
    assert!(
        reason.contains("GitHub refused the credentials") && reason.contains("private key"),
        "{reason}"
    );
    assert!(outcome.events_of("sandbox_ready").is_empty());
    assert!(outcome.result.steps.is_empty());
    assert!(world.fake.minted_tokens().is_empty());
    assert!(world.git.requests().is_empty());
    // Nothing of the key anywhere.
    let key_lines: Vec<String> = other_key()
        .private_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_owned)
        .collect();
    let mut needles = key_lines.clone();
    needles.push("PRIVATE KEY".to_owned());
    outcome.assert_no_leak(&needles);
    let key_refs: Vec<&str> = key_lines.iter().map(String::as_str).collect();
    world.assert_no_leak_in_files(&key_refs);
}

// ---------------------------------------------------------------------------------------------
// 8. Hostile task text reaches the agent verbatim and never runs.

#[tokio::test]
async fn hostile_task_text_reaches_the_agent_verbatim_and_never_runs() {
    let Some(engine) = engine("runner-hostile").await else {
        return;
    };
    let world = World::new();
    let marker = format!("/tmp/pwned-e2e-{}", std::process::id());
    let text = format!(
        "Fix \"quotes\" and 'apostrophes'; then $(touch {marker}) and `touch {marker}`\n\
         ; touch {marker} && echo $HOME ${{PATH}} \\ \\n | cat > /dev/null\n\
         {{{{ 7 * 7 }}}} {{% if true %}}jinja{{% endif %}} ' \" ` $( )"
    );
    let middle = r#"  - id: echo_task
    run: printf '%s' {{ task }} > /workspace/repo/TASK_RUN.md
"#;
    let blueprint = Blueprint {
        middle,
        ..Blueprint::default()
    };
    let task = world.task("hostile", &text, &blueprint.yaml());
    let forge = world.app_forge();
    let outcome = Run::new(&engine, &task, Some(&forge)).go().await;

    outcome.assert_status(RunStatus::Succeeded);
    let branch = "maxions/hostile";
    // Verbatim to the agent (stdin) and through a shell-escaped `run` template.
    assert_eq!(
        world.file(branch, "TASK.md").as_deref(),
        Some(text.as_str())
    );
    assert_eq!(
        world.file(branch, "TASK_RUN.md").as_deref(),
        Some(text.as_str())
    );
    // Verbatim into the pull request, which went through the API.
    let pull = &world.fake.pulls()[0];
    assert!(pull.body.contains(&text), "{}", pull.body);
    // Nothing ran: neither in the sandbox (the audit step looks) nor here.
    assert!(outcome.output("audit").contains("audit-ok"));
    assert!(!outcome.output("audit").contains("PWNED"));
    assert!(!Path::new(&marker).exists(), "{marker} exists on the host");
    assert_eq!(
        outcome.events_of("run_started")[0]["task"],
        task.display().to_string()
    );
    outcome.assert_no_leak(&world.tokens());
}

// ---------------------------------------------------------------------------------------------
// 9. Agent failure, step timeout, cancellation.

#[tokio::test]
async fn an_agent_exiting_non_zero_fails_the_run_naming_the_step() {
    let Some(engine) = engine("runner-agentfail").await else {
        return;
    };
    let world = World::new();
    let blueprint = Blueprint {
        agent: "cat > /dev/null\necho 'agent: giving up' >&2\nexit 7\n",
        ..Blueprint::default()
    };
    let task = world.task("agentfail", "Try.", &blueprint.yaml());
    let forge = world.app_forge();
    let outcome = Run::new(&engine, &task, Some(&forge)).go().await;

    outcome.assert_status(RunStatus::Failed);
    assert_eq!(
        outcome.reason(),
        "step `implement` failed: exited with code 7: agent: giving up"
    );
    let step = outcome.step("implement");
    assert_eq!(step.status, StepStatus::Failed);
    assert_eq!(step.exit_code, Some(7));
    assert!(outcome.output("implement").contains("agent: giving up"));
    assert_eq!(outcome.result.steps.len(), 2);
    assert!(world.git.pushes().is_empty());
    assert_eq!(world.fake.count("POST", PULLS), 0);
    outcome.assert_no_leak(&world.tokens());
}

#[tokio::test]
async fn a_step_over_its_timeout_fails_the_run() {
    let Some(engine) = engine("runner-timeout").await else {
        return;
    };
    let world = World::new();
    let middle = "  - id: slow\n    run: sleep 30\n    timeout: 1s\n";
    let blueprint = Blueprint {
        middle,
        ..Blueprint::default()
    };
    let task = world.task("timeout", "Be quick.", &blueprint.yaml());
    let forge = world.app_forge();
    let started = Instant::now();
    let outcome = Run::new(&engine, &task, Some(&forge)).go().await;

    outcome.assert_status(RunStatus::Failed);
    assert!(
        outcome.reason().contains("step `slow` failed")
            && outcome.reason().contains("timed out after 1s"),
        "{}",
        outcome.reason()
    );
    assert_eq!(outcome.step("slow").status, StepStatus::TimedOut);
    assert!(outcome.step("slow").duration_ms < 10_000);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert!(world.git.pushes().is_empty());
    assert_eq!(world.fake.count("POST", PULLS), 0);
}

#[tokio::test]
async fn cancelling_mid_step_stops_the_run_and_removes_the_sandbox() {
    let Some(engine) = engine("runner-cancel").await else {
        return;
    };
    let world = World::new();
    let middle = "  - id: slow\n    run: sleep 30\n";
    let blueprint = Blueprint {
        middle,
        ..Blueprint::default()
    };
    let task = world.task("cancel", "Take your time.", &blueprint.yaml());
    let forge = world.app_forge();
    let run = Run::new(&engine, &task, Some(&forge));
    let cancel = run.cancel.clone();
    let events = Events::default();
    let cancelled_at = Mutex::new(None);
    let canceller = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !events
            .snapshot()
            .iter()
            .any(|e| matches!(&e.event, Event::StepStarted { step, .. } if step == "slow"))
        {
            assert!(Instant::now() < deadline, "the slow step never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        *cancelled_at.lock().unwrap() = Some(Instant::now());
        cancel.cancel();
    };
    let (outcome, ()) = tokio::join!(run.go_with(&events), canceller);
    let stopped_after = cancelled_at.lock().unwrap().unwrap().elapsed();

    outcome.assert_status(RunStatus::Cancelled);
    assert_eq!(outcome.reason(), "cancelled");
    assert_eq!(outcome.step("slow").status, StepStatus::Cancelled);
    assert!(
        stopped_after < Duration::from_secs(15),
        "took {stopped_after:?} to stop"
    );
    // `go_with` checked that no container with the run's label survives.
    assert!(outcome.result.kept_container.is_none());
    assert!(world.git.pushes().is_empty());
    assert_eq!(world.fake.count("POST", PULLS), 0);
}

// ---------------------------------------------------------------------------------------------
// 10. A secret printed by a step appears nowhere.

#[tokio::test]
async fn a_secret_printed_by_a_step_appears_in_no_record() {
    let Some(engine) = engine("runner-secret").await else {
        return;
    };
    let world = World::new();
    let middle = r#"  - id: leaky
    run: |
      echo "the key is $API_KEY"
      echo "to stderr: $API_KEY" >&2
      printf 'title with %s\n' "$API_KEY" > /tmp/title.txt
    secrets: [API_KEY]
    outputs: { title: /tmp/title.txt }
"#;
    let pr = r#"  - id: pr
    pull_request:
      title: "{{ steps.leaky.title }}"
      body: "output: {{ steps.leaky.title }}"
"#;
    let blueprint = Blueprint {
        middle,
        pr,
        ..Blueprint::default()
    };
    // Secrets come from `maxions.yaml` and nowhere else.
    crate::support::write(
        world.dir.path(),
        "maxions.yaml",
        "secrets:\n  API_KEY: { env: E2E_API_KEY }\n",
    );
    let task = world.task("secret", "Use the key.", &blueprint.yaml());
    let forge = world.app_forge();
    let outcome = Run::new(&engine, &task, Some(&forge)).go().await;

    outcome.assert_status(RunStatus::Succeeded);
    // The step really had it, and the log shows it masked.
    let output = outcome.output("leaky");
    assert!(output.contains("the key is ***"), "{output}");
    assert!(output.contains("to stderr: ***"), "{output}");
    // Redacted when read back as an output, so the pull request never saw it either.
    let pull = &world.fake.pulls()[0];
    assert_eq!(pull.title, "title with ***");
    assert_eq!(pull.body, "output: title with ***");
    for request in world.fake.requests() {
        let body = request.body.map(|b| b.to_string()).unwrap_or_default();
        assert!(!body.contains(API_KEY), "{body}");
    }
    // The audit step checks that the secret is not in the environment of later steps.
    assert!(outcome.output("audit").contains("audit-ok"));
    let mut needles = world.tokens();
    needles.push(API_KEY.to_owned());
    needles.push(DUMMY_GIT_TOKEN.to_owned());
    outcome.assert_no_leak(&needles);
    world.assert_no_leak_in_files(&[API_KEY, DUMMY_GIT_TOKEN]);
}

// ---------------------------------------------------------------------------------------------
// The trust boundary: the agent is hostile. Each scenario is an attack that worked before
// credentials stayed outside the sandbox and steps could leave no process behind.

/// An agent that plants every git trap it can think of, then leaves spies behind that would
/// read later steps' environments and edit the tree after the checks.
const HOSTILE_AGENT: &str = r#"cat > /tmp/prompt.txt
if grep -q 'fix the failing checks' /tmp/prompt.txt; then
  env > fix-env.txt
  echo fixed > fixed.txt
  exit 0
fi
cp /tmp/prompt.txt TASK.md
for h in pre-commit commit-msg post-commit pre-push reference-transaction post-checkout; do
  printf '#!/bin/sh\nenv > /tmp/spy-hook-%s\n' "$h" > .git/hooks/$h
  chmod +x .git/hooks/$h
done
mkdir -p /tmp/hooks && cp .git/hooks/pre-push /tmp/hooks/pre-push
printf '#!/bin/sh\nenv > /tmp/spy-fsmonitor\n' > /tmp/fsmon && chmod +x /tmp/fsmon
git config core.fsmonitor /tmp/fsmon
git init -q --bare /tmp/evil.git
cat > "$HOME/.gitconfig" <<'CFG'
[core]
  hooksPath = /tmp/hooks
  fsmonitor = /tmp/fsmon
  sshCommand = sh -c 'env > /tmp/spy-ssh'
[credential]
  helper = "!f() { cat > /tmp/spy-credential; }; f"
[url "/tmp/evil.git"]
  pushInsteadOf = http://
  insteadOf = http://
CFG
# A spy in a new session: reads every environment it can, forever.
setsid sh -c 'while :; do for p in /proc/[0-9]*; do tr "\0" "\n" < $p/environ 2>/dev/null >> /tmp/spy-environ; done; sleep 0.05; done' </dev/null >/dev/null 2>&1 &
# Late edits, after the checks started: by nohup, and by a double fork.
nohup sh -c 'while [ ! -e /tmp/checks-started ]; do sleep 0.05; done; echo late > /workspace/repo/LATE.txt' </dev/null >/dev/null 2>&1 &
(sh -c 'while [ ! -e /tmp/checks-started ]; do sleep 0.05; done; echo double > /workspace/repo/DOUBLE.txt' </dev/null >/dev/null 2>&1 &)
trap '' TERM HUP
echo "agent: planted"
"#;

#[tokio::test]
async fn a_hostile_agent_reaches_no_credential_redirects_no_push_and_leaves_no_process() {
    let Some(engine) = engine("runner-hostile").await else {
        return;
    };
    let world = World::new();
    let middle = r#"  - id: checks
    check:
      - { id: started, run: "touch /tmp/checks-started && sleep 1" }
      - { id: fixed, run: "cd /workspace/repo && test -f fixed.txt" }
    env: { CHECK_ONLY: check-only-value-7d1e }
    secrets: [API_KEY]
    fix:
      max_rounds: 1
      agent: "fix the failing checks"
"#;
    let blueprint = Blueprint {
        agent: HOSTILE_AGENT,
        middle,
        ..Blueprint::default()
    };
    crate::support::write(
        world.dir.path(),
        "maxions.yaml",
        "secrets:\n  API_KEY: { env: E2E_API_KEY }\n",
    );
    let task = world.task("hostile", "Do the work.", &blueprint.yaml());
    let forge = world.app_forge();
    let mut run = Run::new(&engine, &task, Some(&forge));
    run.keep = true;
    let outcome = run.go().await;
    let kept = Kept(outcome.result.kept_container.clone().expect("kept"));

    outcome.assert_status(RunStatus::Succeeded);
    // The push went to the task's repository, not to the agent's `pushInsteadOf`.
    let branch = "maxions/hostile";
    let head = world.branch(branch).expect("pushed to the real remote");
    assert_eq!(outcome.result.commit.as_deref(), Some(head.as_str()));
    let (_, evil) = docker(&[
        "exec",
        &kept.0,
        "git",
        "-C",
        "/tmp/evil.git",
        "for-each-ref",
    ]);
    assert!(
        evil.trim().is_empty(),
        "something reached the agent's repository: {evil}"
    );
    // Nothing the agent left running edited the tree after it: the late writers were killed.
    assert_eq!(
        world.file(branch, "TASK.md").as_deref(),
        Some("Do the work.")
    );
    assert_eq!(world.file(branch, "LATE.txt"), None);
    assert_eq!(world.file(branch, "DOUBLE.txt"), None);
    // The fix round's agent got nothing of the check step's env or secrets.
    let fix_env = world
        .file(branch, "fix-env.txt")
        .expect("the fix agent ran");
    assert!(!fix_env.contains("check-only-value-7d1e"), "{fix_env}");
    assert!(!fix_env.contains("API_KEY"), "{fix_env}");
    // No process of the agent is alive, however it detached.
    let (ok, procs) = docker(&[
        "exec",
        "-u",
        "0",
        &kept.0,
        "sh",
        "-c",
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done",
    ]);
    assert!(ok, "{procs}");
    for needle in ["spy-environ", "checks-started", "LATE", "DOUBLE"] {
        assert!(
            !procs.contains(needle),
            "a process of the agent survives: {procs}"
        );
    }
    // No token ever entered the sandbox: not in a file, a config, an environment it could read.
    let tokens: Vec<String> = world
        .fake
        .minted_tokens()
        .into_iter()
        .map(|t| t.token)
        .collect();
    assert!(!tokens.is_empty());
    for token in &tokens {
        let (found, files) = docker(&[
            "exec",
            "-u",
            "0",
            &kept.0,
            "grep",
            "-rlF",
            token,
            "/workspace",
            "/tmp",
        ]);
        assert!(!found, "the token is in files of the sandbox: {files}");
    }
    let (_, spied) = docker(&["exec", &kept.0, "cat", "/tmp/spy-environ"]);
    assert!(!spied.contains("GIT_CONFIG_VALUE"), "{spied:.400}");
    assert!(!spied.contains("Authorization"), "{spied:.400}");
    drop(kept);
    outcome.assert_no_leak(&world.tokens());
    world.assert_no_leak_in_files(&[API_KEY]);
}

/// The agent writes a secret it was given into the repository, in `form`.
async fn secret_committed_by_the_agent(
    engine: &DockerEngine,
    stem: &str,
    write: &str,
) -> (World, Outcome) {
    let world = World::new();
    let agent = format!("cat > /dev/null\nmkdir -p src\n{write}\necho done\n");
    let mut yaml = Blueprint {
        agent: &agent,
        ..Blueprint::default()
    }
    .yaml();
    yaml = yaml.replace(
        "agent:\n  kind: command\n",
        "agent:\n  kind: command\n  secrets: [API_KEY]\n",
    );
    crate::support::write(
        world.dir.path(),
        "maxions.yaml",
        "secrets:\n  API_KEY: { env: E2E_API_KEY }\n",
    );
    let task = world.task(stem, "Configure the client.", &yaml);
    let forge = world.app_forge();
    let outcome = Run::new(engine, &task, Some(&forge)).go().await;
    (world, outcome)
}

#[tokio::test]
async fn a_secret_the_agent_commits_is_never_pushed() {
    let Some(engine) = engine("runner-leak").await else {
        return;
    };
    for (stem, write) in [
        (
            "leak-plain",
            r#"printf 'const key = "%s";\n' "$API_KEY" > src/config.js"#,
        ),
        (
            "leak-base64",
            r#"printf '%s' "$API_KEY" | base64 > src/config.js"#,
        ),
    ] {
        let (world, outcome) = secret_committed_by_the_agent(&engine, stem, write).await;
        outcome.assert_status(RunStatus::Failed);
        let reason = outcome.reason();
        assert!(reason.contains("API_KEY"), "names the secret: {reason}");
        assert!(reason.contains("src/config.js"), "names the file: {reason}");
        assert!(!reason.contains(API_KEY));
        assert_eq!(outcome.step("commit").status, StepStatus::Failed);
        assert_eq!(
            world.branch(&format!("maxions/{stem}")),
            None,
            "nothing pushed"
        );
        assert!(world.git.pushes().is_empty());
        assert_eq!(world.fake.count("POST", PULLS), 0, "no pull request");
        outcome.assert_no_leak(&[API_KEY.to_owned()]);
    }
}

#[tokio::test]
async fn code_changed_after_the_checks_is_not_committed() {
    let Some(engine) = engine("runner-aftercheck").await else {
        return;
    };
    let world = World::new();
    let middle = r#"  - id: checks
    check:
      - { id: present, run: "cd /workspace/repo && test -f TASK.md" }
  - id: describe
    agent: "only describe the change"
"#;
    let agent = "cat > /tmp/prompt.txt\nif grep -q describe /tmp/prompt.txt; then echo 'rm -rf /' >> TASK.md; else cp /tmp/prompt.txt TASK.md; fi\n";
    let blueprint = Blueprint {
        agent,
        middle,
        ..Blueprint::default()
    };
    let task = world.task("aftercheck", "Write TASK.md.", &blueprint.yaml());
    let forge = world.app_forge();
    let outcome = Run::new(&engine, &task, Some(&forge)).go().await;

    outcome.assert_status(RunStatus::Failed);
    assert!(
        outcome
            .reason()
            .contains("changed after step `checks` checked it"),
        "{}",
        outcome.reason()
    );
    assert_eq!(world.branch("maxions/aftercheck"), None);
    assert_eq!(world.fake.count("POST", PULLS), 0);
}

#[tokio::test]
async fn output_written_a_byte_at_a_time_is_logged_in_few_events() {
    let Some(engine) = engine("runner-bytes").await else {
        return;
    };
    let world = World::new();
    let middle = r#"  - id: drip
    run: |
      i=0
      while [ $i -lt 20000 ]; do printf x; i=$((i+1)); done
"#;
    let blueprint = Blueprint {
        middle,
        ..Blueprint::default()
    };
    let task = world.task("drip", "Drip.", &blueprint.yaml());
    let forge = world.app_forge();
    let outcome = Run::new(&engine, &task, Some(&forge)).go().await;
    assert_eq!(outcome.step("drip").status, StepStatus::Succeeded);
    assert_eq!(outcome.output("drip"), "x".repeat(20_000));
    let events = outcome
        .events
        .iter()
        .filter(|e| matches!(&e.event, Event::Output { step, .. } if step == "drip"))
        .count();
    assert!(
        events < 200,
        "{events} output events for 20,000 one-byte writes"
    );
}

#[tokio::test]
async fn a_task_without_a_base_starts_from_the_repositorys_default_branch() {
    let Some(engine) = engine("runner-default-base").await else {
        return;
    };
    let world = World::new();
    // The repository's default branch is `trunk`, not `main`.
    let repo = world.git.repo_path("octo", "hello");
    let renamed = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["branch", "-m", "main", "trunk"])
        .status()
        .unwrap();
    assert!(renamed.success());
    let task = standard_task(&world, "nobase", "Write the task.");
    let yaml = std::fs::read_to_string(&task).unwrap();
    std::fs::write(&task, yaml.replace("base: main\n", "")).unwrap();
    let forge = world.app_forge();
    let outcome = Run::new(&engine, &task, Some(&forge)).go().await;

    outcome.assert_status(RunStatus::Succeeded);
    assert_eq!(outcome.result.base, "trunk");
    let head = world.branch("maxions/nobase").expect("pushed");
    let trunk = world.branch("trunk").unwrap();
    let parent = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["rev-parse", &format!("{head}^")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&parent.stdout).trim(), trunk);
    assert_eq!(world.fake.pulls()[0].base, "trunk");
}

// ---------------------------------------------------------------------------------------------
// The forge under faults, seen from a run (the forge's own retries: tests/it/forge_faults.rs).

#[tokio::test]
async fn a_forge_that_recovers_leaves_one_pull_request_and_a_succeeded_run() {
    let Some(engine) = engine("runner-forge-blip").await else {
        return;
    };
    let world = World::new();
    let task = standard_task(&world, "blip", "Anything.");
    // The create takes effect, then GitHub rate-limits the answer away; the look that follows
    // finds the pull request.
    world.fake.fail(
        "POST",
        PULLS,
        crate::support::github::Fault::secondary_rate_limit().after_handling(),
    );
    world.fake.fail(
        "GET",
        PULLS,
        crate::support::github::Fault::server_error(502),
    );

    let outcome = Run::new(&engine, &task, Some(&world.app_forge()))
        .go()
        .await;

    outcome.assert_status(RunStatus::Succeeded);
    assert_eq!(world.fake.pulls().len(), 1, "exactly one pull request");
    assert_eq!(world.fake.count("POST", PULLS), 1);
    let pr = outcome.result.pull_request.as_ref().unwrap();
    assert_eq!(pr.number, Some(world.fake.pulls()[0].number));
    outcome.assert_no_leak(&world.tokens());
}

#[tokio::test]
async fn a_forge_that_stays_down_fails_the_run_saying_what_it_answered_and_what_to_do() {
    let Some(engine) = engine("runner-forge-down").await else {
        return;
    };
    let world = World::new();
    let task = standard_task(&world, "down", "Anything.");
    world.fake.fail(
        "POST",
        PULLS,
        crate::support::github::Fault::server_error(502).times(100),
    );

    let outcome = Run::new(&engine, &task, Some(&world.app_forge()))
        .go()
        .await;

    outcome.assert_status(RunStatus::Failed);
    let reason = outcome.reason();
    for needle in [
        "step `pr` failed",
        "GitHub answered 502",
        "opening a pull request",
        "run again later",
        "tried 4 times",
    ] {
        assert!(reason.contains(needle), "`{needle}` missing in: {reason}");
    }
    assert_eq!(
        world.fake.count("POST", PULLS),
        4,
        "a few attempts, not more"
    );
    assert!(world.fake.pulls().is_empty());
    // The branch was pushed: a re-run opens the pull request without redoing the work twice.
    assert!(world.branch("maxions/down").is_some());
    outcome.assert_no_leak(&world.tokens());
    world.assert_no_leak_in_files(&[]);
}
