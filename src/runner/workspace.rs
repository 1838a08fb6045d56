//! The repository inside the sandbox, as maxions handles it. The sandbox user (the agent, the
//! checks) works in `/workspace/repo`, a clone with its own `.git` that the agent may change at
//! will. maxions never trusts that `.git`: its own bare repository and index live in the
//! sandbox's private directory, owned by a uid the sandbox user cannot write, signal or trace,
//! and every git command there runs with no system or global config, no hooks, no fsmonitor and
//! no attributes (`info/attributes` turns filters, `eol` and encodings off), so the tree it
//! records is exactly the bytes the checks saw.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::steps::StepError;
use super::{REPO_DIR, Runner};
use crate::git::Oid;
use crate::sandbox::ExecRequest;

/// Longest an internal git command in the sandbox may take.
const GIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// Where `checkout` puts the base's bundle for both users, for as long as the checkout takes.
pub(super) const BASE_BUNDLE: &str = "/tmp/.maxions-base.bundle";
/// The largest bundle maxions takes out of a sandbox.
pub(super) const MAX_BUNDLE: u64 = 2 << 30;

/// Shell prelude of every maxions git command in the sandbox: `g` is git with nothing the
/// sandbox could have planted. Values come in as environment variables, never spliced in.
const PRELUDE: &str = r#"set -eu
export HOME="$P" GIT_DIR="$P/git" GIT_INDEX_FILE="$P/index" GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0 LC_ALL=C
unset GIT_WORK_TREE
g() { git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c core.untrackedCache=false -c safe.directory='*' -c gc.auto=0 -c core.symlinks=true "$@"; }
"#;

/// `info/attributes` of maxions' repository: it overrides every `.gitattributes` in the tree.
const NO_ATTRIBUTES: &str = "* -text -eol -filter -ident -working-tree-encoding -diff -merge\n";

/// Makes the run's private scratch directory on this machine (mode 0700, made fresh).
pub(super) fn scratch_dir(state_dir: &Path, run_id: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let runs = state_dir.join("runs");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&runs)?;
    let dir = runs.join(crate::sandbox::docker::sanitize(run_id));
    // Not recursive: the directory must be new, so that nothing else made it first.
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

impl Runner<'_> {
    fn private_dir(&self) -> Result<String, StepError> {
        Ok(self.sandbox()?.private_dir().to_owned())
    }

    /// Seeds the sandbox from a bundle of the base already copied to [`BASE_BUNDLE`] (by the
    /// sandbox's user, with no process of it alive): the sandbox user's clone on the task's
    /// branch, then maxions' own repository beside it. Returns the base's tree. The private
    /// directory's name is never given to a command of the sandbox's user.
    pub(super) async fn seed_repo(
        &self,
        base: &str,
        base_oid: &Oid,
        cancel: &CancellationToken,
    ) -> Result<Oid, StepError> {
        let clone = r#"set -eu
git clone -q --branch "$BASE" "$BUNDLE" "$REPO"
rm -f "$BUNDLE"
cd "$REPO"
git checkout -q -B "$BRANCH"
git remote set-url origin "$URL""#;
        let request = ExecRequest::new(["sh", "-c", clone])
            .env("BUNDLE", BASE_BUNDLE)
            .env("BASE", base)
            .env("REPO", REPO_DIR)
            .env("BRANCH", self.task.branch.clone())
            .env("URL", self.task.repo.clone_url.clone())
            .timeout(GIT_TIMEOUT);
        self.exec_quiet(
            "cannot clone the repository in the sandbox",
            &request,
            cancel,
        )
        .await?;
        // maxions' repository borrows the clone's objects instead of unpacking the bundle a
        // second time. The sandbox can corrupt or delete those, but not to any effect beyond a
        // failed run: maxions writes every object of the new tree into its own store, and the
        // host re-hashes every object of the bundle and compares the tree with the checked one.
        let script = format!(
            r#"{PRELUDE}g init -q --bare "$GIT_DIR"
printf '%s' "$NO_ATTRIBUTES" > "$GIT_DIR/info/attributes"
printf '%s/.git/objects\n' "$REPO" > "$GIT_DIR/objects/info/alternates"
g update-ref "refs/heads/$BASE" "$BASE_OID"
g rev-parse --verify "$BASE_OID^{{tree}}""#
        );
        let request = ExecRequest::new(["sh", "-c", &script])
            .as_maxions()
            .env("P", self.private_dir()?)
            .env("REPO", REPO_DIR)
            .env("BASE", base)
            .env("BASE_OID", base_oid.to_string())
            .env("NO_ATTRIBUTES", NO_ATTRIBUTES)
            .timeout(GIT_TIMEOUT);
        let tree = self
            .exec_quiet(
                "cannot set up maxions' repository in the sandbox",
                &request,
                cancel,
            )
            .await?;
        parse_oid(&tree)
    }

    /// The tree of `/workspace/repo` as it is now (every file not ignored), hashed by maxions'
    /// own git. Call it with no process of the sandbox user alive.
    ///
    /// The index starts empty every time: with a gitlink already in it, `git add -A` runs
    /// `git status` inside that directory, a repository the agent may have nested in the tree,
    /// with that repository's own config (a clean filter there would run as maxions' uid). A
    /// fresh index costs a re-hash of the tree, never that.
    pub(super) async fn snapshot_tree(
        &self,
        id: &str,
        cancel: &CancellationToken,
    ) -> Result<Oid, StepError> {
        // maxions' uid reads the tree as "others": make it readable (git records only the
        // executable bit, so this changes nothing that is committed). Symlinks are not followed.
        let readable = ExecRequest::new([
            "sh",
            "-c",
            r#"[ ! -L "$REPO" ] && /bin/chmod -R a+rX "$REPO" 2>/dev/null; exit 0"#,
        ])
        .env("REPO", REPO_DIR)
        .timeout(GIT_TIMEOUT);
        // `/bin/chmod` (read-only root file system, not found through PATH) starts no process:
        // no sweep is owed for it.
        self.run_quiet("cannot read the work tree", &readable, cancel)
            .await?;
        let script = format!(
            r#"{PRELUDE}if [ -L "$REPO" ] || [ ! -d "$REPO" ]; then echo "$REPO is not a directory" >&2; exit 1; fi
export GIT_WORK_TREE="$REPO"
rm -f "$GIT_INDEX_FILE"
g add -A
g write-tree"#
        );
        let request = ExecRequest::new(["sh", "-c", &script])
            .as_maxions()
            .env("P", self.private_dir()?)
            .env("REPO", REPO_DIR)
            .timeout(GIT_TIMEOUT);
        let tree = self
            .exec_quiet(
                &format!("step `{id}`: cannot record the work tree"),
                &request,
                cancel,
            )
            .await?;
        parse_oid(&tree)
    }

    /// Puts `tree` on the task's branch in maxions' repository (one commit on the base) and
    /// bundles that branch, without the base, to `<private>/out.bundle`. Returns its path.
    pub(super) async fn bundle_tree(
        &self,
        base: &Oid,
        tree: &Oid,
        cancel: &CancellationToken,
    ) -> Result<String, StepError> {
        let private = self.private_dir()?;
        let script = format!(
            r#"{PRELUDE}rm -f "$P/out.bundle"
c=$(printf 'maxions transfer\n' | g commit-tree "$TREE" -p "$BASE")
g update-ref "refs/heads/$BRANCH" "$c"
g bundle create -q "$P/out.bundle" "refs/heads/$BRANCH" "^$BASE"
chmod 0600 "$P/out.bundle""#
        );
        let request = ExecRequest::new(["sh", "-c", &script])
            .as_maxions()
            .env("P", private.clone())
            .env("TREE", tree.to_string())
            .env("BASE", base.to_string())
            .env("BRANCH", self.task.branch.clone())
            .env("GIT_AUTHOR_NAME", "maxions")
            .env("GIT_AUTHOR_EMAIL", "maxions@localhost")
            .env("GIT_COMMITTER_NAME", "maxions")
            .env("GIT_COMMITTER_EMAIL", "maxions@localhost")
            .timeout(GIT_TIMEOUT);
        self.exec_quiet("cannot bundle the change", &request, cancel)
            .await?;
        Ok(format!("{private}/out.bundle"))
    }
}

fn parse_oid(output: &str) -> Result<Oid, StepError> {
    let line = output.lines().rev().map(str::trim).find(|l| !l.is_empty());
    line.and_then(Oid::parse).ok_or_else(|| {
        StepError::Fatal(format!(
            "git in the sandbox printed no object id ({:?})",
            super::steps::truncate(output.trim(), 80)
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_scratch_directory_is_private_and_never_one_made_before() {
        let state = tempfile::tempdir().unwrap();
        let dir = scratch_dir(state.path(), "run/1").unwrap();
        assert_eq!(dir, state.path().join("runs/run_1"));
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A directory (or a symlink planted there) that already exists is refused, not reused.
        assert!(scratch_dir(state.path(), "run/1").is_err());
        std::os::unix::fs::symlink("/tmp", state.path().join("runs/planted")).unwrap();
        assert!(scratch_dir(state.path(), "planted").is_err());
    }
}
