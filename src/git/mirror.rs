//! The bare mirror of one remote repository in maxions' state dir: fetched and pushed on the
//! host with the forge's token, bundled into the sandbox for checkout, and the only place a
//! branch from the sandbox is imported into (see `import.rs`) and pushed from.
//!
//! Layout: `<state>/mirrors/<host>/<path>.git` (bare, created by `git init --bare` with no
//! templates, so no sample hooks), `<that>/maxions.lock` (see `lock.rs`), and one private
//! `HOME` for every host git process, `<state>/git-home` (0700, empty). Refs: `refs/heads/*`
//! mirror the remote (`fetch --prune`); `refs/maxions/incoming/<run>` holds a bundle's commit
//! while it is checked and `refs/maxions/outgoing/<run>` maxions' own commit until it is pushed.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::command::{FILE_RECEIVE_PACK, GitCommand, Transport, failed};
use super::error::GitError;
use super::lock::{MirrorLock, io};
use super::oid::Oid;
use super::remote::Remote;
use crate::forge::GitCredentials;
use crate::sandbox::redact::Redactor;

/// A bare mirror of one remote. Cheap to keep; every operation takes the mirror's lock for its
/// own duration, so runs on the same repository take turns rather than corrupt it.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub(crate) remote: Remote,
    pub(crate) dir: PathBuf,
    home: PathBuf,
    pub(crate) timeout: Duration,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub branch: String,
    pub commit: Oid,
    /// What the remote branch pointed at before (`None`: the push created it).
    pub previous: Option<Oid>,
}

/// How many times a push that lost its connection is tried in all, and the waits between.
const PUSH_ATTEMPTS: u32 = 3;
const PUSH_BACKOFF: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];

impl Mirror {
    /// The time any one git command (or the wait for the mirror's lock) may take.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

    /// Opens the mirror of `remote_url` below `state_dir`, creating it if missing. Nothing is
    /// fetched yet.
    ///
    /// # Errors
    /// An unsupported URL (not https/http/file, or with credentials in it), or the mirror could
    /// not be created.
    pub async fn open(
        state_dir: &Path,
        remote_url: &str,
        cancel: &CancellationToken,
    ) -> Result<Self, GitError> {
        let remote = Remote::parse(remote_url)?;
        let dir = state_dir.join("mirrors").join(&remote.mirror);
        let home = state_dir.join("git-home");
        private_dir(&home)?;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| io("create the mirror directory", &dir, source))?;
        let mirror = Self {
            remote,
            dir,
            home,
            timeout: Self::DEFAULT_TIMEOUT,
        };
        let _lock = mirror.lock(cancel).await?;
        if !mirror.dir.join("HEAD").is_file() {
            // `--template=` (empty): no sample hooks, no `info/exclude`; the config is git's
            // minimal one, and only maxions ever writes to it.
            mirror
                .git("init")
                .args(["--quiet", "--bare", "--template="])
                .arg(&mirror.dir)
                .run(cancel)
                .await?;
        }
        Ok(mirror)
    }

    /// The same mirror with another per-command timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The bare repository's directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir
    }

    #[must_use]
    pub fn url(&self) -> &str {
        &self.remote.url
    }

    /// Brings every branch of the remote into the mirror (`refs/heads/*`, force, pruning those
    /// the remote deleted). The first call fetches everything; later calls only what is new.
    ///
    /// # Errors
    /// git failed (network, authentication), timed out or was cancelled.
    pub async fn fetch(
        &self,
        creds: Option<&GitCredentials>,
        cancel: &CancellationToken,
    ) -> Result<(), GitError> {
        let _lock = self.lock(cancel).await?;
        self.network("fetch", creds)
            .args([
                "--quiet",
                "--prune",
                "--no-tags",
                "--no-write-fetch-head",
                "--recurse-submodules=no",
            ])
            .arg(&self.remote.url)
            .arg("+refs/heads/*:refs/heads/*")
            .run(cancel)
            .await?;
        Ok(())
    }

    /// The remote's default branch (what its `HEAD` points at), e.g. `main`.
    ///
    /// # Errors
    /// git failed, or the remote's `HEAD` is not a branch.
    pub async fn default_branch(
        &self,
        creds: Option<&GitCredentials>,
        cancel: &CancellationToken,
    ) -> Result<String, GitError> {
        let out = self
            .network("ls-remote", creds)
            .args(["--symref"])
            .arg(&self.remote.url)
            .arg("HEAD")
            .run(cancel)
            .await?;
        String::from_utf8_lossy(&out)
            .lines()
            .find_map(|line| {
                let (target, name) = line.strip_prefix("ref: ")?.split_once('\t')?;
                (name == "HEAD")
                    .then_some(target)?
                    .strip_prefix("refs/heads/")
            })
            .map(str::to_owned)
            .ok_or_else(|| GitError::NoDefaultBranch {
                url: self.remote.url.clone(),
            })
    }

    /// Where `branch` points on the remote now (`None`: no such branch).
    ///
    /// # Errors
    /// An invalid branch name, or git failed.
    pub async fn remote_branch(
        &self,
        branch: &str,
        creds: Option<&GitCredentials>,
        cancel: &CancellationToken,
    ) -> Result<Option<Oid>, GitError> {
        self.check_branch(branch, cancel).await?;
        let full = format!("refs/heads/{branch}");
        let out = self
            .network("ls-remote", creds)
            .arg(&self.remote.url)
            .arg(&full)
            .run(cancel)
            .await?;
        let text = String::from_utf8_lossy(&out);
        // ls-remote matches patterns by suffix: keep only the exact ref.
        for line in text.lines() {
            if let Some((oid, name)) = line.split_once('\t')
                && name == full
            {
                return Oid::parse(oid)
                    .map(Some)
                    .ok_or_else(|| GitError::Unexpected {
                        command: "git ls-remote".into(),
                        output: super::command::escape_controls(line),
                    });
            }
        }
        Ok(None)
    }

    /// The commit `rev` names in the mirror (a branch, `refs/...`, an id), or `None`.
    ///
    /// # Errors
    /// git failed.
    pub async fn resolve(
        &self,
        rev: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Oid>, GitError> {
        let finished = self
            .local("rev-parse")
            .args(["--verify", "--quiet", "--end-of-options"])
            .arg(format!("{rev}^{{commit}}"))
            .run_raw(cancel)
            .await?;
        if !finished.status.success() {
            return Ok(None);
        }
        parse_oid("git rev-parse", &finished.stdout).map(Some)
    }

    /// Writes a bundle of `refs/heads/<base>` with its full history to `dest` (for the
    /// sandbox's checkout) and returns the commit it holds.
    ///
    /// # Errors
    /// The branch is missing from the mirror (fetch first), or git failed.
    pub async fn bundle_base(
        &self,
        base: &str,
        dest: &Path,
        cancel: &CancellationToken,
    ) -> Result<Oid, GitError> {
        let mut heads = self.bundle(&[base], dest, cancel).await?;
        Ok(heads.remove(0))
    }

    /// Writes a bundle of these branches (full history) to `dest`; their commits, in order.
    ///
    /// # Errors
    /// A branch is missing from the mirror, or git failed.
    pub async fn bundle(
        &self,
        branches: &[&str],
        dest: &Path,
        cancel: &CancellationToken,
    ) -> Result<Vec<Oid>, GitError> {
        // git runs in its private HOME: a relative path would land there.
        let dest = std::path::absolute(dest)
            .map_err(|source| io("find the bundle's destination", dest, source))?;
        let _lock = self.lock(cancel).await?;
        let mut heads = Vec::new();
        for branch in branches {
            self.check_branch(branch, cancel).await?;
            let commit = self
                .resolve(&format!("refs/heads/{branch}"), cancel)
                .await?
                .ok_or_else(|| GitError::BranchMissing {
                    branch: (*branch).to_owned(),
                    url: self.remote.url.clone(),
                })?;
            heads.push(commit);
        }
        self.local("bundle")
            .label("git bundle create")
            .args(["create", "--quiet"])
            .arg(&dest)
            .args(branches.iter().map(|b| format!("refs/heads/{b}")))
            .run(cancel)
            .await?;
        Ok(heads)
    }

    /// Pushes `commit` to `refs/heads/<branch>` and nothing else, if the remote branch is still
    /// where it is now (read first); then reads it back.
    ///
    /// # Errors
    /// As [`Self::push_with_lease`].
    pub async fn push(
        &self,
        commit: &Oid,
        branch: &str,
        creds: Option<&GitCredentials>,
        cancel: &CancellationToken,
    ) -> Result<Pushed, GitError> {
        let now = self.remote_branch(branch, creds, cancel).await?;
        self.push_with_lease(commit, branch, now.as_ref(), creds, cancel)
            .await
    }

    /// Pushes `commit` to `refs/heads/<branch>` and nothing else, only if the remote branch is
    /// at `expected` (`None`: it must not exist), without hooks; then reads the remote branch
    /// back and fails unless it is `commit`. Passing what the branch was when the run began
    /// keeps a person's push during the run from being overwritten.
    ///
    /// # Errors
    /// [`GitError::LeaseBroken`] when the remote moved, [`GitError::ReadBack`] when the branch
    /// is not `commit` afterwards, or git failed.
    pub async fn push_with_lease(
        &self,
        commit: &Oid,
        branch: &str,
        expected: Option<&Oid>,
        creds: Option<&GitCredentials>,
        cancel: &CancellationToken,
    ) -> Result<Pushed, GitError> {
        self.check_branch(branch, cancel).await?;
        let full = format!("refs/heads/{branch}");
        let mut attempt = 1;
        loop {
            match self.push_once(commit, &full, expected, creds, cancel).await {
                Ok(()) => break,
                Err((error, transient)) => {
                    // A push whose answer was lost may have landed: then a second push would
                    // find the lease broken by itself. What the remote has decides.
                    let landed = (transient || attempt > 1)
                        && self
                            .remote_branch(branch, creds, cancel)
                            .await
                            .is_ok_and(|found| found.as_ref() == Some(commit));
                    if landed {
                        break;
                    }
                    if !transient || attempt >= PUSH_ATTEMPTS {
                        return Err(error);
                    }
                    let wait = PUSH_BACKOFF[(attempt - 1) as usize];
                    tracing::warn!(%error, attempt, "git push failed; trying again in {}s", wait.as_secs());
                    tokio::select! {
                        () = cancel.cancelled() => {
                            return Err(GitError::Cancelled { command: "git push".into() });
                        }
                        () = tokio::time::sleep(wait) => {}
                    }
                    attempt += 1;
                }
            }
        }
        let found = self.remote_branch(branch, creds, cancel).await?;
        if found.as_ref() != Some(commit) {
            return Err(GitError::ReadBack {
                branch: branch.to_owned(),
                expected: commit.clone(),
                found,
            });
        }
        // The mirror now knows what the remote has, without waiting for the next fetch.
        let _lock = self.lock(cancel).await?;
        self.local("update-ref")
            .arg(&full)
            .arg(commit.as_str())
            .run(cancel)
            .await?;
        Ok(Pushed {
            branch: branch.to_owned(),
            commit: commit.clone(),
            previous: expected.cloned(),
        })
    }

    /// One `git push` with the lease, under the mirror's lock. An error comes with whether
    /// trying again may help: a dropped connection or a timeout may; a refusal (the lease, a
    /// protected branch, a hook on the remote) will not.
    async fn push_once(
        &self,
        commit: &Oid,
        full: &str,
        expected: Option<&Oid>,
        creds: Option<&GitCredentials>,
        cancel: &CancellationToken,
    ) -> Result<(), (GitError, bool)> {
        let _lock = self.lock(cancel).await.map_err(|e| (e, false))?;
        let lease = format!(
            "--force-with-lease={full}:{}",
            expected.map_or("", Oid::as_str)
        );
        let mut push = self.network("push", creds).args([
            "--porcelain",
            "--no-verify",
            "--no-follow-tags",
            "--no-signed",
            "--recurse-submodules=no",
        ]);
        if self.remote.transport == Transport::File {
            push = push.arg(format!("--receive-pack={FILE_RECEIVE_PACK}"));
        }
        let finished = push
            .arg(lease)
            .arg(&self.remote.url)
            .arg(format!("{commit}:{full}"))
            .run_raw(cancel)
            .await
            .map_err(|e| {
                let transient = matches!(e, GitError::TimedOut { .. });
                (e, transient)
            })?;
        if finished.status.success() {
            return Ok(());
        }
        let stdout = String::from_utf8_lossy(&finished.stdout);
        if stdout.contains("(stale info)") || stdout.contains("(fetch first)") {
            return Err((
                GitError::LeaseBroken {
                    branch: full.trim_start_matches("refs/heads/").to_owned(),
                    expected: expected.cloned(),
                },
                false,
            ));
        }
        // `--porcelain` says `[rejected]` or `[remote rejected]` for a refusal; a push that
        // names no ref outcome lost its connection.
        let refused = stdout.contains("[rejected]") || stdout.contains("[remote rejected]");
        Err((failed("git push".into(), &finished), !refused))
    }

    /// Deletes a run's `refs/maxions/*` refs once it is done with them, so their objects can
    /// be collected.
    ///
    /// # Errors
    /// An invalid run id, or git failed.
    pub async fn forget(&self, run_id: &str, cancel: &CancellationToken) -> Result<(), GitError> {
        check_run_id(run_id)?;
        let _lock = self.lock(cancel).await?;
        let input = format!(
            "delete refs/maxions/incoming/{run_id}\ndelete refs/maxions/outgoing/{run_id}\n"
        );
        self.local("update-ref")
            .arg("--stdin")
            .stdin(input.into_bytes())
            .run(cancel)
            .await?;
        Ok(())
    }

    pub(crate) async fn lock(&self, cancel: &CancellationToken) -> Result<MirrorLock, GitError> {
        MirrorLock::acquire(&self.dir.join("maxions.lock"), self.timeout, cancel).await
    }

    /// A git command with no git directory (`init`, `check-ref-format`).
    pub(crate) fn git(&self, subcommand: &str) -> GitCommand {
        GitCommand::new(subcommand, &self.home, self.timeout)
    }

    /// A git command in the mirror that touches no network.
    pub(crate) fn local(&self, subcommand: &str) -> GitCommand {
        self.git(subcommand).git_dir(&self.dir)
    }

    /// A git command in the mirror that talks to the remote, with the credentials (if any)
    /// scoped to the remote's origin and masked in its messages.
    fn network(&self, subcommand: &str, creds: Option<&GitCredentials>) -> GitCommand {
        let command = self.local(subcommand).transport(self.remote.transport);
        match creds {
            None => command,
            Some(creds) => {
                let secrets = creds.redactions();
                command
                    .envs(creds.git_env(&self.remote.url))
                    .redactor(Redactor::new(&secrets).unwrap_or_default())
            }
        }
    }

    /// Refuses a branch name git would not accept as `refs/heads/<branch>`.
    pub(crate) async fn check_branch(
        &self,
        branch: &str,
        cancel: &CancellationToken,
    ) -> Result<(), GitError> {
        let invalid = |reason| GitError::Invalid {
            what: "branch name",
            value: super::command::escape_controls(branch),
            reason,
        };
        if branch.is_empty() || branch.starts_with('-') || branch.starts_with("refs/") {
            return Err(invalid("give a branch name such as `maxions/fix-typo`"));
        }
        let valid = self
            .git("check-ref-format")
            .arg(format!("refs/heads/{branch}"))
            .run_raw(cancel)
            .await?
            .status
            .success();
        if valid {
            Ok(())
        } else {
            Err(invalid("git refuses it as a branch name"))
        }
    }
}

/// A run id as it appears in `refs/maxions/*/<run>`.
pub(crate) fn check_run_id(run_id: &str) -> Result<(), GitError> {
    let ok = !run_id.is_empty()
        && run_id.len() <= 128
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        && !run_id.starts_with(['.', '-'])
        && !run_id.contains("..")
        && !run_id.ends_with(".lock");
    if ok {
        Ok(())
    } else {
        Err(GitError::Invalid {
            what: "run id",
            value: super::command::escape_controls(run_id),
            reason: "use letters, digits, `_`, `-` and inner dots",
        })
    }
}

/// The one object id a command printed.
pub(crate) fn parse_oid(command: &str, stdout: &[u8]) -> Result<Oid, GitError> {
    let text = String::from_utf8_lossy(stdout);
    Oid::parse(text.trim()).ok_or_else(|| GitError::Unexpected {
        command: command.to_owned(),
        output: super::command::escape_controls(text.trim()),
    })
}

/// Creates `dir` as an empty 0700 directory if missing, and makes it 0700 if not.
fn private_dir(dir: &Path) -> Result<(), GitError> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(source) => return Err(io("create git's private home", dir, source)),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|source| io("restrict git's private home", dir, source))
}
