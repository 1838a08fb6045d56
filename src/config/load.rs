//! Loading a task for running or rendering: validate everything it touches, then give back the
//! typed task, its blueprint and the daemon config that applies.

use std::path::{Path, PathBuf};

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
    /// The branch to work on: the task's, or `maxions/<task file name>`.
    pub branch: String,
}

/// Validates `path` as a task (and its blueprint and config) and loads it, or returns every
/// problem found.
pub fn load_task(path: &Path, blueprint: Option<&Path>) -> Result<LoadedTask, Validation> {
    let mut validator = Validator::new().with_blueprint(blueprint.map(Path::to_path_buf));
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
    let repo = match RepoRef::parse(&task.repo) {
        Ok(repo) => repo,
        Err(e) => return Err(fail(validator, e)),
    };
    let branch = task.branch.clone().unwrap_or_else(|| default_branch(path));
    Ok(LoadedTask {
        path: path.to_path_buf(),
        task,
        blueprint,
        blueprint_path,
        config,
        config_dir,
        repo,
        branch,
    })
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
    format!("maxions/{}", if slug.is_empty() { "task" } else { slug })
}
