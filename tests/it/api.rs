//! The HTTP API end to end: a real `maxions daemon` process, real containers, real HTTP on
//! 127.0.0.1. (Handler-level tests, without a port, are in `src/api`.)

use serde_json::Value;

use crate::support::api::{ApiDaemon, Project};
use crate::support::http::Client;

/// A task submitted through the API runs, and every route tells the same story about it: the
/// list, the detail with its steps, the JSONL log, and the live stream from its first event to
/// `event: end`.
#[test]
fn a_submitted_task_runs_and_every_route_shows_it() {
    if !crate::support::docker::available("a_submitted_task_runs_and_every_route_shows_it") {
        return;
    }
    let project = Project::new("concurrency: 1\n");
    let daemon = ApiDaemon::start(&project);

    let health = Client::from_url(&daemon.url).get("/healthz").send();
    assert_eq!(health.status(), 200, "{}", health.text());
    assert_eq!(health.json()["status"], "ok");

    let answer = daemon.submit("hello", &project.task_yaml("quick", "say hello"));
    assert_eq!(answer.status(), 201, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["task_file"], "hello.yaml");
    let id = body["run"]["id"].as_str().expect("a queued run").to_owned();
    assert_eq!(
        answer.header("location"),
        Some(format!("/maxions/{id}").as_str())
    );
    assert!(project.root().join("tasks/hello.yaml").is_file());

    // The stream, opened right away, follows the run from its first event to its end.
    let mut stream = daemon
        .client()
        .get(&format!("/maxions/{id}/stream"))
        .stream();
    let mut seqs = Vec::new();
    let mut types = Vec::new();
    let end = loop {
        let event = stream.next_event().expect("the stream ends with `end`");
        if event.event == "end" {
            break event;
        }
        let line: Value = serde_json::from_str(&event.data).expect("an event line");
        assert_eq!(event.id.as_deref(), Some(line["seq"].to_string().as_str()));
        seqs.push(line["seq"].as_u64().expect("seq"));
        types.push(line["type"].as_str().unwrap_or_default().to_owned());
    };
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{types:?}"
    );
    assert_eq!(types.first().map(String::as_str), Some("run_started"));
    assert_eq!(types.last().map(String::as_str), Some("run_finished"));
    let end: Value = serde_json::from_str(&end.data).expect("end data");
    assert_eq!(end["status"], "succeeded", "{}", daemon.output());

    let detail = daemon.get_json(&format!("/maxions/{id}"));
    assert_eq!(detail["status"], "succeeded");
    assert_eq!(detail["last_seq"], seqs.len());
    let steps: Vec<&str> = detail["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default())
        .collect();
    assert!(
        steps.contains(&"checkout") && steps.contains(&"hello"),
        "{detail}"
    );

    let list = daemon.get_json("/maxions?task=hello");
    assert_eq!(list["runs"][0]["id"], id.as_str(), "{list}");

    let logs = daemon.call("GET", &format!("/maxions/{id}/logs"), None);
    assert_eq!(logs.status(), 200);
    assert_eq!(logs.text().lines().count(), seqs.len());
    let tail = daemon.call("GET", &format!("/maxions/{id}/logs?after=2"), None);
    assert_eq!(tail.text().lines().count(), seqs.len() - 2);

    // Finished: it can be deleted (and is then gone), not killed.
    let kill = daemon.call("POST", &format!("/maxions/{id}/kill"), None);
    assert_eq!(kill.status(), 409, "{}", kill.text());
    let delete = daemon.call("DELETE", &format!("/maxions/{id}"), None);
    assert_eq!(delete.status(), 204, "{}", delete.text());
    assert_eq!(
        daemon.call("GET", &format!("/maxions/{id}"), None).status(),
        404
    );
}
