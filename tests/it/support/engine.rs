//! A second, real Docker engine on this machine, for tests that stop, kill or restart an engine
//! (which the rest of the suite, sharing the first, must not see) or spread runs over two.
//! It runs in its own network namespace (`unshare --net`): without one it would delete the
//! first engine's `docker0` bridge at start-up. So it has no bridge and no iptables rules, and
//! its containers use `--network none` (or `host`, which is the namespace's own loopback).
//! Its data root is its own, and images come from the first engine (`docker save | load`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Serialises the tests that start a second engine: each costs a dockerd and an image load.
pub static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// For a test that needs a second engine: its turn (they run one at a time), the first engine
/// and the images ready, and a second engine (over TLS too when `tls`). `None`, the test
/// skipped and saying why, when this machine cannot run one.
pub fn second_engine(
    name: &str,
    tls: bool,
) -> Option<(std::sync::MutexGuard<'static, ()>, SecondEngine)> {
    let turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !super::docker::available(name) {
        return None;
    }
    let engine = if tls {
        SecondEngine::start_tls(name)?
    } else {
        SecondEngine::start(name)?
    };
    Some((turn, engine))
}

/// How long a start may take (the first one initialises its data root).
const START: Duration = Duration::from_secs(60);

pub struct SecondEngine {
    dir: PathBuf,
    child: Option<Child>,
    /// `unix:///…/d.sock`, for DOCKER_HOST.
    pub host: String,
    /// Also served over TCP with TLS (see [`SecondEngine::start_tls`]).
    pub tls: Option<Tls>,
}

/// How a client reaches an engine over TCP with TLS.
#[derive(Debug, Clone)]
pub struct Tls {
    /// `tcp://127.0.0.1:PORT`: a port of this machine's loopback, served by the engine in its
    /// own network namespace (the socket is made here and handed to it, as systemd does).
    pub host: String,
    pub port: u16,
    /// The client's certificates: `ca.pem`, `cert.pem`, `key.pem` (as DOCKER_CERT_PATH).
    pub client: PathBuf,
    /// The engine's: `ca.pem`, `server-cert.pem`, `server-key.pem`.
    server: PathBuf,
}

impl SecondEngine {
    /// Starts one, or says why it cannot and returns `None` (not root, no `unshare` or `dockerd`).
    pub fn start(name: &str) -> Option<Self> {
        Self::start_with(name, false)
    }

    /// [`SecondEngine::start`], also serving the Engine API over TCP on 127.0.0.1 with TLS
    /// client certificates made for this test (a CA, the engine's certificate for 127.0.0.1, and
    /// a client's), as `dockerd --tlsverify` does on a remote host.
    pub fn start_tls(name: &str) -> Option<Self> {
        Self::start_with(name, true)
    }

    fn start_with(name: &str, tls: bool) -> Option<Self> {
        let root = rustix::process::geteuid().is_root();
        let tools = ["unshare", "dockerd", "docker"].iter().all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !root || !tools {
            eprintln!("SKIPPED {name}: a second Docker engine needs root, unshare and dockerd");
            return None;
        }
        let openssl = Command::new("openssl")
            .arg("version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if tls && !openssl {
            eprintln!("SKIPPED {name}: making TLS certificates needs the openssl command");
            return None;
        }
        // Short: the socket path must fit in 108 bytes.
        let dir = PathBuf::from(format!("/tmp/mxe-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the engine's directory");
        let host = format!("unix://{}/d.sock", dir.display());
        let tls = tls.then(|| make_certificates(&dir));
        let mut engine = Self {
            dir,
            child: None,
            host,
            tls,
        };
        engine.spawn();
        Some(engine)
    }

    fn spawn(&mut self) {
        let dir = &self.dir;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .expect("the engine's log");
        let mut script = format!(
            "ip link set lo up && exec dockerd --data-root {d}/data --exec-root {d}/x --pidfile {d}/d.pid -H unix://{d}/d.sock --bridge none --iptables=false --ip-masq=false --userland-proxy=false",
            d = dir.display()
        );
        let mut command = Command::new("unshare");
        // The TCP socket is bound here, on this machine's loopback, and handed to dockerd as
        // fd 3 (systemd's socket activation: LISTEN_FDS, LISTEN_PID): the engine in its own
        // network namespace serves a port that the host's clients reach.
        let listener = self.tls.as_ref().map(|tls| {
            let listener = std::net::TcpListener::bind(("127.0.0.1", tls.port))
                .expect("bind the engine's TCP port");
            script = format!(
                "export LISTEN_FDS=1 LISTEN_PID=$$; {script} -H fd:// --tlsverify --tlscacert {s}/ca.pem --tlscert {s}/server-cert.pem --tlskey {s}/server-key.pem",
                s = tls.server.display()
            );
            listener
        });
        if let Some(listener) = &listener {
            let fd = std::os::fd::AsRawFd::as_raw_fd(listener);
            // Socket activation wants it as fd 3, without close-on-exec. SAFETY: dup2 and fcntl
            // are async-signal-safe, and fd 3 of the child is free to take: nothing else runs
            // between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    use std::os::fd::FromRawFd;
                    let source = std::os::fd::BorrowedFd::borrow_raw(fd);
                    if fd == 3 {
                        rustix::io::fcntl_setfd(source, rustix::io::FdFlags::empty())?;
                    } else {
                        let mut three =
                            std::mem::ManuallyDrop::new(std::os::fd::OwnedFd::from_raw_fd(3));
                        rustix::io::dup2(source, &mut three)?;
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .args(["--net", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        // The engine holds it now: once it stops, the port is closed.
        drop(listener);
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("the second dockerd exited ({status}):\n{}", self.log());
            }
            assert!(
                started.elapsed() < START,
                "the second dockerd did not answer within {START:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether it answers `docker info`.
    pub fn answers(&self) -> bool {
        self.docker(&["info", "--format", "{{.ID}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A `docker` command aimed at this engine.
    pub fn docker(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker");
        command.args(["-H", &self.host]).args(args);
        command
    }

    /// The text of `docker ARGS` on this engine; fails the test when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let output = self.docker(args).output().expect("run docker");
        assert!(
            output.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Copies `image` from the first engine, unless this one has it. Returns how long it took.
    pub fn load(&self, image: &str) -> Duration {
        let started = Instant::now();
        let has = self
            .docker(&["image", "inspect", image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if has {
            return started.elapsed();
        }
        let status = Command::new("sh")
            .args([
                "-c",
                &format!("docker save '{image}' | docker -H '{}' load -q", self.host),
            ])
            .stdout(Stdio::null())
            .status()
            .expect("docker save | load");
        assert!(
            status.success(),
            "cannot load {image} onto the second engine"
        );
        started.elapsed()
    }

    /// SIGTERM and wait (dockerd stops its containers first).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -9` of dockerd alone: its containerd and the containers' shims live on, as after
    /// a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same data root.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts it again after [`SecondEngine::stop`] or [`SecondEngine::kill9`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "it is running");
        // After a kill -9, dockerd's containerd dies too (its parent-death signal) and is
        // reparented to PID 1, which on this machine never reaps: the zombie keeps its pid
        // "alive", and the new dockerd would wait on it for ever. On a host whose init reaps,
        // the pid files would name dead processes, which dockerd ignores; so remove those.
        for pidfile in ["d.pid", "x/containerd/containerd.pid"] {
            let path = self.dir.join(pidfile);
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
            // The state is the field after the parenthesised command.
            let dead = stat.map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            });
            if dead {
                let _ = std::fs::remove_file(&path);
            }
        }
        self.spawn();
    }

    /// Its network namespace, for a test that serves something the engine's containers on
    /// `host` networking reach (its own loopback).
    pub fn netns(&self) -> PathBuf {
        let pid = self.child.as_ref().expect("it runs").id();
        PathBuf::from(format!("/proc/{pid}/ns/net"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Names of the containers it has, running or not.
    pub fn containers(&self) -> Vec<String> {
        self.run(&["ps", "-a", "--format", "{{.Names}}"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Names of its volumes.
    pub fn volumes(&self) -> Vec<String> {
        self.run(&["volume", "ls", "-q"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Its containers first, so that no shim outlives it.
            let _ = self
                .docker(&["ps", "-aq"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .map(|ids| {
                    for id in ids.split_whitespace() {
                        let _ = self
                            .docker(&["rm", "-f", id])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                    }
                });
        }
        self.stop();
        // What a kill -9 left: its containerd and shims, and the mounts below its data root.
        let _ = Command::new("pkill")
            .args(["-9", "-f", &self.dir.display().to_string()])
            .status();
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, the engine's certificate for 127.0.0.1 and a client's, made with openssl for this
/// engine alone (ECDSA P-256, valid two days).
fn make_certificates(dir: &Path) -> Tls {
    let server = dir.join("server-certs");
    let client = dir.join("client-certs");
    std::fs::create_dir_all(&server).unwrap();
    std::fs::create_dir_all(&client).unwrap();
    let script = format!(
        r#"set -e
cd {dir}
key='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
openssl req -x509 $key -keyout ca-key.pem -out ca.pem -days 2 -subj /CN=maxions-test-ca 2>/dev/null
openssl req $key -keyout server-certs/server-key.pem -out server.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth
' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile server.ext -out server-certs/server-cert.pem 2>/dev/null
openssl req $key -keyout client-certs/key.pem -out client.csr -subj /CN=maxions-test-client 2>/dev/null
printf 'extendedKeyUsage=clientAuth
' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile client.ext -out client-certs/cert.pem 2>/dev/null
cp ca.pem server-certs/ca.pem
cp ca.pem client-certs/ca.pem
"#,
        dir = dir.display()
    );
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("run openssl");
    assert!(status.success(), "cannot make the test's TLS certificates");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    Tls {
        host: format!("tcp://127.0.0.1:{port}"),
        port,
        client,
        server,
    }
}

fn unmount_below(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).status();
    }
}
