//! A hostile repository is data to maxions' host-side git: a `file://` origin (a directory the
//! task's author may control) full of hooks, command-running config, `.gitattributes` drivers,
//! symlinks out of the tree, a submodule on a local path, a large file and branch names made of
//! shell syntax goes through fetch, bundle, import and push with the real git CLI, and not one
//! of the planted commands runs; and a repository the agent nests in the work tree runs nothing
//! as maxions' own uid in the sandbox. Every planted command touches a marker file; each test
//! asserts that none exists, and the first shows that the planted hooks do run under a plain
//! `git push`, so that a marker's absence means something.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use maxions::git::{Author, Expect, GitError, Import, Mirror, Oid};
use tokio_util::sync::CancellationToken;

const BRANCH: &str = "maxions/hostile";

/// Every hook git knows of: a planted one of each kind must stay inert.
const HOOKS: &[&str] = &[
    "applypatch-msg",
    "pre-applypatch",
    "post-applypatch",
    "pre-commit",
    "pre-merge-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "pre-rebase",
    "post-checkout",
    "post-merge",
    "pre-push",
    "pre-receive",
    "update",
    "proc-receive",
    "post-receive",
    "post-update",
    "reference-transaction",
    "push-to-checkout",
    "pre-auto-gc",
    "post-rewrite",
    "sendemail-validate",
    "fsmonitor-watchman",
    "p4-pre-submit",
    "post-index-change",
];

fn cancel() -> CancellationToken {
    CancellationToken::new()
}

/// Test-side git (the author's and the sandbox's), isolated from this machine's config.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "user.name=Author",
            "-c",
            "user.email=author@example.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "core.hooksPath=/dev/null",
        ])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A temporary world: where markers land, the hostile origin, and maxions' state dir.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    fn markers(&self) -> PathBuf {
        let dir = self.root().join("markers");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn state(&self) -> PathBuf {
        self.root().join("state")
    }

    /// A shell command that leaves `pwned-<what>` behind if it ever runs.
    fn marker(&self, what: &str) -> String {
        format!("touch {}/pwned-{what}", self.markers().display())
    }

    /// The markers left behind, by name, sorted. Looks also in git's working directory (its
    /// private home), where a command made of a branch name would have run.
    fn pwned(&self) -> Vec<String> {
        let mut found = Vec::new();
        for dir in [self.markers(), self.state().join("git-home")] {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("pwned") {
                    found.push(name);
                }
            }
        }
        found.sort();
        found
    }

    fn assert_nothing_ran(&self) {
        let pwned = self.pwned();
        assert!(pwned.is_empty(), "hostile commands ran: {pwned:?}");
    }

    /// Writes an executable hook script into `dir` for every hook name.
    fn plant_hooks(&self, dir: &Path, tag: &str) {
        std::fs::create_dir_all(dir).unwrap();
        for hook in HOOKS {
            let path = dir.join(hook);
            let marker = self.marker(&format!("{tag}-{hook}"));
            std::fs::write(
                &path,
                format!("#!/bin/sh\n{marker}\ncat >/dev/null\nexit 0\n"),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// Every config key that names a command git might run, set in `repo`'s own config.
    fn plant_config(&self, repo: &Path) {
        let set = |key: &str, value: &str| git(repo, &["config", key, value]);
        let cmd = |what: &str| format!("{}; cat", self.marker(what));
        set("core.fsmonitor", &self.marker("fsmonitor"));
        set("core.sshCommand", &self.marker("sshCommand"));
        set("core.pager", &cmd("pager"));
        set("core.editor", &self.marker("editor"));
        set("sequence.editor", &self.marker("sequence-editor"));
        set("core.askPass", &self.marker("askPass"));
        set("core.gitProxy", &self.marker("gitProxy"));
        set(
            "core.alternateRefsCommand",
            &self.marker("alternateRefsCommand"),
        );
        set("diff.external", &self.marker("diff-external"));
        set("diff.x.command", &self.marker("diff-driver"));
        set("diff.x.textconv", &cmd("textconv"));
        set("merge.x.driver", &self.marker("merge-driver"));
        set("filter.x.smudge", &cmd("smudge"));
        set("filter.x.clean", &cmd("clean"));
        set("filter.x.process", &self.marker("filter-process"));
        set("filter.x.required", "true");
        set(
            "uploadpack.packObjectsHook",
            &format!("{};", self.marker("packObjectsHook")),
        );
        set("uploadpack.allowLazyFetch", "true");
        set(
            "credential.helper",
            &format!("!{}", self.marker("credential-helper")),
        );
        set("gpg.program", &self.marker("gpg"));
        set("gc.auto", "1");
        set("gc.autoDetach", "false");
        set("maintenance.auto", "true");
        // An included file, planted beside the repository, points hooks elsewhere.
        let hooks = self.root().join("included-hooks");
        self.plant_hooks(&hooks, "included");
        let include = self.root().join("included.config");
        std::fs::write(
            &include,
            format!("[core]\n\thooksPath = {}\n", hooks.display()),
        )
        .unwrap();
        set("include.path", include.to_str().unwrap());
    }

    /// The author's work tree: what a hostile repository's `main` holds.
    fn seed(&self) -> PathBuf {
        self.seed_with("")
    }

    /// [`Self::seed`] with `extra` added to the submodule's `.gitmodules` section.
    fn seed_with(&self, extra: &str) -> PathBuf {
        let seed = self.root().join("seed");
        std::fs::create_dir_all(&seed).unwrap();
        git(&seed, &["init", "-q"]);
        let write = |path: &str, content: &[u8]| {
            let path = seed.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        };
        write("README.md", b"# hostile\n");
        write(
            ".gitattributes",
            b"* filter=x diff=x merge=x ident\n*.md text eol=crlf\n",
        );
        write("ident.txt", b"$Id$\n");
        // Symlinks out of the work tree: data, never followed by maxions' git.
        std::os::unix::fs::symlink("/etc/passwd", seed.join("passwd")).unwrap();
        std::os::unix::fs::symlink("../../..", seed.join("up")).unwrap();
        // A submodule on a local path (whose own hooks would touch a marker).
        let sub = self.root().join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        git(&sub, &["init", "-q"]);
        std::fs::write(sub.join("s.txt"), "sub\n").unwrap();
        git(&sub, &["add", "-A"]);
        git(&sub, &["commit", "-q", "-m", "sub"]);
        self.plant_hooks(&sub.join(".git/hooks"), "submodule");
        let sub_head = git(&sub, &["rev-parse", "HEAD"]);
        write(
            ".gitmodules",
            format!(
                "[submodule \"sub\"]\n\tpath = sub\n\turl = {}\n{extra}",
                sub.display(),
            )
            .as_bytes(),
        );
        git(&seed, &["add", "-A"]);
        git(
            &seed,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{sub_head},sub"),
            ],
        );
        git(&seed, &["commit", "-q", "-m", "hostile main"]);
        seed
    }

    /// A bare origin cloned from [`Self::seed`], with hooks in its `hooks/`, command-running
    /// config, and an alternate object store (so that `core.alternateRefsCommand` applies).
    fn hostile_origin(&self) -> PathBuf {
        let seed = self.seed();
        let origin = self.root().join("origin/repo.git");
        git(
            &self.root(),
            &[
                "clone",
                "-q",
                "--bare",
                seed.to_str().unwrap(),
                origin.to_str().unwrap(),
            ],
        );
        self.plant_hooks(&origin.join("hooks"), "origin");
        self.plant_config(&origin);
        std::fs::write(
            origin.join("objects/info/alternates"),
            format!("{}\n", seed.join(".git/objects").display()),
        )
        .unwrap();
        origin
    }

    async fn mirror(&self, origin: &Path) -> Mirror {
        Mirror::open(
            &self.state(),
            &format!("file://{}", origin.display()),
            &cancel(),
        )
        .await
        .unwrap()
    }

    /// The sandbox's side, done by test-side git as an agent would: clone the base bundle,
    /// change things (a file replaced by a symlink out of the tree among them), commit and
    /// bundle the task's branch without the base.
    async fn sandbox_bundle(&self, mirror: &Mirror, base_name: &str, base: &Oid) -> PathBuf {
        let dir = self.root().join("sandbox");
        std::fs::create_dir_all(&dir).unwrap();
        let bundle = dir.join("base.bundle");
        mirror
            .bundle_base(base_name, &bundle, &cancel())
            .await
            .unwrap();
        let work = dir.join("repo");
        git(
            &dir,
            &[
                "-c",
                "protocol.file.allow=always",
                "clone",
                "-q",
                "-b",
                base_name,
                bundle.to_str().unwrap(),
                work.to_str().unwrap(),
            ],
        );
        git(&work, &["checkout", "-q", "-b", BRANCH]);
        std::fs::remove_file(work.join("README.md")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", work.join("README.md")).unwrap();
        std::fs::write(work.join("new.txt"), "from the agent\n").unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "agent"]);
        let out = dir.join("out.bundle");
        git(
            &work,
            &[
                "bundle",
                "create",
                "-q",
                out.to_str().unwrap(),
                &format!("refs/heads/{BRANCH}"),
                &format!("^{base}"),
            ],
        );
        out
    }

    fn expect(&self, base: &Oid) -> Expect {
        Expect {
            run_id: "hostile-1".to_owned(),
            branch: BRANCH.to_owned(),
            base: base.clone(),
            tree: None,
            secrets: Vec::new(),
            message: "maxions: hostile".to_owned(),
            author: Author {
                name: "maxions".to_owned(),
                email: "maxions@example.invalid".to_owned(),
            },
        }
    }
}

/// The whole of maxions' host-side git on one hostile origin: fetch, default branch, bundle,
/// import of the sandbox's branch, push with the lease, read-back. Nothing runs, the branch
/// lands, and what it holds is exactly the trees' bytes (symlinks as symlinks, the ident and
/// filter attributes unapplied).
#[tokio::test]
async fn a_hostile_file_origin_is_fetched_imported_and_pushed_without_running_anything() {
    let world = World::new();
    let origin = world.hostile_origin();
    let mirror = world.mirror(&origin).await;
    mirror.fetch(None, &cancel()).await.unwrap();
    assert_eq!(
        mirror.default_branch(None, &cancel()).await.unwrap(),
        "main"
    );
    assert_eq!(
        mirror.remote_branch(BRANCH, None, &cancel()).await.unwrap(),
        None
    );
    let base = mirror
        .resolve("refs/heads/main", &cancel())
        .await
        .unwrap()
        .unwrap();
    let bundle = world.sandbox_bundle(&mirror, "main", &base).await;
    let imported = match mirror
        .import(&bundle, &world.expect(&base), &cancel())
        .await
    {
        Ok(Import::Changed(imported)) => imported,
        other => panic!("expected a change, got {other:?}"),
    };
    let mut changed = imported.changed_paths.clone();
    changed.sort();
    assert_eq!(changed, ["README.md", "new.txt"]);
    let pushed = mirror
        .push_with_lease(&imported.commit, BRANCH, None, None, &cancel())
        .await
        .unwrap();
    assert_eq!(pushed.commit, imported.commit);
    world.assert_nothing_ran();

    // The origin has maxions' commit, byte for byte what was committed.
    let show = |rev: &str| git(&origin, &["cat-file", "-p", rev]);
    assert_eq!(
        git(&origin, &["rev-parse", BRANCH]),
        imported.commit.as_str()
    );
    let tree = git(&origin, &["ls-tree", BRANCH]);
    assert!(tree.contains("120000 blob"), "{tree}");
    assert_eq!(show(&format!("{BRANCH}:README.md")), "/etc/shadow");
    assert_eq!(show(&format!("{BRANCH}:passwd")), "/etc/passwd");
    assert_eq!(show(&format!("{BRANCH}:up")), "../../..");
    assert_eq!(show(&format!("{BRANCH}:ident.txt")), "$Id$");
    assert!(
        tree.contains("160000 commit"),
        "the submodule stays a gitlink: {tree}"
    );

    // The planted hooks are real: a plain push runs them, so their silence above means it.
    git(
        &world.root().join("sandbox/repo"),
        &[
            "-c",
            "core.hooksPath=",
            "push",
            "-q",
            origin.to_str().unwrap(),
            &format!("{BRANCH}:refs/heads/maxions/plain"),
        ],
    );
    let pwned = world.pwned();
    assert!(
        pwned.iter().any(|m| m == "pwned-included-pre-receive"),
        "a plain push runs the origin's hooks: {pwned:?}"
    );
}

/// Regression: a push to a `file://` origin used to run its hooks on this machine. git passes no
/// `-c core.hooksPath=/dev/null` on to a local receive-pack, so maxions now names its own
/// `--receive-pack`; this origin's hooks sit where git looks by default, no config needed.
#[tokio::test]
async fn the_origins_own_hooks_do_not_run_on_push() {
    let world = World::new();
    let seed = world.root().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q"]);
    std::fs::write(seed.join("README.md"), "plain\n").unwrap();
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "-q", "-m", "plain"]);
    let origin = world.root().join("origin/repo.git");
    git(
        &world.root(),
        &[
            "clone",
            "-q",
            "--bare",
            seed.to_str().unwrap(),
            origin.to_str().unwrap(),
        ],
    );
    world.plant_hooks(&origin.join("hooks"), "origin");
    let mirror = world.mirror(&origin).await;
    mirror.fetch(None, &cancel()).await.unwrap();
    let base = mirror
        .resolve("refs/heads/main", &cancel())
        .await
        .unwrap()
        .unwrap();
    let bundle = world.sandbox_bundle(&mirror, "main", &base).await;
    let Import::Changed(imported) = mirror
        .import(&bundle, &world.expect(&base), &cancel())
        .await
        .unwrap()
    else {
        panic!("expected a change");
    };
    mirror
        .push(&imported.commit, BRANCH, None, &cancel())
        .await
        .unwrap();
    world.assert_nothing_ran();
    assert_eq!(
        git(&origin, &["rev-parse", BRANCH]),
        imported.commit.as_str()
    );
}

/// Regression: a non-bare origin with `receive.denyCurrentBranch=updateInstead`, whose checked-
/// out branch is the task's, would have its work tree updated by the push, running its filters
/// and fsmonitor from its config (and `.gitattributes` from the pushed tree). maxions' push
/// refuses to update a checked-out branch, and says so.
#[tokio::test]
async fn a_push_never_updates_a_non_bare_origins_checkout() {
    let world = World::new();
    let seed = world.seed();
    git(&seed, &["checkout", "-q", "-b", BRANCH]);
    git(
        &seed,
        &["config", "receive.denyCurrentBranch", "updateInstead"],
    );
    world.plant_config(&seed);
    std::fs::write(
        seed.join(".git/objects/info/alternates"),
        format!("{}\n", world.root().join("sub/.git/objects").display()),
    )
    .unwrap();
    let mirror = world.mirror(&seed).await;
    mirror.fetch(None, &cancel()).await.unwrap();
    let base = mirror
        .resolve("refs/heads/main", &cancel())
        .await
        .unwrap()
        .unwrap();
    let lease = mirror.remote_branch(BRANCH, None, &cancel()).await.unwrap();
    let bundle = world.sandbox_bundle(&mirror, "main", &base).await;
    let Import::Changed(imported) = mirror
        .import(&bundle, &world.expect(&base), &cancel())
        .await
        .unwrap()
    else {
        panic!("expected a change");
    };
    let err = mirror
        .push_with_lease(&imported.commit, BRANCH, lease.as_ref(), None, &cancel())
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Failed { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("refusing to update checked out branch"),
        "{err}"
    );
    world.assert_nothing_ran();
    assert_eq!(git(&seed, &["rev-parse", BRANCH]), base.as_str());
}

/// Branch names that are shell syntax (git accepts `;`, `$`, `(`, `` ` `` and `|` in ref
/// names) are only ever arguments: as a base to fetch and bundle, and as the branch to push.
/// Names git refuses (a space, `..`, a leading `-`) are refused before any git runs with them.
#[tokio::test]
async fn branch_names_made_of_shell_syntax_are_only_names() {
    let world = World::new();
    let seed = world.root().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q"]);
    std::fs::write(seed.join("README.md"), "plain\n").unwrap();
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "-q", "-m", "plain"]);
    let base_name = "main;touch${IFS}pwned-base|touch${IFS}pwned-pipe";
    git(&seed, &["branch", base_name]);
    let origin = world.root().join("origin/repo.git");
    git(
        &world.root(),
        &[
            "clone",
            "-q",
            "--bare",
            seed.to_str().unwrap(),
            origin.to_str().unwrap(),
        ],
    );
    let mirror = world.mirror(&origin).await;
    mirror.fetch(None, &cancel()).await.unwrap();
    let base = mirror
        .resolve(&format!("refs/heads/{base_name}"), &cancel())
        .await
        .unwrap()
        .unwrap();
    let bundle = world.root().join("base.bundle");
    assert_eq!(
        mirror
            .bundle_base(base_name, &bundle, &cancel())
            .await
            .unwrap(),
        base
    );
    for branch in [
        "maxions/$(touch${IFS}pwned-subst)",
        "maxions/`touch${IFS}pwned-backtick`",
        "maxions/x;touch${IFS}pwned-semicolon&&touch${IFS}pwned-and",
    ] {
        let pushed = mirror.push(&base, branch, None, &cancel()).await.unwrap();
        assert_eq!(pushed.branch, branch);
        assert_eq!(
            git(&origin, &["rev-parse", &format!("refs/heads/{branch}")]),
            base.as_str()
        );
    }
    let err = mirror
        .bundle_base("main; touch pwned-space", &bundle, &cancel())
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Invalid { .. }), "{err}");
    for refused in [
        "main; touch pwned-space",
        "-main",
        "main..x",
        "refs/heads/x",
    ] {
        let err = mirror
            .push(&base, refused, None, &cancel())
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::Invalid { .. }), "{refused}: {err}");
    }
    world.assert_nothing_ran();
}

/// A large file in the origin and a large file from the agent go through fetch, bundle, the
/// secret scan and push (streamed, never held whole); no size limit below the bundle cap (2 GiB)
/// applies on the host.
#[tokio::test]
async fn a_large_file_passes_through_fetch_scan_and_push() {
    const SIZE: usize = 8 << 20;
    let world = World::new();
    let seed = world.root().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q"]);
    // Incompressible, so that the packs really are this large.
    let mut bytes = vec![0u8; SIZE];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(seed.join("big.bin"), &bytes).unwrap();
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "-q", "-m", "big"]);
    let origin = world.root().join("origin/repo.git");
    git(
        &world.root(),
        &[
            "clone",
            "-q",
            "--bare",
            seed.to_str().unwrap(),
            origin.to_str().unwrap(),
        ],
    );
    let mirror = world.mirror(&origin).await;
    mirror.fetch(None, &cancel()).await.unwrap();
    let base = mirror
        .resolve("refs/heads/main", &cancel())
        .await
        .unwrap()
        .unwrap();
    let dir = world.root().join("sandbox");
    std::fs::create_dir_all(&dir).unwrap();
    mirror
        .bundle_base("main", &dir.join("base.bundle"), &cancel())
        .await
        .unwrap();
    let work = dir.join("repo");
    git(
        &dir,
        &[
            "clone",
            "-q",
            "-b",
            "main",
            "base.bundle",
            work.to_str().unwrap(),
        ],
    );
    git(&work, &["checkout", "-q", "-b", BRANCH]);
    bytes.reverse();
    std::fs::write(work.join("big2.bin"), &bytes).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "agent"]);
    let out = dir.join("out.bundle");
    git(
        &work,
        &[
            "bundle",
            "create",
            "-q",
            out.to_str().unwrap(),
            &format!("refs/heads/{BRANCH}"),
            &format!("^{base}"),
        ],
    );
    let mut expect = world.expect(&base);
    expect.secrets =
        vec![maxions::secret::Secret::new("TOKEN", "ghs_notinthebigfile0123456789").unwrap()];
    let Import::Changed(imported) = mirror.import(&out, &expect, &cancel()).await.unwrap() else {
        panic!("expected a change");
    };
    mirror
        .push(&imported.commit, BRANCH, None, &cancel())
        .await
        .unwrap();
    let size = git(&origin, &["cat-file", "-s", &format!("{BRANCH}:big2.bin")]);
    assert_eq!(size, SIZE.to_string());
}

/// A `.gitmodules` whose `update` is a command (`!cmd`), or whose URL or path is an option, is
/// refused when it arrives (`transfer.fsckObjects`): the fetch fails with git's reason, which
/// the run shows, and nothing reaches the mirror's branches.
#[tokio::test]
async fn a_gitmodules_that_would_run_a_command_is_refused_at_fetch() {
    let world = World::new();
    let seed = world.seed_with(&format!(
        "\tupdate = !{}\n",
        world.marker("submodule-update")
    ));
    let origin = world.root().join("origin/repo.git");
    git(
        &world.root(),
        &[
            "clone",
            "-q",
            "--bare",
            seed.to_str().unwrap(),
            origin.to_str().unwrap(),
        ],
    );
    let mirror = world.mirror(&origin).await;
    let err = mirror.fetch(None, &cancel()).await.unwrap_err().to_string();
    assert!(err.starts_with("`git fetch` failed"), "{err}");
    assert!(err.contains("disallowed submodule update setting"), "{err}");
    assert_eq!(
        mirror.resolve("refs/heads/main", &cancel()).await.unwrap(),
        None
    );
    world.assert_nothing_ran();
}

/// The same hostile origin through `maxions run` with real containers: checkout, a step that
/// replaces a file with a symlink out of the tree, commit, push. The run succeeds, the branch
/// holds the symlink as a symlink, and nothing planted in the origin ran on this machine.
#[tokio::test]
async fn a_run_on_a_hostile_origin_succeeds_and_runs_nothing_of_it() {
    if crate::support::docker::engine("hostile-run")
        .await
        .is_none()
    {
        return;
    }
    let world = World::new();
    let origin = world.hostile_origin();
    let root = world.root();
    crate::support::write(
        &root,
        "blueprints/hostile.yaml",
        "name: hostile\nsandbox:\n  network: none\n  timeout: 5m\nsteps:\n  - id: checkout\n    checkout: {}\n  - id: tamper\n    run: |\n      cd /workspace/repo\n      rm README.md && ln -s /etc/passwd README.md\n      echo from-the-step > new.txt\n  - id: commit\n    commit: { message: \"hostile run\" }\n  - id: push\n    push: {}\n",
    );
    crate::support::write(
        &root,
        "tasks/hostile.yaml",
        &format!(
            "task: x\nrepo: file://{}\nblueprint: hostile\nbase: main\nbranch: {BRANCH}\n",
            origin.display()
        ),
    );
    let out = crate::support::cli::Maxions::new()
        .current_dir(&root)
        .args(["run", "tasks/hostile.yaml"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("status:  succeeded"), "{}", out.stderr);
    world.assert_nothing_ran();
    let show = |rev: &str| git(&origin, &["cat-file", "-p", rev]);
    assert_eq!(show(&format!("{BRANCH}:README.md")), "/etc/passwd");
    assert_eq!(show(&format!("{BRANCH}:new.txt")), "from-the-step");
    assert_eq!(show(&format!("{BRANCH}:up")), "../../..");
    let changed = git(&origin, &["diff", "--name-only", "main", BRANCH]);
    for path in ["README.md", "new.txt"] {
        assert!(changed.lines().any(|l| l == path), "{path} in {changed}");
    }
}

/// maxions' own git in the sandbox (another uid than the agent's) records the work tree twice
/// when a `check` runs before `commit`. A repository the agent nests in the tree, with a clean
/// filter in its own config and a dirty file, must not make that git run the filter.
#[tokio::test]
async fn a_nested_repository_planted_by_the_agent_runs_nothing_as_maxions() {
    if crate::support::docker::engine("hostile-nested")
        .await
        .is_none()
    {
        return;
    }
    let world = World::new();
    let seed = world.root().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q"]);
    std::fs::write(seed.join("README.md"), "plain\n").unwrap();
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "-q", "-m", "plain"]);
    let origin = world.root().join("origin/repo.git");
    git(
        &world.root(),
        &[
            "clone",
            "-q",
            "--bare",
            seed.to_str().unwrap(),
            origin.to_str().unwrap(),
        ],
    );
    let root = world.root();
    let tamper = r#"cd /workspace/repo
git init -q nested
cd nested
echo s > s.txt
printf '* filter=x\n' > .gitattributes
git add -A
git -c user.name=a -c user.email=a@b commit -q -m nested
git config filter.x.clean 'touch /tmp/pwned-clean-$(id -u); cat'
git config filter.x.required true
echo dirty >> s.txt
echo from-the-step > ../new.txt
"#;
    let indented: String = tamper.lines().map(|l| format!("      {l}\n")).collect();
    crate::support::write(
        &root,
        "blueprints/nested.yaml",
        &format!(
            "name: nested\nsandbox:\n  network: none\n  timeout: 5m\nsteps:\n  - id: checkout\n    checkout: {{}}\n  - id: tamper\n    run: |\n{indented}  - id: checks\n    check:\n      - {{ id: ok, run: \"true\" }}\n  - id: commit\n    commit: {{ message: \"nested\" }}\n  - id: after\n    run: \"! ls /tmp/pwned-* 2>/dev/null\"\n"
        ),
    );
    crate::support::write(
        &root,
        "tasks/nested.yaml",
        &format!(
            "task: x\nrepo: file://{}\nblueprint: nested\nbase: main\nbranch: {BRANCH}\n",
            origin.display()
        ),
    );
    let out = crate::support::cli::Maxions::new()
        .current_dir(&root)
        .args(["run", "tasks/nested.yaml"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("status:  succeeded"), "{}", out.stderr);
}
