//! Coding agents: how to start one on a prompt, and how to read what it does.
//!
//! An [`Agent`] builds the exec request (argv without a shell, environment, config files) for a
//! prompt, and makes a [`Parser`] that turns the agent's stdout, line by line, into typed
//! [`Activity`] (text, tool calls, tool results, errors) and running [`Usage`], and finally
//! decides from the stream and the exit status whether the agent did its job ([`Verdict`]). The
//! runner does the rest the same way for every agent: it streams, sums usage, enforces budgets
//! and the idle timeout, and logs.
//!
//! Adding an agent is one file here and one arm in [`for_kind`].

mod claude;
mod codex;
mod command;
mod pi;
mod usage;

use std::collections::BTreeMap;

use crate::config::blueprint::{AgentKind, AgentSpec};
use crate::sandbox::{ExecRequest, ExecStatus};
use crate::secret::Secret;
pub use usage::{Usage, cost_of};

/// Where an agent keeps its home, configuration and session files in the sandbox, one
/// directory per agent kind below it. It lives on the workspace volume, outside the repository
/// (Codex refuses a home below `/tmp`), and maxions removes it after every agent exec: what the
/// agent wrote there (a key's fingerprint, a session) does not reach the next step.
pub const AGENT_HOME: &str = "/workspace/.maxions-agent";

/// The longest prompt handed over as one argument (Linux takes at most 128 KiB per argument).
pub const MAX_ARG_PROMPT: usize = 120 << 10;

/// How much of an agent's text, a tool's arguments or a tool's result one log event keeps.
pub const ACTIVITY_CHARS: usize = 2000;

/// Everything an adapter needs to start its agent once.
pub struct Call<'a> {
    pub spec: &'a AgentSpec,
    pub prompt: &'a str,
    /// The agent's own directory ([`AGENT_HOME`]`/<kind>`), fresh and empty.
    pub home: &'a str,
    /// The repository, where the agent works.
    pub workdir: &'a str,
    /// maxions' system prompt followed by the blueprint's `instructions`.
    pub instructions: &'a str,
    /// The run's secrets, by name: the agent's own and (in an agent step) the step's.
    pub secrets: &'a BTreeMap<String, Secret>,
}

/// How to start an agent: files to write first (none secret), then one exec.
#[derive(Debug)]
pub struct Invocation {
    pub request: ExecRequest,
    /// Absolute paths in the sandbox, written as the sandbox's user, mode 0600.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Why an agent could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
}

/// A coding agent.
pub trait Agent: Send + Sync {
    /// How to run the agent on `call.prompt`.
    ///
    /// # Errors
    /// When the blueprint does not say enough to start it.
    fn invocation(&self, call: &Call<'_>) -> Result<Invocation, AgentError>;

    /// A parser for one exec's stdout.
    fn parser(&self, spec: &AgentSpec) -> Box<dyn Parser>;

    /// Whether stdout is the agent's event stream (parsed and logged as activity) rather than
    /// text for a person (logged as output).
    fn structured(&self) -> bool {
        true
    }
}

/// Reads one exec of an agent.
pub trait Parser: Send {
    /// One line of stdout, without its newline. Returns whether the line was the agent's (a
    /// line it did not understand is logged as plain output by the caller).
    fn line(&mut self, line: &str, out: &mut Vec<Activity>) -> bool;

    /// The usage of this exec so far: a running estimate while it streams, the agent's final
    /// figures once it reported them.
    fn usage(&self) -> Usage;

    /// Whether the agent did its job, from what it printed and how it exited.
    fn verdict(&self, status: &ExecStatus) -> Verdict;

    /// Why the agent should be stopped now although it still runs and prints (an agent that
    /// retries an unreachable provider for ever), if it should. The verdict is then a provider
    /// failure with this reason.
    fn give_up(&self) -> Option<String> {
        None
    }
}

/// Something an agent did, as logged (`agent` events). Text is cut to [`ACTIVITY_CHARS`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "activity", rename_all = "snake_case")]
pub enum Activity {
    /// What the model said.
    Text { text: String },
    /// A tool the agent called, with its arguments as JSON text.
    ToolCall { tool: String, input: String },
    /// What a tool gave back.
    ToolResult {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tool: Option<String>,
        output: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        error: bool,
    },
    /// An error the agent reported (a failed model call, a retry).
    Error { message: String },
}

/// How an agent's exec ended, in maxions' terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Failed {
        reason: String,
        /// The model provider failed (rate limit, server error, broken stream): worth another
        /// try with backoff, if the agent changed nothing.
        provider: bool,
    },
}

/// The adapter for `kind`.
#[must_use]
pub fn for_kind(kind: AgentKind) -> Box<dyn Agent> {
    match kind {
        AgentKind::Command => Box::new(command::Command),
        AgentKind::Pi => Box::new(pi::Pi),
        AgentKind::Claude => Box::new(claude::Claude),
        AgentKind::Codex => Box::new(codex::Codex),
    }
}

/// The image a blueprint with this agent runs in when it names none: the agent's own, which
/// `maxions image build` makes (and a run builds on first use).
#[must_use]
pub fn image_for(kind: AgentKind) -> Option<&'static str> {
    crate::sandbox::image::agent_recipe(kind.as_str()).map(|r| r.tag)
}

/// The network an agent step has, in words, for the system prompt.
#[derive(Debug, Clone)]
pub enum NetworkNote {
    None,
    Host,
    Allowlist(Vec<String>),
}

/// maxions' system prompt: what the agent must know about where it runs.
#[must_use]
pub fn system_prompt(workdir: &str, network: &NetworkNote) -> String {
    let network = match network {
        NetworkNote::None => "You have no network access.".to_owned(),
        NetworkNote::Host => "You have network access.".to_owned(),
        NetworkNote::Allowlist(hosts) => format!(
            "Your network access goes through a proxy that allows only these hosts: {}. Any other host is refused; do not retry it.",
            hosts.join(", ")
        ),
    };
    format!(
        "You are running unattended inside maxions, a sandbox for coding agents. Nobody will answer questions: decide and act.\n\
         The repository is checked out at {workdir}; work there. {network}\n\
         Do not commit, push, create branches or open pull requests: maxions commits the work tree, pushes and opens the pull request itself once its checks pass. Leave your changes in the work tree.\n"
    )
}

/// The environment every agent exec gets: unattended, no pager, no prompt for credentials.
#[must_use]
pub fn base_env(home: &str) -> Vec<(String, String)> {
    [
        ("HOME", home),
        ("CI", "1"),
        ("PAGER", "cat"),
        ("GIT_PAGER", "cat"),
        ("GIT_TERMINAL_PROMPT", "0"),
        ("NO_COLOR", "1"),
        ("TERM", "dumb"),
        // Node's fetch ignores HTTP(S)_PROXY unless told (Node 22.21 and later).
        ("NODE_USE_ENV_PROXY", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// `text` cut to [`ACTIVITY_CHARS`] characters, saying how much was cut.
#[must_use]
pub fn clip(text: &str) -> String {
    let count = text.chars().count();
    if count <= ACTIVITY_CHARS {
        return text.to_owned();
    }
    let kept: String = text.chars().take(ACTIVITY_CHARS).collect();
    format!("{kept}… ({} more characters)", count - ACTIVITY_CHARS)
}

/// Whether an error message of an agent reads like the model provider's failure, worth a
/// retry: rate limits, 5xx, overload, a connection or stream that broke.
#[must_use]
pub fn provider_failure(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "429",
        "500",
        "502",
        "503",
        "504",
        "529",
        "rate limit",
        "rate_limit",
        "overloaded",
        "internal server error",
        "bad gateway",
        "service unavailable",
        "timed out",
        "timeout",
        "econnreset",
        "econnrefused",
        "socket hang up",
        "connection",
        "stream disconnected",
        "stream error",
        "terminated",
        "fetch failed",
        "high demand",
        "temporarily",
        "try again",
        "reconnecting",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// The prompt as the single argument an agent takes it in, refusing one too long for Linux.
///
/// # Errors
/// When the prompt is longer than [`MAX_ARG_PROMPT`].
pub fn prompt_arg(prompt: &str) -> Result<String, AgentError> {
    if prompt.len() > MAX_ARG_PROMPT {
        return Err(AgentError::Config(format!(
            "the prompt is {} KiB, more than the {} KiB an agent's command line takes; shorten the template (e.g. `{{{{ c.output | tail(200) }}}}` in a fix prompt)",
            prompt.len() >> 10,
            MAX_ARG_PROMPT >> 10
        )));
    }
    Ok(prompt.to_owned())
}

/// The secret named `name`, as an environment variable called `env` for the agent.
fn renamed(secrets: &BTreeMap<String, Secret>, name: &str, env: &str) -> Option<Secret> {
    let secret = secrets.get(name)?;
    if secret.name() == env {
        return Some(secret.clone());
    }
    Secret::new(env, secret.expose()).ok()
}

/// A line of an agent's event stream: a JSON object with a string `type`, and that type.
fn json_event(line: &str) -> Option<(serde_json::Value, String)> {
    let event = serde_json::from_str::<serde_json::Value>(line).ok()?;
    let kind = event.get("type")?.as_str()?.to_owned();
    Some((event, kind))
}

/// A JSON number as a token count, tolerating floats and absent fields.
fn tokens(value: Option<&serde_json::Value>) -> u64 {
    value
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
        .unwrap_or(0)
}

/// Feeds a recorded stdout (one of `tests/fixtures/agents/`) to a parser, for the adapters'
/// tests.
#[cfg(test)]
fn replay(parser: &mut dyn Parser, transcript: &str) -> Vec<Activity> {
    let mut out = Vec::new();
    for line in transcript.lines() {
        assert!(parser.line(line, &mut out), "not understood: {line:.200}");
    }
    out
}

/// Replays one of the `*-success.jsonl` fixtures, all made from the same script (two model
/// calls: 1200 in and 40 out, then 1300 in, 12 out and 1100 read from the cache), and checks
/// what every parser must read off it: success, and those tokens.
#[cfg(test)]
fn replay_success(parser: &mut dyn Parser, transcript: &str) -> (Vec<Activity>, Usage) {
    let out = replay(parser, transcript);
    assert_eq!(parser.verdict(&ExecStatus::Exited(0)), Verdict::Succeeded);
    let usage = parser.usage();
    assert_eq!(
        (
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_tokens
        ),
        (2500, 52, 1100)
    );
    (out, usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_clipped_with_a_count() {
        let text = "é".repeat(ACTIVITY_CHARS + 5);
        let clipped = clip(&text);
        assert!(clipped.ends_with("… (5 more characters)"), "{clipped}");
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn provider_failures_are_told_from_other_errors() {
        assert!(provider_failure("429 Too Many Requests"));
        assert!(provider_failure("API Error: 500 {\"type\":\"error\"}"));
        assert!(provider_failure("Overloaded"));
        assert!(!provider_failure("the model refused the task"));
    }

    #[test]
    fn a_prompt_too_long_for_one_argument_is_refused_clearly() {
        let error = prompt_arg(&"x".repeat(MAX_ARG_PROMPT + 1)).unwrap_err();
        assert!(error.to_string().contains("120 KiB"), "{error}");
        assert_eq!(prompt_arg("hi").unwrap(), "hi");
    }

    #[test]
    fn the_system_prompt_names_the_network_and_who_commits() {
        let text = system_prompt(
            "/workspace/repo",
            &NetworkNote::Allowlist(vec!["api.openai.com".into()]),
        );
        assert!(text.contains("/workspace/repo"));
        assert!(text.contains("api.openai.com"));
        assert!(text.contains("Do not commit"));
    }
}
