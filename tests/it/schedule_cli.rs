//! `maxions schedule`: the next slots of scheduled tasks from the real binary, in the task's own
//! offset across a DST change, with validate's diagnostics for broken files.

use crate::support::cli::Maxions;
use crate::support::tree;

const BLUEPRINT: (&str, &str) = ("blueprints/b.yaml", "name: b\nsteps:\n  - run: echo hi\n");

fn schedule_json(stdout: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not a JSON array ({e}): {stdout}"))
}

#[test]
fn json_lists_slots_across_the_berlin_gap_in_the_tasks_offset() {
    let dir = tree(&[
        BLUEPRINT,
        (
            "tasks/nightly.yaml",
            "task: tidy up\nrepo: a/b\nblueprint: b\nschedule: \"30 2 * * *\"\ntimezone: Europe/Berlin\n",
        ),
    ]);
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["schedule", "tasks/nightly.yaml", "--format", "json"])
        .args(["--from", "2026-03-27T12:00:00Z", "--count", "4"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        schedule_json(&out.stdout),
        [serde_json::json!({
            "task": "tasks/nightly.yaml",
            "schedule": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "next": [
                "2026-03-28T02:30:00+01:00",
                // 02:30 does not exist on 2026-03-29: right after the change.
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00",
            ],
        })]
    );
}

#[test]
fn text_shows_local_and_utc_times() {
    let dir = tree(&[
        BLUEPRINT,
        (
            "tasks/quarter.yaml",
            "task: poll\nrepo: a/b\nblueprint: b\nschedule: \"*/15 * * * *\"\ntimezone: Europe/Berlin\n",
        ),
    ]);
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["schedule", "tasks", "--from", "2026-03-29T01:30:00+01:00"])
        .args(["--count", "2"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "tasks/quarter.yaml: */15 * * * * (Europe/Berlin)\n  \
         Sun 2026-03-29 01:45 +01:00 CET  2026-03-29T00:45:00Z\n  \
         Sun 2026-03-29 03:00 +02:00 CEST  2026-03-29T01:00:00Z\n"
    );
}

#[test]
fn an_invalid_cron_gets_validates_located_diagnostic() {
    let dir = tree(&[
        BLUEPRINT,
        (
            "tasks/bad.yaml",
            "task: x\nrepo: a/b\nblueprint: b\nschedule: \"0 9 * *\"\n",
        ),
        (
            "tasks/good.yaml",
            "task: x\nrepo: a/b\nblueprint: b\nschedule: \"0 9 * * *\"\n",
        ),
    ]);
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["schedule", "tasks", "--format", "json"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "error[invalid-cron]: invalid cron `0 9 * *`: expected 5 fields \
             (minute hour day-of-month month day-of-week), found 4\n --> tasks/bad.yaml:4:11"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "", "nothing is listed while a file is invalid");
    // The same words as validate.
    let validate = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "tasks"])
        .run();
    assert!(
        validate.stderr.starts_with(&out.stderr),
        "{}",
        validate.stderr
    );
}

#[test]
fn a_directory_lists_only_scheduled_tasks() {
    let dir = tree(&[
        BLUEPRINT,
        // Blueprints are found through it from a nested task too.
        ("maxions.yaml", "concurrency: 2\n"),
        ("tasks/once.yaml", "task: x\nrepo: a/b\nblueprint: b\n"),
        (
            "tasks/nested/weekly.yaml",
            "task: x\nrepo: a/b\nblueprint: b\nschedule: \"0 9 * * 1\"\n",
        ),
        (
            "tasks/kolkata.yml",
            "task: x\nrepo: a/b\nblueprint: b\nschedule: \"@daily\"\ntimezone: Asia/Kolkata\n",
        ),
    ]);
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["schedule", "tasks", "--format", "json"])
        .args(["--from", "2026-06-01T00:00:00Z", "--count", "1"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut listed = schedule_json(&out.stdout);
    listed.sort_by_key(|entry| entry["task"].as_str().map(str::to_owned));
    assert_eq!(
        listed,
        [
            serde_json::json!({
                "task": "tasks/kolkata.yml",
                "schedule": "@daily",
                "timezone": "Asia/Kolkata",
                "next": ["2026-06-02T00:00:00+05:30"],
            }),
            serde_json::json!({
                "task": "tasks/nested/weekly.yaml",
                "schedule": "0 9 * * 1",
                "timezone": "UTC",
                "next": ["2026-06-01T09:00:00+00:00"],
            }),
        ]
    );
}

#[test]
fn no_scheduled_task_is_an_empty_list() {
    let dir = tree(&[
        BLUEPRINT,
        ("tasks/once.yaml", "task: x\nrepo: a/b\nblueprint: b\n"),
    ]);
    let json = Maxions::new()
        .current_dir(dir.path())
        .args(["schedule", "tasks", "--format", "json"])
        .run();
    assert_eq!(
        (json.code, json.stdout.trim()),
        (0, "[]"),
        "{}",
        json.stderr
    );
    let text = Maxions::new()
        .current_dir(dir.path())
        .args(["schedule", "tasks"])
        .run();
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stderr
            .contains("no task has a `schedule` (1 task file read)"),
        "{}",
        text.stderr
    );
}

#[test]
fn bad_arguments_and_unreadable_paths() {
    let missing = Maxions::new().args(["schedule", "no/such/dir"]).run();
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    let from = Maxions::new()
        .args(["schedule", "tasks", "--from", "tomorrow"])
        .run();
    assert_eq!(from.code, 2, "{}", from.stderr);
    assert!(from.stderr.contains("RFC 3339"), "{}", from.stderr);
    let count = Maxions::new()
        .args(["schedule", "tasks", "--count", "1001"])
        .run();
    assert_eq!(count.code, 2, "{}", count.stderr);
}
