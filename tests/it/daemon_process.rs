//! `maxions daemon` as an operator runs it: the real binary on a project folder with a local
//! `file://` repository, the real watcher, real containers, real signals and `kill -9`. Each test
//! waits on what the daemon writes (state, logs, results) and asserts what a user would see.

use std::cell::RefCell;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cli::Maxions;
use crate::support::write;

/// How long any one condition may take: generous, since 2 cores serve several builds.
const PATIENCE: Duration = Duration::from_secs(90);

/// A step that blocks until the test opens its gate (`docker exec … touch /tmp/<gate>`), so that
/// a run can be caught in the middle. It gives up after 90 s so that nothing hangs for ever.
fn gate(id: &str) -> String {
    format!(
        "  - id: {id}\n    run: |\n      i=0\n      while [ ! -e /tmp/{id} ]; do\n        sleep 0.1; i=$((i+1))\n        if [ $i -gt 900 ]; then echo 'the gate never opened'; exit 9; fi\n      done\n      echo 'through {id}'\n"
    )
}

// ---------------------------------------------------------------------------------------------
// The world: a project folder like the one `maxions demo` makes.

/// `maxions.yaml`, `blueprints/`, `tasks/` and `origin/repo.git` (a bare repository with one
/// commit on `main`) in a temporary directory.
struct Project {
    dir: tempfile::TempDir,
    origin: PathBuf,
}

impl Project {
    /// A project whose `maxions.yaml` holds `config`, with two blueprints: `quick` (checkout,
    /// one command) and `gated` (checkout, then the gates `gate1` and `gate2`).
    fn new(config: &str) -> Self {
        let (dir, origin) = crate::support::api::scaffold(config);
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let sandbox = crate::support::api::SANDBOX;
        write(
            &root,
            "blueprints/gated.yaml",
            &format!(
                "name: gated\n{sandbox}steps:\n  - id: checkout\n    checkout: {{}}\n{}{}",
                gate("gate1"),
                gate("gate2")
            ),
        );
        std::fs::create_dir_all(root.join("tasks")).expect("tasks dir");
        Self { dir, origin }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().expect("canonical temp dir")
    }

    fn task_path(&self, stem: &str) -> PathBuf {
        self.root().join(format!("tasks/{stem}.yaml"))
    }

    /// Writes `tasks/<stem>.yaml` on the project's repository with `blueprint`.
    fn task(&self, stem: &str, blueprint: &str, text: &str) -> PathBuf {
        let path = self.task_path(stem);
        std::fs::write(
            &path,
            format!(
                "task: {text}\nrepo: file://{}\nblueprint: {blueprint}\nbase: main\n",
                self.origin.display()
            ),
        )
        .expect("write the task");
        path
    }

    fn result(&self, stem: &str) -> Option<Value> {
        let text =
            std::fs::read_to_string(self.root().join(format!("tasks/{stem}.result.json"))).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The run ids of `stem`'s logs, oldest first: by the time of their first line (run ids
    /// sort by the second only), then by name.
    fn runs(&self, stem: &str) -> Vec<String> {
        let mut runs: Vec<String> =
            std::fs::read_dir(self.root().join(format!("tasks/{stem}.runs")))
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter_map(|n| n.strip_suffix(".jsonl").map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
        runs.sort_by_cached_key(|run| {
            let ts = self.log(stem, run).first().map(|l| l["ts"].to_string());
            (ts, run.clone())
        });
        runs
    }

    /// The complete lines of a run's log (a line being written is left out).
    fn log(&self, stem: &str, run: &str) -> Vec<Value> {
        std::fs::read_to_string(self.root().join(format!("tasks/{stem}.runs/{run}.jsonl")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn state(&self) -> Value {
        std::fs::read_to_string(self.root().join(".maxions/state.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    /// `maxions ARGS` in the project folder.
    fn maxions(&self, args: &[&str]) -> crate::support::cli::Outcome {
        Maxions::new().current_dir(self.root()).args(args).run()
    }
}

/// The last event of a log, when it is `run_finished`.
fn finished(log: &[Value]) -> Option<&Value> {
    log.last().filter(|l| l["type"] == "run_finished")
}

fn has(log: &[Value], kind: &str, step: Option<&str>) -> bool {
    log.iter()
        .any(|l| l["type"] == kind && step.is_none_or(|s| l["step"] == s))
}

fn task_of(value: &Value) -> String {
    value["task"].as_str().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------------------------------------
// The daemon process.

/// A `maxions daemon` child with its output in a file. Dropped, it is killed and its
/// containers removed, so a failing test leaves nothing behind.
struct Daemon {
    child: RefCell<Child>,
    pid: u32,
    output: PathBuf,
    owner: String,
}

impl Daemon {
    /// Starts the daemon in `project` and waits until its loop runs (it has recovered what a
    /// previous one left and listens).
    fn start(project: &Project, name: &str) -> Self {
        let daemon = Self::spawn(project, name);
        daemon.wait_until("the daemon started", || {
            daemon
                .output()
                .contains("maxions daemon started")
                .then_some(())
        });
        daemon
    }

    fn spawn(project: &Project, name: &str) -> Self {
        let output = project.root().join(format!("{name}.out"));
        let file = File::create(&output).expect("daemon output file");
        let child = Command::new(env!("CARGO_BIN_EXE_maxions"))
            .current_dir(project.root())
            .args(["-v", "daemon"])
            .env("NO_COLOR", "1")
            .env_remove("MAXIONS_LOG")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the output file"))
            .stderr(file)
            .spawn()
            .expect("spawn maxions daemon");
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let pid = child.id();
        Self {
            child: RefCell::new(child),
            pid,
            output,
            owner: format!("{}/{pid}", boot.trim()),
        }
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, once the process has exited.
    fn exit_status(&self) -> Option<ExitStatus> {
        self.child.borrow_mut().try_wait().ok().flatten()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Polls `check` until it gives a value; fails after [`PATIENCE`] with the daemon's output.
    fn wait_until<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(value) = check() {
                return value;
            }
            if let Some(status) = self.exit_status() {
                panic!(
                    "waiting for {what}, the daemon exited ({status}); its output:\n{}",
                    self.output()
                );
            }
            assert!(
                started.elapsed() < PATIENCE,
                "timed out waiting for {what}; the daemon's output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}", self.pid());
    }

    fn running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits for the process to exit (within `within`) and returns its status.
    fn exited(&self, within: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            assert!(
                started.elapsed() < within,
                "the daemon did not exit within {within:?}; its output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`, and the process reaped.
    fn kill9(&self) {
        self.signal("-KILL");
        self.exited(PATIENCE);
    }

    /// SIGTERM, then expects exit status 0 within `within`.
    fn stop(&self, within: Duration) {
        self.signal("-TERM");
        let status = self.exited(within);
        assert_eq!(
            status.code(),
            Some(0),
            "the daemon's exit status; its output:\n{}",
            self.output()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
        for id in containers(&format!("maxions.owner={}", self.owner)) {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The ids of the containers (running or not) with `label`.
fn containers(label: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output()
        .expect("run docker ps");
    assert!(
        output.status.success(),
        "docker ps: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// What `docker inspect` says of containers (their labels, state and creation time).
fn describe(ids: &[String]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    let output = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.Id}} created {{.Created}} {{.State.Status}} {{json .Config.Labels}}",
        ])
        .args(ids)
        .output()
        .expect("run docker inspect");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn run_containers(run: &str) -> Vec<String> {
    containers(&format!("maxions.run={run}"))
}

/// Opens `gate` in `run`'s sandbox.
fn open(run: &str, gate: &str) {
    let ids = run_containers(run);
    assert_eq!(ids.len(), 1, "one sandbox for run {run}: {ids:?}");
    let output = Command::new("docker")
        .args(["exec", &ids[0], "touch", &format!("/tmp/{gate}")])
        .output()
        .expect("run docker exec");
    assert!(
        output.status.success(),
        "open {gate} in {run}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether the tests can use Docker (and the images are there); `false` only when
/// `MAXIONS_SKIP_DOCKER=1` asks to skip, which the helper then says.
fn docker(name: &str) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime
        .block_on(crate::support::docker::engine(name))
        .is_some()
}

/// Waits for a new run of `stem` (not one of `known`) and returns its id.
fn new_run(daemon: &Daemon, project: &Project, stem: &str, known: &[String]) -> String {
    daemon.wait_until(&format!("a new run of {stem}"), || {
        project.runs(stem).into_iter().find(|r| !known.contains(r))
    })
}

/// Waits until `run`'s log has `kind` (of `step`, if given).
fn wait_event(
    daemon: &Daemon,
    project: &Project,
    stem: &str,
    run: &str,
    kind: &str,
    step: Option<&str>,
) {
    daemon.wait_until(&format!("{kind} {step:?} in run {run} of {stem}"), || {
        has(&project.log(stem, run), kind, step).then_some(())
    });
}

/// Waits for `run`'s `run_finished` line and returns the whole log.
fn wait_finished(daemon: &Daemon, project: &Project, stem: &str, run: &str) -> Vec<Value> {
    daemon.wait_until(&format!("run {run} of {stem} to finish"), || {
        let log = project.log(stem, run);
        finished(&log).is_some().then_some(log)
    })
}

/// Opens each gate of `run` as it is reached, then waits for its end; returns the log.
fn drive(daemon: &Daemon, project: &Project, stem: &str, run: &str, gates: &[&str]) -> Vec<Value> {
    for gate in gates {
        wait_event(daemon, project, stem, run, "step_started", Some(gate));
        open(run, gate);
    }
    wait_finished(daemon, project, stem, run)
}

/// Asserts a log is one run: seq 1, 2, 3… with no gap, one `run_started` first and one
/// `run_finished` last.
fn assert_whole(log: &[Value], context: &str) {
    let seqs: Vec<u64> = log.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "{context}: seq runs 1, 2, 3… in {log:#?}"
    );
    assert_eq!(
        log.first().map(|l| &l["type"]),
        Some(&Value::from("run_started")),
        "{context}"
    );
    assert_eq!(
        log.iter().filter(|l| l["type"] == "run_started").count(),
        1,
        "{context}: one run_started in {log:#?}"
    );
    assert_eq!(
        log.iter().filter(|l| l["type"] == "run_finished").count(),
        1,
        "{context}: one run_finished in {log:#?}"
    );
}

fn status_of(log: &[Value]) -> String {
    finished(log)
        .and_then(|l| l["status"].as_str())
        .unwrap_or("(not finished)")
        .to_owned()
}

fn reason_of(log: &[Value]) -> String {
    finished(log)
        .and_then(|l| l["reason"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn trigger_of(log: &[Value]) -> String {
    log.first()
        .and_then(|l| l["trigger"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Waits until no container of `run` is left (removal may end just after the log's last line).
fn wait_gone(daemon: &Daemon, run: &str) {
    daemon.wait_until(&format!("the sandbox of run {run} to be removed"), || {
        run_containers(run).is_empty().then_some(())
    });
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn a_dropped_task_runs_once_survives_a_restart_unrun_and_runs_again_when_edited() {
    if !docker("dp-drop") {
        return;
    }
    let project = Project::new("concurrency: 2\n");
    let daemon = Daemon::start(&project, "daemon1");
    project.task("a", "quick", "say hello");
    let run = new_run(&daemon, &project, "a", &[]);
    let log = wait_finished(&daemon, &project, "a", &run);
    assert_whole(&log, "first run");
    assert_eq!(status_of(&log), "succeeded", "{log:#?}");
    assert_eq!(trigger_of(&log), "new task file");
    assert!(
        log.iter()
            .any(|l| l["type"] == "output"
                && l["text"].as_str().is_some_and(|t| t.contains("# repo"))),
        "the checkout of the file:// repository is in the sandbox: {log:#?}"
    );
    let result = daemon.wait_until("a's result", || {
        project.result("a").filter(|r| r["run"] == run.as_str())
    });
    assert_eq!(result["status"], "succeeded");
    wait_gone(&daemon, &run);
    daemon.stop(PATIENCE);

    // Restarted: the unchanged file is known and does not run again. A file dropped after the
    // restart runs; by then `a` would have been queued ahead of it.
    let daemon = Daemon::start(&project, "daemon2");
    project.task("b", "quick", "another");
    let b = new_run(&daemon, &project, "b", &[]);
    assert_eq!(
        status_of(&wait_finished(&daemon, &project, "b", &b)),
        "succeeded"
    );
    assert_eq!(
        project.runs("a"),
        std::slice::from_ref(&run),
        "a ran once: {}",
        daemon.output()
    );

    // Edited: it runs again, and its log says why.
    project.task("a", "quick", "say hello, edited");
    let again = new_run(&daemon, &project, "a", std::slice::from_ref(&run));
    let log = wait_finished(&daemon, &project, "a", &again);
    assert_eq!(status_of(&log), "succeeded", "{log:#?}");
    let trigger = trigger_of(&log);
    assert!(trigger.starts_with("the task file changed"), "{trigger}");
    assert_eq!(project.runs("a").len(), 2);
    drop(daemon);
}

#[test]
fn an_invalid_task_file_gets_a_located_invalid_result_and_the_daemon_carries_on() {
    if !docker("dp-invalid") {
        return;
    }
    let project = Project::new("concurrency: 2\n");
    let daemon = Daemon::start(&project, "daemon");
    let bad = project.task_path("bad");
    std::fs::write(
        &bad,
        format!(
            "task: x\nrepo: file://{}\nblueprint: quick\nbase: main\nbogus_field: 1\n",
            project.origin.display()
        ),
    )
    .expect("write the bad task");
    let result = daemon.wait_until("bad's result", || project.result("bad"));
    assert_eq!(result["status"], "invalid", "{result:#}");
    let diagnostics = result["diagnostics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let located = diagnostics
        .iter()
        .find(|d| d["severity"] == "error")
        .unwrap_or_else(|| panic!("an error diagnostic in {result:#}"));
    assert_eq!(located["line"], 5, "{located:#}");
    assert_eq!(located["column"], 1, "{located:#}");
    assert!(
        located["message"]
            .as_str()
            .is_some_and(|m| m.contains("bogus_field")),
        "{located:#}"
    );
    let reason = result["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(":5:1:"), "the reason locates it: {reason}");
    assert!(project.runs("bad").is_empty(), "nothing ran");
    assert!(
        daemon.running(),
        "the daemon carries on: {}",
        daemon.output()
    );

    // A valid file dropped after it still runs.
    project.task("good", "quick", "fine");
    let run = new_run(&daemon, &project, "good", &[]);
    assert_eq!(
        status_of(&wait_finished(&daemon, &project, "good", &run)),
        "succeeded"
    );
    daemon.stop(PATIENCE);
}

#[test]
fn deleting_a_task_file_mid_run_cancels_the_run_and_removes_its_sandbox() {
    if !docker("dp-delete") {
        return;
    }
    let project = Project::new("concurrency: 2\n");
    let daemon = Daemon::start(&project, "daemon");
    let task = project.task("a", "gated", "wait");
    let run = new_run(&daemon, &project, "a", &[]);
    wait_event(&daemon, &project, "a", &run, "step_started", Some("gate1"));
    assert_eq!(run_containers(&run).len(), 1, "its sandbox runs");
    std::fs::remove_file(&task).expect("delete the task file");
    let log = wait_finished(&daemon, &project, "a", &run);
    assert_whole(&log, "cancelled run");
    assert_eq!(status_of(&log), "cancelled", "{log:#?}");
    assert_eq!(reason_of(&log), "cancelled: the task file was deleted");
    let result = daemon.wait_until("a's result", || {
        project.result("a").filter(|r| r["run"] == run.as_str())
    });
    assert_eq!(result["status"], "cancelled");
    wait_gone(&daemon, &run);
    daemon.stop(PATIENCE);
}

/// Where a run is when the daemon gets `kill -9`.
#[derive(Debug, Clone, Copy)]
enum Point {
    /// Its `running` entry is in state.json (its log may not exist yet).
    Running,
    /// Its sandbox is up.
    SandboxReady,
    /// Inside a step (`gate1` waits).
    InStep,
    /// A step finished and the next one waits (`gate2`).
    AfterStep,
}

#[test]
fn kill_9_at_any_point_of_a_run_loses_nothing_and_leaves_no_container() {
    if !docker("dp-kill") {
        return;
    }
    for point in [
        Point::Running,
        Point::SandboxReady,
        Point::InStep,
        Point::AfterStep,
    ] {
        kill_9_at(point);
    }
}

fn kill_9_at(point: Point) {
    let context = format!("kill -9 at {point:?}");
    let project = Project::new("concurrency: 1\n");
    let first = Daemon::start(&project, "daemon1");
    let a_path = project.task("a", "gated", "held");
    let b_path = project.task("b", "quick", "queued behind");
    // `a` runs, `b` waits behind it (one at a time).
    let interrupted = first.wait_until(&format!("{context}: a running, b queued"), || {
        let state = project.state();
        let running = state["running"].as_array()?;
        let queued = state["queue"].as_array()?;
        (running.len() == 1
            && task_of(&running[0]) == a_path.display().to_string()
            && queued
                .iter()
                .any(|e| task_of(e) == b_path.display().to_string()))
        .then(|| running[0]["run"].as_str().map(str::to_owned))
        .flatten()
    });
    match point {
        Point::Running => {}
        Point::SandboxReady => {
            wait_event(&first, &project, "a", &interrupted, "sandbox_ready", None);
        }
        Point::InStep => {
            wait_event(
                &first,
                &project,
                "a",
                &interrupted,
                "step_started",
                Some("gate1"),
            );
            assert_eq!(
                run_containers(&interrupted).len(),
                1,
                "{context}: its sandbox runs"
            );
        }
        Point::AfterStep => {
            wait_event(
                &first,
                &project,
                "a",
                &interrupted,
                "step_started",
                Some("gate1"),
            );
            open(&interrupted, "gate1");
            wait_event(
                &first,
                &project,
                "a",
                &interrupted,
                "step_started",
                Some("gate2"),
            );
            assert_eq!(
                run_containers(&interrupted).len(),
                1,
                "{context}: its sandbox runs"
            );
        }
    }
    first.kill9();
    let before = project.log("a", &interrupted);
    assert!(
        finished(&before).is_none(),
        "{context}: the killed run did not finish: {before:#?}"
    );
    assert!(project.runs("b").is_empty(), "{context}: b had not started");

    let second = Daemon::start(&project, "daemon2");
    // Recovery happened before the loop started: the run is recorded and its sandbox gone.
    let log = project.log("a", &interrupted);
    assert_whole(&log, &context);
    assert_eq!(status_of(&log), "interrupted", "{context}: {log:#?}");
    assert_eq!(
        log.len(),
        before.len().max(1) + 1,
        "{context}: the log continues: {log:#?}"
    );
    assert_eq!(
        &log[..before.len()],
        &before[..],
        "{context}: what was logged is kept"
    );
    let reason = reason_of(&log);
    assert!(
        reason.contains("queued again (attempt 2 of 3)"),
        "{context}: {reason}"
    );
    // At `Running` its create request may still be in flight in the engine: the sandbox it
    // makes appears later, and a later sweep removes it (see the end).
    if !matches!(point, Point::Running) {
        let left = run_containers(&interrupted);
        assert!(
            left.is_empty(),
            "{context}: the interrupted run's sandbox is removed at start-up, left: {}\noutput:\n{}",
            describe(&left),
            second.output()
        );
    }

    // Queued again, first in line: it runs to the end, then `b` runs.
    let retry = new_run(&second, &project, "a", std::slice::from_ref(&interrupted));
    let log = drive(&second, &project, "a", &retry, &["gate1", "gate2"]);
    assert_whole(&log, &context);
    assert_eq!(status_of(&log), "succeeded", "{context}: {log:#?}");
    assert_eq!(
        trigger_of(&log),
        format!("queued again after run {interrupted} was interrupted (attempt 2 of 3)"),
        "{context}"
    );
    let b = new_run(&second, &project, "b", &[]);
    let log = wait_finished(&second, &project, "b", &b);
    assert_eq!(status_of(&log), "succeeded", "{context}: {log:#?}");
    assert_eq!(trigger_of(&log), "new task file", "{context}");

    // Nothing lost, nothing twice.
    let state = second.wait_until(&format!("{context}: b recorded as ended"), || {
        let state = project.state();
        (state["recent"].as_array()?.len() >= 3).then_some(state)
    });
    assert_eq!(state["queue"], Value::Array(vec![]), "{context}: {state:#}");
    assert_eq!(
        state["running"],
        Value::Array(vec![]),
        "{context}: {state:#}"
    );
    let recent: Vec<(String, String)> = state["recent"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| {
            (
                d["run"].as_str().unwrap_or_default().to_owned(),
                d["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        recent,
        [
            (interrupted.clone(), "interrupted".to_owned()),
            (retry.clone(), "succeeded".to_owned()),
            (b.clone(), "succeeded".to_owned()),
        ],
        "{context}"
    );
    assert_eq!(
        project.runs("a"),
        [interrupted.clone(), retry.clone()],
        "{context}"
    );
    assert_eq!(project.runs("b"), std::slice::from_ref(&b), "{context}");
    wait_gone(&second, &retry);
    wait_gone(&second, &b);
    // Whatever the killed daemon's sandboxes: all go while the new daemon runs.
    second.wait_until(
        &format!("{context}: the killed daemon's sandboxes removed"),
        || {
            containers(&format!("maxions.owner={}", first.owner))
                .is_empty()
                .then_some(())
        },
    );
    second.stop(PATIENCE);
}

#[test]
fn a_second_daemon_on_the_same_folder_is_refused_naming_the_first() {
    if !docker("dp-second") {
        return;
    }
    let project = Project::new("concurrency: 3\n");
    let first = Daemon::start(&project, "daemon1");
    let second = Daemon::spawn(&project, "daemon2");
    let status = second.exited(PATIENCE);
    let output = second.output();
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("another maxions daemon"), "{output}");
    assert!(
        output.contains(&format!("(pid {})", first.pid())),
        "{output}"
    );
    assert!(
        first.running(),
        "the first one carries on: {}",
        first.output()
    );
    first.stop(PATIENCE);
}

#[test]
fn sigterm_lets_a_running_step_finish_within_the_grace_and_keeps_the_queue() {
    if !docker("dp-grace") {
        return;
    }
    let project = Project::new("concurrency: 1\nshutdown_grace: 60s\n");
    let daemon = Daemon::start(&project, "daemon1");
    project.task("a", "gated", "held");
    let b_path = project.task("b", "quick", "queued behind");
    let run = new_run(&daemon, &project, "a", &[]);
    wait_event(&daemon, &project, "a", &run, "step_started", Some("gate1"));
    daemon.wait_until("b queued", || {
        project.state()["queue"]
            .as_array()?
            .iter()
            .any(|e| task_of(e) == b_path.display().to_string())
            .then_some(())
    });
    daemon.signal("-TERM");
    daemon.wait_until("the daemon to say it stops", || {
        daemon
            .output()
            .contains("stopping: no new runs")
            .then_some(())
    });
    assert!(
        daemon.running(),
        "it waits for the run: {}",
        daemon.output()
    );
    let log = drive(&daemon, &project, "a", &run, &["gate1", "gate2"]);
    assert_eq!(status_of(&log), "succeeded", "{log:#?}");
    let status = daemon.exited(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", daemon.output());
    wait_gone(&daemon, &run);
    // No new run started while stopping; `b` waits for the next start.
    assert!(project.runs("b").is_empty(), "{}", daemon.output());
    let queued: Vec<String> = project.state()["queue"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(task_of)
        .collect();
    assert_eq!(queued, [b_path.display().to_string()]);

    let again = Daemon::start(&project, "daemon2");
    let b = new_run(&again, &project, "b", &[]);
    assert_eq!(
        status_of(&wait_finished(&again, &project, "b", &b)),
        "succeeded"
    );
    assert_eq!(project.runs("a"), [run], "a is not run again");
    again.stop(PATIENCE);
}

#[test]
fn sigterm_cancels_a_run_when_the_grace_ends_and_the_next_start_runs_it_again() {
    if !docker("dp-grace-short") {
        return;
    }
    let project = Project::new("concurrency: 1\nshutdown_grace: 2s\n");
    let daemon = Daemon::start(&project, "daemon1");
    project.task("a", "gated", "held");
    let run = new_run(&daemon, &project, "a", &[]);
    wait_event(&daemon, &project, "a", &run, "step_started", Some("gate1"));
    let signalled = Instant::now();
    daemon.stop(PATIENCE);
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "it waited the grace period"
    );
    let log = project.log("a", &run);
    assert_whole(&log, "cancelled at the end of the grace");
    assert_eq!(status_of(&log), "cancelled", "{log:#?}");
    let reason = reason_of(&log);
    assert!(reason.contains("grace period"), "{reason}");
    assert_eq!(
        project.result("a").map(|r| r["status"].clone()),
        Some("cancelled".into())
    );
    assert!(
        run_containers(&run).is_empty(),
        "the sandbox is removed before the daemon exits"
    );

    let again = Daemon::start(&project, "daemon2");
    let retry = new_run(&again, &project, "a", std::slice::from_ref(&run));
    let log = drive(&again, &project, "a", &retry, &["gate1", "gate2"]);
    assert_eq!(status_of(&log), "succeeded", "{log:#?}");
    assert_eq!(
        trigger_of(&log),
        format!("queued again: the daemon stopped before run {run} finished")
    );
    again.stop(PATIENCE);
}

#[test]
fn a_second_sigterm_cancels_the_running_runs_at_once() {
    if !docker("dp-second-signal") {
        return;
    }
    let project = Project::new("concurrency: 1\nshutdown_grace: 10m\n");
    let daemon = Daemon::start(&project, "daemon");
    project.task("a", "gated", "held");
    let run = new_run(&daemon, &project, "a", &[]);
    wait_event(&daemon, &project, "a", &run, "step_started", Some("gate1"));
    daemon.signal("-TERM");
    daemon.wait_until("the daemon to say it stops", || {
        daemon
            .output()
            .contains("stopping: no new runs")
            .then_some(())
    });
    assert!(
        daemon.running(),
        "it waits for the run: {}",
        daemon.output()
    );
    daemon.stop(Duration::from_secs(60));
    let log = project.log("a", &run);
    assert_eq!(status_of(&log), "cancelled", "{log:#?}");
    assert_eq!(reason_of(&log), "cancelled: the daemon was stopped");
    assert!(
        run_containers(&run).is_empty(),
        "the sandbox is removed before the daemon exits"
    );
}

#[test]
fn maxions_cancel_stops_a_run_and_status_lists_running_queued_and_recent() {
    if !docker("dp-cancel") {
        return;
    }
    let project = Project::new("concurrency: 1\n");
    // With no daemon: a clear message and exit 2.
    let none = project.maxions(&["cancel", "a"]);
    assert_eq!(none.code, 2, "{none:?}");
    assert!(
        none.stderr.contains("no maxions daemon is running"),
        "{}",
        none.stderr
    );

    let daemon = Daemon::start(&project, "daemon");
    let a_path = project.task("a", "gated", "held");
    let b_path = project.task("b", "gated", "queued behind");
    let c_path = project.task("c", "quick", "queued last");
    let run = new_run(&daemon, &project, "a", &[]);
    wait_event(&daemon, &project, "a", &run, "step_started", Some("gate1"));
    let status = daemon.wait_until("b and c queued in `maxions status`", || {
        let out = project.maxions(&["status", "--json"]);
        let value: Value = serde_json::from_str(&out.stdout).ok()?;
        (value["queued"].as_array()?.len() == 2).then_some(value)
    });
    assert_eq!(status["daemon"]["pid"], daemon.pid());
    let running = status["running"].as_array().cloned().unwrap_or_default();
    assert_eq!(running.len(), 1, "{status:#}");
    assert_eq!(running[0]["run"], run.as_str());
    assert_eq!(task_of(&running[0]), a_path.display().to_string());
    let queued: Vec<String> = status["queued"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(task_of)
        .collect();
    assert_eq!(
        queued,
        [b_path.display().to_string(), c_path.display().to_string()],
        "{status:#}"
    );

    // A queued task, named by its path: out of the queue, recorded cancelled, never started.
    let cancel = project.maxions(&["cancel", "tasks/c.yaml"]);
    assert_eq!(cancel.code, 0, "{cancel:?}");
    assert!(
        cancel
            .stdout
            .contains(&format!("removed {} from the queue", c_path.display())),
        "{}",
        cancel.stdout
    );
    let c_runs = project.runs("c");
    assert_eq!(c_runs.len(), 1, "c's end is recorded: {c_runs:?}");
    let log = project.log("c", &c_runs[0]);
    assert_whole(&log, "c cancelled in the queue");
    assert_eq!(status_of(&log), "cancelled");
    assert_eq!(
        reason_of(&log),
        "cancelled by `maxions cancel` before it started"
    );
    assert!(!has(&log, "sandbox_ready", None), "{log:#?}");
    assert_eq!(
        project.result("c").map(|r| r["status"].clone()),
        Some("cancelled".into())
    );

    let nothing = project.maxions(&["cancel", "nope"]);
    assert_eq!(nothing.code, 1, "{nothing:?}");
    assert!(
        nothing
            .stderr
            .contains("nothing queued or running matches `nope`"),
        "{}",
        nothing.stderr
    );

    let cancel = project.maxions(&["cancel", "a"]);
    assert_eq!(cancel.code, 0, "{cancel:?}");
    assert!(
        cancel.stdout.contains(&format!("cancelling run {run}")),
        "{}",
        cancel.stdout
    );
    let log = wait_finished(&daemon, &project, "a", &run);
    assert_eq!(status_of(&log), "cancelled", "{log:#?}");
    assert_eq!(reason_of(&log), "cancelled by `maxions cancel`");
    let result = daemon.wait_until("a's result", || {
        project.result("a").filter(|r| r["run"] == run.as_str())
    });
    assert_eq!(result["status"], "cancelled");
    assert_eq!(result["reason"], "cancelled by `maxions cancel`");
    wait_gone(&daemon, &run);

    // The queue moves on: `b` runs, and status shows both as recent, newest first.
    let b = new_run(&daemon, &project, "b", &[]);
    let log = drive(&daemon, &project, "b", &b, &["gate1", "gate2"]);
    assert_eq!(status_of(&log), "succeeded", "{log:#?}");
    let status = daemon.wait_until("b recent in `maxions status`", || {
        let out = project.maxions(&["status", "--json"]);
        let value: Value = serde_json::from_str(&out.stdout).ok()?;
        (value["recent"].as_array()?.len() == 3).then_some(value)
    });
    assert_eq!(status["running"], Value::Array(vec![]), "{status:#}");
    assert_eq!(status["queued"], Value::Array(vec![]), "{status:#}");
    let recent: Vec<(Value, Value)> = status["recent"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| (d["run"].clone(), d["status"].clone()))
        .collect();
    assert_eq!(
        recent,
        [
            (Value::from(b.as_str()), Value::from("succeeded")),
            (Value::from(run.as_str()), Value::from("cancelled")),
            (Value::from(c_runs[0].as_str()), Value::from("cancelled")),
        ]
    );
    // Cancelled is an end: neither runs again.
    assert_eq!(project.runs("a"), [run]);
    assert_eq!(project.runs("c"), c_runs);
    daemon.stop(PATIENCE);
    let after = project.maxions(&["status", "--json"]);
    let value: Value = serde_json::from_str(&after.stdout).unwrap_or(Value::Null);
    assert_eq!(value["daemon"], Value::Null, "{}", after.stdout);
}

#[test]
fn a_run_interrupted_for_the_last_time_or_under_interrupted_record_is_not_run_again() {
    if !docker("dp-attempts") {
        return;
    }
    for (config, why) in [
        (
            "max_attempts: 1\n",
            "; not queued again: it was tried 1 times (`max_attempts`)",
        ),
        ("interrupted: record\n", ""),
    ] {
        let context = format!("with {config:?}");
        let project = Project::new(&format!("concurrency: 1\n{config}"));
        let first = Daemon::start(&project, "daemon1");
        project.task("a", "gated", "held");
        let run = new_run(&first, &project, "a", &[]);
        wait_event(&first, &project, "a", &run, "step_started", Some("gate1"));
        first.kill9();

        let second = Daemon::start(&project, "daemon2");
        let log = project.log("a", &run);
        assert_eq!(status_of(&log), "interrupted", "{context}: {log:#?}");
        assert_eq!(
            reason_of(&log),
            format!(
                "interrupted: the daemon running it stopped unexpectedly (killed, or the machine went down){why}"
            ),
            "{context}"
        );
        // A file dropped now runs; `a` would have been queued before it.
        project.task("b", "quick", "after");
        let b = new_run(&second, &project, "b", &[]);
        assert_eq!(
            status_of(&wait_finished(&second, &project, "b", &b)),
            "succeeded",
            "{context}"
        );
        assert_eq!(
            project.runs("a"),
            std::slice::from_ref(&run),
            "{context}: a is not run again; output:\n{}",
            second.output()
        );
        assert_eq!(
            project.result("a").map(|r| r["status"].clone()),
            Some("interrupted".into()),
            "{context}"
        );
        second.stop(PATIENCE);
    }
}

/// `kill -9` after a run's log ended but before the daemon saved that it ended: on disk, a log
/// with its `run_finished`, the result written, and the run still `running` in state.json. The
/// next daemon must take the run's own end, not record a second one nor run the task again.
#[test]
fn a_run_whose_log_ended_before_the_daemon_died_is_not_recorded_twice_nor_run_again() {
    if !docker("dp-ended") {
        return;
    }
    let project = Project::new("concurrency: 1\n");
    let first = Daemon::start(&project, "daemon1");
    let a_path = project.task("a", "quick", "once");
    let run = new_run(&first, &project, "a", &[]);
    wait_finished(&first, &project, "a", &run);
    first.wait_until("a recorded as ended", || {
        let state = project.state();
        (state["recent"].as_array()?.len() == 1).then_some(())
    });
    first.stop(PATIENCE);

    // The state as the kill left it: the run still running, its content not yet handled.
    let state_file = project.root().join(".maxions/state.json");
    let mut state = project.state();
    let done = state["recent"][0].clone();
    let key = a_path.display().to_string();
    let hash = state["tasks"][&key]["hash"].clone();
    state["tasks"][&key]
        .as_object_mut()
        .expect("a's task state")
        .remove("handled");
    state["recent"] = Value::Array(vec![]);
    state["running"] = serde_json::json!([{
        "seq": 0,
        "task": key,
        "hash": hash,
        "repo": format!("file://{}", project.origin.display()),
        "trigger": "new task file",
        "queued_at": done["finished_at"],
        "attempt": 1,
        "run": run,
        "log": done["log"],
        "branch": "maxions/a",
        "started_at": done["finished_at"],
    }]);
    std::fs::write(
        &state_file,
        serde_json::to_vec_pretty(&state).expect("json"),
    )
    .expect("write state.json");
    let log_before = project.log("a", &run);
    let result_before = project.result("a");

    let second = Daemon::start(&project, "daemon2");
    project.task("b", "quick", "after");
    let b = new_run(&second, &project, "b", &[]);
    wait_finished(&second, &project, "b", &b);
    let log = project.log("a", &run);
    assert_eq!(log, log_before, "the log is left as the run ended it");
    assert_eq!(project.result("a"), result_before, "and so is the result");
    assert_eq!(
        project.runs("a"),
        std::slice::from_ref(&run),
        "a is not run again; output:\n{}",
        second.output()
    );
    let state = second.wait_until("b recorded as ended", || {
        let state = project.state();
        (state["recent"].as_array()?.len() == 2).then_some(state)
    });
    assert_eq!(state["recent"][0]["run"], run.as_str(), "{state:#}");
    assert_eq!(state["recent"][0]["status"], "succeeded", "{state:#}");
    second.stop(PATIENCE);
}

/// `kill -9` of a daemon while it recovers a run: it wrote the run's `interrupted` end but died
/// before saving its state. The next one recovers the run again, without a second end in the
/// log, and runs it.
#[test]
fn a_daemon_killed_while_recovering_a_run_leaves_it_to_the_next_one() {
    if !docker("dp-recovering") {
        return;
    }
    let project = Project::new("concurrency: 1\n");
    let first = Daemon::start(&project, "daemon1");
    project.task("a", "gated", "held");
    let run = new_run(&first, &project, "a", &[]);
    wait_event(&first, &project, "a", &run, "step_started", Some("gate1"));
    first.kill9();
    let state_file = project.root().join(".maxions/state.json");
    let killed_state = std::fs::read(&state_file).expect("read state.json");

    // The second daemon records the run and starts it again; as if it had died before saving
    // that, its state and the retry's log are undone.
    let second = Daemon::start(&project, "daemon2");
    assert_eq!(status_of(&project.log("a", &run)), "interrupted");
    let retry = new_run(&second, &project, "a", std::slice::from_ref(&run));
    second.kill9();
    std::fs::remove_file(project.root().join(format!("tasks/a.runs/{retry}.jsonl")))
        .expect("remove the retry's log");
    std::fs::write(&state_file, killed_state).expect("restore state.json");

    let third = Daemon::start(&project, "daemon3");
    let log = project.log("a", &run);
    assert_whole(&log, "recovered twice");
    assert_eq!(status_of(&log), "interrupted", "{log:#?}");
    let again = new_run(&third, &project, "a", &[run.clone(), retry.clone()]);
    let log = drive(&third, &project, "a", &again, &["gate1", "gate2"]);
    assert_eq!(status_of(&log), "succeeded", "{log:#?}");
    assert_eq!(
        trigger_of(&log),
        format!("queued again after run {run} was interrupted (attempt 2 of 3)")
    );
    for daemon in [&first, &second] {
        third.wait_until("the killed daemons' sandboxes removed", || {
            containers(&format!("maxions.owner={}", daemon.owner))
                .is_empty()
                .then_some(())
        });
    }
    third.stop(PATIENCE);
}

#[test]
fn editing_a_task_file_mid_run_cancels_the_old_version_and_runs_the_new_one() {
    if !docker("dp-edit-mid-run") {
        return;
    }
    let project = Project::new("concurrency: 2\n");
    let daemon = Daemon::start(&project, "daemon");
    project.task("a", "gated", "first version");
    let run = new_run(&daemon, &project, "a", &[]);
    wait_event(&daemon, &project, "a", &run, "step_started", Some("gate1"));
    project.task("a", "gated", "second version");
    let log = wait_finished(&daemon, &project, "a", &run);
    assert_eq!(status_of(&log), "cancelled", "{log:#?}");
    assert_eq!(
        reason_of(&log),
        "cancelled: the task file changed; the new version runs next"
    );
    wait_gone(&daemon, &run);
    let next = new_run(&daemon, &project, "a", std::slice::from_ref(&run));
    let log = drive(&daemon, &project, "a", &next, &["gate1", "gate2"]);
    assert_eq!(status_of(&log), "succeeded", "{log:#?}");
    assert!(
        trigger_of(&log).starts_with("the task file changed"),
        "{log:#?}"
    );
    let result = daemon.wait_until("a's result", || {
        project.result("a").filter(|r| r["run"] == next.as_str())
    });
    assert_eq!(result["status"], "succeeded");
    assert_eq!(project.runs("a"), [run, next]);
    daemon.stop(PATIENCE);
}

// ---------------------------------------------------------------------------------------------
// `kill -9` at every event boundary of a run, in turn.

/// A run of four steps whose every step takes a moment, so that the daemon can be caught
/// between any two of its log lines.
const STEPS: &str = "name: steps\nsandbox:\n  network: none\n  timeout: 5m\nsteps:\n  - id: checkout\n    checkout: {}\n  - id: one\n    run: sleep 0.3; echo one\n  - id: two\n    run: sleep 0.3; echo two\n  - id: three\n    run: sleep 0.3; echo three\n";

fn steps_project() -> Project {
    let project = Project::new("concurrency: 1\n");
    write(&project.root(), "blueprints/steps.yaml", STEPS);
    project
}

/// Polls `check` every few milliseconds (the boundary to catch may last a fraction of a
/// second), for at most [`PATIENCE`].
fn soon<T>(what: &str, daemon: &Daemon, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            daemon.running() && started.elapsed() < PATIENCE,
            "waiting for {what}; the daemon's output:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn kill_9_at_every_event_boundary_of_a_run_loses_nothing_and_leaves_no_container() {
    if !docker("dp-kill-every") {
        return;
    }
    // The reference run: how many lines a whole run writes.
    let project = steps_project();
    let daemon = Daemon::start(&project, "reference");
    project.task("a", "steps", "count to three");
    let run = new_run(&daemon, &project, "a", &[]);
    let reference = wait_finished(&daemon, &project, "a", &run);
    assert_whole(&reference, "the reference run");
    assert_eq!(status_of(&reference), "succeeded", "{reference:#?}");
    daemon.stop(PATIENCE);
    let lines = reference.len();
    assert!(lines >= 10, "a run of some length: {reference:#?}");

    // Kill after line k, for every k before the last (a daemon killed after `run_finished`
    // is `a_run_whose_log_ended_before_the_daemon_died_is_not_recorded_twice_nor_run_again`).
    // Four at a time, each in its own project, to stay well under a minute.
    let points: Vec<usize> = (1..lines).collect();
    let caught: Vec<(usize, usize)> = std::thread::scope(|scope| {
        points
            .chunks(points.len().div_ceil(4))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&k| (k, kill_9_after(k)))
                        .collect::<Vec<_>>()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .flat_map(|handle| handle.join().expect("a kill point passed"))
            .collect()
    });
    // The figure for the README: at how many distinct boundaries the daemon really died.
    // Lines written in the same instant as the one before (`step_finished` then the next
    // `step_started`) leave no gap to die in from the outside; those are named.
    let mut at: Vec<usize> = caught.iter().map(|&(_, at)| at).collect();
    at.sort_unstable();
    at.dedup();
    let missed: Vec<String> = (1..lines)
        .filter(|k| !at.contains(k))
        .map(|k| format!("after line {k} ({})", reference[k - 1]["type"]))
        .collect();
    eprintln!(
        "kill -9 at {} of {} boundaries of a {lines}-line run (aimed, caught): {caught:?}; \
         not caught: {missed:?}",
        at.len(),
        lines - 1
    );
}

/// Starts a daemon on a fresh project, kills it with `kill -9` once the run's log holds `k`
/// lines, starts another and checks that the run ends once, whole, with its sandbox gone.
/// Returns how many lines the log held when the daemon died.
fn kill_9_after(k: usize) -> usize {
    let project = steps_project();
    let first = Daemon::start(&project, "daemon1");
    project.task("a", "steps", "count to three");
    let run = new_run(&first, &project, "a", &[]);
    soon(&format!("line {k} of run {run}"), &first, || {
        (project.log("a", &run).len() >= k).then_some(())
    });
    first.kill9();
    let before = project.log("a", &run);
    let context = format!("kill -9 after line {k} (caught at {})", before.len());

    let second = Daemon::start(&project, "daemon2");
    let log = project.log("a", &run);
    assert_whole(&log, &context);
    assert_eq!(
        &log[..before.len()],
        &before[..],
        "{context}: what was logged is kept"
    );
    let mut runs = vec![run.clone()];
    if finished(&before).is_some() {
        // It died after the last line: recorded as it was, never run again.
        assert_eq!(log, before, "{context}");
    } else {
        assert_eq!(status_of(&log), "interrupted", "{context}: {log:#?}");
        assert_eq!(
            log.len(),
            before.len() + 1,
            "{context}: one line added: {log:#?}"
        );
        let reason = reason_of(&log);
        assert!(
            reason.contains("queued again (attempt 2 of 3)"),
            "{context}: {reason}"
        );
        let retry = new_run(&second, &project, "a", &runs);
        let again = wait_finished(&second, &project, "a", &retry);
        assert_whole(&again, &context);
        assert_eq!(status_of(&again), "succeeded", "{context}: {again:#?}");
        runs.push(retry);
    }
    let state = second.wait_until(&format!("{context}: nothing queued or running"), || {
        let state = project.state();
        (state["queue"].as_array()?.is_empty() && state["running"].as_array()?.is_empty())
            .then_some(state)
    });
    assert_eq!(
        project.runs("a"),
        runs,
        "{context}: no run beyond the requeue: {state:#}"
    );
    for run in &runs {
        wait_gone(&second, run);
    }
    second.wait_until(
        &format!("{context}: the killed daemon's sandboxes removed"),
        || {
            containers(&format!("maxions.owner={}", first.owner))
                .is_empty()
                .then_some(())
        },
    );
    second.stop(PATIENCE);
    assert_eq!(
        project.runs("a"),
        runs,
        "{context}: nothing ran on the way out"
    );
    before.len()
}
