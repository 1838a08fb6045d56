//! `maxions daemon`, `maxions status` and `maxions cancel`: the long-running service and the two
//! commands that look at it and steer it.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Output;
use super::terminal::printable;
use crate::api::{self, ApiState, Auth, Hub};
use crate::config::daemon::ApiConfig;
use crate::daemon::engines::Engines;
use crate::daemon::schedule::Schedule;
use crate::daemon::state::{self, State};
use crate::daemon::{Daemon, Setup, Shutdown, control};
use crate::runner::{EventSink, RunStatus};

/// Exit statuses of `maxions daemon`.
pub mod code {
    /// Stopped by a signal, after its runs ended.
    pub const OK: u8 = 0;
    /// Could not start or had to stop: the state dir, the config, the engine.
    pub const CRITICAL: u8 = 2;
}

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// The config file. Default: ./maxions.yaml if there is one, else every default (tasks in
    /// ./tasks, state in ./.maxions).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The config file (to find the state dir). Default: ./maxions.yaml if there is one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON (the default when stdout is not a terminal).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// A run id, a task file, or a task file's name without `.yaml`.
    #[arg(value_name = "TASK|RUN")]
    pub target: String,
    /// The config file (to find the daemon). Default: ./maxions.yaml if there is one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn daemon(args: &DaemonArgs, _output: Output) -> u8 {
    let Some(runtime) = super::runtime() else {
        return code::CRITICAL;
    };
    runtime.block_on(async {
        let setup = Setup::locate(args.config.as_deref());
        let config = match setup.config() {
            Ok(config) => config,
            Err(problems) => {
                tracing::error!("cannot start the daemon: {problems}");
                return code::CRITICAL;
            }
        };
        let engines = match Engines::connect(&config, &setup.dir).await {
            Ok(engines) => engines,
            Err(error) => {
                tracing::error!("{error}");
                return code::CRITICAL;
            }
        };
        // The runs' events are in their logs; the hub passes them on to live API streams.
        let hub = Arc::new(Hub::default());
        let daemon =
            match Daemon::start_on(setup, engines, Arc::clone(&hub) as Arc<dyn EventSink>).await {
                Ok(daemon) => daemon,
                Err(error) => {
                    tracing::error!("cannot start the daemon: {error}");
                    return code::CRITICAL;
                }
            };
        let api_config = daemon.config().api.clone().unwrap_or_default();
        let api_stop = CancellationToken::new();
        let server = if api_config.enabled {
            match start_api(&api_config, &daemon, hub, api_stop.clone()).await {
                Ok(server) => Some(server),
                Err(error) => {
                    tracing::error!("cannot start the HTTP API: {error}");
                    return code::CRITICAL;
                }
            }
        } else {
            None
        };
        let state_dir = daemon.state_dir().to_path_buf();
        let shutdown = Shutdown::default();
        let signals = tokio::spawn(signals(shutdown.clone()));
        let outcome = daemon.run(shutdown).await;
        signals.abort();
        api_stop.cancel();
        if let Some(server) = server {
            let _ = server.await;
            let _ = std::fs::remove_file(state_dir.join(api::ADDRESS_FILE));
        }
        match outcome {
            Ok(()) => code::OK,
            Err(error) => {
                tracing::error!("the daemon stopped: {error}");
                code::CRITICAL
            }
        }
    })
}

/// Binds the API's address, resolves its token, says where the dashboard is, and serves it
/// until `stop`.
async fn start_api(
    config: &ApiConfig,
    daemon: &Daemon,
    hub: Arc<Hub>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on `{}`: {e}; choose another `api.listen` in maxions.yaml (`127.0.0.1:0` picks a free port), or set `api.enabled: false`",
                config.listen
            )
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the API's address: {e}"))?;
    let auth = if config.open {
        if !addr.ip().is_loopback() {
            return Err(format!(
                "`api.open: true` needs a loopback `api.listen` (127.0.0.1), not `{}`: without a token anyone on the network could drive the daemon",
                config.listen
            ));
        }
        tracing::warn!(
            "the API is open: any local process (and user) may drive the daemon without a token"
        );
        Auth::Open
    } else {
        let (auth, source) = Auth::resolve(&config.token_env, daemon.state_dir()).map_err(|e| {
            format!(
                "cannot read or make the API token in {}: {e}",
                daemon.state_dir().display()
            )
        })?;
        match source {
            api::auth::TokenSource::Env(var) => tracing::info!("API token: from ${var}"),
            api::auth::TokenSource::File(path, made) => tracing::info!(
                "API token: {} {} (set ${} to choose one)",
                if made { "generated into" } else { "read from" },
                path.display(),
                config.token_env
            ),
        }
        auth
    };
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the API listens beyond this machine over plain HTTP: put a TLS proxy in front");
    }
    match api::write_address(daemon.state_dir(), addr) {
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot write {}: {e}", api::ADDRESS_FILE),
    }
    tracing::info!("dashboard and API: http://{addr}/");
    let state = ApiState::new(daemon.handle(), hub, auth);
    Ok(tokio::spawn(async move {
        if let Err(error) = api::serve(listener, state, stop).await {
            tracing::error!(%error, "the HTTP API stopped");
        }
    }))
}

/// SIGTERM or SIGINT: stop taking work and let running steps finish; a second one: cancel now.
async fn signals(shutdown: Shutdown) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for SIGTERM/SIGINT: stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.graceful.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: cancelling the running runs now");
    shutdown.now.cancel();
}

/// The state dir the config names (said why not on stderr).
fn state_dir(config: Option<&std::path::Path>) -> Option<PathBuf> {
    let setup = Setup::locate(config);
    match setup.config() {
        Ok(config) => Some(setup.state_dir(&config)),
        Err(problems) => {
            eprintln!("error: {problems}");
            None
        }
    }
}

pub fn cancel(args: &CancelArgs, _output: Output) -> u8 {
    let Some(state_dir) = state_dir(args.config.as_deref()) else {
        return super::exit::UNREADABLE;
    };
    // A path names the task file as the daemon knows it: absolute.
    let target = if args.target.ends_with(".yaml") || args.target.ends_with(".yml") {
        std::fs::canonicalize(&args.target)
            .map_or_else(|_| args.target.clone(), |p| p.display().to_string())
    } else {
        args.target.clone()
    };
    let Some(runtime) = super::runtime() else {
        return super::exit::UNREADABLE;
    };
    match runtime.block_on(control::send(
        &state_dir,
        &control::Request::Cancel { target },
    )) {
        Ok(reply) => {
            for line in &reply.lines {
                if reply.ok {
                    println!("{}", printable(line));
                } else {
                    eprintln!("error: {}", printable(line));
                }
            }
            if reply.ok {
                super::exit::OK
            } else {
                super::exit::INVALID
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            super::exit::UNREADABLE
        }
    }
}

/// The scheduled tasks the daemon knows, with their next slot (read from the task files).
fn scheduled(state: &State) -> Vec<(PathBuf, Schedule, Option<chrono::DateTime<chrono::Utc>>)> {
    state
        .tasks
        .iter()
        .filter(|(_, task)| task.last_slot.is_some() && !task.invalid)
        .filter_map(|(path, task)| {
            let text = std::fs::read_to_string(path).ok()?;
            let tree = crate::config::yaml::parse(&text).ok()?;
            let expr = tree.get("schedule")?.as_str()?;
            let zone = tree
                .get("timezone")
                .and_then(crate::config::yaml::Node::as_str);
            let schedule = Schedule::new(expr, zone).ok()?;
            let from = task.last_slot?.max(chrono::Utc::now());
            let next = schedule.next_after(from);
            Some((path.clone(), schedule, next))
        })
        .collect()
}

pub fn status(args: &StatusArgs, _output: Output) -> u8 {
    let Some(state_dir) = state_dir(args.config.as_deref()) else {
        return super::exit::UNREADABLE;
    };
    let daemon = state::holder(&state_dir);
    let state = match state::peek(&state_dir) {
        Ok(state) => state,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => State::default(),
        Err(error) => {
            eprintln!(
                "error: cannot read {}: {error}",
                state::state_path(&state_dir).display()
            );
            return super::exit::UNREADABLE;
        }
    };
    let scheduled = scheduled(&state);
    // Where its API listens, if it runs and serves one.
    let api_url = daemon
        .and_then(|_| std::fs::read_to_string(state_dir.join(api::ADDRESS_FILE)).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|value| value["url"].as_str().map(str::to_owned));
    let json = args.json || !std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({
            "daemon": daemon.map(|pid| serde_json::json!({"pid": pid, "api": api_url})),
            "state_dir": state_dir,
            "engines": state.engines,
            "running": state.running,
            "queued": state.queue,
            "recent": state.recent.iter().rev().collect::<Vec<_>>(),
            "scheduled": scheduled.iter().map(|(task, schedule, next)| serde_json::json!({
                "task": task,
                "schedule": schedule.expr(),
                "timezone": schedule.timezone().name(),
                "next": next.map(|n| n.with_timezone(&schedule.timezone()).to_rfc3339()),
            })).collect::<Vec<_>>(),
        });
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return super::exit::OK;
    }
    let _ = writeln!(
        out,
        "daemon: {} (state dir {})",
        daemon.map_or_else(
            || "not running".to_owned(),
            |pid| format!("running, pid {pid}")
        ),
        state_dir.display()
    );
    if let Some(url) = &api_url {
        let _ = writeln!(out, "dashboard and API: {url}/");
    }
    if !state.engines.is_empty() {
        let _ = writeln!(out, "\nENGINES ({})", state.engines.len());
        for engine in &state.engines {
            let labels = if engine.labels.is_empty() {
                String::new()
            } else {
                format!(" [{}]", engine.labels.join(", "))
            };
            let host = if engine.host.is_empty() {
                "local socket"
            } else {
                engine.host.as_str()
            };
            let mut line = format!(
                "  {:<12} {:<5} {}/{} runs  {}{labels}",
                printable(&engine.name),
                engine.state,
                engine.running,
                engine.capacity,
                printable(host)
            );
            if let Some(reason) = &engine.reason {
                line.push_str(&format!(
                    "\n               down since {}: {}",
                    engine
                        .down_since
                        .map_or_else(String::new, |t| t.format("%H:%M:%S UTC").to_string()),
                    printable(reason)
                ));
            }
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(out, "\nRUNNING ({})", state.running.len());
    for active in &state.running {
        let on = if active.engine.is_empty() {
            String::new()
        } else {
            format!(" on {}", printable(&active.engine))
        };
        let _ = writeln!(
            out,
            "  {:<24} {:<28} since {}{on}",
            active.run,
            printable(&active.entry.task.display().to_string()),
            active.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    let _ = writeln!(out, "\nQUEUED ({})", state.queue.len());
    for entry in &state.queue {
        let _ = writeln!(
            out,
            "  {:<28} {}",
            printable(&entry.task.display().to_string()),
            printable(&entry.trigger)
        );
    }
    let _ = writeln!(out, "\nSCHEDULED ({})", scheduled.len());
    for (task, schedule, next) in &scheduled {
        let _ = writeln!(
            out,
            "  {:<28} {:<16} next {}",
            printable(&task.display().to_string()),
            printable(&format!("{} ({})", schedule.expr(), schedule.timezone())),
            next.map_or_else(
                || "never".to_owned(),
                |n| n
                    .with_timezone(&schedule.timezone())
                    .format("%Y-%m-%d %H:%M %Z")
                    .to_string()
            )
        );
    }
    let _ = writeln!(out, "\nRECENT");
    for done in state.recent.iter().rev().take(20) {
        let status = serde_json::to_value(done.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mark = match done.status {
            RunStatus::Succeeded | RunStatus::NoChanges => "✓",
            _ => "✗",
        };
        let _ = writeln!(
            out,
            "  {mark} {:<24} {:<12} {:<28} {}",
            done.run,
            status,
            printable(&done.task.display().to_string()),
            printable(
                done.pull_request
                    .as_deref()
                    .or(done.reason.as_deref())
                    .unwrap_or("")
            )
        );
    }
    super::exit::OK
}
