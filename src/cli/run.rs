//! `maxions run`: one task, in the foreground, with a live step timeline.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::timeline::Printer;
use super::{Output, exit};
use crate::config::diagnostic::{Styles, render};
use crate::config::load::{LoadedTask, load_task};
use crate::runner::{self, EventSink, Launch, RunStatus, forge_for};
use crate::sandbox::{DockerEngine, Engine};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task file.
    #[arg(value_name = "TASK")]
    pub task: PathBuf,

    /// Use this blueprint instead of the one the task names.
    #[arg(long, value_name = "FILE")]
    pub blueprint: Option<PathBuf>,

    /// Keep the sandbox container when the run ends (its id is printed), for debugging.
    #[arg(long)]
    pub keep: bool,

    /// Print the events as JSON lines on stdout (the same lines as the run's log).
    #[arg(long)]
    pub json: bool,
}

/// Exit statuses of `maxions run` (also in `--help`).
pub mod code {
    /// Succeeded, or nothing to change.
    pub const OK: u8 = 0;
    /// A step failed.
    pub const FAILED: u8 = 1;
    /// The task or the environment is not usable (invalid files, no engine, no image).
    pub const SETUP: u8 = 2;
    /// The run exceeded `sandbox.timeout`.
    pub const TIMED_OUT: u8 = 124;
    /// Cancelled (Ctrl-C), or interrupted: the Docker engine went away under it.
    pub const CANCELLED: u8 = 130;
}

pub fn run(args: &Args, output: Output) -> u8 {
    let loaded = match load_task(&args.task, args.blueprint.as_deref()) {
        Ok(loaded) => loaded,
        Err(validation) => {
            let styles = Styles::colored();
            let mut stderr = anstream::stderr().lock();
            for d in validation.diagnostics.iter().filter(|d| d.is_error()) {
                let source = validation.sources.get(&d.file).map(|s| &**s);
                let _ = writeln!(stderr, "{}", render(d, source, &styles));
            }
            let _ = writeln!(
                stderr,
                "error: {} is not valid; nothing was run",
                args.task.display()
            );
            return if validation.unreadable {
                exit::UNREADABLE
            } else {
                code::SETUP
            };
        }
    };
    let Some(runtime) = super::runtime() else {
        return code::SETUP;
    };
    if !runtime.block_on(super::image::prepare(&loaded, output)) {
        return code::SETUP;
    }
    runtime.block_on(run_loaded(&loaded, args, output))
}

/// Runs an already loaded task (also used by `maxions demo`) and prints as it goes.
pub async fn run_loaded(loaded: &LoadedTask, args: &Args, output: Output) -> u8 {
    let engine = match DockerEngine::connect().await {
        Ok(engine) => Arc::new(engine),
        Err(error) => {
            eprintln!("error: {error}");
            return code::SETUP;
        }
    };
    // Containers of runs that died with their process (kill -9, power loss) go first.
    if let Err(error) = engine.remove_orphans(&[]).await {
        tracing::warn!(%error, "could not look for orphaned sandboxes");
    }
    let forge = match forge_for(loaded) {
        Ok(forge) => forge,
        Err(error) => {
            eprintln!("error: {error}");
            return code::SETUP;
        }
    };
    let mut launch = Launch::new(Arc::new(loaded.clone()), engine, runner::new_run_id());
    launch.forge = forge;
    launch.keep = args.keep;
    let printer = Arc::new(Printer::new(args.json, output));

    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    // Ctrl-C and SIGTERM (a service manager stopping us) both end the run cleanly: the step is
    // stopped, the sandbox and its egress proxy removed, the log and result written.
    let signals = tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    term.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            result = tokio::signal::ctrl_c() => if result.is_err() { return },
            () = terminate => {}
        }
        eprintln!("\ncancelling: stopping the step and removing the sandbox…");
        on_signal.cancel();
    });
    let outcome = runner::launch(launch, Arc::clone(&printer) as Arc<dyn EventSink>, cancel).await;
    signals.abort();
    let (result, result_file) = match outcome {
        Ok(done) => done,
        Err(error) => {
            eprintln!("error: {error}");
            return code::SETUP;
        }
    };
    if !args.json {
        printer.summary(&result, &result_file);
    }
    exit_code(result.status)
}

/// The exit status of `maxions run` (and `maxions logs -f`) for a run that ended so.
#[must_use]
pub fn exit_code(status: RunStatus) -> u8 {
    match status {
        RunStatus::Succeeded | RunStatus::NoChanges => code::OK,
        RunStatus::Failed | RunStatus::BudgetExceeded => code::FAILED,
        RunStatus::TimedOut => code::TIMED_OUT,
        RunStatus::Cancelled | RunStatus::Interrupted => code::CANCELLED,
        RunStatus::Invalid => code::SETUP,
    }
}
