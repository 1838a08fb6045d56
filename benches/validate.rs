//! Validating 1,000 files (500 tasks + 500 blueprints, and their `maxions.yaml`), against parsing the same files with
//! `serde_yaml` alone in the same run (DESIGN.md §11: under 1 s). Run with
//! `cargo bench --bench validate`.
//!
//! The files are variations of the shipped `blueprints/default.yaml` and `tasks/dark-mode.yaml`,
//! each task naming its own generated blueprint, laid out as a user would (`tasks/` beside
//! `blueprints/`). Every file must validate clean, so the figures measure the whole pipeline
//! (syntax, structure, templates, references, the blueprint each task names) and not an early
//! exit. Each figure is the best of several passes.
//!
//! Then the growth curve: the in-process validator and the same baseline on 1, 10, 100, 1,000
//! and 10,000 files (half tasks, half blueprints; the one file is a blueprint), to see whether
//! the cost per file stays flat; and `maxions render` of a task whose blueprint has 200 steps,
//! against the process start alone. Figures go to `target/bench/validate.json` (see
//! `benches/common/figures.rs`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maxions::config::validate::Validator;

#[path = "common/figures.rs"]
mod figures;
use figures::{Figure, Figures, Target};

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
        "github-copilot/gpt-4.1",
    ];
    const MANAGERS: [&str; 3] = ["bun", "npm", "pnpm"];
    let mut text = replace(BLUEPRINT, "name: default", &format!("name: bp-{i:04}"));
    text = replace(
        &text,
        "image: maxions/agent-pi:latest",
        &format!("image: maxions/agent-pi:{}", 1 + i % 7),
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
    generate_n(root, 2 * PAIRS)
}

/// Writes `files` files (half tasks, each naming its blueprint; one file is a blueprint alone),
/// and the `maxions.yaml` that defines the agent's secret (its path comes last).
fn generate_n(root: &Path, files: usize) -> Vec<PathBuf> {
    let pairs = files / 2;
    let lone = files % 2;
    let (tasks, blueprints) = (root.join("tasks"), root.join("blueprints"));
    std::fs::create_dir_all(&tasks).expect("mkdir tasks");
    std::fs::create_dir_all(&blueprints).expect("mkdir blueprints");
    let mut paths = Vec::with_capacity(files);
    for i in 0..pairs {
        let path = tasks.join(format!("task-{i:04}.yaml"));
        std::fs::write(&path, task(i)).expect("write task");
        paths.push(path);
    }
    for i in 0..pairs + lone {
        let path = blueprints.join(format!("bp-{i:04}.yaml"));
        std::fs::write(&path, blueprint(i)).expect("write blueprint");
        paths.push(path);
    }
    let config = root.join("maxions.yaml");
    std::fs::write(
        &config,
        "secrets:\n  COPILOT_GITHUB_TOKEN: { env: COPILOT_GITHUB_TOKEN }\n",
    )
    .expect("write maxions.yaml");
    paths.push(config);
    paths
}

fn best_of(pass: impl FnMut()) -> Duration {
    best_of_n(PASSES, pass)
}

fn best_of_n(passes: usize, mut pass: impl FnMut()) -> Duration {
    (0..passes)
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

    let mut figures = Figures::new("validate");
    figures.push(
        Figure::new(
            "validate.1000.cli",
            "`maxions validate` of 1,000 files (500 tasks + 500 blueprints), whole process",
            "ms",
            ms(end_to_end),
        )
        .target(Target::AtMost { value: ms(TARGET) })
        .against("read + serde_yaml parse of the same files", ms(baseline)),
    );
    curve(&mut figures);
    render_200(&mut figures, bin, ms(startup));
    figures.write();
}

/// Validation time against the number of files.
fn curve(figures: &mut Figures) {
    println!("\ngrowth: in-process validate, best of passes (each set has its maxions.yaml too)");
    println!(
        "{:>7} {:>12} {:>12} {:>10} {:>12}",
        "files", "validate", "baseline", "ratio", "per file"
    );
    for files in [1_usize, 10, 100, 1_000, 10_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = generate_n(dir.path(), files);
        let root = vec![dir.path().to_path_buf()];
        let passes = if files >= 10_000 { 3 } else { PASSES };
        let check = Validator::new().validate_paths(&root);
        assert!(
            check.diagnostics.is_empty() && check.files.len() == paths.len(),
            "{:#?}",
            &check.diagnostics[..check.diagnostics.len().min(3)]
        );
        let baseline = best_of_n(passes, || {
            for path in &paths {
                let text = std::fs::read_to_string(path).expect("read");
                black_box(serde_yaml::from_str::<serde_yaml::Value>(&text).expect("parse"));
            }
        });
        let validate = best_of_n(passes, || {
            black_box(Validator::new().validate_paths(black_box(&root)));
        });
        println!(
            "{files:>7} {:>9.2} ms {:>9.2} ms {:>9.1}x {:>9.1} µs",
            ms(validate),
            ms(baseline),
            validate.as_secs_f64() / baseline.as_secs_f64(),
            validate.as_secs_f64() * 1e6 / files as f64
        );
        figures.push(
            Figure::new(
                &format!("validate.curve.{files}"),
                &format!("validate {files} files, in-process"),
                "ms",
                ms(validate),
            )
            .at("validate: files", files as f64)
            .against("read + serde_yaml parse of the same files", ms(baseline)),
        );
    }
}

/// `maxions render` of a task whose blueprint has 200 `run` steps, each with templates.
fn render_200(figures: &mut Figures, bin: &str, startup_ms: f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("blueprints")).expect("mkdir");
    std::fs::create_dir_all(root.join("tasks")).expect("mkdir");
    let mut blueprint = String::from("name: big\nsteps:\n  - id: checkout\n    checkout: {}\n");
    for i in 0..199 {
        blueprint.push_str(&format!(
            "  - id: s{i}\n    run: |\n      cd /workspace/repo && echo {{{{ branch }}}} {i} {{{{ vars.flag }}}}\n      {{% if vars.flag == \"on\" %}}make part-{i}{{% endif %}}\n"
        ));
    }
    std::fs::write(root.join("blueprints/big.yaml"), blueprint).expect("write");
    std::fs::write(
        root.join("tasks/big.yaml"),
        "task: render me\nrepo: acme/webapp\nblueprint: big\nvars: { flag: \"on\" }\n",
    )
    .expect("write");
    let task = root.join("tasks/big.yaml");
    let out = Command::new(bin)
        .arg("render")
        .arg(&task)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run maxions");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("make part-198"),
        "maxions render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let render = best_of(|| {
        let status = Command::new(bin)
            .arg("render")
            .arg(&task)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run maxions");
        assert!(status.success());
    });
    println!(
        "\n`maxions render` of a 200-step blueprint: {:.1} ms (process start alone {startup_ms:.1} ms)",
        ms(render)
    );
    figures.push(
        Figure::new(
            "render.200",
            "`maxions render` of a task with a 200-step blueprint, whole process",
            "ms",
            ms(render),
        )
        .against("process start (`maxions --version`)", startup_ms),
    );
}
