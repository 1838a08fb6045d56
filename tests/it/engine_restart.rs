//! The Docker engine going away in the middle of a run, and coming back: a second, real engine
//! (see `support::engine`), stopped or killed under a real `maxions run` and `maxions daemon`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maxions::sandbox::image::SANDBOX_IMAGE;
use serde_json::Value;

use crate::support::api::{ApiDaemon, PATIENCE, Project, SANDBOX, TOKEN, scaffold};
use crate::support::engine::{SecondEngine, second_engine};

fn lines(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The run logs in a task's `.runs` folder, by name.
fn logs(runs: &Path) -> Vec<std::path::PathBuf> {
    let mut logs: Vec<_> = std::fs::read_dir(runs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    logs.sort();
    logs
}

fn newest_log(runs: &Path) -> Option<std::path::PathBuf> {
    logs(runs).pop()
}

/// A foreground run in `root` on `engine`, started in the background.
fn spawn_run(root: &Path, engine: &SecondEngine, task: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_maxions"))
        .current_dir(root)
        .args(["run", task])
        .env("DOCKER_HOST", &engine.host)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("maxions run")
}

fn engine_goes_away_mid_step(kill: bool) {
    let Some((_turn, mut engine)) = second_engine(if kill { "kill" } else { "stop" }, false) else {
        return;
    };
    let loaded = engine.load(SANDBOX_IMAGE);
    eprintln!("loaded {SANDBOX_IMAGE} onto the second engine in {loaded:?}");
    let (dir, origin) = scaffold("");
    let root = dir.path().canonicalize().unwrap();
    crate::support::write(
        &root,
        "blueprints/long.yaml",
        &format!(
            "name: long\n{SANDBOX}steps:\n  - id: checkout\n    checkout: {{}}\n  - id: wait\n    run: echo waiting; sleep 300\n"
        ),
    );
    let task = |stem: &str, blueprint: &str| {
        crate::support::write(
            &root,
            &format!("jobs/{stem}.yaml"),
            &format!(
                "task: t\nrepo: file://{}\nblueprint: {blueprint}\nbase: main\n",
                origin.display()
            ),
        );
        format!("jobs/{stem}.yaml")
    };
    let long = task("long", "long");
    let mut child = spawn_run(&root, &engine, &long);
    let runs = root.join("jobs/long.runs");
    let started = Instant::now();
    loop {
        let running = newest_log(&runs).is_some_and(|log| {
            lines(&log)
                .iter()
                .any(|l| l["type"] == "step_started" && l["step"] == "wait")
        });
        if running {
            break;
        }
        if child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the run ended or stalled before its step `wait` started:\n{}\nits log:\n{}",
                String::from_utf8_lossy(&output.stderr),
                newest_log(&runs)
                    .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let went = Instant::now();
    if kill {
        engine.kill9();
    } else {
        engine.stop();
    }
    let mut status = None;
    while went.elapsed() < Duration::from_secs(120) {
        if let Some(done) = child.try_wait().unwrap() {
            status = Some(done);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended_after = went.elapsed();
    let Some(status) = status else {
        let _ = child.kill();
        panic!("maxions run did not end within 120 s of the engine going away");
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("the run ended {ended_after:?} after the engine went away ({status}):\n{stderr}");
    let log = newest_log(&runs).unwrap();
    let events = lines(&log);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'), "the log ends with a whole line");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "run_finished", "{text}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "run_finished")
            .count(),
        1,
        "{text}"
    );
    // Not the task's fault: `interrupted`, saying what went away; and promptly.
    assert_eq!(last["status"], "interrupted", "{text}");
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("the Docker engine went away"), "{reason}");
    assert!(ended_after < Duration::from_secs(60), "{ended_after:?}");
    assert_eq!(status.code(), Some(130));
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("jobs/long.result.json")).unwrap())
            .unwrap();
    assert_eq!(result["status"], "interrupted");

    // Back: the next run on it sweeps what the last one could not remove, and works.
    engine.start_again();
    let quick = task("quick", "quick");
    let done = spawn_run(&root, &engine, &quick)
        .wait_with_output()
        .unwrap();
    assert!(
        done.status.success(),
        "a run after the engine came back: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(
        engine.containers(),
        Vec::<String>::new(),
        "no container is left"
    );
    assert_eq!(engine.volumes(), Vec::<String>::new(), "no volume is left");
    drop(dir);
}

#[test]
fn an_engine_stopped_mid_step_ends_the_run_clearly_and_leaves_nothing() {
    engine_goes_away_mid_step(false);
}

#[test]
fn an_engine_killed_mid_step_ends_the_run_clearly_and_leaves_nothing() {
    engine_goes_away_mid_step(true);
}

/// The daemon's side: a run the engine drops is `interrupted`, nothing starts while the engine
/// is down, and when it answers again the run is queued again and finishes there, with no
/// container left and every log whole.
#[test]
fn a_daemon_requeues_a_run_the_engine_dropped_and_finishes_it_when_the_engine_is_back() {
    let Some((_turn, mut engine)) = second_engine("daemon", false) else {
        return;
    };
    engine.load(SANDBOX_IMAGE);
    let project = Project::new("");
    let root = project.root();
    // Long enough to be caught in the middle the first time, short enough to finish the second.
    crate::support::write(
        &root,
        "blueprints/nap.yaml",
        &format!(
            "name: nap\n{SANDBOX}steps:\n  - id: checkout\n    checkout: {{}}\n  - id: nap\n    run: echo napping; sleep 4\n"
        ),
    );
    let mut daemon = ApiDaemon::start_with(
        &project,
        &[("MAXIONS_API_TOKEN", TOKEN), ("DOCKER_HOST", &engine.host)],
    );
    project.task("t", "nap", "nap");
    let runs = root.join("tasks/t.runs");
    let step_started = |log: &Path| {
        lines(log)
            .iter()
            .any(|l| l["type"] == "step_started" && l["step"] == "nap")
    };
    let started = Instant::now();
    while !newest_log(&runs).is_some_and(|l| step_started(&l)) {
        assert!(
            started.elapsed() < PATIENCE,
            "the step started:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let first = newest_log(&runs).unwrap();
    engine.stop();
    let started = Instant::now();
    while !lines(&first).iter().any(|l| l["type"] == "run_finished") {
        assert!(
            started.elapsed() < PATIENCE,
            "the first run ended:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // While the engine is down, nothing starts: no second log appears.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(logs(&runs).len(), 1, "{}", daemon.output());
    engine.start_again();
    let result_file = root.join("tasks/t.result.json");
    let started = Instant::now();
    let result = loop {
        let result: Option<Value> = std::fs::read_to_string(&result_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Some(result) = result.filter(|r| r["status"] == "succeeded") {
            break result;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the run was tried again and succeeded:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = daemon.output();
    eprintln!("{output}");
    assert!(
        output.contains("the Docker engine went away under a run"),
        "{output}"
    );
    assert!(
        output.contains("the Docker engine answers again"),
        "{output}"
    );
    let mut logs = logs(&runs);
    // In the order they started (run ids sort by the second they were made, then at random).
    logs.sort_by_key(|log| {
        lines(log)
            .first()
            .and_then(|l| l["ts"].as_str().map(str::to_owned))
    });
    assert_eq!(logs.len(), 2, "one log per attempt: {logs:?}");
    for (log, status) in logs.iter().zip(["interrupted", "succeeded"]) {
        let text = std::fs::read_to_string(log).unwrap();
        let events = lines(log);
        assert!(text.ends_with('\n'));
        let ends: Vec<_> = events
            .iter()
            .filter(|e| e["type"] == "run_finished")
            .collect();
        assert_eq!(ends.len(), 1, "{text}");
        assert_eq!(ends[0]["status"], status, "{text}");
        assert_eq!(events.last().unwrap()["type"], "run_finished", "{text}");
    }
    let second = lines(&logs[1]);
    assert!(
        second[0]["trigger"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted by the Docker engine `local` (attempt 2 of 3)"),
        "{}",
        second[0]
    );
    assert!(result["run"].as_str() == logs[1].file_stem().and_then(|s| s.to_str()));
    assert!(
        daemon.stop().is_some_and(|s| s.success()),
        "{}",
        daemon.output()
    );
    assert_eq!(
        engine.containers(),
        Vec::<String>::new(),
        "no container is left"
    );
    assert_eq!(engine.volumes(), Vec::<String>::new(), "no volume is left");
}
