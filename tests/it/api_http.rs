//! The HTTP API as a client on the network sees it: a real `maxions daemon` on a free port of
//! 127.0.0.1, plain HTTP/1.1 (`support::http`), real runs in real containers. Who may call what
//! (the token, and never an echo of it), what bad input gets, which states refuse which action,
//! and the event stream's promises: a client that loses its connection and comes back with
//! `Last-Event-ID` misses nothing and gets nothing twice, and a hundred clients on one run all
//! get the same, complete story.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::api::{ApiDaemon, PATIENCE, Project, TOKEN};
use crate::support::http::{Client, Event, Response};
use crate::support::write;

/// A run id in the daemon's format that no run has.
const UNKNOWN: &str = "20990101T000000-abcdef";

/// `lines`: checkout, then `line N` for N = 1..=100, 50 ms apart (about 5 s of output).
const LINES: &str = "name: lines\nsandbox:\n  network: none\n  timeout: 5m\nsteps:\n  - id: checkout\n    checkout: {}\n  - id: count\n    run: |\n      i=1\n      while [ $i -le 100 ]; do echo \"line $i\"; i=$((i+1)); sleep 0.05; done\n";

/// The daemon started on `project`, with a client that sends the token.
fn start(project: &Project) -> (ApiDaemon, Client) {
    write(&project.root(), "blueprints/lines.yaml", LINES);
    let daemon = ApiDaemon::start(project);
    let client = Client::from_url(&daemon.url).token(&daemon.token);
    (daemon, client)
}

/// Submits `tasks/<name>.yaml` (JSON body) and returns the queued run's id.
fn submit(client: &Client, project: &Project, name: &str, blueprint: &str) -> String {
    let answer = client
        .post("/maxions")
        .json(&json!({"name": name, "yaml": project.task_yaml(blueprint, name)}))
        .send()
        .expect(201)
        .json();
    answer["run"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("the answer names the queued run: {answer}"))
        .to_owned()
}

/// Polls `GET /maxions/{id}` until `check` accepts it.
fn wait_run(client: &Client, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let response = client.get(&format!("/maxions/{id}")).send();
        if response.status() == 200 {
            let run = response.json();
            if check(&run) {
                return run;
            }
        }
        assert!(
            started.elapsed() < PATIENCE,
            "run {id}: {what} did not happen within {PATIENCE:?}; last answer: {}",
            response.everything()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finished(run: &Value) -> bool {
    !matches!(run["status"].as_str(), Some("queued" | "running") | None)
}

/// The events of a stream, checked: each `message` carries one log line whose `seq` is its
/// `id`. Returns the lines' seqs.
fn seqs(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| {
            let line = e.json();
            let seq = line["seq"].as_u64().expect("every line has a seq");
            assert_eq!(e.id.as_deref(), Some(seq.to_string().as_str()), "{e:?}");
            seq
        })
        .collect()
}

/// Asserts that `events` tell a whole run: seqs 1..=N with no gap and no repeat, the last line
/// `run_finished`, then `event: end` with the run's status, and nothing after it.
#[track_caller]
fn assert_whole_run(events: &[Event], status: &str) {
    let seqs = seqs(events);
    let n = seqs.len() as u64;
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "seq 1..={n}, each once, in order"
    );
    let (end, lines) = events.split_last().expect("some events");
    assert_eq!(end.event, "end", "the stream's last event: {end:?}");
    assert_eq!(end.json()["status"], status, "{end:?}");
    let last = lines.last().expect("lines before the end").json();
    assert_eq!(last["type"], "run_finished", "{last}");
    assert_eq!(last["status"], status, "{last}");
}

// ---------------------------------------------------------------------------------------------
// Who may call what.

/// Every route but the public ones refuses a missing, wrong or malformed token with 401, JSON
/// and `WWW-Authenticate: Bearer`; with the token they answer. No response, refused or not,
/// carries the token (nor the wrong one a caller tried), and neither does the daemon's log.
#[test]
fn every_route_but_the_public_ones_needs_the_token_and_none_echoes_it() {
    if !crate::support::docker::available(
        "every_route_but_the_public_ones_needs_the_token_and_none_echoes_it",
    ) {
        return;
    }
    let project = Project::new("concurrency: 1\n");
    let (daemon, client) = start(&project);
    let run = submit(&client, &project, "hello", "quick");
    wait_run(&client, &run, "the run finishing", finished);

    let wrong = "wrong-token-5d0c2b81";
    // What each route answers with the right token, for a request that changes nothing.
    let routes: Vec<(&str, String, u16)> = vec![
        ("GET", "/maxions".into(), 200),
        ("POST", "/maxions".into(), 415),
        ("GET", format!("/maxions/{run}"), 200),
        ("DELETE", format!("/maxions/{UNKNOWN}"), 404),
        ("POST", format!("/maxions/{run}/kill"), 409),
        ("POST", format!("/maxions/{UNKNOWN}/rerun"), 404),
        ("GET", format!("/maxions/{run}/logs"), 200),
        ("GET", format!("/maxions/{run}/stream"), 200),
        ("GET", "/schedules".into(), 200),
        ("GET", "/metrics".into(), 200),
        ("GET", "/openapi.json".into(), 200),
    ];
    let mut seen: Vec<Response> = Vec::new();
    for (method, path, with_token) in &routes {
        for auth in [
            None,
            Some(format!("Bearer {wrong}")),
            Some(format!("Bearer {TOKEN}x")),
            Some(format!("Basic {TOKEN}")),
            Some(TOKEN.to_owned()),
            Some("Bearer".to_owned()),
        ] {
            let response = client.request(method, path).auth(auth.as_deref()).send();
            assert!(
                response
                    .header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{method} {path} with {auth:?}: a 401 says which scheme: {}",
                response.everything()
            );
            response.clone().expect_error(401, "unauthorized");
            seen.push(response);
        }
        let response = client.request(method, path).send();
        assert_eq!(
            response.status(),
            *with_token,
            "{method} {path} with the token: {}",
            response.everything()
        );
        seen.push(response);
    }
    for path in ["/healthz", "/api/config", "/"] {
        let response = client.get(path).auth(None).send().expect(200);
        seen.push(response);
    }
    assert_eq!(
        client.get("/api/config").auth(None).send().json()["auth"],
        "token"
    );

    for response in &seen {
        let everything = response.everything();
        assert!(
            !everything.contains(TOKEN) && !everything.contains(wrong),
            "a response echoes a token:\n{everything}"
        );
    }
    assert!(
        !daemon.output().contains(TOKEN),
        "the daemon's log holds the token:\n{}",
        daemon.output()
    );
}

/// Without `MAXIONS_API_TOKEN` the daemon makes a token, keeps it in `api-token` readable by
/// its owner only, logs where it is but never what it is, and requires it.
#[test]
fn a_generated_token_is_kept_private_and_never_logged() {
    if !crate::support::docker::available("a_generated_token_is_kept_private_and_never_logged") {
        return;
    }
    let project = Project::new("");
    let daemon = ApiDaemon::start_with(&project, &[]);
    let file = project.root().join(".maxions/api-token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file)
            .expect("the token file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the token file's mode");
    let token = daemon.token.clone();
    assert!(
        token.len() >= 32,
        "a token long enough not to guess: {} chars",
        token.len()
    );
    let anonymous = Client::from_url(&daemon.url);
    anonymous
        .get("/maxions")
        .send()
        .expect_error(401, "unauthorized");
    anonymous
        .clone()
        .token(&token)
        .get("/maxions")
        .send()
        .expect(200);
    let log = daemon.output();
    assert!(
        log.contains("api-token"),
        "the log says where the token is:\n{log}"
    );
    assert!(!log.contains(&token), "the log holds the token:\n{log}");
}

/// `api.open: true` on loopback needs no token, and says so; but it answers only requests
/// naming a loopback host, so a page that rebinds its own name to 127.0.0.1 gets nothing.
#[test]
fn an_open_api_needs_no_token_but_answers_only_loopback_hosts() {
    if !crate::support::docker::available(
        "an_open_api_needs_no_token_but_answers_only_loopback_hosts",
    ) {
        return;
    }
    let project = Project::new("api:\n  listen: 127.0.0.1:0\n  open: true\n");
    let daemon = ApiDaemon::start_with(&project, &[]);
    let anonymous = Client::from_url(&daemon.url);
    assert_eq!(
        anonymous.get("/api/config").send().expect(200).json()["auth"],
        "open"
    );
    anonymous.get("/maxions").send().expect(200);
    anonymous
        .get("/maxions")
        .header("Host", "localhost")
        .send()
        .expect(200);
    anonymous
        .get("/maxions")
        .header("Host", "rebound.example:7878")
        .send()
        .expect_error(403, "forbidden");
    assert!(
        !project.root().join(".maxions/api-token").exists(),
        "an open API makes no token"
    );
}

/// A browser page of another site cannot use the API, even where the browser would add the
/// token (CORS is off): a foreign `Origin` or `Sec-Fetch-Site: cross-site` is 403; the
/// dashboard's own origin is served.
#[test]
fn requests_from_another_site_are_refused_even_with_the_token() {
    if !crate::support::docker::available(
        "requests_from_another_site_are_refused_even_with_the_token",
    ) {
        return;
    }
    let project = Project::new("");
    let (daemon, client) = start(&project);
    for (name, value) in [
        ("Origin", "http://evil.example"),
        ("Origin", "null"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        client
            .get("/maxions")
            .header(name, value)
            .send()
            .expect_error(403, "forbidden");
        client
            .post("/maxions")
            .header(name, value)
            .json(&json!({"name": "x", "yaml": project.task_yaml("quick", "x")}))
            .send()
            .expect_error(403, "forbidden");
    }
    client
        .get("/maxions")
        .header("Origin", &format!("http://{}", client.addr()))
        .header("Sec-Fetch-Site", "same-origin")
        .send()
        .expect(200);
    assert_tasks_folder_empty(&project);
    drop(daemon);
}

// ---------------------------------------------------------------------------------------------
// Bad input.

/// What a caller gets for a body that is not a task file: a JSON error with a code and words,
/// 400 for malformed JSON, 415 for a media type the API does not take, 413 over the size limit;
/// and nothing is written into the tasks folder.
#[test]
fn malformed_bodies_are_refused_and_write_nothing() {
    if !crate::support::docker::available("malformed_bodies_are_refused_and_write_nothing") {
        return;
    }
    let project = Project::new("");
    let (_daemon, client) = start(&project);
    let yaml = project.task_yaml("quick", "hello");

    client
        .post("/maxions")
        .body("application/json", r#"{"name": "x", "yaml": "#)
        .send()
        .expect_error(400, "bad_request");
    client
        .post("/maxions")
        .json(&json!({"name": "x", "yaml": yaml, "branch": "main"}))
        .send()
        .expect_error(400, "bad_request");
    client
        .post("/maxions")
        .json(&json!(["not", "an", "object"]))
        .send()
        .expect_error(400, "bad_request");
    client
        .post("/maxions")
        .body("application/xml", "<task/>")
        .send()
        .expect_error(415, "unsupported_media_type");
    client
        .post("/maxions?name=x")
        .send()
        .expect_error(415, "unsupported_media_type");
    client
        .post("/maxions?name=x")
        .body("application/yaml", vec![0xff, 0xfe, b'\n'])
        .send()
        .expect_error(400, "bad_request");

    // Over the limit, whether the whole body is one JSON string or the raw YAML.
    let big = format!("{yaml}# {}\n", "x".repeat(maxions::api::BODY_LIMIT));
    client
        .post("/maxions")
        .json(&json!({"name": "big", "yaml": big}))
        .send()
        .expect_error(413, "too_large");
    client
        .post("/maxions?name=big")
        .body("application/yaml", big)
        .send()
        .expect_error(413, "too_large");

    assert_tasks_folder_empty(&project);
}

/// A task file that `maxions validate` would refuse gets 400 `invalid_task` with its
/// diagnostics located in the submitted text (`file` is `<name>.yaml`); one whose repository or
/// blueprint lies outside what the daemon may read is refused the same way before anything is
/// read; a name that is a path is refused. Nothing is written for any of them.
#[test]
fn invalid_tasks_and_paths_out_of_bounds_are_refused_with_located_diagnostics() {
    if !crate::support::docker::available(
        "invalid_tasks_and_paths_out_of_bounds_are_refused_with_located_diagnostics",
    ) {
        return;
    }
    let project = Project::new("");
    let (_daemon, client) = start(&project);
    let origin = project.origin.display().to_string();

    let diagnostic = |name: &str, yaml: &str| -> Value {
        let error = client
            .post("/maxions")
            .json(&json!({"name": name, "yaml": yaml}))
            .send()
            .expect_error(400, "invalid_task");
        let diagnostics = error["diagnostics"].as_array().expect("diagnostics");
        assert!(!diagnostics.is_empty(), "{error}");
        let first = diagnostics[0].clone();
        assert_eq!(first["file"], format!("{name}.yaml"), "{error}");
        assert_eq!(first["severity"], "error", "{error}");
        first
    };

    let unknown = diagnostic(
        "unknown",
        &format!("task: x\nrepo: file://{origin}\nblueprint: quick\nbogus: 1\n"),
    );
    assert_eq!(unknown["code"], "unknown-field");
    assert_eq!(
        (unknown["line"].as_u64(), unknown["column"].as_u64()),
        (Some(4), Some(1))
    );

    let syntax = diagnostic("syntax", "task: [x\nrepo: a/b\n");
    assert_eq!(syntax["code"], "yaml-syntax");
    assert_eq!(syntax["line"], 2, "{syntax}");

    // As YAML with `?name=`, the same diagnostics.
    let error = client
        .post("/maxions?name=raw")
        .body(
            "application/yaml",
            format!("task: x\nrepo: file://{origin}\nblueprint: nowhere\n"),
        )
        .send()
        .expect_error(400, "invalid_task");
    assert_eq!(error["diagnostics"][0]["file"], "raw.yaml", "{error}");
    assert_eq!(error["diagnostics"][0]["line"], 3, "{error}");

    let outside = tempfile::tempdir().expect("a directory outside the project");
    crate::support::api::git(outside.path(), &["init", "-q", "--bare"]);
    let repo = diagnostic(
        "elsewhere",
        &format!(
            "task: x\nrepo: file://{}\nblueprint: quick\n",
            outside.path().display()
        ),
    );
    assert_eq!(repo["code"], "local-repo-outside", "{repo}");
    assert_eq!(
        (repo["line"].as_u64(), repo["column"].as_u64()),
        (Some(2), Some(7))
    );

    write(
        outside.path(),
        "evil.yaml",
        "name: evil\nsteps:\n  - id: a\n    run: \"true\"\n",
    );
    for blueprint in [
        format!("{}/evil.yaml", outside.path().display()),
        "../../../../../../../../etc/passwd".to_owned(),
        "../blueprints/../../x.yaml".to_owned(),
    ] {
        let refused = diagnostic(
            "escape",
            &format!("task: x\nrepo: file://{origin}\nblueprint: {blueprint}\n"),
        );
        assert_eq!(
            refused["code"], "outside-blueprints-dir",
            "{blueprint}: {refused}"
        );
        assert_eq!(refused["line"], 3, "{refused}");
    }

    let yaml = project.task_yaml("quick", "hello");
    for name in [
        "a/b",
        "..",
        "../x",
        "x/../../y",
        ".hidden",
        "UPPER",
        "x.yaml",
        "a\\b",
    ] {
        let error = client
            .post("/maxions")
            .json(&json!({"name": name, "yaml": yaml}))
            .send()
            .expect_error(400, "bad_request");
        assert!(
            error["message"]
                .as_str()
                .unwrap_or_default()
                .contains("name"),
            "{name:?}: {error}"
        );
    }
    client
        .post("/maxions?name=..%2Fx")
        .body("application/yaml", yaml)
        .send()
        .expect_error(400, "bad_request");

    assert_tasks_folder_empty(&project);
}

#[track_caller]
fn assert_tasks_folder_empty(project: &Project) {
    let left: Vec<String> = std::fs::read_dir(project.root().join("tasks"))
        .expect("the tasks folder")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "refused submissions left files: {left:?}");
}

// ---------------------------------------------------------------------------------------------
// States: 404 and 409.

/// An unknown run is 404 on every route that takes an id; a run is not deleted while queued or
/// running, nor killed once finished (409); a queued run killed ends `cancelled` at once; a task
/// name taken is 409.
#[test]
fn unknown_runs_are_not_found_and_actions_that_do_not_fit_the_state_conflict() {
    if !crate::support::docker::available(
        "unknown_runs_are_not_found_and_actions_that_do_not_fit_the_state_conflict",
    ) {
        return;
    }
    let project = Project::new("concurrency: 1\n");
    let (daemon, client) = start(&project);

    for id in [UNKNOWN, "nope", "..", "a.b"] {
        for (method, path) in [
            ("GET", format!("/maxions/{id}")),
            ("DELETE", format!("/maxions/{id}")),
            ("POST", format!("/maxions/{id}/kill")),
            ("POST", format!("/maxions/{id}/rerun")),
            ("GET", format!("/maxions/{id}/logs")),
            ("GET", format!("/maxions/{id}/stream")),
        ] {
            client
                .request(method, &path)
                .send()
                .expect_error(404, "not_found");
        }
    }

    // One run holds the only slot; the next waits in the queue.
    let running = submit(&client, &project, "slow", "slow");
    wait_run(&client, &running, "the run starting", |r| {
        r["status"] == "running"
    });
    let queued = submit(&client, &project, "waiting", "quick");
    assert_eq!(
        client
            .get(&format!("/maxions/{queued}"))
            .send()
            .expect(200)
            .json()["status"],
        "queued"
    );
    for id in [&running, &queued] {
        client
            .delete(&format!("/maxions/{id}"))
            .send()
            .expect_error(409, "conflict");
    }
    client
        .post("/maxions")
        .json(&json!({"name": "slow", "yaml": project.task_yaml("quick", "again")}))
        .send()
        .expect_error(409, "conflict");

    // A client already following the queued run learns of its end.
    let mut following = client.get(&format!("/maxions/{queued}/stream")).stream();
    assert_eq!(following.head.status, 200);
    let killed = client
        .post(&format!("/maxions/{queued}/kill"))
        .send()
        .expect(202)
        .json();
    assert_eq!(killed["id"], queued.as_str());
    let cancelled = client
        .get(&format!("/maxions/{queued}"))
        .send()
        .expect(200)
        .json();
    assert_eq!(
        cancelled["status"], "cancelled",
        "a queued run ends at once: {cancelled}"
    );
    let events = following.rest(Duration::from_secs(20));
    let end = events.last().expect("the stream ends");
    assert_eq!(end.event, "end", "{events:?}");
    assert_eq!(end.json()["status"], "cancelled", "{events:?}");

    client
        .post(&format!("/maxions/{running}/kill"))
        .send()
        .expect(202);
    let ended = wait_run(&client, &running, "the run ending", finished);
    assert_eq!(ended["status"], "cancelled", "{ended}");
    for id in [&running, &queued] {
        client
            .post(&format!("/maxions/{id}/kill"))
            .send()
            .expect_error(409, "conflict");
        client.delete(&format!("/maxions/{id}")).send().expect(204);
        client
            .get(&format!("/maxions/{id}"))
            .send()
            .expect_error(404, "not_found");
    }
    drop(daemon);
}

/// Every submission and every re-run answers with the run it queued, at once: the daemon
/// publishes what a command did before it answers, so the handler that describes the new run
/// finds it (before, a re-run now and then answered 500 "the new run is not in the daemon's
/// queue", and a submission `"run": null`).
#[test]
fn submissions_and_reruns_answer_with_the_run_they_queued() {
    if !crate::support::docker::available("submissions_and_reruns_answer_with_the_run_they_queued")
    {
        return;
    }
    let project = Project::new("concurrency: 1\n");
    let (_daemon, client) = start(&project);
    let first = submit(&client, &project, "hello", "quick");
    wait_run(&client, &first, "the run finishing", finished);
    // The one slot stays taken, so that what is queued next stays queued.
    let blocker = submit(&client, &project, "slow", "slow");
    wait_run(&client, &blocker, "the run starting", |r| {
        r["status"] == "running"
    });

    let mut ids = BTreeSet::new();
    for round in 0..25 {
        let answer = client
            .post(&format!("/maxions/{first}/rerun"))
            .send()
            .expect(201);
        let rerun = answer.json();
        let id = rerun["id"].as_str().expect("the new run's id").to_owned();
        assert_eq!(rerun["status"], "queued", "round {round}: {rerun}");
        assert_eq!(rerun["task"], "hello", "{rerun}");
        assert_eq!(
            answer.header("location"),
            Some(format!("/maxions/{id}").as_str())
        );
        assert!(
            ids.insert(id.clone()),
            "round {round}: a new run each time, not {id} again"
        );
        client
            .post(&format!("/maxions/{id}/kill"))
            .send()
            .expect(202);

        let name = format!("submitted-{round}");
        let answer = client
            .post("/maxions")
            .json(&json!({"name": name, "yaml": project.task_yaml("quick", &name)}))
            .send()
            .expect(201)
            .json();
        assert_eq!(answer["run"]["status"], "queued", "round {round}: {answer}");
        let id = answer["run"]["id"]
            .as_str()
            .expect("the queued run")
            .to_owned();
        client
            .post(&format!("/maxions/{id}/kill"))
            .send()
            .expect(202);
    }
    client
        .post(&format!("/maxions/{blocker}/kill"))
        .send()
        .expect(202);
}

/// A task with `schedule:` submitted through the API is scheduled, not run: the answer has its
/// next slots (in its timezone, with the offset) and no run, and `GET /schedules` lists it. A
/// YAML body without `?name=` gets a name made from the task.
#[test]
fn a_submitted_scheduled_task_is_scheduled_and_a_nameless_one_is_named_from_its_task() {
    if !crate::support::docker::available(
        "a_submitted_scheduled_task_is_scheduled_and_a_nameless_one_is_named_from_its_task",
    ) {
        return;
    }
    let project = Project::new("");
    let (_daemon, client) = start(&project);
    let yaml = format!(
        "{}schedule: \"0 9 * * 1\"\ntimezone: Europe/Berlin\n",
        project.task_yaml("quick", "Bump the deps")
    );
    let answer = client
        .post("/maxions")
        .json(&json!({"name": "nightly", "yaml": yaml}))
        .send()
        .expect(201);
    assert_eq!(answer.header("location"), None, "no run to point at");
    let body = answer.json();
    assert_eq!(body["run"], Value::Null, "{body}");
    let next = body["schedule"]["next"].as_array().expect("the next slots");
    assert_eq!(next.len(), 3, "{body}");
    for slot in next {
        let slot = slot.as_str().expect("an RFC 3339 time");
        let parsed = chrono::DateTime::parse_from_rfc3339(slot).expect("RFC 3339");
        assert_eq!(
            parsed.format("%a %H:%M").to_string(),
            "Mon 09:00",
            "a Monday 9:00 in Berlin: {slot}"
        );
        assert!(
            slot.ends_with("+01:00") || slot.ends_with("+02:00"),
            "{slot}"
        );
    }
    let schedules = client.get("/schedules").send().expect(200).json();
    let listed = &schedules["schedules"][0];
    assert_eq!(listed["task"], "nightly", "{schedules}");
    assert_eq!(listed["schedule"], "0 9 * * 1");
    assert_eq!(listed["timezone"], "Europe/Berlin");
    assert!(
        client.get("/maxions").send().expect(200).json()["runs"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );

    let named = client
        .post("/maxions")
        .body(
            "application/yaml",
            project.task_yaml("quick", "Add a dark mode toggle"),
        )
        .send()
        .expect(201)
        .json();
    let name = named["task"].as_str().expect("a name").to_owned();
    assert!(name.starts_with("add-a-dark-mode-toggle-"), "{named}");
    assert_eq!(named["task_file"], format!("{name}.yaml"));
    assert!(
        project
            .root()
            .join("tasks")
            .join(format!("{name}.yaml"))
            .is_file()
    );
}

// ---------------------------------------------------------------------------------------------
// The event stream.

/// A client that loses its connection mid-run and reconnects with `Last-Event-ID` gets exactly
/// what it missed: the two halves together are seq 1..N, no gap, no repeat, ending with
/// `run_finished` and `event: end`. Coming back after the end gives just the end.
#[test]
fn a_stream_cut_mid_run_resumes_from_last_event_id_without_gap_or_repeat() {
    if !crate::support::docker::available(
        "a_stream_cut_mid_run_resumes_from_last_event_id_without_gap_or_repeat",
    ) {
        return;
    }
    let project = Project::new("");
    let (_daemon, client) = start(&project);
    let id = submit(&client, &project, "lines", "lines");
    let path = format!("/maxions/{id}/stream");

    let mut stream = client.get(&path).stream();
    assert_eq!(stream.head.status, 200);
    assert!(
        stream
            .head
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/event-stream")),
        "{:?}",
        stream.head
    );
    // Read into the counting step, then drop the connection.
    let mut before = Vec::new();
    loop {
        let event = stream.next_event().expect("the run goes on");
        let output = event.event == "message" && event.json()["type"] == "output";
        before.push(event);
        if output && before.len() >= 8 {
            break;
        }
    }
    stream.cut();
    let last: u64 = before
        .last()
        .and_then(|e| e.id.as_deref())
        .and_then(|id| id.parse().ok())
        .expect("the last event's id");
    // The run writes on while nobody listens.
    wait_run(&client, &id, "more events while disconnected", |r| {
        r["last_seq"].as_u64().is_some_and(|s| s > last + 10)
    });

    let mut resumed = client
        .get(&path)
        .header("Last-Event-ID", &last.to_string())
        .stream();
    assert_eq!(resumed.head.status, 200);
    let after = resumed.rest(PATIENCE);
    assert_eq!(
        seqs(&after).first(),
        Some(&(last + 1)),
        "the resumed stream starts right after {last}"
    );
    let mut union = before.clone();
    union.extend(after.iter().cloned());
    assert_whole_run(&union, "succeeded");

    // The log and the stream agree.
    let logs = client
        .get(&format!("/maxions/{id}/logs"))
        .send()
        .expect(200);
    assert_eq!(logs.text().lines().count(), seqs(&union).len());

    // A client that had every line but lost the connection before `end` (or names a seq past
    // the end) gets just the end, by header or by `?after=`, rather than heartbeats for ever.
    let n = seqs(&union).len();
    for request in [
        client.get(&path).header("Last-Event-ID", &n.to_string()),
        client.get(&format!("{path}?after={n}")),
        client
            .get(&path)
            .header("Last-Event-ID", &(n + 5).to_string()),
    ] {
        let rest = request.stream().rest(Duration::from_secs(10));
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert_eq!(rest[0].event, "end");
        assert_eq!(rest[0].json()["status"], "succeeded");
    }
}

/// SIGTERM with clients following a running run: their streams end (the server does not wait
/// on them), and the daemon stops within its grace period and exits 0.
#[test]
fn sigterm_ends_the_open_streams_and_the_daemon_stops() {
    if !crate::support::docker::available("sigterm_ends_the_open_streams_and_the_daemon_stops") {
        return;
    }
    let project = Project::new("shutdown_grace: 2s\n");
    let (mut daemon, client) = start(&project);
    let id = submit(&client, &project, "slow", "slow");
    wait_run(&client, &id, "the run starting", |r| {
        r["status"] == "running"
    });
    let mut streams: Vec<_> = (0..5)
        .map(|_| client.get(&format!("/maxions/{id}/stream")).stream())
        .collect();
    for stream in &mut streams {
        assert!(stream.next_event().is_some(), "the stream is live");
    }
    let asked = Instant::now();
    let status = daemon
        .stop()
        .expect("the daemon exits within 30 s of SIGTERM");
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        daemon.output()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "the daemon took {:?} to stop with clients connected",
        asked.elapsed()
    );
    for mut stream in streams {
        // Whatever was sent before the close, the stream ends rather than hangs.
        stream.deadline(Duration::from_secs(10));
        while let Ok(Some(_)) = stream.try_next_event() {}
    }
}

/// A hundred clients following one run at once each get the identical, complete sequence:
/// 1..N, `run_finished`, `event: end`.
#[test]
fn a_hundred_clients_on_one_run_all_get_the_same_whole_stream() {
    if !crate::support::docker::available(
        "a_hundred_clients_on_one_run_all_get_the_same_whole_stream",
    ) {
        return;
    }
    const CLIENTS: usize = 100;
    let project = Project::new("");
    let (daemon, client) = start(&project);
    let id = submit(&client, &project, "lines", "lines");
    let path = format!("/maxions/{id}/stream");

    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let client = client.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                let mut stream = client.get(&path).stream();
                assert_eq!(stream.head.status, 200);
                stream.rest(PATIENCE)
            })
        })
        .collect();
    let streams: Vec<Vec<Event>> = threads
        .into_iter()
        .map(|t| t.join().expect("a client thread"))
        .collect();

    assert_whole_run(&streams[0], "succeeded");
    for (i, events) in streams.iter().enumerate() {
        assert_eq!(
            events,
            &streams[0],
            "client {i} got another story than client 0:\n{}",
            daemon.output()
        );
    }
    let lines = streams[0]
        .iter()
        .filter(|e| e.event == "message" && e.json()["type"] == "output")
        .flat_map(|e| {
            e.json()["text"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| l.starts_with("line "))
        .count();
    assert_eq!(lines, 100, "every line the step printed");
}
