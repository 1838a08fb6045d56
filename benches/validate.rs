//! Validating 1,000 files (500 tasks + 500 blueprints), against parsing the same files with
//! `serde_yaml` alone in the same run (DESIGN.md §11: under 1 s). Run with
//! `cargo bench --bench validate`.
//!
//! The files are variations of the shipped `blueprints/default.yaml` and `tasks/dark-mode.yaml`,
//! each task naming its own generated blueprint, laid out as a user would (`tasks/` beside
//! `blueprints/`). Every file must validate clean, so the figures measure the whole pipeline
//! (syntax, structure, templates, references, the blueprint each task names) and not an early
//! exit. Each figure is the best of several passes.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maxions::config::validate::Validator;

const PAIRS: usize = 500;
const PASSES: usize = 5;
const TARGET: Duration = Duration::from_secs(1);

const BLUEPRINT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/blueprints/default.yaml"
));
const TASK: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tasks/dark-mode.yaml"));

/// Replaces `from` exactly once, so that a change to the shipped examples breaks the bench
/// loudly instead of silently benchmarking something else.
fn replace(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the shipped example changed: `{from}` should occur once"
    );
    text.replacen(from, to, 1)
}

fn blueprint(i: usize) -> String {
    const MODELS: [&str; 3] = [
        "github-copilot/gpt-5-mini",
        "github-copilot/claude-sonnet-4",
        "openai/gpt-5",
    ];
    const MANAGERS: [&str; 3] = ["bun", "npm", "pnpm"];
    let mut text = replace(BLUEPRINT, "name: default", &format!("name: bp-{i:04}"));
    text = replace(
        &text,
        "image: maxions/sandbox:latest",
        &format!("image: maxions/sandbox:{}", 1 + i % 7),
    );
    text = replace(&text, "memory: 4g", &format!("memory: {}g", 1 + i % 8));
    text = replace(&text, "pids: 512", &format!("pids: {}", 256 + i % 512));
    text = replace(&text, "timeout: 45m", &format!("timeout: {}m", 20 + i % 40));
    text = replace(
        &text,
        "model: github-copilot/gpt-5-mini",
        &format!("model: {}", MODELS[i % MODELS.len()]),
    );
    text = replace(
        &text,
        "max_cost_usd: 2.00",
        &format!("max_cost_usd: {}.{:02}", i % 5, i % 100),
    );
    text = replace(
        &text,
        "max_rounds: 2",
        &format!("max_rounds: {}", 1 + i % 3),
    );
    // A third check and an extra deterministic step, each reading a task variable.
    text = replace(
        &text,
        "    fix:\n",
        &format!(
            "      - {{ id: test, run: \"cd /workspace/repo && {{{{ vars.package_manager | safe }}}} test -- --shard {}\" }}\n    fix:\n",
            i % 4
        ),
    );
    text = replace(
        &text,
        "  - id: implement\n",
        &format!(
            "  - id: prepare\n    run: |\n      cd /workspace/repo\n      {} run codegen --target {{{{ vars.target }}}}\n    timeout: {}s\n    continue_on_error: true\n  - id: implement\n",
            MANAGERS[i % MANAGERS.len()],
            30 + i % 90
        ),
    );
    text
}

fn task(i: usize) -> String {
    const MANAGERS: [&str; 3] = ["bun", "npm", "pnpm"];
    const ZONES: [&str; 4] = ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC"];
    let mut text = replace(
        TASK,
        "Add a dark mode toggle to the settings page.",
        &format!("Add a dark mode toggle to settings page number {i}."),
    );
    text = replace(
        &text,
        "repo: acme/webapp",
        &format!("repo: acme/webapp-{}", i % 37),
    );
    text = replace(
        &text,
        "blueprint: default",
        &format!("blueprint: bp-{i:04}"),
    );
    text = replace(
        &text,
        "branch: maxions/dark-mode",
        &format!("branch: maxions/dark-mode-{i}"),
    );
    text = replace(
        &text,
        "package_manager: bun",
        &format!(
            "package_manager: {}\n  target: web-{}",
            MANAGERS[i % MANAGERS.len()],
            i % 5
        ),
    );
    // Half of the tasks are recurring, so cron and timezone checks are part of the work.
    if i % 2 == 1 {
        text.push_str(&format!(
            "schedule: \"{} {} * * {}\"\ntimezone: {}\n",
            i % 60,
            i % 24,
            i % 7,
            ZONES[i % ZONES.len()]
        ));
    }
    text
}

/// Writes the 1,000 files and returns their paths (tasks first).
fn generate(root: &Path) -> Vec<PathBuf> {
    let (tasks, blueprints) = (root.join("tasks"), root.join("blueprints"));
    std::fs::create_dir_all(&tasks).expect("mkdir tasks");
    std::fs::create_dir_all(&blueprints).expect("mkdir blueprints");
    let mut paths = Vec::with_capacity(2 * PAIRS);
    for i in 0..PAIRS {
        let path = tasks.join(format!("task-{i:04}.yaml"));
        std::fs::write(&path, task(i)).expect("write task");
        paths.push(path);
    }
    for i in 0..PAIRS {
        let path = blueprints.join(format!("bp-{i:04}.yaml"));
        std::fs::write(&path, blueprint(i)).expect("write blueprint");
        paths.push(path);
    }
    paths
}

fn best_of(mut pass: impl FnMut()) -> Duration {
    (0..PASSES)
        .map(|_| {
            let start = Instant::now();
            pass();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn ms(time: Duration) -> f64 {
    time.as_secs_f64() * 1e3
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = generate(dir.path());
    let root = vec![dir.path().to_path_buf()];
    let bin = env!("CARGO_BIN_EXE_maxions");

    // The figures mean something only if every file is valid and was looked at.
    let result = Validator::new().validate_paths(&root);
    assert!(
        result.diagnostics.is_empty(),
        "generated files must validate clean: {:#?}",
        &result.diagnostics[..result.diagnostics.len().min(5)]
    );
    assert_eq!(result.files.len(), files.len(), "every file validated");
    let cli = Command::new(bin)
        .arg("validate")
        .arg(dir.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run maxions");
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(
        cli.status.success() && stderr.contains(&format!("{} files valid", files.len())),
        "maxions validate: {stderr}"
    );
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read");
        serde_yaml::from_str::<serde_yaml::Value>(&text).expect("serde_yaml parses every file");
    }

    let baseline = best_of(|| {
        for path in &files {
            let text = std::fs::read_to_string(path).expect("read");
            black_box(serde_yaml::from_str::<serde_yaml::Value>(&text).expect("parse"));
        }
    });
    let in_process = best_of(|| {
        let result = Validator::new().validate_paths(black_box(&root));
        assert!(result.diagnostics.is_empty());
        black_box(result);
    });
    let run = |args: &[&std::ffi::OsStr]| {
        let status = Command::new(bin)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run maxions");
        assert!(status.success());
    };
    let end_to_end = best_of(|| run(&["validate".as_ref(), dir.path().as_os_str()]));
    let startup = best_of(|| run(&["--version".as_ref()]));

    println!(
        "validate benchmark: {} files ({PAIRS} tasks + {PAIRS} blueprints, each task naming its own), \
         best of {PASSES} passes",
        files.len()
    );
    println!("{:<52} {:>10} {:>10}", "", "time", "ratio");
    let row = |what: &str, time: Duration| {
        println!(
            "{what:<52} {:>7.1} ms {:>9.1}x",
            ms(time),
            time.as_secs_f64() / baseline.as_secs_f64()
        );
    };
    row("baseline: read + serde_yaml::Value, no checks", baseline);
    row("maxions Validator::validate_paths (in-process)", in_process);
    row("`maxions validate DIR` (bench-profile binary)", end_to_end);
    println!(
        "{:<52} {:>7.1} ms",
        "  of which process start (`maxions --version`)",
        ms(startup)
    );
    let worst = in_process.max(end_to_end);
    println!(
        "target: < {} ms for 1,000 files: {}",
        TARGET.as_millis(),
        if worst < TARGET { "met" } else { "MISSED" }
    );
}
