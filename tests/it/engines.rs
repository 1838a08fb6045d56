//! Several Docker engines behind one daemon: the machine's engine and a second, real one in its
//! own network namespace, reached over TCP with TLS client certificates made by the test (see
//! `support::engine`). Runs spread by capacity and labels, images are loaded onto the second
//! engine by the daemon, a run the second engine drops finishes on the first, and an allowlist
//! holds for a sandbox on the second engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use maxions::sandbox::egress::{Decision, EgressEvent, EgressPolicy, StaticResolver};
use maxions::sandbox::egress_container::EgressContainer;
use maxions::sandbox::image::{EGRESS_IMAGE, SANDBOX_IMAGE};
use maxions::sandbox::{DockerEngine, Endpoint, Engine, NetworkPolicy};
use serde_json::Value;

use crate::support::api::{ApiDaemon, PATIENCE, Project, SANDBOX, TOKEN};
use crate::support::engine::{SecondEngine, second_engine};

fn lines(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every run log under the tasks folder.
fn all_logs(tasks: &Path) -> Vec<PathBuf> {
    let mut logs = Vec::new();
    for entry in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|x| x == "runs") {
            for log in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if log.path().extension().is_some_and(|x| x == "jsonl") {
                    logs.push(log.path());
                }
            }
        }
    }
    logs.sort();
    logs
}

/// What one log says: its engine, status, and when it started and ended (RFC 3339).
struct Run {
    task: String,
    engine: Option<String>,
    status: Option<String>,
    reason: Option<String>,
    trigger: Option<String>,
    start: String,
    end: String,
}

fn read_run(log: &Path) -> Run {
    let events = lines(log);
    let find = |kind: &str| events.iter().find(|e| e["type"] == kind);
    let text = |v: Option<&Value>, key: &str| v.and_then(|v| v[key].as_str()).map(str::to_owned);
    Run {
        task: log
            .parent()
            .and_then(Path::file_stem)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        engine: text(find("sandbox_ready"), "engine"),
        status: text(find("run_finished"), "status"),
        reason: text(find("run_finished"), "reason"),
        trigger: text(find("run_started"), "trigger"),
        start: text(find("sandbox_ready"), "ts").unwrap_or_default(),
        end: text(events.last(), "ts").unwrap_or_default(),
    }
}

fn engines_config(engines: &[(&str, Option<&SecondEngine>, u32, &[&str])]) -> String {
    let mut yaml = String::from("engines:\n");
    for (name, second, capacity, labels) in engines {
        yaml.push_str(&format!("  - name: {name}\n    capacity: {capacity}\n"));
        if let Some(second) = second {
            let tls = second.tls.as_ref().expect("served over TLS");
            yaml.push_str(&format!(
                "    host: {}\n    tls: {}\n",
                tls.host,
                tls.client.display()
            ));
        }
        if !labels.is_empty() {
            yaml.push_str(&format!("    labels: [{}]\n", labels.join(", ")));
        }
    }
    yaml
}

fn nap_blueprint(root: &Path, name: &str, seconds: u32, labels: &str) {
    let sandbox = if labels.is_empty() {
        SANDBOX.to_owned()
    } else {
        format!("{SANDBOX}  engine_labels: [{labels}]\n")
    };
    crate::support::write(
        root,
        &format!("blueprints/{name}.yaml"),
        &format!(
            "name: {name}\n{sandbox}steps:\n  - id: checkout\n    checkout: {{}}\n  - id: nap\n    run: echo napping; sleep {seconds}\n"
        ),
    );
}

fn wait_for(what: &str, daemon: &ApiDaemon, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "{what}:\n{}", daemon.output());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn runs_spread_over_two_engines_by_capacity_and_labels_and_the_daemon_loads_the_image() {
    let Some((_turn, second)) = second_engine("engines-spread", true) else {
        return;
    };
    assert!(
        second.run(&["images", "-q"]).trim().is_empty(),
        "the second engine starts with no image: the daemon must load it"
    );
    let project = Project::new(&engines_config(&[
        ("first", None, 1, &[]),
        ("second", Some(&second), 2, &["far"]),
    ]));
    let root = project.root();
    nap_blueprint(&root, "nap", 3, "");
    nap_blueprint(&root, "far", 3, "far");
    let mut daemon = ApiDaemon::start_with(&project, &[("MAXIONS_API_TOKEN", TOKEN)]);
    let engines = daemon.get_json("/engines");
    let names: Vec<(&str, &str, u64)> = engines["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["state"].as_str().unwrap(),
                e["capacity"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [("first", "up", 1), ("second", "up", 2)],
        "{engines}"
    );

    for n in 0..4 {
        project.task(&format!("nap{n}"), "nap", "nap");
    }
    project.task("far0", "far", "far away");
    let tasks = root.join("tasks");
    wait_for("all five runs finished", &daemon, || {
        let logs = all_logs(&tasks);
        logs.len() == 5 && logs.iter().all(|l| read_run(l).status.is_some())
    });
    let runs: Vec<Run> = all_logs(&tasks).iter().map(|l| read_run(l)).collect();
    for run in &runs {
        assert_eq!(
            run.status.as_deref(),
            Some("succeeded"),
            "{}: {:?}\n{}",
            run.task,
            run.reason,
            daemon.output()
        );
    }
    let on = |engine: &str| {
        runs.iter()
            .filter(|r| r.engine.as_deref() == Some(engine))
            .count()
    };
    assert!(
        on("first") >= 1 && on("second") >= 1,
        "both engines took runs"
    );
    assert_eq!(on("first") + on("second"), 5);
    let far = runs.iter().find(|r| r.task == "far0").unwrap();
    assert_eq!(
        far.engine.as_deref(),
        Some("second"),
        "only `second` has `far`"
    );
    // No engine ever held more runs than its capacity: at each run's start, count the runs on
    // its engine that had started and not ended.
    for run in &runs {
        let engine = run.engine.as_deref().unwrap();
        let at_once = runs
            .iter()
            .filter(|r| r.engine.as_deref() == Some(engine))
            .filter(|r| r.start <= run.start && run.start < r.end)
            .count();
        let capacity = if engine == "first" { 1 } else { 2 };
        assert!(
            at_once <= capacity,
            "{engine} held {at_once} runs at once (capacity {capacity})"
        );
    }
    // The image was loaded onto the second engine, from the same recipe as on the first.
    let label = |docker: &mut std::process::Command| {
        let output = docker.output().unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let format = "{{index .Config.Labels \"maxions.recipe\"}}";
    let here = label(std::process::Command::new("docker").args([
        "image",
        "inspect",
        "--format",
        format,
        SANDBOX_IMAGE,
    ]));
    let there = label(&mut second.docker(&["image", "inspect", "--format", format, SANDBOX_IMAGE]));
    assert!(!here.is_empty());
    assert_eq!(
        here, there,
        "the second engine has the image from the same recipe"
    );
    let output = daemon.output();
    assert!(
        output.contains("loading the image onto the engine"),
        "{output}"
    );

    // Status shows each engine with its capacity, and what ran where.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_maxions"))
        .current_dir(&root)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let listed: BTreeMap<String, (String, u64)> = status["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                (
                    e["state"].as_str().unwrap().to_owned(),
                    e["capacity"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(listed["first"], ("up".to_owned(), 1));
    assert_eq!(listed["second"], ("up".to_owned(), 2));
    let list = daemon.get_json("/maxions?limit=50");
    let far_summary = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == "far0")
        .cloned()
        .unwrap();
    assert_eq!(far_summary["engine"], "second", "{far_summary}");
    let metrics = String::from_utf8(daemon.call("GET", "/metrics", None).body).unwrap();
    for line in [
        "maxions_engine_up{engine=\"first\"} 1",
        "maxions_engine_up{engine=\"second\"} 1",
        "maxions_engine_capacity{engine=\"second\"} 2",
        "maxions_engine_runs{engine=\"second\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    assert!(
        daemon.stop().is_some_and(|s| s.success()),
        "{}",
        daemon.output()
    );
    assert_eq!(
        second.containers(),
        Vec::<String>::new(),
        "no container is left"
    );
}

#[test]
fn a_run_the_second_engine_drops_is_interrupted_requeued_and_finished_on_the_first() {
    let Some((_turn, mut second)) = second_engine("engines-failover", true) else {
        return;
    };
    second.load(SANDBOX_IMAGE);
    // Listed first: with both idle, the run goes there.
    let project = Project::new(&engines_config(&[
        ("second", Some(&second), 1, &[]),
        ("first", None, 1, &[]),
    ]));
    let root = project.root();
    nap_blueprint(&root, "nap", 4, "");
    let mut daemon = ApiDaemon::start_with(&project, &[("MAXIONS_API_TOKEN", TOKEN)]);
    project.task("t", "nap", "nap");
    let tasks = root.join("tasks");
    wait_for("the step started on the second engine", &daemon, || {
        all_logs(&tasks).first().is_some_and(|l| {
            lines(l)
                .iter()
                .any(|e| e["type"] == "step_started" && e["step"] == "nap")
        })
    });
    assert_eq!(
        read_run(&all_logs(&tasks)[0]).engine.as_deref(),
        Some("second")
    );
    second.stop();
    wait_for("the run was tried again and succeeded", &daemon, || {
        std::fs::read_to_string(root.join("tasks/t.result.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|r| r["status"] == "succeeded")
    });
    let mut runs: Vec<Run> = all_logs(&tasks).iter().map(|l| read_run(l)).collect();
    runs.sort_by(|a, b| a.start.cmp(&b.start));
    assert_eq!(runs.len(), 2, "one log per attempt");
    let (first, again) = (&runs[0], &runs[1]);
    assert_eq!(first.status.as_deref(), Some("interrupted"));
    let reason = first.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("on engine `second`") && reason.contains("went away"),
        "the reason names the engine and what happened: {reason}"
    );
    assert_eq!(again.status.as_deref(), Some("succeeded"));
    assert_eq!(
        again.engine.as_deref(),
        Some("first"),
        "finished on the first engine"
    );
    assert!(
        again
            .trigger
            .as_deref()
            .unwrap_or_default()
            .contains("interrupted by the Docker engine `second` (attempt 2 of 3)"),
        "{:?}",
        again.trigger
    );
    // The second engine is down for the daemon, and up again once it answers.
    let engines = daemon.get_json("/engines");
    let second_state = engines["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "second")
        .cloned()
        .unwrap();
    assert_eq!(second_state["state"], "down", "{engines}");
    assert!(
        second_state["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    second.start_again();
    wait_for("the second engine is up again", &daemon, || {
        daemon.get_json("/engines")["engines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "second" && e["state"] == "up")
    });
    let output = daemon.output();
    assert!(
        output.contains("marked down") || output.contains("went away under a run"),
        "{output}"
    );
    assert!(output.contains("runs are placed on it again"), "{output}");
    assert!(
        daemon.stop().is_some_and(|s| s.success()),
        "{}",
        daemon.output()
    );
    // What the dropped run left on the second engine went when it answered again.
    let started = Instant::now();
    while !second.containers().is_empty() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_engine_over_tls_refuses_a_client_without_the_certificate() {
    let Some((_turn, second)) = second_engine("engines-tls", true) else {
        return;
    };
    let tls = second.tls.clone().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let good = DockerEngine::connect_endpoint(&Endpoint {
            host: tls.host.clone(),
            tls: Some(tls.client.clone()),
        })
        .await;
        assert!(good.is_ok(), "{:?}", good.err().map(|e| e.to_string()));
        // Plain HTTP to the TLS port: refused.
        let plain = DockerEngine::connect_to(&tls.host).await;
        assert!(plain.is_err(), "plain HTTP is not served");
        // A client certificate of another CA: refused by the engine.
        let other = tempfile::tempdir().unwrap();
        let script = format!(
            "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -out cert.pem -days 1 -subj /CN=stranger 2>/dev/null && cp {ca} ca.pem",
            d = other.path().display(),
            ca = tls.client.join("ca.pem").display()
        );
        assert!(std::process::Command::new("sh").args(["-c", &script]).status().unwrap().success());
        let stranger = DockerEngine::connect_endpoint(&Endpoint {
            host: tls.host.clone(),
            tls: Some(other.path().to_path_buf()),
        })
        .await;
        let error = stranger.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("cannot reach the Docker engine"), "{error}");
        assert!(error.contains(&tls.host), "the message names the engine: {error}");
    });
}

/// A tiny HTTP server inside the engine's network namespace (where its `host`-network
/// containers are): a thread moved into it, listening on its loopback.
fn serve_in(netns: &Path) -> u16 {
    let file = std::fs::File::open(netns).expect("the engine's network namespace");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        for stream in listener.incoming() {
            use std::io::{Read, Write};
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nfar server",
            );
        }
    });
    rx.recv().unwrap()
}

#[test]
fn the_allowlist_holds_for_a_sandbox_on_the_second_engine() {
    let Some((_turn, second)) = second_engine("engines-egress", true) else {
        return;
    };
    second.load(SANDBOX_IMAGE);
    second.load(EGRESS_IMAGE);
    let port = serve_in(&second.netns());
    let tls = second.tls.clone().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let loopback = "127.0.0.1".parse().unwrap();
        let engine = DockerEngine::connect_endpoint(&Endpoint {
            host: tls.host.clone(),
            tls: Some(tls.client.clone()),
        })
        .await
        .expect("the second engine over TLS")
        .with_instance("test-engines-egress")
        .with_egress_to_loopback_for_tests(StaticResolver::new())
        .with_egress_container(EgressContainer {
            // The engine's own network: its namespace's loopback, where the server listens.
            network: "host".to_owned(),
            resolve: vec![
                ("far.test".to_owned(), loopback),
                ("other.test".to_owned(), loopback),
            ],
            ..EgressContainer::default()
        });
        let events = Arc::new(Mutex::new(Vec::<EgressEvent>::new()));
        let mut spec = crate::support::docker::spec("engines-egress");
        spec.network =
            NetworkPolicy::Allowlist(EgressPolicy::parse([format!("far.test:{port}")]).unwrap());
        spec.on_egress = Some({
            let events = Arc::clone(&events);
            Arc::new(move |event| events.lock().unwrap().push(event))
        });
        let sandbox = engine.create(&spec).await.expect("a sandbox on the second engine");
        let script = format!(
            "curl -sS --max-time 10 http://far.test:{port}/ ; echo; \
             curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}' http://other.test:{port}/ ; echo"
        );
        let (code, stdout, stderr) = crate::egress_container::sh(&*sandbox, &script).await;
        assert_eq!(code, 0, "{stderr}");
        let got: Vec<&str> = stdout.lines().collect();
        assert_eq!(got, ["far server", "403"], "{stdout}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while events.lock().unwrap().len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let decisions: Vec<_> = events
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.host.clone().unwrap_or_default(), e.decision))
            .collect();
        assert_eq!(
            decisions,
            [
                ("far.test".to_owned(), Decision::Allowed),
                ("other.test".to_owned(), Decision::Denied)
            ],
            "the decisions came back from the second engine"
        );
        sandbox.destroy().await.unwrap();
    });
    assert_eq!(
        second.containers(),
        Vec::<String>::new(),
        "no container is left"
    );
    assert_eq!(second.volumes(), Vec::<String>::new(), "no volume is left");
}
