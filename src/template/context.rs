//! What templates can see. Secrets are never part of it.

use std::collections::BTreeMap;

use serde::Serialize;

/// The template context of one step.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    /// The task text, as data.
    pub task: String,
    pub repo: Repo,
    pub branch: String,
    pub base: String,
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Outputs of the steps that ran before this one: `steps.<id>.<output>`.
    pub steps: BTreeMap<String, BTreeMap<String, String>>,
    pub run: RunInfo,
    /// Only inside `fix.agent`: the checks that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<Vec<FailedCheck>>,
}

/// The repository as templates see it (`repo.owner`, ...): the template layer's own type, so
/// that it depends on nothing of `config` (which uses templates to validate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Repo {
    pub owner: String,
    pub name: String,
    pub full_name: String,
    pub clone_url: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub id: String,
    /// How many checks were still failing after the last fix round of any check step so far.
    pub failed_checks: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedCheck {
    pub id: String,
    pub exit_code: i64,
    pub output: String,
}

/// The names at the top of a context, and what each holds, for did-you-mean hints.
pub const ROOTS: [&str; 7] = ["task", "repo", "branch", "base", "vars", "steps", "run"];
pub const REPO_FIELDS: [&str; 4] = ["owner", "name", "full_name", "clone_url"];
pub const RUN_FIELDS: [&str; 2] = ["id", "failed_checks"];
