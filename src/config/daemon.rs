//! The daemon config (`maxions.yaml`): where things live, how many runs at once, and where
//! credentials come from. Credentials are named by environment variable or file, never inlined.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::blueprint::{Author, SecretName};
use super::units::HumanDuration;

/// `maxions.yaml`. Every field has a default; paths are relative to this file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "maxions daemon config")]
pub struct DaemonConfig {
    /// Where task files are watched. Default: `tasks`.
    #[serde(default = "default_tasks_dir")]
    pub tasks_dir: PathBuf,
    /// Where blueprints are looked up by name. Default: `blueprints`.
    #[serde(default = "default_blueprints_dir")]
    pub blueprints_dir: PathBuf,
    /// Where the daemon keeps its own state (queue, run index). Default: `.maxions`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How many runs may execute at once, on all engines together. Default: 3 with the one
    /// local engine; with `engines`, the sum of their capacities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: Option<u32>,
    /// The Docker engines runs are placed on, each with a capacity and labels. A run goes to an
    /// engine with a free slot and every label its blueprint's `sandbox.engine_labels` names,
    /// the least loaded first; an engine that stops answering gets no runs until it answers
    /// again. Default: one engine, `local`: `DOCKER_HOST` (with `DOCKER_TLS_VERIFY` and
    /// `DOCKER_CERT_PATH`), else the local socket, with a capacity of `concurrency`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engines: Vec<EngineConfig>,
    /// The image for blueprints that name none. Default: `maxions/sandbox:latest`.
    #[serde(default = "default_image")]
    pub default_image: String,
    /// Secrets steps may ask for by name, each read from an environment variable or a file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<SecretName, SecretSource>,
    /// How pull requests are opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubConfig>,
    /// Commit identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitConfig>,
    /// The HTTP API and dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiConfig>,
    /// Every branch maxions pushes starts with this, and a task's `branch:` must too, so that no
    /// task can make maxions push to `main` or another branch people use. Default: `maxions/`.
    #[serde(default = "default_branch_prefix")]
    #[schemars(length(min = 1))]
    pub branch_prefix: String,
    /// The directories under which a task's `file://` repository may live (relative to this
    /// file). A daemon that accepts tasks from others must not read any repository it can reach
    /// on disk for them. Default: the directory of this file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_repos: Vec<PathBuf>,
    /// How many run logs the daemon keeps per task (`<stem>.runs/`); older ones are deleted
    /// when a run ends, so that a task scheduled every 5 minutes cannot fill the disk.
    /// Default: 20.
    #[serde(default = "default_keep_runs")]
    #[schemars(range(min = 1))]
    pub keep_runs: u32,
    /// A scheduled task whose slots passed while the daemon was down: `run_once` runs it once
    /// at start-up (never a burst, however many slots passed), `skip` waits for the next slot.
    /// Default: `run_once`.
    #[serde(default)]
    pub missed_runs: MissedRuns,
    /// A scheduled task whose slot comes while its previous run is still going or queued:
    /// `skip` drops that slot, `queue` runs it once the previous one ends (at most one waits).
    /// Either way it is logged, and two runs of one task never overlap. Default: `skip`.
    #[serde(default)]
    pub overlap: Overlap,
    /// Runs the daemon was running when it died (`kill -9`, power loss), or that the Docker
    /// engine went away under (stopped, crashed): `requeue` runs them again, at start-up or
    /// when the engine answers again (at most `max_attempts` times in all); `record` only marks
    /// them `interrupted`. Default: `requeue`.
    #[serde(default)]
    pub interrupted: Interrupted,
    /// How many times in all an interrupted run is tried. Default: 3.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    /// On SIGTERM or Ctrl-C, how long running steps may go on before they are cancelled (a
    /// second signal cancels at once). Default: `30s`.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: HumanDuration,
}

/// See [`DaemonConfig::missed_runs`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissedRuns {
    #[default]
    RunOnce,
    Skip,
}

/// See [`DaemonConfig::overlap`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    #[default]
    Skip,
    Queue,
}

/// See [`DaemonConfig::interrupted`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Interrupted {
    #[default]
    Requeue,
    Record,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            tasks_dir: default_tasks_dir(),
            blueprints_dir: default_blueprints_dir(),
            state_dir: default_state_dir(),
            concurrency: None,
            engines: Vec::new(),
            default_image: default_image(),
            secrets: BTreeMap::new(),
            github: None,
            git: None,
            api: None,
            branch_prefix: default_branch_prefix(),
            local_repos: Vec::new(),
            keep_runs: default_keep_runs(),
            missed_runs: MissedRuns::default(),
            overlap: Overlap::default(),
            interrupted: Interrupted::default(),
            max_attempts: default_max_attempts(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

fn default_tasks_dir() -> PathBuf {
    "tasks".into()
}
fn default_blueprints_dir() -> PathBuf {
    "blueprints".into()
}
fn default_state_dir() -> PathBuf {
    ".maxions".into()
}
/// Runs at once with the one default engine, and each listed engine's default capacity.
pub const DEFAULT_CONCURRENCY: u32 = 3;

impl DaemonConfig {
    /// How many runs may execute at once, on all engines together: `concurrency`, else the sum
    /// of the engines' capacities (3 for the default engine).
    #[must_use]
    pub fn concurrency(&self) -> u32 {
        self.concurrency.unwrap_or_else(|| {
            if self.engines.is_empty() {
                DEFAULT_CONCURRENCY
            } else {
                self.engines.iter().map(EngineConfig::capacity).sum()
            }
        })
    }
}

/// One Docker engine runs may be placed on (see [`DaemonConfig::engines`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// What status, logs and `maxions image build --engine` call it. Unique.
    #[schemars(extend("format" = "maxions-engine-name"))]
    pub name: String,
    /// Where it listens: `unix:///path/docker.sock`, or `tcp://HOST:PORT` with `tls`. Default:
    /// `DOCKER_HOST` (with `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`), else the local socket.
    /// For an engine behind SSH, forward its socket (`ssh -nNT -L
    /// /run/maxions/b.sock:/var/run/docker.sock user@host`) and name the local end
    /// `unix:///run/maxions/b.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "maxions-docker-host"))]
    pub host: Option<String>,
    /// A directory holding the client certificate for a `tcp://` engine, as `DOCKER_CERT_PATH`
    /// does: `ca.pem` (the CA that signed the engine's certificate), `cert.pem` and `key.pem`
    /// (this client's). Relative to this file. Required for `tcp://`: an engine reached over
    /// plain TCP is root on its machine for anyone who can reach the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PathBuf>,
    /// How many runs it takes at once. Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub capacity: Option<u32>,
    /// What it offers (`gpu`, `large`): a blueprint's `sandbox.engine_labels` names the labels
    /// its runs need.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<EngineLabel>,
    /// The engine's network that egress proxies (for `network: allowlist`) join: the one the
    /// allowed traffic leaves by. For an engine that does not share this machine's files
    /// (`tcp://`, default `bridge`), the proxy runs in a container beside the sandbox; set it
    /// for a Unix socket forwarded from another machine too, so that its sandboxes get that
    /// form rather than a socket bind-mounted from this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_network: Option<String>,
}

impl EngineConfig {
    /// `capacity`, or 3.
    #[must_use]
    pub fn capacity(&self) -> u32 {
        self.capacity.unwrap_or(DEFAULT_CONCURRENCY)
    }
}

/// A label of an engine, or one a blueprint needs: lower-case letters, digits, `-`, `_`, `.`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct EngineLabel(#[schemars(extend("format" = "maxions-engine-label"))] pub String);
fn default_keep_runs() -> u32 {
    20
}
fn default_max_attempts() -> u32 {
    3
}
fn default_shutdown_grace() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}
pub fn default_image() -> String {
    "maxions/sandbox:latest".into()
}
pub fn default_branch_prefix() -> String {
    "maxions/".into()
}

/// Where a secret's value comes from. Exactly one key: `env` or `file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretSource {
    /// The name of an environment variable of the daemon's process.
    Env(#[schemars(extend("format" = "maxions-env-name"))] String),
    /// A file whose content (trimmed) is the secret, relative to this file.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// The REST API base URL. Default: `https://api.github.com`; for GitHub Enterprise,
    /// `https://HOST/api/v3`.
    #[serde(default = "default_github_api")]
    pub api_url: String,
    /// Where the forge serves its repositories: `owner/name` is cloned from
    /// `WEB_URL/owner/name.git`, and the forge's credentials go to this origin (scheme, host and
    /// port) and no other. Default: from `api_url`: `https://api.github.com` gives
    /// `https://github.com`, `https://api.HOST` gives `https://HOST`, `https://HOST/api/v3`
    /// (GitHub Enterprise) gives `https://HOST`; any other API URL gives its own origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    /// Authenticate as a GitHub App (preferred): tokens are minted per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<GithubApp>,
    /// Or with a personal access token read from this environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "maxions-env-name"))]
    pub token_env: Option<String>,
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}

impl GithubConfig {
    /// Where repositories live: `web_url`, or the one derived from `api_url` (see `web_url`),
    /// without a trailing slash.
    #[must_use]
    pub fn repo_base_url(&self) -> String {
        match &self.web_url {
            Some(url) => url.trim().trim_end_matches('/').to_owned(),
            None => web_url_for_api(&self.api_url),
        }
    }
}

/// The web URL beside a GitHub REST API URL: `https://api.github.com` → `https://github.com`,
/// `https://api.HOST` → `https://HOST`, `https://HOST/api/v3` → `https://HOST`, anything else →
/// its own `scheme://host[:port]`.
#[must_use]
pub fn web_url_for_api(api_url: &str) -> String {
    let url = api_url.trim().trim_end_matches('/');
    if let Some(base) = url.strip_suffix("/api/v3") {
        return base.to_owned();
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    match authority.strip_prefix("api.") {
        Some(host) if path.is_empty() && !host.is_empty() => format!("{scheme}://{host}"),
        _ => format!("{scheme}://{authority}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubApp {
    /// The App's id (not a secret).
    pub app_id: u64,
    /// The installation to mint tokens for.
    pub installation_id: u64,
    /// The environment variable holding the App's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "maxions-env-name"))]
    pub private_key_env: Option<String>,
    /// Or a file holding it (relative to this file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    /// The author and committer of maxions' commits.
    pub author: Author,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Whether `maxions daemon` serves the API and dashboard. Default: `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address to listen on (`127.0.0.1:0` picks a free port; the daemon writes the address it
    /// got to `api.json` in its state dir). Default: `127.0.0.1:7878`. Anything but a loopback
    /// address serves plain HTTP to the network: put a TLS proxy in front.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The environment variable holding the API's bearer token. When it is unset, the daemon
    /// generates a token and keeps it in `api-token` in its state dir (mode 0600). Default:
    /// `MAXIONS_API_TOKEN`.
    #[serde(default = "default_api_token_env")]
    #[schemars(extend("format" = "maxions-env-name"))]
    pub token_env: String,
    /// No token at all: anyone who can reach the port may drive the daemon. Allowed only on a
    /// loopback address (and then only requests naming a loopback host are answered). Default:
    /// `false`.
    #[serde(default)]
    pub open: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen(),
            token_env: default_api_token_env(),
            open: false,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_listen() -> String {
    "127.0.0.1:7878".into()
}
fn default_api_token_env() -> String {
    "MAXIONS_API_TOKEN".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_urls_follow_the_api_url() {
        for (api, web) in [
            ("https://api.github.com", "https://github.com"),
            ("https://api.github.com/", "https://github.com"),
            ("https://api.acme.ghe.com", "https://acme.ghe.com"),
            ("https://ghe.example/api/v3", "https://ghe.example"),
            (
                "https://ghe.example:8443/api/v3/",
                "https://ghe.example:8443",
            ),
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
            ("http://127.0.0.1:9000/prefix", "http://127.0.0.1:9000"),
        ] {
            assert_eq!(web_url_for_api(api), web, "{api}");
        }
        let config = GithubConfig {
            api_url: "https://api.github.com".into(),
            web_url: Some("http://127.0.0.1:9/".into()),
            app: None,
            token_env: None,
        };
        assert_eq!(config.repo_base_url(), "http://127.0.0.1:9");
    }
}
