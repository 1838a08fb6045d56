//! The JSON Schemas in `schemas/` are what editors use through yaml-language-server: they must be
//! what `maxions schema` generates, and the shipped examples must satisfy them according to a
//! validator that is not maxions' own (the `jsonschema` crate), so that a bug in maxions'
//! structural pass cannot hide a schema that editors would reject.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use maxions::config::schema;
use serde_json::Value;

use crate::support::cli::Maxions;
use crate::support::{root, write};

const SCHEMA_LINE: &str = "# yaml-language-server: $schema=";

/// The text `maxions schema --out` writes for one schema.
fn rendered(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("schema serializes");
    text.push('\n');
    text
}

/// Every shipped example with the schema kind it must name: blueprints, tasks, and the daemon
/// config if one is shipped.
fn shipped_examples() -> Vec<(PathBuf, &'static str)> {
    let mut examples = Vec::new();
    for (dir, kind) in [("blueprints", "blueprint"), ("tasks", "task")] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .expect("read examples dir")
            .map(|entry| entry.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no examples in {dir}/");
        examples.extend(files.into_iter().map(|p| (p, kind)));
    }
    let config = root().join("maxions.yaml");
    if config.is_file() {
        examples.push((config, "config"));
    }
    examples
}

/// YAML as JSON, parsed by serde_yaml rather than maxions' own loader.
fn yaml_to_json(text: &str, path: &Path) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
}

fn compile(schema_path: &Path) -> jsonschema::Validator {
    let text = std::fs::read_to_string(schema_path)
        .unwrap_or_else(|e| panic!("{}: {e}", schema_path.display()));
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::draft7::new(&schema)
        .unwrap_or_else(|e| panic!("{}: not a draft-07 schema: {e}", schema_path.display()))
}

/// The errors jsonschema reports, as `JSON pointer: message`.
fn violations(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| {
            let path = e.instance_path().to_string();
            let path = if path.is_empty() { "(root)" } else { &path };
            format!("{path}: {e}")
        })
        .collect()
}

#[test]
fn checked_in_schemas_are_what_maxions_generates() {
    let dir = root().join("schemas");
    let mut all = schema::all();
    // What a run writes has its schemas too (the runner owns them).
    all.extend(maxions::runner::schemas());
    let openapi = maxions::api::openapi::schema_file();
    let generated: BTreeSet<String> = all.iter().map(|f| f.file_name.to_owned()).collect();
    for file in all {
        let path = dir.join(file.file_name);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}): run `maxions schema --out schemas`",
                path.display()
            )
        });
        assert_eq!(
            on_disk,
            rendered(file.schema),
            "{} is stale: run `maxions schema --out schemas`",
            path.display()
        );
        // What editors fetch: it must be a draft-07 schema that an independent validator accepts.
        compile(&path);
    }
    // The API's OpenAPI document (schemathesis in CI tests the server against it).
    let on_disk = std::fs::read_to_string(dir.join(openapi.file_name)).unwrap_or_default();
    assert_eq!(
        on_disk,
        rendered(openapi.schema),
        "schemas/openapi.json is stale: run `maxions schema --out schemas`"
    );
    let checked_in: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("read schemas/")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".schema.json"))
        .collect();
    assert_eq!(
        checked_in, generated,
        "schemas/ holds a schema maxions no longer generates"
    );

    let check = Maxions::new()
        .args(["schema", "--out", "schemas", "--check"])
        .run();
    assert_eq!(check.code, 0, "{}", check.stderr);
}

#[test]
fn schema_check_fails_on_a_stale_copy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let written = Maxions::new()
        .args(["schema", "-q", "--out"])
        .arg_path(dir.path())
        .run();
    assert_eq!(written.code, 0, "{}", written.stderr);
    let fresh = Maxions::new()
        .args(["schema", "--check", "--out"])
        .arg_path(dir.path())
        .run();
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);

    let path = dir.path().join("task.schema.json");
    let text = std::fs::read_to_string(&path).expect("read schema");
    write(
        dir.path(),
        "task.schema.json",
        &text.replacen(
            "\"additionalProperties\": false",
            "\"additionalProperties\": true",
            1,
        ),
    );
    let stale = Maxions::new()
        .args(["schema", "--check", "--out"])
        .arg_path(dir.path())
        .run();
    assert_eq!(stale.code, 1, "{}", stale.stderr);
    assert!(
        stale.stderr.contains("task.schema.json"),
        "{}",
        stale.stderr
    );
}

#[test]
fn shipped_examples_name_their_schema_and_satisfy_it() {
    let examples = shipped_examples();
    for (path, kind) in &examples {
        let text = std::fs::read_to_string(path).expect("read example");
        let first = text.lines().next().unwrap_or_default();
        // Examples live one level below the root, except a root `maxions.yaml`.
        let up = if *kind == "config" { "" } else { "../" };
        let expected = format!("{SCHEMA_LINE}{up}schemas/{kind}.schema.json");
        assert_eq!(
            first,
            expected,
            "{} must start with the yaml-language-server line for its schema",
            path.display()
        );
        let reference = first.trim_start_matches(SCHEMA_LINE);
        let schema_path = path.parent().expect("has parent").join(reference);
        assert!(
            schema_path.is_file(),
            "{}: the schema it names, {}, does not exist",
            path.display(),
            schema_path.display()
        );

        let validator = compile(&schema_path);
        let instance = yaml_to_json(&text, path);
        let errors = violations(&validator, &instance);
        assert!(
            errors.is_empty(),
            "{} does not satisfy {}:\n{}",
            path.display(),
            schema_path.display(),
            errors.join("\n")
        );
    }
    // blueprints/default, chore, local-demo and three tasks at the time of writing.
    assert!(examples.len() >= 6, "{examples:?}");
}

/// Proves the test above can fail: the same validator on a broken copy of each kind of example.
#[test]
fn independent_validator_rejects_mutated_examples() {
    let blueprint = root().join("blueprints/default.yaml");
    let task = root().join("tasks/dark-mode.yaml");
    let blueprint_json = yaml_to_json(&std::fs::read_to_string(&blueprint).unwrap(), &blueprint);
    let task_json = yaml_to_json(&std::fs::read_to_string(&task).unwrap(), &task);
    let blueprints = compile(&root().join("schemas/blueprint.schema.json"));
    let tasks = compile(&root().join("schemas/task.schema.json"));

    type Mutation = fn(&mut Value);
    let cases: [(&str, &jsonschema::Validator, &Value, Mutation, &str); 6] = [
        (
            "unknown top-level key in a task",
            &tasks,
            &task_json,
            |v| {
                v["tsak"] = "typo".into();
            },
            "(root)",
        ),
        (
            "vars is a list instead of a map",
            &tasks,
            &task_json,
            |v| v["vars"] = serde_json::json!(["bun"]),
            "/vars",
        ),
        (
            "unknown key in fix",
            &blueprints,
            &blueprint_json,
            |v| {
                assert_eq!(v["steps"][3]["id"], "checks");
                let fix = v["steps"][3]["fix"].as_object_mut().unwrap();
                let rounds = fix.remove("max_rounds").unwrap();
                fix.insert("max_round".into(), rounds);
            },
            "/steps/3/fix",
        ),
        (
            "pids is a string",
            &blueprints,
            &blueprint_json,
            |v| v["sandbox"]["pids"] = "many".into(),
            "/sandbox/pids",
        ),
        (
            "network is not one of none, host, allowlist",
            &blueprints,
            &blueprint_json,
            |v| v["sandbox"]["network"] = "open".into(),
            "/sandbox/network",
        ),
        (
            "steps is a map",
            &blueprints,
            &blueprint_json,
            |v| v["steps"] = serde_json::json!({ "setup": { "run": "true" } }),
            "/steps",
        ),
    ];
    for (what, validator, original, mutate, at) in cases {
        assert!(
            violations(validator, original).is_empty(),
            "{what}: the original must be valid"
        );
        let mut broken = original.clone();
        mutate(&mut broken);
        let errors = violations(validator, &broken);
        assert!(!errors.is_empty(), "{what}: accepted by jsonschema");
        assert!(
            errors.iter().any(|e| e.starts_with(at)),
            "{what}: no error at `{at}`:\n{}",
            errors.join("\n")
        );
    }
}
