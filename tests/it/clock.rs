//! The machine's clock stepping while a schedule is pending: a real `maxions daemon` whose wall
//! clock is moved by libfaketime (Debian's `faketime`; the monotonic clock is left alone, as a
//! clock step leaves it), forward onto a slot, back an hour, forward again and on to the next
//! slot. Each slot runs exactly once, and a step back runs nothing again.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::api::{ApiDaemon, PATIENCE, Project, TOKEN};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Whether libfaketime is there (installed on first use, as root); `false` (said why) when it
/// cannot be.
fn libfaketime() -> bool {
    if Path::new(LIBFAKETIME).exists() {
        return true;
    }
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "faketime"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    if Path::new(LIBFAKETIME).exists() {
        return true;
    }
    let root = rustix::process::geteuid().is_root();
    assert!(
        !root,
        "as root, `apt-get install faketime` must work: this test moves the daemon's clock with it"
    );
    eprintln!("SKIPPED clock: libfaketime is not installed (apt-get install faketime)");
    false
}

/// The runs of `task`, oldest first, with their triggers.
fn runs(daemon: &ApiDaemon, task: &str) -> Vec<String> {
    let list = daemon.get_json(&format!("/maxions?task={task}"));
    let mut triggers: Vec<(String, String)> = list["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_owned(),
                r["trigger"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    triggers.sort();
    triggers.into_iter().map(|(_, t)| t).collect()
}

fn wait_runs(daemon: &ApiDaemon, task: &str, n: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let runs = runs(daemon, task);
        if runs.len() >= n {
            return runs;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{n} runs of {task} did not come (have {runs:?}):\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sets the daemon's clock to the real one plus `offset` seconds.
fn step(file: &Path, offset: i64) {
    std::fs::write(file, format!("{offset:+}\n")).expect("write the faked offset");
}

#[test]
fn a_clock_stepping_forward_and_back_runs_each_slot_once() {
    if !crate::support::docker::available("clock") || !libfaketime() {
        return;
    }
    let project = Project::new("concurrency: 2\n");
    let clock = project.root().join("faketime");
    step(&clock, 0);
    let clock_file = clock.display().to_string();
    let daemon = ApiDaemon::start_with(
        &project,
        &[
            ("MAXIONS_API_TOKEN", TOKEN),
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &clock_file),
            ("FAKETIME_NO_CACHE", "1"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let task = project.root().join("tasks/hourly.yaml");
    std::fs::write(
        &task,
        format!(
            "{}schedule: \"0 * * * *\"\n",
            project.task_yaml("quick", "every hour")
        ),
    )
    .expect("write the task");

    // The schedule is known: its next slot is the next top of the hour.
    let started = Instant::now();
    let next = loop {
        let schedules = daemon.get_json("/schedules");
        if let Some(next) = schedules["schedules"][0]["next"][0].as_str() {
            break chrono::DateTime::parse_from_rfc3339(next).expect("an RFC 3339 slot");
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no schedule: {}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let to_slot = (next.timestamp() - chrono::Utc::now().timestamp()) - 3;

    // Forward to 3 s before the slot: it runs, once.
    step(&clock, to_slot);
    let first = wait_runs(&daemon, "hourly", 1);
    let slot = next.to_rfc3339();
    assert!(first[0].contains(&slot), "{first:?} (slot {slot})");

    // Back an hour, then forward past the slot again: nothing runs again.
    step(&clock, to_slot - 3600);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        runs(&daemon, "hourly").len(),
        1,
        "a step back ran a slot again"
    );
    step(&clock, to_slot + 10);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(runs(&daemon, "hourly").len(), 1, "the slot ran twice");

    // On to 3 s before the next slot: that one runs, once.
    step(&clock, to_slot + 3600);
    let both = wait_runs(&daemon, "hourly", 2);
    let second = (next + chrono::Duration::hours(1)).to_rfc3339();
    assert!(both[1].contains(&second), "{both:?} (slot {second})");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs(&daemon, "hourly").len(), 2, "{}", daemon.output());
}
