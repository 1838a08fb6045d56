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
    // The shipped tasks and blueprints, under the shipped maxions.yaml that defines their
    // secrets (there is no other source of secrets).
    let out = Maxions::new()
        .args(["validate", "maxions.yaml", "blueprints", "tasks"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("7 files valid"), "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
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
fn git_token_is_an_ordinary_secret_and_naming_it_warns() {
    let blueprint = "name: b\nsteps:\n  - run: git clone x\n    secrets: [GIT_TOKEN]\n";
    // A forge no longer stands in for the definition: its credentials never enter the sandbox.
    let with_forge = tree(&[
        ("maxions.yaml", "github:\n  token_env: GH_PAT\n"),
        ("blueprints/b.yaml", blueprint),
    ]);
    let out = Maxions::new()
        .current_dir(with_forge.path())
        .args(["validate", "blueprints"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("secret `GIT_TOKEN` is not defined"),
        "{}",
        out.stderr
    );
    let defined = tree(&[
        ("maxions.yaml", "secrets:\n  GIT_TOKEN: { env: CI_TOKEN }\n"),
        ("blueprints/b.yaml", blueprint),
    ]);
    let out = Maxions::new()
        .current_dir(defined.path())
        .args(["validate", "blueprints"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("warning[git-token-secret]")
            && out
                .stderr
                .contains("use `checkout: {}`; credentials never enter the sandbox"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_task_without_maxions_yaml_has_no_secrets() {
    let dir = tree(&[
        (
            "blueprints/b.yaml",
            "name: b\nagent: { kind: command, command: [cat], secrets: [LLM_KEY] }\nsteps:\n  \
             - run: make\n    secrets: [MAXIONS_GITHUB_APP_KEY]\n",
        ),
        ("tasks/t.yaml", "task: x\nrepo: octo/hello\nblueprint: b\n"),
    ]);
    // On its own the blueprint may yet be used by a task whose maxions.yaml defines them.
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "blueprints"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("warning[unknown-secret]"),
        "{}",
        out.stderr
    );
    // Through the task it cannot: no variable of the daemon's is read for a name it asks for.
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "tasks/t.yaml"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    for (name, at) in [
        ("MAXIONS_GITHUB_APP_KEY", "blueprints/b.yaml:5:15"),
        ("LLM_KEY", "blueprints/b.yaml:2:51"),
    ] {
        assert!(
            out.stderr.contains(&format!(
                "error[unknown-secret]: secret `{name}` is not defined: no maxions.yaml applies \
                 to task `tasks/t.yaml`"
            )) && out.stderr.contains(at),
            "{name} at {at}: {}",
            out.stderr
        );
    }
    assert!(
        !out.stderr.contains("warning[unknown-secret]"),
        "{}",
        out.stderr
    );
    let err = maxions::config::load::load_task(&dir.path().join("tasks/t.yaml"), None)
        .expect_err("the task must not load");
    assert!(err.errors() >= 2, "{:?}", err.diagnostics);
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
    assert!(
        out.stderr.contains("warning[git-token-secret]"),
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

// ---------------------------------------------------------------------------------------------
// A task may use only the local repositories maxions.yaml allows, and push only its own branch.

#[test]
fn a_file_repository_outside_the_allowed_roots_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let secret_repo = outside.path().join("secret.git");
    std::fs::create_dir_all(&secret_repo).unwrap();
    let task = |repo: &str| format!("task: x\nrepo: file://{repo}\nblueprint: b\n");
    let dir = tree(&[
        ("blueprints/b.yaml", "name: b\nsteps:\n  - run: make\n"),
        ("origin/demo.git/HEAD", "ref: refs/heads/main\n"),
    ]);
    let root = dir.path().canonicalize().unwrap();
    crate::support::write(
        dir.path(),
        "tasks/mine.yaml",
        &task(&format!("{}/origin/demo.git", root.display())),
    );
    crate::support::write(
        dir.path(),
        "tasks/theirs.yaml",
        &task(&secret_repo.display().to_string()),
    );
    // A symlink inside the root that leads out, and `..` that climbs out.
    std::os::unix::fs::symlink(outside.path(), dir.path().join("origin/link")).unwrap();
    crate::support::write(
        dir.path(),
        "tasks/link.yaml",
        &task(&format!("{}/origin/link/secret.git", root.display())),
    );
    crate::support::write(
        dir.path(),
        "tasks/climb.yaml",
        &task(&format!(
            "{}/origin/../../{}",
            root.display(),
            secret_repo.display()
        )),
    );

    // The demo layout, DIR/{origin/demo.git,tasks/demo.yaml}, needs no maxions.yaml.
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "tasks/mine.yaml"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let loaded = maxions::config::load::load_task(&dir.path().join("tasks/mine.yaml"), None)
        .unwrap_or_else(|v| panic!("{:?}", v.diagnostics));
    assert_eq!(loaded.local_repo, Some(root.join("origin/demo.git")));

    for (name, expected) in [
        ("theirs", "is outside the directories tasks may use (`.`)"),
        ("link", "resolves to"),
        ("climb", "without `.` or `..`"),
    ] {
        let out = Maxions::new()
            .current_dir(dir.path())
            .args(["validate", &format!("tasks/{name}.yaml")])
            .run();
        assert_eq!(out.code, 1, "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains("error[local-repo-outside]")
                && out.stderr.contains(expected)
                && out.stderr.contains(&format!("tasks/{name}.yaml:2:7")),
            "{name}: {}",
            out.stderr
        );
        // The runner loads through load_task, which refuses the same.
        assert!(
            maxions::config::load::load_task(&dir.path().join(format!("tasks/{name}.yaml")), None)
                .is_err(),
            "{name}"
        );
    }

    // maxions.yaml may allow other directories (relative to it).
    crate::support::write(
        dir.path(),
        "maxions.yaml",
        &format!("local_repos: [origin, {}]\n", outside.path().display()),
    );
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "tasks/theirs.yaml", "tasks/mine.yaml"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    crate::support::write(dir.path(), "maxions.yaml", "local_repos: [elsewhere]\n");
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "tasks/mine.yaml"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("warning[missing-directory]")
            && out
                .stderr
                .contains("list its directory under `local_repos:`"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_task_may_push_only_below_the_branch_prefix_and_never_to_its_base() {
    let dir = tree(&[
        ("blueprints/b.yaml", "name: b\nsteps:\n  - run: make\n"),
        (
            "tasks/main.yaml",
            "task: x\nrepo: octo/hello\nblueprint: b\nbase: main\nbranch: main\n",
        ),
        (
            "tasks/mine.yaml",
            "task: x\nrepo: octo/hello\nblueprint: b\nbranch: bot/mine\n",
        ),
    ]);
    let task = |name: &str| dir.path().join(format!("tasks/{name}.yaml"));
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "tasks/main.yaml"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("error[invalid-branch]: branch `main` is the base branch")
            && out.stderr.contains("tasks/main.yaml:5:9"),
        "{}",
        out.stderr
    );
    assert!(maxions::config::load::load_task(&task("main"), None).is_err());
    assert!(maxions::config::load::load_task(&task("mine"), None).is_err());

    // A prefix of the operator's choosing, also for the branch a task does not name.
    crate::support::write(dir.path(), "maxions.yaml", "branch_prefix: bot/\n");
    let loaded = maxions::config::load::load_task(&task("mine"), None)
        .unwrap_or_else(|v| panic!("{:?}", v.diagnostics));
    assert_eq!(loaded.branch, "bot/mine");
    crate::support::write(
        dir.path(),
        "tasks/unnamed.yaml",
        "task: x\nrepo: octo/hello\nblueprint: b\n",
    );
    let loaded = maxions::config::load::load_task(&task("unnamed"), None)
        .unwrap_or_else(|v| panic!("{:?}", v.diagnostics));
    assert_eq!(loaded.branch, "bot/unnamed");
    assert!(
        maxions::config::task::check_push_branch(&loaded.branch, Some("bot/unnamed"), "bot/")
            .is_err()
    );

    crate::support::write(
        dir.path(),
        "maxions.yaml",
        "branch_prefix: \"bad prefix \"\n",
    );
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "maxions.yaml"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("`branch_prefix: bad prefix ` cannot be used"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_relative_private_key_file_is_checked_beside_maxions_yaml() {
    let dir = tree(&[
        (
            "conf/maxions.yaml",
            "github:\n  app:\n    app_id: 1\n    installation_id: 2\n    private_key_file: keys/app.pem\n",
        ),
        ("conf/keys/app.pem", "stand-in\n"),
    ]);
    // From another directory: the key is still found beside maxions.yaml.
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "conf/maxions.yaml"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    std::fs::remove_file(dir.path().join("conf/keys/app.pem")).unwrap();
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "conf/maxions.yaml"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "error[missing-file]: `github.app.private_key_file`: no file `conf/keys/app.pem`"
        ) && out.stderr.contains("conf/maxions.yaml:5:23")
            && out
                .stderr
                .contains("relative to the directory of maxions.yaml"),
        "{}",
        out.stderr
    );
}

#[test]
fn engines_are_checked_where_they_are_written() {
    let dir = tree(&[
        (
            "maxions.yaml",
            "engines:\n  - name: here\n  - name: big\n    host: tcp://builder.example:2376\n    tls: certs/big\n    labels: [large]\n  - name: big\n    host: tcp://10.0.0.9:2376\n  - name: Far\n    host: ssh://me@far\n",
        ),
        ("certs/big/ca.pem", "stand-in\n"),
        ("certs/big/cert.pem", "stand-in\n"),
        (
            "blueprints/b.yaml",
            "name: b\nsandbox:\n  engine_labels: [large]\nsteps:\n  - run: echo\n",
        ),
        (
            "blueprints/gpu.yaml",
            "name: gpu\nsandbox:\n  engine_labels: [gpu]\nsteps:\n  - run: echo\n",
        ),
    ]);
    let out = Maxions::new()
        .current_dir(dir.path())
        .args(["validate", "maxions.yaml", "blueprints"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    for (wanted, at) in [
        (
            "error[missing-file]: `tls`: `certs/big` has no key.pem",
            "maxions.yaml:5:10",
        ),
        (
            "error[duplicate-engine]: engine `big` is named twice (first on line 3)",
            "maxions.yaml:7:11",
        ),
        (
            "error[plain-tcp-engine]: engine `tcp://10.0.0.9:2376` over `tcp://` needs `tls`",
            "maxions.yaml:8:11",
        ),
        ("`Far` is not a valid engine name", "maxions.yaml:9:11"),
        (
            "`ssh://me@far` is not an engine address maxions can use",
            "maxions.yaml:10:11",
        ),
        (
            "error[no-engine-fits]: no engine has every label of `engine_labels` (gpu)",
            "blueprints/gpu.yaml:3:19",
        ),
    ] {
        assert!(out.stderr.contains(wanted), "{wanted}:\n{}", out.stderr);
        assert!(out.stderr.contains(at), "{at}:\n{}", out.stderr);
    }
    assert!(out.stderr.contains("forward its socket"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the engines offer: `here` []; `big` [large]"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("blueprints/b.yaml"),
        "`large` is offered: {}",
        out.stderr
    );
}
