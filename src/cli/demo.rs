//! `maxions demo`: the whole pipeline on a local repository, with no account anywhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run::{Args as RunArgs, code, run_loaded};
use super::{Output, exit};
use crate::config::load::load_task;

const BLUEPRINT: &str = include_str!("../../blueprints/local-demo.yaml");
const TEST_SH: &str = r#"#!/bin/sh
# The demo's check: greet.sh must greet its argument properly.
got=$(sh ./greet.sh world 2>&1)
if [ "$got" != "Hello, world!" ]; then
    echo "test failed: expected 'Hello, world!', got '$got'"
    exit 1
fi
echo "test passed"
"#;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to put the demo's repository, blueprint, task and records (made if missing).
    #[arg(long, value_name = "DIR", default_value = "maxions-demo")]
    pub dir: PathBuf,

    /// Keep the sandbox container when the run ends.
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: &Args, output: Output) -> u8 {
    let dir = match prepare(&args.dir) {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!(
                "error: cannot set up the demo in {}: {error}",
                args.dir.display()
            );
            return exit::UNREADABLE;
        }
    };
    let task = dir.join("tasks/demo.yaml");
    if !output.quiet {
        eprintln!(
            "demo: repository {}, task {}\n",
            dir.join("origin/demo.git").display(),
            task.display()
        );
    }
    let loaded = match load_task(&task, None) {
        Ok(loaded) => loaded,
        Err(_) => {
            eprintln!(
                "error: the demo's files in {} are not valid; remove the directory and try again",
                dir.display()
            );
            return code::SETUP;
        }
    };
    let run_args = RunArgs {
        task: task.clone(),
        blueprint: None,
        keep: args.keep,
        json: false,
    };
    let Some(runtime) = super::runtime() else {
        return code::SETUP;
    };
    // A fresh machine: start the engine and build the sandbox image first, saying so.
    if !runtime.block_on(super::image::prepare(&loaded, output)) {
        return code::SETUP;
    }
    let status = runtime.block_on(run_loaded(&loaded, &run_args, output));
    if status == code::OK && !output.quiet {
        eprintln!(
            "\nsee the pushed branch: git -C {} log --stat maxions/demo",
            dir.join("origin/demo.git").display()
        );
    }
    status
}

/// Makes (or reuses) the demo's directory: a bare repository with a first commit, the demo
/// blueprint, and a task pointing at the repository.
fn prepare(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let origin = dir.join("origin/demo.git");
    if !origin.join("HEAD").exists() {
        let seed = dir.join("origin/seed");
        let _ = std::fs::remove_dir_all(&seed);
        std::fs::create_dir_all(&seed)?;
        std::fs::write(
            seed.join("README.md"),
            "# demo\n\nA repository for `maxions demo`.\n",
        )?;
        std::fs::write(seed.join("test.sh"), TEST_SH)?;
        git(&seed, &["init", "-q", "-b", "main"])?;
        git(&seed, &["add", "-A"])?;
        git(
            &seed,
            &[
                "-c",
                "user.name=maxions demo",
                "-c",
                "user.email=demo@localhost",
                "commit",
                "-q",
                "-m",
                "initial commit",
            ],
        )?;
        git(
            &dir,
            &[
                "clone",
                "-q",
                "--bare",
                &seed.display().to_string(),
                &origin.display().to_string(),
            ],
        )?;
        std::fs::remove_dir_all(&seed)?;
    }
    std::fs::create_dir_all(dir.join("blueprints"))?;
    std::fs::create_dir_all(dir.join("tasks"))?;
    let blueprint = BLUEPRINT.replace(
        "$schema=../schemas/",
        "$schema=https://maxions.invalid/schemas/",
    );
    std::fs::write(dir.join("blueprints/local-demo.yaml"), blueprint)?;
    std::fs::write(
        dir.join("tasks/demo.yaml"),
        format!(
            "task: Add a greeting function that says hello to its argument.\nrepo: file://{}\nblueprint: local-demo\nbase: main\nvars:\n  title: add a greeting function\n",
            origin.display()
        ),
    )?;
    Ok(dir)
}

fn git(dir: &Path, args: &[&str]) -> std::io::Result<()> {
    let output = Command::new("git").arg("-C").arg(dir).args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
