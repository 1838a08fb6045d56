//! How code outside the daemon's loop (the HTTP API) sees and steers it: a snapshot of its state,
//! republished after every change, and typed commands answered by the loop. The loop stays the
//! only owner of the state; a reader never waits on it and never sees half a change.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};

use super::state::{Active, Entry};
use crate::config::DaemonConfig;
use crate::config::validate::Validation;

/// What the daemon looks like now.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Waiting to run, oldest first; each already has its run id.
    pub queue: Vec<Entry>,
    pub running: Vec<Active>,
    pub scheduled: Vec<Scheduled>,
    /// The config in force (the last good `maxions.yaml`).
    pub config: Arc<DaemonConfig>,
    /// The engines runs are placed on: state, capacity, load.
    pub engines: Vec<super::engines::EngineStatus>,
    /// The directory of `maxions.yaml` (what the config's paths are relative to).
    pub project: PathBuf,
    /// The tasks folder, canonical.
    pub tasks_dir: PathBuf,
    /// Bumped at every change, so that a reader can tell one view from the next.
    pub version: u64,
}

impl View {
    /// The queued or running run with this id.
    #[must_use]
    pub fn active(&self, id: &str) -> Option<Activity<'_>> {
        if let Some(active) = self.running.iter().find(|a| a.run == id) {
            return Some(Activity::Running(active));
        }
        self.queue.iter().find(|e| e.id == id).map(Activity::Queued)
    }
}

/// A run the daemon has not finished.
#[derive(Debug, Clone, Copy)]
pub enum Activity<'a> {
    Queued(&'a Entry),
    Running(&'a Active),
}

/// A task with a `schedule:` and its next slots.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub task: PathBuf,
    pub expr: String,
    pub timezone: chrono_tz::Tz,
    /// The next slots, soonest first (at most a few).
    pub next: Vec<DateTime<Utc>>,
}

/// Why the daemon did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no queued or running run has the id `{0}`")]
    NotActive(String),
    #[error("run `{0}` is still {1}: cancel it first (POST /maxions/{0}/kill), then delete it")]
    Busy(String, &'static str),
    #[error("the task file {} is gone: there is nothing to run again", .0.display())]
    TaskGone(PathBuf),
    #[error("the task file {} is not valid now; fix it and try again", .0.display())]
    Invalid(PathBuf, Box<Validation>),
    #[error("the daemon is stopping and starts no new runs")]
    Stopping,
}

/// What a submitted task file became.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// Queued: the run's id.
    Queued(String),
    /// A scheduled task: it runs at its slots.
    Scheduled,
    /// The daemon read it and did not queue it (said why in its log).
    Ignored(String),
}

/// A request to the loop, with where its answer goes.
#[derive(Debug)]
pub enum Command {
    /// Read this new task file now (rather than when the watcher says it settled).
    Submit {
        task: PathBuf,
        reply: oneshot::Sender<Result<Submitted, Refusal>>,
    },
    /// Cancel the queued or running run `run`.
    Kill {
        run: String,
        why: String,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    /// Queue `task` again (a run of it, `after`, is being re-run); answers the new run's id.
    Rerun {
        task: PathBuf,
        after: String,
        reply: oneshot::Sender<Result<String, Refusal>>,
    },
    /// The API deletes run `run`'s records: refused while it is queued or running, else forgotten.
    Forget {
        run: String,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
}

/// A handle on a running daemon: its view and its commands. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    pub view: watch::Receiver<Arc<View>>,
    pub commands: mpsc::Sender<Command>,
}

impl Handle {
    /// Sends a command built around its reply channel and waits for the answer.
    ///
    /// # Errors
    /// [`Refusal::Stopping`] when the loop is gone.
    pub async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, Refusal>>) -> Command,
    ) -> Result<T, Refusal> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(command(tx))
            .await
            .map_err(|_| Refusal::Stopping)?;
        rx.await.map_err(|_| Refusal::Stopping)?
    }

    /// The view now.
    #[must_use]
    pub fn now(&self) -> Arc<View> {
        Arc::clone(&self.view.borrow())
    }
}
