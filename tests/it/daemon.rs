//! The daemon in-process, with real files and the real watcher but the in-memory sandbox: the
//! queue (concurrency, fairness), schedules (missed slots on a clock set in the state file) and
//! the folder rules. Real containers and `kill -9` are in `daemon_process`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use maxions::daemon::engines::{Engines, Ready};
use maxions::daemon::state::{self, State, TaskState};
use maxions::daemon::{Daemon, Setup, Shutdown};
use maxions::runner::{Event, EventLine, EventSink, RunStatus};

use crate::support::scripted::{Reply, Scripted};

const BLUEPRINT: &str = r#"name: quick
sandbox:
  image: maxions/sandbox:latest
  network: none
agent:
  kind: command
  command: ["true"]
steps:
  - id: work
    run: "work {{ repo.name }}"
"#;

/// A project: maxions.yaml, blueprints/quick.yaml, tasks/.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("maxions.yaml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("blueprints")).unwrap();
        std::fs::create_dir_all(dir.path().join("tasks")).unwrap();
        std::fs::write(dir.path().join("blueprints/quick.yaml"), BLUEPRINT).unwrap();
        Self { dir }
    }

    fn tasks(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path().join("tasks")).unwrap()
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".maxions")
    }

    fn task(&self, name: &str, repo: &str, extra: &str) -> PathBuf {
        let path = self.tasks().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!("task: do {name}\nrepo: {repo}\nblueprint: quick\n{extra}"),
        )
        .unwrap();
        path
    }

    fn setup(&self) -> Setup {
        Setup::locate(Some(&self.dir.path().join("maxions.yaml")))
    }

    fn state(&self) -> State {
        state::peek(&self.state_dir()).unwrap_or_default()
    }
}

/// Every event of every run, in order of arrival.
#[derive(Default)]
struct Recorder(Mutex<Vec<EventLine>>);

impl EventSink for Recorder {
    fn emit(&self, line: &EventLine) {
        self.0.lock().unwrap().push(line.clone());
    }
}

impl Recorder {
    fn started(&self) -> Vec<(String, Option<String>)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| match &l.event {
                Event::RunStarted { task, trigger, .. } => Some((task.clone(), trigger.clone())),
                _ => None,
            })
            .collect()
    }

    fn finished(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| matches!(l.event, Event::RunFinished { .. }))
            .count()
    }
}

/// A daemon running on its own task, stopped (gracefully) on drop or by `stop`.
struct Running {
    shutdown: Shutdown,
    task: Option<tokio::task::JoinHandle<Result<(), maxions::daemon::DaemonError>>>,
}

impl Running {
    async fn start(project: &Project, engine: Scripted, sink: Arc<Recorder>) -> Self {
        let daemon = Daemon::start(project.setup(), Arc::new(engine), sink)
            .await
            .expect("daemon starts");
        let shutdown = Shutdown::default();
        let task = tokio::spawn(daemon.run(shutdown.clone()));
        Self {
            shutdown,
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        self.shutdown.graceful.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the daemon stops")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.now.cancel();
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_tasks_at_once_never_more_than_three_and_fair_across_repositories() {
    let project = Project::new("concurrency: 3\n");
    // 48 tasks on one repository, then 2 on another: first come, first served alone would
    // start the other repository's tasks last.
    for i in 0..48 {
        project.task(&format!("a{i:02}"), "acme/busy", "");
    }
    project.task("b0", "acme/quiet", "");
    project.task("b1", "acme/quiet", "");
    // Settled before the daemon looks: all 50 are queued by its first scan, at once.
    std::thread::sleep(Duration::from_millis(700));
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&order);
    let engine = Scripted::new(move |request| {
        let command = request.argv.join(" ");
        if let Some(repo) = command.split("work ").nth(1) {
            seen.lock()
                .unwrap()
                .push(repo.trim_matches('\'').to_owned());
            return Reply::ok().taking(Duration::from_millis(30));
        }
        Reply::ok()
    });
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, engine.clone(), Arc::clone(&sink)).await;
    until("50 runs", || sink.finished() == 50).await;
    daemon.stop().await;

    assert!(engine.peak() <= 3, "peak {} sandboxes", engine.peak());
    assert!(
        engine.peak() >= 2,
        "runs overlapped at all: {}",
        engine.peak()
    );
    assert_eq!(engine.live(), 0, "every sandbox removed");
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 50);
    let first_quiet = order.iter().position(|r| r == "quiet").unwrap();
    assert!(first_quiet < 3, "the quiet repository waited: {order:?}");
    let state = project.state();
    assert!(state.queue.is_empty() && state.running.is_empty());
    assert_eq!(state.recent.len(), 50);
    assert!(
        state
            .recent
            .iter()
            .all(|d| d.status == RunStatus::Succeeded),
        "{:?}",
        state.recent
    );
    for name in ["a00", "a47", "b1"] {
        let result: serde_json::Value = serde_json::from_slice(
            &std::fs::read(project.tasks().join(format!("{name}.result.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(result["status"], "succeeded", "{name}: {result}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_tasks_do_not_run_again_after_a_restart_and_edited_ones_do() {
    let project = Project::new("concurrency: 2\n");
    let a = project.task("a", "acme/x", "");
    project.task("b", "acme/x", "");
    let engine = Scripted::new(|_| Reply::ok());
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, engine.clone(), Arc::clone(&sink)).await;
    until("2 runs", || sink.finished() == 2).await;
    daemon.stop().await;

    // Restart: nothing new. Then an edit of `a` runs it again, saying why.
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, engine.clone(), Arc::clone(&sink)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.finished(), 0, "unchanged files ran again");
    std::fs::write(&a, "task: do a, better\nrepo: acme/x\nblueprint: quick\n").unwrap();
    until("the edited task's run", || sink.finished() == 1).await;
    daemon.stop().await;
    let started = sink.started();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].0, a.display().to_string());
    let trigger = started[0].1.clone().unwrap_or_default();
    assert!(trigger.contains("the task file changed"), "{trigger}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_gets_an_invalid_result_and_the_rest_runs() {
    let project = Project::new("{}\n");
    let bad = project.tasks().join("bad.yaml");
    std::fs::write(
        &bad,
        "task: x\nrepo: acme/x\nblueprint: quick\nschedul: daily\n",
    )
    .unwrap();
    project.task("good", "acme/x", "");
    // Neither a task nor for the daemon: ignored, no result.
    std::fs::write(project.tasks().join("notes.txt"), "hello").unwrap();
    std::fs::write(project.tasks().join(".hidden.yaml"), "task: x\n").unwrap();
    let engine = Scripted::new(|_| Reply::ok());
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, engine, Arc::clone(&sink)).await;
    until("the good run", || sink.finished() == 1).await;
    let result = project.tasks().join("bad.result.json");
    until("the invalid result", || result.is_file()).await;
    daemon.stop().await;
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert_eq!(result["status"], "invalid");
    let diagnostic = &result["diagnostics"][0];
    assert_eq!(diagnostic["code"], "unknown-field", "{result}");
    assert_eq!(diagnostic["line"], 4);
    assert_eq!(diagnostic["column"], 1);
    assert!(
        result["reason"].as_str().unwrap().contains("bad.yaml:4:1"),
        "{result}"
    );
    assert!(!project.tasks().join(".hidden.result.json").exists());
    assert!(!project.tasks().join("notes.result.json").exists());
}

/// Writes a state file as a daemon that stopped `hours_ago` would have left it.
fn stopped_daemon_state(project: &Project, task: &Path, hours_ago: i64) {
    let mut state = State {
        version: state::VERSION,
        ..State::default()
    };
    state.tasks.insert(
        task.to_path_buf(),
        TaskState {
            hash: state::content_hash(&std::fs::read(task).unwrap()),
            handled: None,
            last_slot: Some(Utc::now() - chrono::Duration::hours(hours_ago)),
            invalid: false,
        },
    );
    std::fs::create_dir_all(project.state_dir()).unwrap();
    std::fs::write(
        state::state_path(&project.state_dir()),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_slots_run_once_at_start_up_never_a_burst() {
    let project = Project::new("{}\n");
    let task = project.task("hourly", "acme/x", "schedule: \"0 * * * *\"\n");
    stopped_daemon_state(&project, &task, 5);
    let engine = Scripted::new(|_| Reply::ok());
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, engine, Arc::clone(&sink)).await;
    until("the missed slot's run", || sink.finished() == 1).await;
    // No more: the other four slots are not made up for.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    daemon.stop().await;
    let started = sink.started();
    assert_eq!(started.len(), 1, "{started:?}");
    let trigger = started[0].1.clone().unwrap();
    assert!(
        trigger.contains("passed while the daemon was down")
            && trigger.contains("4 earlier slots not run"),
        "{trigger}"
    );
    let last = project.state().tasks[&task].last_slot.unwrap();
    assert!(Utc::now() - last < chrono::Duration::minutes(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_slots_are_skipped_when_the_config_says_so() {
    let project = Project::new("missed_runs: skip\n");
    let task = project.task("hourly", "acme/x", "schedule: \"0 * * * *\"\n");
    stopped_daemon_state(&project, &task, 5);
    let engine = Scripted::new(|_| Reply::ok());
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, engine, Arc::clone(&sink)).await;
    // The slots were handled (skipped) and recorded as such.
    until("the skipped slots recorded", || {
        project
            .state()
            .tasks
            .get(&task)
            .and_then(|t| t.last_slot)
            .is_some_and(|last| Utc::now() - last < chrono::Duration::minutes(1))
    })
    .await;
    daemon.stop().await;
    assert_eq!(sink.finished(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_scheduled_task_waits_for_its_slot() {
    let project = Project::new("{}\n");
    let task = project.task("yearly", "acme/x", "schedule: \"0 0 1 1 *\"\n");
    let engine = Scripted::new(|_| Reply::ok());
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, engine, Arc::clone(&sink)).await;
    until("the schedule registered", || {
        project
            .state()
            .tasks
            .get(&task)
            .is_some_and(|t| t.last_slot.is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.stop().await;
    assert_eq!(sink.finished(), 0, "a scheduled task does not run on drop");
    // `maxions status` shows it with its next slot: the 1st of January, midnight UTC.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_maxions"))
        .args(["status", "--json", "--config"])
        .arg(project.dir.path().join("maxions.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["daemon"], serde_json::Value::Null, "{status}");
    let scheduled = &status["scheduled"][0];
    assert_eq!(scheduled["schedule"], "0 0 1 1 *", "{status}");
    assert_eq!(scheduled["timezone"], "UTC");
    let next = scheduled["next"].as_str().unwrap();
    assert!(next.contains("-01-01T00:00:00"), "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_edit_keeps_the_last_good_one() {
    let project = Project::new("concurrency: 1\n");
    let engine = Scripted::new(|_| Reply::ok());
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, engine, Arc::clone(&sink)).await;
    std::fs::write(
        project.dir.path().join("maxions.yaml"),
        "concurrency: [broken\n",
    )
    .unwrap();
    project.task("after", "acme/x", "");
    until("a run with the last good config", || sink.finished() == 1).await;
    daemon.stop().await;
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.tasks().join("after.result.json")).unwrap())
            .unwrap();
    assert_eq!(result["status"], "succeeded", "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_invalid_for_its_blueprint_runs_once_the_blueprint_is_fixed() {
    let project = Project::new("{}\n");
    let task = project.tasks().join("later.yaml");
    std::fs::write(&task, "task: x\nrepo: acme/x\nblueprint: later\n").unwrap();
    let engine = Scripted::new(|_| Reply::ok());
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, engine, Arc::clone(&sink)).await;
    let result = project.tasks().join("later.result.json");
    until("the invalid result", || result.is_file()).await;
    assert_eq!(sink.finished(), 0);
    // The blueprint arrives: the task file itself is unchanged, and now valid.
    std::fs::write(
        project.dir.path().join("blueprints/later.yaml"),
        BLUEPRINT.replace("name: quick", "name: later"),
    )
    .unwrap();
    until("the run once the blueprint exists", || sink.finished() == 1).await;
    daemon.stop().await;
    let trigger = sink.started()[0].1.clone().unwrap_or_default();
    assert!(trigger.contains("valid now"), "{trigger}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_file_cannot_make_the_daemon_read_files_outside_its_project() {
    let project = Project::new("{}\n");
    let outside = tempfile::tempdir().unwrap();
    // Would be quoted by the diagnostics ("unknown field `…`") if the daemon read it.
    let private = outside.path().join("private.yaml");
    std::fs::write(&private, "leaked_private_key: 1\n").unwrap();
    std::os::unix::fs::symlink(&private, project.tasks().join("link.yaml")).unwrap();
    std::fs::write(
        project.tasks().join("by-path.yaml"),
        format!(
            "task: x\nrepo: acme/x\nblueprint: ../../../../../../..{}\n",
            private.display()
        ),
    )
    .unwrap();
    let engine = Scripted::new(|_| Reply::ok());
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, engine, Arc::clone(&sink)).await;
    let results = [
        project.tasks().join("link.result.json"),
        project.tasks().join("by-path.result.json"),
    ];
    until("both invalid results", || {
        results.iter().all(|r| r.is_file())
    })
    .await;
    daemon.stop().await;
    assert_eq!(sink.finished(), 0);
    for result in results {
        let text = std::fs::read_to_string(&result).unwrap();
        assert!(!text.contains("leaked_private_key"), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["status"], "invalid");
        assert_eq!(value["diagnostics"][0]["code"], "outside-project", "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_ended_just_before_a_crash_is_not_run_again() {
    let project = Project::new("{}\n");
    let task = project.task("done", "acme/x", "");
    let hash = state::content_hash(&std::fs::read(&task).unwrap());
    let run = "20261202T010000-abcdef";
    let log = project.tasks().join(format!("done.runs/{run}.jsonl"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(
        &log,
        format!(
            "{{\"ts\":\"t\",\"run\":\"{run}\",\"seq\":1,\"type\":\"run_started\",\"task\":\"t\",\"blueprint\":\"quick\",\"repo\":\"r\",\"branch\":\"b\",\"base\":\"main\"}}\n\
             {{\"ts\":\"t\",\"run\":\"{run}\",\"seq\":2,\"type\":\"run_finished\",\"status\":\"succeeded\",\"duration_ms\":5}}\n"
        ),
    )
    .unwrap();
    // The daemon died after the run's last line, before it recorded the end.
    let entry = state::Entry {
        id: String::new(),
        seq: 0,
        task: task.clone(),
        hash: hash.clone(),
        repo: "https://github.com/acme/x.git".into(),
        trigger: "new task file".into(),
        queued_at: Utc::now(),
        attempt: 1,
    };
    let mut saved = State {
        version: state::VERSION,
        next_seq: 1,
        ..State::default()
    };
    saved.tasks.insert(
        task.clone(),
        TaskState {
            hash,
            ..TaskState::default()
        },
    );
    saved.running.push(state::Active {
        entry,
        run: run.into(),
        log: log.clone(),
        branch: "maxions/done".into(),
        started_at: Utc::now(),
        engine: String::new(),
    });
    std::fs::create_dir_all(project.state_dir()).unwrap();
    std::fs::write(
        state::state_path(&project.state_dir()),
        serde_json::to_vec(&saved).unwrap(),
    )
    .unwrap();

    let engine = Scripted::new(|_| Reply::ok());
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, engine, Arc::clone(&sink)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.stop().await;
    assert_eq!(sink.finished(), 0, "it ran again");
    let state = project.state();
    assert_eq!(state.recent.len(), 1);
    assert_eq!(state.recent[0].status, RunStatus::Succeeded);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("interrupted"), "{text}");
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.tasks().join("done.result.json")).unwrap())
            .unwrap();
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["run"], run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_already_run_by_hand_is_not_run_again_by_a_new_daemon() {
    let project = Project::new("{}\n");
    let by_hand = project.task("by-hand", "acme/x", "");
    let cancelled = project.task("cancelled", "acme/x", "");
    let engine = Scripted::new(|_| Reply::ok());
    // `maxions run` of both, the second cancelled before it starts.
    for (task, cancel) in [(&by_hand, false), (&cancelled, true)] {
        let loaded = maxions::config::load::load_task(task, None).unwrap();
        let launch = maxions::runner::Launch::new(
            Arc::new(loaded),
            Arc::new(engine.clone()),
            maxions::runner::new_run_id(),
        );
        let token = tokio_util::sync::CancellationToken::new();
        if cancel {
            token.cancel();
        }
        let (result, _) = maxions::runner::launch(launch, Arc::new(Recorder::default()), token)
            .await
            .unwrap();
        assert!(result.task_hash.is_some());
    }
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, engine, Arc::clone(&sink)).await;
    until("the cancelled one's run", || sink.finished() == 1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    daemon.stop().await;
    let started = sink.started();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].0, cancelled.display().to_string());
    // Edited, the one run by hand is a new task.
    std::fs::write(&by_hand, "task: again\nrepo: acme/x\nblueprint: quick\n").unwrap();
    let sink = Arc::new(Recorder::default());
    let daemon = Running::start(&project, Scripted::new(|_| Reply::ok()), Arc::clone(&sink)).await;
    until("the edited one's run", || sink.finished() == 1).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waiting_for_its_labelled_engine_does_not_hold_up_runs_that_can_go_elsewhere() {
    let project = Project::new(
        "engines:\n  - { name: plain, capacity: 1 }\n  - { name: gpu, capacity: 1, labels: [gpu] }\n",
    );
    std::fs::write(
        project.dir.path().join("blueprints/gpu.yaml"),
        BLUEPRINT.replace("name: quick", "name: gpu").replace(
            "  network: none\n",
            "  network: none\n  engine_labels: [gpu]\n",
        ),
    )
    .unwrap();
    let slow = || {
        Scripted::new(|request| {
            if request.argv.join(" ").contains("work ") {
                return Reply::ok().taking(Duration::from_millis(400));
            }
            Reply::ok()
        })
    };
    let (plain, gpu) = (slow(), slow());
    let ready = |name: &str, engine: &Scripted, labels: &[&str]| Ready {
        name: name.into(),
        engine: Arc::new(engine.clone()),
        capacity: 1,
        labels: labels.iter().map(|&l| l.to_owned()).collect(),
    };
    let engines = Engines::ready(vec![
        ready("plain", &plain, &[]),
        ready("gpu", &gpu, &["gpu"]),
    ]);
    for name in ["g1", "g2"] {
        let path = project.task(name, "acme/a", "");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("blueprint: quick", "blueprint: gpu")).unwrap();
    }
    // One repository for all three: fairness across repositories does not reorder them.
    project.task("p1", "acme/a", "");
    std::thread::sleep(Duration::from_millis(700));
    let sink = Arc::new(Recorder::default());
    let daemon = Daemon::start_on(
        project.setup(),
        engines,
        Arc::clone(&sink) as Arc<dyn EventSink>,
    )
    .await
    .expect("daemon starts");
    let shutdown = Shutdown::default();
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    until("3 runs", || sink.finished() == 3).await;
    shutdown.graceful.cancel();
    task.await.unwrap().unwrap();

    let lines = sink.0.lock().unwrap().clone();
    let task_of = |run: &str| {
        lines.iter().find_map(|l| match &l.event {
            Event::RunStarted { task, .. } if l.run == run => Path::new(task)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned()),
            _ => None,
        })
    };
    // (task, engine) in the order the sandboxes came up.
    let placed: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| match &l.event {
            Event::SandboxReady { engine, .. } => {
                Some((task_of(&l.run)?, engine.clone().unwrap_or_default()))
            }
            _ => None,
        })
        .collect();
    let engine_of = |t: &str| {
        placed
            .iter()
            .find(|(task, _)| task == t)
            .map(|(_, e)| e.as_str())
    };
    assert_eq!(engine_of("g1"), Some("gpu"), "{placed:?}");
    assert_eq!(engine_of("g2"), Some("gpu"), "{placed:?}");
    assert_eq!(engine_of("p1"), Some("plain"), "{placed:?}");
    let order: Vec<&str> = placed.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        order.iter().position(|t| *t == "p1") < order.iter().position(|t| *t == "g2"),
        "p1 did not wait behind g2, which waited for the gpu engine: {order:?}"
    );
    assert!(plain.peak() <= 1 && gpu.peak() <= 1, "capacities held");
    assert!(
        project
            .state()
            .recent
            .iter()
            .all(|d| d.status == RunStatus::Succeeded)
    );
    assert_eq!(project.state().engines.len(), 2);
}
