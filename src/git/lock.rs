//! One lock per mirror, so that two runs on the same repository never run git against it at
//! the same time (a fetch's `--prune` and another run's import, or two fetches, would otherwise
//! race on refs and packs).
//!
//! It is an `flock(2)` on `<mirror>/maxions.lock` (std's `File::try_lock`): the kernel drops it
//! when the holder's file is closed or the process dies, so a crashed run never leaves a stale
//! lock, and no pid-file guessing (pid reuse, containers) is needed as with an `O_EXCL` file.
//! flock locks belong to the open file, so two runs in one process exclude each other too.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::GitError;

/// How often a waiting run tries again: short next to any git operation.
const POLL: Duration = Duration::from_millis(50);

/// Held while a run works on a mirror; released on drop.
#[derive(Debug)]
pub(crate) struct MirrorLock {
    _file: File,
}

impl MirrorLock {
    /// Takes the lock at `path`, waiting at most `wait` (and until `cancel`).
    pub async fn acquire(
        path: &Path,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Self, GitError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|source| io("open the mirror lock", path, source))?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _file: file }),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(source)) => {
                    return Err(io("lock the mirror", path, source));
                }
            }
            if Instant::now() >= deadline {
                return Err(GitError::LockTimedOut {
                    path: path.to_owned(),
                    after: wait,
                });
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = cancel.cancelled() => {
                    return Err(GitError::Cancelled { command: "waiting for the mirror lock".into() });
                }
            }
        }
    }
}

pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> GitError {
    GitError::Io {
        action,
        path: PathBuf::from(path),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maxions.lock");
        let cancel = CancellationToken::new();
        let first = MirrorLock::acquire(&path, Duration::from_secs(1), &cancel)
            .await
            .unwrap();
        let err = MirrorLock::acquire(&path, Duration::from_millis(120), &cancel)
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::LockTimedOut { .. }), "{err}");
        assert!(
            err.to_string().contains("stayed locked by another run"),
            "{err}"
        );
        drop(first);
        MirrorLock::acquire(&path, Duration::from_millis(120), &cancel)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn waiting_stops_on_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maxions.lock");
        let cancel = CancellationToken::new();
        let _held = MirrorLock::acquire(&path, Duration::from_secs(1), &cancel)
            .await
            .unwrap();
        cancel.cancel();
        let err = MirrorLock::acquire(&path, Duration::from_secs(30), &cancel)
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::Cancelled { .. }), "{err}");
    }
}
