//! Codex: `codex exec --json PROMPT`, one JSON event per line (`thread.started`, `turn.started`,
//! `item.started`/`item.completed` for messages, commands and file changes, `turn.completed`
//! with usage, `turn.failed`, `error`). Codex reports no cost: it is computed from the
//! blueprint's `prices`.
//!
//! Its configuration is a `config.toml` in `CODEX_HOME` (which Codex refuses below `/tmp`):
//! never ask for approval, no sandbox of its own (maxions is the sandbox), no update check, no
//! analytics, and a blueprint's `provider` as a `model_providers` entry that names the key's
//! environment variable (never its value).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::Value;

use super::{Activity, Agent, AgentError, Call, Invocation, Parser, Usage, Verdict, clip};
use crate::config::blueprint::{AgentSpec, Prices, ProviderApi};
use crate::sandbox::{ExecRequest, ExecStatus};

pub struct Codex;

/// The provider name maxions gives a blueprint's own `provider` in `config.toml`.
const PROVIDER: &str = "maxions";

impl Agent for Codex {
    fn invocation(&self, call: &Call<'_>) -> Result<Invocation, AgentError> {
        let spec = call.spec;
        let dir = format!("{}/codex", call.home);
        let mut config = String::new();
        if let Some(model) = &spec.model {
            let _ = writeln!(config, "model = {}", toml_string(model));
        }
        config.push_str(
            "approval_policy = \"never\"\n\
             sandbox_mode = \"danger-full-access\"\n\
             check_for_update_on_startup = false\n",
        );
        let mut env_key = None;
        if let Some(provider) = &spec.provider {
            if provider
                .api
                .is_some_and(|api| api != ProviderApi::OpenaiResponses)
            {
                return Err(AgentError::Config(
                    "Codex speaks only the OpenAI Responses API: set `provider.api: openai-responses` or leave it out".into(),
                ));
            }
            let _ = writeln!(config, "model_provider = {}", toml_string(PROVIDER));
            config.push_str("\n[analytics]\nenabled = false\n");
            let _ = write!(
                config,
                "\n[model_providers.{PROVIDER}]\nname = {}\nbase_url = {}\nwire_api = \"responses\"\nrequest_max_retries = 2\nstream_max_retries = 2\nstream_idle_timeout_ms = 120000\n",
                toml_string(PROVIDER),
                toml_string(provider.base_url.trim_end_matches('/')),
            );
            let key = provider
                .key
                .as_ref()
                .map_or("MAXIONS_NO_KEY", |k| k.0.as_str());
            let _ = writeln!(config, "env_key = {}", toml_string(key));
            env_key = Some(key.to_owned());
        } else {
            config.push_str("\n[analytics]\nenabled = false\n");
        }
        let mut argv: Vec<String> = [
            "codex",
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--ephemeral",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for feature in [
            "apps",
            "plugins",
            "remote_plugin",
            "in_app_updates",
            "api_key_model_discovery",
        ] {
            argv.extend(["--disable".to_owned(), feature.to_owned()]);
        }
        argv.extend(spec.flags.iter().cloned());
        argv.push(super::prompt_arg(call.prompt)?);
        let mut request = ExecRequest::new(argv);
        request.env = super::base_env(call.home);
        request.env.push(("CODEX_HOME".to_owned(), dir.clone()));
        if env_key.as_deref() == Some("MAXIONS_NO_KEY") {
            request
                .env
                .push(("MAXIONS_NO_KEY".into(), "no-key-needed".into()));
        }
        Ok(Invocation {
            request,
            files: vec![
                (format!("{dir}/config.toml"), config.into_bytes()),
                (
                    format!("{dir}/AGENTS.md"),
                    call.instructions.as_bytes().to_vec(),
                ),
            ],
        })
    }

    fn parser(&self, spec: &AgentSpec) -> Box<dyn Parser> {
        Box::new(CodexParser {
            prices: spec.prices,
            ..CodexParser::default()
        })
    }
}

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Default)]
struct CodexParser {
    prices: Option<Prices>,
    usage: Usage,
    /// Items whose start was logged (their completion logs only the result).
    started: BTreeSet<String>,
    completed_turn: bool,
    failure: Option<String>,
    /// How many times in a row it said it was reconnecting.
    reconnects: u32,
}

/// Codex never gives up on a provider it cannot connect to ("Reconnecting... waiting for
/// network", with growing waits): after this many reconnects in a row maxions stops it.
const MAX_RECONNECTS: u32 = 8;

impl CodexParser {
    fn item(&mut self, item: &Value, completed: bool, out: &mut Vec<Activity>) {
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        match kind {
            "agent_message" if completed => {
                if let Some(text) = item.get("text").and_then(Value::as_str)
                    && !text.trim().is_empty()
                {
                    out.push(Activity::Text { text: clip(text) });
                }
            }
            "command_execution" => {
                if !self.started.contains(&id) {
                    self.started.insert(id);
                    out.push(Activity::ToolCall {
                        tool: "shell".into(),
                        input: clip(&text_or_json(item.get("command"))),
                    });
                }
                if completed {
                    let code = item.get("exit_code").and_then(Value::as_i64);
                    out.push(Activity::ToolResult {
                        tool: Some("shell".into()),
                        output: clip(&text_or_json(item.get("aggregated_output"))),
                        error: code.is_some_and(|c| c != 0),
                    });
                }
            }
            "file_change" | "mcp_tool_call" | "web_search" if completed => {
                let tool = item
                    .get("tool")
                    .and_then(Value::as_str)
                    .unwrap_or(kind)
                    .to_owned();
                let input = item
                    .get("changes")
                    .or_else(|| item.get("arguments"))
                    .or_else(|| item.get("query"));
                out.push(Activity::ToolCall {
                    tool,
                    input: clip(&text_or_json(input)),
                });
            }
            "error" if completed => {
                out.push(Activity::Error {
                    message: clip(&text_or_json(item.get("message"))),
                });
            }
            _ => {}
        }
    }
}

impl Parser for CodexParser {
    fn line(&mut self, line: &str, out: &mut Vec<Activity>) -> bool {
        let Some((event, kind)) = super::json_event(line) else {
            return false;
        };
        match kind.as_str() {
            "item.started" | "item.updated" | "item.completed" => {
                // It reached the provider again: only reconnects in a row count.
                self.reconnects = 0;
                if let Some(item) = event.get("item") {
                    self.item(item, kind == "item.completed", out);
                }
            }
            "turn.completed" => {
                self.completed_turn = true;
                if let Some(usage) = event.get("usage") {
                    self.usage = self.usage.plus(&usage_of(usage));
                }
            }
            "turn.failed" => {
                let message = event
                    .get("error")
                    .and_then(|e| e.get("message"))
                    .map(|m| text_or_json(Some(m)))
                    .unwrap_or_else(|| "the turn failed".into());
                out.push(Activity::Error {
                    message: clip(&message),
                });
                self.failure = Some(message);
            }
            "error" => {
                let message = text_or_json(event.get("message"));
                if message.starts_with("Reconnecting") {
                    self.reconnects += 1;
                }
                out.push(Activity::Error {
                    message: clip(&message),
                });
                self.failure.get_or_insert(message);
            }
            _ => {}
        }
        true
    }

    fn usage(&self) -> Usage {
        self.usage.priced(self.prices.as_ref())
    }

    fn give_up(&self) -> Option<String> {
        (self.reconnects >= MAX_RECONNECTS && !self.completed_turn).then(|| {
            format!(
                "Codex stopped: it reconnected {} times without reaching its model provider ({})",
                self.reconnects,
                self.failure.as_deref().map_or("", |f| f)
            )
        })
    }

    fn verdict(&self, status: &ExecStatus) -> Verdict {
        if self.completed_turn && status.success() {
            return Verdict::Succeeded;
        }
        if let Some(message) = &self.failure {
            return Verdict::Failed {
                provider: super::provider_failure(message),
                reason: format!("Codex stopped: {}", clip(message)),
            };
        }
        if !status.success() {
            return Verdict::Failed {
                reason: format!("Codex {status}"),
                provider: false,
            };
        }
        Verdict::Failed {
            reason: "Codex exited without finishing its turn".into(),
            provider: false,
        }
    }
}

fn text_or_json(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// OpenAI's usage: `input_tokens` includes the cached ones, `output_tokens` the reasoning.
fn usage_of(usage: &Value) -> Usage {
    let input = super::tokens(usage.get("input_tokens"));
    let cached = super::tokens(usage.get("cached_input_tokens")).min(input);
    Usage {
        input_tokens: input - cached,
        output_tokens: super::tokens(usage.get("output_tokens")),
        cache_read_tokens: cached,
        cache_write_tokens: 0,
        cost_usd: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_comes_from_turns_and_cost_from_the_price_table() {
        let mut parser = CodexParser {
            prices: Some(Prices {
                input: 1.0,
                output: 10.0,
                cache_read: Some(0.1),
                cache_write: None,
            }),
            ..CodexParser::default()
        };
        let mut out = Vec::new();
        for line in [
            r#"{"type":"thread.started","thread_id":"t"}"#,
            r#"{"type":"item.started","item":{"id":"i1","type":"command_execution","command":"bash -lc ls","status":"in_progress"}}"#,
            r#"{"type":"item.completed","item":{"id":"i1","type":"command_execution","command":"bash -lc ls","aggregated_output":"a.txt\n","exit_code":0,"status":"completed"}}"#,
            r#"{"type":"item.completed","item":{"id":"i2","type":"agent_message","text":"done"}}"#,
            r#"{"type":"turn.completed","usage":{"input_tokens":1000000,"cached_input_tokens":500000,"output_tokens":100000,"reasoning_output_tokens":0}}"#,
        ] {
            assert!(parser.line(line, &mut out));
        }
        assert_eq!(out.len(), 3, "{out:?}");
        let usage = parser.usage();
        assert_eq!(usage.total_tokens(), 1_100_000);
        let cost = usage.cost_usd.unwrap();
        assert!((cost - (0.5 + 0.05 + 1.0)).abs() < 1e-9, "{cost}");
        assert_eq!(parser.verdict(&ExecStatus::Exited(0)), Verdict::Succeeded);
    }

    #[test]
    fn a_failed_turn_fails_with_its_message() {
        let mut parser = CodexParser::default();
        let mut out = Vec::new();
        parser.line(
            r#"{"type":"turn.failed","error":{"message":"unexpected status 500 Internal Server Error"}}"#,
            &mut out,
        );
        match parser.verdict(&ExecStatus::Exited(1)) {
            Verdict::Failed { reason, provider } => {
                assert!(reason.contains("500"), "{reason}");
                assert!(provider);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_real_codex_run_reads_as_it_went() {
        let mut parser = CodexParser::default();
        let (out, usage) = super::super::replay_success(
            &mut parser,
            include_str!("../../tests/fixtures/agents/codex-success.jsonl"),
        );
        assert_eq!(
            usage.cost_usd, None,
            "Codex reports no cost, and no prices are set"
        );
        assert!(out.contains(&Activity::ToolResult {
            tool: Some("shell".into()),
            output: "hi\n".into(),
            error: false
        }));
        assert_eq!(
            out.iter()
                .filter(|a| matches!(a, Activity::ToolCall { .. }))
                .count(),
            1,
            "a command's start and end are one call"
        );
    }

    #[test]
    fn a_real_codex_run_whose_provider_failed_fails_as_a_provider_failure() {
        let mut parser = CodexParser::default();
        super::super::replay(
            &mut parser,
            include_str!("../../tests/fixtures/agents/codex-error.jsonl"),
        );
        match parser.verdict(&ExecStatus::Exited(1)) {
            Verdict::Failed { reason, provider } => {
                assert!(reason.contains("high demand"), "{reason}");
                assert!(provider);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unreachable_provider_makes_codex_give_up_after_some_reconnects() {
        let mut parser = CodexParser::default();
        let mut out = Vec::new();
        for n in 1..=MAX_RECONNECTS {
            assert!(parser.give_up().is_none());
            parser.line(
                &format!(
                    r#"{{"type":"error","message":"Reconnecting... {n}/5 (waiting for network)"}}"#
                ),
                &mut out,
            );
        }
        let reason = parser.give_up().expect("gives up");
        assert!(reason.contains("reconnected 8 times"), "{reason}");
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
