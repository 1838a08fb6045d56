//! A real `maxions daemon` serving its HTTP API on a free loopback port, on a temporary
//! project (maxions.yaml, blueprints, a local `file://` repository), and a small HTTP/1.1
//! client for it: what the API, dashboard and schemathesis tests drive.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::write;

/// How long a condition may take on a busy 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// The token the test daemons use (a test value, not a secret).
pub const TOKEN: &str = "test-token-3c1f9a7d";

/// A project folder: `maxions.yaml`, `blueprints/{quick,slow,gated}.yaml`, `tasks/`, and
/// `origin/repo.git` (a bare repository with one commit on `main`).
pub struct Project {
    dir: tempfile::TempDir,
    pub origin: PathBuf,
}

impl Project {
    /// A project whose `maxions.yaml` is `config` plus an API on a free port (unless `config`
    /// has an `api:` section of its own).
    pub fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let seed = root.join("seed");
        write(&seed, "README.md", "# repo\n");
        git(&seed, &["init", "-q", "-b", "main"]);
        git(&seed, &["add", "-A"]);
        git(
            &seed,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@localhost",
                "commit",
                "-q",
                "-m",
                "initial commit",
            ],
        );
        let origin = root.join("origin/repo.git");
        git(
            &root,
            &[
                "clone",
                "-q",
                "--bare",
                &seed.display().to_string(),
                &origin.display().to_string(),
            ],
        );
        let config = if config.contains("api:") {
            config.to_owned()
        } else {
            format!("{config}api:\n  listen: 127.0.0.1:0\n")
        };
        write(&root, "maxions.yaml", &config);
        let sandbox = "sandbox:\n  network: none\n  timeout: 5m\n";
        write(
            &root,
            "blueprints/quick.yaml",
            &format!(
                "name: quick\n{sandbox}steps:\n  - id: checkout\n    checkout: {{}}\n  - id: hello\n    run: cat /workspace/repo/README.md\n"
            ),
        );
        // Prints `line N` every 0.2 s for a minute: a run to watch and cancel.
        write(
            &root,
            "blueprints/slow.yaml",
            &format!(
                "name: slow\n{sandbox}steps:\n  - id: checkout\n    checkout: {{}}\n  - id: count\n    run: |\n      i=1\n      while [ $i -le 300 ]; do\n        printf '\\033[32mline %d\\033[0m\\n' $i\n        i=$((i+1))\n        sleep 0.2\n      done\n"
            ),
        );
        std::fs::create_dir_all(root.join("tasks")).expect("tasks dir");
        Self { dir, origin }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().expect("canonical temp dir")
    }

    /// The text of a task on the project's repository with `blueprint`.
    pub fn task_yaml(&self, blueprint: &str, text: &str) -> String {
        format!(
            "task: {text}\nrepo: file://{}\nblueprint: {blueprint}\nbase: main\n",
            self.origin.display()
        )
    }

    /// Writes `tasks/<stem>.yaml` (the daemon picks it up through its watcher).
    pub fn task(&self, stem: &str, blueprint: &str, text: &str) -> PathBuf {
        let path = self.root().join(format!("tasks/{stem}.yaml"));
        std::fs::write(&path, self.task_yaml(blueprint, text)).expect("write the task");
        path
    }
}

pub fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `maxions daemon` process with its API. Dropped, it is stopped (SIGTERM, then SIGKILL) and
/// its sandboxes removed.
pub struct ApiDaemon {
    child: Child,
    pub url: String,
    /// `host:port`.
    pub addr: String,
    pub token: String,
    output: PathBuf,
    root: PathBuf,
}

impl ApiDaemon {
    /// Starts the daemon in `project` with [`TOKEN`] and waits until its API answers.
    pub fn start(project: &Project) -> Self {
        Self::start_with(project, &[("MAXIONS_API_TOKEN", TOKEN)])
    }

    pub fn start_with(project: &Project, env: &[(&str, &str)]) -> Self {
        let root = project.root();
        let output = root.join("daemon.out");
        let file = File::create(&output).expect("daemon output file");
        let address_file = root.join(".maxions/api.json");
        let _ = std::fs::remove_file(&address_file);
        let mut command = Command::new(env!("CARGO_BIN_EXE_maxions"));
        command
            .current_dir(&root)
            .args(["-v", "daemon"])
            .env("NO_COLOR", "1")
            .env_remove("MAXIONS_LOG")
            .env_remove("MAXIONS_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the output file"))
            .stderr(file);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn maxions daemon");
        let token = env
            .iter()
            .find(|(k, _)| *k == "MAXIONS_API_TOKEN")
            .map(|(_, v)| (*v).to_owned())
            .unwrap_or_default();
        let mut daemon = Self {
            child,
            url: String::new(),
            addr: String::new(),
            token,
            output,
            root: root.clone(),
        };
        let started = Instant::now();
        let url = loop {
            if let Some(url) = std::fs::read_to_string(&address_file)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["url"].as_str().map(str::to_owned))
            {
                break url;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("the daemon exited ({status}):\n{}", daemon.output());
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the daemon wrote no api.json within {PATIENCE:?}:\n{}",
                daemon.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        daemon.addr = url.trim_start_matches("http://").to_owned();
        daemon.url = url;
        if daemon.token.is_empty() {
            daemon.token = std::fs::read_to_string(root.join(".maxions/api-token"))
                .unwrap_or_default()
                .trim()
                .to_owned();
        }
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// A request with the token.
    pub fn call(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Response {
        let auth = format!("Bearer {}", self.token);
        request(
            &self.addr,
            method,
            path,
            &[("Authorization", auth.as_str())],
            body,
        )
    }

    pub fn get_json(&self, path: &str) -> Value {
        let response = self.call("GET", path, None);
        assert_eq!(response.status, 200, "GET {path}: {}", response.text());
        response.json()
    }

    /// Submits a task file through `POST /maxions` (JSON body) and returns the answer.
    pub fn submit(&self, name: &str, yaml: &str) -> Response {
        let body = serde_json::json!({ "name": name, "yaml": yaml }).to_string();
        self.call(
            "POST",
            "/maxions",
            Some(("application/json", body.as_bytes())),
        )
    }

    /// Polls `GET /maxions/{id}` until `check` accepts it.
    pub fn wait_run(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let response = self.call("GET", &format!("/maxions/{id}"), None);
            if response.status == 200 {
                let value = response.json();
                if check(&value) {
                    return value;
                }
            }
            assert!(
                started.elapsed() < PATIENCE,
                "run {id}: {what} did not happen within {PATIENCE:?} (last: {}):\n{}",
                response.text(),
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for ApiDaemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() && self.stop().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Whatever a killed daemon left: its sandboxes carry the project's runs' labels.
        let _ = &self.root;
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`), read to the end.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to the API");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some((kind, bytes)) = body {
        head.push_str(&format!(
            "Content-Type: {kind}\r\nContent-Length: {}\r\n",
            bytes.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send the request");
    if let Some((_, bytes)) = body {
        stream.write_all(bytes).expect("send the body");
    }
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    let mut body = Vec::new();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).expect("chunk size");
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk).expect("chunk");
            body.extend_from_slice(&chunk);
            let mut crlf = String::new();
            reader.read_line(&mut crlf).expect("chunk end");
        }
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    Response {
        status,
        headers,
        body,
    }
}

/// The status line and headers of an answer.
pub fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    (status, headers)
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// `message` unless the event names another.
    pub event: String,
    pub data: String,
}

/// A live `GET /maxions/{id}/stream` connection, read event by event (HTTP/1.1 chunked).
pub struct Stream {
    reader: BufReader<TcpStream>,
    /// Decoded bytes not yet parsed into events.
    buffer: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Stream {
    /// Opens the stream of run `id`, resuming after `last_event_id` if given.
    pub fn open(daemon: &ApiDaemon, id: &str, last_event_id: Option<u64>) -> Self {
        let mut stream = TcpStream::connect(&daemon.addr).expect("connect to the API");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        let mut head = format!(
            "GET /maxions/{id}/stream HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n",
            daemon.addr, daemon.token
        );
        if let Some(last) = last_event_id {
            head.push_str(&format!("Last-Event-ID: {last}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("send the request");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader);
        Self {
            reader,
            buffer: Vec::new(),
            status,
            headers,
        }
    }

    /// The next event (comments are skipped), or `None` when the stream ended.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = find(&self.buffer, b"\n\n") {
                let raw: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&raw);
                let mut event = SseEvent {
                    id: None,
                    event: "message".to_owned(),
                    data: String::new(),
                };
                let mut any = false;
                for line in text.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        event.id = Some(value.trim().to_owned());
                        any = true;
                    } else if let Some(value) = line.strip_prefix("event:") {
                        event.event = value.trim().to_owned();
                        any = true;
                    } else if let Some(value) = line.strip_prefix("data:") {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event
                            .data
                            .push_str(value.strip_prefix(' ').unwrap_or(value));
                        any = true;
                    }
                }
                if any {
                    return Some(event);
                }
                continue;
            }
            // The next chunk.
            let mut size = String::new();
            if self.reader.read_line(&mut size).ok()? == 0 {
                return None;
            }
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                return None;
            }
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).ok()?;
            chunk.truncate(size);
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// Drops the connection at once (a forced disconnect).
    pub fn cut(self) {
        let _ = self.reader.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
