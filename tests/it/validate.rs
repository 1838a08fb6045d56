//! `maxions validate`: the broken-file corpus with its exact diagnostics, exit codes, the JSON
//! format, and hostile inputs.

use std::time::{Duration, Instant};

use maxions::config::diagnostic::{Styles, render};
use maxions::config::validate::Validator;

use crate::support::cli::Maxions;
use crate::support::{root, tree};

/// Every file under tests/corpus/{blueprints,tasks,misc} except `valid.yaml` is broken; its
/// snapshot is exactly what `maxions validate FILE` prints.
#[test]
fn broken_corpus_matches_snapshots() {
    let mut broken = 0;
    insta::glob!("../corpus", "*/*.yaml", |path| {
        let relative = path.strip_prefix(root()).expect("below root");
        let result = Validator::new().validate_paths(&[relative.to_path_buf()]);
        if relative.ends_with("valid.yaml") {
            assert_eq!(
                result.diagnostics,
                [],
                "the corpus's valid blueprint must stay valid"
            );
            return;
        }
        broken += 1;
        assert!(
            result.errors() + result.warnings() > 0,
            "{} is in the broken corpus but validates cleanly",
            relative.display()
        );
        let rendered: String = result
            .diagnostics
            .iter()
            .map(|d| {
                render(
                    d,
                    result.sources.get(&d.file).map(|s| &**s),
                    &Styles::plain(),
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(rendered);
    });
    assert!(
        broken >= 25,
        "the corpus should hold at least 25 broken files, has {broken}"
    );
}

#[test]
fn shipped_examples_are_valid() {
    let out = Maxions::new()
        .args(["validate", "blueprints", "tasks"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("6 files valid"), "{}", out.stderr);
}

#[test]
fn exit_codes_say_valid_invalid_or_unreadable() {
    let valid = Maxions::new()
        .args(["validate", "tests/corpus/blueprints/valid.yaml"])
        .run();
    assert_eq!(valid.code, 0, "{}", valid.stderr);
    let invalid = Maxions::new()
        .args(["validate", "tests/corpus/blueprints/duplicate-step-id.yaml"])
        .run();
    assert_eq!(invalid.code, 1, "{}", invalid.stderr);
    let missing = Maxions::new()
        .args(["validate", "tests/corpus/no-such-file.yaml"])
        .run();
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("no such file or directory"),
        "{}",
        missing.stderr
    );
}

#[test]
fn json_format_is_an_array_of_located_diagnostics() {
    let out = Maxions::new()
        .args([
            "validate",
            "--format",
            "json",
            "tests/corpus/blueprints/unknown-field-in-fix.yaml",
        ])
        .run();
    assert_eq!(out.code, 1);
    let parsed: serde_json::Value = serde_json::from_str(&out.stdout).expect("valid JSON");
    let items = parsed.as_array().expect("an array");
    let first = items
        .iter()
        .find(|d| d["code"] == "unknown-field")
        .expect("the unknown field is reported");
    assert!(
        items.iter().any(|d| d["code"] == "missing-field"),
        "{items:?}"
    );
    assert_eq!(
        first["file"],
        "tests/corpus/blueprints/unknown-field-in-fix.yaml"
    );
    assert_eq!(first["line"], 8);
    assert_eq!(first["column"], 7);
    assert_eq!(first["severity"], "error");
    assert_eq!(first["code"], "unknown-field");
    assert_eq!(first["message"], "unknown field `max_round` in `fix`");
    assert_eq!(first["hint"], "did you mean `max_rounds`?");
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "code", "column", "file", "hint", "line", "message", "severity"
        ]
    );
}

#[test]
fn a_directory_mixing_valid_and_invalid_files_reports_each() {
    let dir = tree(&[
        (
            "blueprints/good.yaml",
            "name: good\nsteps:\n  - run: echo hi\n",
        ),
        (
            "blueprints/bad.yaml",
            "name: bad\nsteps:\n  - rn: echo hi\n",
        ),
        ("tasks/ok.yaml", "task: hi\nrepo: a/b\nblueprint: good\n"),
        (
            "tasks/broken.yaml",
            "task: hi\nrepo: a/b\nblueprint: nope\n",
        ),
        ("README.md", "not yaml, ignored"),
    ]);
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "."])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("blueprints/bad.yaml:3:5"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("tasks/broken.yaml:3:12"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("good.yaml:"), "{}", out.stderr);
    assert!(out.stderr.contains("2 errors in 4 files"), "{}", out.stderr);
}

#[test]
fn alias_bomb_is_refused_quickly() {
    let start = Instant::now();
    let result =
        Validator::new().validate_paths(&[root().join("tests/corpus/misc/alias-bomb.yaml")]);
    // Generous: the point is "does not expand a billion nodes", which would take minutes.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(result.diagnostics[0].code, "too-complex");
}

#[test]
fn a_huge_file_is_refused_without_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let line = "# padding padding padding padding padding padding padding padding padding\n";
    std::fs::write(&path, line.repeat(50 * 1024 * 1024 / line.len())).unwrap();
    let result = Validator::new().validate_paths(&[path]);
    assert_eq!(result.diagnostics.len(), 1);
    assert_eq!(result.diagnostics[0].code, "too-large");
    assert!(
        result.diagnostics[0].message.contains("larger than"),
        "{:?}",
        result.diagnostics
    );
}

#[test]
fn a_symlink_loop_is_reported_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dir.path().join("b.yaml"), dir.path().join("a.yaml")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("a.yaml"), dir.path().join("b.yaml")).unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("self")).unwrap();
    let out = Maxions::new().args(["validate"]).arg_path(dir.path()).run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("symlink loop"), "{}", out.stderr);
}

#[test]
fn git_token_needs_no_definition_when_a_forge_supplies_it() {
    let blueprint = "name: b\nsteps:\n  - run: git clone x\n    secrets: [GIT_TOKEN]\n";
    let with_forge = tree(&[
        ("maxions.yaml", "github:\n  token_env: GH_PAT\n"),
        ("blueprints/b.yaml", blueprint),
    ]);
    let out = Maxions::new()
        .current_dir(with_forge.path())
        .args(["validate", "blueprints"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let without = tree(&[
        ("maxions.yaml", "concurrency: 2\n"),
        ("blueprints/b.yaml", blueprint),
    ]);
    let out = Maxions::new()
        .current_dir(without.path())
        .args(["validate", "blueprints"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("secret `GIT_TOKEN` is not defined"),
        "{}",
        out.stderr
    );
}

#[test]
fn secrets_must_be_defined_in_the_daemon_config() {
    let dir = tree(&[
        ("maxions.yaml", "secrets:\n  GIT_TOKEN: { env: GH_TOKEN }\n"),
        (
            "blueprints/b.yaml",
            "name: b\nsteps:\n  - run: git push\n    secrets: [GIT_TOKEN, GIT_TOKN, NPM_TOKEN]\n",
        ),
    ]);
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "blueprints"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("secret `GIT_TOKN` is not defined"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean `GIT_TOKEN`?"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("secret `NPM_TOKEN` is not defined"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("secret `GIT_TOKEN` is not"),
        "{}",
        out.stderr
    );
}

#[test]
fn help_and_version_work() {
    let help = Maxions::new().args(["--help"]).run();
    assert_eq!(help.code, 0);
    for command in ["validate", "render", "schema"] {
        assert!(help.stdout.contains(command), "{}", help.stdout);
    }
    let version = Maxions::new().args(["--version"]).run();
    assert!(version.stdout.starts_with("maxions "), "{}", version.stdout);
}

#[test]
fn colors_follow_the_flag_and_no_color() {
    let path = "tests/corpus/blueprints/duplicate-step-id.yaml";
    let plain = Maxions::new().args(["validate", path]).run();
    assert!(
        !plain.stderr.contains('\u{1b}'),
        "NO_COLOR is set by the harness"
    );
    let forced = Maxions::new()
        .args(["--color", "always", "validate", path])
        .run();
    assert!(forced.stderr.contains('\u{1b}'), "{}", forced.stderr);
}

mod never_panics {
    use proptest::prelude::*;

    use maxions::config::validate::Validator;

    fn corpus() -> Vec<Vec<u8>> {
        let mut files = Vec::new();
        for dir in ["blueprints", "tasks", "misc"] {
            let path = crate::support::root().join("tests/corpus").join(dir);
            for entry in std::fs::read_dir(path).unwrap().flatten() {
                files.push(std::fs::read(entry.path()).unwrap());
            }
        }
        files.push(std::fs::read(crate::support::root().join("blueprints/default.yaml")).unwrap());
        files
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Truncating or corrupting any corpus file at any byte gives diagnostics, never a panic.
        #[test]
        fn mangled_files_get_answers(which in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>(), byte in any::<u8>(), flip in any::<bool>()) {
            let files = corpus();
            let mut bytes = files[which.index(files.len())].clone();
            if !bytes.is_empty() {
                let at = cut.index(bytes.len());
                if flip { bytes[at] = byte; } else { bytes.truncate(at); }
            }
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("blueprints")).unwrap();
            let path = dir.path().join("blueprints/mangled.yaml");
            std::fs::write(&path, &bytes).unwrap();
            let result = Validator::new().validate_paths(&[path]);
            for d in &result.diagnostics {
                prop_assert!(!d.message.is_empty());
            }
        }
    }
}
