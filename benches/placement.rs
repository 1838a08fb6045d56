//! What placing a run on an engine costs the daemon: `engines::place` (labels, free slots,
//! least loaded) over 1, 2, 10 and 100 engines, against `queue::pick` choosing the run itself
//! from a queue of 100 with 6 running, the work the daemon did per run before there were
//! engines. Both are in-memory; a run's start costs hundreds of milliseconds (sandbox create),
//! so this is the placement overhead per run. Run with `cargo bench --bench placement`;
//! figures go to `target/bench/placement.json`.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::Utc;
use maxions::daemon::engines::{Load, place};
use maxions::daemon::queue::pick;
use maxions::daemon::state::{Active, Entry};

#[path = "common/figures.rs"]
mod figures;
use figures::{Figure, Figures};

const CALLS: u32 = 200_000;
const PASSES: usize = 5;

fn best_of(mut pass: impl FnMut() -> Duration) -> Duration {
    (0..PASSES).map(|_| pass()).min().unwrap_or_default()
}

fn entry(seq: u64) -> Entry {
    Entry {
        id: format!("run-{seq}"),
        seq,
        task: format!("/tasks/t{seq}.yaml").into(),
        hash: String::new(),
        repo: format!("file:///repos/r{}", seq % 7),
        trigger: String::new(),
        queued_at: Utc::now(),
        attempt: 1,
    }
}

fn main() {
    let queue: Vec<Entry> = (0..100).map(entry).collect();
    let running: Vec<Active> = (100..106)
        .map(|seq| Active {
            entry: entry(seq),
            run: format!("run-{seq}"),
            log: "x".into(),
            branch: "b".into(),
            started_at: Utc::now(),
            engine: String::new(),
        })
        .collect();
    let per_call = |time: Duration| time.as_secs_f64() * 1e9 / f64::from(CALLS);
    let pick_ns = per_call(best_of(|| {
        let start = Instant::now();
        for _ in 0..CALLS / 100 {
            black_box(pick(black_box(&queue), black_box(&running)));
        }
        start.elapsed() * 100
    }));
    println!("queue::pick, 100 queued, 6 running: {pick_ns:.0} ns");
    let mut figures = Figures::new("placement");
    let none = BTreeSet::new();
    let large: BTreeSet<String> = ["large".to_owned()].into();
    for n in [1u32, 2, 10, 100] {
        let labels: Vec<BTreeSet<String>> = (0..n)
            .map(|i| {
                if i % 2 == 1 {
                    large.clone()
                } else {
                    none.clone()
                }
            })
            .collect();
        let loads: Vec<Load<'_>> = (0..n as usize)
            .map(|i| Load {
                capacity: 3 + (i as u32 % 4),
                running: i as u32 % 3,
                up: i % 5 != 4,
                labels: &labels[i],
            })
            .collect();
        let wants = if n > 1 { &large } else { &none };
        let ns = per_call(best_of(|| {
            let start = Instant::now();
            for _ in 0..CALLS {
                black_box(place(black_box(&loads), black_box(wants)));
            }
            start.elapsed()
        }));
        println!("engines::place over {n:>3} engines: {ns:>8.1} ns per run");
        figures.push(
            Figure::new(
                &format!("placement.{n}"),
                &format!("placing a run on one of {n} engines"),
                "ns",
                ns,
            )
            .against("queue::pick from 100 queued", pick_ns)
            .at("placement: engines", f64::from(n)),
        );
    }
    figures.write();
}
