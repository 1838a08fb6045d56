//! How maxions runs git on the host. Every git process starts from nothing the sandbox (or the
//! machine's users) could have written: a cleared environment, no system or global config, an
//! empty private `HOME`, hooks and fsmonitor off, no credential helper, only the one transport
//! the command needs, and objects checked as they arrive. Credentials reach git only as
//! `GIT_CONFIG_*` environment entries of the one process that needs them.
//!
//! Each process runs in a process group of its own, under a timeout and a cancellation token;
//! on either (or when the caller stops waiting) the whole group is killed, so no
//! `git-remote-http` or `index-pack` child is left behind.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

use super::error::GitError;
use crate::sandbox::redact::Redactor;

/// Config every host git process gets, whatever it does. Command-line `-c` entries override
/// every config file (the mirror's own included), which is the point.
const FIXED_CONFIG: &[&str] = &[
    // The mirror's hooks never run. (A `file://` remote's receive-pack gets none of these
    // entries: see `FILE_RECEIVE_PACK`.)
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    // An empty value resets the list: no helper is asked for, or told, any credential.
    "credential.helper=",
    "core.askPass=",
    // Objects from a remote or a bundle are checked as they arrive.
    "transfer.fsckObjects=true",
    // The header is scoped to the remote's origin; a redirect must not carry it elsewhere.
    "http.followRedirects=false",
    // Auto-gc runs in the foreground, so under the mirror lock, the timeout and the group kill.
    "gc.autoDetach=false",
    "maintenance.autoDetach=false",
    "protocol.allow=never",
];

/// The `receive-pack` that a push to a `file://` remote runs in that repository (through
/// `sh -c`, with the path appended, quoted by git). git hands a local transport's child none of
/// our `-c` entries (it clears `GIT_CONFIG_PARAMETERS`), and that child reads the remote's own
/// config, which a task's author may control: without these, the remote's hooks (`pre-receive`,
/// `update`, `reference-transaction`, ...), its `core.alternateRefsCommand`, its auto-gc and,
/// for a non-bare remote with `receive.denyCurrentBranch=updateInstead`, the checkout's filters
/// and fsmonitor would run on this machine. `true` is the no-op alternate-refs command (an empty
/// value is run, and fails). Upload-pack needs nothing of the kind: git itself runs no hook and
/// no command from the repository's config there.
pub(crate) const FILE_RECEIVE_PACK: &str = "git -c core.hooksPath=/dev/null -c core.fsmonitor=false \
     -c core.alternateRefsCommand=true -c receive.denyCurrentBranch=refuse \
     -c receive.autogc=false receive-pack";

/// How many lines of stderr an error keeps.
const STDERR_LINES: usize = 12;

/// The one transport a command may use (`protocol.<name>.allow=always`); all others are off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    None,
    Http,
    Https,
    /// `file://` remotes, and bundles (git checks the `file` protocol for those too).
    File,
}

impl Transport {
    fn config(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Http => Some("protocol.http.allow=always"),
            Self::Https => Some("protocol.https.allow=always"),
            Self::File => Some("protocol.file.allow=always"),
        }
    }
}

/// One git invocation, built up and then run once.
pub(crate) struct GitCommand {
    program: OsString,
    home: PathBuf,
    git_dir: Option<PathBuf>,
    transport: Transport,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    redactor: Redactor,
    timeout: Duration,
    /// `git fetch`, `git bundle verify`: what messages call this command.
    label: String,
}

/// A finished git process whose exit status the caller wants to judge itself.
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl GitCommand {
    /// `git <subcommand>` with `home` as its private `HOME` and the given timeout.
    pub fn new(subcommand: &str, home: &Path, timeout: Duration) -> Self {
        Self {
            program: OsString::from("git"),
            home: home.to_owned(),
            git_dir: None,
            transport: Transport::None,
            args: vec![OsString::from(subcommand)],
            env: Vec::new(),
            stdin: None,
            redactor: Redactor::none(),
            timeout,
            label: format!("git {subcommand}"),
        }
    }

    /// A more precise name for messages, e.g. `git bundle verify`.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn git_dir(mut self, dir: &Path) -> Self {
        self.git_dir = Some(dir.to_owned());
        self
    }

    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Environment entries for this process only (credentials' `GIT_CONFIG_*`, an identity).
    pub fn envs(mut self, env: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(env);
        self
    }

    pub fn stdin(mut self, input: Vec<u8>) -> Self {
        self.stdin = Some(input);
        self
    }

    /// Masks these values in any stderr an error carries.
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    #[cfg(test)]
    pub fn program(mut self, program: impl Into<OsString>) -> Self {
        self.program = program.into();
        self
    }

    /// The process to spawn: cleared environment, fixed config, then the arguments.
    pub fn build(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            // `refs/replace/*` must not change what an object id means to the checks.
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("LC_ALL", "C")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // No discovery from whatever directory maxions was started in.
            .current_dir(&self.home);
        if let Some(dir) = &self.git_dir {
            let mut flag = OsString::from("--git-dir=");
            flag.push(dir);
            command.arg(flag);
        }
        for entry in FIXED_CONFIG.iter().copied().chain(self.transport.config()) {
            command.arg("-c").arg(entry);
        }
        command.args(&self.args);
        command
            // Always a pipe, closed once the input (often none) is written: git never waits
            // on a terminal.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        command
    }

    /// Runs to the end and returns stdout; a non-zero exit is an error.
    pub async fn run(self, cancel: &CancellationToken) -> Result<Vec<u8>, GitError> {
        let label = self.label.clone();
        let finished = self.run_raw(cancel).await?;
        if finished.status.success() {
            Ok(finished.stdout)
        } else {
            Err(failed(label, &finished))
        }
    }

    /// Runs to the end, whatever the exit status.
    pub async fn run_raw(self, cancel: &CancellationToken) -> Result<Finished, GitError> {
        let mut child = self.spawn()?;
        let group = KillGroup::new(&child);
        let input = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let stdin_bytes = self.stdin.clone().unwrap_or_default();
        let work = async {
            let (_, stdout, stderr, status) = tokio::join!(
                feed(input, &stdin_bytes),
                read_all(stdout),
                read_all(stderr),
                child.wait()
            );
            (status, stdout, stderr)
        };
        let (status, stdout, stderr) = self.bounded(work, cancel).await?;
        group.disarm();
        let status = status.map_err(|source| self.spawn_error(source))?;
        Ok(Finished {
            status,
            stdout,
            stderr: self.tail(&stderr),
        })
    }

    /// Runs with stdin and stdout handed to `work`, which talks to the process while it runs
    /// (`cat-file --batch`); then waits for it. `work`'s error wins over git's exit status.
    pub async fn run_with<T, F>(
        self,
        cancel: &CancellationToken,
        work: impl FnOnce(ChildStdin, ChildStdout) -> F,
    ) -> Result<T, GitError>
    where
        F: Future<Output = Result<T, GitError>>,
    {
        let mut child = self.spawn()?;
        let group = KillGroup::new(&child);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(self.spawn_error(std::io::Error::other("no pipes to git")));
        };
        let stderr = child.stderr.take();
        let both = async {
            let (result, stderr) = tokio::join!(work(stdin, stdout), read_all(stderr));
            let status = child.wait().await;
            (result, stderr, status)
        };
        let (result, stderr, status) = self.bounded(both, cancel).await?;
        group.disarm();
        let status = status.map_err(|source| self.spawn_error(source))?;
        let value = result?;
        if status.success() {
            Ok(value)
        } else {
            let finished = Finished {
                status,
                stdout: Vec::new(),
                stderr: self.tail(&stderr),
            };
            Err(failed(self.label.clone(), &finished))
        }
    }

    fn spawn(&self) -> Result<Child, GitError> {
        self.build()
            .spawn()
            .map_err(|source| self.spawn_error(source))
    }

    async fn bounded<T>(
        &self,
        work: impl Future<Output = T>,
        cancel: &CancellationToken,
    ) -> Result<T, GitError> {
        tokio::select! {
            done = work => Ok(done),
            () = tokio::time::sleep(self.timeout) => Err(GitError::TimedOut {
                command: self.label.clone(),
                after: self.timeout,
            }),
            () = cancel.cancelled() => Err(GitError::Cancelled { command: self.label.clone() }),
        }
    }

    fn spawn_error(&self, source: std::io::Error) -> GitError {
        GitError::Spawn {
            command: self.label.clone(),
            source,
        }
    }

    /// The last lines of stderr, redacted, with control characters escaped (a remote's or a
    /// bundle's text could hold terminal escapes).
    fn tail(&self, stderr: &[u8]) -> String {
        let text = String::from_utf8_lossy(stderr);
        let text = self.redactor.redact_str(&text);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let start = lines.len().saturating_sub(STDERR_LINES);
        lines[start..]
            .iter()
            .map(|line| escape_controls(line.trim_end()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

pub(crate) fn failed(command: String, finished: &Finished) -> GitError {
    GitError::Failed {
        command,
        status: finished.status.code().map_or_else(
            || "killed by a signal".to_owned(),
            |code| format!("exit status {code}"),
        ),
        stderr: finished.stderr.clone(),
    }
}

/// Text with every control character shown as an escape, for messages built from untrusted text.
pub(crate) fn escape_controls(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

async fn feed(input: Option<ChildStdin>, bytes: &[u8]) {
    if let Some(mut input) = input {
        // A git that exits early closes its stdin; its exit status says why.
        let _ = input.write_all(bytes).await;
        let _ = input.shutdown().await;
    }
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut out).await;
    }
    out
}

/// Kills the child's whole process group unless disarmed. It is dropped (and fires) while the
/// child is not yet reaped, so the group id cannot have been reused.
struct KillGroup(Option<rustix::process::Pid>);

impl KillGroup {
    fn new(child: &Child) -> Self {
        Self(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw),
        )
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            // ESRCH (all gone already) is the good case.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::forge::GitCredentials;
    use crate::secret::Secret;

    const TOKEN: &str = "ghs_commandtesttoken0123456789";

    /// A stand-in for git that writes down the environment and arguments it was given.
    fn recorder(dir: &Path) -> PathBuf {
        let script = dir.join("fake-git");
        std::fs::write(
            &script,
            "#!/bin/sh\nenv > \"$0.env\"\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > \"$0.args\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    #[tokio::test]
    async fn git_sees_only_a_clean_environment_and_the_fixed_config() {
        let dir = tempfile::tempdir().unwrap();
        let script = recorder(dir.path());
        let url = "http://127.0.0.1:9/octo/hello.git";
        let creds = GitCredentials::new("x-access-token", Secret::new("T", TOKEN).unwrap(), None)
            .scoped_to(url);
        GitCommand::new("fetch", dir.path(), Duration::from_secs(10))
            .program(&script)
            .git_dir(Path::new("/state/mirror.git"))
            .transport(Transport::Http)
            .envs(creds.git_env(url))
            .arg(url)
            .run(&CancellationToken::new())
            .await
            .unwrap();

        let env = std::fs::read_to_string(dir.path().join("fake-git.env")).unwrap();
        let mut keys: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|kv| kv.0)
            .collect();
        keys.sort_unstable();
        // `cargo test` sets dozens of variables (CARGO_*, RUST_*, and whatever the shell had):
        // none of them, and no GIT_* the parent might carry, reach git. `PWD` is the shell's.
        assert_eq!(
            keys,
            [
                "GIT_CONFIG_COUNT",
                "GIT_CONFIG_GLOBAL",
                "GIT_CONFIG_KEY_0",
                "GIT_CONFIG_NOSYSTEM",
                "GIT_CONFIG_VALUE_0",
                "GIT_NO_REPLACE_OBJECTS",
                "GIT_TERMINAL_PROMPT",
                "HOME",
                "LC_ALL",
                "PATH",
                "PWD",
            ]
        );
        assert!(
            env.contains("GIT_CONFIG_KEY_0=http.http://127.0.0.1:9/.extraHeader\n"),
            "{env}"
        );
        assert!(env.contains("GIT_CONFIG_GLOBAL=/dev/null\n"), "{env}");
        assert!(
            env.contains(&format!("HOME={}\n", dir.path().display())),
            "{env}"
        );

        let args = std::fs::read_to_string(dir.path().join("fake-git.args")).unwrap();
        let args: Vec<&str> = args.lines().collect();
        assert_eq!(args[0], "--git-dir=/state/mirror.git");
        for entry in [
            "core.hooksPath=/dev/null",
            "core.fsmonitor=false",
            "credential.helper=",
            "transfer.fsckObjects=true",
            "http.followRedirects=false",
            "protocol.allow=never",
            "protocol.http.allow=always",
        ] {
            let at = args.iter().position(|a| *a == entry);
            assert!(
                at.is_some_and(|at| args[at - 1] == "-c"),
                "{entry} missing: {args:?}"
            );
        }
        assert!(!args.contains(&"protocol.file.allow=always"), "{args:?}");
        assert!(!args.contains(&"protocol.https.allow=always"), "{args:?}");
        // The token is never on the command line, where `ps` shows it.
        assert!(
            args.iter()
                .all(|a| !a.contains(TOKEN) && !a.contains("Authorization"))
        );
        assert_eq!(args[args.len() - 2..], ["fetch", url]);
    }

    #[tokio::test]
    async fn the_file_transport_is_allowed_only_when_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let script = recorder(dir.path());
        GitCommand::new("fetch", dir.path(), Duration::from_secs(10))
            .program(&script)
            .transport(Transport::File)
            .run(&CancellationToken::new())
            .await
            .unwrap();
        let args = std::fs::read_to_string(dir.path().join("fake-git.args")).unwrap();
        assert!(
            args.lines().any(|a| a == "protocol.file.allow=always"),
            "{args}"
        );
        assert!(
            !args.lines().any(|a| a.starts_with("protocol.http")),
            "{args}"
        );
    }

    #[tokio::test]
    async fn failures_name_the_command_and_redact_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("noisy-git");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nprintf 'fatal: bad header {TOKEN}\\n\\033]52;c;x\\007\\n' >&2\nexit 128\n"),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = Secret::new("T", TOKEN).unwrap();
        let err = GitCommand::new("push", dir.path(), Duration::from_secs(10))
            .program(&script)
            .redactor(Redactor::new([&secret]).unwrap())
            .run(&CancellationToken::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("`git push` failed (exit status 128): fatal: bad header ***"),
            "{err}"
        );
        assert!(!err.contains(TOKEN), "{err}");
        assert!(
            !err.contains('\u{1b}'),
            "a raw escape reached the message: {err:?}"
        );
    }

    /// A stand-in for a git whose child hangs: the timeout kills both, not only the parent.
    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hanging-git");
        let pid_file = dir.path().join("child.pid");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nsleep 300 &\necho $! > {}\nwait\n",
                pid_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = std::time::Instant::now();
        let err = GitCommand::new("fetch", dir.path(), Duration::from_millis(500))
            .program(&script)
            .run(&CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Gone, or a zombie waiting for init to reap it.
        while proc_dir.exists()
            && !std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|s| s.contains(") Z "))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the grandchild {pid} survived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn cancel_stops_git() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("slow-git");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 300\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            canceller.cancel();
        });
        let err = GitCommand::new("fetch", dir.path(), Duration::from_secs(60))
            .program(&script)
            .run(&cancel)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "`git fetch` was cancelled");
    }
}
