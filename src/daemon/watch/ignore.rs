//! Which paths below the tasks folder are never tasks: hidden files, editors' temporary and swap
//! files, maxions' own outputs and config, and anything that is not YAML.

use std::ffi::OsStr;
use std::path::{Component, Path};

/// Whether `relative` (a path below the tasks folder, relative to it) is never a task file:
/// - hidden: any component starts with `.` (`.git/`, vim's `.a.yaml.swp`, emacs' `.#a.yaml`,
///   rsync's `.a.yaml.XXXXXX`);
/// - maxions' own outputs: anything at or below a `*.runs` directory, `*.result.json` and its
///   `*.result.json.<pid>.partial` temporary;
/// - editors' and downloaders' scratch files: `*~`, `*.swp`, `*.swx`, `*.swo`, `#*#`, `4913`
///   (vim's probe), `*.tmp`, `*.temp`, `*.bak`, `*.part`, `*.partial`, `*.crdownload`;
/// - the daemon config `maxions.yaml` / `maxions.yml`;
/// - anything whose name does not end in `.yaml` or `.yml`.
///
/// Most scratch names fail the last rule anyway; they are listed so that the rule stays right
/// if the set of task extensions ever grows.
#[must_use]
pub fn ignored(relative: &Path) -> bool {
    if prunes(relative) {
        return true;
    }
    let Some(name) = relative.file_name().and_then(OsStr::to_str) else {
        // Not UTF-8: task files are named in YAML and in result files, both UTF-8.
        return true;
    };
    scratch_or_output(name) || is_config(name) || !is_yaml(name)
}

/// Whether nothing at or below `relative` can be a task: a hidden component, or a component that
/// is a `*.runs` directory (a run's logs). Scanning does not descend into these, and events in
/// them are not hints.
#[must_use]
pub(super) fn prunes(relative: &Path) -> bool {
    relative.components().any(|component| match component {
        Component::Normal(name) => {
            let name = name.as_encoded_bytes();
            name.starts_with(b".") || name.ends_with(b".runs")
        }
        // `..` would leave the folder; `/` or a prefix means the path was not relative.
        Component::ParentDir | Component::RootDir | Component::Prefix(_) => true,
        Component::CurDir => false,
    })
}

/// A name that only a temporary, swap or output file has (never a task file, and very likely
/// not a directory holding task files either).
pub(super) fn scratch_or_output(name: &str) -> bool {
    const SUFFIXES: [&str; 11] = [
        "~",
        ".swp",
        ".swx",
        ".swo",
        ".tmp",
        ".temp",
        ".bak",
        ".part",
        ".partial",
        ".crdownload",
        ".result.json",
    ];
    SUFFIXES.iter().any(|suffix| name.ends_with(suffix))
        || (name.len() > 1 && name.starts_with('#') && name.ends_with('#'))
        || name == "4913"
        || name.contains(".result.json.")
}

fn is_config(name: &str) -> bool {
    name == "maxions.yaml" || name == "maxions.yml"
}

// Case-sensitive, like `maxions validate DIR`, so that both see the same task files.
fn is_yaml(name: &str) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|ext| ext == "yaml" || ext == "yml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_yaml_task_files_are_candidates() {
        let cases: &[(&str, bool)] = &[
            ("a.yaml", false),
            ("a.yml", false),
            ("team/nightly.yaml", false),
            ("team/sub/deep.yml", false),
            ("a.b.yaml", false),
            ("runs.yaml", false),
            ("a.runs.yaml", false),
            ("notes.txt", true),
            ("README.md", true),
            ("a", true),
            ("a.YAML", true),
            ("a.yaml.json", true),
            (".a.yaml", true),
            (".hidden/a.yaml", true),
            ("team/.git/a.yaml", true),
            (".a.yaml.swp", true),
            ("a.yaml.swp", true),
            ("a.yaml.swx", true),
            ("a.yaml.swo", true),
            ("a.yaml~", true),
            ("#a.yaml#", true),
            (".#a.yaml", true),
            ("4913", true),
            ("a.yaml.tmp", true),
            ("a.yaml.part", true),
            ("a.yaml.partial", true),
            ("a.yaml.crdownload", true),
            ("a.result.json", true),
            ("a.result.json.4711.partial", true),
            ("a.runs", true),
            ("a.runs/r1.jsonl", true),
            ("a.runs/r1.yaml", true),
            ("team/a.runs/nested/x.yaml", true),
            ("maxions.yaml", true),
            ("maxions.yml", true),
            ("team/maxions.yaml", true),
            ("../a.yaml", true),
            ("/etc/a.yaml", true),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter(|(path, expected)| ignored(Path::new(path)) != *expected)
            .map(|(path, expected)| format!("{path}: expected ignored={expected}"))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn hidden_and_runs_directories_prune_their_whole_subtree() {
        for pruned in [".git", "a.runs", "team/.cache", "team/x.runs/y"] {
            assert!(prunes(Path::new(pruned)), "{pruned}");
        }
        for kept in ["team", "team/sub", "a.yaml", "runs", "x.runs.d"] {
            assert!(!prunes(Path::new(kept)), "{kept}");
        }
    }
}
