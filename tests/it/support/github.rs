//! A fake GitHub REST API on 127.0.0.1 that the real octocrab client talks to. It keeps state
//! (minted tokens, pull requests, labels, reviewers) and records every request, so that a test can
//! say "exactly one `POST /pulls`, then one `PATCH`".
//!
//! ```ignore
//! let key = github::app_key();
//! let fake = FakeGitHub::builder().app(7, 42, &key.public_pem).repo("octo", "hello").start();
//! let forge = GitHub::with_app(&fake.base_url(), 7, 42, &key.private_pem)?;
//! assert_eq!(fake.count("POST", "/repos/octo/hello/pulls"), 1);
//! ```
//!
//! Like GitHub: `POST /app/installations/{id}/access_tokens` wants an RS256 JWT from the App
//! (signature, `iss`, `exp` at most ten minutes ahead, `iat` not in the future) and mints a token
//! valid for an hour; every other route wants `Authorization: token|Bearer <minted token or PAT>`
//! and answers 401 `Bad credentials` otherwise. A token minted for some repositories sees only
//! those (404 for others, as GitHub hides what a token cannot see), and one minted with
//! `contents: write` only cannot touch pull requests (403). A second open pull request for the
//! same head is refused with GitHub's 422. Draft state changes through `/graphql` (or
//! `/api/graphql` beside an Enterprise `/api/v3`), as on GitHub. `DELETE /installation/token`
//! revokes the installation token it is sent with (204), after which neither the API nor a git
//! server holding [`FakeGitHub::token_check`] accepts it; how long minted tokens live is
//! [`FakeGitHubBuilder::token_lifetime`].
//! Test keys come from `openssl genrsa` at run time: no private key is ever committed.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use octocrab::jsonwebtoken::{self, Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use super::git_http::TokenCheck;
use super::server::Served;

/// An RSA key pair for a test GitHub App, PEM-encoded as GitHub issues them.
pub struct TestKey {
    /// an RSA private key in PEM (PKCS#1), what the App's owner downloads.
    pub private_pem: String,
    /// `-----BEGIN PUBLIC KEY-----`, what GitHub keeps to check the App's JWTs.
    pub public_pem: String,
}

/// The key of the test App (made once per test process).
pub fn app_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(generate_key)
}

/// A second key, belonging to no App the fake knows.
pub fn other_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(generate_key)
}

fn generate_key() -> TestKey {
    let private_pem = openssl(&["genrsa", "-traditional", "2048"], "")
        .or_else(|_| openssl(&["genrsa", "2048"], ""))
        .expect("`openssl genrsa` makes the test App's key (is openssl installed?)");
    assert!(
        private_pem.contains("BEGIN RSA PRIVATE KEY"),
        "{private_pem:.40}"
    );
    let public_pem = openssl(&["rsa", "-pubout"], &private_pem).expect("openssl rsa -pubout");
    TestKey {
        private_pem,
        public_pem,
    }
}

fn openssl(args: &[&str], input: &str) -> Result<String, String> {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    String::from_utf8(output.stdout).map_err(|e| e.to_string())
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path without the Enterprise prefix, e.g. `/repos/octo/hello/pulls`.
    pub path: String,
    /// The path as sent, e.g. `/api/v3/repos/octo/hello/pulls`.
    pub full_path: String,
    pub query: Option<String>,
    pub body: Option<Value>,
    /// The credential of the `Authorization` header (a JWT, a minted token or a PAT).
    pub token: Option<String>,
    /// What the fake answered.
    pub status: u16,
    /// When it arrived, to measure the pauses between retries.
    pub at: Instant,
}

/// A pull request the fake holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePull {
    pub number: u64,
    pub node_id: String,
    pub owner: String,
    pub repo: String,
    pub head: String,
    pub base: String,
    pub title: String,
    pub body: String,
    pub draft: bool,
    pub state: String,
    pub labels: Vec<String>,
    pub reviewers: Vec<String>,
    pub team_reviewers: Vec<String>,
}

/// A token the fake minted.
#[derive(Debug, Clone)]
pub struct MintedToken {
    pub token: String,
    pub installation_id: u64,
    /// Repository names the token is limited to (`None`: all of the installation's).
    pub repositories: Option<Vec<String>>,
    /// The permissions asked for (`None`: all of the installation's).
    pub permissions: Option<Value>,
    pub expires_at: u64,
    /// Revoked with `DELETE /installation/token`.
    pub revoked: bool,
}

pub struct FakeGitHubBuilder {
    app: Option<(u64, u64, String)>,
    pats: Vec<String>,
    repos: Vec<(String, String)>,
    /// Default branches other than `main`, by `owner/name`.
    default_branches: Vec<(String, String)>,
    prefix: String,
    token_lifetime: u64,
}

impl Default for FakeGitHubBuilder {
    fn default() -> Self {
        Self {
            app: None,
            pats: Vec::new(),
            repos: Vec::new(),
            default_branches: Vec::new(),
            prefix: String::new(),
            token_lifetime: 3600,
        }
    }
}

impl FakeGitHubBuilder {
    /// Accept App `app_id`, installation `installation_id`, whose JWTs `public_key_pem` checks.
    pub fn app(mut self, app_id: u64, installation_id: u64, public_key_pem: &str) -> Self {
        self.app = Some((app_id, installation_id, public_key_pem.to_owned()));
        self
    }

    /// Accept this personal access token.
    pub fn pat(mut self, token: &str) -> Self {
        self.pats.push(token.to_owned());
        self
    }

    /// A repository (default branch `main`) that exists and the installation can reach.
    pub fn repo(mut self, owner: &str, name: &str) -> Self {
        self.repos.push((owner.to_owned(), name.to_owned()));
        self
    }

    /// A repository whose default branch is `branch`.
    pub fn repo_with_default_branch(mut self, owner: &str, name: &str, branch: &str) -> Self {
        self.repos.push((owner.to_owned(), name.to_owned()));
        self.default_branches
            .push((format!("{owner}/{name}"), branch.to_owned()));
        self
    }

    /// Minted tokens expire after `seconds` (GitHub: an hour).
    pub fn token_lifetime(mut self, seconds: u64) -> Self {
        self.token_lifetime = seconds;
        self
    }

    /// Serve the REST API below `prefix`, as GitHub Enterprise does with `/api/v3`.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.trim_end_matches('/').to_owned();
        self
    }

    /// Binds 127.0.0.1:0 and serves on a thread of its own (so tests may block, e.g. on a git
    /// process, without stalling the fake). Stops when the handle is dropped.
    pub fn start(self) -> FakeGitHub {
        let state = Arc::new(Mutex::new(State {
            config: self,
            requests: Vec::new(),
            minted: Vec::new(),
            pulls: Vec::new(),
            next_number: 1,
            race_next_create: false,
            canned: Vec::new(),
            addr: None,
        }));
        let shared = Arc::clone(&state);
        let served = Served::start(move |addr| {
            shared.lock().unwrap().addr = Some(addr);
            Router::new().fallback(handle).with_state(shared)
        });
        FakeGitHub {
            addr: served.addr,
            state,
            _served: served,
        }
    }
}

/// A running fake GitHub. Dropping it stops the server.
pub struct FakeGitHub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _served: Served,
}

/// The App, installation and repository of [`FakeGitHub::standard`].
pub const APP_ID: u64 = 7;
pub const INSTALLATION: u64 = 42;
pub const PULLS: &str = "/repos/octo/hello/pulls";

impl FakeGitHub {
    pub fn builder() -> FakeGitHubBuilder {
        FakeGitHubBuilder::default()
    }

    /// App [`APP_ID`] (key [`app_key`]) installed as [`INSTALLATION`] on `octo/hello`, and `pat`.
    pub fn standard(pat: &str) -> Self {
        Self::builder()
            .app(APP_ID, INSTALLATION, &app_key().public_pem)
            .pat(pat)
            .repo("octo", "hello")
            .start()
    }

    /// The REST API base URL to configure (`github.api_url`), with the prefix if any.
    pub fn base_url(&self) -> String {
        let prefix = self.state.lock().unwrap().config.prefix.clone();
        format!("http://{}{prefix}", self.addr)
    }

    /// Where pull request pages would live (`html_url`s start here).
    pub fn web_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// How many `method` requests reached `path` (without the Enterprise prefix).
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    pub fn pulls(&self) -> Vec<FakePull> {
        self.state.lock().unwrap().pulls.clone()
    }

    pub fn minted_tokens(&self) -> Vec<MintedToken> {
        self.state.lock().unwrap().minted.clone()
    }

    /// Whether `token` is a live minted token or a configured PAT, as GitHub would judge it.
    pub fn valid_token_check(&self, token: &str) -> bool {
        self.state.lock().unwrap().token(token).is_some()
    }

    /// [`Self::valid_token_check`] as a function a git server can hold, so that tokens minted
    /// here also push there, as on GitHub.
    pub fn token_check(&self) -> TokenCheck {
        let state = Arc::clone(&self.state);
        Arc::new(move |token: &str| state.lock().unwrap().token(token).is_some())
    }

    /// On the next `POST .../pulls`, first open the same pull request as if someone else had
    /// just done so: the client's create then meets GitHub's 422 "already exists".
    pub fn race_next_create(&self) {
        self.state.lock().unwrap().race_next_create = true;
    }

    /// Answer the next `method path` request with `status` and `body` instead of handling it.
    pub fn respond_once(&self, method: &str, path: &str, status: u16, body: Value) {
        self.fail(
            method,
            path,
            Fault {
                status,
                headers: Vec::new(),
                body,
                times: 1,
                after_handling: false,
            },
        );
    }

    /// Answer the next [`Fault::times`] `method path` requests with `fault`. Faults for the
    /// same route are used up in the order they were added.
    pub fn fail(&self, method: &str, path: &str, fault: Fault) {
        self.state.lock().unwrap().canned.push(Canned {
            method: method.to_owned(),
            path: path.to_owned(),
            fault,
        });
    }
}

/// A scripted failure: what GitHub answers when it has a bad moment, or is rate limiting.
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// How many requests in a row get it.
    pub times: usize,
    /// Handle the request first (it takes effect: the pull request is opened) and only then
    /// answer with the fault, as when GitHub's answer is lost on the way back.
    pub after_handling: bool,
}

impl Fault {
    /// A 5xx with GitHub's usual body.
    pub fn server_error(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: json!({ "message": "Server Error" }),
            times: 1,
            after_handling: false,
        }
    }

    /// 429 with `Retry-After: 1`.
    pub fn too_many_requests() -> Self {
        Self {
            status: 429,
            headers: vec![("Retry-After".to_owned(), "1".to_owned())],
            body: json!({ "message": "API rate limit exceeded" }),
            times: 1,
            after_handling: false,
        }
    }

    /// GitHub's secondary rate limit: a 403 with `retry-after` and this message.
    pub fn secondary_rate_limit() -> Self {
        Self {
            status: 403,
            headers: vec![("retry-after".to_owned(), "1".to_owned())],
            body: json!({
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes \
                            before you try again.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
            }),
            times: 1,
            after_handling: false,
        }
    }

    pub fn times(mut self, times: usize) -> Self {
        self.times = times;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn after_handling(mut self) -> Self {
        self.after_handling = true;
        self
    }
}

struct Canned {
    method: String,
    path: String,
    fault: Fault,
}

struct State {
    config: FakeGitHubBuilder,
    requests: Vec<Recorded>,
    minted: Vec<MintedToken>,
    pulls: Vec<FakePull>,
    next_number: u64,
    race_next_create: bool,
    canned: Vec<Canned>,
    addr: Option<SocketAddr>,
}

/// Who a request's token belongs to.
enum Caller {
    Pat,
    Installation(MintedToken),
}

type Answer = (StatusCode, Value);

fn message(status: StatusCode, text: &str) -> Answer {
    (
        status,
        json!({ "message": text, "documentation_url": "https://docs.github.com/rest" }),
    )
}

fn not_found() -> Answer {
    message(StatusCode::NOT_FOUND, "Not Found")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn random_token(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut out = String::from(prefix);
    for i in 0..36u64 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(i);
        let index = usize::try_from(hasher.finish() % ALPHABET.len() as u64).expect("small");
        out.push(char::from(ALPHABET[index]));
    }
    out
}

async fn handle(
    AxumState(state): AxumState<Arc<Mutex<State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    let full_path = uri.path().to_owned();
    let path = match full_path.strip_prefix(&state.config.prefix) {
        Some(rest) if !state.config.prefix.is_empty() => rest.to_owned(),
        _ => full_path.clone(),
    };
    let body: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    let token = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("token "))
        })
        .map(str::to_owned);
    let query = uri.query().map(str::to_owned);

    let canned = state
        .canned
        .iter()
        .position(|c| c.method == method.as_str() && c.path == path);
    let fault = canned.map(|index| {
        let canned = &mut state.canned[index];
        canned.fault.times = canned.fault.times.saturating_sub(1);
        let fault = canned.fault.clone();
        if canned.fault.times == 0 {
            state.canned.remove(index);
        }
        fault
    });
    let handle = fault.as_ref().is_none_or(|fault| fault.after_handling);
    let (mut status, mut answer) = if handle {
        state.route(
            &method,
            &full_path,
            &path,
            query.as_deref(),
            body.as_ref(),
            token.as_deref(),
        )
    } else {
        (StatusCode::OK, Value::Null)
    };
    let mut headers = Vec::new();
    if let Some(fault) = fault {
        status = StatusCode::from_u16(fault.status).expect("valid status");
        answer = fault.body;
        headers = fault.headers;
    }
    state.requests.push(Recorded {
        method: method.to_string(),
        path,
        full_path,
        query,
        body,
        token,
        status: status.as_u16(),
        at: Instant::now(),
    });
    let mut response = if status == StatusCode::NO_CONTENT {
        status.into_response()
    } else {
        (status, axum::Json(answer)).into_response()
    };
    for (name, value) in headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            axum::http::HeaderValue::from_str(&value).expect("valid header value"),
        );
    }
    response
}

impl State {
    fn token(&self, token: &str) -> Option<Caller> {
        if self.config.pats.iter().any(|pat| pat == token) {
            return Some(Caller::Pat);
        }
        self.minted
            .iter()
            .find(|minted| minted.token == token && minted.expires_at > now() && !minted.revoked)
            .cloned()
            .map(Caller::Installation)
    }

    fn route(
        &mut self,
        method: &Method,
        full_path: &str,
        path: &str,
        query: Option<&str>,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Answer {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if let ["app", "installations", id, "access_tokens"] = segments.as_slice() {
            if method != Method::POST {
                return not_found();
            }
            return self.mint(id, body, token);
        }
        let Some(caller) = token.and_then(|token| self.token(token)) else {
            return message(StatusCode::UNAUTHORIZED, "Bad credentials");
        };
        // GitHub Enterprise serves GraphQL at /api/graphql, beside (not below) /api/v3.
        let graphql_path = if self.config.prefix.is_empty() {
            "/graphql".to_owned()
        } else {
            format!(
                "{}/graphql",
                self.config
                    .prefix
                    .trim_end_matches("/v3")
                    .trim_end_matches('/')
            )
        };
        if full_path == graphql_path && method == Method::POST {
            return self.graphql(&caller, body);
        }
        if path == "/installation/token" {
            // GitHub: only an installation token can revoke itself; a PAT gets 403.
            return match (method.as_str(), caller) {
                ("DELETE", Caller::Installation(minted)) => {
                    for entry in &mut self.minted {
                        if entry.token == minted.token {
                            entry.revoked = true;
                        }
                    }
                    (StatusCode::NO_CONTENT, Value::Null)
                }
                ("DELETE", Caller::Pat) => message(
                    StatusCode::FORBIDDEN,
                    "Resource not accessible by personal access token",
                ),
                _ => not_found(),
            };
        }
        let ["repos", owner, name, rest @ ..] = segments.as_slice() else {
            return not_found();
        };
        let (owner, name) = ((*owner).to_owned(), (*name).to_owned());
        if !self.config.repos.contains(&(owner.clone(), name.clone())) {
            return not_found();
        }
        if let Caller::Installation(minted) = &caller
            && let Some(repositories) = &minted.repositories
            && !repositories.contains(&name)
        {
            return not_found();
        }
        if !rest.is_empty() && !can_write_pulls(&caller) {
            return message(
                StatusCode::FORBIDDEN,
                "Resource not accessible by integration",
            );
        }
        match (method.as_str(), rest) {
            ("GET", []) => (StatusCode::OK, self.repo_json(&owner, &name)),
            ("GET", ["pulls"]) => self.list_pulls(&owner, &name, query),
            ("POST", ["pulls"]) => self.create_pull(&owner, &name, body),
            ("GET", ["pulls", number]) => self.with_pull(&owner, &name, number, |_| Ok(())),
            ("PATCH", ["pulls", number]) => {
                let body = body.cloned().unwrap_or_default();
                self.with_pull(&owner, &name, number, move |pull| {
                    if let Some(title) = body.get("title").and_then(Value::as_str) {
                        pull.title = title.to_owned();
                    }
                    if let Some(text) = body.get("body").and_then(Value::as_str) {
                        pull.body = text.to_owned();
                    }
                    if let Some(base) = body.get("base").and_then(Value::as_str) {
                        pull.base = base.to_owned();
                    }
                    if let Some(state) = body.get("state").and_then(Value::as_str) {
                        pull.state = state.to_owned();
                    }
                    Ok(())
                })
            }
            ("POST", ["pulls", number, "requested_reviewers"]) => {
                let body = body.cloned().unwrap_or_default();
                self.with_pull(&owner, &name, number, move |pull| {
                    for (key, list) in [
                        ("reviewers", &mut pull.reviewers),
                        ("team_reviewers", &mut pull.team_reviewers),
                    ] {
                        for reviewer in strings(body.get(key)) {
                            if reviewer == "maxions-bot" {
                                return Err(message(
                                    StatusCode::UNPROCESSABLE_ENTITY,
                                    "Review cannot be requested from pull request author.",
                                ));
                            }
                            if !list.contains(&reviewer) {
                                list.push(reviewer);
                            }
                        }
                    }
                    Ok(())
                })
            }
            ("POST", ["issues", number, "labels"]) => {
                let labels = strings(body.and_then(|b| b.get("labels")));
                let answer = self.with_pull(&owner, &name, number, move |pull| {
                    for label in labels {
                        if !pull.labels.contains(&label) {
                            pull.labels.push(label);
                        }
                    }
                    Ok(())
                });
                if answer.0 != StatusCode::OK {
                    return answer;
                }
                (StatusCode::OK, answer.1["labels"].clone())
            }
            _ => not_found(),
        }
    }

    fn mint(&mut self, id: &str, body: Option<&Value>, jwt: Option<&str>) -> Answer {
        let Some((app_id, installation_id, public_pem)) = self.config.app.clone() else {
            return not_found();
        };
        let Some(jwt) = jwt else {
            return message(
                StatusCode::UNAUTHORIZED,
                "A JSON web token could not be decoded",
            );
        };
        if let Err(why) = verify_jwt(jwt, app_id, &public_pem) {
            return message(StatusCode::UNAUTHORIZED, &why);
        }
        if id != installation_id.to_string() {
            return not_found();
        }
        let repositories = body
            .and_then(|b| b.get("repositories"))
            .map(|list| strings(Some(list)));
        if let Some(names) = &repositories
            && names
                .iter()
                .any(|name| !self.config.repos.iter().any(|(_, repo)| repo == name))
        {
            return message(
                StatusCode::UNPROCESSABLE_ENTITY,
                "There is at least one repository that does not exist or is not accessible to \
                 the parent installation.",
            );
        }
        let permissions = body.and_then(|b| b.get("permissions")).cloned();
        let expires_at = now() + self.config.token_lifetime;
        let minted = MintedToken {
            token: random_token("ghs_"),
            installation_id,
            repositories: repositories.clone(),
            permissions: permissions.clone(),
            expires_at,
            revoked: false,
        };
        self.minted.push(minted.clone());
        let expires = chrono::DateTime::from_timestamp(i64::try_from(expires_at).unwrap(), 0)
            .expect("valid time")
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        (
            StatusCode::CREATED,
            json!({
                "token": minted.token,
                "expires_at": expires,
                "permissions": permissions.unwrap_or_else(|| json!({
                    "contents": "write", "pull_requests": "write", "issues": "write",
                    "metadata": "read"
                })),
                "repository_selection": if repositories.is_some() { "selected" } else { "all" },
            }),
        )
    }

    fn list_pulls(&self, owner: &str, name: &str, query: Option<&str>) -> Answer {
        let params: Vec<(String, String)> = query
            .map(|q| {
                q.split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_owned(), percent_decode(v)))
                    .collect()
            })
            .unwrap_or_default();
        let param = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let state = param("state").unwrap_or_else(|| "open".to_owned());
        let head = param("head");
        let list: Vec<Value> = self
            .pulls
            .iter()
            .filter(|p| p.owner == owner && p.repo == name)
            .filter(|p| state == "all" || p.state == state)
            .filter(|p| {
                head.as_ref()
                    .is_none_or(|head| *head == format!("{}:{}", p.owner, p.head))
            })
            .map(|p| self.pull_json(p))
            .collect();
        (StatusCode::OK, Value::Array(list))
    }

    fn create_pull(&mut self, owner: &str, name: &str, body: Option<&Value>) -> Answer {
        let body = body.cloned().unwrap_or_default();
        let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
        let (Some(title), Some(head), Some(base)) = (text("title"), text("head"), text("base"))
        else {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "message": "Validation Failed", "errors": [
                    { "resource": "PullRequest", "code": "missing_field", "field": "title" }
                ]}),
            );
        };
        let head = head
            .split_once(':')
            .map_or(head.clone(), |(_, branch)| branch.to_owned());
        if std::mem::take(&mut self.race_next_create) {
            self.insert_pull(
                owner,
                name,
                &head,
                &base,
                "opened by someone else",
                "",
                false,
            );
        }
        if self
            .pulls
            .iter()
            .any(|p| p.owner == owner && p.repo == name && p.head == head && p.state == "open")
        {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "message": "Validation Failed",
                    "errors": [{
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": format!("A pull request already exists for {owner}:{head}.")
                    }],
                    "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
                    "status": "422"
                }),
            );
        }
        let number = self.insert_pull(
            owner,
            name,
            &head,
            &base,
            &title,
            &text("body").unwrap_or_default(),
            body.get("draft").and_then(Value::as_bool).unwrap_or(false),
        );
        let pull = self
            .pulls
            .iter()
            .find(|p| p.number == number)
            .expect("just added");
        (StatusCode::CREATED, self.pull_json(pull))
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_pull(
        &mut self,
        owner: &str,
        name: &str,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
        draft: bool,
    ) -> u64 {
        let number = self.next_number;
        self.next_number += 1;
        self.pulls.push(FakePull {
            number,
            node_id: format!("PR_kwDO{number:08}"),
            owner: owner.to_owned(),
            repo: name.to_owned(),
            head: head.to_owned(),
            base: base.to_owned(),
            title: title.to_owned(),
            body: body.to_owned(),
            draft,
            state: "open".to_owned(),
            labels: Vec::new(),
            reviewers: Vec::new(),
            team_reviewers: Vec::new(),
        });
        number
    }

    /// Applies `change` to pull request `number` of `owner/name` and answers with it.
    fn with_pull(
        &mut self,
        owner: &str,
        name: &str,
        number: &str,
        change: impl FnOnce(&mut FakePull) -> Result<(), Answer>,
    ) -> Answer {
        let Ok(number) = number.parse::<u64>() else {
            return not_found();
        };
        let Some(pull) = self
            .pulls
            .iter_mut()
            .find(|p| p.owner == owner && p.repo == name && p.number == number)
        else {
            return not_found();
        };
        if let Err(answer) = change(pull) {
            return answer;
        }
        let pull = pull.clone();
        (StatusCode::OK, self.pull_json(&pull))
    }

    fn graphql(&mut self, caller: &Caller, body: Option<&Value>) -> Answer {
        let query = body
            .and_then(|b| b.get("query"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let id = body
            .and_then(|b| b.pointer("/variables/id"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let (mutation, draft) = if query.contains("convertPullRequestToDraft") {
            ("convertPullRequestToDraft", true)
        } else if query.contains("markPullRequestReadyForReview") {
            ("markPullRequestReadyForReview", false)
        } else {
            return (
                StatusCode::OK,
                json!({ "errors": [{ "message": "the fake knows only the draft mutations" }] }),
            );
        };
        if !can_write_pulls(caller) {
            return (
                StatusCode::OK,
                json!({ "errors": [{ "type": "FORBIDDEN",
                    "message": "Resource not accessible by integration" }] }),
            );
        }
        let Some(pull) = self.pulls.iter_mut().find(|p| p.node_id == id) else {
            return (
                StatusCode::OK,
                json!({ "errors": [{ "type": "NOT_FOUND",
                    "message": format!("Could not resolve to a node with the global id of '{id}'") }] }),
            );
        };
        pull.draft = draft;
        (
            StatusCode::OK,
            json!({ "data": { mutation: { "pullRequest": { "isDraft": draft } } } }),
        )
    }

    fn api(&self) -> String {
        format!("http://{}{}", self.addr.expect("bound"), self.config.prefix)
    }

    fn web(&self) -> String {
        format!("http://{}", self.addr.expect("bound"))
    }

    fn user_json(&self, login: &str, kind: &str) -> Value {
        let api = self.api();
        let web = self.web();
        json!({
            "login": login, "id": 1000 + login.len(), "node_id": format!("U_{login}"),
            "avatar_url": format!("{web}/avatars/{login}"), "gravatar_id": "",
            "url": format!("{api}/users/{login}"), "html_url": format!("{web}/{login}"),
            "followers_url": format!("{api}/users/{login}/followers"),
            "following_url": format!("{api}/users/{login}/following{{/other_user}}"),
            "gists_url": format!("{api}/users/{login}/gists{{/gist_id}}"),
            "starred_url": format!("{api}/users/{login}/starred{{/owner}}{{/repo}}"),
            "subscriptions_url": format!("{api}/users/{login}/subscriptions"),
            "organizations_url": format!("{api}/users/{login}/orgs"),
            "repos_url": format!("{api}/users/{login}/repos"),
            "events_url": format!("{api}/users/{login}/events{{/privacy}}"),
            "received_events_url": format!("{api}/users/{login}/received_events"),
            "type": kind, "site_admin": false
        })
    }

    fn repo_json(&self, owner: &str, name: &str) -> Value {
        let api = self.api();
        let web = self.web();
        json!({
            "id": 500 + name.len(), "node_id": format!("R_{owner}_{name}"), "name": name,
            "full_name": format!("{owner}/{name}"), "private": true,
            "owner": self.user_json(owner, "Organization"),
            "html_url": format!("{web}/{owner}/{name}"),
            "url": format!("{api}/repos/{owner}/{name}"),
            "clone_url": format!("{web}/{owner}/{name}.git"),
            "default_branch": self.config.default_branches.iter()
                .find(|(repo, _)| *repo == format!("{owner}/{name}"))
                .map_or("main", |(_, branch)| branch.as_str()),
            "fork": false, "archived": false, "disabled": false,
            "visibility": "private"
        })
    }

    fn pull_json(&self, p: &FakePull) -> Value {
        let api = self.api();
        let web = self.web();
        let (owner, name, n) = (&p.owner, &p.repo, p.number);
        let sha = format!("{:040x}", n);
        let branch = |branch: &str| {
            json!({
                "label": format!("{owner}:{branch}"), "ref": branch, "sha": sha,
                "user": self.user_json(owner, "Organization"),
                "repo": self.repo_json(owner, name)
            })
        };
        let labels: Vec<Value> = p
            .labels
            .iter()
            .enumerate()
            .map(|(i, label)| {
                json!({
                    "id": 9000 + i, "node_id": format!("LA_{label}"),
                    "url": format!("{api}/repos/{owner}/{name}/labels/{label}"),
                    "name": label, "color": "ededed", "default": false, "description": null
                })
            })
            .collect();
        let reviewers: Vec<Value> = p
            .reviewers
            .iter()
            .map(|login| self.user_json(login, "User"))
            .collect();
        json!({
            "url": format!("{api}/repos/{owner}/{name}/pulls/{n}"),
            "id": 7000 + n, "node_id": p.node_id, "number": n,
            "html_url": format!("{web}/{owner}/{name}/pull/{n}"),
            "diff_url": format!("{web}/{owner}/{name}/pull/{n}.diff"),
            "patch_url": format!("{web}/{owner}/{name}/pull/{n}.patch"),
            "issue_url": format!("{api}/repos/{owner}/{name}/issues/{n}"),
            "state": p.state, "locked": false, "title": p.title, "body": p.body,
            "user": self.user_json("maxions-bot", "Bot"),
            "labels": labels, "requested_reviewers": reviewers,
            "requested_teams": [],
            "draft": p.draft, "merged": false, "mergeable": null,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "head": branch(&p.head), "base": branch(&p.base),
            "author_association": "NONE"
        })
    }
}

fn can_write_pulls(caller: &Caller) -> bool {
    match caller {
        Caller::Pat => true,
        Caller::Installation(minted) => minted
            .permissions
            .as_ref()
            .is_none_or(|p| p.get("pull_requests").and_then(Value::as_str) == Some("write")),
    }
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(byte) = u8::from_str_radix(hex, 16) {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks an App JWT as GitHub does: RS256 signed by the App's key, `iss` the App's id, `exp` in
/// the future but at most ten minutes ahead, `iat` not in the future (a minute of clock skew).
fn verify_jwt(jwt: &str, app_id: u64, public_pem: &str) -> Result<(), String> {
    const UNDECODABLE: &str = "A JSON web token could not be decoded";
    let key = DecodingKey::from_rsa_pem(public_pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .map_err(|_| UNDECODABLE.to_owned())?
        .claims;
    let iss = match &claims["iss"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    if iss != Some(app_id) {
        return Err("'Issuer' claim ('iss') must be the App's id".to_owned());
    }
    let now = now();
    let exp = claims["exp"].as_u64().ok_or(UNDECODABLE)?;
    let iat = claims["iat"].as_u64().ok_or(UNDECODABLE)?;
    if exp <= now {
        return Err(
            "'Expiration time' claim ('exp') must be a numeric value representing the \
                    future time at which the assertion expires"
                .to_owned(),
        );
    }
    if exp > now + 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future".to_owned());
    }
    if iat > now + 60 {
        return Err(
            "'Issued at' claim ('iat') must be an Integer representing the time that \
                    the assertion was issued"
                .to_owned(),
        );
    }
    Ok(())
}
