//! The command line: parses arguments, sets up output, and calls into the library.

mod daemon;
mod demo;
mod egress_proxy;
mod image;
mod logs;
mod render;
mod run;
mod schedule;
mod schema;
pub mod terminal;
mod timeline;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Run unattended, one-shot coding agents from declarative YAML.
///
/// A task file says what to do on which repository; a blueprint says how: the sandbox container,
/// the agent, and the ordered steps. Start with `maxions validate` on your files.
#[derive(Debug, Parser)]
#[command(name = "maxions", version, about, long_about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Say more (repeat for even more).
    ///
    /// `MAXIONS_LOG` adds levels, per module if wanted (`debug`, `maxions::sandbox=trace`). Only
    /// maxions' own logs can be raised: other crates stay at `warn`, as their debug logs hold
    /// request bodies with secrets in them.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Say only what went wrong.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// When to use colors. `NO_COLOR` in the environment also turns them off.
    #[arg(long, value_enum, default_value_t = ColorWhen::Auto, global = true)]
    pub color: ColorWhen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check tasks, blueprints and maxions.yaml for mistakes before anything runs.
    ///
    /// Reports every problem found, each with file:line:column. Exit status: 0 valid (warnings
    /// allowed), 1 invalid, 2 some path could not be read.
    Validate(validate::Args),
    /// Show what each step of a task would run, without running anything.
    ///
    /// Outputs of earlier steps, not known until a run, are shown as `<steps.ID.NAME>`.
    Render(render::Args),
    /// Show when each scheduled task fires next, in its time zone, as the daemon will run it.
    ///
    /// Lists the tasks with a `schedule` among the files given (checked as `maxions validate`
    /// checks them). Across a DST change a job at a fixed time that the change skips runs right
    /// after it and one that is repeated runs once; a job with `*` in minute or hour follows the
    /// wall clock. Exit status: 0 listed, 1 invalid, 2 some path could not be read.
    Schedule(schedule::Args),
    /// Write the JSON Schemas of the file formats (for editors and CI).
    Schema(schema::Args),
    /// Run one task now, in the foreground: sandbox, steps, commit, push, pull request.
    ///
    /// Writes `<task>.runs/<run-id>.jsonl` and `<task>.result.json` beside the task file.
    /// Exit status: 0 succeeded or nothing to change, 1 a step failed, 2 the task or the
    /// environment is not usable, 124 timed out, 130 cancelled (Ctrl-C) or interrupted (the
    /// Docker engine went away).
    Run(run::Args),
    /// Run the whole pipeline on a local demo repository: no GitHub or LLM account needed.
    ///
    /// Makes ./maxions-demo (a repository, the demo blueprint and a task), then runs the task
    /// with a scripted agent: a check fails, a fix round repairs it, the branch is pushed back.
    Demo(demo::Args),
    /// Build the sandbox images locally (Debian base from apt's mirror, then Dockerfiles).
    Image(image::Args),
    /// Watch the tasks folder and run its tasks: a dropped file runs once, a `schedule` runs
    /// at its slots.
    ///
    /// Results and logs appear beside each task file. State (queue, runs) is kept in the state
    /// dir so that a crash or restart loses nothing. It also serves the HTTP API and the
    /// dashboard, at http://127.0.0.1:7878/ unless `api` in maxions.yaml says otherwise, with
    /// the bearer token from $MAXIONS_API_TOKEN (or one it generates into the state dir's
    /// `api-token`). SIGTERM or Ctrl-C: no new runs, running ones may finish within
    /// `shutdown_grace`; a second signal cancels them. Exit status: 0 stopped by a signal, 2
    /// could not start (state dir locked or unwritable, config invalid, no engine, the API's
    /// address taken).
    Daemon(daemon::DaemonArgs),
    /// Show the daemon's running, queued and recent runs (a table on a terminal, JSON
    /// otherwise or with --json).
    Status(daemon::StatusArgs),
    /// Cancel a task's queued and running runs, or one run, in the running daemon.
    ///
    /// The container is removed; the log and result say `cancelled`. Exit status: 0 done, 1
    /// nothing matched, 2 no daemon is running.
    Cancel(daemon::CancelArgs),
    /// Print a run's events as `maxions run` shows them, from its log; `-f` follows a run
    /// still going.
    ///
    /// TARGET is a log (`<task>.runs/<run-id>.jsonl`), a task file (its newest run), or a run id
    /// (looked for below the tasks dir of ./maxions.yaml or `--config`). Each line shows its time
    /// since the run's first event; `-v` adds the steps' output. Exit status: 0 printed; with
    /// `-f`, the status `maxions run` gives the run once it finishes (0, 1, 2, 124, 130); 2 the
    /// log could not be found or read.
    Logs(logs::Args),
    /// Serve the egress proxy on its own: what maxions runs in a small container beside a
    /// sandbox on an engine that does not share this machine's files.
    ///
    /// Binds `egress.sock` in --dir, writes the sandbox's relay beside it, prints a ready line,
    /// then one JSON line per decision. Stops on SIGTERM.
    EgressProxy(egress_proxy::Args),
}

/// Exit statuses shared by the commands.
pub mod exit {
    pub const OK: u8 = 0;
    /// The input is invalid, or the run failed.
    pub const INVALID: u8 = 1;
    /// Something could not be read, or the environment is not usable.
    pub const UNREADABLE: u8 = 2;
}

/// The async runtime for commands that talk to the engine: two workers are plenty for one run.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            None
        }
    }
}

/// How the commands print.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub quiet: bool,
    pub verbose: u8,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let choice = match cli.color {
        ColorWhen::Always => anstream::ColorChoice::Always,
        ColorWhen::Never => anstream::ColorChoice::Never,
        ColorWhen::Auto => anstream::ColorChoice::Auto,
    };
    choice.write_global();
    init_tracing(&cli);
    raise_open_files_limit();
    let output = Output {
        quiet: cli.quiet,
        verbose: cli.verbose,
    };
    let code = match cli.command {
        Command::Validate(args) => validate::run(&args, output),
        Command::Render(args) => render::run(&args, output),
        Command::Schedule(args) => schedule::run(&args, output),
        Command::Schema(args) => schema::run(&args, output),
        Command::Image(args) => image::run(&args, output),
        Command::Run(args) => run::run(&args, output),
        Command::Demo(args) => demo::run(&args, output),
        Command::Daemon(args) => daemon::daemon(&args, output),
        Command::Status(args) => daemon::status(&args, output),
        Command::Cancel(args) => daemon::cancel(&args, output),
        Command::Logs(args) => logs::run(&args, output),
        Command::EgressProxy(args) => egress_proxy::run(&args, output),
    };
    ExitCode::from(code)
}

/// Logs go to stderr through the redacting writer; only maxions' own targets follow `-v` and
/// `MAXIONS_LOG` (see `crate::logging`).
fn init_tracing(cli: &Cli) {
    let env = std::env::var("MAXIONS_LOG").ok();
    // The daemon's log is its record of what it did: `info` unless asked otherwise.
    let verbose = if matches!(cli.command, Command::Daemon(_)) {
        cli.verbose.max(1)
    } else {
        cli.verbose
    };
    let (filter, ignored) = crate::logging::filter(cli.quiet, verbose, env.as_deref());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::logging::Redacting::new(std::io::stderr))
        .with_ansi(match cli.color {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            // A service's log goes to a file or the journal: no escape codes there.
            ColorWhen::Auto => {
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none()
            }
        })
        .try_init();
    if !ignored.is_empty() {
        tracing::warn!(
            ignored = %ignored.join(","),
            "MAXIONS_LOG: only maxions' own logs can be raised (other crates log request bodies, which hold secrets)"
        );
    }
}

/// A daemon with many runs holds many sockets, pipes and log files: the default soft limit on
/// open files (often 1024) is raised to the hard limit, which needs no privilege.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if limit.current != limit.maximum
        && let Err(error) = setrlimit(Resource::Nofile, raised)
    {
        tracing::warn!(%error, "cannot raise the open files limit (RLIMIT_NOFILE); runs may fail with `too many open files`, raise it with `ulimit -n`");
    }
}
