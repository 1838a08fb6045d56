//! `POST /maxions`: a task file written into the tasks folder, after it passed the same
//! validation as `maxions validate` (diagnostics located in the submitted text), and read by
//! the daemon at once so that the answer can name the queued run.
//!
//! Whoever may call the API must not make the daemon read files for them: a blueprint named by
//! path must lie in `blueprints_dir` (checked before anything is read), and a `file://`
//! repository below `local_repos` (validation refuses others).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{DiagnosticView, rejection};
use super::runs::{RunSummary, ScheduleView, schedule_view};
use super::{ApiError, ApiState};
use crate::config::load::load_task_as;
use crate::daemon::handle::{Command, Submitted};

/// A task file, as JSON.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// The file's name without `.yaml`: `[a-z0-9][a-z0-9._-]{0,63}`. Default: made from the task.
    pub name: Option<String>,
    /// The task file's YAML, as it would be written to `tasks/<name>.yaml`.
    pub yaml: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubmitQuery {
    /// With a YAML body: the file's name without `.yaml` (as `name` in a JSON body).
    pub name: Option<String>,
}

/// What a submitted task became.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Submission {
    pub task: String,
    /// The file written, relative to the tasks folder.
    pub task_file: String,
    /// The queued run (absent for a scheduled task).
    pub run: Option<RunSummary>,
    /// For a task with `schedule:`: its next slots.
    pub schedule: Option<ScheduleView>,
    /// Why nothing was queued, when nothing was.
    pub note: Option<String>,
}

/// Writes a task file into the tasks folder and queues it (or schedules it).
#[utoipa::path(post, path = "/maxions", tag = "runs", params(SubmitQuery),
    request_body(description = "The task file: JSON `{name, yaml}`, or the YAML itself (`application/yaml`, `text/yaml`, `text/plain`) with `?name=`",
        content((SubmitBody = "application/json"), (String = "application/yaml"), (String = "text/plain"))),
    responses((status = 201, body = Submission, description = "Written and queued (or scheduled)"),
              (status = 400, body = super::error::ErrorBody, description = "Not a valid task: `invalid_task` with located `diagnostics`, or a bad name"),
              (status = 401, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody, description = "A task file of that name exists"),
              (status = 413, body = super::error::ErrorBody), (status = 415, body = super::error::ErrorBody)))]
pub async fn submit(
    State(state): State<ApiState>,
    query: Result<Query<SubmitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let body = body.map_err(rejection)?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let (name, yaml) = match media.as_str() {
        "application/json" => {
            let body: SubmitBody = serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request(format!(
                    "the body is not `{{\"name\": \"…\", \"yaml\": \"…\"}}`: {e}"
                ))
            })?;
            (body.name.or(query.name), body.yaml)
        }
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" | "text/plain" => {
            let text = String::from_utf8(body.to_vec())
                .map_err(|_| ApiError::bad_request("the task file is not UTF-8"))?;
            (query.name, text)
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the task as `application/json` (`{\"name\", \"yaml\"}`) or as `application/yaml` (the file, with `?name=`)",
            ));
        }
    };
    let name = match name {
        Some(name) => {
            check_name(&name)?;
            name
        }
        None => derived_name(&yaml),
    };
    let view = state.0.daemon.now();
    let tasks_dir = view.tasks_dir.clone();
    let blueprints_dir = view.project.join(&view.config.blueprints_dir);
    confine_blueprint(&yaml, &name, &tasks_dir, &blueprints_dir)?;
    let file_name = format!("{name}.yaml");
    let target = tasks_dir.join(&file_name);
    if target.exists() {
        return Err(taken(&file_name));
    }
    let project = view.project.clone();
    let config = (*view.config).clone();
    let written = {
        let file_name = file_name.clone();
        let target = target.clone();
        tokio::task::spawn_blocking(move || {
            write_validated(&tasks_dir, &target, &file_name, &yaml, &project, config)
        })
        .await
        .map_err(|e| ApiError::internal(format!("validating the task failed: {e}")))?
    };
    written?;
    tracing::info!(task = %target.display(), "task file submitted through the API");
    let submitted = match state
        .0
        .daemon
        .ask(|reply| Command::Submit {
            task: target.clone(),
            reply,
        })
        .await
    {
        Ok(submitted) => submitted,
        // The file is written: it is the task, and the next daemon runs it.
        Err(crate::daemon::handle::Refusal::Stopping) => Submitted::Ignored(
            "the daemon is stopping: the task file is written, and runs when the daemon starts again"
                .to_owned(),
        ),
        Err(refusal) => return Err(refusal.into()),
    };
    let view = state.0.daemon.now();
    let (run, schedule, note) = match submitted {
        Submitted::Queued(id) => (state.summary_of(&id), None, None),
        Submitted::Scheduled => (
            None,
            view.scheduled
                .iter()
                .find(|s| s.task == target)
                .map(|s| schedule_view(&view, s)),
            None,
        ),
        Submitted::Ignored(why) => (None, None, Some(why)),
    };
    let location = run.as_ref().map(|r| format!("/maxions/{}", r.id));
    let body = Submission {
        task: name,
        task_file: file_name,
        run,
        schedule,
        note,
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Some(location) = location
        && let Ok(value) = location.parse()
    {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

fn taken(file_name: &str) -> ApiError {
    ApiError::conflict(format!(
        "the tasks folder has a `{file_name}` already: choose another name, or delete that file first"
    ))
}

/// A task file name: lower-case letters, digits, `.`, `_`, `-`; no path, not hidden.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && !name.ends_with(".yaml")
        && !name.ends_with(".yml")
        && !name.ends_with(".runs")
        && !name.ends_with(".result.json");
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "`{}` cannot name a task file: use 1 to 64 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit, without `.yaml`",
            crate::cli::terminal::printable(name)
        )))
    }
}

/// A name from the task's first words and its content hash: `add-a-dark-mode-3f2a1c`.
fn derived_name(yaml: &str) -> String {
    let words = crate::config::yaml::parse(yaml)
        .ok()
        .and_then(|tree| tree.get("task").and_then(|t| t.as_str().map(str::to_owned)))
        .unwrap_or_default();
    let slug: Vec<String> = words
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(5)
        .map(str::to_ascii_lowercase)
        .collect();
    let hash = crate::runner::result::content_hash(yaml.as_bytes());
    let mut slug = slug.join("-");
    slug.truncate(40);
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        format!("task-{}", &hash[..6])
    } else {
        format!("{slug}-{}", &hash[..6])
    }
}

/// A blueprint named by path must lie in `blueprints_dir`: refused before the loader reads it.
fn confine_blueprint(
    yaml: &str,
    name: &str,
    tasks_dir: &Path,
    blueprints_dir: &Path,
) -> Result<(), ApiError> {
    let Ok(tree) = crate::config::yaml::parse(yaml) else {
        return Ok(());
    };
    let Some(node) = tree.get("blueprint") else {
        return Ok(());
    };
    let Some(blueprint) = node.as_str() else {
        return Ok(());
    };
    let by_path = blueprint.contains('/')
        || blueprint.contains('\\')
        || blueprint.ends_with(".yaml")
        || blueprint.ends_with(".yml")
        || blueprint.starts_with('.');
    if !by_path {
        return Ok(());
    }
    let wanted = tasks_dir.join(blueprint);
    let resolved = std::fs::canonicalize(&wanted).unwrap_or(wanted);
    let root =
        std::fs::canonicalize(blueprints_dir).unwrap_or_else(|_| blueprints_dir.to_path_buf());
    let plain = !resolved
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir));
    if plain && resolved.starts_with(&root) {
        return Ok(());
    }
    let diagnostic = DiagnosticView {
        file: format!("{name}.yaml"),
        line: Some(node.pos.line),
        column: Some(node.pos.column),
        severity: "error".to_owned(),
        code: "outside-blueprints-dir".to_owned(),
        message: format!(
            "the blueprint `{}` is outside the blueprints folder",
            crate::cli::terminal::printable(blueprint)
        ),
        hint: Some(
            "name a blueprint in `blueprints_dir` by its name (e.g. `blueprint: default`)"
                .to_owned(),
        ),
    };
    Err(ApiError::invalid_task(
        "the task names a blueprint outside the blueprints folder",
        vec![diagnostic],
    ))
}

/// Validates `yaml` as `target` would be, then writes it there (never over an existing file).
/// The text is first written to a hidden file beside it (which the daemon ignores), so that
/// relative references resolve as they will, and moved into place by a hard link, which fails
/// if the name was taken meanwhile.
fn write_validated(
    tasks_dir: &Path,
    target: &Path,
    file_name: &str,
    yaml: &str,
    project: &Path,
    config: crate::config::DaemonConfig,
) -> Result<(), ApiError> {
    static NONCE: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(tasks_dir)
        .map_err(|e| ApiError::internal(format!("cannot create the tasks folder: {e}")))?;
    let scratch: PathBuf = tasks_dir.join(format!(
        ".{file_name}.{}-{}.submit",
        std::process::id(),
        NONCE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&scratch, yaml)
        .map_err(|e| ApiError::internal(format!("cannot write into the tasks folder: {e}")))?;
    let outcome = (|| {
        if let Err(validation) = load_task_as(&scratch, target, project, config) {
            let shown = crate::config::validate::display_path(&scratch);
            let diagnostics: Vec<DiagnosticView> = validation
                .diagnostics
                .iter()
                .map(|d| {
                    let mut view = DiagnosticView::from(d);
                    if view.file == shown || Path::new(&view.file) == scratch {
                        view.file = file_name.to_owned();
                    }
                    view.message = view.message.replace(&shown, file_name);
                    view
                })
                .collect();
            let errors = diagnostics.iter().filter(|d| d.severity == "error").count();
            return Err(ApiError::invalid_task(
                format!(
                    "{file_name} is not a valid task: {errors} error{}",
                    if errors == 1 { "" } else { "s" }
                ),
                diagnostics,
            ));
        }
        match std::fs::hard_link(&scratch, target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(taken(file_name)),
            Err(e) => Err(ApiError::internal(format!(
                "cannot write {file_name} into the tasks folder: {e}"
            ))),
        }
    })();
    let _ = std::fs::remove_file(&scratch);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_the_folder() {
        for good in ["dark-mode", "a", "nightly.deps", "x_1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "Upper",
            "x.yaml",
            "x.runs",
            "-x",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn derived_names_come_from_the_task() {
        let name = derived_name("task: Add a dark mode toggle to the settings page\nrepo: a/b\n");
        assert!(name.starts_with("add-a-dark-mode-toggle-"), "{name}");
        assert!(check_name(&name).is_ok());
        assert!(derived_name(": not yaml [").starts_with("task-"));
    }
}
