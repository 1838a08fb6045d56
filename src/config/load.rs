//! Loading a task for running or rendering: validate everything it touches, then give back the
//! typed task, its blueprint and the daemon config that applies.

use std::path::{Path, PathBuf};

use super::task::check_push_branch;
use super::validate::{FileKind, Validation, Validator, typed_or_error};
use super::{Blueprint, DaemonConfig, Diagnostic, RepoRef, Task};

/// A task with everything needed to run it, all validated.
#[derive(Debug, Clone)]
pub struct LoadedTask {
    pub path: PathBuf,
    pub task: Task,
    pub blueprint: Blueprint,
    pub blueprint_path: PathBuf,
    pub config: DaemonConfig,
    /// The directory of the `maxions.yaml` in force, if any.
    pub config_dir: Option<PathBuf>,
    pub repo: RepoRef,
    /// For a `file://` repository: its directory, canonical (symlinks resolved) and checked to
    /// lie below one of the config's `local_repos` roots. Open this path, not the URL.
    pub local_repo: Option<PathBuf>,
    /// The branch to work on: the task's, or `<branch_prefix><task file name>`. Checked with
    /// [`check_push_branch`] against the task's `base` if it names one; check it again against
    /// the resolved base before pushing.
    pub branch: String,
}

/// Validates `path` as a task (and its blueprint and config) and loads it, or returns every
/// problem found.
pub fn load_task(path: &Path, blueprint: Option<&Path>) -> Result<LoadedTask, Validation> {
    load_with(
        path,
        path,
        Validator::new().with_blueprint(blueprint.map(Path::to_path_buf)),
    )
}

/// Like [`load_task`], with `config` standing for the `maxions.yaml` in `dir` (the daemon's
/// config, which stays the last good one while the file is broken).
pub fn load_task_with_config(
    path: &Path,
    dir: &Path,
    config: DaemonConfig,
) -> Result<LoadedTask, Validation> {
    load_with(path, path, Validator::new().with_config(dir, config))
}

/// Like [`load_task_with_config`] for the text at `path` that will be the task file `final_path`
/// (in the same directory): what derives from the file's name (the default branch) derives
/// from `final_path`'s. The API validates a submitted file this way before it writes it.
pub fn load_task_as(
    path: &Path,
    final_path: &Path,
    dir: &Path,
    config: DaemonConfig,
) -> Result<LoadedTask, Validation> {
    load_with(path, final_path, Validator::new().with_config(dir, config))
}

fn load_with(
    path: &Path,
    named: &Path,
    mut validator: Validator,
) -> Result<LoadedTask, Validation> {
    let doc = validator.validate_file(path, Some(FileKind::Task));
    let fail = |validator: Validator, message: String| {
        let mut result = validator.result;
        result
            .diagnostics
            .push(Diagnostic::error("load-error", message).in_file(path.display().to_string()));
        result
    };
    let Some(doc) = doc else {
        return Err(validator.result);
    };
    if validator.result.errors() > 0 {
        return Err(validator.result);
    }
    let task: Task = match typed_or_error(&doc.tree) {
        Ok(task) => task,
        Err(e) => return Err(fail(validator, format!("cannot load task: {e}"))),
    };
    let Some(blueprint_path) = validator.blueprint_path(path, &doc.tree) else {
        return Err(fail(validator, "blueprint not found".into()));
    };
    let Some(blueprint_doc) = validator.validate_file(&blueprint_path, Some(FileKind::Blueprint))
    else {
        return Err(validator.result);
    };
    let blueprint: Blueprint = match typed_or_error(&blueprint_doc.tree) {
        Ok(b) => b,
        Err(e) => return Err(fail(validator, format!("cannot load blueprint: {e}"))),
    };
    let (config_dir, config) = match validator.daemon_config(path) {
        Some((dir, config)) => (Some(dir), config),
        None => (None, DaemonConfig::default()),
    };
    if validator.result.errors() > 0 {
        return Err(validator.result);
    }
    let web_url = config.github.as_ref().map_or_else(
        || RepoRef::GITHUB_WEB_URL.to_owned(),
        super::daemon::GithubConfig::repo_base_url,
    );
    let repo = match RepoRef::resolve(&task.repo, &web_url) {
        Ok(repo) => repo,
        Err(e) => return Err(fail(validator, e)),
    };
    // `validate` has refused a repository outside the roots already; this gives the path to use.
    let local_repo = match repo.local_path() {
        Some(local) => {
            let roots = local_repo_roots(config_dir.as_deref().map(|dir| (dir, &config)), path);
            match check_local_repo(&local, &roots) {
                Ok(canonical) => Some(canonical),
                Err(e) => return Err(fail(validator, e.to_string())),
            }
        }
        None => None,
    };
    let branch = task
        .branch
        .clone()
        .unwrap_or_else(|| prefixed_branch(named, &config.branch_prefix));
    if let Err(e) = check_push_branch(&branch, task.base.as_deref(), &config.branch_prefix) {
        return Err(fail(validator, e));
    }
    Ok(LoadedTask {
        path: path.to_path_buf(),
        task,
        blueprint,
        blueprint_path,
        config,
        config_dir,
        repo,
        local_repo,
        branch,
    })
}

/// Validates a `maxions.yaml` on its own and loads it, or returns every problem found.
pub fn load_config(path: &Path) -> Result<DaemonConfig, Validation> {
    let mut validator = Validator::new();
    let doc = validator.validate_file(path, Some(FileKind::Config));
    match doc {
        Some(doc) if validator.result.errors() == 0 => typed_or_error(&doc.tree).map_err(|e| {
            let mut result = validator.result;
            result.diagnostics.push(
                Diagnostic::error("load-error", format!("cannot load config: {e}"))
                    .in_file(path.display().to_string()),
            );
            result
        }),
        _ => Err(validator.result),
    }
}

impl LoadedTask {
    /// Where maxions keeps its state for this task (mirrors, scratch files of runs): the
    /// config's `state_dir` beside `maxions.yaml`, or `.maxions` in the task's project (the
    /// directory above `tasks/`, else the task's own directory).
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        match &self.config_dir {
            Some(dir) => dir.join(&self.config.state_dir),
            None => project_dir(&self.path).join(&self.config.state_dir),
        }
    }
}

/// The directory a task belongs to: the one above `tasks/`, or the task file's own directory.
#[must_use]
pub fn project_dir(task_path: &Path) -> PathBuf {
    let dir = task_path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match dir.file_name() {
        Some(name) if name == "tasks" => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// `maxions/<task file name>`: stable per task, so that re-runs reuse the branch and its PR.
pub fn default_branch(task_path: &Path) -> String {
    prefixed_branch(task_path, &super::daemon::default_branch_prefix())
}

/// `<prefix><task file name>`, the branch of a task that names none.
pub fn prefixed_branch(task_path: &Path, prefix: &str) -> String {
    let stem = task_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("task");
    let slug: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let slug = slug.trim_matches('-');
    format!("{prefix}{}", if slug.is_empty() { "task" } else { slug })
}

/// The directories a task's `file://` repository may live in: the config's `local_repos`
/// (relative to its directory), or the config's directory when it names none. With no
/// `maxions.yaml`: the directory holding the task's `tasks/` directory (so that `maxions demo`'s
/// `DIR/{origin/demo.git,tasks/demo.yaml}` works), or else the task's own directory.
pub fn local_repo_roots(config: Option<(&Path, &DaemonConfig)>, task_path: &Path) -> Vec<PathBuf> {
    if let Some((dir, config)) = config {
        if config.local_repos.is_empty() {
            return vec![dir.to_path_buf()];
        }
        return config
            .local_repos
            .iter()
            .map(|root| dir.join(root))
            .collect();
    }
    let task = std::fs::canonicalize(task_path).unwrap_or_else(|_| task_path.to_path_buf());
    let dir = task.parent().unwrap_or(Path::new(".")).to_path_buf();
    match (dir.file_name().and_then(|n| n.to_str()), dir.parent()) {
        (Some("tasks"), Some(parent)) => vec![parent.to_path_buf()],
        _ => vec![dir],
    }
}

/// Why a local repository may not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalRepoError {
    #[error("local repository `{}` must be an absolute path without `.` or `..`", path.display())]
    NotPlain { path: PathBuf },
    #[error(
        "local repository `{}` is outside the directories tasks may use ({}){}",
        path.display(),
        list(roots, |root| root.display().to_string()),
        resolved_note(path, resolved)
    )]
    Outside {
        path: PathBuf,
        /// Where it leads once symlinks are resolved.
        resolved: PathBuf,
        /// The roots, canonical.
        roots: Vec<PathBuf>,
    },
}

impl LocalRepoError {
    /// The message with paths shown by `show` (e.g. relative to the current directory).
    pub fn describe(&self, show: impl Fn(&Path) -> String) -> String {
        match self {
            Self::NotPlain { .. } => self.to_string(),
            Self::Outside {
                path,
                resolved,
                roots,
            } => format!(
                "local repository `{}` is outside the directories tasks may use ({}){}",
                path.display(),
                list(roots, |root| show(root)),
                resolved_note(path, resolved)
            ),
        }
    }
}

fn list(roots: &[PathBuf], show: impl Fn(&PathBuf) -> String) -> String {
    if roots.is_empty() {
        return "none is configured".to_owned();
    }
    roots
        .iter()
        .map(|root| format!("`{}`", show(root)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn resolved_note(path: &Path, resolved: &Path) -> String {
    if path == resolved {
        String::new()
    } else {
        format!("; it resolves to `{}`", resolved.display())
    }
}

/// Checks that the local repository `path` lies below one of `roots` once symlinks are resolved,
/// and returns its canonical path. A path that does not exist (yet) is judged by its deepest
/// existing ancestor; `.` and `..` are refused outright, so that nothing created later can lead
/// out. Open the returned path, not the one written (between the check and the use, a symlink
/// could be swapped in).
///
/// # Errors
/// [`LocalRepoError`], naming the path and the roots.
pub fn check_local_repo(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, LocalRepoError> {
    use std::path::Component;
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(LocalRepoError::NotPlain {
            path: path.to_path_buf(),
        });
    }
    let resolved = canonical_prefix(path);
    // Roots come from the operator; one that does not exist yet is judged like the path.
    let roots: Vec<PathBuf> = roots.iter().map(|root| canonical_prefix(root)).collect();
    if roots.iter().any(|root| resolved.starts_with(root)) {
        return Ok(resolved);
    }
    Err(LocalRepoError::Outside {
        path: path.to_path_buf(),
        resolved,
        roots,
    })
}

/// `path` with its deepest existing ancestor canonicalized and the rest appended as written (a
/// relative `path` is taken from the current directory).
fn canonical_prefix(path: &Path) -> PathBuf {
    let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = std::fs::canonicalize(&existing) {
            return rest
                .iter()
                .rev()
                .fold(canonical, |acc, part| acc.join(part));
        }
        match (
            existing.file_name().map(ToOwned::to_owned),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_repositories_stay_below_their_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("origin/demo.git")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let roots = [root.clone()];
        let canonical_root = std::fs::canonicalize(&root).unwrap();

        let ok = check_local_repo(&root.join("origin/demo.git"), &roots).unwrap();
        assert_eq!(ok, canonical_root.join("origin/demo.git"));
        // Not there yet: judged by the part that exists.
        assert!(check_local_repo(&root.join("later/x.git"), &roots).is_ok());
        let err = check_local_repo(&root.join("link/x.git"), &roots)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("outside") && err.contains("resolves to"),
            "{err}"
        );
        let err = check_local_repo(&root.join("origin/../../outside"), &roots)
            .unwrap_err()
            .to_string();
        assert!(err.contains("without `.` or `..`"), "{err}");
        assert!(check_local_repo(&outside, &roots).is_err());
        assert!(check_local_repo(Path::new("/etc"), &roots).is_err());
    }

    #[test]
    fn roots_without_a_config_are_the_demo_layout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tasks")).unwrap();
        let task = dir.path().join("tasks/demo.yaml");
        std::fs::write(&task, "task: x\n").unwrap();
        let canonical = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(
            local_repo_roots(None, &task),
            std::slice::from_ref(&canonical)
        );
        let loose = dir.path().join("demo.yaml");
        std::fs::write(&loose, "task: x\n").unwrap();
        assert_eq!(local_repo_roots(None, &loose), [canonical]);
        let config = DaemonConfig {
            local_repos: vec!["repos".into(), "/srv/git".into()],
            ..DaemonConfig::default()
        };
        assert_eq!(
            local_repo_roots(Some((Path::new("/etc/maxions"), &config)), &task),
            [
                PathBuf::from("/etc/maxions/repos"),
                PathBuf::from("/srv/git")
            ]
        );
    }
}
