//! The router driven without a port: a published view and a stand-in for the daemon's loop
//! that answers commands, a real project folder on disk, real requests through the service.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use super::*;
use crate::daemon::handle::{Command, Refusal, Submitted, View};

const TOKEN: &str = "unit-token";

struct World {
    dir: tempfile::TempDir,
    router: Router,
    /// What the stand-in loop was asked.
    asked: Arc<std::sync::Mutex<Vec<String>>>,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().canonicalize().expect("canonical");
        std::fs::create_dir_all(root.join("tasks")).expect("tasks");
        std::fs::create_dir_all(root.join("blueprints")).expect("blueprints");
        std::fs::create_dir_all(root.join("elsewhere")).expect("elsewhere");
        let blueprint =
            "name: quick\nsandbox:\n  network: none\nsteps:\n  - id: hello\n    run: echo hello\n";
        std::fs::write(root.join("blueprints/quick.yaml"), blueprint).expect("blueprint");
        std::fs::write(root.join("elsewhere/evil.yaml"), blueprint).expect("blueprint");
        let view = View {
            config: Arc::new(crate::config::DaemonConfig::default()),
            project: root.clone(),
            tasks_dir: root.join("tasks"),
            ..View::default()
        };
        let (_view_tx, view_rx) = watch::channel(Arc::new(view));
        let (commands, mut rx) = mpsc::channel::<Command>(8);
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&asked);
        tokio::spawn(async move {
            let _keep = _view_tx;
            while let Some(command) = rx.recv().await {
                match command {
                    Command::Submit { task, reply } => {
                        log.lock()
                            .unwrap()
                            .push(format!("submit {}", task.display()));
                        let _ = reply.send(Ok(Submitted::Ignored("stand-in".into())));
                    }
                    Command::Forget { run, reply } => {
                        log.lock().unwrap().push(format!("forget {run}"));
                        let _ = reply.send(Ok(()));
                    }
                    Command::Kill { run, reply, .. } => {
                        log.lock().unwrap().push(format!("kill {run}"));
                        let _ = reply.send(Err(Refusal::NotActive(run)));
                    }
                    Command::Rerun { task, reply, .. } => {
                        log.lock()
                            .unwrap()
                            .push(format!("rerun {}", task.display()));
                        let _ = reply.send(Err(Refusal::TaskGone(task)));
                    }
                }
            }
        });
        let handle = crate::daemon::handle::Handle {
            view: view_rx,
            commands,
        };
        let state = ApiState::new(handle, Arc::new(Hub::default()), Auth::token(TOKEN));
        Self {
            dir,
            router: router(state),
            asked,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().expect("canonical")
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Vec<(String, String)>, Vec<u8>) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, headers, body.to_vec())
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::get(path).header("host", "127.0.0.1:7878");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let (status, _, body) = self.send(request.body(Body::empty()).unwrap()).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn post_task(&self, name: &str, yaml: &str) -> (StatusCode, Value) {
        let body = serde_json::json!({ "name": name, "yaml": yaml }).to_string();
        let request = Request::post("/maxions")
            .header("host", "127.0.0.1:7878")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let (status, _, body) = self.send(request).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn repo(&self) -> String {
        let repo = self.root().join("repo.git");
        std::fs::create_dir_all(&repo).expect("repo dir");
        format!("file://{}", repo.display())
    }
}

fn log_line(seq: u64, event: &str) -> String {
    format!("{{\"ts\":\"2026-12-02T10:00:0{seq}.000Z\",\"run\":\"r\",\"seq\":{seq},{event}}}\n")
}

fn write_log(dir: &Path, stem: &str, id: &str, status: &str) {
    let runs = dir.join(format!("tasks/{stem}.runs"));
    std::fs::create_dir_all(&runs).expect("runs dir");
    let text = [
        log_line(1, r#""type":"run_started","task":"t","blueprint":"quick","repo":"r","branch":"maxions/t","base":"main""#),
        log_line(2, &format!(r#""type":"run_finished","status":"{status}","duration_ms":5"#)),
    ]
    .concat();
    std::fs::write(runs.join(format!("{id}.jsonl")), text).expect("log");
}

#[tokio::test]
async fn every_route_but_health_needs_the_token() {
    let world = World::new();
    assert_eq!(world.get("/healthz", None).await.0, StatusCode::OK);
    assert_eq!(world.get("/api/config", None).await.1["auth"], "token");
    for path in [
        "/maxions",
        "/schedules",
        "/metrics",
        "/openapi.json",
        "/maxions/x/logs",
    ] {
        let (status, body) = world.get(path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(body["error"], "unauthorized", "{path}");
        let (status, body) = world.get(path, Some("wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(!body.to_string().contains("wrong"), "{body}");
    }
    let (status, body) = world.get("/maxions", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["runs"], serde_json::json!([]));
    // The dashboard's page carries no data: it loads without a token.
    let (status, headers, _) = world
        .send(Request::get("/").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-security-policy" && v.contains("default-src 'none'"))
    );
}

#[tokio::test]
async fn errors_are_json_with_a_code() {
    let world = World::new();
    let (status, body) = world.get("/nope", Some(TOKEN)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = world.get("/maxions/no-such-run", Some(TOKEN)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = world.get("/maxions?limit=0", Some(TOKEN)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (status, body) = world.get("/maxions?limit=many", Some(TOKEN)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (status, _, body) = world
        .send(
            Request::put("/maxions")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"],
        "method_not_allowed"
    );
}

#[tokio::test]
async fn a_browser_on_another_site_is_refused() {
    let world = World::new();
    let request = Request::post("/maxions")
        .header("host", "127.0.0.1:7878")
        .header("origin", "https://evil.example")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "text/plain")
        .body(Body::from("task: x"))
        .unwrap();
    let (status, _, body) = world.send(request).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        std::fs::read_dir(world.root().join("tasks"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test]
async fn a_submitted_task_is_validated_then_written() {
    let world = World::new();
    // Invalid: located in the submitted text, and nothing written.
    let yaml = format!(
        "task: x\nrepo: {}\nblueprint: quick\nbranchh: maxions/x\n",
        world.repo()
    );
    let (status, body) = world.post_task("broken", &yaml).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_task");
    let located = body["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["code"] == "unknown-field")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(
        (located["file"].as_str(), located["line"].as_u64()),
        (Some("broken.yaml"), Some(4))
    );
    assert!(!world.root().join("tasks/broken.yaml").exists());
    let leftovers: Vec<_> = std::fs::read_dir(world.root().join("tasks"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A blueprint outside blueprints_dir is refused before it is read.
    let outside = format!(
        "task: x\nrepo: {}\nblueprint: ../elsewhere/evil.yaml\n",
        world.repo()
    );
    let (status, body) = world.post_task("outside", &outside).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["diagnostics"][0]["code"], "outside-blueprints-dir");
    assert_eq!(body["diagnostics"][0]["line"], 3);

    // A file:// repository outside the project's roots is refused.
    let far = "task: x\nrepo: file:///etc\nblueprint: quick\n";
    let (status, body) = world.post_task("far", far).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("/etc"), "{body}");

    // Names cannot leave the folder.
    let good = format!("task: x\nrepo: {}\nblueprint: quick\n", world.repo());
    for name in ["../x", "a/b", ".hidden", "x.yaml"] {
        let (status, body) = world.post_task(name, &good).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
    }

    // Valid: written, and the daemon told.
    let (status, body) = world.post_task("good", &good).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        std::fs::read_to_string(world.root().join("tasks/good.yaml")).unwrap(),
        good
    );
    assert_eq!(world.asked.lock().unwrap().len(), 1);
    // Once: a second with the same name is a conflict, and the file stays as it was.
    let (status, body) = world.post_task("good", "task: other\n").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        std::fs::read_to_string(world.root().join("tasks/good.yaml")).unwrap(),
        good
    );
}

#[tokio::test]
async fn bodies_have_a_size_and_a_type() {
    let world = World::new();
    let big = vec![b'a'; BODY_LIMIT + 1];
    let request = Request::post("/maxions")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/yaml")
        .body(Body::from(big))
        .unwrap();
    let (status, _, body) = world.send(request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"],
        "too_large"
    );
    let request = Request::post("/maxions")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "image/png")
        .body(Body::from("x"))
        .unwrap();
    let (status, _, _) = world.send(request).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn runs_on_disk_are_listed_newest_first_in_pages() {
    let world = World::new();
    write_log(&world.root(), "a", "20261202T100000-000001", "succeeded");
    write_log(&world.root(), "a", "20261202T100001-000002", "failed");
    write_log(&world.root(), "b", "20261202T100002-000003", "succeeded");
    let (_, page) = world.get("/maxions?limit=2", Some(TOKEN)).await;
    let ids: Vec<&str> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["20261202T100002-000003", "20261202T100001-000002"]);
    assert_eq!(page["next"], "20261202T100001-000002");
    let (_, rest) = world
        .get(
            "/maxions?limit=2&before=20261202T100001-000002",
            Some(TOKEN),
        )
        .await;
    assert_eq!(rest["runs"][0]["id"], "20261202T100000-000001");
    assert_eq!(rest["next"], Value::Null);
    let (_, failed) = world.get("/maxions?status=failed", Some(TOKEN)).await;
    assert_eq!(failed["runs"].as_array().unwrap().len(), 1);
    let (_, of_b) = world.get("/maxions?task=b", Some(TOKEN)).await;
    assert_eq!(of_b["runs"][0]["task_file"], "b.yaml");

    // Deleting a finished run removes its log.
    let request = Request::delete("/maxions/20261202T100000-000001")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = world.send(request).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        !world
            .root()
            .join("tasks/a.runs/20261202T100000-000001.jsonl")
            .exists()
    );
    assert_eq!(
        world
            .get("/maxions/20261202T100000-000001", Some(TOKEN))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn metrics_and_the_document_are_served() {
    let world = World::new();
    let request = Request::get("/metrics")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = world.send(request).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("# TYPE maxions_queue_depth gauge\nmaxions_queue_depth 0"),
        "{text}"
    );
    let (status, document) = world.get("/openapi.json", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document, openapi::json());
    for path in [
        "/maxions",
        "/maxions/{id}/stream",
        "/schedules",
        "/metrics",
        "/healthz",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path}");
    }
}

/// Fuzz target (see `crate::fuzzing`): any method, path, query, headers and body get an answer
/// that is not a server error, and every 4xx is the JSON `{error, message}` a client can read.
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("maxions".to_owned()),
            Just("20261202T100000-000001".to_owned()),
            Just("kill".to_owned()),
            Just("rerun".to_owned()),
            Just("logs".to_owned()),
            Just("stream".to_owned()),
            Just("schedules".to_owned()),
            Just("metrics".to_owned()),
            Just("openapi.json".to_owned()),
            Just("healthz".to_owned()),
            Just("api".to_owned()),
            Just("config".to_owned()),
            Just("..".to_owned()),
            Just("%2e%2e".to_owned()),
            Just("%2F".to_owned()),
            Just("%00".to_owned()),
            Just("%ff".to_owned()),
            "[a-zA-Z0-9._~%-]{0,12}",
        ]
    }

    fn query() -> impl Strategy<Value = String> {
        let pair = (
            prop_oneof![
                Just("status"),
                Just("task"),
                Just("limit"),
                Just("before"),
                Just("after"),
                Just("token"),
                Just("x")
            ],
            prop_oneof![
                Just("failed".to_owned()),
                Just("-1".to_owned()),
                Just("0".to_owned()),
                Just("501".to_owned()),
                Just("18446744073709551616".to_owned()),
                Just("%ZZ".to_owned()),
                "[a-zA-Z0-9%&=+._-]{0,10}",
            ],
        )
            .prop_map(|(k, v)| format!("{k}={v}"));
        proptest::collection::vec(pair, 0..4).prop_map(|pairs| pairs.join("&"))
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            Just(br#"{"name":"a","yaml":"task: x\nrepo: acme/app\nblueprint: quick\n"}"#.to_vec()),
            Just(br#"{"name":"../../evil","yaml":"x"}"#.to_vec()),
            Just(br#"{"name":"a"}"#.to_vec()),
            Just(br#"{"name":1,"yaml":[]}"#.to_vec()),
            ("[a-z./-]{0,12}", "[ -~\n]{0,60}",).prop_map(|(name, yaml)| {
                serde_json::json!({ "name": name, "yaml": yaml })
                    .to_string()
                    .into_bytes()
            }),
            proptest::collection::vec(any::<u8>(), 0..80),
        ]
    }

    #[derive(Debug, Clone)]
    struct Case {
        method: &'static str,
        path: String,
        token: Option<&'static str>,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    }

    fn case() -> impl Strategy<Value = Case> {
        let header = (
            prop_oneof![
                Just("content-type"),
                Just("accept"),
                Just("host"),
                Just("origin"),
                Just("last-event-id"),
                Just("content-length"),
                Just("x-anything"),
            ],
            prop_oneof![
                Just("application/json".to_owned()),
                Just("text/event-stream".to_owned()),
                Just("evil.example".to_owned()),
                "[ -~]{0,20}",
            ],
        );
        (
            prop_oneof![
                Just("GET"),
                Just("POST"),
                Just("DELETE"),
                Just("PUT"),
                Just("HEAD"),
                Just("OPTIONS"),
                Just("PATCH")
            ],
            proptest::collection::vec(segment(), 0..5),
            prop::option::of(query()),
            prop_oneof![Just(Some(TOKEN)), Just(None), Just(Some("wrong"))],
            proptest::collection::vec(header, 0..4),
            body(),
        )
            .prop_map(|(method, segments, query, token, headers, body)| {
                let mut path = format!("/{}", segments.join("/"));
                if let Some(query) = query {
                    path = format!("{path}?{query}");
                }
                Case {
                    method,
                    path,
                    token,
                    headers,
                    body,
                }
            })
    }

    #[test]
    fn fuzz_api_requests_get_client_errors_in_json() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let world = runtime.block_on(async {
            let world = World::new();
            write_log(&world.root(), "a", "20261202T100000-000001", "succeeded");
            world
        });
        crate::fuzzing::fuzz("api_requests", 256, case(), |case| {
            let mut request = Request::builder()
                .method(case.method)
                .uri(case.path.as_str())
                .header("host", "127.0.0.1:7878");
            if let Some(token) = case.token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            for (name, value) in &case.headers {
                request = request.header(*name, value.as_str());
            }
            // A request the HTTP layer (hyper) would refuse before the router sees it.
            let Ok(request) = request.body(Body::from(case.body.clone())) else {
                return Ok(());
            };
            let answer = runtime.block_on(async {
                let response = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    world.router.clone().oneshot(request),
                )
                .await
                .expect("an answer within 10 s")
                .expect("infallible");
                let status = response.status();
                let streaming = response
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                // A stream that is open is a success; its body never ends.
                let body = if streaming {
                    Vec::new()
                } else {
                    axum::body::to_bytes(response.into_body(), 1 << 24)
                        .await
                        .expect("body")
                        .to_vec()
                };
                (status, body)
            });
            let (status, body) = answer;
            prop_assert!(
                !status.is_server_error(),
                "{status} for {case:?}: {}",
                String::from_utf8_lossy(&body)
            );
            if status.is_client_error() && case.method != "HEAD" {
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                prop_assert!(
                    json["error"].is_string() && json["message"].is_string(),
                    "{status} for {case:?} is not an error body: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok(())
        });
    }
}
