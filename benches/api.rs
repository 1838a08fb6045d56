//! What the HTTP API's event streams cost (issue 11 "Measure"): the latency from a line a step
//! prints to its arrival at an SSE client, with 1 and with 100 clients on the same run, and the
//! daemon's memory idle and with those clients connected. Run with `cargo bench --bench api`; it
//! needs a Docker engine (`scripts/docker-engine.sh`) and the sandbox image (`maxions image
//! build sandbox`).
//!
//! A real `maxions daemon` (this build's binary) runs on a temporary project with the API on a
//! free port of 127.0.0.1. Each round submits a task (`POST /maxions`) whose step waits 3 s, then
//! prints `mark <i> <date +%s%N>` MARKS times, 20 ms apart; the clients connect to the queued
//! run's stream at once. For every mark a client receives, latency = its arrival (the host's
//! wall clock when the read returned) minus the stamp the container's `date` printed (the same
//! kernel clock: no skew), so it covers the whole path: the exec's output pipe, the runner, the
//! log, the hub, the socket. Marks printed before the last client connected are left out (they
//! come from the log, not live). Also given: the latency against the event's own `ts` (the daemon
//! stamps it when it writes the line; millisecond resolution), which is the API's share alone.
//! Each round checks that every client got the identical, complete sequence of events ending in
//! `event: end`.
//!
//! Memory: VmRSS from /proc/PID/status, idle (2 s after start, before any run) and sampled every
//! 100 ms during each round (the largest is given), and VmHWM at the end. MB means 10^6 bytes.
//! Figures, never a verdict: they vary with the machine (2 cores run the daemon, Docker, the
//! container and 100 client threads at once).

#[allow(dead_code)]
#[path = "../tests/it/support/http.rs"]
mod http;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use http::{Client, Event};

const MARKS: usize = 300;
const PATIENCE: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("api bench: {error}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[path = "common/figures.rs"]
mod figures;
use figures::{Figure, Figures};

fn bench() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let project = dir.path().canonicalize()?;
    let origin = make_project(&project)?;
    let token = format!("bench-{}", now_ns());
    let mut daemon = Daemon::start(&project, &token)?;
    let client = Client::from_url(&daemon.url).token(&token);
    println!(
        "maxions daemon pid {} at {} (marks per round: {MARKS}, 20 ms apart)",
        daemon.pid(),
        daemon.url
    );

    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kb(daemon.pid(), "VmRSS")?;
    daemon.idle_rss = idle;
    println!("idle: VmRSS {}", mb(idle));

    let mut figures = Figures::new("api");
    for clients in [1, 100] {
        round(&client, &daemon, &origin, clients, &mut figures)?;
    }
    figures.write();
    println!(
        "peak over the whole bench: VmHWM {}",
        mb(rss_kb(daemon.pid(), "VmHWM")?)
    );
    daemon.stop()
}

/// One run with `clients` streams on it; prints the figures.
fn round(
    client: &Client,
    daemon: &Daemon,
    origin: &Path,
    clients: usize,
    figures: &mut Figures,
) -> Result<(), BoxError> {
    let name = format!("marks-{clients}");
    let yaml = format!(
        "task: Print marks for {clients} clients.\nrepo: file://{}\nblueprint: marks\nbase: main\n",
        origin.display()
    );
    let submitted = client
        .post("/maxions")
        .json(&json!({"name": name, "yaml": yaml}))
        .send()
        .expect(201)
        .json();
    let run = submitted["run"]["id"]
        .as_str()
        .ok_or_else(|| format!("POST /maxions gave no run id: {submitted}"))?
        .to_owned();

    let connected = Arc::new(AtomicUsize::new(0));
    let connected_at = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..clients {
        let client = client.clone();
        let path = format!("/maxions/{run}/stream");
        let connected = Arc::clone(&connected);
        let connected_at = Arc::clone(&connected_at);
        threads.push(std::thread::spawn(move || {
            let mut stream = client.get(&path).stream();
            assert_eq!(stream.head.status, 200, "GET {path}");
            connected_at.fetch_max(now_ns(), Ordering::SeqCst);
            connected.fetch_add(1, Ordering::SeqCst);
            stream.deadline(PATIENCE);
            let mut received: Vec<(u64, Event)> = Vec::new();
            while let Some(event) = stream.next_event() {
                received.push((now_ns(), event));
            }
            received
        }));
    }
    let started = Instant::now();
    while connected.load(Ordering::SeqCst) < clients {
        if threads.iter().any(std::thread::JoinHandle::is_finished) {
            return Err("a client ended before all had connected".into());
        }
        if started.elapsed() > PATIENCE {
            return Err("the clients did not all connect".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let all_connected = connected_at.load(Ordering::SeqCst);

    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        let pid = daemon.pid();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(Ordering::SeqCst) {
                peak = peak.max(rss_kb(pid, "VmRSS").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let mut streams = Vec::new();
    for thread in threads {
        streams.push(thread.join().map_err(|_| "a client thread panicked")?);
    }
    sampling.store(false, Ordering::SeqCst);
    let peak = sampler.join().map_err(|_| "the sampler panicked")?;

    // Every client saw the same events, ending with the end event.
    let first: Vec<&Event> = streams[0].iter().map(|(_, e)| e).collect();
    for (i, stream) in streams.iter().enumerate() {
        let events: Vec<&Event> = stream.iter().map(|(_, e)| e).collect();
        if events != first {
            return Err(format!(
                "client {i} got {} events, client 0 got {}: the streams differ",
                events.len(),
                first.len()
            )
            .into());
        }
    }
    if first.last().map(|e| e.event.as_str()) != Some("end") {
        return Err(format!(
            "the stream did not end with `event: end`: {:?}",
            first.last()
        )
        .into());
    }

    let mut from_mark = Vec::new();
    let mut from_ts = Vec::new();
    let mut marks = 0;
    for stream in &streams {
        for (arrived, event) in stream {
            if event.event != "message" {
                continue;
            }
            let line = event.json();
            if line["type"] != "output" {
                continue;
            }
            let mut live = false;
            for mark in line["text"].as_str().unwrap_or_default().lines() {
                let Some(stamp) = mark
                    .strip_prefix("mark ")
                    .and_then(|m| m.split_whitespace().nth(1))
                    .and_then(|s| s.parse::<u64>().ok())
                else {
                    continue;
                };
                marks += 1;
                if stamp > all_connected {
                    live = true;
                    from_mark.push(arrived.saturating_sub(stamp));
                }
            }
            if live && let Some(ts) = line["ts"].as_str().and_then(parse_ts_ns) {
                from_ts.push(arrived.saturating_sub(ts));
            }
        }
    }
    if marks != clients * MARKS {
        return Err(format!("{marks} marks arrived, {} expected", clients * MARKS).into());
    }
    println!(
        "{clients:>3} client(s), run {run}: {} events each; {} live marks",
        first.len(),
        from_mark.len()
    );
    println!("    step's print -> client:  {}", summary(&mut from_mark));
    println!("    event's ts  -> client:  {}", summary(&mut from_ts));
    let median = |values: &[u64]| {
        // Sorted by `summary`.
        values
            .get(values.len().saturating_sub(1) / 2)
            .map_or(f64::NAN, |&v| v as f64 / 1e6)
    };
    figures.push(
        Figure::new(
            &format!("sse.latency.{clients}"),
            &format!("SSE: a line a step prints -> {clients} client(s) (median)"),
            "ms",
            median(&from_mark),
        )
        .note(&format!(
            "of which the API's share, the event's own `ts` -> client: {:.2} ms; the rest is the runner batching output every 50 ms",
            median(&from_ts)
        )),
    );
    figures.push(
        Figure::new(
            &format!("sse.rss.{clients}"),
            &format!("daemon RSS with {clients} SSE client(s) following a run (max)"),
            "MB",
            peak as f64 * 1024.0 / 1e6,
        )
        .against(
            "the same daemon idle",
            daemon.idle_rss as f64 * 1024.0 / 1e6,
        ),
    );
    println!(
        "    daemon VmRSS during the round: max {} (idle was {})",
        mb(peak),
        mb(daemon.idle_rss)
    );
    Ok(())
}

fn summary(values: &mut [u64]) -> String {
    if values.is_empty() {
        return "no samples".into();
    }
    values.sort_unstable();
    let n = values.len();
    let at = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    format!(
        "median {}, p95 {}, max {} (n = {n})",
        ms(at(0.5)),
        ms(at(0.95)),
        ms(values[n - 1])
    )
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 * 1024.0 / 1e6)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `2026-12-02T14:59:17.592Z` as nanoseconds since the epoch.
fn parse_ts_ns(ts: &str) -> Option<u64> {
    let parsed = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
    u64::try_from(parsed.timestamp_nanos_opt()?).ok()
}

fn rss_kb(pid: u32, field: &str) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status").into())
}

/// `maxions.yaml`, the `marks` blueprint and a bare repository with one commit; returns the
/// repository's path.
fn make_project(root: &Path) -> Result<PathBuf, BoxError> {
    let seed = root.join("seed");
    std::fs::create_dir_all(&seed)?;
    std::fs::write(seed.join("README.md"), "# bench\n")?;
    git(&seed, &["init", "-q", "-b", "main"])?;
    git(&seed, &["add", "-A"])?;
    git(
        &seed,
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-q",
            "-m",
            "initial commit",
        ],
    )?;
    let origin = root.join("origin/repo.git");
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            &seed.display().to_string(),
            &origin.display().to_string(),
        ],
    )?;
    std::fs::create_dir_all(root.join("tasks"))?;
    std::fs::create_dir_all(root.join("blueprints"))?;
    std::fs::write(
        root.join("maxions.yaml"),
        "shutdown_grace: 2s\napi:\n  listen: 127.0.0.1:0\n  token_env: MAXIONS_API_TOKEN\n",
    )?;
    std::fs::write(
        root.join("blueprints/marks.yaml"),
        format!(
            "name: marks\nsandbox:\n  network: none\n  timeout: 5m\nsteps:\n  - id: marks\n    run: |\n      sleep 3\n      for i in $(seq 1 {MARKS}); do echo \"mark $i $(date +%s%N)\"; sleep 0.02; done\n"
        ),
    )?;
    Ok(origin)
}

fn git(dir: &Path, args: &[&str]) -> Result<(), BoxError> {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("git {args:?} failed in {}", dir.display()).into())
    }
}

struct Daemon {
    child: Child,
    url: String,
    idle_rss: u64,
}

impl Daemon {
    fn start(project: &Path, token: &str) -> Result<Self, BoxError> {
        let log = std::fs::File::create(project.join("daemon.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_maxions"))
            .current_dir(project)
            .args(["daemon", "--config", "maxions.yaml"])
            .env("MAXIONS_API_TOKEN", token)
            .env("NO_COLOR", "1")
            .env_remove("MAXIONS_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut daemon = Self {
            child,
            url: String::new(),
            idle_rss: 0,
        };
        let api = project.join(".maxions/api.json");
        let started = Instant::now();
        loop {
            if let Some(url) = std::fs::read_to_string(&api)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["url"].as_str().map(str::to_owned))
            {
                daemon.url = url;
                break;
            }
            if let Some(status) = daemon.child.try_wait()? {
                let log = std::fs::read_to_string(project.join("daemon.log")).unwrap_or_default();
                return Err(format!("the daemon exited ({status}):\n{log}").into());
            }
            if started.elapsed() > PATIENCE {
                return Err("the daemon wrote no api.json".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !daemon.url.starts_with("http://127.0.0.1:") {
            return Err(format!("the API is at {}, not on 127.0.0.1", daemon.url).into());
        }
        Ok(daemon)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and the exit awaited.
    fn stop(&mut self) -> Result<(), BoxError> {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        let status = self.child.wait()?;
        println!("daemon stopped by SIGTERM: {status}");
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A bench that failed half-way still stops its daemon the gentle way, so that the
        // daemon removes its sandboxes; SIGKILL only if it does not exit within 10 s.
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
