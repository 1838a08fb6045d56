//! The egress proxy in a container beside the sandbox, the form an engine that does not share
//! this machine's files needs. Proven here on the local engine, with the proxy container on the
//! host's network so that it reaches the test's server on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use maxions::sandbox::bootstrap::{self, Progress};
use maxions::sandbox::egress::{Decision, EgressEvent, EgressPolicy, StaticResolver};
use maxions::sandbox::egress_container::{EgressContainer, ROLE_LABEL};
use maxions::sandbox::image::EGRESS_IMAGE;
use maxions::sandbox::{Engine, ExecRequest, NetworkPolicy, Sandbox};
use tokio_util::sync::CancellationToken;

use crate::support::docker::{engine, spec};

/// Runs `script` in `sandbox`: its exit code, stdout and stderr.
pub async fn sh(sandbox: &dyn Sandbox, script: &str) -> (i64, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut sink = |which: maxions::sandbox::OutputStream, bytes: &[u8]| match which {
        maxions::sandbox::OutputStream::Stdout => out.extend_from_slice(bytes),
        maxions::sandbox::OutputStream::Stderr => err.extend_from_slice(bytes),
    };
    let outcome = sandbox
        .exec(
            &ExecRequest::shell(script).timeout(Duration::from_secs(60)),
            &mut sink,
            &CancellationToken::new(),
        )
        .await
        .expect("the exec itself works");
    let code = match outcome.status {
        maxions::sandbox::ExecStatus::Exited(code) => code,
        other => panic!("{other:?}"),
    };
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Containers and volumes of the instance whose names start with `prefix`.
async fn leftovers(client: &bollard::Docker, prefix: &str) -> Vec<String> {
    let containers = client
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::new()
                .all(true)
                .build(),
        ))
        .await
        .unwrap();
    let volumes = client
        .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
        .await
        .unwrap();
    containers
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .chain(
            volumes
                .volumes
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.name),
        )
        .filter(|name| name.trim_start_matches('/').starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_container_beside_the_sandbox_enforces_the_allowlist_and_reports_back() {
    let Some(engine) = engine("egress-container").await else {
        return;
    };
    let progress = Progress::new(|line| eprintln!("test setup: {line}"));
    bootstrap::ensure_image(&engine, EGRESS_IMAGE, &progress)
        .await
        .unwrap_or_else(|e| panic!("cannot build {EGRESS_IMAGE}: {e}"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nupstream",
                )
                .await;
        }
    });
    let loopback = "127.0.0.1".parse().unwrap();
    let engine = engine
        .with_egress_to_loopback_for_tests(StaticResolver::new())
        .with_egress_container(EgressContainer {
            network: "host".to_owned(),
            resolve: vec![
                ("allowed.test".to_owned(), loopback),
                ("other.test".to_owned(), loopback),
            ],
            ..EgressContainer::default()
        });
    let events = Arc::new(Mutex::new(Vec::<EgressEvent>::new()));
    let mut spec = spec("egress-container");
    let prefix = format!("maxions-{}", spec.run_id);
    spec.network =
        NetworkPolicy::Allowlist(EgressPolicy::parse([format!("allowed.test:{port}")]).unwrap());
    spec.on_egress = Some({
        let events = Arc::clone(&events);
        Arc::new(move |event| events.lock().unwrap().push(event))
    });
    let sandbox = engine
        .create(&spec)
        .await
        .expect("a sandbox with its proxy");

    let (code, stdout, stderr) = sh(
        &*sandbox,
        &format!(
            "curl -sS --max-time 10 http://allowed.test:{port}/ ; echo; \
             curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}' http://other.test:{port}/ ; echo; \
             curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}' --noproxy '*' http://127.0.0.1:{port}/ ; echo; \
             touch /run/maxions/planted 2>/dev/null && echo writable || echo read-only"
        ),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "upstream", "{stdout}{stderr}");
    assert_eq!(
        lines[1], "403",
        "a name off the list is refused by the proxy"
    );
    assert_eq!(
        lines[2], "000",
        "the sandbox itself has no network: only the proxy's socket"
    );
    assert_eq!(
        lines[3], "read-only",
        "the sandbox cannot change what the proxy serves"
    );

    // The decisions came back through the proxy container's log, in order.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while events.lock().unwrap().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = events.lock().unwrap().clone();
    let decisions: Vec<_> = events
        .iter()
        .map(|e| (e.host.clone().unwrap_or_default(), e.decision))
        .collect();
    assert_eq!(
        decisions,
        [
            ("allowed.test".to_owned(), Decision::Allowed),
            ("other.test".to_owned(), Decision::Denied)
        ],
        "{events:?}"
    );
    assert!(!events[1].dialed, "refused before any dial");

    // The proxy container is locked down like the sandbox.
    let client = engine.client().clone();
    let proxy = client
        .inspect_container(&format!("{prefix}-egress"), None)
        .await
        .expect("the proxy container");
    let labels = proxy.config.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(labels.get(ROLE_LABEL).map(String::as_str), Some("egress"));
    assert_eq!(
        proxy.config.as_ref().unwrap().user.as_deref(),
        Some("10001:10001"),
        "not root"
    );
    let host = proxy.host_config.unwrap();
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_owned()])
    );
    let sandbox_host = client
        .inspect_container(sandbox.id(), None)
        .await
        .unwrap()
        .host_config
        .unwrap();
    assert_eq!(sandbox_host.network_mode.as_deref(), Some("none"));

    sandbox.destroy().await.unwrap();
    assert_eq!(
        leftovers(&client, &prefix).await,
        Vec::<String>::new(),
        "the sandbox, its proxy and their volume are gone"
    );
}
