//! The Docker sandbox, proven from inside real containers: hardening, limits, streaming exec,
//! timeouts and cancellation, files, secrets, egress and faults.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use maxions::sandbox::egress::{Decision, EgressEvent, EgressPolicy, StaticResolver};
use maxions::sandbox::redact::Redactor;
use maxions::sandbox::{
    ContainerSpec, DockerEngine, Engine, ExecOutcome, ExecRequest, ExecStatus, NetworkPolicy,
    OutputStream, Sandbox, SandboxError, TAIL_BYTES,
};
use maxions::secret::Secret;
use tokio_util::sync::CancellationToken;

use crate::support::docker::{Guard, engine, spec, unique};

#[derive(Debug, Default)]
struct Captured {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    chunks: Vec<(OutputStream, Instant, usize)>,
}

impl Captured {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

async fn exec_with(
    sandbox: &dyn Sandbox,
    request: &ExecRequest,
    cancel: &CancellationToken,
) -> (ExecOutcome, Captured) {
    let mut captured = Captured::default();
    let mut sink = |which: OutputStream, bytes: &[u8]| {
        captured.chunks.push((which, Instant::now(), bytes.len()));
        match which {
            OutputStream::Stdout => captured.stdout.extend_from_slice(bytes),
            OutputStream::Stderr => captured.stderr.extend_from_slice(bytes),
        }
    };
    let outcome = sandbox
        .exec(request, &mut sink, cancel)
        .await
        .expect("the exec itself works");
    (outcome, captured)
}

async fn sh(sandbox: &dyn Sandbox, script: &str) -> (ExecOutcome, Captured) {
    exec_with(
        sandbox,
        &ExecRequest::shell(script).timeout(Duration::from_secs(60)),
        &CancellationToken::new(),
    )
    .await
}

/// The live processes of the sandbox's user other than the probe itself: those it may signal
/// (maxions' own run as uid 0), zombies left out (they are dead, only not yet reaped). Whatever
/// they detached from or were reparented to.
async fn stray_processes(sandbox: &dyn Sandbox) -> String {
    let (_, out) = sh(
        sandbox,
        r#"for p in /proc/[0-9]*; do p=${p#/proc/}; [ "$p" = "$$" ] && continue; kill -0 "$p" 2>/dev/null || continue; read -r s <"/proc/$p/stat" 2>/dev/null || continue; case "${s##*) }" in Z*) continue ;; esac; echo "$s"; done"#,
    )
    .await;
    out.stdout().trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_holds_inside_the_container() {
    let Some(engine) = engine("hardening").await else {
        return;
    };
    let mut spec = spec("hardening");
    spec.memory = 256 << 20;
    spec.pids = 128;
    spec.cpus = Some(0.5);
    let sandbox = Guard::create(&engine, &spec).await;

    let (outcome, out) = sh(
        &*sandbox,
        r"id -u
grep -E '^(CapEff|CapPrm|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
touch /etc/maxions-probe 2>/dev/null && echo etc-writable || echo etc-read-only
touch /usr/bin/maxions-probe 2>/dev/null && echo usr-writable || echo usr-read-only
touch /workspace/probe && echo workspace-writable
touch /tmp/probe && echo tmp-writable
su -c true root </dev/null 2>/dev/null && echo became-root || echo no-root",
    )
    .await;
    assert!(outcome.status.success(), "{outcome:?} {}", out.stderr());
    let text = out.stdout();
    let uid: u32 = text.lines().next().unwrap().trim().parse().unwrap();
    assert_ne!(uid, 0, "runs as a non-root user");
    for line in [
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "etc-read-only",
        "usr-read-only",
        "workspace-writable",
        "tmp-writable",
        "no-root",
    ] {
        assert!(text.contains(line), "expected `{line}` in:\n{text}");
    }

    // What the engine was asked for, as `docker inspect` shows it.
    let inspect = engine
        .client()
        .inspect_container(sandbox.id(), None)
        .await
        .unwrap();
    let host = inspect.host_config.unwrap();
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    // Only maxions' own uid-0 processes hold it (see `helpers_are_out_of_the_sandbox_users_reach`).
    assert_eq!(host.cap_add, Some(vec!["KILL".to_owned()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_owned()])
    );
    assert_eq!(host.memory, Some(256 << 20));
    assert_eq!(
        host.memory_swap,
        Some(256 << 20),
        "no swap beyond the limit"
    );
    assert_eq!(host.pids_limit, Some(128));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    let mounts = inspect.mounts.unwrap_or_default();
    assert_eq!(mounts.len(), 1, "only the workspace volume: {mounts:?}");
    assert_eq!(mounts[0].destination.as_deref(), Some("/workspace"));
    assert_eq!(mounts[0].typ.as_deref(), Some("volume"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_hits_the_pids_limit_and_the_container_survives() {
    let Some(engine) = engine("forkbomb").await else {
        return;
    };
    let mut spec = spec("forkbomb");
    spec.pids = 64;
    let sandbox = Guard::create(&engine, &spec).await;

    let (outcome, out) = exec_with(
        &*sandbox,
        &ExecRequest::new(["bash", "-c", "bomb() { bomb | bomb & }; bomb; sleep 60"])
            .timeout(Duration::from_secs(4)),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::TimedOut(Duration::from_secs(4)));
    assert!(
        out.stderr().contains("Resource temporarily unavailable"),
        "the bomb ran into the limit: {}",
        out.stderr()
    );
    // Every bomb process is gone and the sandbox still works.
    let (after, alive) = sh(&*sandbox, "echo alive").await;
    assert!(after.status.success());
    assert_eq!(alive.stdout(), "alive\n");
    assert_eq!(stray_processes(&*sandbox).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_beyond_the_memory_limit_is_reported_as_out_of_memory() {
    let Some(engine) = engine("oom").await else {
        return;
    };
    let mut spec = spec("oom");
    spec.memory = 64 << 20;
    let sandbox = Guard::create(&engine, &spec).await;

    // `tail` keeps the whole last "line" of /dev/zero in memory: it grows until killed.
    let (outcome, _) = sh(&*sandbox, "head -c 512m /dev/zero | tail -n 1 >/dev/null").await;
    // The pipeline's status is tail's: killed with SIGKILL by the OOM killer.
    assert_eq!(outcome.status, ExecStatus::OutOfMemory { limit: 64 << 20 });
    assert!(
        outcome.status.to_string().contains("out of memory"),
        "{}",
        outcome.status
    );
    // A plain SIGKILL that is not the OOM killer's stays an exit code.
    let (killed, _) = sh(&*sandbox, "kill -9 $$").await;
    assert_eq!(killed.status, ExecStatus::Exited(137));
    let (after, _) = sh(&*sandbox, "true").await;
    assert!(after.status.success(), "the sandbox survives an OOM kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_as_it_comes_and_stdin_ends() {
    let Some(engine) = engine("stream").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("stream")).await;

    let started = Instant::now();
    let (outcome, out) = sh(
        &*sandbox,
        "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.4; done; exit 3",
    )
    .await;
    let total = started.elapsed();
    assert_eq!(outcome.status, ExecStatus::Exited(3));
    assert_eq!(out.stdout(), "out1\nout2\nout3\n");
    assert_eq!(
        out.stderr(),
        "err1\nerr2\nerr3\n",
        "the wrapper's pid line is not output"
    );
    let first = out.chunks.first().expect("some output").1;
    assert!(
        first.duration_since(started) + Duration::from_millis(600) < total,
        "the first chunk came before the command ended"
    );
    assert_eq!(outcome.stdout_bytes, 15);
    assert_eq!(outcome.stderr_bytes, 15);

    // No stdin given: a command reading it sees end-of-file at once.
    let (outcome, out) = exec_with(
        &*sandbox,
        &ExecRequest::new(["cat"]).timeout(Duration::from_secs(20)),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::Exited(0));
    assert_eq!(out.stdout(), "");
    // Stdin given: the command reads it, then end-of-file.
    let prompt = "line one\n$(touch /tmp/pwned) `id` 'q' \"d\"\n";
    let (outcome, out) = exec_with(
        &*sandbox,
        &ExecRequest::new(["sh", "-c", "cat; echo; wc -c"])
            .stdin(prompt)
            .timeout(Duration::from_secs(20)),
        &CancellationToken::new(),
    )
    .await;
    assert!(outcome.status.success());
    assert_eq!(out.stdout(), format!("{prompt}\n0\n"));
    let (_, pwned) = sh(&*sandbox, "ls /tmp/pwned 2>&1 || true").await;
    assert!(
        pwned.stdout().contains("No such file"),
        "stdin is data, never run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_binary_and_invalid_utf8_output_stays_bounded() {
    let Some(engine) = engine("huge").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("huge")).await;

    let size: u64 = 256 << 20;
    let mut seen = 0_u64;
    let mut biggest = 0;
    let mut sink = |_: OutputStream, bytes: &[u8]| {
        seen += bytes.len() as u64;
        biggest = biggest.max(bytes.len());
    };
    let outcome = sandbox
        .exec(
            &ExecRequest::shell(format!("head -c {size} /dev/urandom")),
            &mut sink,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(outcome.status.success());
    assert_eq!(outcome.stdout_bytes, size);
    assert_eq!(seen, size);
    assert!(biggest <= 1 << 20, "chunks stay small: {biggest}");
    assert_eq!(outcome.tail.len(), TAIL_BYTES, "only the tail is kept");

    let (outcome, out) = sh(&*sandbox, r"printf 'ok \377\376 \300 end'").await;
    assert!(outcome.status.success());
    assert_eq!(out.stdout, b"ok \xff\xfe \xc0 end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_whole_process_group() {
    let Some(engine) = engine("timeout").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("timeout")).await;

    let started = Instant::now();
    let (outcome, out) = exec_with(
        &*sandbox,
        &ExecRequest::shell("echo started; sleep 1000 & sleep 1000 & sleep 1000; echo never")
            .timeout(Duration::from_secs(1)),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::TimedOut(Duration::from_secs(1)));
    assert_eq!(outcome.status.to_string(), "timed out after 1s");
    assert_eq!(
        out.stdout(),
        "started\n",
        "output before the timeout is kept"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(stray_processes(&*sandbox).await, "", "no sleep survives");

    // What a step leaves in the background ends with it, too.
    let (outcome, _) = sh(&*sandbox, "sleep 1000 & echo bye").await;
    assert!(outcome.status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stray_processes(&*sandbox).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_stops_a_step_and_its_children() {
    let Some(engine) = engine("cancel").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("cancel")).await;

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        trigger.cancel();
    });
    let (outcome, _) = exec_with(
        &*sandbox,
        &ExecRequest::shell("sleep 1000 & while :; do sleep 1; done"),
        &cancel,
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::Cancelled);
    assert_eq!(stray_processes(&*sandbox).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_in_and_come_out() {
    let Some(engine) = engine("files").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("files")).await;

    let script = b"#!/bin/sh\necho from the script: \"$1\"\n";
    sandbox
        .write_file("/workspace/tools/run.sh", script, 0o755)
        .await
        .unwrap();
    sandbox
        .write_file("/tmp/notes.txt", "tmp works\n".as_bytes(), 0o600)
        .await
        .unwrap();
    let (outcome, out) = sh(
        &*sandbox,
        "/workspace/tools/run.sh 'a b'; stat -c '%a %U' /tmp/notes.txt",
    )
    .await;
    assert!(outcome.status.success(), "{}", out.stderr());
    assert_eq!(out.stdout(), "from the script: a b\n600 sandbox\n");

    let read = sandbox.read_file("/tmp/notes.txt", 1024).await.unwrap();
    assert_eq!(read.bytes, b"tmp works\n");
    assert!(!read.truncated);
    let cut = sandbox
        .read_file("/workspace/tools/run.sh", 9)
        .await
        .unwrap();
    assert_eq!(cut.bytes, b"#!/bin/sh");
    assert!(cut.truncated);

    let missing = sandbox.read_file("/tmp/absent", 10).await.unwrap_err();
    assert!(
        missing.to_string().contains("/tmp/absent") && missing.to_string().contains("No such file"),
        "{missing}"
    );
    let refused = sandbox
        .write_file("/etc/evil", b"x", 0o644)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("/etc/evil"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_only_their_exec_and_never_leave_unmasked() {
    let Some(engine) = engine("secrets").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("secrets")).await;
    let token = Secret::new("DEPLOY_TOKEN", "tok-4f9a1c77e2").unwrap();
    sandbox.set_redactor(Redactor::new([&token]).unwrap());

    // Printed whole, split across two writes (and chunks), and into a file read back.
    let (outcome, out) = exec_with(
        &*sandbox,
        &ExecRequest::shell(
            r#"echo "token=$DEPLOY_TOKEN"; printf 'tok-4f9a'; sleep 0.3; printf '1c77e2\n' >&1; echo "$DEPLOY_TOKEN" >/tmp/leak; echo "$DEPLOY_TOKEN" >&2"#,
        )
        .secret(token.clone()),
        &CancellationToken::new(),
    )
    .await;
    assert!(outcome.status.success());
    assert_eq!(out.stdout(), "token=***\n***\n");
    assert_eq!(out.stderr(), "***\n");
    assert!(!String::from_utf8_lossy(&outcome.tail).contains("4f9a1c77"));
    let read = sandbox.read_file("/tmp/leak", 100).await.unwrap();
    assert_eq!(read.bytes, b"***\n");

    // Another exec does not see it.
    let (_, other) = sh(&*sandbox, r#"echo "[${DEPLOY_TOKEN:-unset}]""#).await;
    assert_eq!(other.stdout(), "[unset]\n");
    // And the container's configuration never held it.
    let inspect = engine
        .client()
        .inspect_container(sandbox.id(), None)
        .await
        .unwrap();
    let config = serde_json::to_string(&inspect).unwrap();
    assert!(
        !config.contains("tok-4f9a1c77e2"),
        "docker inspect shows no secret"
    );
    assert!(!config.contains("DEPLOY_TOKEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlisted_egress_goes_through_the_proxy_only() {
    let Some(engine) = engine("egress").await else {
        return;
    };
    // The one upstream: an HTTP server on the host's 127.0.0.1.
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
    let engine = engine.with_egress_resolver(
        StaticResolver::new()
            .with("allowed.test", [loopback])
            .with("other.test", [loopback]),
    );
    let events = Arc::new(Mutex::new(Vec::<EgressEvent>::new()));
    let mut spec: ContainerSpec = spec("egress");
    spec.network = NetworkPolicy::Allowlist(
        EgressPolicy::parse([format!("allowed.test:{port}")])
            .unwrap()
            .allow_loopback_for_tests(),
    );
    spec.on_egress = Some({
        let events = Arc::clone(&events);
        Arc::new(move |event| events.lock().unwrap().push(event))
    });
    let sandbox = Guard::create(&engine, &spec).await;

    let (outcome, out) = sh(
        &*sandbox,
        &format!(
            "curl -sS --max-time 10 http://allowed.test:{port}/ ; echo; \
             curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}' http://other.test:{port}/ ; echo; \
             ip -o addr 2>/dev/null | grep -v ' lo ' | grep -c inet || true"
        ),
    )
    .await;
    assert!(outcome.status.success(), "{}", out.stderr());
    let stdout = out.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "upstream", "{}", out.stderr());
    assert_eq!(
        lines[1], "403",
        "a name off the list is refused by the proxy"
    );
    let events = events.lock().unwrap().clone();
    let allowed: Vec<_> = events
        .iter()
        .filter(|e| e.decision == Decision::Allowed)
        .collect();
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e.decision == Decision::Denied)
        .collect();
    assert_eq!(allowed.len(), 1, "{events:?}");
    assert_eq!(allowed[0].host.as_deref(), Some("allowed.test"));
    assert_eq!(denied.len(), 1, "{events:?}");
    assert_eq!(denied[0].host.as_deref(), Some("other.test"));
    assert!(!denied[0].dialed, "refused before any dial");

    // The container's network is `none`: the relay on loopback is the only way out.
    let inspect = engine
        .client()
        .inspect_container(sandbox.id(), None)
        .await
        .unwrap();
    assert_eq!(
        inspect.host_config.unwrap().network_mode.as_deref(),
        Some("none")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_says_to_build_it() {
    let Some(engine) = engine("noimage").await else {
        return;
    };
    let spec = ContainerSpec::new(&unique("noimage"), "maxions/absent:never");
    let error = engine.create(&spec).await.err().expect("no such image");
    assert!(matches!(error, SandboxError::ImageMissing(_)));
    assert!(error.to_string().contains("maxions image build"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_is_not_running_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let host = format!("unix://{}/docker.sock", dir.path().display());
    let error = DockerEngine::connect_to(&host)
        .await
        .err()
        .expect("nothing listens there");
    let text = error.to_string();
    assert!(
        matches!(error, SandboxError::EngineUnreachable(_)),
        "{text}"
    );
    assert!(
        text.contains("`maxions demo` installs and starts one") && text.contains("DOCKER_HOST"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killed_from_outside_ends_the_exec_with_a_clear_error() {
    let Some(engine) = engine("killed").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("killed")).await;
    let id = sandbox.id().to_owned();
    let client = engine.client().clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let _ = client.kill_container(&id, None).await;
    });
    let error = sleep_until_it_fails(&*sandbox).await;
    assert!(
        matches!(error, SandboxError::ContainerGone { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("killed from outside"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_engine_mid_exec_is_an_error_not_a_hang() {
    let Some(real) = engine("lost").await else {
        return;
    };
    // An engine socket we can pull the plug on: a relay to the real one.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let plug = CancellationToken::new();
    let relay = tokio::spawn({
        let plug = plug.clone();
        async move {
            let tracker = tokio_util::task::TaskTracker::new();
            loop {
                let Ok((mut client, _)) = (tokio::select! {
                    () = plug.cancelled() => break,
                    accepted = listener.accept() => accepted,
                }) else {
                    break;
                };
                let plug = plug.clone();
                tracker.spawn(async move {
                    let mut upstream = tokio::net::UnixStream::connect("/var/run/docker.sock")
                        .await
                        .unwrap();
                    tokio::select! {
                        () = plug.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    }
                });
            }
        }
    });
    let engine = DockerEngine::connect_to(&format!("unix://{}", socket.display()))
        .await
        .unwrap()
        .with_instance("test-lost");
    let sandbox = Guard::create(&engine, &spec("lost")).await;
    let pull = plug.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        pull.cancel();
    });
    let error = sleep_until_it_fails(&*sandbox).await;
    assert!(
        matches!(
            error,
            SandboxError::EngineLost { .. } | SandboxError::EngineUnreachable(_)
        ),
        "{error}"
    );
    relay.abort();
    // The container is still there (the engine did not die): the guard removes it via the CLI.
    drop(sandbox);
    let _ = real;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_dead_runs_are_removed_and_live_ones_kept() {
    let Some(engine) = engine("orphans").await else {
        return;
    };
    let live = Guard::create(&engine, &spec("orphans-live")).await;
    let dead_spec = spec("orphans-dead");
    let dead = engine.create(&dead_spec).await.unwrap();
    let dead_id = dead.id().to_owned();
    std::mem::forget(dead); // the process that made it "died" without destroying it

    // Two more, as if made by other maxions processes: one still running (pid 1 always is),
    // one long gone.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let foreign = |run: &str, pid: u32| {
        let output = std::process::Command::new("docker")
            .args([
                "create",
                "--label",
                "maxions.instance=test-orphans",
                "--label",
            ])
            .arg(format!("maxions.run={run}"))
            .arg("--label")
            .arg(format!("maxions.owner={}/{pid}", boot.trim()))
            .args(["maxions/sandbox:latest", "true"])
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let other_live = foreign(&unique("other-live"), 1);
    let other_dead = foreign(&unique("other-dead"), u32::MAX - 1);

    let removed = engine
        .remove_orphans(&[live_run_id(&engine, &*live).await])
        .await
        .unwrap();
    assert_eq!(
        removed, 2,
        "this process's dropped sandbox and the dead process's"
    );
    let exists = |id: String| {
        let client = engine.client().clone();
        async move { client.inspect_container(&id, None).await.is_ok() }
    };
    assert!(!exists(dead_id).await);
    assert!(!exists(other_dead).await);
    assert!(exists(live.id().to_owned()).await);
    assert!(
        exists(other_live.clone()).await,
        "another live maxions keeps its sandboxes"
    );
    let _ = engine.client().remove_container(&other_live, None).await;
}

/// Runs `sleep 60`, which something is about to interrupt, and returns the error, well before
/// the minute is up.
async fn sleep_until_it_fails(sandbox: &dyn Sandbox) -> SandboxError {
    let started = Instant::now();
    let mut sink = |_: OutputStream, _: &[u8]| {};
    let error = sandbox
        .exec(
            &ExecRequest::shell("sleep 60"),
            &mut sink,
            &CancellationToken::new(),
        )
        .await
        .expect_err("the exec was interrupted");
    assert!(started.elapsed() < Duration::from_secs(30), "no hang");
    error
}

async fn live_run_id(engine: &DockerEngine, sandbox: &dyn Sandbox) -> String {
    engine
        .client()
        .inspect_container(sandbox.id(), None)
        .await
        .unwrap()
        .config
        .unwrap()
        .labels
        .unwrap()["maxions.run"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_removes_the_container_and_its_workspace() {
    let Some(engine) = engine("destroy").await else {
        return;
    };
    let spec = spec("destroy");
    let sandbox = engine.create(&spec).await.unwrap();
    let id = sandbox.id().to_owned();
    let volumes = |engine: DockerEngine, run: String| async move {
        let filters =
            std::collections::HashMap::from([("label", vec![format!("maxions.run={run}")])]);
        engine
            .client()
            .list_volumes(Some(
                bollard::query_parameters::ListVolumesOptionsBuilder::new()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap()
            .volumes
            .unwrap_or_default()
            .len()
    };
    assert_eq!(volumes(engine.clone(), spec.run_id.clone()).await, 1);
    sandbox.destroy().await.unwrap();
    sandbox.destroy().await.unwrap(); // idempotent
    assert!(engine.client().inspect_container(&id, None).await.is_err());
    assert_eq!(volumes(engine.clone(), spec.run_id.clone()).await, 0);
}

/// Processes left by a step that escaped its process group in every usual way.
const ESCAPES: &str = r#"setsid sleep 1001 </dev/null >/dev/null 2>&1 &
( sh -c 'sleep 1002 </dev/null >/dev/null 2>&1 &' & )
nohup sleep 1003 </dev/null >/dev/null 2>&1 &
setsid sh -c 'trap "" TERM HUP INT; while :; do sleep 1 & wait; done' </dev/null >/dev/null 2>&1 &
sleep 0.3"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_step_kills_every_process_however_it_detached() {
    let Some(engine) = engine("endstep").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("endstep")).await;

    let (outcome, _) = sh(&*sandbox, ESCAPES).await;
    assert!(outcome.status.success());
    // A spy that escaped, too: it reads every later exec's environment.
    let (outcome, _) = sh(
        &*sandbox,
        r#"setsid sh -c 'while :; do cat /proc/[0-9]*/environ 2>/dev/null | tr "\0" "\n" | grep LATER_ >>/tmp/spied; sleep 0.1; done' </dev/null >/dev/null 2>&1 & sleep 0.2"#,
    )
    .await;
    assert!(outcome.status.success());
    // The exec's own group is gone, but what detached lives on: the old code stopped here.
    let before = stray_processes(&*sandbox).await;
    assert!(
        before.contains("(sleep)") && before.lines().count() >= 5,
        "escaped: {before}"
    );

    let killed = sandbox.end_step().await.unwrap();
    // The spy's `sleep 0.1` may be between two iterations when the step ends: one fewer then.
    // What matters is the next assertion: nothing is left.
    assert!(killed >= 4, "killed {killed}: {before}");
    assert_eq!(
        stray_processes(&*sandbox).await,
        "",
        "nothing outlives the step"
    );
    // The next step runs unobserved.
    let token = Secret::new("LATER_TOKEN", "later-4f9a1c77e2").unwrap();
    let (outcome, _) = exec_with(
        &*sandbox,
        &ExecRequest::shell("sleep 0.5").secret(token),
        &CancellationToken::new(),
    )
    .await;
    assert!(outcome.status.success());
    let spied = sandbox.read_file("/tmp/spied", 4096).await;
    assert!(
        spied
            .as_ref()
            .map_or(true, |f| !String::from_utf8_lossy(&f.bytes)
                .contains("4f9a1c77")),
        "{spied:?}"
    );
    // Nothing left: a second call finds nothing, and the sandbox still works.
    assert_eq!(sandbox.end_step().await.unwrap(), 0);
    let (after, out) = sh(&*sandbox, "echo alive").await;
    assert!(after.status.success());
    assert_eq!(out.stdout(), "alive\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_step_ends_a_fork_bomb_that_left_its_group() {
    let Some(engine) = engine("endbomb").await else {
        return;
    };
    let mut spec = spec("endbomb");
    spec.pids = 64;
    let sandbox = Guard::create(&engine, &spec).await;

    let (outcome, _) = sh(
        &*sandbox,
        "setsid bash -c 'bomb() { bomb | bomb & }; bomb' </dev/null >/dev/null 2>&1 & sleep 1",
    )
    .await;
    assert!(outcome.status.success(), "{outcome:?}");
    let started = Instant::now();
    sandbox.end_step().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(stray_processes(&*sandbox).await, "");

    // Every slot taken and kept: an exec's first process still gets in (the engine moves it
    // into the cgroup), but it cannot fork; the kill needs no fork.
    let (outcome, _) = sh(
        &*sandbox,
        "setsid bash -c 'while :; do sleep 1000 & done' </dev/null >/dev/null 2>&1 & sleep 1",
    )
    .await;
    assert!(outcome.status.success(), "{outcome:?}");
    let mut sink = |_: OutputStream, _: &[u8]| {};
    let blocked = sandbox
        .exec(
            &ExecRequest::shell("ls / | wc -l").timeout(Duration::from_secs(5)),
            &mut sink,
            &CancellationToken::new(),
        )
        .await;
    assert!(
        blocked.as_ref().map_or(true, |o| !o.status.success()),
        "the pids are full: {blocked:?}"
    );
    sandbox.end_step().await.unwrap();
    assert_eq!(stray_processes(&*sandbox).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_step_outlasts_a_process_that_kills_every_new_process() {
    let Some(engine) = engine("endkiller").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("endkiller")).await;
    // It kills every process of its user but itself, our `kill -9 -1` exec included.
    let (outcome, _) = sh(
        &*sandbox,
        "setsid sh -c 'trap \"\" TERM; while :; do kill -9 -1; done' </dev/null >/dev/null 2>&1 & sleep 0.2",
    )
    .await;
    assert!(
        matches!(outcome.status, ExecStatus::Exited(0 | 137)),
        "{outcome:?}"
    );
    sandbox.end_step().await.unwrap();
    assert_eq!(stray_processes(&*sandbox).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_also_ends_what_escaped_the_group() {
    let Some(engine) = engine("timeoutesc").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("timeoutesc")).await;
    let (outcome, _) = exec_with(
        &*sandbox,
        &ExecRequest::shell("setsid sleep 1000 </dev/null >/dev/null 2>&1 & sleep 1000")
            .timeout(Duration::from_secs(1)),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::TimedOut(Duration::from_secs(1)));
    assert_eq!(stray_processes(&*sandbox).await, "");
}

/// The pids of uid-0 processes in the container (the reaper, maxions' helpers), one a line.
const ROOT_PIDS: &str = r#"for s in /proc/[0-9]*/status; do u=; while read -r k a b; do [ "$k" = Uid: ] && { u=$a; break; }; done <"$s"; p=${s%/status}; p=${p#/proc/}; [ "$u" = 0 ] && [ "$p" != 1 ] && echo "$p"; done"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_are_out_of_the_sandbox_users_reach() {
    let Some(engine) = engine("helpers").await else {
        return;
    };
    let mut spec = spec("helpers");
    spec.network = NetworkPolicy::Allowlist(EgressPolicy::parse(["example.com"]).unwrap());
    let egress = tempfile::tempdir().unwrap();
    let engine = engine.with_egress_root(egress.path());
    let sandbox = Guard::create(&engine, &spec).await;

    // Capabilities: none at all for the sandbox's user; only KILL for maxions' own.
    let (_, user) = sh(&*sandbox, "grep -E '^Cap(Eff|Prm|Amb):' /proc/self/status").await;
    assert_eq!(
        user.stdout(),
        "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapAmb:\t0000000000000000\n"
    );
    let (_, helper) = exec_with(
        &*sandbox,
        &ExecRequest::shell("id -u; grep -E '^Cap(Eff|Prm|Amb):' /proc/self/status").as_maxions(),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(
        helper.stdout(),
        "0\nCapPrm:\t0000000000000020\nCapEff:\t0000000000000020\nCapAmb:\t0000000000000000\n"
    );

    // A helper with a secret, running while the sandbox's user attacks it and the reaper and
    // the relay.
    let secret = Secret::new("HELPER_TOKEN", "helper-77e2b1c9").unwrap();
    let helper = ExecRequest::shell("sleep 30")
        .secret(secret)
        .as_maxions()
        .timeout(Duration::from_secs(60));
    let cancel = CancellationToken::new();
    let attack = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, out) = sh(
            &*sandbox,
            &format!(
                r#"for p in $({ROOT_PIDS}); do
  read -r c <"/proc/$p/comm"; echo "target $c"
  kill -0 "$p" 2>/dev/null && echo "signal $c"
  kill -9 "$p" 2>/dev/null && echo "killed $c"
  cat "/proc/$p/environ" >/dev/null 2>&1 && echo "environ $c"
  head -c 1 "/proc/$p/mem" >/dev/null 2>&1 && echo "ptrace $c"
  ls "/proc/$p/fd" >/dev/null 2>&1 && echo "fds $c"
done
ls {dir} >/dev/null 2>&1 && echo listed-private
touch {dir}/x 2>/dev/null && echo wrote-private
stat -c '%a %u' {dir}"#,
                dir = sandbox.private_dir()
            ),
        )
        .await;
        cancel.cancel();
        out.stdout()
    };
    let mut sink = |_: OutputStream, _: &[u8]| {};
    let (report, helper_outcome) = tokio::join!(attack, sandbox.exec(&helper, &mut sink, &cancel));
    assert_eq!(helper_outcome.unwrap().status, ExecStatus::Cancelled);
    for target in ["target sh", "target sleep", "target maxions-relay"] {
        assert!(report.contains(target), "{target} seen:\n{report}");
    }
    for verb in [
        "signal",
        "killed",
        "environ",
        "ptrace",
        "fds",
        "listed-private",
        "wrote-private",
    ] {
        assert!(!report.contains(verb), "`{verb}` succeeded:\n{report}");
    }
    assert!(report.ends_with("711 0\n"), "{report}");
    assert!(sandbox.private_dir().starts_with("/tmp/maxions-"));
    assert!(sandbox.private_dir().len() >= "/tmp/maxions-".len() + 32);

    // end_step spares maxions' own: the reaper still kills groups, the relay still relays.
    sandbox.end_step().await.unwrap();
    let (_, out) = exec_with(
        &*sandbox,
        &ExecRequest::shell(ROOT_PIDS).as_maxions(),
        &CancellationToken::new(),
    )
    .await;
    assert!(
        out.stdout().lines().count() >= 3,
        "reaper, relay, probe: {}",
        out.stdout()
    );
    let (outcome, _) = exec_with(
        &*sandbox,
        &ExecRequest::shell("sleep 1000 & sleep 1000").timeout(Duration::from_secs(1)),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::TimedOut(Duration::from_secs(1)));
    assert_eq!(
        stray_processes(&*sandbox).await.matches("(sleep)").count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_stream_in_and_out_raw_and_bounded() {
    use maxions::sandbox::ExecUser;
    use std::os::unix::fs::PermissionsExt;

    let Some(engine) = engine("copy").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("copy")).await;
    let secret = Secret::new("COPY_TOKEN", "copy-9d2e41aa7c").unwrap();
    sandbox.set_redactor(Redactor::new([&secret]).unwrap());

    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("in.bin");
    let mut data: Vec<u8> = (0..(3 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    data.extend_from_slice(b"copy-9d2e41aa7c\n");
    std::fs::write(&source, &data).unwrap();

    // A link planted at the destination is replaced, not written through.
    let (outcome, _) = sh(
        &*sandbox,
        "echo keep >/tmp/target; ln -s /tmp/target /workspace/blob",
    )
    .await;
    assert!(outcome.status.success());
    let relative = sandbox
        .copy_in(&source, "workspace/blob", 0o640, ExecUser::Sandbox)
        .await
        .unwrap_err();
    assert!(
        relative.to_string().contains("not an absolute path"),
        "{relative}"
    );
    let sent = sandbox
        .copy_in(&source, "/workspace/blob", 0o640, ExecUser::Sandbox)
        .await
        .unwrap();
    assert_eq!(sent, data.len() as u64);
    let private = format!("{}/blob", sandbox.private_dir());
    sandbox
        .copy_in(&source, &private, 0o600, ExecUser::Maxions)
        .await
        .unwrap();
    let (_, out) = exec_with(
        &*sandbox,
        &ExecRequest::shell(format!(
            "stat -c '%a %U %s' /workspace/blob {private}; cat /tmp/target"
        ))
        .as_maxions(),
        &CancellationToken::new(),
    )
    .await;
    let size = data.len();
    assert_eq!(
        out.stdout(),
        format!("640 sandbox {size}\n600 root {size}\nkeep\n")
    );
    // The sandbox's user cannot read maxions' copy.
    let denied = sandbox.read_file(&private, 10).await.unwrap_err();
    assert!(denied.to_string().contains("Permission denied"), "{denied}");

    // Out: byte for byte, secret and all, into a new 0600 file.
    let back = dir.path().join("out.bin");
    let got = sandbox
        .copy_out(&private, &back, 10 << 20, ExecUser::Maxions)
        .await
        .unwrap();
    assert_eq!(got, data.len() as u64);
    assert!(
        std::fs::read(&back).unwrap() == data,
        "identical, not redacted"
    );
    assert_eq!(
        std::fs::metadata(&back).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Never over an existing file, never a truncated one.
    let again = sandbox
        .copy_out("/workspace/blob", &back, 10 << 20, ExecUser::Sandbox)
        .await
        .unwrap_err();
    assert!(matches!(again, SandboxError::HostFile { .. }), "{again}");
    let small = dir.path().join("small.bin");
    let over = sandbox
        .copy_out("/workspace/blob", &small, 1 << 20, ExecUser::Sandbox)
        .await
        .unwrap_err();
    assert!(over.to_string().contains("larger than the limit"), "{over}");
    assert!(!small.exists(), "no partial file");
    let missing = sandbox
        .copy_out("/workspace/absent", &small, 10, ExecUser::Sandbox)
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("No such file"), "{missing}");
    assert!(!small.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_past_its_disk_limit_fails_the_step() {
    let Some(engine) = engine("disk").await else {
        return;
    };
    let mut spec = spec("disk");
    spec.disk = Some(32 << 20);
    let sandbox = Guard::create(&engine, &spec).await;

    let (outcome, _) = exec_with(
        &*sandbox,
        &ExecRequest::shell("head -c 64m /dev/zero >/workspace/big; sleep 60")
            .timeout(Duration::from_secs(40)),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::DiskFull { limit: 32 << 20 });
    assert!(outcome.duration < Duration::from_secs(20), "{outcome:?}");
    let text = outcome.status.to_string();
    assert!(text.contains("32m limit (`sandbox.disk`)"), "{text}");
    assert_eq!(stray_processes(&*sandbox).await, "");

    // Under the limit: no effect. Hidden in a directory even its owner cannot list: full.
    let (outcome, _) = sh(
        &*sandbox,
        "rm -f /workspace/big; head -c 1m /dev/zero >/workspace/small; sleep 6",
    )
    .await;
    assert!(outcome.status.success(), "{outcome:?}");
    let (outcome, _) = exec_with(
        &*sandbox,
        &ExecRequest::shell("mkdir /workspace/h && chmod 300 /workspace/h && head -c 64m /dev/zero >/workspace/h/x; sleep 60")
            .timeout(Duration::from_secs(40)),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::DiskFull { limit: 32 << 20 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_soft_limit_is_the_hard_one() {
    let Some(engine) = engine("nofile").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("nofile")).await;
    let (_, out) = sh(&*sandbox, "ulimit -n; ulimit -Hn").await;
    let text = out.stdout();
    let limits: Vec<&str> = text.lines().collect();
    assert_eq!(limits.len(), 2, "{limits:?}");
    assert_eq!(limits[0], limits[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_sandbox_removes_its_container_and_egress() {
    let Some(engine) = engine("dropped").await else {
        return;
    };
    let egress = tempfile::tempdir().unwrap();
    let engine = engine.with_egress_root(egress.path());
    let mut spec = spec("dropped");
    spec.network = NetworkPolicy::Allowlist(EgressPolicy::parse(["example.com"]).unwrap());
    let sandbox = engine.create(&spec).await.unwrap();
    let id = sandbox.id().to_owned();
    assert_eq!(std::fs::read_dir(egress.path()).unwrap().count(), 1);
    drop(sandbox);
    assert_eq!(
        std::fs::read_dir(egress.path()).unwrap().count(),
        0,
        "the egress directory goes at once"
    );
    let started = Instant::now();
    while engine.client().inspect_container(&id, None).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the container is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `keep` lets it outlive its handle.
    let kept = engine.create(&spec).await.unwrap();
    let id = kept.id().to_owned();
    kept.keep();
    drop(kept);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(engine.client().inspect_container(&id, None).await.is_ok());
    let _ = engine
        .client()
        .remove_container(
            &id,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        )
        .await;
}

/// Not an assertion of speed: prints what `end_step` costs beside a raw exec of `true`
/// (`cargo test --test it sandbox::end_step_cost -- --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_step_cost() {
    let Some(engine) = engine("endcost").await else {
        return;
    };
    let sandbox = Guard::create(&engine, &spec("endcost")).await;
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut ends, mut trues) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let started = Instant::now();
        sandbox.end_step().await.unwrap();
        ends.push(started.elapsed());
        let started = Instant::now();
        let (outcome, _) = sh(&*sandbox, "true").await;
        trues.push(started.elapsed());
        assert!(outcome.status.success());
    }
    let (end, exec) = (median(ends), median(trues));
    eprintln!(
        "end_step median {:.1} ms, exec `true` median {:.1} ms, ratio {:.2}",
        end.as_secs_f64() * 1e3,
        exec.as_secs_f64() * 1e3,
        end.as_secs_f64() / exec.as_secs_f64()
    );
    assert!(end < Duration::from_secs(2));
}
