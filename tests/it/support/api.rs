//! A real `maxions daemon` serving its HTTP API on a free loopback port, on a temporary
//! project (maxions.yaml, blueprints, a local `file://` repository): what the API and dashboard
//! tests drive, with the client of [`super::http`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{Client, Response};
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
        let (dir, origin) = scaffold(config);
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let sandbox = SANDBOX;
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

/// The `sandbox:` section of the test blueprints.
pub const SANDBOX: &str = "sandbox:\n  network: none\n  timeout: 5m\n";

/// A temporary project: `maxions.yaml` (`config`, plus an API on a free port unless it has an
/// `api:` section: tests run side by side), `blueprints/quick.yaml` (checkout, one command),
/// `tasks/` and [`origin_repo`]. Returns the directory and the origin.
pub fn scaffold(config: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().canonicalize().expect("canonical temp dir");
    let origin = origin_repo(&root);
    let config = if config.contains("api:") {
        config.to_owned()
    } else {
        format!("{config}api:\n  listen: 127.0.0.1:0\n")
    };
    write(&root, "maxions.yaml", &config);
    write(
        &root,
        "blueprints/quick.yaml",
        &format!(
            "name: quick\n{SANDBOX}steps:\n  - id: checkout\n    checkout: {{}}\n  - id: hello\n    run: cat /workspace/repo/README.md\n"
        ),
    );
    std::fs::create_dir_all(root.join("tasks")).expect("tasks dir");
    (dir, origin)
}

/// `origin/repo.git` below `root`: a bare repository with one commit (a README) on `main`,
/// made from `seed/`.
pub fn origin_repo(root: &Path) -> PathBuf {
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
        root,
        &[
            "clone",
            "-q",
            "--bare",
            &seed.display().to_string(),
            &origin.display().to_string(),
        ],
    );
    origin
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

/// A `maxions daemon` process with its API. Dropped, it is stopped with SIGTERM (it removes its
/// sandboxes), or killed when it does not stop within 30 s.
pub struct ApiDaemon {
    child: Child,
    pub url: String,
    /// `host:port`.
    pub addr: String,
    pub token: String,
    output: PathBuf,
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

    /// A client that sends the token.
    pub fn client(&self) -> Client {
        Client::from_url(&self.url).token(&self.token)
    }

    /// A request with the token: `body` is (content type, bytes).
    pub fn call(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Response {
        let request = self.client().request(method, path);
        match body {
            Some((kind, bytes)) => request.body(kind, bytes.to_vec()).send(),
            None => request.send(),
        }
    }

    pub fn get_json(&self, path: &str) -> Value {
        let response = self.call("GET", path, None);
        assert_eq!(response.status(), 200, "GET {path}: {}", response.text());
        response.json()
    }

    /// Submits a task file through `POST /maxions` (JSON body) and returns the answer.
    pub fn submit(&self, name: &str, yaml: &str) -> Response {
        self.client()
            .post("/maxions")
            .json(&serde_json::json!({ "name": name, "yaml": yaml }))
            .send()
    }

    /// Polls `GET /maxions/{id}` until `check` accepts it.
    pub fn wait_run(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let response = self.call("GET", &format!("/maxions/{id}"), None);
            if response.status() == 200 {
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

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The label value its sandboxes carry (`maxions.owner`): boot id and pid.
    pub fn owner(&self) -> String {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        format!("{}/{}", boot.trim(), self.child.id())
    }

    /// Its resident memory now (VmRSS), in bytes.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
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
    }
}
