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
    /// Where `owner/name` lives when no forge is configured.
    pub const GITHUB_WEB_URL: &str = "https://github.com";

    /// Reads `owner/name` (a repository on github.com) or a clone URL. With a forge configured,
    /// use [`Self::resolve`], so that `owner/name` is cloned from that forge.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::resolve(text, Self::GITHUB_WEB_URL)
    }

    /// Reads `owner/name` (a repository on the forge whose repositories live below
    /// `forge_web_url`, e.g. `https://github.com` or `https://ghe.example`) or a clone URL.
    pub fn resolve(text: &str, forge_web_url: &str) -> Result<Self, String> {
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
            let name = name.trim_end_matches(".git");
            return Ok(Self {
                owner: owner.to_owned(),
                name: name.to_owned(),
                full_name: format!("{owner}/{name}"),
                clone_url: format!(
                    "{}/{owner}/{name}.git",
                    forge_web_url.trim().trim_end_matches('/')
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
            // git reads `file://HOST/path` and percent escapes its own way: accept only the one
            // plain form, so that what is checked (see `load::check_local_repo`) is what git opens.
            if !rest.starts_with('/') {
                return Err(format!(
                    "`{text}` is not a local path: write `file:///absolute/path`"
                ));
            }
            if rest.contains(['%', '?', '#', '\\']) {
                return Err(format!(
                    "`{text}`: a `file://` path may not contain `%`, `?`, `#` or `\\`"
                ));
            }
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

    /// The directory of a `file://` repository, as written (not yet checked against the roots
    /// local repositories may live in).
    #[must_use]
    pub fn local_path(&self) -> Option<std::path::PathBuf> {
        self.clone_url
            .strip_prefix("file://")
            .map(std::path::PathBuf::from)
    }
}

/// Checks that maxions may push `branch`: a valid branch name that starts with `prefix` (the
/// config's `branch_prefix`) and is not `base`. `validate` checks what a task writes; the runner
/// checks again at push time against the base it resolved (the repository's default branch when
/// the task names none). The error is a sentence for the run's log or a diagnostic.
pub fn check_push_branch(branch: &str, base: Option<&str>, prefix: &str) -> Result<(), String> {
    check_branch_name(branch)?;
    let short = |name: &str| name.strip_prefix("refs/heads/").unwrap_or(name).to_owned();
    if let Some(base) = base
        && short(base).eq_ignore_ascii_case(&short(branch))
    {
        return Err(format!(
            "branch `{branch}` is the base branch: maxions never pushes to the branch it starts from"
        ));
    }
    if prefix.is_empty() || !branch.starts_with(prefix) || branch.len() == prefix.len() {
        return Err(format!(
            "branch `{branch}` does not start with `{prefix}`: maxions pushes only to branches \
             under its prefix (`branch_prefix` in maxions.yaml)"
        ));
    }
    Ok(())
}

impl From<&RepoRef> for crate::template::Repo {
    fn from(repo: &RepoRef) -> Self {
        Self {
            owner: repo.owner.clone(),
            name: repo.name.clone(),
            full_name: repo.full_name.clone(),
            clone_url: repo.clone_url.clone(),
        }
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
        for bad in ["file://host/x", "file:///a%2e%2e/b", "file:///a/b?x"] {
            assert!(RepoRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn owner_name_is_cloned_from_the_forge_it_is_on() {
        let r = RepoRef::resolve("octo/hello", "https://ghe.example/").unwrap();
        assert_eq!(r.clone_url, "https://ghe.example/octo/hello.git");
        let r = RepoRef::resolve("https://gitlab.example/a/b.git", "https://ghe.example").unwrap();
        assert_eq!(r.clone_url, "https://gitlab.example/a/b.git");
    }

    #[test]
    fn push_branches_need_the_prefix_and_differ_from_the_base() {
        assert!(check_push_branch("maxions/x", Some("main"), "maxions/").is_ok());
        assert!(check_push_branch("maxions/x", None, "maxions/").is_ok());
        for (branch, base) in [
            ("main", Some("main")),
            ("main", None),
            ("maxions/", None),
            ("maxions/x", Some("maxions/x")),
            ("maxions/x", Some("refs/heads/maxions/X")),
            ("maxions/a..b", None),
        ] {
            assert!(
                check_push_branch(branch, base, "maxions/").is_err(),
                "{branch} {base:?}"
            );
        }
        assert!(check_push_branch("bot-x", None, "bot-").is_ok());
        assert!(check_push_branch("maxions/x", None, "").is_err());
    }

    #[test]
    fn branch_names() {
        assert!(check_branch_name("maxions/dark-mode").is_ok());
        for bad in ["", "-x", "a..b", "a b", "x.lock", "a/", "$(touch /tmp/x)"] {
            assert!(check_branch_name(bad).is_err(), "{bad}");
        }
    }
}
