//! A task: what to do, on which repository. The task text is data, never a template.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A task file (`tasks/*.yaml`): what to do, on which repository, with which blueprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "maxions task")]
pub struct Task {
    /// What the agent should do, in plain language. Inserted into prompts as data: it is never
    /// itself rendered as a template.
    #[schemars(length(min = 1))]
    pub task: String,
    /// The repository to work on: `owner/name` on the configured forge, or a clone URL
    /// (`https://...`, `http://...`, `file://...`).
    #[schemars(extend("format" = "maxions-repo"))]
    pub repo: String,
    /// The blueprint to run: a name looked up in the blueprints directory, or a path to a YAML
    /// file relative to this task file. Default: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blueprint: Option<String>,
    /// The branch to start from. Default: the repository's default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "maxions-branch"))]
    pub base: Option<String>,
    /// The branch maxions works on and pushes. Default: `maxions/<task file name>`, stable so
    /// that re-runs reuse it and update the same pull request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "maxions-branch"))]
    pub branch: Option<String>,
    /// Free-form values for the blueprint's templates, as `vars.<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// A 5-field cron expression (`minute hour day-of-month month day-of-week`) that makes this a
    /// recurring task, e.g. `"0 9 * * 1"` for Mondays at 09:00.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "maxions-cron"))]
    pub schedule: Option<String>,
    /// The IANA time zone the schedule is read in, e.g. `Europe/Berlin`. Default: `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "maxions-timezone"))]
    pub timezone: Option<String>,
}

impl Task {
    pub const DEFAULT_BLUEPRINT: &str = "default";

    pub fn blueprint_name(&self) -> &str {
        self.blueprint.as_deref().unwrap_or(Self::DEFAULT_BLUEPRINT)
    }
}

/// The repository a task names, split into the parts templates need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoRef {
    pub owner: String,
    pub name: String,
    pub full_name: String,
    pub clone_url: String,
}

impl RepoRef {
    /// Reads `owner/name` (a repository on GitHub) or a clone URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let is_part = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if let Some((owner, name)) = text.split_once('/')
            && !text.contains("://")
            && is_part(owner)
            && is_part(name)
        {
            return Ok(Self {
                owner: owner.to_owned(),
                name: name.trim_end_matches(".git").to_owned(),
                full_name: format!("{owner}/{}", name.trim_end_matches(".git")),
                clone_url: format!(
                    "https://github.com/{owner}/{}.git",
                    name.trim_end_matches(".git")
                ),
            });
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!(
                "`{text}` is neither `owner/name` nor a clone URL (https://, http://, file://, ssh://)"
            ));
        };
        if !["https", "http", "file", "ssh", "git"].contains(&scheme) {
            return Err(format!("unsupported URL scheme `{scheme}` in `{text}`"));
        }
        let path = if scheme == "file" {
            rest
        } else {
            rest.split_once('/').map_or("", |(_, p)| p)
        };
        let mut parts = path
            .trim_end_matches('/')
            .rsplit('/')
            .filter(|p| !p.is_empty());
        let name = parts
            .next()
            .map(|n| n.trim_end_matches(".git").to_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("the URL `{text}` names no repository"))?;
        let owner = parts.next().unwrap_or("local").to_owned();
        Ok(Self {
            full_name: format!("{owner}/{name}"),
            owner,
            name,
            clone_url: text.to_owned(),
        })
    }
}

/// Checks a branch name the way `git check-ref-format --branch` would, for the common mistakes.
pub fn check_branch_name(name: &str) -> Result<(), String> {
    let bad = if name.is_empty() {
        Some("it is empty")
    } else if name.starts_with('-') || name.starts_with('/') || name.ends_with('/') {
        Some("it may not start with `-` or `/`, nor end with `/`")
    } else if name.ends_with('.') || name.ends_with(".lock") {
        Some("it may not end with `.` or `.lock`")
    } else if name.contains("..") || name.contains("//") || name.contains("@{") {
        Some("it may not contain `..`, `//` or `@{`")
    } else if name
        .chars()
        .any(|c| c.is_control() || " ~^:?*[\\".contains(c))
    {
        Some("it may not contain spaces, control characters or any of ~ ^ : ? * [ \\")
    } else {
        None
    };
    match bad {
        Some(reason) => Err(format!("`{name}` is not a valid git branch name: {reason}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_forms() {
        let r = RepoRef::parse("octo/hello").unwrap();
        assert_eq!(r.clone_url, "https://github.com/octo/hello.git");
        assert_eq!(r.full_name, "octo/hello");
        let r = RepoRef::parse("http://127.0.0.1:8080/git/octo/hello.git").unwrap();
        assert_eq!((r.owner.as_str(), r.name.as_str()), ("octo", "hello"));
        let r = RepoRef::parse("file:///tmp/demo/repo").unwrap();
        assert_eq!((r.owner.as_str(), r.name.as_str()), ("demo", "repo"));
        assert!(RepoRef::parse("just-a-name").is_err());
        assert!(RepoRef::parse("ftp://x/y/z").is_err());
        assert!(RepoRef::parse("a/b c").is_err());
    }

    #[test]
    fn branch_names() {
        assert!(check_branch_name("maxions/dark-mode").is_ok());
        for bad in ["", "-x", "a..b", "a b", "x.lock", "a/", "$(touch /tmp/x)"] {
            assert!(check_branch_name(bad).is_err(), "{bad}");
        }
    }
}
