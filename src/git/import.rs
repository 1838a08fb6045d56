//! Importing a branch from the sandbox, which is hostile: its bundle is checked (one ref, the
//! task's branch, a commit that descends from the base, the tree that passed the checks, no
//! secret value in any new object), and then maxions writes its own commit on the host, so the
//! parent, message and author are trusted by construction and only the tree comes from the
//! sandbox.

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::command::{Transport, escape_controls, failed};
use super::error::{BundleRejection, GitError};
use super::lock::io;
use super::mirror::{Mirror, check_run_id, parse_oid};
use super::oid::Oid;
use super::scan::Scanner;
use crate::sandbox::redact::Redactor;
use crate::secret::Secret;

/// What the bundle from a run must be, and what maxions' commit will say.
#[derive(Debug, Clone)]
pub struct Expect {
    pub run_id: String,
    /// The task's branch: the bundle must hold exactly `refs/heads/<branch>`.
    pub branch: String,
    /// The commit the run started from; maxions' commit has it as its only parent.
    pub base: Oid,
    /// The tree the checks passed on, when the runner recorded one.
    pub tree: Option<Oid>,
    /// Every secret the run could see; none may appear in what is pushed.
    pub secrets: Vec<Secret>,
    pub message: String,
    pub author: Author,
}

/// A commit's author and committer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub name: String,
    pub email: String,
}

/// The outcome of [`Mirror::import`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Import {
    /// maxions' commit, at `refs/maxions/outgoing/<run>`, ready for [`Mirror::push`].
    Changed(Imported),
    /// The branch's tree is the base's: there is nothing to push.
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub commit: Oid,
    pub tree: Oid,
    /// Paths added, changed or deleted against the base (escaped if not UTF-8).
    pub changed_paths: Vec<String>,
}

impl Mirror {
    /// Checks the bundle the sandbox produced against `expect` and, if it passes, writes
    /// maxions' commit of its tree on top of `expect.base`.
    ///
    /// # Errors
    /// [`GitError::BundleRejected`] for a bundle that fails a check, [`GitError::SecretFound`]
    /// when a new object holds a secret (the message names the file and the secret, never the
    /// value), or git failed.
    pub async fn import(
        &self,
        bundle: &Path,
        expect: &Expect,
        cancel: &CancellationToken,
    ) -> Result<Import, GitError> {
        check_run_id(&expect.run_id)?;
        self.check_branch(&expect.branch, cancel).await?;
        check_author(&expect.author)?;
        let bundle =
            std::path::absolute(bundle).map_err(|source| io("find the bundle", bundle, source))?;
        // Ref names and git's messages about the bundle are the sandbox's text: mask secrets.
        let redactor = Redactor::new(&expect.secrets).unwrap_or_default();
        let incoming = format!("refs/maxions/incoming/{}", expect.run_id);
        let _lock = self.lock(cancel).await?;
        let result = self
            .check_and_commit(&bundle, expect, &incoming, &redactor, cancel)
            .await;
        // The quarantine ref has served its purpose either way; failing to delete it only
        // keeps some objects alive until the run's `forget`.
        let _ = self
            .local("update-ref")
            .args(["-d", &incoming])
            .run(cancel)
            .await;
        result
    }

    async fn check_and_commit(
        &self,
        bundle: &Path,
        expect: &Expect,
        incoming: &str,
        redactor: &Redactor,
        cancel: &CancellationToken,
    ) -> Result<Import, GitError> {
        let corrupt = |err: GitError| match err {
            GitError::Failed { stderr, .. } => {
                GitError::BundleRejected(BundleRejection::Corrupt(stderr))
            }
            other => other,
        };
        self.local("bundle")
            .label("git bundle verify")
            .args(["verify", "--quiet"])
            .arg(bundle)
            .redactor(redactor.clone())
            .run(cancel)
            .await
            .map_err(corrupt)?;
        let heads = self
            .local("bundle")
            .label("git bundle list-heads")
            .arg("list-heads")
            .arg(bundle)
            .redactor(redactor.clone())
            .run(cancel)
            .await
            .map_err(corrupt)?;
        let wanted = format!("refs/heads/{}", expect.branch);
        let heads = String::from_utf8_lossy(&heads);
        let heads: Vec<&str> = heads.lines().filter(|l| !l.is_empty()).collect();
        let only = match heads.as_slice() {
            [line] => line
                .split_once(' ')
                .filter(|(oid, name)| *name == wanted && Oid::parse(oid).is_some()),
            _ => None,
        };
        if only.is_none() {
            let names: Vec<String> = heads
                .iter()
                .map(|line| line.split_once(' ').map_or(*line, |(_, name)| name))
                .map(|name| format!("`{}`", escape_controls(&redactor.redact_str(name))))
                .collect();
            return Err(GitError::BundleRejected(BundleRejection::Refs {
                expected: expect.branch.clone(),
                found: if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                },
            }));
        }
        self.local("fetch")
            .label("git fetch (from the sandbox's bundle)")
            .transport(Transport::File)
            .args(["--quiet", "--no-tags", "--no-write-fetch-head"])
            .args(["--recurse-submodules=no"])
            .arg(bundle)
            .arg(format!("+{wanted}:{incoming}"))
            .redactor(redactor.clone())
            .run(cancel)
            .await
            .map_err(corrupt)?;
        let head = parse_oid(
            "git rev-parse",
            &self
                .local("rev-parse")
                .args(["--verify", "--end-of-options", incoming])
                .run(cancel)
                .await?,
        )?;
        let kind = self
            .local("cat-file")
            .args(["-t", head.as_str()])
            .run(cancel)
            .await?;
        let kind = String::from_utf8_lossy(&kind).trim().to_owned();
        if kind != "commit" {
            return Err(GitError::BundleRejected(BundleRejection::NotACommit {
                kind: escape_controls(&kind),
            }));
        }
        let descends = self
            .local("merge-base")
            .args(["--is-ancestor", expect.base.as_str(), head.as_str()])
            .run_raw(cancel)
            .await?;
        match descends.status.code() {
            Some(0) => {}
            Some(1) => {
                return Err(GitError::BundleRejected(BundleRejection::NotFromBase {
                    commit: head,
                    base: expect.base.clone(),
                }));
            }
            _ => {
                return Err(failed("git merge-base --is-ancestor".into(), &descends));
            }
        }
        let tree = self.tree_of(&head, cancel).await?;
        if let Some(expected) = &expect.tree
            && *expected != tree
        {
            return Err(GitError::BundleRejected(BundleRejection::TreeMismatch {
                expected: expected.clone(),
                found: tree,
            }));
        }
        if tree == self.tree_of(&expect.base, cancel).await? {
            return Ok(Import::Unchanged);
        }
        let commit = self.commit_tree(&tree, expect, cancel).await?;
        self.scan(&commit, expect, cancel).await?;
        self.local("update-ref")
            .arg(format!("refs/maxions/outgoing/{}", expect.run_id))
            .arg(commit.as_str())
            .run(cancel)
            .await?;
        let changed_paths = self.changed_paths(&expect.base, &commit, cancel).await?;
        Ok(Import::Changed(Imported {
            commit,
            tree,
            changed_paths,
        }))
    }

    async fn tree_of(&self, commit: &Oid, cancel: &CancellationToken) -> Result<Oid, GitError> {
        let out = self
            .local("rev-parse")
            .args(["--verify", "--end-of-options"])
            .arg(format!("{commit}^{{tree}}"))
            .run(cancel)
            .await?;
        parse_oid("git rev-parse", &out)
    }

    /// maxions' own commit: the sandbox's tree, the base as the only parent, the trusted
    /// message and identity, never signed (no signing config or agent is reachable anyway).
    async fn commit_tree(
        &self,
        tree: &Oid,
        expect: &Expect,
        cancel: &CancellationToken,
    ) -> Result<Oid, GitError> {
        let identity = [
            ("GIT_AUTHOR_NAME", &expect.author.name),
            ("GIT_AUTHOR_EMAIL", &expect.author.email),
            ("GIT_COMMITTER_NAME", &expect.author.name),
            ("GIT_COMMITTER_EMAIL", &expect.author.email),
        ]
        .map(|(key, value)| (key.to_owned(), value.clone()));
        let out = self
            .local("commit-tree")
            .args([
                tree.as_str(),
                "-p",
                expect.base.as_str(),
                "--no-gpg-sign",
                "-F",
                "-",
            ])
            .envs(identity)
            .stdin(expect.message.clone().into_bytes())
            .run(cancel)
            .await?;
        parse_oid("git commit-tree", &out)
    }

    /// Every object the push would send (those of `commit` not in the base) and the message,
    /// searched for every secret.
    async fn scan(
        &self,
        commit: &Oid,
        expect: &Expect,
        cancel: &CancellationToken,
    ) -> Result<(), GitError> {
        let Some(scanner) = Scanner::new(&expect.secrets) else {
            return Ok(());
        };
        let found = |place: String, finding: super::scan::Finding<'_>| GitError::SecretFound {
            place,
            name: finding.name.to_owned(),
            encoding: finding.encoding,
        };
        if let Some(finding) = scanner.stream().write(expect.message.as_bytes()) {
            return Err(found("the commit message".into(), finding));
        }
        let listing = self
            .local("rev-list")
            .arg("--objects")
            .arg(commit.as_str())
            .arg(format!("^{}", expect.base))
            .run(cancel)
            .await?;
        // Each line is `<id>` or `<id> <path>`; an id holds no space, a path may.
        let listing = String::from_utf8_lossy(&listing);
        let paths: std::collections::HashMap<&str, &str> = listing
            .lines()
            .map(|line| line.split_once(' ').unwrap_or((line, "")))
            .collect();
        let ids: Vec<&str> = listing
            .lines()
            .map(|line| line.split_once(' ').map_or(line, |(id, _)| id))
            .filter(|id| !id.is_empty() && *id != commit.as_str())
            .collect();
        let mut input = ids.join("\n").into_bytes();
        input.push(b'\n');
        let hit = self
            .local("cat-file")
            .label("git cat-file --batch")
            .arg("--batch")
            .run_with(cancel, |mut stdin, stdout| async move {
                let feed = async move {
                    let _ = stdin.write_all(&input).await;
                    let _ = stdin.shutdown().await;
                };
                let (_, hit) = tokio::join!(feed, scan_batch(stdout, &scanner, ids.len()));
                hit
            })
            .await?;
        match hit {
            None => Ok(()),
            Some((oid, kind, finding)) => {
                let path = paths.get(oid.as_str()).copied().unwrap_or("");
                let path = escape_controls(path);
                let place = match (kind.as_str(), path.as_str()) {
                    ("tree", "") => "a file name at the top of the branch".to_owned(),
                    ("tree", dir) => format!("a file name in directory `{dir}`"),
                    (_, "") => format!("object {oid}"),
                    (_, file) => format!("file `{file}`"),
                };
                Err(found(place, finding))
            }
        }
    }

    async fn changed_paths(
        &self,
        base: &Oid,
        commit: &Oid,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, GitError> {
        let out = self
            .local("diff-tree")
            .args(["-r", "-z", "--name-only", "--no-renames", "--no-commit-id"])
            .args([base.as_str(), commit.as_str()])
            .run(cancel)
            .await?;
        Ok(out
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| escape_controls(&String::from_utf8_lossy(p)))
            .collect())
    }
}

/// Reads `count` objects of `cat-file --batch` output, scanning each as it streams by; the
/// first object (id, type) holding a secret. Nothing is held in memory beyond one chunk.
async fn scan_batch<'s>(
    stdout: tokio::process::ChildStdout,
    scanner: &Scanner<'s>,
    count: usize,
) -> Result<Option<(String, String, super::scan::Finding<'s>)>, GitError> {
    let unexpected = |output: String| GitError::Unexpected {
        command: "git cat-file --batch".into(),
        output,
    };
    let mut reader = BufReader::with_capacity(1 << 16, stdout);
    let mut header = String::new();
    let mut chunk = vec![0u8; 1 << 16];
    for _ in 0..count {
        header.clear();
        reader
            .read_line(&mut header)
            .await
            .map_err(|e| unexpected(e.to_string()))?;
        let mut fields = header.split_whitespace();
        let (Some(oid), Some(kind), Some(size)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(unexpected(escape_controls(header.trim())));
        };
        let mut left: u64 = size
            .parse()
            .map_err(|_| unexpected(escape_controls(header.trim())))?;
        let (oid, kind) = (oid.to_owned(), kind.to_owned());
        let mut stream = scanner.stream();
        let mut hit = None;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
            let n = reader
                .read(&mut chunk[..want])
                .await
                .map_err(|e| unexpected(e.to_string()))?;
            if n == 0 {
                return Err(unexpected("the object ended early".into()));
            }
            left -= n as u64;
            if hit.is_none() {
                hit = stream.write(&chunk[..n]);
            }
        }
        let mut newline = [0u8; 1];
        reader
            .read_exact(&mut newline)
            .await
            .map_err(|e| unexpected(e.to_string()))?;
        if let Some(finding) = hit.or_else(|| stream.finish()) {
            // Read the rest unscanned, so git ends normally rather than on a broken pipe.
            tokio::io::copy(&mut reader, &mut tokio::io::sink())
                .await
                .map_err(|e| unexpected(e.to_string()))?;
            return Ok(Some((oid, kind, finding)));
        }
    }
    Ok(None)
}

fn check_author(author: &Author) -> Result<(), GitError> {
    for (what, value) in [
        ("author name", &author.name),
        ("author email", &author.email),
    ] {
        if value.trim().is_empty() || value.contains(['<', '>', '\n', '\0']) {
            return Err(GitError::Invalid {
                what,
                value: escape_controls(value),
                reason: "it must be non-empty and hold no `<`, `>` or newline",
            });
        }
    }
    Ok(())
}
