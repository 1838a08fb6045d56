//! The dashboard in a real browser: Debian's Chromium driven through chromedriver (WebDriver),
//! against a real `maxions daemon` with a token, real containers and the real stream. The test
//! does what a person would: signs in, submits a broken task and sees the error at its line,
//! submits a good one, watches its log arrive live, cancels it, and sees it cancelled. It saves
//! screenshots of the run and the run list to `target/` for people to look at.
//!
//! Without Chromium or chromedriver it fails and says how to install them, unless
//! `MAXIONS_SKIP_BROWSER=1` asks to skip it (then it says so).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::write;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long any one condition may take: generous, since 2 cores serve several builds.
const PATIENCE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// The browser.

/// Whether Chromium and chromedriver are installed; `false` only when `MAXIONS_SKIP_BROWSER=1`
/// asks to skip, which it then says. Missing otherwise, the test fails saying what to install.
fn browser(name: &str) -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|path| !Path::new(path).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let skip = std::env::var_os("MAXIONS_SKIP_BROWSER").is_some_and(|v| v == "1");
    assert!(
        skip,
        "{} not found: this test drives Debian's Chromium; install it with `apt-get install -y chromium chromium-driver` (or `bash scripts/browser.sh`), or set MAXIONS_SKIP_BROWSER=1 to skip the browser tests and say so",
        missing.join(" and ")
    );
    eprintln!(
        "SKIPPED {name}: no browser ({} not found)",
        missing.join(", ")
    );
    false
}

/// A chromedriver process on a free loopback port, in its own process group so that dropping
/// it also ends the Chromium it started.
struct Chromedriver {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Chromedriver {
    fn start() -> Self {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("chromedriver.log");
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        let driver = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < PATIENCE,
                "chromedriver did not listen on port {port}; its log:\n{}",
                driver.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A browser session: headless Chromium with a fresh profile, and none of the background
    /// traffic (updates, sync, QUIC probes) it would otherwise send to the closed network.
    async fn session(&self, profile: &Path) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "start a Chromium session: {e}; chromedriver's log:\n{}",
                    self.log()
                )
            })
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if let Some(group) = rustix::process::Pid::from_raw(self.child.id().cast_signed()) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Where screenshots go: `$CARGO_TARGET_DIR`, else the crate's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::support::root().join("target"), PathBuf::from)
}

// ---------------------------------------------------------------------------------------------
// The page.

/// The browser and what to show when something is not as expected.
struct Page<'a> {
    client: Client,
    daemon: &'a Daemon,
}

impl Page<'_> {
    /// Evaluates `script` (a function body that returns a value) until it returns something
    /// other than `null`/`false`; fails after [`PATIENCE`] with a screenshot and the daemon's
    /// output.
    async fn until(&self, what: &str, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self
                .client
                .execute(script, vec![])
                .await
                .unwrap_or_else(|e| panic!("evaluate the check for {what}: {e}"));
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            if started.elapsed() > PATIENCE {
                self.fail(&format!("timed out waiting for {what} (last: {value})"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("evaluate {script}: {e}"))
    }

    async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Css(selector)).await {
            Ok(element) => element,
            Err(e) => self.fail(&format!("no element {selector}: {e}")).await,
        }
    }

    async fn click(&self, selector: &str) {
        let element = self.css(selector).await;
        if let Err(e) = element.click().await {
            self.fail(&format!("click {selector}: {e}")).await;
        }
    }

    /// Replaces the text of the input or textarea `selector` by typing `text`.
    async fn type_into(&self, selector: &str, text: &str) {
        let element = self.css(selector).await;
        element.clear().await.expect("clear the field");
        element.send_keys(text).await.expect("type into the field");
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("take a screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the screenshot's directory");
        }
        std::fs::write(path, png).expect("save the screenshot");
    }

    async fn fail(&self, message: &str) -> ! {
        let shot = target_dir().join("dashboard-failure.png");
        self.screenshot(&shot).await;
        let body = self
            .client
            .execute("return document.body.innerText", vec![])
            .await
            .unwrap_or_default();
        panic!(
            "{message}\nthe page ({}, screenshot in {}):\n{}\nthe daemon's output:\n{}",
            self.client
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default(),
            shot.display(),
            body.as_str().unwrap_or_default(),
            self.daemon.output()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon with its API, on a project with a `file://` repository.

/// A `maxions daemon` child serving the API on a free port with `token`; killed when dropped,
/// with its containers.
struct Daemon {
    child: Child,
    root: PathBuf,
    output: PathBuf,
    owner: String,
    url: String,
}

impl Daemon {
    fn start(root: &Path, token: &str) -> Self {
        let output = root.join("daemon.out");
        let file = std::fs::File::create(&output).expect("daemon output file");
        let child = Command::new(env!("CARGO_BIN_EXE_maxions"))
            .current_dir(root)
            .args(["-v", "daemon"])
            .env("NO_COLOR", "1")
            .env("MAXIONS_API_TOKEN", token)
            .env_remove("MAXIONS_LOG")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the output file"))
            .stderr(file)
            .spawn()
            .expect("spawn maxions daemon");
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let owner = format!("{}/{}", boot.trim(), child.id());
        let mut daemon = Self {
            child,
            root: root.to_path_buf(),
            output,
            owner,
            url: String::new(),
        };
        daemon.url = daemon.wait_until("the API's address in .maxions/api.json", |d| {
            let text = std::fs::read_to_string(d.root.join(".maxions/api.json")).ok()?;
            let value: Value = serde_json::from_str(&text).ok()?;
            value["url"].as_str().map(str::to_owned)
        });
        daemon
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    fn wait_until<T>(&mut self, what: &str, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "waiting for {what}, the daemon exited ({status}); its output:\n{}",
                    self.output()
                );
            }
            assert!(
                started.elapsed() < PATIENCE,
                "timed out waiting for {what}; the daemon's output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The complete lines of a run's log.
    fn log(&self, stem: &str, run: &str) -> Vec<Value> {
        std::fs::read_to_string(self.root.join(format!("tasks/{stem}.runs/{run}.jsonl")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let output = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=maxions.owner={}", self.owner))
            .output();
        if let Ok(output) = output {
            for id in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "-v", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

fn git(dir: &Path, args: &[&str]) {
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

/// A project whose blueprint `slow` checks the repository out and then prints a numbered,
/// coloured line every 0.2 s for two minutes (long enough to watch it and cancel it).
fn project() -> (tempfile::TempDir, PathBuf) {
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
    write(
        &root,
        "maxions.yaml",
        "concurrency: 1\napi:\n  listen: 127.0.0.1:0\n  token_env: MAXIONS_API_TOKEN\n",
    );
    write(
        &root,
        "blueprints/slow.yaml",
        concat!(
            "name: slow\n",
            "sandbox:\n  network: none\n  timeout: 5m\n",
            "steps:\n",
            "  - id: checkout\n    checkout: {}\n",
            "  - id: count\n",
            "    run: |\n",
            "      i=1\n",
            "      while [ $i -le 600 ]; do\n",
            "        printf '\\033[32mtick %d\\033[0m <i>not markup</i>\\n' $i\n",
            "        i=$((i+1)); sleep 0.2\n",
            "      done\n",
        ),
    );
    std::fs::create_dir_all(root.join("tasks")).expect("tasks dir");
    (dir, origin)
}

/// A token no other test shares (its value does not matter, only that the daemon wants it).
fn token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("dash-{:x}-{nanos:x}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// The test.

/// What the run page shows: the run's status and the text of the log's output lines.
const RUN_STATE: &str = r"
    const head = document.querySelector('#run-head[data-status]');
    const lines = [...document.querySelectorAll('#log .line.out .ln-text')].map(l => l.textContent);
    return { status: head ? head.dataset.status : null, lines };
";

fn ticks(state: &Value) -> Vec<String> {
    state["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|l| l.starts_with("tick "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_shows_a_broken_task_at_its_line_follows_a_run_live_and_cancels_it()
{
    if !browser("dashboard") || crate::support::docker::engine("dashboard").await.is_none() {
        return;
    }
    let (project, origin) = project();
    let root = project.path().canonicalize().expect("canonical temp dir");
    let token = token();
    let daemon = Daemon::start(&root, &token);
    let driver = Chromedriver::start();
    let profile = tempfile::tempdir().expect("a browser profile dir");
    let page = Page {
        client: driver.session(profile.path()).await,
        daemon: &daemon,
    };

    // Signing in: the page asks for the token, and takes it.
    page.client
        .goto(&daemon.url)
        .await
        .expect("open the dashboard");
    page.until(
        "the token prompt",
        "const f = document.getElementById('token-form'); return f && f.offsetParent !== null;",
    )
    .await;
    page.type_into("#token-input", "not-the-token").await;
    page.click("#token-submit").await;
    page.until(
        "the wrong token refused",
        "const e = document.getElementById('token-error'); return !e.hidden && e.textContent;",
    )
    .await;
    page.type_into("#token-input", &token).await;
    page.click("#token-submit").await;
    page.until(
        "the run list after signing in",
        "return document.getElementById('token-overlay').hidden && document.getElementById('runs') !== null;",
    )
    .await;

    // A broken task: the unknown key on line 5 is marked on line 5, and the list says 5:1.
    page.click("[data-nav=submit]").await;
    page.css("#task-yaml").await;
    page.type_into("#task-name", "counter").await;
    let repo = format!("file://{}", origin.display());
    page.type_into(
        "#task-yaml",
        &format!("task: count slowly\nrepo: {repo}\nblueprint: slow\nbase: main\nbogus_field: 1\n"),
    )
    .await;
    page.click("#submit").await;
    let marked = page
        .until(
            "the task's diagnostics",
            "const d = document.querySelectorAll('#diagnostics .diag'); if (!d.length) return null;
             return { marked: [...document.querySelectorAll('#gutter .gl.has-error')].map(g => Number(g.dataset.line)),
                      items: [...d].map(i => ({ line: i.dataset.line, text: i.textContent })) };",
        )
        .await;
    assert_eq!(marked["marked"], json!([5]), "{marked:#}");
    let item = &marked["items"][0];
    assert_eq!(item["line"], "5", "{marked:#}");
    let text = item["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("5:1") && text.contains("bogus_field"),
        "the problem says where and what: {text}"
    );
    // Clicking it selects that line in the editor.
    page.click("#diagnostics .diag[data-line='5'] button").await;
    let selected = page
        .js("const t = document.getElementById('task-yaml');
             return document.activeElement === t && t.value.slice(t.selectionStart, t.selectionEnd);")
        .await;
    assert_eq!(selected, "bogus_field: 1");
    assert!(
        !root.join("tasks/counter.yaml").exists(),
        "nothing is written for an invalid task"
    );

    // The fixed task is submitted and the page moves to its run.
    page.type_into(
        "#task-yaml",
        &format!("task: count slowly\nrepo: {repo}\nblueprint: slow\nbase: main\n"),
    )
    .await;
    page.click("#submit").await;
    let hash = page
        .until(
            "the run page of the submitted task",
            "return location.hash.startsWith('#/runs/') && location.hash;",
        )
        .await;
    let run = hash
        .as_str()
        .and_then(|h| h.strip_prefix("#/runs/"))
        .expect("a run id in the address")
        .to_owned();
    assert!(
        root.join("tasks/counter.yaml").exists(),
        "the task file was written"
    );

    // Its output arrives while it runs: several distinct lines, then more, none twice, coloured
    // and never read as markup.
    let first = page
        .until(
            "five output lines while the run runs",
            &format!(
                "const s = (() => {{ {RUN_STATE} }})();
                 return s.status === 'running' && s.lines.filter(l => l.startsWith('tick ')).length >= 5 && s;"
            ),
        )
        .await;
    let seen = ticks(&first);
    let later = page
        .until(
            "more output lines while the run still runs",
            &format!(
                "const s = (() => {{ {RUN_STATE} }})();
                 return s.status === 'running' && s.lines.filter(l => l.startsWith('tick ')).length >= {} && s;",
                seen.len() + 5
            ),
        )
        .await;
    let now = ticks(&later);
    let mut unique = now.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), now.len(), "no line is shown twice: {now:?}");
    assert!(
        now.iter()
            .enumerate()
            .all(|(i, l)| l.starts_with(&format!("tick {} ", i + 1))),
        "the lines arrive in order, none left out: {now:?}"
    );
    assert!(
        now.iter()
            .all(|l| l.ends_with(" <i>not markup</i>") && !l.contains('\u{1b}')),
        "escapes are rendered, markup is text: {now:?}"
    );
    let styled = page
        .js("return [document.querySelectorAll('#log .line.out .a-fg2').length, document.querySelectorAll('#log i').length];")
        .await;
    assert!(
        styled[0].as_u64().unwrap_or(0) >= 5,
        "green (SGR 32) is shown as green: {styled}"
    );
    assert_eq!(styled[1], 0, "no element came from the output: {styled}");

    // Cancel: the page shows the run cancelled, and the daemon's log says so too.
    page.click("#cancel").await;
    page.until(
        "the run shown as cancelled",
        "const h = document.querySelector('#run-head[data-status=cancelled]');
         return h && h.querySelector('.badge').textContent === 'Cancelled' && !document.getElementById('cancel')
             && document.getElementById('rerun') !== null;",
    )
    .await;
    page.until(
        "the log's end",
        "const s = document.getElementById('log-state'); return s.dataset.state === 'ended' && s.textContent;",
    )
    .await;
    let log = daemon.log("counter", &run);
    let end = log
        .last()
        .filter(|l| l["type"] == "run_finished")
        .unwrap_or_else(|| panic!("the run finished: {log:#?}"));
    assert_eq!(end["status"], "cancelled", "{end:#}");
    let finished = page
        .until(
            "the last line of the run in the log",
            "return [...document.querySelectorAll('#log .line.ev')].some(l => l.dataset.type === 'run_finished') && document.querySelectorAll('#log .line').length;",
        )
        .await;
    let all = ticks(
        &page
            .js(&format!("return (() => {{ {RUN_STATE} }})();"))
            .await,
    );
    let logged = log
        .iter()
        .filter(|l| l["type"] == "output")
        .filter_map(|l| l["text"].as_str())
        .collect::<String>()
        .lines()
        .filter(|l| l.contains("tick "))
        .count();
    assert_eq!(
        all.len(),
        logged,
        "the page shows each logged line once ({finished} lines in all)"
    );
    page.screenshot(&target_dir().join("dashboard.png")).await;

    // The run list shows it cancelled too.
    page.click("[data-nav=runs]").await;
    page.until(
        "the cancelled run in the run list",
        &format!(
            "const r = document.querySelector('#runs-body tr[data-run=\"{run}\"]');
             return r && r.dataset.status === 'cancelled' && r.querySelector('.badge').textContent;"
        ),
    )
    .await;
    page.screenshot(&target_dir().join("dashboard-list.png"))
        .await;
    page.client
        .clone()
        .close()
        .await
        .expect("end the browser session");
}
