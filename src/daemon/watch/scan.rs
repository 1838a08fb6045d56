//! One pass over the tasks folder: every candidate task file with its length and modification
//! time. The watcher's events are only hints; this is what the daemon believes.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::ignore::{ignored, prunes};

/// Directories nested deeper than this are reported as a problem and not read: without
/// followed links the tree is finite, but a bind mount can still make it a loop.
const MAX_DEPTH: usize = 32;

/// A candidate task file as one scan saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `dir.join(relative)`, with `dir` as given to [`scan`].
    pub path: PathBuf,
    pub len: u64,
    pub modified: SystemTime,
}

/// Something below the tasks folder that could not be read. What lies at or below `path` is
/// unknown for this scan, so [`super::Settle`] does not count files there as removed.
#[derive(Debug)]
pub struct Problem {
    pub path: PathBuf,
    pub error: io::Error,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read {}: {}", self.path.display(), self.error)
    }
}

/// The result of [`scan`].
#[derive(Debug, Default)]
pub struct Scan {
    /// Sorted by path.
    pub files: Vec<Entry>,
    /// Unreadable directories and files, the folder itself if it is missing; never fatal.
    pub problems: Vec<Problem>,
}

impl Scan {
    /// Whether `path` lies at or below something this scan could not read.
    #[must_use]
    pub fn unknown(&self, path: &Path) -> bool {
        self.problems
            .iter()
            .any(|problem| path.starts_with(&problem.path))
    }
}

/// Every candidate task file below `dir` (see [`ignored`]), recursively, without descending into
/// hidden or `*.runs` directories.
///
/// Symlinked directories are not followed: a link to `/` or to a parent would make the walk
/// endless, one to elsewhere would run files nobody put in the folder as tasks, and the watcher
/// (which does not follow them either, for the same reasons) could not tell when they change.
/// A symlink to a file is a task file with its target's length and time; edits of the target
/// are seen by the next scan, not hinted.
#[must_use]
pub fn scan(dir: &Path) -> Scan {
    let mut scan = Scan::default();
    let mut pending = vec![(dir.to_path_buf(), PathBuf::new(), 0)];
    while let Some((absolute, relative, depth)) = pending.pop() {
        if depth > MAX_DEPTH {
            scan.problems.push(Problem {
                path: absolute,
                error: io::Error::other(format!("nested deeper than {MAX_DEPTH} directories")),
            });
            continue;
        }
        let entries = match std::fs::read_dir(&absolute) {
            Ok(entries) => entries,
            Err(error) => {
                scan.problems.push(Problem {
                    path: absolute,
                    error,
                });
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    // The directory could not be listed to the end: all of it is unknown.
                    scan.problems.push(Problem {
                        path: absolute.clone(),
                        error,
                    });
                    break;
                }
            };
            let path = entry.path();
            let rel = relative.join(entry.file_name());
            // `file_type` does not follow symlinks, so a symlinked directory is never pushed.
            let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
            if is_dir {
                if !prunes(&rel) {
                    pending.push((path, rel, depth + 1));
                }
                continue;
            }
            if ignored(&rel) {
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => scan.files.push(Entry {
                    len: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    path,
                }),
                // A symlinked directory, a fifo, a socket: not a task file.
                Ok(_) => {}
                // Removed since the listing, or a dangling symlink: no file there.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => scan.problems.push(Problem { path, error }),
            }
        }
    }
    scan.files.sort_by(|a, b| a.path.cmp(&b.path));
    scan.problems.sort_by(|a, b| a.path.cmp(&b.path));
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn relative(dir: &Path, scan: &Scan) -> Vec<String> {
        scan.files
            .iter()
            .map(|e| {
                e.path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    #[test]
    fn finds_nested_task_files_sorted_and_skips_hidden_runs_and_scratch() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for rel in [
            "b.yaml",
            "a.yml",
            "team/nightly.yaml",
            "team/deep/er/x.yaml",
            "a.result.json",
            "a.runs/r1.jsonl",
            "a.runs/looks-like-a-task.yaml",
            ".hidden/c.yaml",
            "team/.git/d.yaml",
            ".b.yaml.swp",
            "b.yaml~",
            "notes.txt",
            "maxions.yaml",
        ] {
            write(dir, rel, "steps: []\n");
        }
        let scan = scan(dir);
        assert_eq!(
            relative(dir, &scan),
            [
                "a.yml",
                "b.yaml",
                "team/deep/er/x.yaml",
                "team/nightly.yaml"
            ]
        );
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert_eq!(scan.files[1].len, "steps: []\n".len() as u64);
    }

    #[test]
    fn a_symlinked_directory_is_not_followed_but_a_symlinked_file_is_a_task() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tasks");
        let elsewhere = tmp.path().join("elsewhere");
        write(&elsewhere, "outside.yaml", "x\n");
        write(&dir, "own.yaml", "x\n");
        std::os::unix::fs::symlink(&elsewhere, dir.join("linked")).unwrap();
        // A loop back to the folder itself must not make the walk endless either.
        std::os::unix::fs::symlink(&dir, dir.join("loop")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("outside.yaml"), dir.join("alias.yaml")).unwrap();
        std::os::unix::fs::symlink(dir.join("gone.yaml"), dir.join("dangling.yaml")).unwrap();
        let scan = scan(&dir);
        assert_eq!(relative(&dir, &scan), ["alias.yaml", "own.yaml"]);
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    }

    #[test]
    fn a_missing_folder_is_a_problem_that_covers_everything_below_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("absent");
        let scan = scan(&dir);
        assert!(scan.files.is_empty());
        assert_eq!(scan.problems.len(), 1);
        assert!(scan.problems[0].to_string().starts_with("cannot read "));
        assert!(scan.unknown(&dir.join("a.yaml")));
        assert!(!scan.unknown(&tmp.path().join("a.yaml")));
    }
}
