//! The one driver of the fuzz targets (`fuzz_*` tests, in the library's unit tests and in
//! `tests/it/fuzz.rs`, which includes this file): a short proptest run in a normal `cargo test`,
//! and a time-bounded one for `scripts/fuzz.sh`.
//!
//! - `PROPTEST_CASES` sets the cases of one batch (default: the target's own, small count);
//! - `FUZZ_SECONDS` (unset in `cargo test`) makes the target run batch after batch, each with a
//!   fresh random seed, until that many seconds have passed;
//!
//! Either way the target prints `fuzz <name>: <n> executions in <s>s` (seen with `--nocapture`).
//! A failure panics with proptest's shrunk input, to be kept as a named regression test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// Runs `test` on values from `strategy` as the environment asks (see the module docs).
///
/// # Panics
/// When `test` fails or panics for some value: the message holds the shrunk value.
pub fn fuzz<S>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let cases = env("PROPTEST_CASES")
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases)
        .max(1);
    let budget = env("FUZZ_SECONDS")
        .and_then(|v| v.parse::<f64>().ok())
        .map(Duration::from_secs_f64);
    let executions = AtomicU64::new(0);
    let counted = |value: S::Value| {
        executions.fetch_add(1, Ordering::Relaxed);
        test(value)
    };
    let started = Instant::now();
    loop {
        let config = Config {
            cases,
            failure_persistence: None,
            // The budget bounds the whole run; one batch must not shrink for minutes.
            max_shrink_time: 60_000,
            ..Config::default()
        };
        match TestRunner::new(config).run(&strategy, counted) {
            Ok(()) => {}
            Err(TestError::Fail(why, value)) => {
                panic!("fuzz {name} failed: {why}\nshrunk input: {value:#?}")
            }
            Err(TestError::Abort(why)) => panic!("fuzz {name} aborted: {why}"),
        }
        if budget.is_none_or(|budget| started.elapsed() >= budget) {
            break;
        }
    }
    eprintln!(
        "fuzz {name}: {} executions in {:.1}s",
        executions.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}
