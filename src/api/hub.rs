//! Where the daemon's runs send their events (after their logs have them): each line is
//! serialised once and broadcast to the live streams, and counted for `/metrics`. A stream that
//! falls behind the broadcast reads the rest from the log, so the broadcast may drop lines.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::broadcast;

use crate::runner::{Event, EventLine, EventSink};

/// How many lines the broadcast holds for a slow stream before it must read the log.
const BACKLOG: usize = 4096;

/// One event line as the streams send it.
#[derive(Debug)]
pub struct Published {
    pub run: String,
    pub seq: u64,
    /// The line's JSON, as in the log.
    pub json: String,
    /// Set on `run_finished`: the run's status.
    pub finished: Option<String>,
}

pub struct Hub {
    lines: broadcast::Sender<std::sync::Arc<Published>>,
    pub(super) metrics: Mutex<Counters>,
    pub(super) clients: AtomicUsize,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            lines: broadcast::Sender::new(BACKLOG),
            metrics: Mutex::default(),
            clients: AtomicUsize::new(0),
        }
    }
}

impl Hub {
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<std::sync::Arc<Published>> {
        self.lines.subscribe()
    }

    /// How many live streams are connected.
    #[must_use]
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

impl EventSink for Hub {
    fn emit(&self, line: &EventLine) {
        let finished = match &line.event {
            Event::RunFinished { status, .. } => Some(
                serde_json::to_value(status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ),
            _ => None,
        };
        if let Ok(mut counters) = self.metrics.lock() {
            counters.observe(line);
        }
        // Nobody listening is the common case, and not an error.
        if self.lines.receiver_count() == 0 {
            return;
        }
        let Ok(json) = serde_json::to_string(line) else {
            return;
        };
        let _ = self.lines.send(std::sync::Arc::new(Published {
            run: line.run.clone(),
            seq: line.seq,
            json,
            finished,
        }));
    }
}

/// The upper bounds (seconds) of the step-duration histogram's buckets.
pub(super) const BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// What `/metrics` counts from the events since the daemon started.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Runs finished, by status.
    pub finished: BTreeMap<String, u64>,
    /// Step durations by step kind: bucket counts (cumulative when rendered), count, sum.
    pub steps: BTreeMap<String, Histogram>,
    /// The kind of each running step, by (run, step).
    kinds: HashMap<(String, String), String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub events: u64,
}

#[derive(Debug, Default, Clone)]
pub(super) struct Histogram {
    pub buckets: [u64; BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Counters {
    fn observe(&mut self, line: &EventLine) {
        self.events += 1;
        match &line.event {
            Event::StepStarted { step, kind } => {
                self.kinds
                    .insert((line.run.clone(), step.clone()), kind.clone());
            }
            Event::StepFinished {
                step, duration_ms, ..
            } => {
                let kind = self
                    .kinds
                    .remove(&(line.run.clone(), step.clone()))
                    .unwrap_or_else(|| "unknown".to_owned());
                #[allow(clippy::cast_precision_loss)]
                let seconds = *duration_ms as f64 / 1000.0;
                let histogram = self.steps.entry(kind).or_default();
                for (bucket, bound) in histogram.buckets.iter_mut().zip(BUCKETS) {
                    if seconds <= bound {
                        *bucket += 1;
                    }
                }
                histogram.count += 1;
                histogram.sum += seconds;
            }
            Event::AgentFinished { usage, .. } => {
                self.input_tokens += usage.input_tokens;
                self.output_tokens += usage.output_tokens;
                self.cost_usd += usage.cost_usd.unwrap_or(0.0);
            }
            Event::RunFinished { status, .. } => {
                let status = serde_json::to_value(status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                *self.finished.entry(status).or_default() += 1;
                self.kinds.retain(|(run, _), _| run != &line.run);
            }
            _ => {}
        }
    }
}
