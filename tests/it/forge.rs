//! The GitHub forge with the real octocrab client against the fake GitHub API, and git clone and
//! push with the real git CLI against a real `git http-backend`, all on 127.0.0.1.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use maxions::config::RepoRef;
use maxions::config::daemon::{GithubApp, GithubConfig};
use maxions::config::load::load_task;
use maxions::forge::{Forge, ForgeError, GitCredentials, GitHub, PullRequestSpec, RunCredentials};
use maxions::secret::Secret;
use serde_json::json;

use crate::support::git_http::GitServer;
use crate::support::github::{APP_ID, FakeGitHub, INSTALLATION, PULLS, app_key, other_key};

const PAT: &str = "github_pat_11AAAAAAA0123456789abcdefghijkl";
const ACCESS_TOKENS: &str = "/app/installations/42/access_tokens";

fn hello() -> RepoRef {
    RepoRef::parse("octo/hello").unwrap()
}

fn fake() -> FakeGitHub {
    FakeGitHub::standard(PAT)
}

fn app_forge(fake: &FakeGitHub) -> GitHub {
    GitHub::with_app(
        &fake.base_url(),
        APP_ID,
        INSTALLATION,
        &app_key().private_pem,
    )
    .unwrap()
}

fn pat_forge(fake: &FakeGitHub, pat: &str) -> GitHub {
    GitHub::with_token(&fake.base_url(), Secret::new("GITHUB_TOKEN", pat).unwrap()).unwrap()
}

fn spec(title: &str) -> PullRequestSpec {
    PullRequestSpec {
        head_branch: "maxions/dark-mode".into(),
        base: "main".into(),
        title: title.into(),
        body: format!("body of {title}"),
        ..PullRequestSpec::default()
    }
}

#[tokio::test]
async fn app_mints_a_fresh_token_for_every_git_credentials_call() {
    let fake = fake();
    let forge = app_forge(&fake);

    let first = forge.git_credentials(&hello()).await.unwrap();
    let second = forge.git_credentials(&hello()).await.unwrap();

    assert_eq!(first.username(), "x-access-token");
    assert_ne!(first.token().expose(), second.token().expose());
    assert!(first.expires_at().is_some());
    assert_eq!(fake.count("POST", ACCESS_TOKENS), 2);
    assert!(fake.valid_token_check(first.token().expose()));
    assert!(fake.valid_token_check(second.token().expose()));
    // The token that goes into the sandbox can write contents of this one repository, no more.
    for minted in fake.minted_tokens() {
        assert_eq!(minted.repositories, Some(vec!["hello".to_owned()]));
        assert_eq!(minted.permissions, Some(json!({ "contents": "write" })));
    }
    let text = format!("{first:?} {forge:?}");
    assert!(!text.contains(first.token().expose()), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

#[tokio::test]
async fn a_pat_is_the_git_credential_and_authenticates_the_api() {
    let fake = fake();
    let forge = pat_forge(&fake, PAT);

    let credentials = forge.git_credentials(&hello()).await.unwrap();
    assert_eq!(credentials.token().expose(), PAT);
    assert_eq!(forge.default_branch(&hello()).await.unwrap(), "main");

    assert_eq!(fake.count("POST", ACCESS_TOKENS), 0);
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/repos/octo/hello");
    assert_eq!(requests[0].token.as_deref(), Some(PAT));
    assert!(!format!("{forge:?}").contains(PAT));
}

#[tokio::test]
async fn pull_request_is_opened_once_and_updated_on_rerun() {
    let fake = fake();
    // The runner holds forges as trait objects.
    let forge: Arc<dyn Forge> = Arc::new(app_forge(&fake));

    let first = forge
        .open_or_update_pull_request(&hello(), &spec("Add dark mode"))
        .await
        .unwrap();
    let second = forge
        .open_or_update_pull_request(&hello(), &spec("Add dark mode, take two"))
        .await
        .unwrap();

    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.number, second.number);
    assert_eq!(
        first.url,
        format!("{}/octo/hello/pull/{}", fake.web_url(), first.number)
    );
    assert_eq!(fake.count("POST", PULLS), 1);
    assert_eq!(fake.count("PATCH", &format!("{PULLS}/{}", first.number)), 1);
    let pulls = fake.pulls();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].title, "Add dark mode, take two");
    assert_eq!(pulls[0].body, "body of Add dark mode, take two");
    assert_eq!(pulls[0].head, "maxions/dark-mode");
    // The open PR is looked up by `owner:branch`, as GitHub expects.
    let list = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "GET" && r.path == PULLS)
        .unwrap();
    assert!(
        list.query
            .unwrap()
            .contains("head=octo%3Amaxions%2Fdark-mode"),
    );
    // With an App, each call mints its own API token.
    assert_eq!(fake.count("POST", ACCESS_TOKENS), 2);
}

#[tokio::test]
async fn a_create_race_updates_the_pull_request_someone_else_opened() {
    let fake = fake();
    let forge = app_forge(&fake);
    fake.race_next_create();

    let outcome = forge
        .open_or_update_pull_request(&hello(), &spec("Add dark mode"))
        .await
        .unwrap();

    assert!(!outcome.created);
    let creates: Vec<u16> = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == PULLS)
        .map(|r| r.status)
        .collect();
    assert_eq!(creates, [422]);
    assert_eq!(fake.count("GET", PULLS), 2);
    assert_eq!(
        fake.count("PATCH", &format!("{PULLS}/{}", outcome.number)),
        1
    );
    let pulls = fake.pulls();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].title, "Add dark mode");
}

#[tokio::test]
async fn labels_reviewers_and_draft_reach_github() {
    let fake = fake();
    let forge = app_forge(&fake);
    let mut wanted = spec("WIP: dark mode");
    wanted.draft = true;
    wanted.labels = vec!["maxions".into(), "ui".into()];
    wanted.reviewers = vec!["alice".into(), "octo/frontend".into()];

    let first = forge
        .open_or_update_pull_request(&hello(), &wanted)
        .await
        .unwrap();
    assert!(first.draft);
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    let pull = &fake.pulls()[0];
    assert!(pull.draft);
    assert_eq!(pull.labels, ["maxions", "ui"]);
    assert_eq!(pull.reviewers, ["alice"]);
    assert_eq!(pull.team_reviewers, ["frontend"]);

    // The checks pass on the re-run: the draft becomes ready for review (GraphQL only).
    wanted.draft = false;
    let second = forge
        .open_or_update_pull_request(&hello(), &wanted)
        .await
        .unwrap();
    assert!(!second.draft);
    assert!(!fake.pulls()[0].draft);
    assert_eq!(fake.count("POST", "/graphql"), 1);
    assert_eq!(fake.pulls()[0].labels, ["maxions", "ui"]);
}

#[tokio::test]
async fn a_refused_reviewer_is_a_warning_not_a_failure() {
    let fake = fake();
    let forge = app_forge(&fake);
    let mut wanted = spec("Add dark mode");
    wanted.reviewers = vec!["maxions-bot".into()];

    let outcome = forge
        .open_or_update_pull_request(&hello(), &wanted)
        .await
        .unwrap();

    assert!(outcome.created);
    assert_eq!(outcome.warnings.len(), 1);
    let warning = &outcome.warnings[0];
    assert!(
        warning.contains("requesting reviews from maxions-bot"),
        "{warning}"
    );
    assert!(
        warning.contains("cannot be the pull request's author"),
        "{warning}"
    );
}

#[tokio::test]
async fn a_server_error_on_create_is_retried() {
    let fake = fake();
    let forge = pat_forge(&fake, PAT);
    fake.respond_once("POST", PULLS, 502, json!({ "message": "Server Error" }));

    let outcome = forge
        .open_or_update_pull_request(&hello(), &spec("Add dark mode"))
        .await
        .unwrap();

    assert!(outcome.created);
    assert_eq!(fake.count("POST", PULLS), 2);
    assert_eq!(fake.pulls().len(), 1);
}

#[tokio::test]
async fn a_wrong_app_key_is_a_clear_error_without_key_material() {
    let fake = fake();
    let forge = GitHub::with_app(
        &fake.base_url(),
        APP_ID,
        INSTALLATION,
        &other_key().private_pem,
    )
    .unwrap();

    let err = forge.git_credentials(&hello()).await.unwrap_err();

    assert!(matches!(err, ForgeError::Unauthorized { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("minting an installation token for octo/hello"),
        "{text}"
    );
    assert!(text.contains("check the App's private key"), "{text}");
    assert!(text.contains("`github.app.app_id` (7)"), "{text}");
    let debug = format!("{err:?}");
    for line in other_key()
        .private_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
    {
        assert!(!text.contains(line) && !debug.contains(line), "{text}");
    }
    assert!(fake.minted_tokens().is_empty());
}

#[tokio::test]
async fn a_wrong_pat_is_a_clear_error_without_the_token() {
    let fake = fake();
    let wrong = "github_pat_wrongwrongwrong0123456789";
    let forge = pat_forge(&fake, wrong);

    let err = forge
        .open_or_update_pull_request(&hello(), &spec("Add dark mode"))
        .await
        .unwrap_err();

    assert_eq!(err.status(), Some(401));
    let text = err.to_string();
    assert!(text.contains("Bad credentials"), "{text}");
    assert!(text.contains("check the token in `GITHUB_TOKEN`"), "{text}");
    assert!(!text.contains(wrong) && !format!("{err:?}").contains(wrong));
    assert_eq!(fake.count("POST", PULLS), 0);
}

#[tokio::test]
async fn a_repository_the_app_cannot_reach_says_to_install_it() {
    let fake = fake();
    let forge = app_forge(&fake);
    let elsewhere = RepoRef::parse("octo/elsewhere").unwrap();

    let err = forge
        .open_or_update_pull_request(&elsewhere, &spec("x"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("is the App installed on octo/elsewhere"),
        "{text}"
    );

    let forge = pat_forge(&fake, PAT);
    let err = forge.default_branch(&elsewhere).await.unwrap_err();
    assert!(matches!(err, ForgeError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("can the token in `GITHUB_TOKEN` see it"),
        "{err}"
    );
}

#[tokio::test]
async fn github_enterprise_paths_keep_the_api_v3_prefix() {
    let fake = FakeGitHub::builder()
        .app(APP_ID, INSTALLATION, &app_key().public_pem)
        .repo("octo", "hello")
        .prefix("/api/v3")
        .start();
    let forge = app_forge(&fake);
    assert!(forge.api_url().ends_with("/api/v3"));
    let mut wanted = spec("Add dark mode");
    wanted.labels = vec!["maxions".into()];

    forge.git_credentials(&hello()).await.unwrap();
    forge
        .open_or_update_pull_request(&hello(), &wanted)
        .await
        .unwrap();
    wanted.draft = true;
    let outcome = forge
        .open_or_update_pull_request(&hello(), &wanted)
        .await
        .unwrap();

    assert!(outcome.draft && outcome.warnings.is_empty(), "{outcome:?}");
    let requests = fake.requests();
    assert!(requests.iter().all(|r| r.status < 400), "{requests:#?}");
    for request in &requests {
        let expected_prefix = if request.full_path.ends_with("/graphql") {
            "/api/graphql"
        } else {
            "/api/v3/"
        };
        assert!(
            request.full_path.starts_with(expected_prefix),
            "{request:?}"
        );
    }
    assert_eq!(fake.count("POST", PULLS), 1);
}

#[test]
fn config_errors_name_what_to_fix_and_never_the_secret() {
    let app = |env: Option<&str>, file: Option<&Path>| GithubConfig {
        api_url: "https://api.github.com".into(),
        web_url: None,
        app: Some(GithubApp {
            app_id: APP_ID,
            installation_id: INSTALLATION,
            private_key_env: env.map(str::to_owned),
            private_key_file: file.map(Path::to_path_buf),
        }),
        token_env: None,
    };
    let no_env = |_: &str| None;

    let err = GitHub::from_config_with_env(&app(Some("APP_KEY"), None), None, no_env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable `APP_KEY` (the GitHub App's private key) is not set or is empty; \
         export it in the environment maxions runs in"
    );

    let garbage = "not-a-key-but-a-secret-0123456789";
    let err = GitHub::from_config_with_env(&app(Some("APP_KEY"), None), None, |_| {
        Some(garbage.to_owned())
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("environment variable `APP_KEY`"), "{text}");
    assert!(text.contains("not in PEM format"), "{text}");
    assert!(!text.contains(garbage) && !format!("{err:?}").contains(garbage));

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("app.pem");
    let err = GitHub::from_config_with_env(&app(None, Some(&missing)), None, no_env).unwrap_err();
    assert!(
        matches!(err, ForgeError::UnreadableKeyFile { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("app.pem"), "{err}");

    std::fs::write(&missing, &app_key().private_pem).unwrap();
    let forge = GitHub::from_config_with_env(&app(None, Some(&missing)), None, no_env).unwrap();
    assert!(format!("{forge:?}").contains("app.pem"));

    // A key pasted into one line of an environment file keeps its `\n`s literally.
    let one_line = app_key().private_pem.trim().replace('\n', "\\n");
    assert!(
        GitHub::from_config_with_env(&app(Some("APP_KEY"), None), None, |_| Some(
            one_line.clone()
        ))
        .is_ok()
    );

    let token = |var: &str| GithubConfig {
        api_url: "https://ghe.example/api/v3".into(),
        web_url: None,
        app: None,
        token_env: Some(var.into()),
    };
    let err = GitHub::from_config_with_env(&token("GH_TOKEN"), None, no_env).unwrap_err();
    assert!(
        err.to_string().contains("`GH_TOKEN` (the GitHub token)"),
        "{err}"
    );
    let err = GitHub::from_config_with_env(&token("GH_TOKEN"), None, |_| Some("ghp_a b c".into()))
        .unwrap_err();
    assert!(matches!(err, ForgeError::InvalidToken { .. }), "{err:?}");
    assert!(!err.to_string().contains("ghp_a b c"), "{err}");

    let none = GithubConfig {
        api_url: "https://api.github.com".into(),
        web_url: None,
        app: None,
        token_env: None,
    };
    assert_eq!(
        GitHub::from_config_with_env(&none, None, no_env).unwrap_err(),
        ForgeError::NotConfigured
    );
}

/// Runs the real git CLI with `credentials` given the way the runner gives them: as
/// environment of this one command, never in a URL or a config file.
fn git(dir: &Path, credentials: &GitCredentials, url: &str, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "maxions")
        .env("GIT_AUTHOR_EMAIL", "maxions@example.invalid")
        .env("GIT_COMMITTER_NAME", "maxions")
        .env("GIT_COMMITTER_EMAIL", "maxions@example.invalid")
        .envs(credentials.git_env(url))
        .output()
        .expect("run git")
}

#[tokio::test]
async fn a_minted_token_clones_and_pushes_over_http() {
    let fake = fake();
    let server = GitServer::start_with(fake.token_check());
    let url = server.create_repo("octo", "hello");
    let credentials = app_forge(&fake)
        .with_web_url(&server.base_url())
        .unwrap()
        .git_credentials(&hello())
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();

    let clone = git(
        work.path(),
        &credentials,
        &url,
        &["clone", "--quiet", &url, "repo"],
    );
    assert!(
        clone.status.success(),
        "{}",
        String::from_utf8_lossy(&clone.stderr)
    );
    let repo = work.path().join("repo");
    std::fs::write(repo.join("dark.css"), "body { background: #000 }\n").unwrap();
    for args in [
        &["checkout", "--quiet", "-b", "maxions/dark-mode"][..],
        &["add", "dark.css"],
        &["commit", "--quiet", "-m", "Add dark mode"],
        &["push", "--quiet", "origin", "maxions/dark-mode"],
    ] {
        let out = git(&repo, &credentials, &url, args);
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    assert_eq!(
        server
            .file("octo", "hello", "maxions/dark-mode", "dark.css")
            .as_deref(),
        Some("body { background: #000 }\n")
    );
    let pushes = server.pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(
        pushes[0].token.as_deref(),
        Some(credentials.token().expose())
    );
    // The token was given to each command, not stored.
    let config = std::fs::read_to_string(repo.join(".git/config")).unwrap();
    assert!(!config.contains(credentials.token().expose()), "{config}");
    assert!(!config.contains("extraHeader"), "{config}");
}

#[tokio::test]
async fn a_wrong_token_is_refused_by_the_git_server() {
    let fake = fake();
    let server = GitServer::start_with(fake.token_check());
    let url = server.create_repo("octo", "hello");
    let wrong = GitCredentials::new(
        GitCredentials::TOKEN_USERNAME,
        Secret::new("GIT_TOKEN", "ghs_notatokenthefakeevermintedxx").unwrap(),
        None,
    )
    .scoped_to(&url);
    let work = tempfile::tempdir().unwrap();

    let clone = git(
        work.path(),
        &wrong,
        &url,
        &["clone", "--quiet", &url, "repo"],
    );

    assert!(!clone.status.success());
    let stderr = String::from_utf8_lossy(&clone.stderr);
    // After a 401 git asks for a username, which it may not do here (GIT_TERMINAL_PROMPT=0).
    assert!(
        ["Authentication failed", "401", "terminal prompts disabled"]
            .iter()
            .any(|m| stderr.contains(m)),
        "{stderr}"
    );
    assert!(!stderr.contains("ghs_notatoken"), "{stderr}");
    assert!(server.requests().iter().all(|r| r.status == 401));
    assert!(server.pushes().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Credentials go to the forge's own git host, and nowhere else.

#[test]
fn owner_name_is_cloned_from_the_configured_enterprise_host() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::write(
        dir.path(),
        "maxions.yaml",
        "github:\n  api_url: https://ghe.example/api/v3\n  token_env: GHE_TOKEN\n",
    );
    crate::support::write(
        dir.path(),
        "blueprints/b.yaml",
        "name: b\nsteps:\n  - run: echo hi\n",
    );
    crate::support::write(
        dir.path(),
        "tasks/t.yaml",
        "task: Do it.\nrepo: octo/hello\nblueprint: b\n",
    );
    let loaded = load_task(&dir.path().join("tasks/t.yaml"), None).unwrap_or_else(|v| {
        panic!("{:?}", v.diagnostics);
    });
    assert_eq!(loaded.repo.clone_url, "https://ghe.example/octo/hello.git");
    assert_eq!(loaded.repo.full_name, "octo/hello");

    // `web_url` says where repositories live when it is not beside the API.
    crate::support::write(
        dir.path(),
        "maxions.yaml",
        "github:\n  api_url: http://127.0.0.1:1/api/v3\n  web_url: http://127.0.0.1:2/\n  \
         token_env: GHE_TOKEN\n",
    );
    let loaded = load_task(&dir.path().join("tasks/t.yaml"), None).unwrap_or_else(|v| {
        panic!("{:?}", v.diagnostics);
    });
    assert_eq!(loaded.repo.clone_url, "http://127.0.0.1:2/octo/hello.git");
}

#[tokio::test]
async fn credentials_are_never_sent_to_a_clone_url_on_another_host() {
    let fake = fake();
    let forge_git = GitServer::start_with(fake.token_check());
    forge_git.create_repo("octo", "hello");
    // Another host (here: another port), which lets anyone in and records what it is sent.
    let elsewhere = GitServer::start(|_| true);
    let foreign = elsewhere.create_repo("octo", "hello");
    let forge = app_forge(&fake)
        .with_web_url(&forge_git.base_url())
        .unwrap();
    let own = forge.clone_url("octo", "hello");
    assert_eq!(own, forge_git.url("octo", "hello"));
    assert!(forge.serves(&own));
    assert!(!forge.serves(&foreign));
    let credentials = forge.git_credentials(&hello()).await.unwrap();
    assert!(credentials.applies_to(&own));
    assert!(!credentials.applies_to(&foreign));
    // The authority tricks a hostile task might try.
    let port = own
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let trick = foreign.replacen("http://", &format!("http://{port}@"), 1);
    assert!(!credentials.applies_to(&trick) && !forge.serves(&trick));

    let work = tempfile::tempdir().unwrap();
    // (Whether these clones succeed does not matter: the other host must not see the token.)
    for (url, dir) in [(&foreign, "foreign"), (&trick, "trick")] {
        git(
            work.path(),
            &credentials,
            url,
            &["clone", "--quiet", url, dir],
        );
    }
    assert!(!elsewhere.requests().is_empty());
    let sent: Vec<_> = elsewhere
        .requests()
        .into_iter()
        .filter_map(|r| r.token)
        .collect();
    assert!(
        !sent.iter().any(|t| t == credentials.token().expose()),
        "the forge's token reached another host: {sent:?}"
    );
    let clone = git(
        work.path(),
        &credentials,
        &own,
        &["clone", "--quiet", &own, "own"],
    );
    assert!(
        clone.status.success(),
        "{}",
        String::from_utf8_lossy(&clone.stderr)
    );
    assert!(
        forge_git
            .requests()
            .iter()
            .any(|r| r.token.as_deref() == Some(credentials.token().expose()))
    );
}

// ---------------------------------------------------------------------------------------------
// Installation tokens: revoked when done, re-minted before they lapse.

#[tokio::test]
async fn a_revoked_installation_token_no_longer_clones() {
    let fake = fake();
    let server = GitServer::start_with(fake.token_check());
    let url = server.create_repo("octo", "hello");
    let forge = app_forge(&fake).with_web_url(&server.base_url()).unwrap();
    let credentials = forge.git_credentials(&hello()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let clone = git(
        work.path(),
        &credentials,
        &url,
        &["clone", "--quiet", &url, "a"],
    );
    assert!(
        clone.status.success(),
        "{}",
        String::from_utf8_lossy(&clone.stderr)
    );

    forge.revoke(&credentials).await.unwrap();

    assert_eq!(fake.count("DELETE", "/installation/token"), 1);
    let revoke = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .unwrap();
    assert_eq!(revoke.token.as_deref(), Some(credentials.token().expose()));
    assert_eq!(revoke.status, 204);
    assert!(!fake.valid_token_check(credentials.token().expose()));
    let clone = git(
        work.path(),
        &credentials,
        &url,
        &["clone", "--quiet", &url, "b"],
    );
    assert!(!clone.status.success());
    // Revoking again (or a token that lapsed) is no error.
    forge.revoke(&credentials).await.unwrap();

    // A PAT is the operator's: revoking it is a no-op that sends nothing.
    let pat = pat_forge(&fake, PAT);
    let credentials = pat.git_credentials(&hello()).await.unwrap();
    pat.revoke(&credentials).await.unwrap();
    assert_eq!(fake.count("DELETE", "/installation/token"), 2);
    assert!(fake.valid_token_check(PAT));
}

#[tokio::test]
async fn tokens_minted_for_api_calls_are_revoked_after_them() {
    let fake = FakeGitHub::builder()
        .app(APP_ID, INSTALLATION, &app_key().public_pem)
        .repo_with_default_branch("octo", "hello", "trunk")
        .start();
    let forge = app_forge(&fake);

    assert_eq!(forge.default_branch(&hello()).await.unwrap(), "trunk");
    let outcome = forge
        .open_or_update_pull_request(&hello(), &spec("Add dark mode"))
        .await
        .unwrap();

    assert!(
        outcome.created && outcome.warnings.is_empty(),
        "{outcome:?}"
    );
    let minted = fake.minted_tokens();
    assert_eq!(minted.len(), 2);
    assert!(minted.iter().all(|t| t.revoked), "{minted:?}");
    assert_eq!(fake.count("DELETE", "/installation/token"), 2);
    assert_eq!(fake.count("GET", "/repos/octo/hello"), 1);
}

#[tokio::test]
async fn run_credentials_reuse_a_fresh_token_and_revoke_all_at_the_end() {
    let fake = fake();
    let forge: Arc<dyn Forge> = Arc::new(app_forge(&fake));
    let run = RunCredentials::new(Arc::clone(&forge), hello());

    let first = run.get().await.unwrap();
    let second = run.get().await.unwrap();

    assert_eq!(first.token().expose(), second.token().expose());
    assert_eq!(fake.count("POST", ACCESS_TOKENS), 1);
    assert!(run.revoke_all().await.is_empty());
    assert!(fake.minted_tokens().iter().all(|t| t.revoked));
    assert!(!fake.valid_token_check(first.token().expose()));
}

#[tokio::test]
async fn run_credentials_are_reminted_before_they_expire() {
    // Tokens that live two minutes: less than the five-minute margin from the start.
    let fake = FakeGitHub::builder()
        .app(APP_ID, INSTALLATION, &app_key().public_pem)
        .repo("octo", "hello")
        .token_lifetime(120)
        .start();
    let server = GitServer::start_with(fake.token_check());
    let url = server.create_repo("octo", "hello");
    let forge: Arc<dyn Forge> =
        Arc::new(app_forge(&fake).with_web_url(&server.base_url()).unwrap());
    let run = RunCredentials::new(Arc::clone(&forge), hello());

    let first = run.get().await.unwrap();
    let second = run.get().await.unwrap();

    assert_ne!(first.token().expose(), second.token().expose());
    assert_eq!(fake.count("POST", ACCESS_TOKENS), 2);
    assert!(run.applies_to(&url));
    let work = tempfile::tempdir().unwrap();
    let clone = git(work.path(), &second, &url, &["clone", "--quiet", &url, "a"]);
    assert!(
        clone.status.success(),
        "{}",
        String::from_utf8_lossy(&clone.stderr)
    );

    // With a margin shorter than their life, the same token serves.
    let patient = RunCredentials::new(Arc::clone(&forge), hello())
        .with_margin(std::time::Duration::from_secs(30));
    let a = patient.get().await.unwrap();
    let b = patient.get().await.unwrap();
    assert_eq!(a.token().expose(), b.token().expose());

    // Every token handed out is revoked, the replaced one too.
    assert!(run.revoke_all().await.is_empty());
    assert!(patient.revoke_all().await.is_empty());
    assert!(fake.minted_tokens().iter().all(|t| t.revoked));
    let clone = git(work.path(), &second, &url, &["clone", "--quiet", &url, "b"]);
    assert!(!clone.status.success());
}

#[tokio::test]
async fn run_credentials_dropped_without_revoke_all_are_revoked_anyway() {
    let fake = fake();
    let forge: Arc<dyn Forge> = Arc::new(app_forge(&fake));
    let run = RunCredentials::new(forge, hello());
    let token = run.get().await.unwrap().token().expose().to_owned();

    drop(run);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fake.valid_token_check(&token) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !fake.valid_token_check(&token),
        "the token outlived its run"
    );
}

// ---------------------------------------------------------------------------------------------
// The App's key file is found beside maxions.yaml, wherever maxions runs from.

#[test]
fn a_relative_private_key_file_is_read_beside_maxions_yaml() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::write(dir.path(), "keys/app.pem", &app_key().private_pem);
    let config = GithubConfig {
        api_url: "https://api.github.com".into(),
        web_url: None,
        app: Some(GithubApp {
            app_id: APP_ID,
            installation_id: INSTALLATION,
            private_key_env: None,
            private_key_file: Some("keys/app.pem".into()),
        }),
        token_env: None,
    };
    // The tests run in the crate's root, where there is no `keys/app.pem`.
    assert!(!Path::new("keys/app.pem").exists());
    let forge = GitHub::from_config_with_env(&config, Some(dir.path()), |_| None).unwrap();
    assert_eq!(forge.web_url(), "https://github.com");
    let err = GitHub::from_config_with_env(&config, None, |_| None).unwrap_err();
    assert!(
        matches!(err, ForgeError::UnreadableKeyFile { .. }),
        "{err:?}"
    );
}
