//! The tasks-folder watcher with the real inotify backend on temporary folders: what a user
//! does to the folder (drop, move in, move out, new directories, editor saves) is hinted, and
//! what maxions itself writes there is not.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use maxions::daemon::watch::{Hint, Hints, Settle, WatchError, Watcher, scan, watch};
use maxions::runner::result::{RunResult, log_path, result_path, write_result};
use tokio::time::timeout;

/// How long to wait for a hint before failing: generous, since 2 cores serve 4 builds.
const PATIENCE: Duration = Duration::from_secs(10);
const DEBOUNCE: Duration = Duration::from_millis(300);

/// `tasks/` being watched, and `outside/` on the same file system (so that a rename works).
struct Folder {
    _tmp: tempfile::TempDir,
    tasks: PathBuf,
    outside: PathBuf,
}

impl Folder {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let tasks = tmp.path().join("tasks");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&tasks).unwrap();
        std::fs::create_dir(&outside).unwrap();
        Self {
            _tmp: tmp,
            tasks,
            outside,
        }
    }

    fn watch(&self) -> (Watcher, Hints) {
        watch(&self.tasks, DEBOUNCE).unwrap()
    }

    fn task(&self, relative: &str) -> PathBuf {
        self.tasks.join(relative)
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const TASK: &str = "blueprint: demo\nrepo: file:///tmp/repo\nprompt: hi\n";

/// Receives hints until one names `wanted`; returns every path hinted up to then. Fails on
/// `Rescan` (nothing here overflows a queue), on errors and after [`PATIENCE`].
async fn hinted_until(hints: &mut Hints, wanted: &Path) -> Vec<PathBuf> {
    let mut seen = Vec::new();
    let waited = timeout(PATIENCE, async {
        loop {
            match hints.recv().await {
                Some(Hint::Paths(paths)) => {
                    let found = paths.iter().any(|p| p == wanted);
                    seen.extend(paths);
                    if found {
                        return;
                    }
                }
                other => panic!("expected paths, got {other:?} after {seen:?}"),
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "no hint named {} within {PATIENCE:?}; hinted: {seen:?}",
        wanted.display()
    );
    seen
}

#[tokio::test]
async fn a_dropped_task_file_is_hinted_and_then_found_settled_by_a_scan() {
    let folder = Folder::new();
    let (_watcher, mut hints) = folder.watch();
    let task = folder.task("nightly.yaml");
    write(&task, TASK);
    hinted_until(&mut hints, &task).await;

    // What the daemon does with the hint: rescan, then ask Settle (clock moved past the settle
    // time, so that the test does not depend on how quickly the hint came).
    let scan = scan(&folder.tasks);
    assert_eq!(scan.files.len(), 1, "{scan:?}");
    assert_eq!(scan.files[0].path, task);
    assert_eq!(scan.files[0].len, TASK.len() as u64);
    let mut settle = Settle::new(Duration::from_millis(500));
    let later = SystemTime::now() + Duration::from_secs(1);
    assert_eq!(settle.observe(&scan, later).settled, [task]);
}

#[tokio::test]
async fn a_file_moved_in_from_outside_the_folder_counts_as_a_drop() {
    let folder = Folder::new();
    let staged = folder.outside.join("moved.yaml");
    write(&staged, TASK);
    let (_watcher, mut hints) = folder.watch();
    let task = folder.task("moved.yaml");
    std::fs::rename(&staged, &task).unwrap();
    hinted_until(&mut hints, &task).await;
}

#[tokio::test]
async fn a_file_moved_out_of_the_folder_is_hinted_like_a_deletion() {
    let folder = Folder::new();
    let task = folder.task("leaving.yaml");
    write(&task, TASK);
    let (_watcher, mut hints) = folder.watch();
    std::fs::rename(&task, folder.outside.join("leaving.yaml")).unwrap();
    hinted_until(&mut hints, &task).await;
}

#[tokio::test]
async fn a_deleted_task_file_is_hinted() {
    let folder = Folder::new();
    let task = folder.task("doomed.yaml");
    write(&task, TASK);
    let (_watcher, mut hints) = folder.watch();
    std::fs::remove_file(&task).unwrap();
    hinted_until(&mut hints, &task).await;
}

#[tokio::test]
async fn an_editors_atomic_save_is_hinted_as_the_task_file_not_its_temporary() {
    let folder = Folder::new();
    let task = folder.task("edited.yaml");
    write(&task, TASK);
    let (_watcher, mut hints) = folder.watch();
    // Write a temporary beside the file, then rename it over the file (gedit, VS Code, many
    // others), with a vim-style swap file next to it.
    let temporary = folder.task("edited.yaml.tmp");
    let swap = folder.task(".edited.yaml.swp");
    write(&swap, "swap");
    write(&temporary, &format!("{TASK}# edited\n"));
    std::fs::rename(&temporary, &task).unwrap();
    let seen = hinted_until(&mut hints, &task).await;
    assert!(
        !seen.contains(&temporary) && !seen.contains(&swap),
        "scratch files were hinted: {seen:?}"
    );
}

#[tokio::test]
async fn a_new_subdirectory_is_watched_for_the_task_files_put_in_it() {
    let folder = Folder::new();
    let (_watcher, mut hints) = folder.watch();
    let team = folder.task("team");
    std::fs::create_dir(&team).unwrap();
    // The directory's own hint is what the daemon rescans on if a file lands in it before its
    // watch is in place; once it came, the watch is.
    hinted_until(&mut hints, &team).await;
    let task = team.join("weekly.yaml");
    write(&task, TASK);
    hinted_until(&mut hints, &task).await;
    let deeper = team.join("a/b/deep.yaml");
    write(&deeper, TASK);
    // Directories created in one go may be watched after their file was written: then only a
    // directory is hinted, and the rescan finds the file.
    let seen = hinted_until(&mut hints, &team.join("a")).await;
    assert!(seen.iter().all(|p| p.starts_with(&team)), "{seen:?}");
    assert!(scan(&folder.tasks).files.iter().any(|e| e.path == deeper));
}

#[tokio::test]
async fn a_directory_moved_in_whole_is_hinted_and_then_watched_and_moving_it_out_is_hinted() {
    let folder = Folder::new();
    let staged = folder.outside.join("team");
    write(&staged.join("inside.yaml"), TASK);
    let (_watcher, mut hints) = folder.watch();
    let team = folder.task("team");
    std::fs::rename(&staged, &team).unwrap();
    // inotify reports only the directory, not the file already in it.
    hinted_until(&mut hints, &team).await;
    assert!(
        scan(&folder.tasks)
            .files
            .iter()
            .any(|e| e.path == team.join("inside.yaml"))
    );
    let later = team.join("later.yaml");
    write(&later, TASK);
    hinted_until(&mut hints, &later).await;
    std::fs::rename(&team, folder.outside.join("team-again")).unwrap();
    hinted_until(&mut hints, &team).await;
}

#[tokio::test]
async fn what_maxions_writes_or_reads_in_the_folder_is_not_a_hint() {
    let folder = Folder::new();
    let task = folder.task("busy.yaml");
    write(&task, TASK);
    std::os::unix::fs::symlink(&folder.outside, folder.task("linked")).unwrap();
    let (_watcher, mut hints) = folder.watch();

    // A run's records, written the way the runner writes them.
    let result: RunResult = serde_json::from_value(serde_json::json!({
        "run": "r1", "task": task.display().to_string(), "status": "succeeded",
        "branch": "maxions/busy", "base": "main", "steps": [], "fix_rounds": 0,
        "failed_checks": 0, "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:01Z", "duration_ms": 1000, "exec_ms": 900,
        "log": "busy.runs/r1.jsonl",
    }))
    .unwrap();
    let log = log_path(&task, "r1");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut log_file = std::fs::File::create(&log).unwrap();
    for line in 0..20 {
        writeln!(log_file, "{{\"line\":{line}}}").unwrap();
        log_file.flush().unwrap();
    }
    drop(log_file);
    write_result(&result_path(&task), &result).unwrap();
    write_result(&result_path(&task), &result).unwrap();
    // The daemon's rescans open every directory and read every task file.
    for _ in 0..3 {
        let found = scan(&folder.tasks);
        assert_eq!(found.files.len(), 1, "{found:?}");
        std::fs::read(&task).unwrap();
    }
    // Writes through a symlinked directory land outside the watched tree.
    write(&folder.task("linked/elsewhere.yaml"), TASK);
    write(&folder.task(".hidden.yaml"), TASK);

    // Events come out in order: anything hinted for the writes above comes before or with the
    // hint for this file, written last.
    let sentinel = folder.task("zz-sentinel.yaml");
    write(&sentinel, TASK);
    let seen = hinted_until(&mut hints, &sentinel).await;
    assert_eq!(seen, [sentinel]);
}

#[tokio::test]
async fn removing_the_folder_is_an_error_hint_and_it_can_be_watched_again_once_back() {
    let folder = Folder::new();
    write(&folder.task("a.yaml"), TASK);
    let (watcher, mut hints) = folder.watch();
    std::fs::remove_dir_all(&folder.tasks).unwrap();
    let gone = timeout(PATIENCE, async {
        loop {
            match hints.recv().await {
                Some(Hint::Error(error)) => return error,
                // The file's removal may be hinted first.
                Some(Hint::Paths(_)) => {}
                other => panic!("expected an error hint, got {other:?}"),
            }
        }
    })
    .await
    .expect("no error hint after the folder was removed");
    assert!(matches!(gone, WatchError::Gone { .. }), "{gone}");
    assert!(gone.to_string().contains("rescans every 5s"), "{gone}");
    // What a scan sees meanwhile removes nothing: the folder is unknown, not empty.
    let missing = scan(&folder.tasks);
    assert!(missing.files.is_empty() && missing.unknown(&folder.task("a.yaml")));

    drop(watcher);
    std::fs::create_dir(&folder.tasks).unwrap();
    let (_watcher, mut hints) = folder.watch();
    let task = folder.task("b.yaml");
    write(&task, TASK);
    hinted_until(&mut hints, &task).await;
}

#[tokio::test]
async fn watching_a_missing_folder_says_which_and_what_to_do() {
    let folder = Folder::new();
    let missing = folder.outside.join("no-such-tasks");
    let error = watch(&missing, DEBOUNCE).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, WatchError::Missing { .. }), "{message}");
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("create it"), "{message}");
    let file = folder.outside.join("a-file");
    write(&file, "");
    assert!(matches!(
        watch(&file, DEBOUNCE),
        Err(WatchError::Missing { .. })
    ));
}

#[tokio::test]
async fn dropping_the_watcher_ends_the_hints() {
    let folder = Folder::new();
    let (watcher, mut hints) = folder.watch();
    drop(watcher);
    let ended = timeout(PATIENCE, async {
        while let Some(hint) = hints.recv().await {
            assert!(matches!(hint, Hint::Paths(_)), "{hint:?}");
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "hints did not end after the watcher was dropped"
    );
}
