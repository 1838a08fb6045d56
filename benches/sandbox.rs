//! What the Docker sandbox costs over Docker itself, as ratios against baselines measured in the
//! same run (DESIGN.md §11, issue 4 "Measure"). Run with `cargo bench --bench sandbox`; it needs a
//! Docker engine (`scripts/docker-engine.sh`) and the image (`cargo run -- image build`).
//!
//! 1. Per-step overhead: a maxions exec of `true`, `echo hi` and 10 MB of output against a raw
//!    exec of the same command into the same container, through the Engine API (bollard: create, start, read to
//!    the end, inspect: what `docker exec` does) and through the `docker exec` CLI. Target: at most
//!    1.10x the raw API exec. A fourth subject, the raw API running maxions' exact argv (its `sh`
//!    pid wrapper, working directory), tells the wrapper's share from the client's.
//! 2. Create + start of a hardened persistent container against the same container made with the
//!    raw API and with `docker run -d` and the same flags; then the first exec of `true` and the
//!    removal, timed separately.
//! 3. Exec stream throughput: 200 MB through stdout (log-like text, then zeros) with redaction
//!    of 50 secrets on and off, against the raw API and `docker exec ... > /dev/null`. The raw API
//!    reads with maxions' 64 KiB frame buffer, and once more with bollard's default 8 KiB, which
//!    alone costs a lot of throughput. (The redactor alone is in `benches/redaction.rs`.)
//!
//! Subjects run in interleaved rounds whose order rotates, so that drift in the machine's speed
//! hits every subject alike; figures are medians and 90th percentiles after warm-up rounds, and
//! ratios compare medians (for per-step also the median of per-round paired ratios). MB means
//! 10^6 bytes. Every container made here is labelled `maxions.instance=bench` and removed at the
//! end, even on error or Ctrl-C (and any left over from an earlier run is removed at the start).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use maxions::sandbox::docker::{INSTANCE_LABEL, RUN_LABEL};
use maxions::sandbox::redact::Redactor;
use maxions::sandbox::{
    ContainerSpec, DEFAULT_MEMORY, DEFAULT_PIDS, DockerEngine, Engine, ExecOutcome, ExecRequest,
    OutputStream, Sandbox, TMPFS_SIZE, WORKSPACE,
};
use maxions::secret::Secret;
use tokio_util::sync::CancellationToken;

#[path = "common/figures.rs"]
mod figures;
use figures::{Figure, Figures, Target};

/// What this run measured, written to `target/bench/sandbox.json` at the end.
static FIGURES: std::sync::Mutex<Vec<Figure>> = std::sync::Mutex::new(Vec::new());

fn figure(figure: Figure) {
    FIGURES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(figure);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const IMAGE: &str = "maxions/sandbox:latest";
const INSTANCE: &str = "bench";
/// The per-step target of DESIGN.md §11.
const TARGET: f64 = 1.10;

const STEP_WARMUP: usize = 10;
const STEP_ROUNDS: usize = 100;
const CREATE_WARMUP: usize = 2;
const CREATE_ROUNDS: usize = 20;
const STREAM_WARMUP: usize = 1;
const STREAM_ROUNDS: usize = 7;
const STREAM_BYTES: u64 = 200_000_000;
const SECRETS: usize = 50;
/// The output frame buffer maxions asks bollard for (`src/sandbox/docker.rs`); the raw API
/// baselines use it too, so that they differ from maxions only in what maxions adds.
const FRAME: Option<usize> = Some(64 << 10);
/// One line of build-log-like text, with near misses of the secrets' prefixes but no secret.
const LOG_LINE: &str = "Compiling maxions v0.1.0 (/workspace) token=ghp_ Bearer sk- AKIA xoxb- src/main.rs:42:7 warning: unused";
/// What maxions' container runs as its main process (see `src/sandbox/docker.rs`).
const REAPER: &str = r#"while read -r g; do case "$g" in ''|*[!0-9]*) ;; *) kill -9 "-$g" 2>/dev/null ;; esac; done"#;
/// The wrapper maxions puts around every command (see `src/sandbox/docker.rs`).
const WRAPPER: &str = r#"echo "$$" >&2 && exec "$@""#;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sandbox bench: cannot start a tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let engine = match DockerEngine::connect().await {
            Ok(engine) => engine.with_instance(INSTANCE),
            Err(error) => {
                eprintln!("sandbox bench: no Docker engine answers, nothing measured: {error}");
                return ExitCode::FAILURE;
            }
        };
        let docker = engine.client().clone();
        if docker.inspect_image(IMAGE).await.is_err() {
            eprintln!(
                "sandbox bench: image {IMAGE} is missing; build it with `cargo run -- image build`"
            );
            return ExitCode::FAILURE;
        }
        if let Err(error) = cleanup(&docker).await {
            eprintln!("sandbox bench: cannot remove leftovers of an earlier run: {error}");
            return ExitCode::FAILURE;
        }
        let task = tokio::spawn(run(engine));
        let abort = task.abort_handle();
        let result = tokio::select! {
            joined = task => match joined {
                Ok(result) => result,
                Err(error) => Err(format!("the benchmark panicked: {error}").into()),
            },
            _ = tokio::signal::ctrl_c() => {
                abort.abort();
                Err("interrupted".into())
            }
        };
        let cleaned = cleanup(&docker).await;
        match (result, cleaned) {
            (Ok(()), Ok(0)) => ExitCode::SUCCESS,
            (Ok(()), Ok(left)) => {
                eprintln!("sandbox bench: {left} container(s) were left behind (now removed)");
                ExitCode::FAILURE
            }
            (result, cleaned) => {
                if let Err(error) = result {
                    eprintln!("sandbox bench failed: {error}");
                }
                if let Err(error) = cleaned {
                    eprintln!(
                        "sandbox bench: cannot remove its containers ({error}); remove them with `docker rm -f -v $(docker ps -aq --filter label={INSTANCE_LABEL}={INSTANCE})`"
                    );
                }
                ExitCode::FAILURE
            }
        }
    })
}

async fn run(engine: DockerEngine) -> Result<(), BoxError> {
    let docker = engine.client().clone();
    println!(
        "sandbox bench: image {IMAGE}, {} cores, times in ms, ratios of medians (>1 = slower than the baseline);\nclient CPU = mean CPU time of this process and its `docker` children per sample (dockerd's is not counted)",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    per_step(&engine, &docker).await?;
    create_start(&engine, &docker).await?;
    stream(&engine, &docker).await?;
    let mut figures = Figures::new("sandbox");
    for f in std::mem::take(
        &mut *FIGURES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    ) {
        figures.push(f);
    }
    figures.write();
    Ok(())
}

/// Removes every container of this benchmark (and its anonymous volumes). Returns how many.
async fn cleanup(docker: &Docker) -> Result<usize, BoxError> {
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&HashMap::from([(
            "label",
            vec![format!("{INSTANCE_LABEL}={INSTANCE}")],
        )]))
        .build();
    let containers = docker.list_containers(Some(options)).await?;
    let mut removed = 0;
    for id in containers.into_iter().filter_map(|c| c.id) {
        docker.remove_container(&id, Some(force_remove())).await?;
        removed += 1;
    }
    Ok(removed)
}

fn force_remove() -> bollard::query_parameters::RemoveContainerOptions {
    RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build()
}

fn run_id(what: &str, round: usize) -> String {
    format!("bench-{}-{what}-{round}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Statistics and the table.

/// CPU time (ms) used so far by this process's threads and by its reaped children (the
/// `docker` CLI). Client-side cost, unlike wall time, hardly moves when other work shares the
/// machine. Threads: `/proc/self/task/*/schedstat`, in ns (this program's threads live to the
/// end). Children: `cutime + cstime` of `/proc/self/stat`, in 1/100 s (USER_HZ): fine summed
/// over many rounds.
fn cpu_ms() -> f64 {
    let mut ns = 0_u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                ns += text
                    .split_whitespace()
                    .next()
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    let children_ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name: state is field 3, cutime 16, cstime 17.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: u64 = fields.get(16 - 3)?.parse().ok()?;
            let system: u64 = fields.get(17 - 3)?.parse().ok()?;
            Some(user + system)
        })
        .unwrap_or(0);
    ns as f64 / 1e6 + children_ticks as f64 * 10.0
}

/// Samples of one subject, in milliseconds: wall time, and (where measured) the CPU time this
/// client spent.
#[derive(Default)]
struct Samples {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

impl Samples {
    fn push(&mut self, elapsed: Duration) {
        self.wall.push(elapsed.as_secs_f64() * 1e3);
    }

    fn push_cpu(&mut self, ms: f64) {
        self.cpu.push(ms);
    }

    fn quantile(&self, q: f64) -> f64 {
        quantile(&self.wall, q)
    }

    /// Mean client CPU time of one sample.
    fn cpu(&self) -> f64 {
        self.cpu.iter().sum::<f64>() / self.cpu.len() as f64
    }

    fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    fn p90(&self) -> f64 {
        self.quantile(0.9)
    }

    /// The fastest round: what the machine can do when nothing else runs.
    fn best(&self) -> f64 {
        self.quantile(0.0)
    }
}

/// Nearest-rank quantile.
fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of the per-round ratios `subject[i] / baseline[i]`.
fn paired_ratio(subject: &Samples, baseline: &Samples) -> f64 {
    let ratios: Vec<f64> = subject
        .wall
        .iter()
        .zip(&baseline.wall)
        .map(|(s, b)| s / b)
        .collect();
    quantile(&ratios, 0.5)
}

struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn print(&self, title: &str) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut text = String::new();
            for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                let pad = width - cell.chars().count();
                if i == 0 {
                    let _ = write!(text, "| {cell}{} ", " ".repeat(pad));
                } else {
                    let _ = write!(text, "| {}{cell} ", " ".repeat(pad));
                }
            }
            text.push('|');
            text
        };
        println!("\n{title}");
        println!("{}", line(&self.header));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        println!("{}", line(&rule).replace(' ', "-"));
        for row in &self.rows {
            println!("{}", line(row));
        }
    }
}

fn ms(value: f64) -> String {
    format!("{value:.2}")
}

fn ratio(value: f64) -> String {
    format!("{value:.3}x")
}

// ---------------------------------------------------------------------------------------------
// The ways of running one command.

/// A maxions exec; fails unless the command succeeded. The outcome's byte counts are before
/// redaction; the sink sees what leaves the sandbox.
async fn maxions_exec(
    sandbox: &dyn Sandbox,
    request: &ExecRequest,
) -> Result<ExecOutcome, BoxError> {
    let mut seen = 0_u64;
    let mut sink = |_: OutputStream, chunk: &[u8]| {
        seen += black_box(chunk).len() as u64;
    };
    let outcome = sandbox
        .exec(request, &mut sink, &CancellationToken::new())
        .await?;
    black_box(seen);
    if !outcome.status.success() {
        return Err(format!("maxions exec of {:?}: {}", request.argv, outcome.status).into());
    }
    Ok(outcome)
}

/// Time spent in each phase of a raw API exec.
#[derive(Default)]
struct Phases {
    create: Samples,
    start: Samples,
    read: Samples,
    inspect: Samples,
}

/// What `docker exec` does, through the Engine API: create the exec, start it attached, read
/// its output to the end, inspect it for the exit code. `capacity` is bollard's frame buffer
/// (its default is 8 KiB; maxions asks for [`FRAME`]). Returns the bytes of stdout (stderr is
/// read too, and dropped).
async fn api_exec(
    docker: &Docker,
    container: &str,
    argv: &[String],
    workdir: Option<&str>,
    capacity: Option<usize>,
    phases: Option<&mut Phases>,
) -> Result<u64, BoxError> {
    let t0 = Instant::now();
    let options = CreateExecOptions {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(argv.to_vec()),
        working_dir: workdir.map(str::to_owned),
        ..CreateExecOptions::default()
    };
    let exec = docker.create_exec(container, options).await?;
    let t1 = Instant::now();
    let options = StartExecOptions {
        output_capacity: capacity,
        ..StartExecOptions::default()
    };
    let started = docker.start_exec(&exec.id, Some(options)).await?;
    let t2 = Instant::now();
    let mut bytes = 0_u64;
    if let StartExecResults::Attached { mut output, .. } = started {
        while let Some(item) = output.next().await {
            match item? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    bytes += black_box(&message).len() as u64;
                }
                LogOutput::StdErr { message } => {
                    black_box(&message);
                }
                LogOutput::StdIn { .. } => {}
            }
        }
    }
    let t3 = Instant::now();
    let code = docker.inspect_exec(&exec.id).await?.exit_code;
    let t4 = Instant::now();
    if code != Some(0) {
        return Err(format!("raw exec of {argv:?} exited with {code:?}").into());
    }
    if let Some(phases) = phases {
        phases.create.push(t1 - t0);
        phases.start.push(t2 - t1);
        phases.read.push(t3 - t2);
        phases.inspect.push(t4 - t3);
    }
    Ok(bytes)
}

/// `docker ARGS...`, its stdout collected (or thrown away, as `> /dev/null` would); fails unless
/// it succeeded. Returns the bytes collected.
async fn cli(args: &[String], discard: bool) -> Result<u64, BoxError> {
    let mut command = tokio::process::Command::new("docker");
    command
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    if discard {
        command.stdout(Stdio::null());
    } else {
        command.stdout(Stdio::piped());
    }
    let output = command.output().await?;
    if !output.status.success() {
        return Err(format!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(output.stdout.len() as u64)
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// maxions' argv for `argv`: the pid wrapper, then the command.
fn wrapped(argv: &[String]) -> Vec<String> {
    let mut cmd = strings(&["sh", "-c", WRAPPER, "maxions"]);
    cmd.extend(argv.iter().cloned());
    cmd
}

// ---------------------------------------------------------------------------------------------
// 1. Per-step overhead.

#[derive(Clone, Copy)]
enum Step {
    Maxions,
    Api,
    ApiWrapped,
    Cli,
}

async fn per_step(engine: &DockerEngine, docker: &Docker) -> Result<(), BoxError> {
    let spec = ContainerSpec::new(&run_id("exec", 0), IMAGE);
    let sandbox = engine.create(&spec).await?;
    let result = per_step_in(sandbox.as_ref(), docker).await;
    let destroyed = sandbox.destroy().await;
    result?;
    destroyed?;
    Ok(())
}

async fn per_step_in(sandbox: &dyn Sandbox, docker: &Docker) -> Result<(), BoxError> {
    let id = sandbox.id().to_owned();
    let mut table = Table::new(&[
        "subject",
        "median",
        "p90",
        "x API (median)",
        "x API (p90)",
        "x API (paired)",
        "x CLI (median)",
        "client CPU",
        "x API",
    ]);
    let mut verdicts = Vec::new();
    let mut phase_table =
        Table::new(&["raw API exec", "create", "start", "read to EOF", "inspect"]);
    for (label, argv, expected) in [
        ("true", strings(&["true"]), 0_u64),
        ("echo hi", strings(&["echo", "hi"]), 3),
        (
            "10 MB",
            strings(&["sh", "-c", "head -c 10000000 /dev/zero | tr '\\0' x"]),
            10_000_000,
        ),
    ] {
        let request = ExecRequest::new(argv.clone());
        let wrapped_argv = wrapped(&argv);
        let mut cli_args = strings(&["exec", &id]);
        cli_args.extend(argv.iter().cloned());
        let subjects = [Step::Maxions, Step::Api, Step::ApiWrapped, Step::Cli];
        let mut samples: [Samples; 4] = Default::default();
        let mut phases = Phases::default();
        let mut phases_wrapped = Phases::default();
        for round in 0..STEP_WARMUP + STEP_ROUNDS {
            let measured = round >= STEP_WARMUP;
            for k in 0..subjects.len() {
                let which = (round + k) % subjects.len();
                let cpu_before = cpu_ms();
                let started = Instant::now();
                let bytes = match subjects[which] {
                    Step::Maxions => maxions_exec(sandbox, &request).await?.stdout_bytes,
                    Step::Api => {
                        api_exec(
                            docker,
                            &id,
                            &argv,
                            None,
                            FRAME,
                            measured.then_some(&mut phases),
                        )
                        .await?
                    }
                    Step::ApiWrapped => {
                        api_exec(
                            docker,
                            &id,
                            &wrapped_argv,
                            Some(WORKSPACE),
                            FRAME,
                            measured.then_some(&mut phases_wrapped),
                        )
                        .await?
                    }
                    Step::Cli => cli(&cli_args, false).await?,
                };
                let elapsed = started.elapsed();
                let cpu = cpu_ms() - cpu_before;
                if bytes != expected {
                    return Err(format!("`{label}` gave {bytes} bytes, not {expected}").into());
                }
                if measured {
                    samples[which].push(elapsed);
                    samples[which].push_cpu(cpu);
                }
            }
        }
        let [maxions, api, api_wrapped, cli_samples] = &samples;
        for (name, subject) in [
            (format!("maxions exec `{label}`"), maxions),
            (format!("raw API exec, maxions argv `{label}`"), api_wrapped),
            (format!("raw API exec `{label}` (baseline)"), api),
            (format!("docker exec CLI `{label}`"), cli_samples),
        ] {
            table.row(vec![
                name,
                ms(subject.median()),
                ms(subject.p90()),
                ratio(subject.median() / api.median()),
                ratio(subject.p90() / api.p90()),
                ratio(paired_ratio(subject, api)),
                ratio(subject.median() / cli_samples.median()),
                ms(subject.cpu()),
                ratio(subject.cpu() / api.cpu()),
            ]);
        }
        for (name, p) in [
            (format!("`{label}`"), &phases),
            (format!("`{label}`, maxions argv"), &phases_wrapped),
        ] {
            phase_table.row(vec![
                name,
                ms(p.create.median()),
                ms(p.start.median()),
                ms(p.read.median()),
                ms(p.inspect.median()),
            ]);
        }
        let r = maxions.median() / api.median();
        figure(
            Figure::new(
                &format!("step.{}", label.replace(' ', "_")),
                &format!("step overhead: maxions exec of `{label}` (median)"),
                "ms",
                maxions.median(),
            )
            .against(&format!("raw Engine-API exec of `{label}`"), api.median())
            .target(Target::RatioAtMost { value: TARGET }),
        );
        verdicts.push(format!(
            "maxions exec `{label}`: {} the raw API exec, {:+.2} ms per step (target <= {TARGET:.2}x: {})",
            ratio(r),
            maxions.median() - api.median(),
            if r <= TARGET { "met" } else { "MISSED" }
        ));
    }
    table.print(&format!(
        "1. Per-step overhead ({STEP_ROUNDS} interleaved rounds after {STEP_WARMUP} warm-up, one container)"
    ));
    for verdict in verdicts {
        println!("   {verdict}");
    }
    phase_table.print("   where a raw API exec spends its time (medians, ms)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Create + start.

#[derive(Clone, Copy)]
enum Create {
    Maxions,
    Api,
    Cli,
}

/// The same container maxions makes (see `DockerEngine::create_sandbox`), through the raw API.
fn api_body(run: &str) -> ContainerCreateBody {
    let labels = HashMap::from([
        (RUN_LABEL.to_owned(), run.to_owned()),
        (INSTANCE_LABEL.to_owned(), INSTANCE.to_owned()),
    ]);
    let host_config = HostConfig {
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        privileged: Some(false),
        memory: Some(DEFAULT_MEMORY as i64),
        memory_swap: Some(DEFAULT_MEMORY as i64),
        pids_limit: Some(i64::from(DEFAULT_PIDS)),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            format!("rw,nosuid,nodev,size={TMPFS_SIZE},mode=1777"),
        )])),
        mounts: Some(vec![Mount {
            target: Some(WORKSPACE.to_owned()),
            typ: Some(MountType::VOLUME),
            ..Mount::default()
        }]),
        network_mode: Some("none".to_owned()),
        init: Some(true),
        ..HostConfig::default()
    };
    ContainerCreateBody {
        image: Some(IMAGE.to_owned()),
        cmd: Some(strings(&["sh", "-c", REAPER])),
        labels: Some(labels),
        working_dir: Some(WORKSPACE.to_owned()),
        open_stdin: Some(true),
        stdin_once: Some(false),
        attach_stdin: Some(false),
        network_disabled: Some(true),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    }
}

/// `docker run -d` with the flags of a maxions sandbox. `-i` keeps the main process's stdin
/// open as maxions does (its reaper reads it); without it the container would exit at once.
fn cli_run_args(name: &str) -> Vec<String> {
    let mut args = strings(&[
        "run",
        "-d",
        "-i",
        "--name",
        name,
        "--label",
        &format!("{INSTANCE_LABEL}={INSTANCE}"),
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--memory",
        "4g",
        "--memory-swap",
        "4g",
        "--pids-limit",
        "1024",
        "--tmpfs",
        "/tmp:rw,nosuid,nodev,size=1073741824,mode=1777",
        "--mount",
        "type=volume,target=/workspace",
        "--network",
        "none",
        "--init",
        IMAGE,
        "sh",
        "-c",
    ]);
    args.push("while read -r g; do :; done".to_owned());
    args
}

async fn create_start(engine: &DockerEngine, docker: &Docker) -> Result<(), BoxError> {
    let subjects = [Create::Maxions, Create::Api, Create::Cli];
    // Per subject: ready (create + start), first exec of `true`, removal.
    let mut ready: [Samples; 3] = Default::default();
    let mut first: [Samples; 3] = Default::default();
    let mut removal: [Samples; 3] = Default::default();
    let request = ExecRequest::new(["true"]);
    let truth = strings(&["true"]);
    for round in 0..CREATE_WARMUP + CREATE_ROUNDS {
        let measured = round >= CREATE_WARMUP;
        for k in 0..subjects.len() {
            let which = (round + k) % subjects.len();
            let run = run_id("create", round * subjects.len() + which);
            let started = Instant::now();
            let (is_ready, did_first, removed) = match subjects[which] {
                Create::Maxions => {
                    let sandbox = engine.create(&ContainerSpec::new(&run, IMAGE)).await?;
                    let is_ready = started.elapsed();
                    let exec = maxions_exec(sandbox.as_ref(), &request).await;
                    let did_first = started.elapsed();
                    let removing = Instant::now();
                    sandbox.destroy().await?;
                    exec?;
                    (is_ready, did_first, removing.elapsed())
                }
                Create::Api => {
                    let name = format!("maxions-{run}");
                    let created = docker
                        .create_container(
                            Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                            api_body(&run),
                        )
                        .await?;
                    let started_container = docker.start_container(&created.id, None).await;
                    let is_ready = started.elapsed();
                    let exec = match started_container {
                        Ok(()) => api_exec(docker, &created.id, &truth, None, FRAME, None).await,
                        Err(error) => Err(error.into()),
                    };
                    let did_first = started.elapsed();
                    let removing = Instant::now();
                    docker
                        .remove_container(&created.id, Some(force_remove()))
                        .await?;
                    exec?;
                    (is_ready, did_first, removing.elapsed())
                }
                Create::Cli => {
                    let name = format!("maxions-{run}");
                    cli(&cli_run_args(&name), false).await?;
                    let is_ready = started.elapsed();
                    let exec = cli(&strings(&["exec", &name, "true"]), false).await;
                    let did_first = started.elapsed();
                    let removing = Instant::now();
                    cli(&strings(&["rm", "-f", "-v", &name]), true).await?;
                    exec?;
                    (is_ready, did_first, removing.elapsed())
                }
            };
            if measured {
                ready[which].push(is_ready);
                first[which].push(did_first);
                removal[which].push(removed);
            }
        }
    }
    let mut table = Table::new(&[
        "subject",
        "ready median",
        "ready p90",
        "x API",
        "x CLI",
        "+first exec",
        "x API",
        "x CLI",
        "removal",
        "x API",
        "x CLI",
    ]);
    for (index, name) in [
        "maxions engine.create (+ exec, destroy)",
        "raw API create + start (baseline)",
        "docker run -d (+ docker exec, rm -f -v)",
    ]
    .into_iter()
    .enumerate()
    {
        if index == 0 {
            figure(
                Figure::new(
                    "sandbox.create",
                    "hardened sandbox create + start (median)",
                    "ms",
                    ready[0].median(),
                )
                .against("raw API create + start, same flags", ready[1].median()),
            );
            figure(
                Figure::new(
                    "sandbox.remove",
                    "sandbox removal (median)",
                    "ms",
                    removal[0].median(),
                )
                .against("raw API remove -f -v", removal[1].median()),
            );
        }
        table.row(vec![
            name.to_owned(),
            ms(ready[index].median()),
            ms(ready[index].p90()),
            ratio(ready[index].median() / ready[1].median()),
            ratio(ready[index].median() / ready[2].median()),
            ms(first[index].median()),
            ratio(first[index].median() / first[1].median()),
            ratio(first[index].median() / first[2].median()),
            ms(removal[index].median()),
            ratio(removal[index].median() / removal[1].median()),
            ratio(removal[index].median() / removal[2].median()),
        ]);
    }
    table.print(&format!(
        "2. Hardened persistent container: create + start, then first exec of `true`, then removal ({CREATE_ROUNDS} interleaved rounds after {CREATE_WARMUP} warm-up)"
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Exec stream throughput.

#[derive(Clone, Copy)]
enum Stream {
    Redacted,
    Plain,
    Api,
    ApiSmallFrames,
    Cli,
}

/// 50 secrets shaped like real tokens, deterministic.
fn secrets() -> Result<Vec<Secret>, BoxError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    };
    (0..SECRETS)
        .map(|i| {
            let mut value = String::from(["ghp_", "sk-", "xoxb-", "AKIA", ""][i % 5]);
            let len = 20 + next(41);
            value.extend((0..len).map(|_| char::from(ALPHABET[next(ALPHABET.len())])));
            Secret::new(format!("SECRET_{i}"), value).map_err(Into::into)
        })
        .collect()
}

async fn stream(engine: &DockerEngine, docker: &Docker) -> Result<(), BoxError> {
    let spec = ContainerSpec::new(&run_id("stream", 0), IMAGE);
    let sandbox = engine.create(&spec).await?;
    let result = stream_in(sandbox.as_ref(), docker).await;
    let destroyed = sandbox.destroy().await;
    result?;
    destroyed?;
    Ok(())
}

async fn stream_in(sandbox: &dyn Sandbox, docker: &Docker) -> Result<(), BoxError> {
    let id = sandbox.id().to_owned();
    let secrets = secrets()?;
    let redactor = Redactor::new(&secrets)?;
    let mut table = Table::new(&[
        "subject",
        "median s",
        "MB/s",
        "best MB/s",
        "p90 s",
        "time x off, median (best)",
        "time x API (64 KiB)",
        "time x CLI",
        "client CPU s",
        "x off",
    ]);
    for (label, script) in [
        ("text", format!("yes '{LOG_LINE}' | head -c {STREAM_BYTES}")),
        ("zeros", format!("head -c {STREAM_BYTES} /dev/zero")),
    ] {
        let argv = strings(&["sh", "-c", &script]);
        let request = ExecRequest::new(argv.clone());
        let mut cli_args = strings(&["exec", &id]);
        cli_args.extend(argv.iter().cloned());
        let subjects = [
            Stream::Redacted,
            Stream::Plain,
            Stream::Api,
            Stream::ApiSmallFrames,
            Stream::Cli,
        ];
        let mut samples: [Samples; 5] = Default::default();
        for round in 0..STREAM_WARMUP + STREAM_ROUNDS {
            for k in 0..subjects.len() {
                let which = (round + k) % subjects.len();
                let cpu_before = cpu_ms();
                let (started, bytes) = match subjects[which] {
                    Stream::Redacted | Stream::Plain => {
                        sandbox.set_redactor(if matches!(subjects[which], Stream::Redacted) {
                            redactor.clone()
                        } else {
                            Redactor::none()
                        });
                        let started = Instant::now();
                        let outcome = maxions_exec(sandbox, &request).await?;
                        (started, outcome.stdout_bytes)
                    }
                    Stream::Api | Stream::ApiSmallFrames => {
                        let capacity = if matches!(subjects[which], Stream::Api) {
                            FRAME
                        } else {
                            None
                        };
                        let started = Instant::now();
                        (
                            started,
                            api_exec(docker, &id, &argv, None, capacity, None).await?,
                        )
                    }
                    Stream::Cli => {
                        let started = Instant::now();
                        cli(&cli_args, true).await?;
                        (started, STREAM_BYTES)
                    }
                };
                let elapsed = started.elapsed();
                let cpu = cpu_ms() - cpu_before;
                if bytes != STREAM_BYTES {
                    return Err(format!("{label}: got {bytes} bytes, not {STREAM_BYTES}").into());
                }
                if round >= STREAM_WARMUP {
                    samples[which].push(elapsed);
                    samples[which].push_cpu(cpu);
                }
            }
        }
        sandbox.set_redactor(Redactor::none());
        let [redacted, plain, api, api_small, cli_samples] = &samples;
        let mbps = |s: &Samples| STREAM_BYTES as f64 / 1e3 / s.median();
        for (id, what, subject) in [
            (
                format!("stream.{label}.redacted"),
                format!("exec stream, {SECRETS} secrets redacted, {label}"),
                redacted,
            ),
            (
                format!("stream.{label}.plain"),
                format!("exec stream, no redaction, {label}"),
                plain,
            ),
        ] {
            figure(Figure::new(&id, &what, "MB/s", mbps(subject)).against(
                "raw API exec to nothing (`/dev/null`), 64 KiB frames",
                mbps(api),
            ));
        }
        for (name, subject) in [
            (
                format!("maxions, {SECRETS} secrets redacted, {label}"),
                redacted,
            ),
            (format!("maxions, no redaction, {label}"), plain),
            (format!("raw API exec, 64 KiB frames, {label}"), api),
            (
                format!("raw API exec, bollard's 8 KiB frames, {label}"),
                api_small,
            ),
            (format!("docker exec CLI > /dev/null, {label}"), cli_samples),
        ] {
            let rate = |ms: f64| format!("{:.0}", STREAM_BYTES as f64 / 1e3 / ms);
            let both = |baseline: &Samples| {
                format!(
                    "{} ({})",
                    ratio(subject.median() / baseline.median()),
                    ratio(subject.best() / baseline.best())
                )
            };
            table.row(vec![
                name,
                format!("{:.3}", subject.median() / 1e3),
                rate(subject.median()),
                rate(subject.best()),
                format!("{:.3}", subject.p90() / 1e3),
                both(plain),
                both(api),
                both(cli_samples),
                format!("{:.3}", subject.cpu() / 1e3),
                ratio(subject.cpu() / plain.cpu()),
            ]);
        }
    }
    table.print(&format!(
        "3. Exec stream throughput, {} MB through stdout ({STREAM_ROUNDS} interleaved rounds after {STREAM_WARMUP} warm-up; MB/s of the median and of the best round)",
        STREAM_BYTES / 1_000_000
    ));
    Ok(())
}
