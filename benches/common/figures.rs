//! What a benchmark measured, as JSON that `benches/report.py` turns into BENCHMARKS.md and its
//! plots and `benches/compare.py` compares between two runs. Each bench includes this file
//! (`#[path = "common/figures.rs"] mod figures;`) and writes `<dir>/<bench>.json`, where `<dir>`
//! is `$MAXIONS_BENCH_DIR` or `target/bench`.
//!
//! A figure is one number with its unit; most have a baseline measured in the same run and the
//! ratio between the two, always as a cost: above 1 is slower than the baseline (time over
//! time, or for a rate, a unit with a `/`, the baseline's rate over this one). Some have a
//! target. A curve (`series`) is a set of figures whose `x` is what varied (files, secrets,
//! runs at once).

#![allow(dead_code)] // each bench uses a part of it

use std::path::PathBuf;

use serde::Serialize;

/// A target a figure must meet.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// The ratio to the baseline is at most this.
    RatioAtMost { value: f64 },
    /// The figure is at most this (in its unit).
    AtMost { value: f64 },
    /// The figure is at least this (in its unit).
    AtLeast { value: f64 },
    /// The figure exceeds the baseline by at most this (in its unit).
    OverBaselineAtMost { value: f64 },
}

impl Target {
    fn met(self, value: f64, baseline: Option<f64>, ratio: Option<f64>) -> Option<bool> {
        Some(match self {
            Self::RatioAtMost { value: most } => ratio? <= most,
            Self::AtMost { value: most } => value <= most,
            Self::AtLeast { value: least } => value >= least,
            Self::OverBaselineAtMost { value: most } => value - baseline? <= most,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Stable across runs: what `compare.py` matches on (e.g. `step.true`).
    pub id: String,
    /// For a human: what was measured.
    pub what: String,
    pub unit: String,
    pub value: f64,
    /// For a curve: what varied, and its value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_what: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    /// Why a figure is what it is, or why its target is not met.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Figure {
    pub fn new(id: &str, what: &str, unit: &str, value: f64) -> Self {
        Self {
            id: id.to_owned(),
            what: what.to_owned(),
            unit: unit.to_owned(),
            value,
            series: None,
            x: None,
            baseline_what: None,
            baseline: None,
            ratio: None,
            target: None,
            met: None,
            note: None,
        }
    }

    /// Against a baseline in the same unit, measured in the same run.
    #[must_use]
    pub fn against(mut self, what: &str, baseline: f64) -> Self {
        self.baseline_what = Some(what.to_owned());
        self.baseline = Some(baseline);
        let rate = self.unit.contains('/');
        self.ratio = match rate {
            false if baseline > 0.0 => Some(self.value / baseline),
            true if self.value > 0.0 => Some(baseline / self.value),
            _ => None,
        };
        self.met = self
            .target
            .and_then(|t| t.met(self.value, self.baseline, self.ratio));
        self
    }

    #[must_use]
    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self.met = target.met(self.value, self.baseline, self.ratio);
        self
    }

    /// A point of the curve `series` at `x`.
    #[must_use]
    pub fn at(mut self, series: &str, x: f64) -> Self {
        self.series = Some(series.to_owned());
        self.x = Some(x);
        self
    }

    #[must_use]
    pub fn note(mut self, note: &str) -> Self {
        self.note = Some(note.to_owned());
        self
    }
}

/// The figures of one bench, written when it ends.
pub struct Figures {
    bench: String,
    figures: Vec<Figure>,
}

impl Figures {
    pub fn new(bench: &str) -> Self {
        Self {
            bench: bench.to_owned(),
            figures: Vec::new(),
        }
    }

    pub fn push(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    /// Writes `<dir>/<bench>.json`; says where, or why it could not.
    pub fn write(&self) {
        let dir = std::env::var_os("MAXIONS_BENCH_DIR").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"),
            PathBuf::from,
        );
        let path = dir.join(format!("{}.json", self.bench));
        let json = serde_json::json!({ "bench": self.bench, "figures": self.figures });
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap_or_default())
        });
        match written {
            Ok(()) => println!("figures: {}", path.display()),
            Err(error) => eprintln!("cannot write {}: {error}", path.display()),
        }
    }
}
