//! Templates: shell auto-escaping proven through a real `/bin/sh`, strict undefined, and the
//! `maxions render` command.

use std::collections::BTreeMap;
use std::process::Command;

use maxions::config::RepoRef;
use maxions::template::{Context, Mode, RunInfo, Templates};

use crate::support::cli::Maxions;
use crate::support::tree;

fn context(task: &str, branch: &str, var: &str) -> Context {
    Context {
        task: task.to_owned(),
        repo: RepoRef::parse("acme/app").unwrap(),
        branch: branch.to_owned(),
        base: "main".to_owned(),
        vars: BTreeMap::from([(
            "title".to_owned(),
            serde_json::Value::String(var.to_owned()),
        )]),
        steps: BTreeMap::from([(
            "describe".to_owned(),
            BTreeMap::from([("message".to_owned(), var.to_owned())]),
        )]),
        run: RunInfo {
            id: "run-1".to_owned(),
            failed_checks: 0,
        },
        failed: None,
    }
}

/// Hostile values: each would run `touch` if it reached the shell unquoted.
fn hostile(marker: &str) -> Vec<String> {
    vec![
        format!("$(touch {marker})"),
        format!("`touch {marker}`"),
        format!("'; touch {marker}; echo '"),
        format!("\"; touch {marker}; echo \""),
        format!("x\ntouch {marker}\n"),
        format!("a; touch {marker}"),
        format!("a && touch {marker} || touch {marker}"),
        format!("$(touch {marker})'\"`\\\\$HOME"),
        format!("{{{{ touch }}}} | touch {marker} &"),
    ]
}

#[test]
fn run_steps_quote_every_interpolated_value_for_sh() {
    let templates = Templates::new();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let marker = marker.to_str().unwrap();
    let script = "printf '%s\\n' {{ task }}\nprintf '%s\\n' {{ branch }}\nprintf '%s\\n' {{ vars.title }}\nprintf '%s\\n' {{ steps.describe.message }}";
    for value in hostile(marker) {
        let ctx = context(&value, &value, &value);
        let rendered = templates.render(script, Mode::Shell, &ctx).unwrap();
        let output = Command::new("/bin/sh")
            .arg("-c")
            .arg(&rendered)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "sh failed on {rendered:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !std::path::Path::new(marker).exists(),
            "{value:?} executed through:\n{rendered}"
        );
        let expected = format!("{value}\n").repeat(4);
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            expected,
            "the value must arrive verbatim"
        );
    }
}

#[test]
fn safe_opts_out_of_quoting() {
    let templates = Templates::new();
    let ctx = context("t", "b", "echo one; echo two");
    let rendered = templates
        .render("{{ vars.title | safe }}", Mode::Shell, &ctx)
        .unwrap();
    assert_eq!(rendered, "echo one; echo two");
}

#[test]
fn prompts_are_not_escaped_and_task_text_is_never_a_template() {
    let templates = Templates::new();
    let task = "Use {{ secrets }} and {% raw %} literally; $(whoami) 'quoted'";
    let rendered = templates
        .render("Task: {{ task }}", Mode::Text, &context(task, "b", "v"))
        .unwrap();
    assert_eq!(rendered, format!("Task: {task}"));
}

#[test]
fn a_missing_variable_is_an_error_that_names_it() {
    let templates = Templates::new();
    let err = templates
        .render(
            "echo {{ vars.missing }}",
            Mode::Shell,
            &context("t", "b", "v"),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "undefined variable `vars.missing`");
}

#[test]
fn render_shows_each_step_with_placeholders_for_outputs() {
    let out = Maxions::new()
        .args(["render", "tasks/dark-mode.yaml"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("git checkout -B 'maxions/dark-mode'"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("│ <steps.describe.message>"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("<output of check lint>"),
        "{}",
        out.stdout
    );
    let one = Maxions::new()
        .args(["render", "tasks/dark-mode.yaml", "--step", "push"])
        .run();
    assert_eq!(one.code, 0, "{}", one.stderr);
    assert!(one.stdout.starts_with("── push (push)"), "{}", one.stdout);
    assert!(!one.stdout.contains("setup"), "{}", one.stdout);
}

#[test]
fn render_refuses_an_invalid_task_with_its_diagnostics() {
    let dir = tree(&[
        (
            "blueprints/b.yaml",
            "name: b\nsteps:\n  - run: echo {{ vars.x }}\n",
        ),
        ("tasks/t.yaml", "task: t\nrepo: a/b\nblueprint: b\n"),
    ]);
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["render", "tasks/t.yaml"])
        .run();
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("error[undefined-variable]"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("tasks/t.yaml:1:1"), "{}", out.stderr);
}
