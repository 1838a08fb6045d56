//! Load: 200 task files through one daemon with concurrency 6, an agent that succeeds, fails or
//! hangs (stopped by its step's timeout), and the daemon killed with `kill -9` in the middle.
//! Every task must end with a result that fits what its agent did, no run may be left without
//! its end, no sandbox may outlive the runs, and the daemon's memory must stay bounded.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::api::{ApiDaemon, Project};
use crate::support::write;

const TASKS: usize = 200;
/// How long the whole load may take on a busy 2-core machine.
const LOAD_PATIENCE: Duration = Duration::from_secs(600);
/// The bound on the daemon's resident memory at any sample (it idles near 17 MB).
const RSS_BOUND: u64 = 150 * 1024 * 1024;

/// What task `i`'s agent does: every 7th fails, every 11th hangs, the rest succeed.
fn behaviour(i: usize) -> &'static str {
    if i % 11 == 5 {
        "HANG"
    } else if i % 7 == 3 {
        "FAIL"
    } else {
        "WORK"
    }
}

/// The status and a word of the reason task `i` must end with: a hung agent is stopped by its
/// step's timeout, which fails the run (the run's own `timed_out` is for the sandbox timeout).
fn expected(i: usize) -> (&'static str, &'static str) {
    match behaviour(i) {
        "HANG" => ("failed", "timed out after 3s"),
        "FAIL" => ("failed", "`work` failed"),
        _ => ("succeeded", ""),
    }
}

fn results(project: &Project) -> BTreeMap<usize, Value> {
    (0..TASKS)
        .filter_map(|i| {
            let text =
                std::fs::read_to_string(project.root().join(format!("tasks/t{i:03}.result.json")))
                    .ok()?;
            let value: Value = serde_json::from_str(&text).ok()?;
            // `interrupted` is a step on the way (the run is queued again), not an end.
            (value["status"] != "interrupted").then_some((i, value))
        })
        .collect()
}

fn containers(label: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output()
        .expect("run docker ps");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Waits until `done` holds, sampling the daemon's memory; returns the largest sample.
fn wait_sampling(daemon: &ApiDaemon, what: &str, started: Instant, done: impl Fn() -> bool) -> u64 {
    let mut peak = 0;
    loop {
        if let Some(rss) = daemon.rss() {
            peak = peak.max(rss);
        }
        if done() {
            return peak;
        }
        assert!(
            started.elapsed() < LOAD_PATIENCE,
            "{what} did not happen within {LOAD_PATIENCE:?}; the daemon's output:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_hundred_tasks_with_failing_and_hanging_agents_and_a_crash_all_end() {
    if !crate::support::docker::available("load") {
        return;
    }
    let project = Project::new("concurrency: 6\nkeep_runs: 5\nshutdown_grace: 5s\n");
    let root = project.root();
    write(
        &root,
        "blueprints/load.yaml",
        "name: load\nsandbox:\n  network: none\n  timeout: 2m\nagent:\n  kind: command\n  command:\n    - sh\n    - -c\n    - |\n      prompt=$(cat)\n      case \"$prompt\" in\n        *HANG*) echo 'thinking forever'; sleep 600 ;;\n        *FAIL*) echo 'the agent gives up'; exit 3 ;;\n      esac\n      echo done > /workspace/repo/out.txt\nsteps:\n  - id: checkout\n    checkout: {}\n  - id: work\n    agent: \"{{ task }}\"\n    timeout: 3s\n",
    );
    let started = Instant::now();
    let mut daemon = ApiDaemon::start(&project);
    for i in 0..TASKS {
        project.task(
            &format!("t{i:03}"),
            "load",
            &format!("task {i} {}", behaviour(i)),
        );
    }

    // The middle: a third of the tasks have ended; then `kill -9`, and a new daemon.
    let peak_before = wait_sampling(&daemon, "a third of the tasks ending", started, || {
        results(&project).len() >= TASKS / 3
    });
    let first_owner = daemon.owner();
    daemon.kill9();
    let mut daemon = ApiDaemon::start(&project);
    let peak_after = wait_sampling(&daemon, "every task ending", started, || {
        results(&project).len() == TASKS
    });

    let results = results(&project);
    let wrong: Vec<String> = results
        .iter()
        .filter(|(i, r)| {
            let (status, reason) = expected(**i);
            r["status"] != status || !r["reason"].as_str().unwrap_or_default().contains(reason)
        })
        .map(|(i, r)| format!("t{i:03}: {} ({})", r["status"], r["reason"]))
        .collect();
    assert!(
        wrong.is_empty(),
        "tasks that ended otherwise than their agent did:\n{}",
        wrong.join("\n")
    );

    // Every log has one end, and its lines are whole and in order.
    let mut logs = 0;
    for i in 0..TASKS {
        let dir = root.join(format!("tasks/t{i:03}.runs"));
        for entry in std::fs::read_dir(&dir)
            .expect("a runs dir")
            .filter_map(Result::ok)
        {
            logs += 1;
            let text = std::fs::read_to_string(entry.path()).expect("a log");
            let lines: Vec<Value> = text
                .lines()
                .map(|l| {
                    serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("{}: {e}: {l}", entry.path().display()))
                })
                .collect();
            let seqs: Vec<u64> = lines
                .iter()
                .map(|l| l["seq"].as_u64().unwrap_or(0))
                .collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{}: {seqs:?}",
                entry.path().display()
            );
            let ends = lines.iter().filter(|l| l["type"] == "run_finished").count();
            assert_eq!(ends, 1, "{}: {ends} ends", entry.path().display());
            assert_eq!(
                lines.last().map(|l| &l["type"]),
                Some(&Value::from("run_finished"))
            );
        }
    }
    assert!(logs >= TASKS, "{logs} logs for {TASKS} tasks");

    // The API agrees, and nothing is left queued or running.
    let status = daemon.get_json("/maxions?status=running");
    assert_eq!(status["runs"], serde_json::json!([]), "{status}");
    let queued = daemon.get_json("/maxions?status=queued");
    assert_eq!(queued["runs"], serde_json::json!([]), "{queued}");

    let second_owner = daemon.owner();
    daemon.stop();
    for owner in [first_owner, second_owner] {
        let left = containers(&format!("maxions.owner={owner}"));
        assert!(
            left.is_empty(),
            "sandboxes left by the daemon {owner}: {left:?}"
        );
    }
    let peak = peak_before.max(peak_after);
    eprintln!(
        "load: {TASKS} tasks, {logs} run logs, in {:.0?}; daemon VmRSS peak {:.1} MB",
        started.elapsed(),
        peak as f64 / 1e6
    );
    assert!(peak < RSS_BOUND, "the daemon's memory reached {peak} bytes");
}
