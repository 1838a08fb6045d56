//! What writing a run's JSONL log costs: events per second through maxions' `JsonlLog` (one
//! `write` per line, no fsync: a crash of maxions loses nothing, a crash of the machine may lose
//! the last lines the kernel had not written back), against the same lines written with an
//! fsync after each (`sync_data`) and written in batches (a `BufWriter` flushed every 64 lines),
//! all in the same run on the same disk (a temporary directory). From the per-event cost it
//! derives what each would add to one step, which logs about four events (`step_started`, an
//! `output` batch, `step_finished`, an egress or usage line), beside the raw Engine-API exec of
//! `true` the sandbox bench measures (about 45 ms on this machine): the fsync choice is what
//! this figure is for. Run with `cargo bench --bench eventlog`; figures go to
//! `target/bench/eventlog.json`.

use std::fs::File;
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use maxions::runner::events::{Event, EventLine, EventSink, JsonlLog};
use maxions::sandbox::OutputStream;

#[path = "common/figures.rs"]
mod figures;
use figures::{Figure, Figures};

const EVENTS: u64 = 20_000;
const FSYNC_EVENTS: u64 = 500;
const PASSES: usize = 5;
const EVENTS_PER_STEP: f64 = 4.0;

fn line(seq: u64) -> EventLine {
    EventLine {
        ts: "2026-12-03T08:00:00.000Z".into(),
        run: "20261203T080000-abcdef".into(),
        seq,
        event: Event::Output {
            step: "build".into(),
            stream: OutputStream::Stdout,
            text: format!("   Compiling crate-{seq} v0.1.0 (/workspace/repo/crates/crate-{seq})\n"),
        },
    }
}

fn best_of(mut pass: impl FnMut() -> Duration) -> Duration {
    (0..PASSES).map(|_| pass()).min().unwrap_or_default()
}

fn per_second(events: u64, time: Duration) -> f64 {
    events as f64 / time.as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pass = 0;
    let mut path = || {
        pass += 1;
        dir.path().join(format!("log-{pass}.jsonl"))
    };
    let lines: Vec<EventLine> = (1..=EVENTS).map(line).collect();

    let maxions = best_of(|| {
        let log = JsonlLog::create(&path()).expect("log");
        let start = Instant::now();
        for line in &lines {
            log.emit(black_box(line));
        }
        start.elapsed()
    });
    let batched = best_of(|| {
        let mut file = BufWriter::new(File::create(path()).expect("log"));
        let start = Instant::now();
        for (i, line) in lines.iter().enumerate() {
            let mut json = serde_json::to_vec(black_box(line)).expect("json");
            json.push(b'\n');
            file.write_all(&json).expect("write");
            if i % 64 == 63 {
                file.flush().expect("flush");
            }
        }
        file.flush().expect("flush");
        start.elapsed()
    });
    let fsync = best_of(|| {
        let mut file = File::create(path()).expect("log");
        let start = Instant::now();
        for line in &lines[..FSYNC_EVENTS as usize] {
            let mut json = serde_json::to_vec(black_box(line)).expect("json");
            json.push(b'\n');
            file.write_all(&json).expect("write");
            file.sync_data().expect("fsync");
        }
        start.elapsed()
    });
    let rates = [
        (
            "eventlog.maxions",
            "maxions' JsonlLog: one write per line, no fsync",
            per_second(EVENTS, maxions),
        ),
        (
            "eventlog.fsync",
            "one write and an fsync per line",
            per_second(FSYNC_EVENTS, fsync),
        ),
        (
            "eventlog.batched",
            "batched: BufWriter flushed every 64 lines",
            per_second(EVENTS, batched),
        ),
    ];
    println!(
        "event log: best of {PASSES} passes, {EVENTS} output events ({FSYNC_EVENTS} with fsync)"
    );
    let mut figures = Figures::new("eventlog");
    let base = rates[0].2;
    for (id, what, rate) in rates {
        let per_step_ms = EVENTS_PER_STEP / rate * 1e3;
        println!("{what:<50} {rate:>10.0} events/s, {per_step_ms:>7.3} ms per step");
        figures.push(
            Figure::new(id, what, "events/s", rate)
                .against("maxions' JsonlLog", base)
                .note(&format!(
                    "{per_step_ms:.3} ms per step of {EVENTS_PER_STEP} events"
                )),
        );
    }
    figures.write();
}
