//! Templates: shell auto-escaping proven through a real `/bin/sh` across filters, loops, macros
//! and blocks; values inside quotes or here-documents refused; strict undefined; `maxions render`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use maxions::config::RepoRef;
use maxions::template::{
    Context, HazardKind, Mode, RunInfo, Templates, shell_hazards, shell_quote,
};
use proptest::prelude::*;

use crate::support::cli::Maxions;
use crate::support::tree;

fn context(task: &str, branch: &str, var: &str) -> Context {
    Context {
        task: task.to_owned(),
        repo: (&RepoRef::parse("acme/app").unwrap()).into(),
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
        format!("*; touch {marker} ~ $HOME ${{HOME}} \\"),
        format!("\\'$(touch {marker})\\'"),
        format!("a\\\ntouch {marker}"),
        format!("EOF\ntouch {marker}\nEOF"),
        format!("-n héllo wörld ß 日本 🎉 \t\r $(touch {marker}) --help"),
        String::new(),
        "*".to_owned(),
        "~".to_owned(),
    ]
}

/// Runs `script` with the host's `/bin/sh` (dash on Debian) in `dir`.
fn sh(script: &str, dir: &Path) -> std::process::Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("/bin/sh runs")
}

/// What a shape's value must arrive as.
#[derive(Clone, Copy)]
enum Expect {
    /// Exactly what the expression renders to as text.
    Text,
    /// That text without trailing newlines (`$( )` strips them).
    TextTrimmed,
    /// That text quoted once more: a block or macro output, not marked `| safe`, is one value.
    Requoted,
    /// The value itself (`shell_quote` quotes and `escape` escapes HTML in text, and in a
    /// command they add nothing).
    Value,
}

/// (expression, script around it with `@` for the expression, expectation). Each script writes
/// the value to `out`.
const SHAPES: &[(&str, &str, Expect)] = &[
    ("{{ task }}", "printf %s @ > out", Expect::Text),
    ("{{ task | upper }}", "printf %s @ > out", Expect::Text),
    (
        "{{ task | lower | trim }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    (
        "{{ task | replace(\"a\", \"'\") }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    (
        "{{ [task, branch] | join(\" ; \") }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    ("{{ task | tojson }}", "printf %s @ > out", Expect::Text),
    (
        "{{ {\"a\": [task]} | tojson(indent=2) }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    ("{{ task | e }}", "printf %s @ > out", Expect::Value),
    ("{{ task | escape }}", "printf %s @ > out", Expect::Value),
    (
        "{{ task | shell_quote }}",
        "printf %s @ > out",
        Expect::Value,
    ),
    (
        "{{ vars.nope | default(task) }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    ("{{ task | indent(2) }}", "printf %s @ > out", Expect::Text),
    (
        "{{ task | tail(1) }}{{ task | head(1) }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    ("{{ task ~ branch }}", "printf %s @ > out", Expect::Text),
    (
        "{{ \"'\" ~ task ~ \"\\\\\" }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    (
        "{{ task | safe | upper }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    ("{{ task | reverse }}", "printf %s @ > out", Expect::Text),
    (
        "{{ \"%s!\" | format(task) }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    (
        "{{ task[1:] if task else \"x\" }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    ("{{ task | length }}", "printf %s @ > out", Expect::Text),
    (
        "{% for c in task | list %}{{ c }}{% endfor %}",
        "printf %s @ > out",
        Expect::Text,
    ),
    (
        "{% for w in [task, branch] %}{{ w }}{% if not loop.last %}+{% endif %}{% endfor %}",
        "printf %s @ > out",
        Expect::Text,
    ),
    (
        "{% macro m(x) %}+{{ x }}+{% endmacro %}{{ m(task) | safe }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    (
        "{% macro m(x) %}{{ x }}{% endmacro %}{{ m(task) }}",
        "printf %s @ > out",
        Expect::Requoted,
    ),
    (
        "{% set s %}{{ task }}={{ branch }}{% endset %}{{ s | safe }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    (
        "{% set s %}{{ task }}{% endset %}{{ s }}",
        "printf %s @ > out",
        Expect::Requoted,
    ),
    (
        "{% set s = task | upper %}{{ s }}",
        "printf %s @ > out",
        Expect::Text,
    ),
    (
        "{% autoescape false %}{{ task }}{% endautoescape %}",
        "printf %s @ > out",
        Expect::Text,
    ),
    (
        "{% filter upper %}{{ task }}{% endfilter %}",
        "printf %s @ > out",
        Expect::Requoted,
    ),
    (
        "{% filter upper | safe %}{{ task }}{% endfilter %}",
        "printf %s @ > out",
        Expect::Text,
    ),
    ("{{ task }}", "x=@; printf %s \"$x\" > out", Expect::Text),
    (
        "{{ task }}",
        "printf %s \"$(printf %s @)\" > out",
        Expect::TextTrimmed,
    ),
    (
        "{{ task }}",
        "printf %s $(printf %s @ | od -An -c | tr -d ' \\n') > /dev/null; printf %s @ > out # ok",
        Expect::Text,
    ),
    (
        "{{ task }}",
        "cat > out <<'EOF'\n'\"$(\nEOF\nprintf %s @ > out",
        Expect::Text,
    ),
    (
        "{{ task }}",
        "case @ in (*) printf %s @ > out;; esac",
        Expect::Text,
    ),
];

/// Renders each shape with `value` as task, branch and vars, runs it, and checks that the value
/// arrived as expected and ran nothing.
fn assert_shapes_keep(value: &str) {
    let templates = Templates::new();
    for &(expr, wrap, expect) in SHAPES {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pwned");
        let value = value.replace("{marker}", marker.to_str().unwrap());
        let ctx = context(&value, &value, &value);
        let text = templates.render(expr, Mode::Text, &ctx).unwrap();
        let want = match expect {
            Expect::Text => text,
            Expect::TextTrimmed => text.trim_end_matches('\n').to_owned(),
            Expect::Requoted => shell_quote(&text),
            Expect::Value => value.clone(),
        };
        let script = wrap.replace('@', expr);
        let rendered = templates
            .render(&script, Mode::Shell, &ctx)
            .unwrap_or_else(|e| panic!("{script:?} with {value:?}: {e}"));
        let output = sh(&rendered, dir.path());
        assert!(
            output.status.success(),
            "sh failed on {rendered:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !marker.exists(),
            "{value:?} executed through {script:?}:\n{rendered}"
        );
        let got = std::fs::read(dir.path().join("out")).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            want,
            "{script:?} with {value:?} rendered as {rendered:?}"
        );
    }
}

#[test]
fn hostile_values_arrive_verbatim_through_every_template_shape() {
    for value in hostile("{marker}") {
        assert_shapes_keep(&value);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Generated values, shell punctuation and unicode included (no NUL: it cannot be in an
    /// argument; no noncharacters U+FDD0..U+FDD3: those are dropped from values), pass every shape.
    #[test]
    fn generated_values_arrive_verbatim(value in "[^\u{0}\u{FDD0}-\u{FDD3}]{0,12}|[$`'\"\\\\;|&*?~ \n(){}<>#a-z]{0,16}") {
        assert_shapes_keep(&value);
    }
}

#[test]
fn noncharacter_markers_in_a_value_are_dropped_not_obeyed() {
    let templates = Templates::new();
    let dir = tempfile::tempdir().unwrap();
    let value = "\u{FDD1}'; touch pwned; '\u{FDD0}\u{FDD3}$(touch pwned)\u{FDD2}";
    for script in [
        "printf %s {{ task }} > out",
        "{% set s %}{{ task }}{% endset %}printf %s {{ s | safe }} > out",
    ] {
        let rendered = templates
            .render(script, Mode::Shell, &context(value, "b", "v"))
            .unwrap();
        let output = sh(&rendered, dir.path());
        assert!(output.status.success(), "{rendered:?}");
        assert!(!dir.path().join("pwned").exists(), "{rendered:?}");
        let got = std::fs::read_to_string(dir.path().join("out")).unwrap();
        assert_eq!(got, "'; touch pwned; '$(touch pwned)");
    }
}

#[test]
fn values_inside_quotes_heredocs_or_comments_are_refused_by_render() {
    let templates = Templates::new();
    let ctx = context("$(touch pwned)", "b", "v");
    for (script, kind) in [
        ("echo '{{ task }}'", HazardKind::SingleQuotes),
        ("git commit -m \"{{ task }}\"", HazardKind::DoubleQuotes),
        (
            "git commit -m \"{{ task | safe }}\"",
            HazardKind::DoubleQuotes,
        ),
        ("echo \"$(echo '{{ task }}')\"", HazardKind::SingleQuotes),
        ("echo `echo {{ task }}`", HazardKind::Backquotes),
        ("echo $'{{ task }}'", HazardKind::DollarQuotes),
        ("cat <<EOF\n{{ task }}\nEOF", HazardKind::HeredocBody),
        (
            "cat <<'EOF'\n{{ task | tojson }}\nEOF",
            HazardKind::HeredocBody,
        ),
        // bash ends the document at a line `EOF` of the value even inside `$( )`.
        (
            "cat <<EOF\n$(printf %s {{ task }})\nEOF",
            HazardKind::HeredocBody,
        ),
        ("cat <<{{ task }}\nx\n", HazardKind::HeredocDelimiter),
        ("true # {{ task }}", HazardKind::Comment),
        ("echo \\{{ task }}", HazardKind::Escaped),
        ("echo ${{ task }}", HazardKind::AfterDollar),
        ("echo ${x:-{{ task }}}", HazardKind::ParameterExpansion),
        ("echo $(( {{ task }} + 1 ))", HazardKind::Arithmetic),
        // Only the rendered command shows these: the quote comes from a value marked safe.
        (
            "{% set q = \"'\" %}echo {{ q | safe }}{{ task }}{{ q | safe }}",
            HazardKind::SingleQuotes,
        ),
        ("echo {{ \"\\\\\" | safe }}{{ task }}", HazardKind::Escaped),
        // A filter that takes a captured value's quotes away.
        (
            "{% filter replace(\"'\", \"\") | safe %}echo {{ task }}{% endfilter %}",
            HazardKind::Altered,
        ),
        (
            "{% set s %}echo {{ task }}{% endset %}{{ s | tail(1) | replace(\"'\", '\"') | safe }}",
            HazardKind::Altered,
        ),
    ] {
        let err = templates
            .render(script, Mode::Shell, &ctx)
            .expect_err(script);
        assert_eq!(err.hazard, Some(kind), "{script:?}: {err}");
        assert!(err.to_string().contains(kind.hint()), "{err}");
        assert!(
            templates.render(script, Mode::Text, &ctx).is_ok(),
            "{script:?}"
        );
    }
}

#[test]
fn hazards_are_located_at_the_opening_braces() {
    let source = "echo {{ ok }}\necho '{{ task }}' \"x{{ branch }}\" {{ fine | safe }}";
    let found = shell_hazards(source);
    let offsets: Vec<(usize, HazardKind)> = found.iter().map(|h| (h.offset, h.kind)).collect();
    let first = source.find("{{ task").unwrap();
    let second = source.find("{{ branch").unwrap();
    assert_eq!(
        offsets,
        [
            (first, HazardKind::SingleQuotes),
            (second, HazardKind::DoubleQuotes)
        ]
    );
    let err = Templates::new()
        .render(source, Mode::Shell, &context("t", "b", "v"))
        .unwrap_err();
    assert_eq!(err.range, Some(first..first + 2));
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
    let rendered = templates
        .render(
            "{% macro m(x) %}printf %s {{ x }}{% endmacro %}{{ m(task) | safe }}; {{ vars.title | tojson }}",
            Mode::Shell,
            &ctx,
        )
        .unwrap();
    assert_eq!(rendered, "printf %s 't'; '\"echo one; echo two\"'");
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
        out.stdout.contains("on branch maxions/dark-mode"),
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

/// Pieces of shell syntax that change quoting, from which random `run:` templates are built.
const PIECES: &[&str] = &[
    "echo ",
    "printf %s ",
    " ",
    "a",
    ";",
    "\n",
    "'",
    "\"",
    "`",
    "$(",
    ")",
    "(",
    "${x:-",
    "}",
    "\\",
    "$",
    "#",
    "<<EOF ",
    "\nEOF\n",
    "<<-'E' ",
    "\n\tE\n",
    "$((",
    "))",
    "$'",
    "&& ",
    "| ",
    "{{ task }}",
    "{{ task }}",
    "{{ task | upper }}",
    "{{ [task, task] | join }}",
    "{% if task %}'{% endif %}",
    "{% set s %}'{{ task }}{% endset %}{{ s }}",
    "{{ \"'\" | safe }}",
    "{{ '\"' | safe }}",
    "{{ '\\\\' | safe }}",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]
    /// A template made of random shell pieces is either refused by `render`, or, run by `sh`,
    /// never executes the value, which would create the marker file.
    #[test]
    fn what_render_accepts_never_runs_the_value(
        picks in proptest::collection::vec(proptest::sample::select(PIECES), 1..14)
    ) {
        let script: String = picks.concat();
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pwned");
        let m = marker.to_str().unwrap();
        let task = format!(
            "$(touch {m})`touch {m}`'$(touch {m})'\"$(touch {m})\"\ntouch {m}\nEOF\ntouch {m}\n\tE\ntouch {m} #"
        );
        let ctx = context(&task, "b", "v");
        if let Ok(rendered) = Templates::new().render(&script, Mode::Shell, &ctx) {
            let _ = Command::new("timeout")
                .args(["5", "/bin/sh", "-c", &rendered])
                .current_dir(dir.path())
                .stdin(std::process::Stdio::null())
                .output()
                .expect("timeout and /bin/sh run");
            prop_assert!(!marker.exists(), "{script:?} ran the value:\n{rendered}");
        }
    }
}
