//! The dashboard in a real browser: Debian's Chromium driven through chromedriver (WebDriver),
//! against a real `maxions daemon` with a token, real containers and the real stream. The test
//! does what a person would: signs in, submits a broken task and sees the error at its line,
//! submits a good one, watches its log arrive live, cancels it, and sees it cancelled. It saves
//! screenshots for people to look at in `target/` (or `$CARGO_TARGET_DIR`): `dashboard.png` (the
//! run), `dashboard-list.png` (the run list) and `dashboard-submit.png` (the located error).
//!
//! Without Chromium or chromedriver it installs them (`scripts/browser.sh`, as root), or fails
//! and says how to install them, unless `MAXIONS_SKIP_BROWSER=1` asks to skip it (then it says
//! so).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::api::{ApiDaemon, PATIENCE, Project};
use crate::support::write;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

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
    // Set up on first use, as the Docker engine is: Debian's packages, when this may install.
    if !skip {
        let script = crate::support::root().join("scripts/browser.sh");
        let installed = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if installed
            && [CHROMIUM, CHROMEDRIVER]
                .iter()
                .all(|p| Path::new(p).exists())
        {
            return true;
        }
    }
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
    daemon: &'a ApiDaemon,
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

    /// The element `selector`, once the page has it (a view is drawn after its hash changes).
    async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        let started = Instant::now();
        loop {
            match self.client.find(Locator::Css(selector)).await {
                Ok(element) => return element,
                Err(e) if started.elapsed() > PATIENCE => {
                    self.fail(&format!("no element {selector}: {e}")).await
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Clicks `selector`, finding it again if the page redrew it in between (a stale element).
    async fn click(&self, selector: &str) {
        let started = Instant::now();
        loop {
            let element = self.css(selector).await;
            match element.click().await {
                Ok(()) => return,
                Err(e) if started.elapsed() > PATIENCE => {
                    self.fail(&format!("click {selector}: {e}")).await
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
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
// The project.

/// A blueprint that checks the repository out and then prints a numbered, green line with
/// some markup in it every 0.2 s for two minutes (long enough to watch it and cancel it).
const TICKER: &str = concat!(
    "name: ticker\n",
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
);

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
    let project = Project::new("concurrency: 1\n");
    let root = project.root();
    write(&root, "blueprints/ticker.yaml", TICKER);
    // A task already in the folder gives the run list a second task (and a run that succeeded).
    project.task("hello", "quick", "say hello");
    let daemon = ApiDaemon::start(&project);
    let token = daemon.token.clone();
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
    // Every refusal of the page's Content-Security-Policy from here on is kept, to assert none.
    page.js(
        "window.cspViolations = [];
         document.addEventListener('securitypolicyviolation', e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));
         return true;",
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
    page.type_into("#task-name", "counter").await;
    let good = project.task_yaml("ticker", "count slowly");
    page.type_into("#task-yaml", &format!("{good}bogus_field: 1\n"))
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
    page.screenshot(&target_dir().join("dashboard-submit.png"))
        .await;
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
    page.type_into("#task-yaml", &good).await;
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

    // The log follows its end; scrolled up, it stays where the reader is until asked to follow.
    page.until(
        "the log to fill its box and follow its end",
        "const l = document.getElementById('log');
         return l.scrollHeight > l.clientHeight + 100 && l.scrollHeight - l.scrollTop - l.clientHeight < 32;",
    )
    .await;
    page.js("document.getElementById('log').scrollTop = 0; return true;")
        .await;
    page.until(
        "the follow button once scrolled up",
        "return !document.getElementById('follow').hidden;",
    )
    .await;
    let shown = ticks(
        &page
            .js(&format!("return (() => {{ {RUN_STATE} }})();"))
            .await,
    )
    .len();
    page.until(
        "more lines while scrolled up, the view staying put",
        &format!(
            "const s = (() => {{ {RUN_STATE} }})();
             return s.lines.filter(l => l.startsWith('tick ')).length >= {} && document.getElementById('log').scrollTop === 0;",
            shown + 3
        ),
    )
    .await;
    let top = page
        .js("return document.getElementById('log').scrollTop;")
        .await;
    assert_eq!(top, 0, "new lines do not move a reader who scrolled up");
    page.click("#follow").await;
    page.until(
        "the log back at its end",
        "const l = document.getElementById('log');
         return l.scrollHeight - l.scrollTop - l.clientHeight < 32 && document.getElementById('follow').hidden;",
    )
    .await;

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
    let detail = daemon.get_json(&format!("/maxions/{run}"));
    assert_eq!(detail["status"], "cancelled", "{detail:#}");
    let logs = daemon.call("GET", &format!("/maxions/{run}/logs"), None);
    assert_eq!(logs.status(), 200, "{}", logs.text());
    let log: Vec<Value> = logs
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let finished = page
        .until(
            "the last line of the run in the log",
            "return [...document.querySelectorAll('#log .line.ev')].some(l => l.dataset.type === 'run_finished') && document.querySelectorAll('#log .line').length;",
        )
        .await;
    page.until(
        "the log still at its end after the run's last lines (and its summary redrawn)",
        "const l = document.getElementById('log');
         return l.scrollHeight - l.scrollTop - l.clientHeight < 32 && document.getElementById('follow').hidden;",
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
    page.until(
        "the last notice to go",
        "return document.getElementById('toast').hidden;",
    )
    .await;
    page.screenshot(&target_dir().join("dashboard.png")).await;

    // Re-run: a new run of the same task, whose page follows its own log from the start.
    page.click("#rerun").await;
    let again = page
        .until(
            "the page of the new run",
            &format!(
                "const s = (() => {{ {RUN_STATE} }})();
                 return location.hash !== '#/runs/{run}' && s.lines.filter(l => l.startsWith('tick ')).length >= 3
                     && document.getElementById('cancel') !== null && location.hash.slice('#/runs/'.length);"
            ),
        )
        .await;
    let again = again.as_str().unwrap_or_default().to_owned();
    let fresh = ticks(
        &page
            .js(&format!("return (() => {{ {RUN_STATE} }})();"))
            .await,
    );
    assert!(
        fresh[0].starts_with("tick 1 "),
        "the new run's log starts at its own first line: {fresh:?}"
    );
    page.click("#cancel").await;
    page.until(
        "the new run shown as cancelled",
        "return document.querySelector('#run-head[data-status=cancelled]') !== null;",
    )
    .await;

    // The run list shows both cancelled too.
    page.click("[data-nav=runs]").await;
    let rows = page
        .until(
            "the three runs in the run list",
            "const rows = [...document.querySelectorAll('#runs-body tr')];
             return rows.length === 3 && rows.every(r => r.dataset.status !== 'running')
                 && rows.map(r => [r.dataset.run, r.querySelector('.task-link').textContent, r.dataset.status]);",
        )
        .await;
    assert_eq!(
        rows[0],
        json!([again, "counter", "cancelled"]),
        "newest first: {rows}"
    );
    assert_eq!(rows[1], json!([run, "counter", "cancelled"]), "{rows}");
    assert_eq!(rows[2][1], "hello", "{rows}");
    assert_eq!(rows[2][2], "succeeded", "{rows}");
    page.until(
        "the last notice to go",
        "return document.getElementById('toast').hidden;",
    )
    .await;
    page.screenshot(&target_dir().join("dashboard-list.png"))
        .await;
    // Filtered by status, only the matching run is left.
    let filter = page.css("#filter-status").await;
    filter
        .select_by_value("succeeded")
        .await
        .expect("choose a status");
    page.until(
        "the list filtered to succeeded runs",
        "const rows = [...document.querySelectorAll('#runs-body tr')];
         return location.hash === '#/?status=succeeded' && rows.length === 1 && rows[0].dataset.status === 'succeeded';",
    )
    .await;
    let violations = page.js("return window.cspViolations;").await;
    assert_eq!(violations, json!([]), "the page keeps to its own policy");
    // Ending the session is courtesy: dropping the driver ends the browser in any case.
    let _ = tokio::time::timeout(Duration::from_secs(10), page.client.clone().close()).await;
}
