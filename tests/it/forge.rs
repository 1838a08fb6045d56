//! The GitHub forge with the real octocrab client against the fake GitHub API, and git clone and
//! push with the real git CLI against a real `git http-backend`, all on 127.0.0.1.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use maxions::config::RepoRef;
use maxions::config::daemon::{GithubApp, GithubConfig};
use maxions::forge::{Forge, ForgeError, GitCredentials, GitHub, PullRequestSpec};
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
        app: Some(GithubApp {
            app_id: APP_ID,
            installation_id: INSTALLATION,
            private_key_env: env.map(str::to_owned),
            private_key_file: file.map(Path::to_path_buf),
        }),
        token_env: None,
    };
    let no_env = |_: &str| None;

    let err = GitHub::from_config_with_env(&app(Some("APP_KEY"), None), no_env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable `APP_KEY` (the GitHub App's private key) is not set or is empty; \
         export it in the environment maxions runs in"
    );

    let garbage = "not-a-key-but-a-secret-0123456789";
    let err =
        GitHub::from_config_with_env(&app(Some("APP_KEY"), None), |_| Some(garbage.to_owned()))
            .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("environment variable `APP_KEY`"), "{text}");
    assert!(text.contains("not in PEM format"), "{text}");
    assert!(!text.contains(garbage) && !format!("{err:?}").contains(garbage));

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("app.pem");
    let err = GitHub::from_config_with_env(&app(None, Some(&missing)), no_env).unwrap_err();
    assert!(
        matches!(err, ForgeError::UnreadableKeyFile { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("app.pem"), "{err}");

    std::fs::write(&missing, &app_key().private_pem).unwrap();
    let forge = GitHub::from_config_with_env(&app(None, Some(&missing)), no_env).unwrap();
    assert!(format!("{forge:?}").contains("app.pem"));

    // A key pasted into one line of an environment file keeps its `\n`s literally.
    let one_line = app_key().private_pem.trim().replace('\n', "\\n");
    assert!(
        GitHub::from_config_with_env(&app(Some("APP_KEY"), None), |_| Some(one_line.clone()))
            .is_ok()
    );

    let token = |var: &str| GithubConfig {
        api_url: "https://ghe.example/api/v3".into(),
        app: None,
        token_env: Some(var.into()),
    };
    let err = GitHub::from_config_with_env(&token("GH_TOKEN"), no_env).unwrap_err();
    assert!(
        err.to_string().contains("`GH_TOKEN` (the GitHub token)"),
        "{err}"
    );
    let err =
        GitHub::from_config_with_env(&token("GH_TOKEN"), |_| Some("ghp_a b c".into())).unwrap_err();
    assert!(matches!(err, ForgeError::InvalidToken { .. }), "{err:?}");
    assert!(!err.to_string().contains("ghp_a b c"), "{err}");

    let none = GithubConfig {
        api_url: "https://api.github.com".into(),
        app: None,
        token_env: None,
    };
    assert_eq!(
        GitHub::from_config_with_env(&none, no_env).unwrap_err(),
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
    let credentials = app_forge(&fake).git_credentials(&hello()).await.unwrap();
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
    );
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
