//! The Docker engines a daemon places runs on: each with a capacity, labels, its load, and
//! whether it answers. [`place`] picks the engine for a run (a free slot, every label the run
//! needs, the least loaded first); an engine that stops answering is marked down and asked
//! again with backoff, and gets no runs until it answers.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::DaemonConfig;
use crate::config::daemon::EngineConfig;
use crate::config::units::HumanDuration;
use crate::sandbox::egress_container::EgressContainer;
use crate::sandbox::peers::Peers;
use crate::sandbox::{DockerEngine, Endpoint, Engine, SandboxError};

/// The name of the engine when `maxions.yaml` lists none.
pub const DEFAULT_ENGINE: &str = "local";
/// How long the daemon waits before asking a gone engine again, at first and at most (doubling
/// in between).
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long one question to an engine may take.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How often engines that answer are asked again, so that one that stopped answering gets no
/// new runs before a run finds out the hard way.
pub const HEALTH_EVERY: Duration = Duration::from_secs(10);

/// One engine the daemon may place runs on.
pub struct Slot {
    pub name: String,
    /// Where it is, to connect again; `None` for an engine handed over ready (tests).
    endpoint: Option<Endpoint>,
    egress_network: Option<String>,
    /// The daemon's engines, which this one loads missing images from.
    peers: Option<Arc<Peers>>,
    /// `None` until it has answered once.
    engine: Option<Arc<dyn Engine>>,
    pub capacity: u32,
    pub labels: BTreeSet<String>,
    /// Runs placed on it now.
    pub running: u32,
    pub down: Option<Down>,
}

/// An engine that does not answer: since when, why, and when to ask again.
pub struct Down {
    pub since: Instant,
    pub since_utc: DateTime<Utc>,
    pub reason: String,
    pub retry_at: Instant,
    pub backoff: Duration,
}

/// What `maxions status` and the API show of an engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EngineStatus {
    pub name: String,
    /// Where it listens (`unix:///…`, `tcp://…`; empty: the local socket).
    pub host: String,
    /// `up`, or `down` (it does not answer; no run is placed on it).
    pub state: String,
    pub capacity: u32,
    /// Runs on it now.
    pub running: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Down: since when, why, and when it is asked again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_seconds: Option<u64>,
}

/// Where a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the engine at this index.
    On(usize),
    /// Engines with its labels exist, but none has a free slot and answers now: it waits.
    Wait,
    /// No engine has every label it needs: it can never start.
    Nowhere,
}

/// What [`place`] sees of an engine.
#[derive(Debug, Clone)]
pub struct Load<'a> {
    pub capacity: u32,
    pub running: u32,
    pub up: bool,
    pub labels: &'a BTreeSet<String>,
}

/// The engine for a run that needs `labels`: of those that have them all, answer and have a free
/// slot, the least loaded (the smallest share of its capacity in use; then the most free slots;
/// then the first listed).
#[must_use]
pub fn place(engines: &[Load<'_>], labels: &BTreeSet<String>) -> Placement {
    let fitting = || {
        engines
            .iter()
            .enumerate()
            .filter(|(_, e)| labels.is_subset(e.labels))
    };
    if fitting().next().is_none() {
        return Placement::Nowhere;
    }
    fitting()
        .filter(|(_, e)| e.up && e.running < e.capacity)
        .min_by(|(_, a), (_, b)| {
            // a.running / a.capacity against b.running / b.capacity, without division.
            let share = (u64::from(a.running) * u64::from(b.capacity))
                .cmp(&(u64::from(b.running) * u64::from(a.capacity)));
            share.then_with(|| (b.capacity - b.running).cmp(&(a.capacity - a.running)))
        })
        .map_or(Placement::Wait, |(index, _)| Placement::On(index))
}

/// An engine handed to [`Engines::ready`].
pub struct Ready {
    pub name: String,
    pub engine: Arc<dyn Engine>,
    pub capacity: u32,
    pub labels: Vec<String>,
}

/// The engines of one daemon.
#[derive(Default)]
pub struct Engines {
    pub slots: Vec<Slot>,
}

impl Engines {
    /// One engine handed over ready, named `local`, with `capacity` slots.
    #[must_use]
    pub fn single(engine: Arc<dyn Engine>, capacity: u32) -> Self {
        Self::ready(vec![Ready {
            name: DEFAULT_ENGINE.to_owned(),
            engine,
            capacity,
            labels: Vec::new(),
        }])
    }

    /// Engines handed over ready (for a caller that makes its own, as tests do).
    #[must_use]
    pub fn ready(engines: Vec<Ready>) -> Self {
        Self {
            slots: engines
                .into_iter()
                .map(|ready| Slot {
                    engine: Some(ready.engine),
                    ..Slot::new(ready.name, ready.capacity, ready.labels)
                })
                .collect(),
        }
    }

    /// Connects to the engines of `config` (paths relative to `dir`), or to the default one. An
    /// engine that does not answer yet is marked down and asked again later.
    ///
    /// # Errors
    /// When `maxions.yaml` lists no engines and the default one does not answer (the daemon
    /// could never run anything), its error.
    pub async fn connect(config: &DaemonConfig, dir: &Path) -> Result<Self, SandboxError> {
        if config.engines.is_empty() {
            let endpoint = Endpoint::from_env();
            let engine = DockerEngine::connect_endpoint(&endpoint).await?;
            let mut engines = Self::single(Arc::new(engine), config.concurrency());
            engines.slots[0].endpoint = Some(endpoint);
            return Ok(engines);
        }
        let mut slots = Vec::new();
        let peers = Peers::new();
        for engine in &config.engines {
            let endpoint = endpoint_of(engine, dir);
            let mut slot = Slot {
                endpoint: Some(endpoint),
                egress_network: engine.egress_network.clone(),
                peers: Some(Arc::clone(&peers)),
                ..Slot::new(
                    engine.name.clone(),
                    engine.capacity(),
                    engine.labels.iter().map(|l| l.0.clone()),
                )
            };
            match slot.connect().await {
                Ok(()) => tracing::info!(
                    engine = %slot.name,
                    host = %slot.host(),
                    capacity = slot.capacity,
                    "engine ready"
                ),
                Err(error) => {
                    tracing::warn!(engine = %slot.name, "{error}; no run is placed on it until it answers (asked again in {})", HumanDuration(RETRY_FIRST));
                    slot.mark_down(error.to_string());
                }
            }
            slots.push(slot);
        }
        Ok(Self { slots })
    }

    /// Takes up capacities and labels of an edited `maxions.yaml`. Engines added, removed or
    /// moved to another host take effect when the daemon restarts; says so.
    pub fn reconfigure(&mut self, config: &DaemonConfig, dir: &Path) {
        if config.engines.is_empty() {
            if let [slot] = self.slots.as_mut_slice()
                && slot.name == DEFAULT_ENGINE
            {
                slot.capacity = config.concurrency();
                slot.labels.clear();
                return;
            }
            tracing::warn!(
                "maxions.yaml: a change of `engines` takes effect when the daemon restarts"
            );
            return;
        }
        let mut restart = config.engines.len() != self.slots.len();
        for engine in &config.engines {
            let Some(slot) = self.slots.iter_mut().find(|s| s.name == engine.name) else {
                restart = true;
                continue;
            };
            if slot.endpoint.as_ref() != Some(&endpoint_of(engine, dir)) {
                restart = true;
            }
            slot.capacity = engine.capacity();
            slot.labels = engine.labels.iter().map(|l| l.0.clone()).collect();
        }
        if restart {
            tracing::warn!(
                "maxions.yaml: engines added, removed or moved take effect when the daemon restarts; capacities and labels apply now"
            );
        }
    }

    /// Where a run that needs `labels` goes now.
    #[must_use]
    pub fn place(&self, labels: &BTreeSet<String>) -> Placement {
        let loads: Vec<Load<'_>> = self
            .slots
            .iter()
            .map(|s| Load {
                capacity: s.capacity,
                running: s.running,
                up: s.down.is_none() && s.engine.is_some(),
                labels: &s.labels,
            })
            .collect();
        place(&loads, labels)
    }

    #[must_use]
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    /// The engines that answer, with their names.
    pub fn up(&self) -> impl Iterator<Item = (&str, &Arc<dyn Engine>)> {
        self.slots
            .iter()
            .filter(|s| s.down.is_none())
            .filter_map(|s| Some((s.name.as_str(), s.engine.as_ref()?)))
    }

    /// When the next down engine is to be asked again.
    #[must_use]
    pub fn next_retry(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| s.down.as_ref().map(|d| d.retry_at))
            .min()
    }

    /// Whether some engine answers and has a free slot.
    #[must_use]
    pub fn any_free(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.down.is_none() && s.engine.is_some() && s.running < s.capacity)
    }

    /// Whether every engine is down.
    #[must_use]
    pub fn all_down(&self) -> bool {
        self.slots.iter().all(|s| s.down.is_some())
    }

    /// What status shows.
    #[must_use]
    pub fn status(&self) -> Vec<EngineStatus> {
        let now = Instant::now();
        self.slots
            .iter()
            .map(|s| EngineStatus {
                name: s.name.clone(),
                host: s.host(),
                state: if s.down.is_some() { "down" } else { "up" }.to_owned(),
                capacity: s.capacity,
                running: s.running,
                labels: s.labels.iter().cloned().collect(),
                down_since: s.down.as_ref().map(|d| d.since_utc),
                reason: s.down.as_ref().map(|d| d.reason.clone()),
                retry_in_seconds: s
                    .down
                    .as_ref()
                    .map(|d| d.retry_at.saturating_duration_since(now).as_secs()),
            })
            .collect()
    }
}

impl Slot {
    /// An engine not reached yet, with no address: the callers add what they have.
    fn new(name: String, capacity: u32, labels: impl IntoIterator<Item = String>) -> Self {
        Self {
            name,
            endpoint: None,
            egress_network: None,
            peers: None,
            engine: None,
            capacity,
            labels: labels.into_iter().collect(),
            running: 0,
            down: None,
        }
    }

    /// The engine, when it has answered once.
    #[must_use]
    pub fn engine(&self) -> Option<&Arc<dyn Engine>> {
        self.engine.as_ref()
    }

    #[must_use]
    pub fn host(&self) -> String {
        self.endpoint
            .as_ref()
            .map(|e| e.host.clone())
            .unwrap_or_default()
    }

    /// Connects (the first time) or pings it.
    async fn connect(&mut self) -> Result<(), SandboxError> {
        if let Some(engine) = &self.engine {
            return engine.ping().await;
        }
        let Some(endpoint) = &self.endpoint else {
            return Err(SandboxError::EngineUnreachable(
                "no address to reach it by".into(),
            ));
        };
        let mut engine = DockerEngine::connect_endpoint(endpoint).await?;
        if let Some(peers) = &self.peers {
            let builds = same_engine(endpoint, &Endpoint::from_env());
            engine = engine.with_peers(&self.name, Arc::clone(peers), builds);
        }
        // An engine that does not share this machine's files needs the proxy beside the
        // sandbox; so does a Unix socket forwarded from another machine, which says so by
        // naming the network its proxies join.
        if !endpoint.is_local() || self.egress_network.is_some() {
            engine = engine.with_egress_container(EgressContainer {
                network: self
                    .egress_network
                    .clone()
                    .unwrap_or_else(|| EgressContainer::default().network),
                ..EgressContainer::default()
            });
        }
        self.engine = Some(Arc::new(engine));
        Ok(())
    }

    /// Marks it down (once): no run is placed on it until it answers.
    pub fn mark_down(&mut self, reason: String) {
        if self.down.is_none() {
            self.down = Some(Down {
                since: Instant::now(),
                since_utc: Utc::now(),
                reason,
                retry_at: Instant::now() + RETRY_FIRST,
                backoff: RETRY_FIRST,
            });
        }
    }

    /// Asks it whether it answers (within [`PING_TIMEOUT`]); returns whether it came back (it
    /// was down and answers now), and marks it down when it does not answer.
    pub async fn ask(&mut self) -> bool {
        let answer = tokio::time::timeout(PING_TIMEOUT, self.connect()).await;
        let error = match answer {
            Ok(Ok(())) => {
                let Some(down) = self.down.take() else {
                    return false;
                };
                tracing::info!(
                    engine = %self.name,
                    down_for = %HumanDuration(down.since.elapsed()),
                    "the Docker engine answers again; runs are placed on it again"
                );
                return true;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!(
                "the Docker engine did not answer within {}",
                HumanDuration(PING_TIMEOUT)
            ),
        };
        match self.down.as_mut() {
            Some(down) => {
                down.backoff = (down.backoff * 2).min(RETRY_MAX);
                down.retry_at = Instant::now() + down.backoff;
                down.reason.clone_from(&error);
                tracing::warn!(engine = %self.name, "{error}; still down, asked again in {}", HumanDuration(down.backoff));
            }
            None => {
                tracing::warn!(engine = %self.name, "{error}; marked down: no run is placed on it until it answers (asked again in {})", HumanDuration(RETRY_FIRST));
                self.mark_down(error);
            }
        }
        false
    }
}

/// Whether two endpoints name one engine (the local socket by default or by its path).
fn same_engine(a: &Endpoint, b: &Endpoint) -> bool {
    let host = |e: &Endpoint| {
        if e.host.is_empty() {
            "unix:///var/run/docker.sock".to_owned()
        } else {
            e.host.trim_end_matches('/').to_owned()
        }
    };
    host(a) == host(b)
}

/// The endpoint of a configured engine, its `tls` directory relative to `dir`.
#[must_use]
pub fn endpoint_of(engine: &EngineConfig, dir: &Path) -> Endpoint {
    match &engine.host {
        Some(host) => Endpoint {
            host: host.clone(),
            tls: engine.tls.as_ref().map(|t| dir.join(t)),
        },
        None => Endpoint::from_env(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    fn load(capacity: u32, running: u32, up: bool, labels: &BTreeSet<String>) -> Load<'_> {
        Load {
            capacity,
            running,
            up,
            labels,
        }
    }

    #[test]
    fn the_least_loaded_engine_with_a_free_slot_takes_the_run() {
        let none = labels(&[]);
        // 1 of 2 is half full; 1 of 4 a quarter: the second.
        assert_eq!(
            place(&[load(2, 1, true, &none), load(4, 1, true, &none)], &none),
            Placement::On(1)
        );
        // Equal shares: the one with more free slots, then the first listed.
        assert_eq!(
            place(&[load(2, 1, true, &none), load(4, 2, true, &none)], &none),
            Placement::On(1)
        );
        assert_eq!(
            place(&[load(2, 0, true, &none), load(2, 0, true, &none)], &none),
            Placement::On(0)
        );
        // Full, or down: not used.
        assert_eq!(
            place(&[load(2, 2, true, &none), load(9, 0, false, &none)], &none),
            Placement::Wait
        );
        assert_eq!(
            place(&[load(2, 2, true, &none), load(9, 8, true, &none)], &none),
            Placement::On(1)
        );
    }

    #[test]
    fn a_run_goes_only_where_every_label_it_needs_is() {
        let none = labels(&[]);
        let gpu = labels(&["gpu"]);
        let both = labels(&["gpu", "large"]);
        let engines = [
            load(4, 0, true, &none),
            load(1, 0, true, &gpu),
            load(1, 0, true, &both),
        ];
        assert_eq!(place(&engines, &labels(&["gpu"])), Placement::On(1));
        assert_eq!(
            place(&engines, &labels(&["large", "gpu"])),
            Placement::On(2)
        );
        assert_eq!(place(&engines, &labels(&["arm"])), Placement::Nowhere);
        // The only engine with the label is full: the run waits, it does not go elsewhere.
        let engines = [load(4, 0, true, &none), load(1, 1, true, &gpu)];
        assert_eq!(place(&engines, &labels(&["gpu"])), Placement::Wait);
        // A run that needs nothing may use a labelled engine.
        let engines = [load(1, 1, true, &none), load(1, 0, true, &gpu)];
        assert_eq!(place(&engines, &none), Placement::On(1));
    }

    #[test]
    fn a_down_engine_is_asked_again_less_and_less_often() {
        let mut slot = Slot::new("far".into(), 1, []);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            assert!(!slot.ask().await);
            let first = slot.down.as_ref().expect("marked down").backoff;
            assert_eq!(first, RETRY_FIRST);
            assert!(!slot.ask().await);
            assert!(!slot.ask().await);
            let down = slot.down.as_ref().unwrap();
            assert_eq!(down.backoff, RETRY_FIRST * 4);
            assert!(down.reason.contains("no address"), "{}", down.reason);
        });
        let engines = Engines { slots: vec![slot] };
        assert!(engines.all_down());
        assert_eq!(engines.place(&BTreeSet::new()), Placement::Wait);
        let status = &engines.status()[0];
        assert_eq!(status.state, "down");
        assert!(status.retry_in_seconds.is_some_and(|s| s <= 4));
    }
}
