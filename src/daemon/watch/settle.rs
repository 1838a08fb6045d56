//! When a task file is ready to read: not while something is still writing it. Pure
//! bookkeeping over successive scans, with the clock passed in so tests need no sleeps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::scan::Scan;

/// Tracks the files of successive [`Scan`]s and says which are settled: a half-written file is
/// retried once it settles instead of being read half-written, and an edited one is reported
/// again.
///
/// A file is settled once its length and modification time have not changed for `settle`,
/// judged by whichever evidence comes first: its mtime is `settle` old, or this `Settle` has
/// seen the same length and mtime for `settle` of the `now`s passed in. The first lets files
/// that were already there at start-up settle on the first scan; the second lets a file whose
/// mtime lies in the future (a skewed clock, `touch -d`) settle at all. Any change of length or
/// mtime restarts the wait.
#[derive(Debug)]
pub struct Settle {
    settle: Duration,
    files: HashMap<PathBuf, Track>,
}

#[derive(Debug)]
struct Track {
    signature: Signature,
    /// The `now` of the first observation with this signature.
    since: SystemTime,
    /// The signature last reported as settled.
    reported: Option<Signature>,
}

type Signature = (u64, SystemTime);

/// What changed since the previous [`Settle::observe`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Files that settled since they were last reported (new, or changed since), sorted. Each
    /// settled version of a file is reported once.
    pub settled: Vec<PathBuf>,
    /// Files once reported settled that are gone, sorted; each reported once. A file below one
    /// of the scan's problems (an unreadable directory, the missing folder) is not gone, only
    /// unknown, and is neither reported nor forgotten.
    pub removed: Vec<PathBuf>,
    /// When the earliest file that has not settled yet will have, if nothing changes: scan and
    /// observe again then. `None` when every file has been reported.
    pub recheck_at: Option<SystemTime>,
}

impl Settle {
    #[must_use]
    pub fn new(settle: Duration) -> Self {
        Self {
            settle,
            files: HashMap::new(),
        }
    }

    /// Compares `scan` with what was seen before, at time `now`.
    pub fn observe(&mut self, scan: &Scan, now: SystemTime) -> Observed {
        let mut observed = Observed::default();
        let mut present = std::collections::HashSet::with_capacity(scan.files.len());
        for entry in &scan.files {
            present.insert(entry.path.as_path());
            let signature = (entry.len, entry.modified);
            let track = self
                .files
                .entry(entry.path.clone())
                .or_insert_with(|| Track {
                    signature,
                    since: now,
                    reported: None,
                });
            if track.signature != signature {
                track.signature = signature;
                track.since = now;
            }
            // The clock went back: restart the wait rather than wait for it to catch up.
            if track.since > now {
                track.since = now;
            }
            if track.reported == Some(signature) {
                continue;
            }
            let quiet_since = entry.modified.min(track.since);
            let ready_at = quiet_since.checked_add(self.settle).unwrap_or(quiet_since);
            if now >= ready_at {
                track.reported = Some(signature);
                observed.settled.push(entry.path.clone());
            } else {
                observed.recheck_at =
                    Some(observed.recheck_at.map_or(ready_at, |t| t.min(ready_at)));
            }
        }
        self.files.retain(|path, track| {
            if present.contains(path.as_path()) || scan.unknown(path) {
                return true;
            }
            if track.reported.is_some() {
                observed.removed.push(path.clone());
            }
            false
        });
        observed.settled.sort();
        observed.removed.sort();
        observed
    }
}

#[cfg(test)]
mod tests {
    use super::super::scan::{Entry, Problem};
    use super::*;

    const SETTLE: Duration = Duration::from_millis(500);

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_millis(ms)
    }

    fn file(path: &str, len: u64, modified_ms: u64) -> Entry {
        Entry {
            path: PathBuf::from(path),
            len,
            modified: at(modified_ms),
        }
    }

    fn scan(files: Vec<Entry>) -> Scan {
        Scan {
            files,
            problems: Vec::new(),
        }
    }

    fn paths(paths: &[&str]) -> Vec<PathBuf> {
        paths.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn a_half_written_file_is_reported_once_it_is_complete_and_quiet() {
        let mut settle = Settle::new(SETTLE);
        // Being written: its mtime is fresh.
        let first = settle.observe(&scan(vec![file("/t/a.yaml", 10, 0)]), at(100));
        assert_eq!(first.settled, Vec::<PathBuf>::new());
        assert_eq!(first.recheck_at, Some(at(500)));
        // More was written since: the wait restarts from the new mtime.
        let second = settle.observe(&scan(vec![file("/t/a.yaml", 90, 400)]), at(600));
        assert_eq!(second.settled, Vec::<PathBuf>::new());
        assert_eq!(second.recheck_at, Some(at(900)));
        let third = settle.observe(&scan(vec![file("/t/a.yaml", 90, 400)]), at(900));
        assert_eq!(third.settled, paths(&["/t/a.yaml"]));
        assert_eq!(third.recheck_at, None);
    }

    #[test]
    fn a_file_that_changes_between_scans_is_not_settled_even_with_an_old_mtime_before() {
        let mut settle = Settle::new(SETTLE);
        let old = settle.observe(&scan(vec![file("/t/a.yaml", 10, 0)]), at(10_000));
        assert_eq!(old.settled, paths(&["/t/a.yaml"]));
        // Rewritten: a new length with a fresh mtime is not settled yet.
        let rewriting = settle.observe(&scan(vec![file("/t/a.yaml", 20, 10_100)]), at(10_200));
        assert!(rewriting.settled.is_empty());
        assert_eq!(rewriting.recheck_at, Some(at(10_600)));
    }

    #[test]
    fn files_present_at_start_with_old_mtimes_settle_on_the_first_scan() {
        let mut settle = Settle::new(SETTLE);
        let observed = settle.observe(
            &scan(vec![file("/t/a.yaml", 1, 0), file("/t/b.yaml", 2, 0)]),
            at(60_000),
        );
        assert_eq!(observed.settled, paths(&["/t/a.yaml", "/t/b.yaml"]));
    }

    #[test]
    fn an_unchanged_file_is_not_reported_twice_and_an_edit_after_settling_is() {
        let mut settle = Settle::new(SETTLE);
        let a = || scan(vec![file("/t/a.yaml", 10, 0)]);
        assert_eq!(
            settle.observe(&a(), at(1_000)).settled,
            paths(&["/t/a.yaml"])
        );
        assert_eq!(settle.observe(&a(), at(2_000)), Observed::default());
        assert_eq!(settle.observe(&a(), at(3_000)), Observed::default());
        // Edited with the same length: the mtime alone marks the new version.
        let edited = || scan(vec![file("/t/a.yaml", 10, 5_000)]);
        let soon = settle.observe(&edited(), at(5_100));
        assert!(soon.settled.is_empty());
        assert_eq!(soon.recheck_at, Some(at(5_500)));
        assert_eq!(
            settle.observe(&edited(), at(5_500)).settled,
            paths(&["/t/a.yaml"])
        );
        assert_eq!(settle.observe(&edited(), at(9_000)), Observed::default());
    }

    #[test]
    fn a_removed_file_is_reported_once_and_one_never_reported_is_not() {
        let mut settle = Settle::new(SETTLE);
        settle.observe(
            &scan(vec![file("/t/a.yaml", 1, 0), file("/t/half.yaml", 1, 900)]),
            at(1_000),
        );
        let gone = settle.observe(&scan(Vec::new()), at(1_100));
        assert_eq!(gone.removed, paths(&["/t/a.yaml"]));
        assert_eq!(
            settle.observe(&scan(Vec::new()), at(1_200)),
            Observed::default()
        );
        // Back again: a new file as far as the daemon is concerned.
        let back = settle.observe(&scan(vec![file("/t/a.yaml", 1, 0)]), at(1_300));
        assert_eq!(back.settled, paths(&["/t/a.yaml"]));
    }

    #[test]
    fn files_below_an_unreadable_directory_are_unknown_not_removed() {
        let mut settle = Settle::new(SETTLE);
        settle.observe(
            &scan(vec![file("/t/team/a.yaml", 1, 0), file("/t/b.yaml", 1, 0)]),
            at(1_000),
        );
        let unreadable = Scan {
            files: Vec::new(),
            problems: vec![Problem {
                path: PathBuf::from("/t/team"),
                error: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            }],
        };
        assert_eq!(
            settle.observe(&unreadable, at(1_100)).removed,
            paths(&["/t/b.yaml"])
        );
        // Readable again and unchanged: nothing to report, it was never gone.
        let readable = scan(vec![file("/t/team/a.yaml", 1, 0)]);
        assert_eq!(settle.observe(&readable, at(1_200)), Observed::default());
        let missing_folder = Scan {
            files: Vec::new(),
            problems: vec![Problem {
                path: PathBuf::from("/t"),
                error: std::io::Error::from(std::io::ErrorKind::NotFound),
            }],
        };
        assert_eq!(
            settle.observe(&missing_folder, at(1_300)),
            Observed::default()
        );
    }

    #[test]
    fn a_file_with_a_future_mtime_settles_after_being_seen_unchanged_for_the_settle_time() {
        let mut settle = Settle::new(SETTLE);
        let future = || scan(vec![file("/t/a.yaml", 1, 3_600_000)]);
        let first = settle.observe(&future(), at(1_000));
        assert!(first.settled.is_empty());
        assert_eq!(first.recheck_at, Some(at(1_500)));
        assert_eq!(
            settle.observe(&future(), at(1_500)).settled,
            paths(&["/t/a.yaml"])
        );
    }

    #[test]
    fn recheck_at_is_the_earliest_pending_file() {
        let mut settle = Settle::new(SETTLE);
        let observed = settle.observe(
            &scan(vec![file("/t/a.yaml", 1, 300), file("/t/b.yaml", 1, 100)]),
            at(400),
        );
        assert_eq!(observed.recheck_at, Some(at(600)));
    }
}
