//! The secret-leak harness: canary secrets go through every path a secret can take (printed
//! plainly by a step, split across output chunks, on stderr, in a failing step's error, in a
//! failing check's output that flows into the fix prompt, in an agent-written pull request body,
//! in maxions' most verbose tracing), through a real `maxions daemon`, its API and SSE stream,
//! and a foreground `maxions run`. Then every byte produced is scanned for every canary in
//! plain, reversed, hex, base64 (three alignments, standard and URL-safe) and URL-encoded form:
//! the run logs and results, every file under the project (state dir and git mirrors
//! included), the daemon's log and the CLI's terminal output, the API's and the stream's
//! answers, every request the fake GitHub and the git server received, and every object pushed.
//! The only place a canary may be is where it is meant to go: the forge token in the
//! `Authorization` header of requests to the forge and the git server.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;

use crate::support::api::{ApiDaemon, Project};
use crate::support::git_http::GitServer;
use crate::support::github::FakeGitHub;
use crate::support::http::Client;

/// The forge's personal access token (a value git and octocrab send as they are).
const PAT: &str = "github_pat_11LEAKCANARY0q7Zp4Xw9Rk2Vb6Ny";
/// A task secret with characters that every encoding changes.
const TASK_SECRET: &str = "mx+Leak/Canary=7fK2q9Zr";
/// The API's bearer token.
const API_TOKEN: &str = "mxapi-Leak+Canary/4Jd8Wq1T";

const CANARIES: [(&str, &str); 3] = [
    ("forge token", PAT),
    ("task secret", TASK_SECRET),
    ("API token", API_TOKEN),
];

/// Every form a canary is looked for in, by name.
fn forms(secret: &str) -> Vec<(String, Vec<u8>)> {
    let bytes = secret.as_bytes();
    let mut forms = vec![
        ("plain".to_owned(), bytes.to_vec()),
        (
            "reversed".to_owned(),
            bytes.iter().rev().copied().collect::<Vec<u8>>(),
        ),
        (
            "hex".to_owned(),
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        ),
        (
            "HEX".to_owned(),
            bytes
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
                .into_bytes(),
        ),
        (
            "url-encoded".to_owned(),
            bytes
                .iter()
                .map(|&b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
                .into_bytes(),
        ),
    ];
    // In base64, a secret's bytes make the same characters wherever it starts, up to which of
    // three positions in a group it starts at: encode it after 0, 1 and 2 bytes and keep the
    // characters made of its bytes alone.
    for (name, engine) in [
        ("base64", &base64::engine::general_purpose::STANDARD_NO_PAD),
        (
            "base64url",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ),
    ] {
        for offset in 0..3 {
            let mut input = vec![0u8; offset];
            input.extend_from_slice(bytes);
            let encoded = engine.encode(&input);
            let whole_groups = input.len() / 3 * 4;
            let skip = (offset * 4).div_ceil(3);
            forms.push((
                format!("{name} at offset {offset}"),
                encoded.as_bytes()[skip..whole_groups].to_vec(),
            ));
        }
    }
    forms.sort();
    forms.dedup_by(|a, b| a.1 == b.1);
    forms
}

/// Everything the harness read, by where it came from.
#[derive(Default)]
struct Outputs {
    items: BTreeMap<String, Vec<u8>>,
}

impl Outputs {
    fn add(&mut self, name: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        let name = name.into();
        let bytes = bytes.into();
        assert!(
            self.items.insert(name.clone(), bytes).is_none(),
            "{name} scanned twice"
        );
    }

    /// Every file below `dir`, named by its path.
    fn add_tree(&mut self, label: &str, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(path) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                for entry in std::fs::read_dir(&path).unwrap().flatten() {
                    stack.push(entry.path());
                }
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(&path)
            {
                let relative = path.strip_prefix(dir).unwrap_or(&path);
                self.add(format!("{label}/{}", relative.display()), bytes);
            }
        }
    }

    /// Every object of a git repository, with its content.
    fn add_git_objects(&mut self, label: &str, repo: &Path) {
        let output = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["cat-file", "--batch-all-objects", "--batch", "--unordered"])
            .stdin(Stdio::null())
            .output()
            .expect("git cat-file");
        assert!(
            output.status.success(),
            "git cat-file in {}",
            repo.display()
        );
        self.add(format!("{label} (every object)"), output.stdout);
    }

    /// Each canary in each form, in every output: the hits, as `output: canary (form)`.
    fn scan(&self) -> (Vec<String>, usize) {
        let mut hits = Vec::new();
        let mut checks = 0;
        for (role, canary) in CANARIES {
            for (form, needle) in forms(canary) {
                for (name, bytes) in &self.items {
                    checks += 1;
                    if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                        hits.push(format!("{name}: the {role} ({form})"));
                    }
                }
            }
        }
        (hits, checks)
    }

    fn bytes(&self) -> usize {
        self.items.values().map(Vec::len).sum()
    }
}

/// The blueprint: every path a secret takes through a run.
fn blueprint() -> String {
    // The command agent saves the prompt it was given where it ends up pushed (so a secret in
    // a fix prompt would be in the pushed objects, or stop the commit), and in its fix round
    // writes the pull request's body with the secret in it.
    let agent = r#"agent:
  kind: command
  command:
    - sh
    - -c
    - |
      cat > /tmp/prompt.txt
      cd /workspace/repo
      cat /tmp/prompt.txt >> prompts.txt
      echo hello > greeting.txt
      echo "agent: the prompt was $(wc -c < /tmp/prompt.txt) bytes"
"#;
    format!(
        r#"name: leaky
sandbox:
  network: none
  timeout: 5m
{agent}steps:
  - id: checkout
    checkout: {{}}
  - id: plain
    secrets: [TASK_SECRET]
    run: |
      echo "plain: $TASK_SECRET"
      echo "stderr: $TASK_SECRET" >&2
      half=$(printf %s "$TASK_SECRET" | cut -c1-9)
      rest=$(printf %s "$TASK_SECRET" | cut -c10-)
      printf 'split: %s' "$half"; sleep 0.3; printf '%s\n' "$rest"
      printf 'byte by byte: '; printf %s "$TASK_SECRET" | fold -w1 | while read -r c; do printf %s "$c"; sleep 0.01; done; echo
  - id: fails
    secrets: [TASK_SECRET]
    continue_on_error: true
    run: |
      echo "fatal: cannot use $TASK_SECRET" >&2
      exit 7
  - id: checks
    secrets: [TASK_SECRET]
    check:
      - id: greeting
        run: |
          echo "the check saw $TASK_SECRET"
          grep -q hello /workspace/repo/greeting.txt
    fix:
      max_rounds: 1
      agent: |
        {{% for c in failed %}}## {{{{ c.id }}}}
        {{{{ c.output }}}}{{% endfor %}}
  - id: describe
    secrets: [TASK_SECRET]
    run: printf 'Made by the leak harness; the key is %s.\n' "$TASK_SECRET" > /tmp/body.txt
    outputs: {{ body: /tmp/body.txt }}
  - id: commit
    commit: {{ message: "Add a greeting" }}
  - id: push
    push: {{}}
  - id: pr
    pull_request: {{ title: "Greeting: {{{{ steps.describe.body }}}}", body: "{{{{ steps.describe.body }}}}" }}
"#
    )
}

fn config(fake: &FakeGitHub, git: &GitServer) -> String {
    format!(
        "secrets:\n  TASK_SECRET: {{ env: LEAK_TASK_SECRET }}\ngithub:\n  api_url: {}\n  web_url: {}\n  token_env: LEAK_PAT\napi:\n  listen: 127.0.0.1:0\n",
        fake.base_url(),
        git.base_url()
    )
}

fn task(branch: &str) -> String {
    format!(
        "task: Create greeting.txt saying hello.\nrepo: octo/hello\nblueprint: leaky\nbase: main\nbranch: maxions/{branch}\n"
    )
}

#[test]
fn the_scanner_finds_every_form_it_names() {
    for (role, canary) in CANARIES {
        for (form, needle) in forms(canary) {
            let mut outputs = Outputs::default();
            let mut bytes = b"noise before ".to_vec();
            bytes.extend_from_slice(&needle);
            bytes.extend_from_slice(b" and after");
            outputs.add("sample", bytes);
            let (hits, _) = outputs.scan();
            assert!(
                hits.iter().any(|h| h.contains(role) && h.contains(&form)),
                "{role} in {form} not found: {hits:?}"
            );
        }
        // The real encodings, wherever in a stream they start, are found.
        for pad in 0..3 {
            let mut input = vec![b'x'; pad];
            input.extend_from_slice(canary.as_bytes());
            input.extend_from_slice(b"tail");
            for encoded in [
                base64::engine::general_purpose::STANDARD.encode(&input),
                base64::engine::general_purpose::URL_SAFE.encode(&input),
            ] {
                let mut outputs = Outputs::default();
                outputs.add("sample", encoded.clone());
                assert!(!outputs.scan().0.is_empty(), "{role} in {encoded}");
            }
        }
    }
    assert_eq!(forms(TASK_SECRET).len(), 11);
}

#[test]
fn no_canary_reaches_any_output_in_any_form() {
    if !crate::support::docker::available("leaks") {
        return;
    }
    let fake = FakeGitHub::standard(PAT);
    let git = GitServer::start_with(fake.token_check());
    git.create_repo("octo", "hello");
    let project = Project::new(&config(&fake, &git));
    let root = project.root();
    crate::support::write(&root, "blueprints/leaky.yaml", &blueprint());
    let env = [
        ("MAXIONS_API_TOKEN", API_TOKEN),
        ("LEAK_PAT", PAT),
        ("LEAK_TASK_SECRET", TASK_SECRET),
        ("MAXIONS_LOG", "trace"),
    ];
    let mut outputs = Outputs::default();

    // The daemon, at its most verbose, with a task submitted through the API.
    let mut daemon = ApiDaemon::start_with(&project, &env);
    let submitted = daemon.submit("leak", &task("leak-daemon"));
    assert_eq!(submitted.status(), 201, "{}", submitted.text());
    outputs.add("POST /maxions answer", submitted.everything());
    let id = submitted.json()["run"]["id"]
        .as_str()
        .expect("a queued run")
        .to_owned();
    let detail = daemon.wait_run(&id, "the end", |run| {
        run["status"] != "queued" && run["status"] != "running"
    });
    // The step that fails on purpose (`continue_on_error`) fails the run, after its pull request.
    assert_eq!(
        detail["status"],
        "failed",
        "{detail:#}\n{}",
        daemon.output()
    );
    assert_eq!(
        detail["reason"], "step `fails` failed: exited with code 7: fatal: cannot use ***",
        "{detail:#}"
    );
    assert!(detail["pull_request"].is_string(), "{detail:#}");
    for path in [
        "/maxions".to_owned(),
        format!("/maxions/{id}"),
        format!("/maxions/{id}/logs"),
        "/schedules".to_owned(),
        "/metrics".to_owned(),
        "/api/config".to_owned(),
    ] {
        let response = daemon.call("GET", &path, None);
        assert_eq!(response.status(), 200, "GET {path}");
        outputs.add(format!("GET {path}"), response.everything());
    }
    // The whole stream of the finished run, and refusals that must not echo the token.
    let mut stream = daemon
        .client()
        .get(&format!("/maxions/{id}/stream"))
        .stream();
    let mut sse = String::from_utf8_lossy(&stream.head.raw).into_owned();
    while let Some(event) = stream.next_event() {
        sse.push_str(&format!("{:?} {} {}\n", event.id, event.event, event.data));
        if event.event == "end" {
            break;
        }
    }
    outputs.add(format!("GET /maxions/{id}/stream"), sse);
    let wrong = Client::from_url(&daemon.url)
        .token(&format!("{API_TOKEN}x"))
        .get("/maxions")
        .send();
    assert_eq!(wrong.status(), 401);
    outputs.add("GET /maxions with a wrong token", wrong.everything());
    daemon.stop();
    outputs.add("daemon log (trace)", daemon.output());
    std::fs::remove_file(root.join("daemon.out")).ok();

    // A foreground run, at its most verbose, of a task outside the watched folder.
    crate::support::write(&root, "elsewhere/fg.yaml", &task("leak-foreground"));
    let run = Command::new(env!("CARGO_BIN_EXE_maxions"))
        .current_dir(&root)
        .args(["-vvv", "--color", "always", "run", "elsewhere/fg.yaml"])
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .expect("maxions run");
    let terminal = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(run.status.code(), Some(1), "maxions run:\n{terminal}");
    outputs.add("maxions run stdout", run.stdout);
    outputs.add("maxions run stderr (trace)", run.stderr);

    // Both runs went all the way: the fix round ran, two pull requests with the agent's body.
    let pulls = fake.pulls();
    assert_eq!(pulls.len(), 2, "{pulls:?}");
    for pull in &pulls {
        assert!(
            pull.body.contains("the key is ***"),
            "the body came through, masked: {}",
            pull.body
        );
    }
    let log = std::fs::read_dir(root.join("elsewhere/fg.runs"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("the foreground run's log");
    for sign in [
        "\"fix_round\"",
        "fatal: cannot use ***",
        "split: ",
        "the check saw ***",
    ] {
        assert!(log.contains(sign), "the log lacks {sign:?}:\n{log}");
    }

    // Everything on disk, everything the fakes received, everything pushed.
    outputs.add_tree("project", &root);
    // The one place the forge token belongs is the credential of requests to the forge and
    // the git server (which the fakes record apart, as `token`): everything else is scanned.
    for (n, request) in fake.requests().iter().enumerate() {
        outputs.add(
            format!(
                "fake GitHub request #{n} {} {}",
                request.method, request.path
            ),
            format!(
                "{} {} {}\n{}",
                request.method,
                request.full_path,
                request.query.as_deref().unwrap_or(""),
                request
                    .body
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
        );
    }
    for (n, request) in git.requests().iter().enumerate() {
        outputs.add(
            format!("git server request #{n}"),
            format!(
                "{} {} {}",
                request.method,
                request.path,
                request.query.as_deref().unwrap_or("")
            ),
        );
    }
    outputs.add_git_objects("pushed repository", &git.repo_path("octo", "hello"));
    // Objects on disk are compressed: the mirrors maxions keeps are read object by object too.
    let mut mirrors = 0;
    let mut stack = vec![root.join(".maxions/mirrors")];
    while let Some(dir) = stack.pop() {
        if dir.extension().is_some_and(|x| x == "git") {
            let name = dir.strip_prefix(&root).unwrap().display().to_string();
            outputs.add_git_objects(&name, &dir);
            mirrors += 1;
        } else if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    assert!(mirrors >= 1, "no mirror below .maxions/mirrors");

    let (hits, checks) = outputs.scan();
    let forms_per = forms(TASK_SECRET).len();
    eprintln!(
        "leak harness: {} canaries x {forms_per} forms x {} outputs ({} bytes): {checks} checks, {} hits",
        CANARIES.len(),
        outputs.items.len(),
        outputs.bytes(),
        hits.len()
    );
    assert!(hits.is_empty(), "secrets leaked:\n{}", hits.join("\n"));
}

/// The model provider's key (pi reads it by the name the blueprint gives).
const LLM_KEY: &str = "sk-leak-canary-Qm7+Tz/Wp3=Lx";

/// The LLM route, with the real pi against the scripted provider: the check that fails prints
/// the task secret, and its output is the fix prompt; the agent prints its environment (where
/// its provider key is). Neither the task secret nor anything but masks may reach the provider,
/// and the provider key may reach nothing but the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_provider_gets_no_secret_and_its_key_goes_nowhere_else() {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use maxions::config::load::load_task;
    use maxions::forge::GitHub;
    use maxions::runner::{RunOptions, RunStatus, run};
    use maxions::sandbox::egress::StaticResolver;
    use tokio_util::sync::CancellationToken;

    use crate::support::events::Events;
    use crate::support::github::{APP_ID, INSTALLATION, app_key};
    use crate::support::llm::{ScriptedLlm, Turn};

    let Some(engine) = crate::support::docker::engine("leaks-llm").await else {
        return;
    };
    crate::support::docker::agent_image("pi").await;
    let engine = engine.with_egress_to_loopback_for_tests(
        StaticResolver::new().with("llm.test", [IpAddr::V4(Ipv4Addr::LOCALHOST)]),
    );
    let llm = ScriptedLlm::builder()
        .turn(Turn::shell("env | sort; echo hi > greeting.txt"))
        .turn(Turn::text("I wrote greeting.txt."))
        .turn(Turn::shell("echo hello > greeting.txt"))
        .turn(Turn::text("Fixed."))
        .start();
    let fake = FakeGitHub::standard(PAT);
    let git = GitServer::start_with(fake.token_check());
    let url = git.create_repo("octo", "hello");
    let port = llm.addr().port();
    let dir = crate::support::tree(&[
        (
            "maxions.yaml",
            "secrets:\n  LLM_KEY: { env: LEAK_LLM_KEY }\n  TASK_SECRET: { env: LEAK_TASK_SECRET }\n",
        ),
        (
            "blueprints/llm.yaml",
            &format!(
                "name: llm\nsandbox:\n  network: allowlist\n  allow: [\"llm.test:{port}\"]\n  memory: 2g\n  timeout: 5m\nagent:\n  kind: pi\n  model: fake-model\n  provider: {{ base_url: \"http://llm.test:{port}/v1\", key: LLM_KEY }}\nsteps:\n  - {{ id: checkout, checkout: {{}} }}\n  - {{ id: implement, agent: \"{{{{ task }}}}\" }}\n  - id: checks\n    secrets: [TASK_SECRET]\n    check:\n      - {{ id: greeting, run: \"echo the check saw $TASK_SECRET; grep -q hello /workspace/repo/greeting.txt\" }}\n    fix: {{ max_rounds: 1, agent: \"{{% for c in failed %}}{{{{ c.output }}}}{{% endfor %}}\" }}\n  - {{ id: commit, commit: {{ message: \"Add a greeting\" }} }}\n  - {{ id: push, push: {{}} }}\n  - {{ id: pr, pull_request: {{ title: \"Add a greeting\", body: \"Written by pi.\" }} }}\n"
            ),
        ),
        (
            "tasks/greet.yaml",
            &format!(
                "task: Create greeting.txt saying hello.\nrepo: {url}\nblueprint: llm\nbase: main\n"
            ),
        ),
    ]);
    let loaded = load_task(&dir.path().join("tasks/greet.yaml"), None)
        .unwrap_or_else(|v| panic!("{:#?}", v.diagnostics));
    let forge = GitHub::with_app(
        &fake.base_url(),
        APP_ID,
        INSTALLATION,
        &app_key().private_pem,
    )
    .and_then(|f| f.with_web_url(&git.base_url()))
    .expect("forge");
    let mut options = RunOptions::new(&engine, crate::support::docker::unique("leaks-llm"));
    options.forge = Some(Arc::new(forge));
    options.env = Arc::new(|name| match name {
        "LEAK_LLM_KEY" => Some(LLM_KEY.to_owned()),
        "LEAK_TASK_SECRET" => Some(TASK_SECRET.to_owned()),
        _ => None,
    });
    let events = Events::default();
    let result = run(&loaded, options, &events, CancellationToken::new()).await;
    assert_eq!(result.status, RunStatus::Succeeded, "{:?}", result.reason);
    assert_eq!(result.fix_rounds, 1);

    let requests = llm.requests();
    let mut to_provider = Outputs::default();
    let mut elsewhere = Outputs::default();
    let mut prompt_seen = false;
    for (n, request) in requests.iter().enumerate() {
        let body = request
            .body
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        prompt_seen |= body.contains("the check saw ***");
        let headers: String = request
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\n"))
            .collect();
        to_provider.add(format!("LLM request #{n}"), format!("{headers}\n{body}"));
    }
    assert!(
        prompt_seen,
        "the fix prompt, with the check's output masked, reached the model"
    );
    elsewhere.add("events", serde_json::to_vec(&events.all()).unwrap());
    elsewhere.add("result", serde_json::to_vec(&result).unwrap());
    elsewhere.add_tree("project", dir.path());
    elsewhere.add_git_objects("pushed repository", &git.repo_path("octo", "hello"));
    for (n, request) in fake.requests().iter().enumerate() {
        elsewhere.add(
            format!("fake GitHub request #{n}"),
            request
                .body
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        );
    }
    // The task secret reaches no output at all, the provider's requests included; the provider
    // key nothing but those requests (pi sends it, and the agent's own `env` output goes back to
    // the model as a tool result: that is the agent's provider, which has it).
    let mut hits = Vec::new();
    for (form, needle) in forms(TASK_SECRET) {
        for outputs in [&to_provider, &elsewhere] {
            for (name, bytes) in &outputs.items {
                if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    hits.push(format!("{name}: the task secret ({form})"));
                }
            }
        }
    }
    for (form, needle) in forms(LLM_KEY) {
        for (name, bytes) in &elsewhere.items {
            if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                hits.push(format!("{name}: the provider key ({form})"));
            }
        }
    }
    assert!(
        requests.iter().any(|r| r.api_key() == Some(LLM_KEY)),
        "pi authenticated with the key"
    );
    eprintln!(
        "leak harness (LLM route): 2 canaries x {} forms x {} outputs ({} bytes), {} hits",
        forms(LLM_KEY).len(),
        to_provider.items.len() + elsewhere.items.len(),
        to_provider.bytes() + elsewhere.bytes(),
        hits.len()
    );
    assert!(hits.is_empty(), "secrets leaked:\n{}", hits.join("\n"));
}
