//! A blueprint: how a task runs — the sandbox, the agent and the ordered steps.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::{ByteSize, HumanDuration};

/// A blueprint file (`blueprints/*.yaml`): the sandbox, the agent and the ordered steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "maxions blueprint")]
pub struct Blueprint {
    /// The blueprint's name, as tasks refer to it.
    #[schemars(extend("format" = "maxions-identifier"))]
    pub name: String,
    /// What this blueprint is for, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The container every step of a run executes in.
    #[serde(default)]
    pub sandbox: SandboxSpec,
    /// The coding agent that `agent` steps and fix rounds run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSpec>,
    /// The steps, run in order in one sandbox.
    #[schemars(length(min = 1))]
    pub steps: Vec<Step>,
}

/// The sandbox container of a run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// The image to run. Default: the daemon config's `default_image`, else `maxions/sandbox:latest`
    /// (built by `maxions image build`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// What the sandbox may reach on the network. Default: `none`.
    #[serde(default)]
    pub network: Network,
    /// Hosts reachable with `network: allowlist`: exact names (`github.com`) or one leading
    /// wildcard label (`*.githubusercontent.com`, which matches subdomains only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<HostPattern>,
    /// Memory limit, e.g. `4g`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// CPU limit, in cores (fractions allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 1024.0))]
    pub cpus: Option<f64>,
    /// Maximum number of processes in the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 1_000_000))]
    pub pids: Option<u32>,
    /// How much `/workspace` may hold, e.g. `20g`. Default: `10g`. maxions measures it every few
    /// seconds while a step runs and kills the step when it is over (the engine's volumes have
    /// no quota), so a step may overshoot by what it writes in those seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<ByteSize>,
    /// Time limit for the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Labels the engine a run goes to must have (see `engines` in maxions.yaml), e.g.
    /// `[large]`. Default: none, any engine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_labels: Vec<crate::config::daemon::EngineLabel>,
}

/// A host pattern of an egress allowlist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct HostPattern(#[schemars(extend("format" = "maxions-host-pattern"))] pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// No network at all: only a loopback interface.
    #[default]
    None,
    /// The host's network, unfiltered. Not recommended.
    Host,
    /// Only the hosts listed in `allow`, through maxions' egress proxy.
    Allowlist,
}

/// The agent that runs `agent` steps and fix rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub kind: AgentKind,
    /// The model, in the agent's own notation: `github-copilot/gpt-5-mini` for pi (provider,
    /// slash, model), `claude-sonnet-4-5` for Claude Code, `gpt-5-codex` for Codex. With
    /// `provider`, the model's id at that provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Extra command-line flags for the agent, appended after maxions' own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// For `kind: command`: the program and its arguments. The prompt goes on its stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub command: Option<Vec<String>>,
    /// Secrets the agent's process receives as environment variables (provider keys such as
    /// `ANTHROPIC_API_KEY`, `OPENAI_API_KEY` or `COPILOT_GITHUB_TOKEN`). Only agent steps and
    /// fix rounds get them; no forge credential is ever among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretName>,
    /// A model provider of your own (an OpenAI- or Anthropic-compatible endpoint, a gateway)
    /// instead of the agent's default one. Its host must be on `sandbox.allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// Prices in US dollars per million tokens, for agents that report no cost (Codex) and
    /// for a `provider` of your own. An agent's own cost figure wins when it reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<Prices>,
    /// Standing instructions for the agent (what an `AGENTS.md` says), given as its user-level
    /// instructions file, never written into the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// How often maxions runs the agent again when the model provider failed (HTTP 429, 5xx,
    /// overloaded, a broken stream) before it changed anything. Default: 1 (each agent also retries
    /// a failed model call itself, a bounded number of times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10))]
    pub retries: Option<u32>,
    /// Limits across all agent steps and fix rounds of a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// pi (`@mariozechner/pi-coding-agent`).
    Pi,
    /// Claude Code.
    Claude,
    /// OpenAI Codex CLI.
    Codex,
    /// Any program: the prompt goes on its stdin.
    Command,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Pi => "pi",
            AgentKind::Claude => "claude",
            AgentKind::Codex => "codex",
            AgentKind::Command => "command",
        }
    }
}

/// A model provider endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// The endpoint, e.g. `https://llm.example.com/v1` (OpenAI-style APIs) or
    /// `https://llm.example.com` (Anthropic's, as `ANTHROPIC_BASE_URL` takes it).
    #[schemars(extend("format" = "uri"))]
    pub base_url: String,
    /// The wire protocol. Default: what the agent speaks (`openai-completions` for pi,
    /// `anthropic-messages` for Claude Code, `openai-responses` for Codex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ProviderApi>,
    /// The secret holding the provider's API key (defined in maxions.yaml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<SecretName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderApi {
    /// OpenAI chat completions (`POST /chat/completions`).
    OpenaiCompletions,
    /// OpenAI Responses (`POST /responses`).
    OpenaiResponses,
    /// Anthropic Messages (`POST /v1/messages`).
    AnthropicMessages,
}

impl ProviderApi {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenaiCompletions => "openai-completions",
            Self::OpenaiResponses => "openai-responses",
            Self::AnthropicMessages => "anthropic-messages",
        }
    }
}

/// Prices in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Per million input (prompt) tokens not read from a cache.
    #[schemars(range(min = 0.0))]
    pub input: f64,
    /// Per million output tokens (reasoning included).
    #[schemars(range(min = 0.0))]
    pub output: f64,
    /// Per million input tokens read from the provider's cache. Default: `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cache_read: Option<f64>,
    /// Per million input tokens written to the provider's cache. Default: `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cache_write: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Stop the agent once the run's agent steps have cost this much, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_cost_usd: Option<f64>,
    /// Stop the agent once the run's agent steps have used this many tokens (input, output and
    /// cache, summed over every model call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<u64>,
    /// Stop the agent once the run's agent steps have taken this long in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<HumanDuration>,
    /// Kill the agent when it prints nothing for this long (a hung tool, a stalled provider).
    /// Default: `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<HumanDuration>,
    /// What the run does once a limit stopped the agent: `fail` (the default), or `draft_pr`:
    /// skip the remaining agent work, run the checks once, and commit, push and open a draft
    /// pull request whose body reports what happened.
    #[serde(default, skip_serializing_if = "OnExceeded::is_default")]
    pub on_exceeded: OnExceeded,
}

/// What a run does after a budget stopped its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnExceeded {
    /// The run fails; nothing is committed.
    #[default]
    Fail,
    /// Commit what the agent left (if the checks were run on it), push, and open a draft pull
    /// request reporting the stop.
    DraftPr,
}

impl OnExceeded {
    fn is_default(&self) -> bool {
        *self == Self::Fail
    }
}

/// The secret name blueprints used to ask for git credentials with. It is an ordinary secret now
/// (defined in maxions.yaml like any other), and `validate` warns on it: maxions fetches and
/// pushes itself (`checkout`, `push`), and the forge's token never enters the sandbox.
pub const GIT_TOKEN: &str = "GIT_TOKEN";

/// The name of a secret, defined in the daemon config and given to a step as an environment
/// variable of the same name.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct SecretName(#[schemars(extend("format" = "maxions-env-name"))] pub String);

/// One step of a blueprint. Exactly one of `checkout`, `run`, `agent`, `check`, `commit`, `push`
/// and `pull_request` says what the step does; the other fields apply to any step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Names the step, for `steps.<id>.<output>` in later templates and in logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "maxions-identifier"))]
    pub id: Option<String>,
    /// A template expression; the step runs only when it is true, e.g. `run.failed_checks == 0`.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Time limit for this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Environment variables for this step (values are templates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secrets this step receives as environment variables. Steps get no secret they do not name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretName>,
    /// Go on with the next step when this one fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_error: bool,
    /// Files read back from the sandbox after the step, as `steps.<id>.<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,

    /// Put the task's repository at `/workspace/repo` on a new branch from the base (done by
    /// maxions from its own mirror: no credential enters the sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout: Option<Checkout>,
    /// A shell command (run with `sh -c` in `/workspace`). Interpolated values are shell-quoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// A prompt for the blueprint's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Checks to run; with `fix`, failed checks go to the agent and are run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub check: Option<Vec<Check>>,
    /// How failed checks are fixed (only with `check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<Fix>,
    /// Commit every change in the repository (done by maxions, not the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<Commit>,
    /// Push the task's branch (done by maxions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<Push>,
    /// Open or update the pull request for the task's branch (done by maxions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequest>,
}

/// What a step does, borrowed from a [`Step`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepKind<'a> {
    Checkout(&'a Checkout),
    Run(&'a str),
    Agent(&'a str),
    Check(&'a [Check], Option<&'a Fix>),
    Commit(&'a Commit),
    Push(&'a Push),
    PullRequest(&'a PullRequest),
}

impl StepKind<'_> {
    /// The step's key in YAML: `checkout`, `run`, `agent`, `check`, `commit`, `push`,
    /// `pull_request`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Checkout(_) => "checkout",
            StepKind::Run(_) => "run",
            StepKind::Agent(_) => "agent",
            StepKind::Check(..) => "check",
            StepKind::Commit(_) => "commit",
            StepKind::Push(_) => "push",
            StepKind::PullRequest(_) => "pull_request",
        }
    }
}

impl Step {
    pub const KINDS: [&str; 7] = [
        "checkout",
        "run",
        "agent",
        "check",
        "commit",
        "push",
        "pull_request",
    ];

    /// What the step does. `None` only for a step that validation refuses (no kind, or several).
    pub fn kind(&self) -> Option<StepKind<'_>> {
        let kinds = [
            self.checkout.as_ref().map(StepKind::Checkout),
            self.run.as_deref().map(StepKind::Run),
            self.agent.as_deref().map(StepKind::Agent),
            self.check
                .as_deref()
                .map(|checks| StepKind::Check(checks, self.fix.as_ref())),
            self.commit.as_ref().map(StepKind::Commit),
            self.push.as_ref().map(StepKind::Push),
            self.pull_request.as_ref().map(StepKind::PullRequest),
        ];
        let mut present = kinds.into_iter().flatten();
        let kind = present.next()?;
        present.next().is_none().then_some(kind)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Names the check in logs and in `failed` for the fix prompt.
    #[schemars(extend("format" = "maxions-identifier"))]
    pub id: String,
    /// The shell command; a non-zero exit fails the check.
    pub run: String,
    /// Time limit for this check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fix {
    /// How many times the agent may try to fix failing checks.
    #[schemars(range(min = 0, max = 20))]
    pub max_rounds: u32,
    /// The prompt for a fix round; `failed` lists the failed checks as `{id, exit_code, output}`.
    pub agent: String,
    /// When checks still fail after the last round: `fail` the run (default) or `continue` (e.g.
    /// to open a draft pull request that reports the failures).
    #[serde(default)]
    pub on_failure: OnFailure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    #[default]
    Fail,
    Continue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// The commit message (a template).
    pub message: String,
    /// The commit author. Default: the daemon config's `git.author`, else `maxions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Author>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Author {
    pub name: String,
    pub email: String,
}

/// `checkout: {}`: maxions fetches the repository into its own mirror (with the forge's token,
/// on the trusted side), and streams the base branch into the sandbox as a git bundle.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkout {}

/// `push: {}`: maxions pushes the commit of the `commit` step to the task's branch, from its own
/// mirror, after verifying it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Push {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// The title (a template).
    pub title: String,
    /// The body (a template, Markdown).
    #[serde(default)]
    pub body: String,
    /// Open as a draft: `true`, `false`, or a template such as `"{{ run.failed_checks > 0 }}"`.
    #[serde(default)]
    pub draft: Draft,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// GitHub logins asked for review.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviewers: Vec<String>,
}

/// `draft:` is a boolean or a template that renders to `true` or `false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "DraftRepr", into = "DraftRepr")]
pub enum Draft {
    Fixed(bool),
    Template(String),
}

impl Default for Draft {
    fn default() -> Self {
        Draft::Fixed(false)
    }
}

/// How `draft:` is written; a private detail so that `Draft` itself reads as what it means.
#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum DraftRepr {
    Bool(bool),
    Text(String),
}

impl From<DraftRepr> for Draft {
    fn from(repr: DraftRepr) -> Self {
        match repr {
            DraftRepr::Bool(b) => Draft::Fixed(b),
            DraftRepr::Text(t) => Draft::Template(t),
        }
    }
}

impl From<Draft> for DraftRepr {
    fn from(draft: Draft) -> Self {
        match draft {
            Draft::Fixed(b) => DraftRepr::Bool(b),
            Draft::Template(t) => DraftRepr::Text(t),
        }
    }
}

impl JsonSchema for Draft {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Draft".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "true, false, or a template that renders to true or false.",
            "type": ["boolean", "string"],
        })
    }
}
