//! GitHub (and GitHub Enterprise) through octocrab. Authenticates as a GitHub App (a JWT signed
//! with the App's private key buys an installation token, minted afresh for every run and scoped
//! to the one repository) or with a personal access token.
//!
//! Every GitHub failure becomes a [`ForgeError`] that says what maxions was doing and what to
//! check; text that comes back from GitHub is scrubbed of the tokens in play first.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use octocrab::models::AppId;
use octocrab::models::pulls::PullRequest;
use octocrab::{EncodingKey, Octocrab};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::credentials::same_origin;
use super::retry::{self, MAX_ATTEMPTS, MAX_WAIT, Verdict};
use super::{BoxFuture, Forge, ForgeError, GitCredentials, PullRequestOutcome, PullRequestSpec};
use crate::config::RepoRef;
use crate::config::daemon::{GithubApp, GithubConfig, web_url_for_api};
use crate::error_chain::error_chain;
use crate::secret::Secret;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// GitHub as a [`Forge`].
///
/// HTTP clients are built per operation, inside the caller's runtime (octocrab's client spawns a
/// task on the runtime it is built in), so a `GitHub` can be made anywhere, even outside any
/// runtime, and shared between runs.
pub struct GitHub {
    api_url: String,
    graphql_url: String,
    /// Where repositories live (`WEB_URL/owner/name.git`); its origin is the only one the
    /// forge's git credentials are for.
    web_url: String,
    auth: Auth,
}

enum Auth {
    App(App),
    Token(Secret),
}

struct App {
    id: u64,
    installation_id: u64,
    /// Where the key came from, for messages ("environment variable `X`"); never the key.
    key_origin: String,
    key: EncodingKey,
}

impl GitHub {
    /// Builds the forge from `maxions.yaml`'s `github` section, reading the App's private key or
    /// the token from the process environment or the named file. A relative `private_key_file`
    /// is read relative to `config_dir`, the directory of maxions.yaml (the current directory
    /// when there is none).
    ///
    /// # Errors
    /// A missing variable or file, a key that is not an RSA PEM key, an unusable token, API URL
    /// or web URL; each message names what to fix and none contains the secret.
    pub fn from_config(
        config: &GithubConfig,
        config_dir: Option<&Path>,
    ) -> Result<Self, ForgeError> {
        Self::from_config_with_env(config, config_dir, |name| std::env::var(name).ok())
    }

    /// [`Self::from_config`] with the environment given as a function (for tests and for
    /// callers that keep their own environment).
    ///
    /// # Errors
    /// As [`Self::from_config`].
    pub fn from_config_with_env(
        config: &GithubConfig,
        config_dir: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ForgeError> {
        let web_url = config.repo_base_url();
        if let Some(app) = &config.app {
            let (origin, pem) = read_private_key(app, config_dir, &env)?;
            return Self::app(
                &config.api_url,
                app.app_id,
                app.installation_id,
                &pem,
                origin,
            )?
            .with_web_url(&web_url);
        }
        if let Some(var) = &config.token_env {
            let value = env(var)
                .filter(|value| !value.trim().is_empty())
                .ok_or_else(|| ForgeError::MissingEnv {
                    var: var.clone(),
                    what: "the GitHub token",
                })?;
            let token =
                Secret::new(var.clone(), value.trim()).map_err(|err| ForgeError::InvalidToken {
                    origin: format!("environment variable `{var}`"),
                    problem: err.to_string(),
                })?;
            return Self::with_token(&config.api_url, token)?.with_web_url(&web_url);
        }
        Err(ForgeError::NotConfigured)
    }

    /// Serves repositories from `web_url` (`WEB_URL/owner/name.git`) instead of the one derived
    /// from the API URL (see `github.web_url` in maxions.yaml).
    ///
    /// # Errors
    /// [`ForgeError::InvalidWebUrl`] for a URL that is not plain `http(s)://host[:port][/path]`.
    pub fn with_web_url(mut self, web_url: &str) -> Result<Self, ForgeError> {
        let checked = check_api_url(web_url).map_err(|err| match err {
            ForgeError::InvalidApiUrl { url, problem } => {
                ForgeError::InvalidWebUrl { url, problem }
            }
            other => other,
        })?;
        if !same_origin(&checked, &checked) {
            return Err(ForgeError::InvalidWebUrl {
                url: web_url.to_owned(),
                problem: "it must be `http(s)://host[:port]` with no user name or password"
                    .to_owned(),
            });
        }
        self.web_url = checked;
        Ok(self)
    }

    /// Authenticates as GitHub App `app_id`, minting tokens for installation `installation_id`.
    /// `private_key_pem` is the App's private key as GitHub issues it
    /// (PEM, its first line naming an RSA private key).
    ///
    /// # Errors
    /// [`ForgeError::InvalidPrivateKey`] or [`ForgeError::InvalidApiUrl`].
    pub fn with_app(
        api_url: &str,
        app_id: u64,
        installation_id: u64,
        private_key_pem: &str,
    ) -> Result<Self, ForgeError> {
        Self::app(
            api_url,
            app_id,
            installation_id,
            private_key_pem,
            "the key given".to_owned(),
        )
    }

    fn app(
        api_url: &str,
        app_id: u64,
        installation_id: u64,
        pem: &str,
        key_origin: String,
    ) -> Result<Self, ForgeError> {
        let api_url = check_api_url(api_url)?;
        let key = parse_private_key(app_id, pem, &key_origin)?;
        Ok(Self {
            graphql_url: graphql_url(&api_url),
            web_url: web_url_for_api(&api_url),
            api_url,
            auth: Auth::App(App {
                id: app_id,
                installation_id,
                key_origin,
                key,
            }),
        })
    }

    /// Authenticates with a personal access token (fine-grained tokens are recommended). The
    /// secret's name (the environment variable it came from) appears in messages.
    ///
    /// # Errors
    /// [`ForgeError::InvalidToken`] or [`ForgeError::InvalidApiUrl`].
    pub fn with_token(api_url: &str, token: Secret) -> Result<Self, ForgeError> {
        let api_url = check_api_url(api_url)?;
        check_token_text(token.expose()).map_err(|problem| ForgeError::InvalidToken {
            origin: format!("`{}`", token.name()),
            problem: problem.to_owned(),
        })?;
        Ok(Self {
            graphql_url: graphql_url(&api_url),
            web_url: web_url_for_api(&api_url),
            api_url,
            auth: Auth::Token(token),
        })
    }

    /// The REST API base URL, without a trailing slash.
    #[must_use]
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// Where repositories live, without a trailing slash: `owner/name` is cloned from
    /// `WEB_URL/owner/name.git`.
    #[must_use]
    pub fn web_url(&self) -> &str {
        &self.web_url
    }

    /// The clone URL of `owner/name` on this forge.
    #[must_use]
    pub fn clone_url(&self, owner: &str, name: &str) -> String {
        format!("{}/{owner}/{name}.git", self.web_url)
    }

    /// Mints an installation token for `repo` only, with `permissions` (all the installation's
    /// permissions when `None`).
    async fn mint(
        &self,
        app: &App,
        repo: &RepoRef,
        permissions: Option<Value>,
    ) -> Result<(Secret, Option<DateTime<Utc>>), ForgeError> {
        #[derive(Deserialize)]
        struct AccessToken {
            token: String,
            #[serde(default)]
            expires_at: Option<String>,
        }
        let ctx = Ctx::new(
            Doing::Mint,
            repo,
            format!(
                "minting an installation token for {} (App {}, installation {})",
                repo.full_name, app.id, app.installation_id
            ),
        );
        let mut body = json!({ "repositories": [repo.name] });
        if let Some(permissions) = permissions {
            body["permissions"] = permissions;
        }
        let route = format!("/app/installations/{}/access_tokens", app.installation_id);
        // A client that authenticates as the App itself (a fresh JWT per request).
        let client = build_client(&self.api_url, ClientAuth::App(app.id, app.key.clone()))?;
        let url = route;
        // A lost answer costs one unseen token, which expires within the hour.
        let answer: AccessToken = self
            .send(&client, Verb::Post, &url, Some(&body), &ctx, &[])
            .await?;
        if let Err(problem) = check_token_text(&answer.token) {
            return Err(ForgeError::UnexpectedResponse {
                action: ctx.action,
                reason: format!("the token GitHub returned is not usable: {problem}"),
            });
        }
        let token = Secret::new("GITHUB_INSTALLATION_TOKEN", answer.token).map_err(|_| {
            ForgeError::UnexpectedResponse {
                action: ctx.action.clone(),
                reason: "the token GitHub returned is too short".to_owned(),
            }
        })?;
        let expires_at = answer
            .expires_at
            .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
            .map(|time| time.with_timezone(&Utc));
        Ok((token, expires_at))
    }

    /// A REST client for one operation on `repo`: with an App, behind a freshly minted token,
    /// which [`Self::end`] revokes.
    async fn session(&self, repo: &RepoRef) -> Result<Session, ForgeError> {
        let (token, minted) = match &self.auth {
            Auth::Token(token) => (token.clone(), false),
            Auth::App(app) => (self.mint(app, repo, None).await?.0, true),
        };
        let rest = build_client(&self.api_url, ClientAuth::Token(token.expose()))?;
        Ok(Session {
            rest,
            token,
            minted,
        })
    }

    /// Revokes the token a session minted, so that it does not outlive the operation by an hour.
    async fn end(&self, session: &Session) -> Result<(), ForgeError> {
        if !session.minted {
            return Ok(());
        }
        self.revoke_token(&session.token).await
    }

    /// `DELETE /installation/token`, authenticated with the token itself. A 401 means the token
    /// no longer works (expired, or revoked already): that is what was wanted.
    async fn revoke_token(&self, token: &Secret) -> Result<(), ForgeError> {
        let action = "revoking an installation token".to_owned();
        let client = build_client(&self.api_url, ClientAuth::Token(token.expose()))?;
        let url = format!("{}/installation/token", self.api_url);
        let scrub = |text: String| text.replace(token.expose(), "***");
        let response = client
            ._delete(url.as_str(), None::<&()>)
            .await
            .map_err(|err| ForgeError::Unreachable {
                api_url: self.api_url.clone(),
                action: action.clone(),
                reason: scrub(err.to_string().lines().next().unwrap_or("").to_owned()),
            })?;
        match octocrab::map_github_error(response).await {
            Ok(_) => Ok(()),
            Err(octocrab::Error::GitHub { source, .. }) if source.status_code.as_u16() == 401 => {
                Ok(())
            }
            Err(octocrab::Error::GitHub { source, .. }) => Err(ForgeError::Api {
                action,
                status: source.status_code.as_u16(),
                message: scrub(source.message.clone()),
                hint: "the token stops working at its expiry anyway; check GitHub's status"
                    .to_owned(),
            }),
            Err(err) => Err(ForgeError::UnexpectedResponse {
                action,
                reason: scrub(err.to_string().lines().next().unwrap_or("").to_owned()),
            }),
        }
    }

    async fn find_open_pull_request(
        &self,
        session: &Session,
        repo: &RepoRef,
        head_branch: &str,
    ) -> Result<Option<PullRequest>, ForgeError> {
        let head = format!("{}:{head_branch}", repo.owner);
        let ctx = Ctx::new(
            Doing::Read,
            repo,
            format!(
                "looking for the open pull request from `{head}` in {}",
                repo.full_name
            ),
        );
        let url = format!(
            "/repos/{}/{}/pulls?state=open&head={}&per_page=10",
            repo.owner,
            repo.name,
            encode_query_value(&head)
        );
        let page: Vec<PullRequest> = self
            .send(
                &session.rest,
                Verb::Get,
                &url,
                None,
                &ctx,
                &[session.token.expose()],
            )
            .await?;
        // The `head` filter is GitHub's; checking the branch again costs nothing and guards
        // against a server that ignores the filter.
        Ok(page.into_iter().find(|pr| pr.head.ref_field == head_branch))
    }

    async fn update_pull_request(
        &self,
        session: &Session,
        repo: &RepoRef,
        spec: &PullRequestSpec,
        existing: &PullRequest,
    ) -> Result<PullRequest, ForgeError> {
        let ctx = Ctx::new(
            Doing::Write,
            repo,
            format!(
                "updating pull request #{} in {}",
                existing.number, repo.full_name
            ),
        );
        let mut body = json!({ "title": spec.title, "body": spec.body });
        if existing.base.ref_field != spec.base {
            body["base"] = json!(spec.base);
        }
        let url = format!(
            "/repos/{}/{}/pulls/{}",
            repo.owner, repo.name, existing.number
        );
        // Setting the same title, body and base twice is harmless: retrying is safe.
        self.send(
            &session.rest,
            Verb::Patch,
            &url,
            Some(&body),
            &ctx,
            &[session.token.expose()],
        )
        .await
    }

    /// Drafts cannot be toggled through REST, only through GraphQL.
    async fn set_draft(
        &self,
        session: &Session,
        repo: &RepoRef,
        pr: &PullRequest,
        draft: bool,
    ) -> Result<(), ForgeError> {
        let (mutation, doing) = if draft {
            ("convertPullRequestToDraft", "converting")
        } else {
            ("markPullRequestReadyForReview", "marking")
        };
        let action = format!(
            "{doing} pull request #{} in {} {}",
            pr.number,
            repo.full_name,
            if draft {
                "to a draft"
            } else {
                "ready for review"
            }
        );
        let Some(node_id) = &pr.node_id else {
            return Err(ForgeError::UnexpectedResponse {
                action,
                reason: "the pull request has no `node_id`".to_owned(),
            });
        };
        let ctx = Ctx::new(Doing::Write, repo, action);
        let client = build_client(&self.graphql_url, ClientAuth::Token(session.token.expose()))?;
        let query = format!(
            "mutation($id: ID!) {{ {mutation}(input: {{pullRequestId: $id}}) \
             {{ pullRequest {{ isDraft }} }} }}"
        );
        let body = json!({ "query": query, "variables": { "id": node_id } });
        let _: Value = self
            .send(
                &client,
                Verb::Post,
                "/graphql",
                Some(&body),
                &ctx,
                &[session.token.expose()],
            )
            .await?;
        Ok(())
    }

    async fn open_or_update(
        &self,
        repo: &RepoRef,
        spec: &PullRequestSpec,
    ) -> Result<PullRequestOutcome, ForgeError> {
        let session = self.session(repo).await?;
        let result = self.open_or_update_in(&session, repo, spec).await;
        let ended = self.end(&session).await;
        let mut outcome = result?;
        if let Err(err) = ended {
            outcome.warnings.push(err.to_string());
        }
        Ok(outcome)
    }

    async fn open_or_update_in(
        &self,
        session: &Session,
        repo: &RepoRef,
        spec: &PullRequestSpec,
    ) -> Result<PullRequestOutcome, ForgeError> {
        let secrets = [session.token.expose()];
        let (pr, created) = self.find_or_create(session, repo, spec).await?;

        let mut warnings = Vec::new();
        let mut draft = pr.draft.unwrap_or(false);
        if draft != spec.draft {
            match self.set_draft(session, repo, &pr, spec.draft).await {
                Ok(()) => draft = spec.draft,
                Err(err) => warnings.push(err.to_string()),
            }
        }
        if !spec.labels.is_empty() {
            let ctx = Ctx::new(
                Doing::Labels,
                repo,
                format!(
                    "adding labels {} to pull request #{}",
                    spec.labels.join(", "),
                    pr.number
                ),
            );
            let url = format!(
                "/repos/{}/{}/issues/{}/labels",
                repo.owner, repo.name, pr.number
            );
            let body = json!({ "labels": spec.labels });
            if let Err(err) = self
                .send::<Value>(&session.rest, Verb::Post, &url, Some(&body), &ctx, &secrets)
                .await
            {
                warnings.push(err.to_string());
            }
        }
        if !spec.reviewers.is_empty() {
            let (teams, users): (Vec<&String>, Vec<&String>) =
                spec.reviewers.iter().partition(|name| name.contains('/'));
            let teams: Vec<&str> = teams
                .iter()
                .filter_map(|team| team.rsplit_once('/').map(|(_, slug)| slug))
                .collect();
            let ctx = Ctx::new(
                Doing::Reviewers,
                repo,
                format!(
                    "requesting reviews from {} on pull request #{}",
                    spec.reviewers.join(", "),
                    pr.number
                ),
            );
            let url = format!(
                "/repos/{}/{}/pulls/{}/requested_reviewers",
                repo.owner, repo.name, pr.number
            );
            let body = json!({ "reviewers": users, "team_reviewers": teams });
            if let Err(err) = self
                .send::<Value>(&session.rest, Verb::Post, &url, Some(&body), &ctx, &secrets)
                .await
            {
                warnings.push(err.to_string());
            }
        }

        Ok(PullRequestOutcome {
            number: pr.number,
            url: pr.html_url.map_or(pr.url, |url| url.to_string()),
            created,
            draft,
            warnings,
        })
    }

    async fn fetch_default_branch(&self, repo: &RepoRef) -> Result<String, ForgeError> {
        let session = self.session(repo).await?;
        let ctx = Ctx::new(Doing::Read, repo, format!("reading {}", repo.full_name));
        #[derive(Deserialize)]
        struct Repository {
            default_branch: Option<String>,
        }
        let url = format!("/repos/{}/{}", repo.owner, repo.name);
        let found: Result<Repository, ForgeError> = self
            .send(
                &session.rest,
                Verb::Get,
                &url,
                None,
                &ctx,
                &[session.token.expose()],
            )
            .await;
        // A failed revocation costs nothing here: the token lapses within the hour anyway.
        if let Err(error) = self.end(&session).await {
            tracing::warn!(%error, "could not revoke the token used to read the default branch");
        }
        found?
            .default_branch
            .ok_or_else(|| ForgeError::UnexpectedResponse {
                action: ctx.action,
                reason: "the repository has no `default_branch`".to_owned(),
            })
    }

    /// Turns an octocrab error into a [`ForgeError`] for `ctx`, scrubbing `secrets` (and the
    /// configured token) from any text GitHub or the transport sent back.
    fn error(&self, err: octocrab::Error, ctx: &Ctx<'_>, secrets: &[&str]) -> ForgeError {
        let scrub = |text: &str| self.scrub(text, secrets);
        let action = ctx.action.clone();
        match err {
            octocrab::Error::GitHub { source, .. } => {
                let message = scrub(&source.message);
                let details = scrub(&format_details(source.errors.as_deref()));
                self.status_error(source.status_code.as_u16(), action, message, details, ctx)
            }
            octocrab::Error::Service { source, .. } => ForgeError::Unreachable {
                api_url: self.api_url.clone(),
                action,
                reason: scrub(&error_chain(source.as_ref())),
            },
            octocrab::Error::Hyper { source, .. } => ForgeError::Unreachable {
                api_url: self.api_url.clone(),
                action,
                reason: scrub(&error_chain(&source)),
            },
            octocrab::Error::Json { source, .. } => ForgeError::UnexpectedResponse {
                action,
                reason: scrub(&format!(
                    "the answer does not have the expected shape at `{}`: {}",
                    source.path(),
                    source.inner()
                )),
            },
            octocrab::Error::Serde { source, .. } => ForgeError::UnexpectedResponse {
                action,
                reason: scrub(&format!("the answer is not the expected JSON: {source}")),
            },
            octocrab::Error::JWT { .. } => ForgeError::InvalidPrivateKey {
                origin: match &self.auth {
                    Auth::App(app) => app.key_origin.clone(),
                    Auth::Token(_) => "use".to_owned(),
                },
                problem: "it could not sign a token".to_owned(),
            },
            other => {
                // octocrab's Display may append a backtrace after the first line.
                let text = other.to_string();
                ForgeError::UnexpectedResponse {
                    action,
                    reason: scrub(text.lines().next().unwrap_or("unknown error")),
                }
            }
        }
    }

    /// `text` with `secrets` and the configured token replaced by `***`.
    fn scrub(&self, text: &str, secrets: &[&str]) -> String {
        let mut text = text.to_owned();
        let pat = match &self.auth {
            Auth::Token(token) => Some(token.expose()),
            Auth::App(_) => None,
        };
        for secret in secrets.iter().copied().chain(pat) {
            if !secret.is_empty() {
                text = text.replace(secret, "***");
            }
        }
        text
    }

    /// Finds the open pull request for the branch and updates it, or opens one. Opening is the
    /// one request that is not safe to repeat, so after a passing failure (a 5xx, a rate limit,
    /// a dropped connection: GitHub may have opened it all the same) maxions looks again
    /// before it opens again; that look, not a second `POST`, is what keeps it to one pull
    /// request.
    async fn find_or_create(
        &self,
        session: &Session,
        repo: &RepoRef,
        spec: &PullRequestSpec,
    ) -> Result<(PullRequest, bool), ForgeError> {
        let secrets = [session.token.expose()];
        let ctx = Ctx::new(
            Doing::CreatePull,
            repo,
            format!(
                "opening a pull request from `{}` into `{}` in {}",
                spec.head_branch, spec.base, repo.full_name
            ),
        );
        let url = format!("/repos/{}/{}/pulls", repo.owner, repo.name);
        let body = json!({
            "title": spec.title,
            "head": spec.head_branch,
            "base": spec.base,
            "body": spec.body,
            "draft": spec.draft,
        });
        let mut attempt = 1;
        let mut raced = false;
        loop {
            if let Some(existing) = self
                .find_open_pull_request(session, repo, &spec.head_branch)
                .await?
            {
                let pr = self
                    .update_pull_request(session, repo, spec, &existing)
                    .await?;
                return Ok((pr, false));
            }
            if raced {
                return Err(ForgeError::UnexpectedResponse {
                    action: ctx.action,
                    reason: "GitHub says one already exists but lists none open".to_owned(),
                });
            }
            let failure = match self
                .send_once::<PullRequest>(
                    &session.rest,
                    Verb::Post,
                    &url,
                    Some(&body),
                    &ctx,
                    &secrets,
                )
                .await
            {
                Ok(pr) => return Ok((pr, true)),
                Err(failure) => failure,
            };
            // Someone (a concurrent run, a person, or our own earlier attempt whose answer was
            // lost) opened it between our look and our create: GitHub says so with a 422, and
            // updating that one is what we want.
            if failure.already_exists {
                raced = true;
                continue;
            }
            self.pause_or_give_up(failure, &mut attempt, &ctx).await?;
        }
    }

    /// Sends one request, trying again (at most [`MAX_ATTEMPTS`] times in all) while GitHub's
    /// answer is a passing failure. Only for requests that are safe to repeat.
    async fn send<T: DeserializeOwned>(
        &self,
        client: &Octocrab,
        verb: Verb,
        route: &str,
        body: Option<&Value>,
        ctx: &Ctx<'_>,
        secrets: &[&str],
    ) -> Result<T, ForgeError> {
        let mut attempt = 1;
        loop {
            match self
                .send_once(client, verb, route, body, ctx, secrets)
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(failure) => self.pause_or_give_up(failure, &mut attempt, ctx).await?,
            }
        }
    }

    /// After a failed attempt: sleeps and counts the attempt if another is worth it, or returns
    /// the error to report.
    async fn pause_or_give_up(
        &self,
        failure: Failure,
        attempt: &mut u32,
        ctx: &Ctx<'_>,
    ) -> Result<(), ForgeError> {
        match failure.verdict {
            Verdict::Again(named) if *attempt < MAX_ATTEMPTS => {
                let wait = retry::pause(*attempt, named);
                tracing::info!(
                    action = %ctx.action,
                    attempt = *attempt,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %failure.error,
                    "GitHub failed for a moment; trying again"
                );
                tokio::time::sleep(wait).await;
                *attempt += 1;
                Ok(())
            }
            Verdict::Again(_) => Err(ForgeError::GaveUp {
                attempts: *attempt,
                last: Box::new(failure.error),
            }),
            Verdict::Final | Verdict::TooLong(_) => Err(failure.error),
        }
    }

    /// One request to `route` (a path below the client's base URL: octocrab sends an App's or
    /// installation's credentials only with those) and its answer as JSON, or the error with what it says about trying again.
    async fn send_once<T: DeserializeOwned>(
        &self,
        client: &Octocrab,
        verb: Verb,
        route: &str,
        body: Option<&Value>,
        ctx: &Ctx<'_>,
        secrets: &[&str],
    ) -> Result<T, Failure> {
        let sent = match verb {
            Verb::Get => client._get(route).await,
            Verb::Post => client._post(route, body).await,
            Verb::Patch => client._patch(route, body).await,
        };
        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                // No answer at all: a refused or dropped connection, a timeout.
                let passing = matches!(
                    err,
                    octocrab::Error::Service { .. } | octocrab::Error::Hyper { .. }
                );
                return Err(Failure {
                    error: self.error(err, ctx, secrets),
                    verdict: if passing {
                        Verdict::Again(None)
                    } else {
                        Verdict::Final
                    },
                    already_exists: false,
                });
            }
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<i64>().ok())
        };
        let retry_after = header("retry-after").and_then(|secs| u64::try_from(secs).ok());
        let reset_in = if header("x-ratelimit-remaining") == Some(0) {
            header("x-ratelimit-reset").map(|reset| {
                u64::try_from(reset - Utc::now().timestamp())
                    .unwrap_or(0)
                    .max(1)
            })
        } else {
            None
        };
        match octocrab::map_github_error(response).await {
            Ok(response) => {
                let text = client
                    .body_to_string(response)
                    .await
                    .map_err(|err| Failure {
                        error: self.error(err, ctx, secrets),
                        verdict: Verdict::Again(None),
                        already_exists: false,
                    })?;
                let text = if text.trim().is_empty() {
                    "null"
                } else {
                    &text
                };
                serde_json::from_str(text).map_err(|err| Failure {
                    error: ForgeError::UnexpectedResponse {
                        action: ctx.action.clone(),
                        reason: format!("the answer is not the expected JSON: {err}"),
                    },
                    verdict: Verdict::Final,
                    already_exists: false,
                })
            }
            Err(err) => {
                let message = match &err {
                    octocrab::Error::GitHub { source, .. } => source.message.clone(),
                    _ => String::new(),
                };
                let verdict = retry::verdict(status, retry_after, reset_in, &message);
                let already_exists = is_already_exists(&err);
                let error = match verdict {
                    Verdict::TooLong(wait) => ForgeError::WaitTooLong {
                        action: ctx.action.clone(),
                        status,
                        message: self.scrub(&message, secrets),
                        wait_secs: wait.as_secs(),
                        max_secs: MAX_WAIT.as_secs(),
                    },
                    // An answer that is not GitHub's JSON (a proxy's HTML 502 page): say the
                    // status, which is what matters.
                    _ if !matches!(err, octocrab::Error::GitHub { .. }) => self.status_error(
                        status,
                        ctx.action.clone(),
                        "(no message)".to_owned(),
                        String::new(),
                        ctx,
                    ),
                    _ => self.error(err, ctx, secrets),
                };
                Err(Failure {
                    error,
                    verdict,
                    already_exists,
                })
            }
        }
    }

    fn status_error(
        &self,
        status: u16,
        action: String,
        message: String,
        details: String,
        ctx: &Ctx<'_>,
    ) -> ForgeError {
        let repo = &ctx.repo.full_name;
        let token_origin = match &self.auth {
            Auth::Token(token) => format!("the token in `{}`", token.name()),
            Auth::App(_) => "the App's installation token".to_owned(),
        };
        match status {
            401 => ForgeError::Unauthorized {
                action,
                message,
                hint: match &self.auth {
                    Auth::App(app) => format!(
                        "check the App's private key ({}) and `github.app.app_id` ({}): the \
                         key must belong to that App, and this machine's clock must be right \
                         (the App's JWT is valid for minutes only)",
                        app.key_origin, app.id
                    ),
                    Auth::Token(token) => format!(
                        "check the token in `{}`: it may be mistyped, expired or revoked",
                        token.name()
                    ),
                },
            },
            403 if message.to_ascii_lowercase().contains("rate limit") => ForgeError::Forbidden {
                action,
                message,
                hint: "GitHub's rate limit is used up; wait for it to reset and run again, and \
                       if it keeps happening lower `concurrency` or the number of scheduled tasks"
                    .to_owned(),
            },
            429 => ForgeError::Api {
                action,
                status,
                message: format!("{message}{details}"),
                hint: "GitHub is limiting how fast maxions may call it; run again in a few \
                       minutes, and if it keeps happening lower `concurrency`"
                    .to_owned(),
            },
            403 => ForgeError::Forbidden {
                action,
                message,
                hint: match &self.auth {
                    Auth::App(_) => format!(
                        "the App needs the Contents (write) and Pull requests (write) \
                         permissions on {repo}; grant them in the App's settings and accept \
                         them in the installation"
                    ),
                    Auth::Token(_) => format!(
                        "{token_origin} needs Contents (write) and Pull requests (write) on \
                         {repo}"
                    ),
                },
            },
            404 => ForgeError::NotFound {
                action,
                message,
                hint: match (&self.auth, ctx.doing) {
                    (Auth::App(app), Doing::Mint) => format!(
                        "check `github.app.installation_id` ({}): App {} has no such \
                         installation",
                        app.installation_id, app.id
                    ),
                    (Auth::App(_), _) => format!(
                        "is the App installed on {repo}, with access to that repository? does \
                         {repo} exist?"
                    ),
                    (Auth::Token(_), _) => format!(
                        "does {repo} exist, and can {token_origin} see it? (a fine-grained \
                         token must list the repository)"
                    ),
                },
            },
            422 => ForgeError::Rejected {
                action,
                message,
                details,
                hint: match ctx.doing {
                    Doing::Mint => format!(
                        "is the App installed on {repo}, with access to that repository? \
                         GitHub mints no token for a repository the installation cannot reach"
                    ),
                    Doing::CreatePull => "check that the branch was pushed, that it differs \
                                          from the base, and that the base branch exists"
                        .to_owned(),
                    Doing::Reviewers => format!(
                        "reviewers must be collaborators on {repo} and cannot be the pull \
                         request's author"
                    ),
                    Doing::Labels | Doing::Read | Doing::Write => "see GitHub's reasons".to_owned(),
                },
            },
            _ => ForgeError::Api {
                action,
                status,
                message: format!("{message}{details}"),
                hint: if status >= 500 {
                    "GitHub had a problem; run again later".to_owned()
                } else {
                    "see GitHub's message".to_owned()
                },
            },
        }
    }
}

impl Forge for GitHub {
    fn git_credentials<'a>(
        &'a self,
        repo: &'a RepoRef,
    ) -> BoxFuture<'a, Result<GitCredentials, ForgeError>> {
        Box::pin(async move {
            match &self.auth {
                Auth::Token(token) => {
                    Ok(
                        GitCredentials::new(GitCredentials::TOKEN_USERNAME, token.clone(), None)
                            .scoped_to(&self.web_url),
                    )
                }
                Auth::App(app) => {
                    // Pushing needs nothing but Contents (write): the token that enters the
                    // sandbox can do no more than that, on this one repository, for an hour.
                    let (token, expires_at) = self
                        .mint(app, repo, Some(json!({ "contents": "write" })))
                        .await?;
                    Ok(
                        GitCredentials::new(GitCredentials::TOKEN_USERNAME, token, expires_at)
                            .scoped_to(&self.web_url),
                    )
                }
            }
        })
    }

    fn revoke<'a>(
        &'a self,
        credentials: &'a GitCredentials,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            match &self.auth {
                // The operator's token: not ours to revoke.
                Auth::Token(_) => Ok(()),
                Auth::App(_) => self.revoke_token(credentials.token()).await,
            }
        })
    }

    fn serves(&self, remote_url: &str) -> bool {
        same_origin(&self.web_url, remote_url)
    }

    fn open_or_update_pull_request<'a>(
        &'a self,
        repo: &'a RepoRef,
        spec: &'a PullRequestSpec,
    ) -> BoxFuture<'a, Result<PullRequestOutcome, ForgeError>> {
        Box::pin(self.open_or_update(repo, spec))
    }

    fn default_branch<'a>(
        &'a self,
        repo: &'a RepoRef,
    ) -> BoxFuture<'a, Result<String, ForgeError>> {
        Box::pin(self.fetch_default_branch(repo))
    }
}

impl fmt::Debug for GitHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("GitHub");
        out.field("api_url", &self.api_url);
        out.field("web_url", &self.web_url);
        match &self.auth {
            Auth::App(app) => out
                .field("app_id", &app.id)
                .field("installation_id", &app.installation_id)
                .field("private_key", &format_args!("*** from {}", app.key_origin)),
            Auth::Token(token) => out.field("token", &format_args!("*** from `{}`", token.name())),
        };
        out.finish()
    }
}

/// A REST client and the token behind it, for one operation.
struct Session {
    rest: Octocrab,
    token: Secret,
    /// Whether the token was minted for this session (and so is revoked after it).
    minted: bool,
}

/// A failed request and whether another attempt could succeed.
struct Failure {
    error: ForgeError,
    verdict: Verdict,
    /// GitHub's 422 "a pull request already exists" for this head.
    already_exists: bool,
}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Get,
    Post,
    Patch,
}

/// `text` percent-encoded for a query string value (everything but unreserved characters).
fn encode_query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What maxions was doing when GitHub answered, to pick the hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Doing {
    Mint,
    Read,
    Write,
    CreatePull,
    Labels,
    Reviewers,
}

struct Ctx<'a> {
    doing: Doing,
    repo: &'a RepoRef,
    action: String,
}

impl<'a> Ctx<'a> {
    fn new(doing: Doing, repo: &'a RepoRef, action: String) -> Self {
        Self {
            doing,
            repo,
            action,
        }
    }
}

enum ClientAuth<'a> {
    App(u64, EncodingKey),
    Token(&'a str),
}

fn build_client(base: &str, auth: ClientAuth<'_>) -> Result<Octocrab, ForgeError> {
    let invalid = |problem: String| ForgeError::InvalidApiUrl {
        url: base.to_owned(),
        problem,
    };
    let builder = Octocrab::builder()
        .base_uri(base)
        .map_err(|_| invalid("it is not a valid URL".to_owned()))?
        .set_connect_timeout(Some(CONNECT_TIMEOUT))
        .set_read_timeout(Some(READ_TIMEOUT))
        .set_write_timeout(Some(WRITE_TIMEOUT))
        // maxions retries itself (see `super::retry`): with backoff, honouring `Retry-After`,
        // and never by resending a pull request's `POST` blindly.
        .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None);
    let builder = match auth {
        ClientAuth::App(app_id, key) => builder.app(AppId(app_id), key),
        ClientAuth::Token(token) => builder.personal_token(token.to_owned()),
    };
    builder
        .build()
        .map_err(|err| invalid(format!("no HTTP client could be built for it: {err}")))
}

fn check_api_url(url: &str) -> Result<String, ForgeError> {
    let trimmed = url.trim().trim_end_matches('/');
    let invalid = |problem: &str| ForgeError::InvalidApiUrl {
        url: url.to_owned(),
        problem: problem.to_owned(),
    };
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        return Err(invalid("it has no `https://`"));
    };
    if scheme != "https" && scheme != "http" {
        return Err(invalid("only http:// and https:// are supported"));
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid("it has no host"));
    }
    if rest.contains(['?', '#']) {
        return Err(invalid("it must not have a query or fragment"));
    }
    if Octocrab::builder().base_uri(trimmed).is_err() {
        return Err(invalid("it is not a valid URL"));
    }
    Ok(trimmed.to_owned())
}

/// GitHub serves GraphQL at `/graphql` on api.github.com, but at `/api/graphql` (not
/// `/api/v3/graphql`) on GitHub Enterprise. octocrab posts to `<base>/graphql`.
fn graphql_url(api_url: &str) -> String {
    api_url
        .strip_suffix("/v3")
        .filter(|base| base.ends_with("/api"))
        .unwrap_or(api_url)
        .to_owned()
}

fn read_private_key(
    app: &GithubApp,
    config_dir: Option<&Path>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(String, String), ForgeError> {
    if let Some(var) = &app.private_key_env {
        let pem = env(var)
            .filter(|value| !value.trim().is_empty())
            .ok_or_else(|| ForgeError::MissingEnv {
                var: var.clone(),
                what: "the GitHub App's private key",
            })?;
        return Ok((format!("environment variable `{var}`"), pem));
    }
    if let Some(path) = &app.private_key_file {
        let path = &match config_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.clone(),
        };
        let pem = std::fs::read_to_string(path).map_err(|err| ForgeError::UnreadableKeyFile {
            path: path.clone(),
            reason: err.to_string(),
        })?;
        return Ok((format!("file `{}`", path.display()), pem));
    }
    Err(ForgeError::NoPrivateKey)
}

/// Parses the App's key and proves it can sign, so that a bad key fails at start-up with a
/// message about the key, not later with a 401. No message quotes the key.
fn parse_private_key(app_id: u64, pem: &str, origin: &str) -> Result<EncodingKey, ForgeError> {
    let invalid = |problem: &str| ForgeError::InvalidPrivateKey {
        origin: origin.to_owned(),
        problem: problem.to_owned(),
    };
    let mut pem = pem.trim().to_owned();
    // A PEM squeezed into one environment variable line often arrives with literal `\n`s.
    if !pem.contains('\n') && pem.contains("\\n") {
        pem = pem.replace("\\n", "\n");
    }
    if pem.is_empty() {
        return Err(invalid("it is empty"));
    }
    if pem.contains("OPENSSH PRIVATE KEY") {
        return Err(invalid(
            "it is an OpenSSH key; a GitHub App uses an RSA key in PEM format",
        ));
    }
    if !pem.contains("PRIVATE KEY-----") {
        return Err(invalid(if pem.contains("PUBLIC KEY") {
            "it is a public key, not the private key"
        } else {
            "it is not in PEM format (no PEM `BEGIN ... PRIVATE KEY` line)"
        }));
    }
    let key = EncodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|_| invalid("it is not an RSA private key in PEM format"))?;
    octocrab::auth::create_jwt(AppId(app_id), &key)
        .map_err(|_| invalid("it cannot sign a token (the key is damaged or not an RSA key)"))?;
    Ok(key)
}

/// A token goes into an HTTP header: it must be printable ASCII without spaces.
fn check_token_text(token: &str) -> Result<(), &'static str> {
    if token.len() < Secret::MIN_LEN {
        return Err("it is too short");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it contains spaces, line breaks or other characters no token has");
    }
    Ok(())
}

fn is_already_exists(err: &octocrab::Error) -> bool {
    let octocrab::Error::GitHub { source, .. } = err else {
        return false;
    };
    source.status_code.as_u16() == 422
        && (source.message.contains("already exists")
            || source
                .errors
                .iter()
                .flatten()
                .any(|detail| detail.to_string().contains("already exists")))
}

/// GitHub's `errors` list as `: first; second`, or an empty string.
fn format_details(errors: Option<&[Value]>) -> String {
    let parts: Vec<String> = errors
        .unwrap_or_default()
        .iter()
        .map(|detail| {
            if let Some(message) = detail.get("message").and_then(Value::as_str) {
                return message.to_owned();
            }
            let field = |name: &str| detail.get(name).and_then(Value::as_str).unwrap_or("");
            match (field("resource"), field("field"), field("code")) {
                ("", "", "") => detail.to_string(),
                (resource, name, code) => format!("{resource} {name} {code}").trim().to_owned(),
            }
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphql_lives_beside_the_enterprise_rest_api() {
        assert_eq!(
            graphql_url("https://api.github.com"),
            "https://api.github.com"
        );
        assert_eq!(
            graphql_url("https://ghe.example/api/v3"),
            "https://ghe.example/api"
        );
        assert_eq!(
            graphql_url("http://127.0.0.1:9/v3"),
            "http://127.0.0.1:9/v3"
        );
    }

    #[test]
    fn api_urls_are_checked() {
        assert_eq!(
            check_api_url("https://api.github.com/").unwrap(),
            "https://api.github.com"
        );
        for bad in ["api.github.com", "ftp://x", "https://", "https://x/?a=b"] {
            assert!(
                matches!(check_api_url(bad), Err(ForgeError::InvalidApiUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_that_are_not_rsa_pem_are_refused_without_quoting_them() {
        // Malformed stand-ins, assembled here so that no key-shaped text sits in the source.
        let armour = |label: &str, body: &str| {
            format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
        };
        let private = ["PRIVATE", "KEY"].join(" ");
        let cases = [
            (String::new(), "it is empty"),
            (armour(&format!("OPENSSH {private}"), "abc"), "OpenSSH"),
            (armour("PUBLIC KEY", "abc"), "public key"),
            ("hunter2hunter2".to_owned(), "not in PEM format"),
            // base64 of `secret-key-bytes`: armoured like a key, but no key inside.
            (
                armour(&format!("RSA {private}"), "c2VjcmV0LWtleS1ieXRlcw=="),
                "RSA private key",
            ),
        ];
        for (pem, expected) in &cases {
            let Err(err) = parse_private_key(1, pem, "environment variable `KEY`") else {
                panic!("{expected}: the key should be refused");
            };
            let err = err.to_string();
            assert!(err.contains(expected), "{err}");
            assert!(err.contains("environment variable `KEY`"), "{err}");
            for secret in ["abc", "hunter2", "c2VjcmV0"] {
                assert!(!err.contains(secret), "{err}");
            }
        }
    }

    #[test]
    fn tokens_must_fit_in_a_header() {
        assert!(check_token_text("ghp_abc123").is_ok());
        assert!(check_token_text("ghp_abc\n123").is_err());
        assert!(check_token_text("ab").is_err());
    }

    #[test]
    fn validation_details_are_readable() {
        let details = [
            json!({"message": "A pull request already exists for octo:x."}),
            json!({"resource": "PullRequest", "field": "base", "code": "invalid"}),
        ];
        assert_eq!(
            format_details(Some(&details)),
            ": A pull request already exists for octo:x.; PullRequest base invalid"
        );
        assert_eq!(format_details(None), "");
    }
}
