//! `/metrics` in Prometheus' text format (version 0.0.4): a few dozen lines, so written here
//! rather than with a metrics crate.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ApiState;
use super::hub::BUCKETS;

/// The daemon's counters and gauges.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
              (status = 401, body = super::error::ErrorBody)))]
pub async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let view = state.0.daemon.now();
    let mut out = String::new();
    let gauge = |out: &mut String, name: &str, help: &str, value: usize| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    let _ = writeln!(
        out,
        "# HELP maxions_build_info The running maxions' version.\n# TYPE maxions_build_info gauge\nmaxions_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    gauge(
        &mut out,
        "maxions_queue_depth",
        "Runs waiting for a slot.",
        view.queue.len(),
    );
    gauge(
        &mut out,
        "maxions_runs_running",
        "Runs executing now.",
        view.running.len(),
    );
    gauge(
        &mut out,
        "maxions_concurrency",
        "How many runs may execute at once.",
        view.config.concurrency() as usize,
    );
    gauge(
        &mut out,
        "maxions_scheduled_tasks",
        "Task files with a schedule.",
        view.scheduled.len(),
    );
    gauge(
        &mut out,
        "maxions_stream_clients",
        "Live event streams connected.",
        state.0.hub.clients.load(Ordering::Relaxed),
    );
    type Value = fn(&crate::daemon::engines::EngineStatus) -> u32;
    let per_engine: [(&str, &str, Value); 3] = [
        (
            "maxions_engine_up",
            "Whether the engine answers (1) or is down (0).",
            |e| u32::from(e.state == "up"),
        ),
        ("maxions_engine_runs", "Runs on the engine now.", |e| {
            e.running
        }),
        (
            "maxions_engine_capacity",
            "Runs the engine takes at once.",
            |e| e.capacity,
        ),
    ];
    for (name, help, value) in per_engine {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for engine in &view.engines {
            let _ = writeln!(
                out,
                "{name}{{engine=\"{}\"}} {}",
                label(&engine.name),
                value(engine)
            );
        }
    }
    let counters = match state.0.hub.metrics.lock() {
        Ok(counters) => counters,
        Err(poisoned) => poisoned.into_inner(),
    };
    let _ = writeln!(
        out,
        "# HELP maxions_runs_finished_total Runs finished since the daemon started, by status.\n# TYPE maxions_runs_finished_total counter"
    );
    for (status, n) in &counters.finished {
        let _ = writeln!(
            out,
            "maxions_runs_finished_total{{status=\"{status}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP maxions_step_duration_seconds How long steps took, by step kind.\n# TYPE maxions_step_duration_seconds histogram"
    );
    for (kind, histogram) in &counters.steps {
        let kind = label(kind);
        for (bound, n) in BUCKETS.iter().zip(histogram.buckets) {
            let _ = writeln!(
                out,
                "maxions_step_duration_seconds_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "maxions_step_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}\nmaxions_step_duration_seconds_sum{{kind=\"{kind}\"}} {}\nmaxions_step_duration_seconds_count{{kind=\"{kind}\"}} {}",
            histogram.count, histogram.sum, histogram.count
        );
    }
    let _ = writeln!(
        out,
        "# HELP maxions_agent_tokens_total Tokens the agents reported, by direction.\n# TYPE maxions_agent_tokens_total counter\nmaxions_agent_tokens_total{{direction=\"input\"}} {}\nmaxions_agent_tokens_total{{direction=\"output\"}} {}",
        counters.input_tokens, counters.output_tokens
    );
    let _ = writeln!(
        out,
        "# HELP maxions_agent_cost_usd_total What the agents' model calls cost, in US dollars.\n# TYPE maxions_agent_cost_usd_total counter\nmaxions_agent_cost_usd_total {}",
        counters.cost_usd
    );
    let _ = writeln!(
        out,
        "# HELP maxions_events_total Run events recorded since the daemon started.\n# TYPE maxions_events_total counter\nmaxions_events_total {}",
        counters.events
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

/// A label value escaped as the format wants (`\`, `"` and newlines).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
