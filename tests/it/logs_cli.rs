//! `maxions logs` as a user types it: the real binary on hand-written run logs, printing them,
//! following one that another thread writes, and finding a run by its id.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cli::{Maxions, bin};
use crate::support::{tree, write};

const RUN: &str = "20261125T120000-abcdef";

/// One log line of run [`RUN`] at `12:00:<secs>`, with `fields` after `type`.
fn line(seq: u64, secs: &str, kind: &str, fields: &str) -> String {
    let comma = if fields.is_empty() { "" } else { "," };
    format!(
        r#"{{"ts":"2026-11-25T12:00:{secs}Z","run":"{RUN}","seq":{seq},"type":"{kind}"{comma}{fields}}}"#
    ) + "\n"
}

fn whole_run() -> String {
    [
        line(
            1,
            "00.000",
            "run_started",
            r#""task":"tasks/fix.yaml","blueprint":"default","repo":"file:///r","branch":"maxions/fix","base":"main""#,
        ),
        line(2, "01.500", "step_started", r#""step":"setup","kind":"run""#),
        line(
            3,
            "02.000",
            "output",
            // An escape sequence that would write the clipboard (OSC 52).
            r#""step":"setup","stream":"stdout","text":"hi \u001b]52;c;eA==\u0007 there\n""#,
        ),
        line(
            4,
            "03.800",
            "step_finished",
            r#""step":"setup","status":"succeeded","exit_code":0,"duration_ms":2300"#,
        ),
        // A kind of event from a newer maxions.
        line(5, "04.000", "agent_event", r#""step":"code","what":"thinking""#),
        line(6, "05.000", "step_started", r#""step":"test","kind":"check""#),
        line(
            7,
            "06.000",
            "output",
            r#""step":"test","stream":"stderr","text":"assertion failed\n""#,
        ),
        line(
            8,
            "07.000",
            "step_finished",
            r#""step":"test","status":"failed","exit_code":1,"duration_ms":2000"#,
        ),
        line(
            9,
            "08.000",
            "run_finished",
            r#""status":"failed","reason":"step test failed","duration_ms":8000"#,
        ),
    ]
    .concat()
}

/// The indices of `parts` in `text`, asserting each is there and after the one before.
fn assert_in_order(text: &str, parts: &[&str]) {
    let mut from = 0;
    for part in parts {
        match text[from..].find(part) {
            Some(at) => from += at + part.len(),
            None => panic!("`{part}` (in this order) in:\n{text}"),
        }
    }
}

#[test]
fn logs_prints_the_steps_in_order_with_their_durations_and_times() {
    let dir = tree(&[(&format!("tasks/fix.runs/{RUN}.jsonl"), &whole_run())]);
    let log = dir.path().join(format!("tasks/fix.runs/{RUN}.jsonl"));
    let out = Maxions::new().args(["logs"]).arg_path(&log).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_in_order(
        &out.stdout,
        &[
            &format!(
                "[   0.0s] run {RUN} of tasks/fix.yaml (blueprint default, branch maxions/fix)"
            ),
            "[   1.5s] ▶ setup (run)",
            "[   3.8s] ✓ setup 2.3s",
            r#"[   4.0s] ? agent_event {"step":"code","what":"thinking"}"#,
            "[   5.0s] ▶ test (check)",
            "[   7.0s] ✗ test 2.0s",
            // The end of a failed step's output, as `maxions run` shows it.
            "[   7.0s]   | assertion failed",
            "[   8.0s] run failed after 8.0s: step test failed",
        ],
    );
    // Without -v, a step's output is not shown; with it, every line is, made harmless.
    assert!(!out.stdout.contains("hi "), "{}", out.stdout);
    let verbose = Maxions::new().args(["logs", "-v"]).arg_path(&log).run();
    assert!(
        verbose
            .stdout
            .contains("[   2.0s]   | hi ^[]52;c;eA==^G there"),
        "{}",
        verbose.stdout
    );
    assert!(!verbose.stdout.contains('\x1b'), "{}", verbose.stdout);
    // The task file finds its newest run; --json gives the lines as written.
    let task = dir.path().join("tasks/fix.yaml");
    let json = Maxions::new()
        .args(["logs", "--json"])
        .arg_path(&task)
        .run();
    assert_eq!(json.code, 0, "{}", json.stderr);
    assert_eq!(json.stdout, whole_run());
}

#[test]
fn follow_prints_what_is_appended_and_exits_with_the_run_status() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join(format!("tasks/fix.runs/{RUN}.jsonl"));
    let first = line(
        1,
        "00.000",
        "step_started",
        r#""step":"build","kind":"run""#,
    );
    write(dir.path(), &format!("tasks/fix.runs/{RUN}.jsonl"), &first);
    let mut child = Command::new(bin())
        .args(["logs", "-f"])
        .arg(&log)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let append = |text: &str| {
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.flush().unwrap();
    };
    std::thread::sleep(Duration::from_millis(400));
    // A line written in two halves, several polls apart: nothing of it may show until whole.
    let finished = line(
        2,
        "04.200",
        "step_finished",
        r#""step":"build","status":"succeeded","exit_code":0,"duration_ms":4200"#,
    );
    let (head, tail) = finished.split_at(finished.len() / 2);
    append(head);
    std::thread::sleep(Duration::from_millis(700));
    append(tail);
    std::thread::sleep(Duration::from_millis(300));
    append(&line(
        3,
        "05.000",
        "warning",
        r#""message":"disk almost full""#,
    ));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "`logs -f` ended before the run did"
    );
    let started = Instant::now();
    append(&line(
        4,
        "09.000",
        "run_finished",
        r#""status":"timed_out","reason":"the run took longer than 1m","duration_ms":9000"#,
    ));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "`logs -f` did not end at run_finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    // `maxions run` exits 124 for a run that timed out.
    assert_eq!(status.code(), Some(124), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        "[   0.0s] ▶ build (run)\n\
         [   4.2s] ✓ build 4.2s\n\
         [   5.0s] warning: disk almost full\n\
         [   9.0s] run timed_out after 9.0s: the run took longer than 1m\n"
    );
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn a_run_id_is_found_below_the_tasks_dir_of_maxions_yaml() {
    let dir = tree(&[
        ("maxions.yaml", "tasks_dir: queue\n"),
        (&format!("queue/team/fix.runs/{RUN}.jsonl"), &whole_run()),
        ("queue/other.runs/20261125T110000-000000.jsonl", "{}\n"),
    ]);
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["logs", RUN])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("team/fix.runs/{RUN}.jsonl")),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("✗ test 2.0s"), "{}", out.stdout);
}

#[test]
fn an_unknown_run_id_says_where_it_looked() {
    let dir = tree(&[
        ("maxions.yaml", "tasks_dir: queue\n"),
        (&format!("queue/fix.runs/{RUN}.jsonl"), &whole_run()),
    ]);
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["logs", "20261125T120000-000000"])
        .run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    let queue = dir.path().join("queue");
    let config = dir.path().join("maxions.yaml");
    for expected in [
        "no run `20261125T120000-000000` found",
        "*.runs/20261125T120000-000000.jsonl",
        &queue.display().to_string(),
        &format!("the tasks_dir of {}", config.display()),
    ] {
        assert!(
            out.stderr.contains(expected),
            "`{expected}` in {}",
            out.stderr
        );
    }
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}
