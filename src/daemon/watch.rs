//! Watching the tasks folder. inotify events (through `notify` and its full debouncer, which pairs
//! renames) become [`Hint`]s that something changed; they only say when to look. What is there
//! is what [`scan`] finds, and [`Settle`] says which files are ready to read.
//!
//! The daemon's loop:
//! 1. `watch(dir, 300 ms)`; on an error, log it and go on without a watcher (rescan every
//!    [`FALLBACK_RESCAN`]).
//! 2. `scan(dir)`, log its problems, `settle.observe(&scan, SystemTime::now())`: act on
//!    `removed` (cancel, forget) and `settled` (read, hash, validate, queue when new or changed).
//! 3. Wait for the first of: `hints.recv()`, `recheck_at`, [`SAFETY_RESCAN`] (or
//!    [`FALLBACK_RESCAN`] once a [`Hint::Error`] said watching is incomplete, or `recv`
//!    returned `None`), shutdown. Then go to 2. On [`WatchError::Gone`] drop the [`Watcher`] and
//!    call [`watch`] again on a later round once the folder is back (`dir.is_dir()`).
//!
//! Every hint leads to the same full rescan, so hints are merged while the daemon is busy: the
//! notify thread never blocks on the daemon and never drops a change.

mod ignore;
mod scan;
mod settle;

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
use notify::{ErrorKind, Event, EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{
    DebounceEventHandler, DebounceEventResult, Debouncer, RecommendedCache, new_debouncer_opt,
};

pub use ignore::ignored;
pub use scan::{Entry, Problem, Scan, scan};
pub use settle::{Observed, Settle};

use ignore::{prunes, scratch_or_output};

/// How often to rescan while the watcher works: a safety net for what inotify cannot see
/// (edits of a symlinked task file's target, network file systems, a change racing a new
/// directory's watch).
pub const SAFETY_RESCAN: Duration = Duration::from_secs(60);

/// How often to rescan while watching is broken or incomplete. [`WatchError`]'s messages promise
/// this interval.
pub const FALLBACK_RESCAN: Duration = Duration::from_secs(5);

/// Past this many distinct changed paths a hint becomes [`Hint::Rescan`]: memory stays bounded
/// however many files change while the daemon is busy.
const MAX_PENDING_PATHS: usize = 1024;
const MAX_PENDING_ERRORS: usize = 16;

/// Why looking again is worth it.
#[derive(Debug)]
pub enum Hint {
    /// Something changed at or below these paths (`dir.join(relative)`; task files, or
    /// directories that may hold some, or `dir` itself). Sorted, each once.
    Paths(Vec<PathBuf>),
    /// Changes may have gone unreported (the kernel's event queue overflowed, too many at
    /// once): rescan.
    Rescan,
    /// Watching failed or is incomplete: rescan every [`FALLBACK_RESCAN`] from now on.
    Error(WatchError),
}

/// Why the tasks folder cannot be (fully) watched. None of these stops the daemon.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "cannot watch the tasks folder {}: it does not exist or is not a directory; create it, or \
         point `tasks_dir` in maxions.yaml at it",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error(
        "the tasks folder {} was removed or moved away; maxions rescans every {}s and watches it \
         again once it is back",
        path.display(),
        FALLBACK_RESCAN.as_secs()
    )]
    Gone { path: PathBuf },
    #[error(
        "cannot watch {}: the system's limit on inotify watches is reached; raise it with `sudo \
         sysctl fs.inotify.max_user_watches=524288` (make it permanent in /etc/sysctl.d/); until \
         then maxions rescans the tasks folder every {}s",
        path.display(),
        FALLBACK_RESCAN.as_secs()
    )]
    WatchLimit { path: PathBuf },
    #[error(
        "cannot watch {}: the limit on inotify instances or open files is reached; raise it with \
         `sudo sysctl fs.inotify.max_user_instances=1024` (make it permanent in /etc/sysctl.d/) \
         or raise the open-files limit (`LimitNOFILE=` in the systemd unit); until then maxions \
         rescans the tasks folder every {}s",
        path.display(),
        FALLBACK_RESCAN.as_secs()
    )]
    InstanceLimit { path: PathBuf },
    #[error("cannot watch {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("watching {} failed: {source}", path.display())]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

impl WatchError {
    fn from_notify(dir: &Path, error: notify::Error) -> Self {
        let path = error.paths.first().cloned().unwrap_or_else(|| dir.into());
        match error.kind {
            ErrorKind::MaxFilesWatch => Self::WatchLimit { path },
            ErrorKind::PathNotFound => Self::Missing { path },
            ErrorKind::Io(source) => {
                let errno = rustix::io::Errno::from_io_error(&source);
                if errno == Some(rustix::io::Errno::MFILE)
                    || errno == Some(rustix::io::Errno::NFILE)
                {
                    Self::InstanceLimit { path }
                } else if source.kind() == io::ErrorKind::NotFound {
                    Self::Missing { path }
                } else {
                    Self::Io { path, source }
                }
            }
            kind => Self::Notify {
                path,
                source: notify::Error {
                    kind,
                    paths: error.paths,
                },
            },
        }
    }
}

/// Watches the tasks folder while it lives; dropping it stops the watch (within one debouncer
/// tick) and then [`Hints::recv`] returns `None`.
pub struct Watcher {
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

/// The receiving end of a [`Watcher`]: hints merged since the last [`Hints::recv`].
#[derive(Debug)]
pub struct Hints {
    shared: Arc<Shared>,
}

impl Hints {
    /// The next hint, waiting for one; errors first, one at a time, then everything else merged
    /// into one. `None` once the watcher has stopped and everything was received. Cancel safe.
    pub async fn recv(&mut self) -> Option<Hint> {
        loop {
            {
                let mut pending = self.shared.lock();
                if let Some(hint) = pending.take() {
                    return Some(hint);
                }
                if pending.closed {
                    return None;
                }
            }
            // A wake-up sent since the check above is kept as a permit, so none is lost.
            self.shared.wake.notified().await;
        }
    }
}

/// Starts watching `dir` and everything below it, new directories included. Events are
/// debounced for `debounce` (300 ms is a good value: long enough to pair an editor's
/// write-and-rename, short enough not to delay a drop). Symlinked directories are not followed,
/// like [`scan`].
///
/// All directories below `dir` are watched when this returns.
///
/// # Errors
/// [`WatchError::Missing`] when `dir` is not a directory, [`WatchError::WatchLimit`] or
/// [`WatchError::InstanceLimit`] at the kernel's inotify limits, others on I/O errors. Retrying
/// after these costs nothing but the attempt.
pub fn watch(dir: &Path, debounce: Duration) -> Result<(Watcher, Hints), WatchError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(WatchError::Missing { path: dir.into() }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(WatchError::Missing { path: dir.into() });
        }
        Err(source) => {
            return Err(WatchError::Io {
                path: dir.into(),
                source,
            });
        }
    }
    // notify reports absolute paths; the sink maps them back to `dir`'s form.
    let root = std::path::absolute(dir).map_err(|source| WatchError::Io {
        path: dir.into(),
        source,
    })?;
    let config = notify::Config::default().with_follow_symlinks(false);
    // notify-debouncer-full 0.7 starts its thread before the inotify instance and leaks the
    // thread when the instance cannot be made: find out first with a watcher that cleans up.
    drop(
        <RecommendedWatcher as notify::Watcher>::new(|_: notify::Result<Event>| {}, config)
            .map_err(|error| WatchError::from_notify(dir, error))?,
    );
    let shared = Arc::new(Shared::default());
    let sink = Sink {
        shared: Arc::clone(&shared),
        root: root.clone(),
        shown: dir.into(),
    };
    // A zero timeout would make the debouncer's thread spin.
    let debounce = debounce.max(Duration::from_millis(10));
    let mut debouncer = new_debouncer_opt::<_, RecommendedWatcher, RecommendedCache>(
        debounce,
        None,
        sink,
        RecommendedCache::new(),
        config,
    )
    .map_err(|error| WatchError::from_notify(dir, error))?;
    debouncer
        .watch(&root, RecursiveMode::Recursive)
        .map_err(|error| WatchError::from_notify(dir, error))?;
    Ok((
        Watcher {
            _debouncer: debouncer,
        },
        Hints { shared },
    ))
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock leaves a set of paths that is still a valid hint.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hints not received yet, merged.
#[derive(Debug, Default)]
struct Pending {
    paths: BTreeSet<PathBuf>,
    rescan: bool,
    errors: VecDeque<WatchError>,
    closed: bool,
}

impl Pending {
    fn add(&mut self, batch: Batch) {
        self.rescan |= batch.rescan;
        for error in batch.errors {
            if self.errors.len() < MAX_PENDING_ERRORS {
                self.errors.push_back(error);
            } else {
                self.rescan = true;
            }
        }
        if !self.rescan {
            self.paths.extend(batch.paths);
            if self.paths.len() > MAX_PENDING_PATHS {
                self.rescan = true;
            }
        }
        if self.rescan {
            self.paths.clear();
        }
    }

    fn take(&mut self) -> Option<Hint> {
        if let Some(error) = self.errors.pop_front() {
            return Some(Hint::Error(error));
        }
        if std::mem::take(&mut self.rescan) {
            return Some(Hint::Rescan);
        }
        if self.paths.is_empty() {
            return None;
        }
        Some(Hint::Paths(
            std::mem::take(&mut self.paths).into_iter().collect(),
        ))
    }
}

/// What one debounced batch of events amounts to.
#[derive(Debug, Default)]
struct Batch {
    paths: Vec<PathBuf>,
    rescan: bool,
    errors: Vec<WatchError>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.rescan && self.errors.is_empty()
    }
}

/// Runs on the debouncer's thread: classifies events and hands them over without blocking.
struct Sink {
    shared: Arc<Shared>,
    /// `dir`, absolute, as notify reports paths.
    root: PathBuf,
    /// `dir` as given to [`watch`].
    shown: PathBuf,
}

impl DebounceEventHandler for Sink {
    fn handle_event(&mut self, result: DebounceEventResult) {
        let mut batch = Batch::default();
        match result {
            Ok(events) => {
                for event in &events {
                    self.classify(event, &mut batch);
                }
            }
            Err(errors) => batch.errors.extend(
                errors
                    .into_iter()
                    .map(|error| WatchError::from_notify(&self.shown, error)),
            ),
        }
        if batch.is_empty() {
            return;
        }
        self.shared.lock().add(batch);
        self.shared.wake.notify_one();
    }
}

impl Sink {
    fn classify(&self, event: &Event, batch: &mut Batch) {
        if event.need_rescan() {
            batch.rescan = true;
            return;
        }
        // Opening and reading change nothing, and every scan opens every task file and
        // directory: hinting on them would make the daemon rescan forever.
        if matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write))
        {
            return;
        }
        for path in &event.paths {
            let Ok(relative) = path.strip_prefix(&self.root) else {
                batch.rescan = true;
                continue;
            };
            if relative.as_os_str().is_empty() {
                if matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) {
                    batch.errors.push(WatchError::Gone {
                        path: self.shown.clone(),
                    });
                } else {
                    batch.paths.push(self.shown.clone());
                }
                continue;
            }
            if relevant(path, relative, event.kind) {
                batch.paths.push(self.shown.join(relative));
            }
        }
    }
}

/// Whether an event at `path` (`relative` below the folder) can change which tasks there are.
fn relevant(path: &Path, relative: &Path, kind: EventKind) -> bool {
    if prunes(relative) {
        return false;
    }
    if !ignored(relative) {
        return true;
    }
    // Not a task file's name: it matters only as a directory that may hold task files, which
    // inotify reports alone when it is moved in or out whole.
    match kind {
        EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder) => true,
        EventKind::Create(CreateKind::File)
        | EventKind::Remove(RemoveKind::File)
        | EventKind::Modify(ModifyKind::Data(_))
        | EventKind::Access(_) => false,
        // A rename, or a kind the backend could not tell: look at what is there now; for a path
        // that is gone, only a name no directory of tasks would have rules it out.
        _ => match std::fs::symlink_metadata(path) {
            Ok(meta) => meta.is_dir(),
            Err(_) => path
                .file_name()
                .and_then(OsStr::to_str)
                .is_none_or(|name| !scratch_or_output(name)),
        },
    }
}

impl Drop for Sink {
    // The debouncer's thread drops its handler when the watcher stops (or panics): tell the
    // receiver that no more hints will come.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(paths: &[&str]) -> Batch {
        Batch {
            paths: paths.iter().map(PathBuf::from).collect(),
            ..Batch::default()
        }
    }

    #[tokio::test]
    async fn hints_merge_while_nobody_receives_and_close_after_the_last() {
        let shared = Arc::new(Shared::default());
        let mut hints = Hints {
            shared: Arc::clone(&shared),
        };
        shared.lock().add(batch(&["/t/b.yaml", "/t/a.yaml"]));
        shared.lock().add(batch(&["/t/a.yaml", "/t/c.yaml"]));
        shared.lock().add(Batch {
            errors: vec![WatchError::Gone { path: "/t".into() }],
            ..Batch::default()
        });
        shared.wake.notify_one();
        shared.lock().closed = true;
        assert!(matches!(
            hints.recv().await,
            Some(Hint::Error(WatchError::Gone { .. }))
        ));
        match hints.recv().await {
            Some(Hint::Paths(paths)) => assert_eq!(
                paths,
                [
                    PathBuf::from("/t/a.yaml"),
                    "/t/b.yaml".into(),
                    "/t/c.yaml".into()
                ]
            ),
            other => panic!("expected the merged paths, got {other:?}"),
        }
        assert!(hints.recv().await.is_none());
    }

    #[test]
    fn too_many_pending_paths_become_one_rescan() {
        let mut pending = Pending::default();
        for i in 0..=MAX_PENDING_PATHS {
            pending.add(Batch {
                paths: vec![format!("/t/{i}.yaml").into()],
                ..Batch::default()
            });
        }
        assert!(matches!(pending.take(), Some(Hint::Rescan)));
        assert!(pending.take().is_none());
        assert!(pending.paths.is_empty());
    }

    #[test]
    fn inotify_limits_say_which_sysctl_to_raise() {
        let watches = WatchError::from_notify(
            Path::new("tasks"),
            notify::Error::new(ErrorKind::MaxFilesWatch).add_path("/srv/tasks/team".into()),
        );
        let message = watches.to_string();
        assert!(
            matches!(watches, WatchError::WatchLimit { .. }),
            "{message}"
        );
        assert!(message.contains("/srv/tasks/team"), "{message}");
        assert!(
            message.contains("sysctl fs.inotify.max_user_watches=524288"),
            "{message}"
        );
        assert!(
            message.contains("rescans the tasks folder every 5s"),
            "{message}"
        );

        let emfile = io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        let instances = WatchError::from_notify(Path::new("tasks"), notify::Error::io(emfile));
        let message = instances.to_string();
        assert!(
            matches!(instances, WatchError::InstanceLimit { .. }),
            "{message}"
        );
        assert!(
            message.contains("fs.inotify.max_user_instances"),
            "{message}"
        );
        assert!(message.starts_with("cannot watch tasks:"), "{message}");
    }

    #[test]
    fn only_events_that_may_change_the_tasks_are_relevant() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("team")).unwrap();
        std::fs::write(tmp.path().join("x.result.json"), "{}").unwrap();
        let rename = EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::Both));
        let cases = [
            ("a.yaml", EventKind::Create(CreateKind::File), true),
            ("a.yaml", EventKind::Remove(RemoveKind::File), true),
            ("team", EventKind::Create(CreateKind::Folder), true),
            ("team", rename, true),
            ("gone-dir", rename, true),
            ("x.result.json", rename, false),
            ("x.result.json.7.partial", rename, false),
            ("x.result.json", EventKind::Create(CreateKind::File), false),
            ("x.runs", EventKind::Create(CreateKind::Folder), false),
            (
                "x.runs/r1.jsonl",
                EventKind::Create(CreateKind::File),
                false,
            ),
            (".git", rename, false),
            ("notes.txt", EventKind::Create(CreateKind::File), false),
        ];
        for (relative, kind, expected) in cases {
            let path = tmp.path().join(relative);
            assert_eq!(
                relevant(&path, Path::new(relative), kind),
                expected,
                "{relative} {kind:?}"
            );
        }
    }
}
