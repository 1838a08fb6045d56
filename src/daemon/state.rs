//! The daemon's state: what it knows of each task file, what waits, what runs, what ended.
//! One JSON file in the state dir, written atomically (a temporary file, fsync, rename, fsync
//! of the directory) after every change, so that `kill -9` at any moment loses nothing; and one
//! lock, so that two daemons never share a state dir.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::runner::RunStatus;

/// The state file's format; a newer one is refused rather than misread.
pub const VERSION: u32 = 1;
/// How many ended runs `maxions status` shows.
pub const RECENT: usize = 100;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Every task file the daemon has seen, by path.
    #[serde(default)]
    pub tasks: BTreeMap<PathBuf, TaskState>,
    /// Waiting to run, oldest first.
    #[serde(default)]
    pub queue: Vec<Entry>,
    /// Running now (or, in a file read at start-up, running when the daemon died).
    #[serde(default)]
    pub running: Vec<Active>,
    /// Ended, newest last.
    #[serde(default)]
    pub recent: VecDeque<Done>,
    /// The next [`Entry::seq`].
    #[serde(default)]
    pub next_seq: u64,
    /// The engines as the daemon last saw them, for `maxions status`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engines: Vec<super::engines::EngineStatus>,
}

/// What the daemon knows of one task file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    /// The content hash last seen (see [`content_hash`]).
    pub hash: String,
    /// The content last run, or recorded as invalid: a one-shot task with this hash does not run
    /// again, not even after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled: Option<String>,
    /// A scheduled task: every slot up to this instant has been handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_slot: Option<DateTime<Utc>>,
    /// The content was invalid: it is read again when a blueprint or `maxions.yaml` changes
    /// (the problem may have been there).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invalid: bool,
}

/// A run waiting for a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The id its run will have: a queued run is already addressable (the API cancels it, a
    /// client follows its stream before it starts). Assigned by [`State::enqueue`]; a state
    /// file from before ids were assigned early gets a fresh one.
    #[serde(default = "crate::runner::new_run_id")]
    pub id: String,
    /// Order of arrival.
    pub seq: u64,
    pub task: PathBuf,
    /// The content hash the entry was made for.
    pub hash: String,
    /// The repository (its clone URL), for fairness.
    pub repo: String,
    /// Why it runs, for the run's log.
    pub trigger: String,
    pub queued_at: DateTime<Utc>,
    /// 1 for the first try; more after interruptions.
    #[serde(default = "one")]
    pub attempt: u32,
}

fn one() -> u32 {
    1
}

/// A run in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Active {
    #[serde(flatten)]
    pub entry: Entry,
    pub run: String,
    pub log: PathBuf,
    pub branch: String,
    pub started_at: DateTime<Utc>,
    /// The engine it was placed on (see `engines` in maxions.yaml).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine: String,
}

/// A run that ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub run: String,
    pub task: PathBuf,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub finished_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<String>,
}

impl Active {
    /// Its record once it ended, now.
    #[must_use]
    pub fn done(
        &self,
        status: RunStatus,
        reason: Option<String>,
        pull_request: Option<String>,
    ) -> Done {
        Done {
            run: self.run.clone(),
            task: self.entry.task.clone(),
            status,
            reason,
            finished_at: Utc::now(),
            log: Some(self.log.clone()),
            pull_request,
        }
    }
}

impl State {
    /// Records an ended run, keeping the newest [`RECENT`].
    pub fn finished(&mut self, done: Done) {
        self.recent.push_back(done);
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// A new queue entry, in arrival order.
    pub fn enqueue(&mut self, mut entry: Entry) {
        entry.seq = self.next_seq;
        self.next_seq += 1;
        if entry.id.is_empty() {
            entry.id = crate::runner::new_run_id();
        }
        self.queue.push(entry);
    }
}

pub use crate::runner::result::content_hash;

/// Why the daemon cannot use its state dir. These stop the daemon: running without its state
/// would run tasks twice or lose them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "another maxions daemon{} is using the state dir {}; stop it first, or give this one another `state_dir` in maxions.yaml",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        dir.display()
    )]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("cannot {action} {}: {source}; check that the daemon's user may write there", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{} was written by a newer maxions (state format {found}, this one reads {VERSION}); run that version, or move the file away to start afresh",
        path.display()
    )]
    Newer { path: PathBuf, found: u32 },
}

/// The state dir, locked for this process (the lock goes with the process, however it ends).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    /// Creates the state dir (0700) if needed, takes its lock and reads the state. A state file
    /// that cannot be parsed is moved aside (and said so) rather than trusted or deleted.
    ///
    /// # Errors
    /// [`StoreError`]: the lock is held, the dir is not writable, the file is from a newer maxions.
    pub fn open(dir: &Path) -> Result<(Self, State), StoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create the state dir", dir))?;
        // Runs' scratch files and mirrors live here: nobody else reads them.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restrict the state dir", dir))?;
        let lock_path = dir.join("daemon.lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = lock.read_to_string(&mut text);
                return Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(StoreError::Io {
                    action: "lock",
                    path: lock_path,
                    source,
                });
            }
        }
        // The holder's pid, for the message another daemon gives.
        lock.set_len(0)
            .and_then(|()| lock.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(io("write", &lock_path))?;
        let store = Self {
            dir: dir.to_path_buf(),
            _lock: lock,
        };
        let state = store.read()?;
        Ok((store, state))
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    #[must_use]
    pub fn state_path(&self) -> PathBuf {
        state_path(&self.dir)
    }

    fn read(&self) -> Result<State, StoreError> {
        let path = self.state_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(State {
                    version: VERSION,
                    ..State::default()
                });
            }
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        match serde_json::from_slice::<State>(&bytes) {
            Ok(state) if state.version > VERSION => Err(StoreError::Newer {
                path,
                found: state.version,
            }),
            Ok(state) => Ok(state),
            Err(error) => {
                let aside = path.with_extension(format!(
                    "json.unreadable-{}",
                    Utc::now().format("%Y%m%dT%H%M%S")
                ));
                std::fs::rename(&path, &aside).map_err(|source| StoreError::Io {
                    action: "move aside the unreadable",
                    path: path.clone(),
                    source,
                })?;
                tracing::error!(
                    %error,
                    moved_to = %aside.display(),
                    "the daemon's state file is unreadable: starting afresh (task files already run once may run again)"
                );
                Ok(State {
                    version: VERSION,
                    ..State::default()
                })
            }
        }
    }

    /// Writes the state atomically and durably.
    ///
    /// # Errors
    /// When it cannot be written (the old file then stays as it was).
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let path = self.state_path();
        let partial = self.dir.join("state.json.partial");
        let write = || -> io::Result<()> {
            let mut json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
            json.push(b'\n');
            let mut file = File::create(&partial)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&partial, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|source| StoreError::Io {
            action: "write",
            path,
            source,
        })
    }
}

/// Where a state dir keeps the state.
#[must_use]
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// Reads a state file without locking (for `maxions status`): the file is only ever replaced
/// whole, so a reader sees one version or the next.
///
/// # Errors
/// When it cannot be read or parsed.
pub fn peek(dir: &Path) -> io::Result<State> {
    let bytes = std::fs::read(state_path(dir))?;
    serde_json::from_slice(&bytes).map_err(io::Error::other)
}

/// The pid of the daemon holding `dir`'s lock, if one does.
#[must_use]
pub fn holder(dir: &Path) -> Option<u32> {
    let path = dir.join("daemon.lock");
    let mut file = File::open(&path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(_) => {
            let mut text = String::new();
            file.read_to_string(&mut text).ok()?;
            text.trim().parse().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_store_on_the_same_dir_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let (store, state) = Store::open(dir.path()).unwrap();
        assert_eq!(state.version, VERSION);
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        assert_eq!(holder(dir.path()), Some(std::process::id()));
        drop(store);
        assert_eq!(holder(dir.path()), None);
        assert!(Store::open(dir.path()).is_ok());
    }

    #[test]
    fn state_round_trips_and_an_unreadable_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut state) = Store::open(dir.path()).unwrap();
        state.enqueue(Entry {
            id: String::new(),
            seq: 0,
            task: "/t/a.yaml".into(),
            hash: content_hash(b"task: a"),
            repo: "file:///r".into(),
            trigger: "new task file".into(),
            queued_at: Utc::now(),
            attempt: 1,
        });
        store.save(&state).unwrap();
        drop(store);
        let (store, read) = Store::open(dir.path()).unwrap();
        assert_eq!(read, state);
        assert_eq!(read.queue[0].seq, 0);
        assert_eq!(read.next_seq, 1);
        drop(store);

        std::fs::write(state_path(dir.path()), b"{ half").unwrap();
        let (_store, fresh) = Store::open(dir.path()).unwrap();
        assert!(fresh.queue.is_empty());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("unreadable"));
        assert!(aside, "the unreadable file is kept");
    }

    #[test]
    fn a_newer_state_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(state_path(dir.path()), br#"{"version": 99}"#).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("newer maxions"), "{err}");
    }

    #[test]
    fn content_hashes_are_sha256() {
        assert_eq!(
            content_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
