//! A git smart-HTTP server on 127.0.0.1: the real `git http-backend` (as a CGI program) behind a
//! small axum handler that wants a token, as GitHub does. Clone and push with the real git CLI.
//!
//! ```ignore
//! let git = GitServer::start_with(fake_github.token_check()); // or GitServer::with_tokens(&[..])
//! let url = git.create_repo("octo", "hello");              // bare, one commit on `main`
//! // git -c http.extraHeader="Authorization: Basic <x-access-token:TOKEN>" clone <url>
//! assert_eq!(git.pushes().len(), 1);
//! ```
//!
//! The token comes from `Authorization: Basic base64(user:token)` (the user is ignored, as
//! GitHub ignores it beside a token) or `Authorization: Bearer token`; anything else gets 401
//! with `WWW-Authenticate: Basic realm="maxions-test"`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;

use super::server::Served;
use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::AsyncWriteExt;

/// Decides whether a token may use the server.
pub type TokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct GitRequest {
    pub method: String,
    /// e.g. `/octo/hello.git/info/refs`.
    pub path: String,
    pub query: Option<String>,
    /// The token presented, if any.
    pub token: Option<String>,
    /// What the server answered.
    pub status: u16,
}

impl GitRequest {
    /// A successful `git push` (the receive-pack POST).
    pub fn is_push(&self) -> bool {
        self.method == "POST" && self.path.ends_with("/git-receive-pack") && self.status == 200
    }
}

struct Shared {
    root: PathBuf,
    check: TokenCheck,
    requests: Mutex<Vec<GitRequest>>,
    /// How the next pushes' connections are dropped, first first.
    drops: Mutex<std::collections::VecDeque<DropPush>>,
    /// How the push going on is dropped: one `git push` asks for `info/refs` once, then may
    /// POST its pack more than once (git sends it again when an answer is lost).
    dropping: Mutex<Option<DropPush>>,
}

/// Where a push's connection is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropPush {
    /// After the pack arrived, before it is applied: the push did not land.
    Before,
    /// After it was applied, before the client hears so: the push landed.
    After,
}

/// A running git server. Dropping it stops the server and deletes its repositories.
pub struct GitServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    // Stops the server before the repositories go.
    _served: Served,
    _root: tempfile::TempDir,
}

impl GitServer {
    /// Serves repositories from a new temporary directory, letting in the tokens `check`
    /// accepts. Runs on a thread of its own, so tests may block on git without stalling it.
    pub fn start(check: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self::start_with(Arc::new(check))
    }

    /// [`Self::start`] with a shared check, e.g. `FakeGitHub::token_check()`, so that the tokens
    /// the fake GitHub mints push here, as on GitHub.
    pub fn start_with(check: TokenCheck) -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        let shared = Arc::new(Shared {
            root: root.path().to_owned(),
            check,
            requests: Mutex::new(Vec::new()),
            drops: Mutex::default(),
            dropping: Mutex::default(),
        });
        let state = Arc::clone(&shared);
        let served = Served::start(move |_| Router::new().fallback(handle).with_state(state));
        Self {
            addr: served.addr,
            shared,
            _served: served,
            _root: root,
        }
    }

    /// Cuts the connections of the next `git push`es, one per entry, in order: every
    /// receive-pack POST of that push (git may send its pack twice) is cut, and recorded with
    /// status 0.
    pub fn drop_next_pushes(&self, drops: &[DropPush]) {
        self.shared.drops.lock().unwrap().extend(drops);
    }

    /// A server that lets in exactly these tokens.
    pub fn with_tokens(tokens: &[&str]) -> Self {
        let tokens: Vec<String> = tokens.iter().map(|t| (*t).to_owned()).collect();
        Self::start(move |token| tokens.iter().any(|t| t == token))
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The clone URL of `owner/name`.
    pub fn url(&self, owner: &str, name: &str) -> String {
        format!("http://{}/{owner}/{name}.git", self.addr)
    }

    /// Where the bare repository of `owner/name` lives on disk.
    pub fn repo_path(&self, owner: &str, name: &str) -> PathBuf {
        self.shared.root.join(owner).join(format!("{name}.git"))
    }

    /// Creates the bare repository `owner/name` with one commit (a README) on `main`, and
    /// returns its clone URL.
    pub fn create_repo(&self, owner: &str, name: &str) -> String {
        let path = self.repo_path(owner, name);
        std::fs::create_dir_all(&path).expect("mkdir");
        git(
            &path,
            &["init", "--quiet", "--bare", "--initial-branch=main"],
            None,
        );
        let blob = git(
            &path,
            &["hash-object", "-w", "--stdin"],
            Some(&format!("# {name}\n")),
        );
        let tree = git(
            &path,
            &["mktree"],
            Some(&format!("100644 blob {blob}\tREADME.md\n")),
        );
        let commit = git(&path, &["commit-tree", &tree, "-m", "initial commit"], None);
        git(&path, &["update-ref", "refs/heads/main", &commit], None);
        self.url(owner, name)
    }

    /// The commit `branch` of `owner/name` points at, if the branch exists.
    pub fn branch(&self, owner: &str, name: &str, branch: &str) -> Option<String> {
        let output = Command::new("git")
            .arg("--git-dir")
            .arg(self.repo_path(owner, name))
            .args(["rev-parse", "--verify", "--quiet"])
            .arg(format!("refs/heads/{branch}"))
            .output()
            .expect("run git");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// The content of `file` on `branch` of `owner/name`, if both exist.
    pub fn file(&self, owner: &str, name: &str, branch: &str, file: &str) -> Option<String> {
        let output = Command::new("git")
            .arg("--git-dir")
            .arg(self.repo_path(owner, name))
            .arg("show")
            .arg(format!("refs/heads/{branch}:{file}"))
            .output()
            .expect("run git");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub fn requests(&self) -> Vec<GitRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The successful pushes, in order.
    pub fn pushes(&self) -> Vec<GitRequest> {
        self.requests()
            .into_iter()
            .filter(GitRequest::is_push)
            .collect()
    }
}

/// Runs git in the bare repository `dir` with a fixed identity, returning trimmed stdout.
fn git(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut child = Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run git");
    let mut input = child.stdin.take().expect("piped");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(input);
    let output = child.wait_with_output().expect("wait for git");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The token of an `Authorization` header: the password of Basic, or a Bearer token.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_owned());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(BASE64.decode(encoded.trim()).ok()?).ok()?;
    let (_user, token) = decoded.split_once(':')?;
    Some(token.to_owned())
}

async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = presented_token(&headers);
    let allowed = token.as_deref().is_some_and(|token| (shared.check)(token));
    // A push begins by asking for the refs: the next drop, if any, is this push's.
    if allowed
        && method == Method::GET
        && uri.path().ends_with("/info/refs")
        && uri.query() == Some("service=git-receive-pack")
    {
        *shared.dropping.lock().unwrap() = shared.drops.lock().unwrap().pop_front();
    }
    let dropping = (allowed && method == Method::POST && uri.path().ends_with("/git-receive-pack"))
        .then(|| *shared.dropping.lock().unwrap())
        .flatten();
    let response = if let Some(drop) = dropping {
        if drop == DropPush::After {
            let _ = cgi(&shared.root, &method, &uri, &headers, body).await;
        }
        // Headers go out, then the body fails: the server closes the connection mid-answer.
        let cut = futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped by the test"))
        });
        let mut response = Response::new(Body::from_stream(cut));
        response.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/x-git-receive-pack-result"),
        );
        shared.requests.lock().unwrap().push(GitRequest {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            token,
            status: 0,
        });
        return response;
    } else if allowed {
        cgi(&shared.root, &method, &uri, &headers, body).await
    } else {
        let mut response = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
        response.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=\"maxions-test\""),
        );
        response
    };
    shared.requests.lock().unwrap().push(GitRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        token,
        status: response.status().as_u16(),
    });
    response
}

/// Runs `git http-backend` for one request and turns its CGI answer into a response.
async fn cgi(
    root: &Path,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut command = tokio::process::Command::new("git");
    command
        .args(["-c", "http.receivepack=true", "http-backend"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "maxions-test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("git http-backend: {err}\n"),
            )
                .into_response();
        }
    };
    let mut stdin = child.stdin.take().expect("piped");
    // Feed the body while reading the answer: a large push would otherwise fill both pipes.
    let feed = async move {
        let _ = stdin.write_all(&body).await;
        drop(stdin);
    };
    let (_, output) = tokio::join!(feed, child.wait_with_output());
    let output = match output {
        Ok(output) => output,
        Err(err) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("git http-backend: {err}\n"),
            )
                .into_response();
        }
    };
    parse_cgi(&output.stdout)
}

fn parse_cgi(raw: &[u8]) -> Response {
    let (head, body) = match find(raw, b"\r\n\r\n") {
        Some(at) => (&raw[..at], &raw[at + 4..]),
        None => match find(raw, b"\n\n") {
            Some(at) => (&raw[..at], &raw[at + 2..]),
            None => {
                return (
                    StatusCode::BAD_GATEWAY,
                    "git http-backend sent no headers\n",
                )
                    .into_response();
            }
        },
    };
    let mut status = StatusCode::OK;
    let mut response_headers = HeaderMap::new();
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|code| code.parse::<u16>().ok())
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
        } else if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response_headers.append(name, value);
        }
    }
    let mut response = Response::new(Body::from(body.to_vec()));
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    response
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
