//! maxions' host-side git (`maxions::git`) with the real git CLI: a mirror fetched from and
//! pushed to the token-checking smart-HTTP server on 127.0.0.1, and bundles made the way a
//! (hostile) sandbox would make them, each attack checked to be refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use maxions::forge::GitCredentials;
use maxions::git::{
    Author, BundleRejection, Encoding, Expect, GitError, Import, Imported, Mirror, Oid,
};
use maxions::secret::Secret;
use tokio_util::sync::CancellationToken;

use crate::support::git_http::GitServer;
use crate::support::server::Served;

const TOKEN: &str = "ghs_githosttesttoken0123456789abcdef";
const BRANCH: &str = "maxions/dark-mode";

/// The test token, for the origin of `url` only (as a forge scopes its own).
fn creds(url: &str) -> GitCredentials {
    GitCredentials::new(
        GitCredentials::TOKEN_USERNAME,
        Secret::new("GIT_TOKEN", TOKEN).unwrap(),
        None,
    )
    .scoped_to(url)
}

fn cancel() -> CancellationToken {
    CancellationToken::new()
}

/// A git server with `octo/hello`, and a state dir whose mirror of it has been fetched.
struct World {
    server: GitServer,
    url: String,
    state: tempfile::TempDir,
    mirror: Mirror,
    base: Oid,
}

impl World {
    async fn new() -> Self {
        let server = GitServer::with_tokens(&[TOKEN]);
        let url = server.create_repo("octo", "hello");
        let state = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(state.path(), &url, &cancel()).await.unwrap();
        mirror
            .fetch(Some(&creds(mirror.url())), &cancel())
            .await
            .unwrap();
        let base = mirror
            .resolve("refs/heads/main", &cancel())
            .await
            .unwrap()
            .unwrap();
        Self {
            server,
            url,
            state,
            mirror,
            base,
        }
    }

    /// What the sandbox's checkout step gets: a clone of the base bundle.
    async fn sandbox(&self) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("base.bundle");
        let head = self
            .mirror
            .bundle_base("main", &bundle, &cancel())
            .await
            .unwrap();
        assert_eq!(head, self.base);
        let sandbox = Sandbox {
            work: dir.path().join("repo"),
            _dir: dir,
        };
        git(
            Path::new("/"),
            &[
                "clone",
                "-q",
                "-b",
                "main",
                &bundle.display().to_string(),
                &sandbox.work.display().to_string(),
            ],
        );
        sandbox
    }

    fn expect(&self, run_id: &str) -> Expect {
        Expect {
            run_id: run_id.to_owned(),
            branch: BRANCH.to_owned(),
            base: self.base.clone(),
            tree: None,
            secrets: vec![
                Secret::new("GIT_TOKEN", TOKEN).unwrap(),
                Secret::new("OPENAI_API_KEY", "sk-test-0123456789abcdefghij").unwrap(),
            ],
            message: "Add dark mode\n\nmaxions run 1".to_owned(),
            author: Author {
                name: "maxions".to_owned(),
                email: "maxions@example.invalid".to_owned(),
            },
        }
    }

    async fn import(&self, bundle: &Path, expect: &Expect) -> Result<Import, GitError> {
        self.mirror.import(bundle, expect, &cancel()).await
    }

    /// The server's own view of the repository.
    fn remote_git(&self, args: &[&str]) -> String {
        let dir = self.server.repo_path("octo", "hello");
        let mut full = vec!["--git-dir", dir.to_str().unwrap()];
        full.extend_from_slice(args);
        git(Path::new("/"), &full)
    }
}

/// A working tree standing in for `/workspace/repo` in the sandbox: anything here is what an
/// agent could have done.
struct Sandbox {
    work: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sandbox {
    fn git(&self, args: &[&str]) -> String {
        git(&self.work, args)
    }

    fn write(&self, path: &str, content: &[u8]) {
        let path = self.work.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn commit_all(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// `git bundle create` with these arguments, returning the bundle's path.
    fn bundle(&self, args: &[&str]) -> PathBuf {
        let path = self
            .work
            .with_file_name(format!("out-{}.bundle", rand_suffix()));
        let mut full = vec!["bundle", "create", "-q", path.to_str().unwrap()];
        full.extend_from_slice(args);
        self.git(&full);
        path
    }

    /// The usual: the task's branch with one commit on the base, bundled as `base..branch`.
    fn branch_with(&self, files: &[(&str, &[u8])], base: &Oid) -> PathBuf {
        self.git(&["checkout", "-q", "-b", BRANCH]);
        for (path, content) in files {
            self.write(path, content);
        }
        self.commit_all("agent's message, which maxions ignores");
        self.bundle(&[&format!("refs/heads/{BRANCH}"), &format!("^{base}")])
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Test-side git (the sandbox's and the server's), isolated from this machine's config.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "user.name=Agent",
            "-c",
            "user.email=agent@example.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
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

fn changed(import: Import) -> Imported {
    match import {
        Import::Changed(imported) => imported,
        Import::Unchanged => panic!("expected a change"),
    }
}

fn rejection(result: Result<Import, GitError>) -> BundleRejection {
    match result {
        Err(GitError::BundleRejected(why)) => why,
        other => panic!("expected a rejected bundle, got {other:?}"),
    }
}

#[tokio::test]
async fn the_mirror_fetches_with_the_token_and_seeds_a_sandbox_clone() {
    let world = World::new().await;
    let requests = world.server.requests();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|r| r.token.as_deref() == Some(TOKEN) && r.status == 200)
    );
    assert_eq!(
        world
            .mirror
            .default_branch(Some(&creds(world.mirror.url())), &cancel())
            .await
            .unwrap(),
        "main"
    );
    assert!(
        world
            .mirror
            .path()
            .starts_with(world.state.path().join("mirrors"))
    );
    assert!(world.mirror.path().ends_with("octo/hello.git"));
    // `--template=`: no sample hooks, so there is no hooks directory to plant into by mistake.
    assert!(!world.mirror.path().join("hooks").exists());

    let sandbox = world.sandbox().await;
    assert_eq!(
        std::fs::read_to_string(sandbox.work.join("README.md")).unwrap(),
        "# hello\n"
    );
    assert_eq!(sandbox.git(&["rev-parse", "HEAD"]), world.base.to_string());
    // The sandbox's clone knows no credential and no URL of the real remote.
    let config = std::fs::read_to_string(sandbox.work.join(".git/config")).unwrap();
    assert!(
        !config.contains(&world.url) && !config.contains(TOKEN),
        "{config}"
    );
}

#[tokio::test]
async fn a_fetch_without_the_token_fails_with_a_message_that_names_the_command() {
    let server = GitServer::with_tokens(&[TOKEN]);
    let url = server.create_repo("octo", "hello");
    let state = tempfile::tempdir().unwrap();
    let mirror = Mirror::open(state.path(), &url, &cancel()).await.unwrap();
    let wrong = GitCredentials::new(
        "x",
        Secret::new("GIT_TOKEN", "ghs_wrong_token_value").unwrap(),
        None,
    );
    let err = mirror
        .fetch(Some(&wrong), &cancel())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("`git fetch` failed"), "{err}");
    assert!(!err.contains("ghs_wrong_token_value"), "{err}");
    // No terminal prompt and no helper: git gives up rather than wait for a password.
    assert!(
        err.contains("terminal prompts disabled") || err.contains("Authentication failed"),
        "{err}"
    );
}

#[tokio::test]
async fn bundling_a_missing_branch_says_so() {
    let world = World::new().await;
    let dest = world.state.path().join("x.bundle");
    let err = world
        .mirror
        .bundle_base("develop", &dest, &cancel())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("branch `develop` does not exist in {}", world.url)
    );
}

#[tokio::test]
async fn import_and_push_publish_maxions_own_commit_of_the_sandbox_tree() {
    let world = World::new().await;
    let sandbox = world.sandbox().await;
    sandbox.write("src/theme.css", b"body { background: black }\n");
    sandbox.write("run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(
        sandbox.work.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("src/theme.css", sandbox.work.join("theme")).unwrap();
    let bundle = sandbox.branch_with(&[], &world.base);
    let checked_tree = sandbox.git(&["rev-parse", "HEAD^{tree}"]);
    let mut expect = world.expect("run-1");
    expect.tree = Oid::parse(&checked_tree);

    let imported = changed(world.import(&bundle, &expect).await.unwrap());
    assert_eq!(imported.tree.to_string(), checked_tree);
    assert_eq!(imported.changed_paths, ["run.sh", "src/theme.css", "theme"]);
    assert_eq!(
        world
            .mirror
            .resolve("refs/maxions/outgoing/run-1", &cancel())
            .await
            .unwrap(),
        Some(imported.commit.clone())
    );

    let pushed = world
        .mirror
        .push(
            &imported.commit,
            BRANCH,
            Some(&creds(world.mirror.url())),
            &cancel(),
        )
        .await
        .unwrap();
    assert_eq!(pushed.commit, imported.commit);
    assert_eq!(pushed.previous, None);
    assert_eq!(
        world.server.branch("octo", "hello", BRANCH),
        Some(imported.commit.to_string())
    );
    assert_eq!(world.server.pushes().len(), 1);
    assert!(
        world
            .server
            .requests()
            .iter()
            .all(|r| r.token.as_deref() == Some(TOKEN))
    );

    // Parent, message and author are maxions', not the agent's.
    let commit = world.remote_git(&["cat-file", "commit", imported.commit.as_str()]);
    assert!(
        commit.contains(&format!("\nparent {}\n", world.base)),
        "{commit}"
    );
    assert_eq!(commit.matches("\nparent ").count(), 1, "{commit}");
    assert!(
        commit.contains("\nauthor maxions <maxions@example.invalid> "),
        "{commit}"
    );
    assert!(
        commit.contains("\ncommitter maxions <maxions@example.invalid> "),
        "{commit}"
    );
    assert!(
        commit.ends_with("Add dark mode\n\nmaxions run 1"),
        "{commit}"
    );
    assert!(!commit.contains("agent's message"), "{commit}");
    // The executable bit and the symlink survive the round trip.
    let tree = world.remote_git(&["ls-tree", imported.commit.as_str()]);
    assert!(
        tree.lines()
            .any(|l| l.starts_with("100755 blob") && l.ends_with("\trun.sh")),
        "{tree}"
    );
    assert!(
        tree.lines()
            .any(|l| l.starts_with("120000 blob") && l.ends_with("\ttheme")),
        "{tree}"
    );
    // Only the task's branch reached the remote: none of maxions' own refs.
    let refs = world.remote_git(&["for-each-ref", "--format=%(refname)"]);
    assert_eq!(refs, format!("refs/heads/main\nrefs/heads/{BRANCH}"));
    // The mirror knows the pushed branch at once, and the run's refs go when it is done.
    assert_eq!(
        world
            .mirror
            .resolve(&format!("refs/heads/{BRANCH}"), &cancel())
            .await
            .unwrap(),
        Some(imported.commit.clone())
    );
    world.mirror.forget("run-1", &cancel()).await.unwrap();
    assert_eq!(
        world
            .mirror
            .resolve("refs/maxions/outgoing/run-1", &cancel())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn an_unchanged_tree_means_no_changes() {
    let world = World::new().await;
    let sandbox = world.sandbox().await;
    sandbox.git(&["checkout", "-q", "-b", BRANCH]);
    // Commits that add and then remove a file end on the base's tree.
    sandbox.write("tmp.txt", b"scratch");
    sandbox.commit_all("add");
    std::fs::remove_file(sandbox.work.join("tmp.txt")).unwrap();
    sandbox.commit_all("remove");
    let bundle = sandbox.bundle(&[&format!("refs/heads/{BRANCH}"), &format!("^{}", world.base)]);
    assert_eq!(
        world.import(&bundle, &world.expect("run-1")).await.unwrap(),
        Import::Unchanged
    );
}

#[tokio::test]
async fn a_bundle_with_two_refs_is_refused() {
    let world = World::new().await;
    let sandbox = world.sandbox().await;
    sandbox.git(&["checkout", "-q", "-b", BRANCH]);
    sandbox.write("a.txt", b"a");
    sandbox.commit_all("a");
    sandbox.git(&["branch", "maxions/other"]);
    let bundle = sandbox.bundle(&[
        &format!("refs/heads/{BRANCH}"),
        "refs/heads/maxions/other",
        &format!("^{}", world.base),
    ]);
    let why = rejection(world.import(&bundle, &world.expect("run-1")).await);
    assert!(matches!(why, BundleRejection::Refs { .. }), "{why}");
    assert!(
        why.to_string().contains("`refs/heads/maxions/other`"),
        "{why}"
    );
}

#[tokio::test]
async fn a_bundle_of_another_branch_is_refused() {
    let world = World::new().await;
    let sandbox = world.sandbox().await;
    sandbox.write("a.txt", b"a");
    sandbox.commit_all("on main");
    let bundle = sandbox.bundle(&["refs/heads/main", &format!("^{}", world.base)]);
    let why = rejection(world.import(&bundle, &world.expect("run-1")).await);
    assert_eq!(
        why.to_string(),
        format!("it must hold exactly one ref, `refs/heads/{BRANCH}`, but holds `refs/heads/main`")
    );
    assert!(world.server.branch("octo", "hello", "main") == Some(world.base.to_string()));
}

#[tokio::test]
async fn a_commit_that_does_not_descend_from_the_base_is_refused() {
    let world = World::new().await;
    let sandbox = world.sandbox().await;
    sandbox.git(&["checkout", "-q", "--orphan", BRANCH]);
    sandbox.write("other.txt", b"unrelated history");
    sandbox.commit_all("orphan");
    let bundle = sandbox.bundle(&[&format!("refs/heads/{BRANCH}")]);
    let why = rejection(world.import(&bundle, &world.expect("run-1")).await);
    assert!(matches!(why, BundleRejection::NotFromBase { .. }), "{why}");
    assert_eq!(
        world
            .mirror
            .resolve("refs/maxions/incoming/run-1", &cancel())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_corrupt_or_truncated_bundle_is_refused() {
    let world = World::new().await;
    let sandbox = world.sandbox().await;
    let good = sandbox.branch_with(&[("a.txt", b"some content")], &world.base);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = good.with_extension("truncated");
    std::fs::write(&truncated, &bytes[..bytes.len() - 30]).unwrap();
    let garbage = good.with_extension("garbage");
    std::fs::write(
        &garbage,
        b"# v2 git bundle\n\x1b]52;c;eA==\x07 refs/heads/x\n\nPACKjunk",
    )
    .unwrap();
    let empty = good.with_extension("empty");
    std::fs::write(&empty, b"").unwrap();
    for bad in [&truncated, &garbage, &empty] {
        let why = rejection(world.import(bad, &world.expect("run-1")).await);
        assert!(
            matches!(
                why,
                BundleRejection::Corrupt(_) | BundleRejection::Refs { .. }
            ),
            "{}: {why}",
            bad.display()
        );
        assert!(!why.to_string().contains('\u{1b}'), "raw escape in {why:?}");
    }
    // The good one still imports: nothing above left the mirror half-changed.
    changed(world.import(&good, &world.expect("run-1")).await.unwrap());
}

#[tokio::test]
async fn a_tree_other_than_the_checked_one_is_refused() {
    let world = World::new().await;
    let sandbox = world.sandbox().await;
    sandbox.write("a.txt", b"what the checks saw");
    sandbox.git(&["add", "-A"]);
    let checked = sandbox.git(&["write-tree"]);
    // After the checks, something changes the file before the bundle is made.
    let bundle = sandbox.branch_with(&[("a.txt", b"what gets pushed")], &world.base);
    let mut expect = world.expect("run-1");
    expect.tree = Oid::parse(&checked);
    let why = rejection(world.import(&bundle, &expect).await);
    assert!(matches!(why, BundleRejection::TreeMismatch { .. }), "{why}");
    assert!(world.server.pushes().is_empty());
}

#[tokio::test]
async fn a_secret_in_any_encoding_is_refused_by_file_and_name() {
    let world = World::new().await;
    let hex: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
    let wrapped = BASE64
        .encode(format!("x-access-token:{TOKEN}"))
        .as_bytes()
        .chunks(20)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    let cases: Vec<(&str, Vec<u8>, Encoding)> = vec![
        (
            "config/plain.txt",
            format!("token = {TOKEN}\n").into_bytes(),
            Encoding::Plain,
        ),
        (
            "b64.txt",
            BASE64
                .encode(format!("Authorization: {TOKEN}"))
                .into_bytes(),
            Encoding::Base64,
        ),
        ("wrapped.pem", wrapped.into_bytes(), Encoding::Base64),
        ("hex.txt", hex.into_bytes(), Encoding::Hex),
        (
            "url.txt",
            b"https://x/?k=sk-test-0123456789abcdefghij%21".to_vec(),
            Encoding::Plain,
        ),
    ];
    for (i, (path, content, encoding)) in cases.into_iter().enumerate() {
        let sandbox = world.sandbox().await;
        let bundle = sandbox.branch_with(&[("ok.txt", b"fine"), (path, &content)], &world.base);
        let err = world
            .import(&bundle, &world.expect(&format!("run-{i}")))
            .await
            .unwrap_err();
        let text = err.to_string();
        match &err {
            GitError::SecretFound {
                place,
                name,
                encoding: found,
            } => {
                assert_eq!(place, &format!("file `{path}`"), "{text}");
                assert!(name == "GIT_TOKEN" || name == "OPENAI_API_KEY", "{text}");
                assert_eq!(*found, encoding, "{text}");
            }
            other => panic!("{path}: expected a secret finding, got {other}"),
        }
        assert!(
            !text.contains(TOKEN) && !text.contains("sk-test-0123"),
            "{text}"
        );
        assert!(text.contains("nothing was pushed"), "{text}");
        assert_eq!(
            world
                .mirror
                .resolve(&format!("refs/maxions/outgoing/run-{i}"), &cancel())
                .await
                .unwrap(),
            None
        );
    }
    // A secret in a file *name* is caught too (tree objects are scanned).
    let sandbox = world.sandbox().await;
    let bundle = sandbox.branch_with(&[(&format!("leak/{TOKEN}.txt"), b"x")], &world.base);
    let err = world
        .import(&bundle, &world.expect("run-names"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("a file name in directory `leak` holds the value of secret `GIT_TOKEN`"),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "{err}");
    // And a percent-encoded secret with reserved characters.
    let world2 = World::new().await;
    let mut expect = world2.expect("run-pct");
    expect.secrets = vec![Secret::new("DB_PASSWORD", "p@ss/w0rd+secret!").unwrap()];
    let sandbox = world2.sandbox().await;
    let bundle = sandbox.branch_with(
        &[("db.url", b"postgres://u:p%40ss%2Fw0rd%2Bsecret%21@db/x")],
        &world2.base,
    );
    let err = world2.import(&bundle, &expect).await.unwrap_err();
    assert!(
        matches!(&err, GitError::SecretFound { name, encoding: Encoding::PercentEncoded, .. } if name == "DB_PASSWORD"),
        "{err}"
    );
    assert!(world.server.pushes().is_empty() && world2.server.pushes().is_empty());
}

#[tokio::test]
async fn hooks_planted_in_the_mirror_never_run() {
    let world = World::new().await;
    let marker = world.state.path().join("hook-ran");
    let hooks = world.state.path().join("planted-hooks");
    for dir in [world.mirror.path().join("hooks"), hooks.clone()] {
        std::fs::create_dir_all(&dir).unwrap();
        for hook in [
            "pre-push",
            "reference-transaction",
            "post-update",
            "pre-auto-gc",
        ] {
            let path = dir.join(hook);
            std::fs::write(
                &path,
                format!("#!/bin/sh\necho {hook} >> {}\n", marker.display()),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
    }
    // Even a `core.hooksPath` written into the mirror's config is overridden.
    git(
        Path::new("/"),
        &[
            "--git-dir",
            world.mirror.path().to_str().unwrap(),
            "config",
            "core.hooksPath",
            hooks.to_str().unwrap(),
        ],
    );
    let sandbox = world.sandbox().await;
    let bundle = sandbox.branch_with(&[("a.txt", b"a")], &world.base);
    let imported = changed(world.import(&bundle, &world.expect("run-1")).await.unwrap());
    world
        .mirror
        .push(
            &imported.commit,
            BRANCH,
            Some(&creds(world.mirror.url())),
            &cancel(),
        )
        .await
        .unwrap();
    world
        .mirror
        .fetch(Some(&creds(world.mirror.url())), &cancel())
        .await
        .unwrap();
    assert!(
        !marker.exists(),
        "a hook ran: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
    // The planted hooks do work when git is run plainly, so the test would have seen them.
    git(
        Path::new("/"),
        &[
            "--git-dir",
            world.mirror.path().to_str().unwrap(),
            "update-ref",
            "refs/test/x",
            world.base.as_str(),
        ],
    );
    assert!(marker.exists());
}

#[tokio::test]
async fn config_planted_in_gits_home_is_ignored() {
    let world = World::new().await;
    // Another server that would see any request the planted config redirected to it.
    let decoy = GitServer::with_tokens(&["decoy"]);
    let decoy_url = decoy.create_repo("octo", "hello");
    let marker = world.state.path().join("helper-ran");
    let home = world.state.path().join("git-home");
    let config = format!(
        "[url \"{decoy_url}\"]\n\tinsteadOf = {url}\n\tpushInsteadOf = {url}\n\
         [credential]\n\thelper = \"!f() {{ echo ran > {marker}; }}; f\"\n\
         [core]\n\thooksPath = /nonexistent\n",
        url = world.url,
        marker = marker.display()
    );
    std::fs::write(home.join(".gitconfig"), &config).unwrap();
    std::fs::create_dir_all(home.join(".config/git")).unwrap();
    std::fs::write(home.join(".config/git/config"), &config).unwrap();
    std::fs::write(
        home.join(".netrc"),
        "machine 127.0.0.1 login x password decoy\n",
    )
    .unwrap();

    let sandbox = world.sandbox().await;
    let bundle = sandbox.branch_with(&[("a.txt", b"a")], &world.base);
    let imported = changed(world.import(&bundle, &world.expect("run-1")).await.unwrap());
    world
        .mirror
        .fetch(Some(&creds(world.mirror.url())), &cancel())
        .await
        .unwrap();
    world
        .mirror
        .push(
            &imported.commit,
            BRANCH,
            Some(&creds(world.mirror.url())),
            &cancel(),
        )
        .await
        .unwrap();
    assert!(decoy.requests().is_empty(), "{:?}", decoy.requests());
    assert!(!marker.exists());
    assert_eq!(
        world.server.branch("octo", "hello", BRANCH),
        Some(imported.commit.to_string())
    );
    let mode = std::fs::metadata(&home).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
}

#[tokio::test]
async fn credentials_never_follow_a_redirect_to_another_origin() {
    let server = GitServer::with_tokens(&[TOKEN]);
    server.create_repo("octo", "hello");
    let target = server.base_url();
    // A remote that answers every request with a redirect to the real git server.
    let redirector = Served::start(move |_| {
        axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let location = format!("{}{}", target.trim_end_matches('/'), uri);
            async move { axum::response::Redirect::temporary(&location) }
        })
    });
    let url = format!("http://{}/octo/hello.git", redirector.addr);
    let state = tempfile::tempdir().unwrap();
    let mirror = Mirror::open(state.path(), &url, &cancel()).await.unwrap();
    let err = mirror
        .fetch(Some(&creds(mirror.url())), &cancel())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("`git fetch` failed"), "{err}");
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}

#[tokio::test]
async fn the_lease_refuses_a_push_when_the_remote_moved() {
    let world = World::new().await;
    let sandbox = world.sandbox().await;
    let bundle = sandbox.branch_with(&[("a.txt", b"a")], &world.base);
    let imported = changed(world.import(&bundle, &world.expect("run-1")).await.unwrap());
    // What the run read: the branch did not exist.
    let read = world
        .mirror
        .remote_branch(BRANCH, Some(&creds(world.mirror.url())), &cancel())
        .await
        .unwrap();
    assert_eq!(read, None);
    // Meanwhile a person pushes the branch.
    world.remote_git(&[
        "update-ref",
        &format!("refs/heads/{BRANCH}"),
        world.base.as_str(),
    ]);
    let err = world
        .mirror
        .push_with_lease(
            &imported.commit,
            BRANCH,
            read.as_ref(),
            Some(&creds(world.mirror.url())),
            &cancel(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::LeaseBroken { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("remote branch moved since it was read"),
        "{err}"
    );
    assert_eq!(
        world.server.branch("octo", "hello", BRANCH),
        Some(world.base.to_string())
    );
    // With what the remote has now, the same push goes through and replaces it.
    let pushed = world
        .mirror
        .push(
            &imported.commit,
            BRANCH,
            Some(&creds(world.mirror.url())),
            &cancel(),
        )
        .await
        .unwrap();
    assert_eq!(pushed.previous, Some(world.base.clone()));
    assert_eq!(
        world.server.branch("octo", "hello", BRANCH),
        Some(imported.commit.to_string())
    );
}

#[tokio::test]
async fn a_branch_name_that_is_not_a_branch_is_refused() {
    let world = World::new().await;
    for bad in [
        "",
        "-delete",
        "refs/heads/main",
        "a..b",
        "x.lock",
        "a b",
        "main:refs/heads/other",
    ] {
        let err = world
            .mirror
            .push(
                &world.base,
                bad,
                Some(&creds(world.mirror.url())),
                &cancel(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                GitError::Invalid {
                    what: "branch name",
                    ..
                }
            ),
            "{bad:?}: {err}"
        );
    }
    assert!(world.server.pushes().is_empty());
}

#[tokio::test]
async fn a_file_remote_takes_the_same_path() {
    let origin = tempfile::tempdir().unwrap();
    let bare = origin.path().join("demo.git");
    git(
        Path::new("/"),
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    let seed = origin.path().join("seed");
    git(
        Path::new("/"),
        &["init", "-q", "-b", "main", seed.to_str().unwrap()],
    );
    std::fs::write(seed.join("README.md"), "demo\n").unwrap();
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "-q", "-m", "seed"]);
    git(&seed, &["push", "-q", bare.to_str().unwrap(), "main"]);

    let url = format!("file://{}", bare.display());
    let state = tempfile::tempdir().unwrap();
    let mirror = Mirror::open(state.path(), &url, &cancel()).await.unwrap();
    mirror.fetch(None, &cancel()).await.unwrap();
    assert_eq!(
        mirror.default_branch(None, &cancel()).await.unwrap(),
        "main"
    );
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("base.bundle");
    let base = mirror
        .bundle_base("main", &bundle, &cancel())
        .await
        .unwrap();
    let work = dir.path().join("repo");
    git(
        Path::new("/"),
        &[
            "clone",
            "-q",
            "-b",
            "main",
            bundle.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    let sandbox = Sandbox { work, _dir: dir };
    let out = sandbox.branch_with(&[("new.txt", b"new")], &base);
    let expect = Expect {
        base: base.clone(),
        ..World::expect_for(&base)
    };
    let imported = changed(mirror.import(&out, &expect, &cancel()).await.unwrap());
    mirror
        .push(&imported.commit, BRANCH, None, &cancel())
        .await
        .unwrap();
    let pushed = git(
        Path::new("/"),
        &[
            "--git-dir",
            bare.to_str().unwrap(),
            "rev-parse",
            &format!("refs/heads/{BRANCH}"),
        ],
    );
    assert_eq!(pushed, imported.commit.to_string());
}

#[tokio::test]
async fn two_runs_on_one_repository_take_turns() {
    let world = World::new().await;
    let other = Mirror::open(world.state.path(), &world.url, &cancel())
        .await
        .unwrap();
    assert_eq!(other.path(), world.mirror.path());
    let one = world.sandbox().await;
    let two = world.sandbox().await;
    let bundle_one = one.branch_with(&[("one.txt", b"1")], &world.base);
    let bundle_two = two.branch_with(&[("two.txt", b"2")], &world.base);
    let (expect_one, expect_two) = (world.expect("run-1"), world.expect("run-2"));
    let (creds, cancel) = (creds(world.mirror.url()), cancel());
    let (a, b, c, d) = tokio::join!(
        world.mirror.import(&bundle_one, &expect_one, &cancel),
        other.import(&bundle_two, &expect_two, &cancel),
        world.mirror.fetch(Some(&creds), &cancel),
        other.fetch(Some(&creds), &cancel),
    );
    c.unwrap();
    d.unwrap();
    let (a, b) = (changed(a.unwrap()), changed(b.unwrap()));
    assert_eq!(a.changed_paths, ["one.txt"]);
    assert_eq!(b.changed_paths, ["two.txt"]);
    git(
        Path::new("/"),
        &[
            "--git-dir",
            world.mirror.path().to_str().unwrap(),
            "fsck",
            "--no-progress",
        ],
    );
}

impl World {
    /// An `Expect` for a world without a `World` (the file remote).
    fn expect_for(base: &Oid) -> Expect {
        Expect {
            run_id: "run-file".to_owned(),
            branch: BRANCH.to_owned(),
            base: base.clone(),
            tree: None,
            secrets: vec![Secret::new("GIT_TOKEN", TOKEN).unwrap()],
            message: "From a file remote".to_owned(),
            author: Author {
                name: "maxions".to_owned(),
                email: "maxions@example.invalid".to_owned(),
            },
        }
    }
}

/// Not a timed assertion: prints how a reused mirror compares with a first fetch and with a
/// plain clone, for a ~50 MB repository of incompressible blobs over 300 commits.
/// `cargo test --release --test it git_host::measure -- --ignored --nocapture`
#[tokio::test]
#[ignore = "a measurement, ~1 min; run by hand"]
async fn measure_mirror_reuse_against_a_plain_clone() {
    let server = GitServer::with_tokens(&[TOKEN]);
    let url = server.create_repo("octo", "big");
    generate(&server.repo_path("octo", "big"), 300, 170 * 1024);
    let size = dir_size(&server.repo_path("octo", "big"));
    let state = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let bundle = scratch.path().join("base.bundle");

    let run = || async {
        let started = Instant::now();
        let mirror = Mirror::open(state.path(), &url, &cancel()).await.unwrap();
        mirror
            .fetch(Some(&creds(mirror.url())), &cancel())
            .await
            .unwrap();
        let fetched = started.elapsed();
        mirror
            .bundle_base("main", &bundle, &cancel())
            .await
            .unwrap();
        (fetched, started.elapsed())
    };
    let (first_fetch, first) = run().await;
    let (second_fetch, second) = run().await;

    let started = Instant::now();
    let header = format!(
        "http.extraHeader=Authorization: {}",
        creds("").authorization().expose()
    );
    git(
        scratch.path(),
        &["-c", &header, "clone", "-q", &url, "plain"],
    );
    let clone = started.elapsed();

    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "repository {:.1} MB; first fetch+bundle {:.2}s (fetch {:.2}s), second {:.2}s (fetch \
         {:.2}s), plain clone {:.2}s; first/clone {:.2}x, second/clone {:.3}x, second/first {:.3}x",
        size as f64 / 1e6,
        secs(first),
        secs(first_fetch),
        secs(second),
        secs(second_fetch),
        secs(clone),
        secs(first) / secs(clone),
        secs(second) / secs(clone),
        secs(second) / secs(first),
    );
}

/// Appends `commits` commits to `main` of the bare repository, each adding one random blob of
/// `blob_size` bytes, through `git fast-import`.
fn generate(bare: &Path, commits: usize, blob_size: usize) {
    use std::io::Write as _;
    let mut child = Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(["fast-import", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = std::io::BufWriter::new(child.stdin.take().unwrap());
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut blob = vec![0u8; blob_size];
    for i in 0..commits {
        for chunk in blob.chunks_mut(8) {
            // xorshift64*: incompressible enough that packs cannot shrink it.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let word = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        let message = format!("commit {i}");
        write!(
            input,
            "commit refs/heads/main\ncommitter Gen <gen@example.invalid> {} +0000\ndata {}\n{message}\n",
            1_700_000_000 + i,
            message.len()
        )
        .unwrap();
        if i == 0 {
            writeln!(input, "from refs/heads/main^0").unwrap();
        }
        write!(input, "M 100644 inline data/{i:04}.bin\ndata {blob_size}\n").unwrap();
        input.write_all(&blob).unwrap();
        input.write_all(b"\n").unwrap();
    }
    drop(input);
    assert!(child.wait().unwrap().success());
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dir_size(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// The receive-pack POSTs the server saw: `(status)`, 0 for a connection it cut.
fn push_statuses(server: &GitServer) -> Vec<u16> {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/git-receive-pack"))
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn a_push_whose_connection_drops_is_tried_again_and_lands_once() {
    use crate::support::git_http::DropPush;
    // Cut before the pack is applied: it did not land, so it is pushed again.
    let world = World::new().await;
    let sandbox = world.sandbox().await;
    let bundle = sandbox.branch_with(&[("a.txt", b"a")], &world.base);
    let imported = changed(world.import(&bundle, &world.expect("run-1")).await.unwrap());
    world.server.drop_next_pushes(&[DropPush::Before]);
    let pushed = world
        .mirror
        .push(
            &imported.commit,
            BRANCH,
            Some(&creds(world.mirror.url())),
            &cancel(),
        )
        .await
        .unwrap();
    assert_eq!(pushed.commit, imported.commit);
    assert_eq!(
        world.server.branch("octo", "hello", BRANCH),
        Some(imported.commit.to_string())
    );
    let statuses = push_statuses(&world.server);
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );

    // Cut after it was applied: it landed, and is not pushed a second time (which would find
    // its own lease broken).
    let world = World::new().await;
    let sandbox = world.sandbox().await;
    let bundle = sandbox.branch_with(&[("b.txt", b"b")], &world.base);
    let imported = changed(world.import(&bundle, &world.expect("run-2")).await.unwrap());
    world.server.drop_next_pushes(&[DropPush::After]);
    world
        .mirror
        .push(
            &imported.commit,
            BRANCH,
            Some(&creds(world.mirror.url())),
            &cancel(),
        )
        .await
        .unwrap();
    assert_eq!(
        world.server.branch("octo", "hello", BRANCH),
        Some(imported.commit.to_string())
    );
    let statuses = push_statuses(&world.server);
    assert!(
        statuses.iter().all(|s| *s == 0),
        "pushed again: {statuses:?}"
    );
}

#[tokio::test]
async fn a_push_that_keeps_dropping_gives_up_after_three_tries_with_git_s_error() {
    use crate::support::git_http::DropPush;
    let world = World::new().await;
    let sandbox = world.sandbox().await;
    let bundle = sandbox.branch_with(&[("a.txt", b"a")], &world.base);
    let imported = changed(world.import(&bundle, &world.expect("run-1")).await.unwrap());
    world
        .server
        .drop_next_pushes(&[DropPush::Before, DropPush::Before, DropPush::Before]);
    let err = world
        .mirror
        .push(
            &imported.commit,
            BRANCH,
            Some(&creds(world.mirror.url())),
            &cancel(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("`git push` failed"), "{err}");
    assert!(!err.contains(TOKEN), "{err}");
    let statuses = push_statuses(&world.server);
    assert!(
        statuses.len() >= 3 && statuses.iter().all(|s| *s == 0),
        "{statuses:?}"
    );
    assert_eq!(world.server.branch("octo", "hello", BRANCH), None);
}
