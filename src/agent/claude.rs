//! Claude Code: `claude -p --output-format stream-json --verbose PROMPT`, one JSON event per
//! line (`system`, `assistant`, `user` with tool results, and a final `result`). Per-message
//! usage is a running estimate (a message is repeated once per content block, with the same
//! usage); the `result` line's totals and `total_cost_usd` are final.
//!
//! Project and local settings and MCP servers that a repository might carry are not loaded: the
//! repository is untrusted. The key reaches Claude Code as `ANTHROPIC_API_KEY`, from whichever
//! secret the blueprint names.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Activity, Agent, AgentError, Call, Invocation, Parser, Usage, Verdict, clip};
use crate::config::blueprint::{AgentSpec, Prices};
use crate::sandbox::{ExecRequest, ExecStatus};

pub struct Claude;

/// How often Claude Code itself retries a failed API request (its default is 10, with backoff
/// that took three minutes against a provider answering 500); maxions may run it once more.
const MAX_RETRIES: &str = "3";

impl Agent for Claude {
    fn invocation(&self, call: &Call<'_>) -> Result<Invocation, AgentError> {
        let spec = call.spec;
        let instructions = format!("{}/instructions.md", call.home);
        let mut argv: Vec<String> = [
            "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--no-session-persistence",
            "--dangerously-skip-permissions",
            "--setting-sources",
            "user",
            "--strict-mcp-config",
            "--append-system-prompt-file",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        argv.push(instructions.clone());
        if let Some(model) = &spec.model {
            argv.extend(["--model".into(), model.clone()]);
        }
        argv.extend(spec.flags.iter().cloned());
        argv.push(super::prompt_arg(call.prompt)?);
        let mut request = ExecRequest::new(argv);
        request.env = super::base_env(call.home);
        let config_dir = format!("{}/claude", call.home);
        for (name, value) in [
            ("CLAUDE_CONFIG_DIR", config_dir.as_str()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("DISABLE_AUTOUPDATER", "1"),
            ("DISABLE_TELEMETRY", "1"),
            ("DISABLE_ERROR_REPORTING", "1"),
            ("CLAUDE_CODE_MAX_RETRIES", MAX_RETRIES),
            // Time to an answer's headers (its default is ten minutes).
            ("API_TIMEOUT_MS", "120000"),
        ] {
            request.env.push((name.to_owned(), value.to_owned()));
        }
        if let Some(provider) = &spec.provider {
            request.env.push((
                "ANTHROPIC_BASE_URL".to_owned(),
                provider.base_url.trim_end_matches('/').to_owned(),
            ));
            if let Some(key) = &provider.key {
                let Some(secret) = super::renamed(call.secrets, &key.0, "ANTHROPIC_API_KEY") else {
                    return Err(AgentError::Config(format!(
                        "the provider's key `{}` is not among the run's secrets; define it in maxions.yaml",
                        key.0
                    )));
                };
                request.secrets.push(secret);
            }
        }
        Ok(Invocation {
            request,
            files: vec![(instructions, call.instructions.as_bytes().to_vec())],
        })
    }

    fn parser(&self, spec: &AgentSpec) -> Box<dyn Parser> {
        Box::new(ClaudeParser {
            prices: spec.prices,
            ..ClaudeParser::default()
        })
    }
}

#[derive(Default)]
struct ClaudeParser {
    prices: Option<Prices>,
    /// Usage per assistant message id, while no `result` has come.
    messages: BTreeMap<String, Usage>,
    /// Tool names by tool-use id, to name tool results.
    tools: BTreeMap<String, String>,
    /// The `result` line: its usage, whether it was an error, and its text.
    result: Option<(Usage, bool, String)>,
}

impl Parser for ClaudeParser {
    fn line(&mut self, line: &str, out: &mut Vec<Activity>) -> bool {
        let Some((event, kind)) = super::json_event(line) else {
            return false;
        };
        match kind.as_str() {
            "assistant" => {
                let Some(message) = event.get("message") else {
                    return true;
                };
                for part in content(message) {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            if let Some(text) = part.get("text").and_then(Value::as_str)
                                && !text.trim().is_empty()
                            {
                                out.push(Activity::Text { text: clip(text) });
                            }
                        }
                        Some("tool_use") => {
                            let name = part
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or("?")
                                .to_owned();
                            if let Some(id) = part.get("id").and_then(Value::as_str) {
                                self.tools.insert(id.to_owned(), name.clone());
                            }
                            out.push(Activity::ToolCall {
                                tool: name,
                                input: clip(
                                    &part.get("input").map(Value::to_string).unwrap_or_default(),
                                ),
                            });
                        }
                        _ => {}
                    }
                }
                if let (Some(id), Some(usage)) = (
                    message.get("id").and_then(Value::as_str),
                    message.get("usage"),
                ) {
                    self.messages.insert(id.to_owned(), usage_of(usage, None));
                }
            }
            "user" => {
                let Some(message) = event.get("message") else {
                    return true;
                };
                for part in content(message) {
                    if part.get("type").and_then(Value::as_str) != Some("tool_result") {
                        continue;
                    }
                    let tool = part
                        .get("tool_use_id")
                        .and_then(Value::as_str)
                        .and_then(|id| self.tools.get(id))
                        .cloned();
                    out.push(Activity::ToolResult {
                        tool,
                        output: clip(&text_of(part.get("content"))),
                        error: part
                            .get("is_error")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    });
                }
            }
            "system" => {
                let subtype = event.get("subtype").and_then(Value::as_str).unwrap_or("");
                if subtype.contains("retry") || subtype.contains("error") {
                    let detail = event
                        .get("error")
                        .or_else(|| event.get("message"))
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .unwrap_or_default();
                    out.push(Activity::Error {
                        message: clip(format!("{subtype} {detail}").trim()),
                    });
                }
            }
            "result" => {
                let cost = event
                    .get("total_cost_usd")
                    .and_then(Value::as_f64)
                    .filter(|c| c.is_finite() && *c >= 0.0);
                let usage = event
                    .get("usage")
                    .map_or_else(Usage::default, |u| usage_of(u, cost));
                let usage = Usage {
                    cost_usd: cost,
                    ..usage
                };
                let is_error = event
                    .get("is_error")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    || event
                        .get("subtype")
                        .and_then(Value::as_str)
                        .is_some_and(|s| s != "success");
                let text = event
                    .get("result")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| {
                        event
                            .get("subtype")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .unwrap_or_default();
                if is_error {
                    out.push(Activity::Error {
                        message: clip(&text),
                    });
                }
                self.result = Some((usage, is_error, text));
            }
            _ => {}
        }
        true
    }

    fn usage(&self) -> Usage {
        let estimate = self
            .messages
            .values()
            .fold(Usage::default(), |sum, u| sum.plus(u));
        let Some((total, _, _)) = &self.result else {
            return estimate.priced(self.prices.as_ref());
        };
        // The final totals only ever raise the estimate: a `result` line that said less than
        // the messages already did (one a tool of the agent wrote into its stdout, say) cannot
        // take spent tokens back from the budget.
        Usage {
            input_tokens: total.input_tokens.max(estimate.input_tokens),
            output_tokens: total.output_tokens.max(estimate.output_tokens),
            cache_read_tokens: total.cache_read_tokens.max(estimate.cache_read_tokens),
            cache_write_tokens: total.cache_write_tokens.max(estimate.cache_write_tokens),
            cost_usd: total.cost_usd,
        }
        .priced(self.prices.as_ref())
    }

    fn verdict(&self, status: &ExecStatus) -> Verdict {
        match &self.result {
            Some((_, true, text)) => Verdict::Failed {
                provider: super::provider_failure(text),
                reason: format!("Claude Code stopped: {}", clip(text)),
            },
            Some((_, false, _)) if status.success() => Verdict::Succeeded,
            _ if !status.success() => Verdict::Failed {
                reason: format!("Claude Code {status}"),
                provider: false,
            },
            _ => Verdict::Failed {
                reason: "Claude Code exited without a result".into(),
                provider: false,
            },
        }
    }
}

fn content(message: &Value) -> &[Value] {
    message
        .get("content")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A tool result's content: a string, or text blocks.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Anthropic's usage: `input_tokens` excludes the cache's.
fn usage_of(usage: &Value, cost: Option<f64>) -> Usage {
    Usage {
        input_tokens: super::tokens(usage.get("input_tokens")),
        output_tokens: super::tokens(usage.get("output_tokens")),
        cache_read_tokens: super::tokens(usage.get("cache_read_input_tokens")),
        cache_write_tokens: super::tokens(usage.get("cache_creation_input_tokens")),
        cost_usd: cost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> (ClaudeParser, Vec<Activity>) {
        let mut parser = ClaudeParser::default();
        let mut out = Vec::new();
        for line in lines {
            assert!(parser.line(line, &mut out), "{line}");
        }
        (parser, out)
    }

    #[test]
    fn usage_is_estimated_per_message_then_taken_from_the_result() {
        let (parser, out) = parse(&[
            r#"{"type":"system","subtype":"init"}"#,
            r#"{"type":"assistant","message":{"id":"m1","content":[{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}],"usage":{"input_tokens":100,"output_tokens":10}}}"#,
            r#"{"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"listing"}],"usage":{"input_tokens":100,"output_tokens":10}}}"#,
            r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"a.txt","is_error":false}]}}"#,
        ]);
        assert_eq!(parser.usage().total_tokens(), 110);
        assert_eq!(parser.usage().cost_usd, None);
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[2],
            Activity::ToolResult {
                tool: Some("Bash".into()),
                output: "a.txt".into(),
                error: false
            }
        );
        let mut parser = parser;
        parser.line(
            r#"{"type":"result","subtype":"success","is_error":false,"result":"done","total_cost_usd":0.02,"usage":{"input_tokens":300,"output_tokens":40,"cache_read_input_tokens":7,"cache_creation_input_tokens":3}}"#,
            &mut Vec::new(),
        );
        let usage = parser.usage();
        assert_eq!(usage.total_tokens(), 350);
        assert_eq!(usage.cost_usd, Some(0.02));
        assert_eq!(parser.verdict(&ExecStatus::Exited(0)), Verdict::Succeeded);
    }

    #[test]
    fn a_real_claude_run_takes_its_totals_from_the_result_line() {
        let mut parser = ClaudeParser::default();
        let (out, usage) = super::super::replay_success(
            &mut parser,
            include_str!("../../tests/fixtures/agents/claude-success.jsonl"),
        );
        assert!(
            usage.cost_usd.is_some_and(|c| (c - 0.00861).abs() < 1e-6),
            "{usage:?}"
        );
        assert!(out.contains(&Activity::ToolResult {
            tool: Some("Bash".into()),
            output: "hi".into(),
            error: false
        }));
    }

    #[test]
    fn a_real_claude_run_whose_provider_failed_fails_with_its_error() {
        let mut parser = ClaudeParser::default();
        let out = super::super::replay(
            &mut parser,
            include_str!("../../tests/fixtures/agents/claude-error.jsonl"),
        );
        match parser.verdict(&ExecStatus::Exited(1)) {
            Verdict::Failed { reason, provider } => {
                assert!(reason.contains("API Error: 500"), "{reason}");
                assert!(provider);
            }
            other => panic!("{other:?}"),
        }
        let retries = out
            .iter()
            .filter(
                |a| matches!(a, Activity::Error { message } if message.starts_with("api_retry")),
            )
            .count();
        assert_eq!(retries, 10);
    }

    #[test]
    fn a_result_line_cannot_lower_what_the_messages_spent() {
        let (mut parser, _) = parse(&[
            r#"{"type":"assistant","message":{"id":"m1","content":[],"usage":{"input_tokens":5000,"output_tokens":10}}}"#,
        ]);
        parser.line(
            r#"{"type":"result","subtype":"success","is_error":false,"result":"done","total_cost_usd":0.0,"usage":{"input_tokens":1,"output_tokens":1}}"#,
            &mut Vec::new(),
        );
        assert_eq!(parser.usage().total_tokens(), 5010);
    }

    #[test]
    fn an_error_result_fails_and_says_why() {
        let (parser, _) = parse(&[
            r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 500 Internal Server Error"}"#,
        ]);
        match parser.verdict(&ExecStatus::Exited(1)) {
            Verdict::Failed { reason, provider } => {
                assert!(reason.contains("API Error: 500"), "{reason}");
                assert!(provider);
            }
            other => panic!("{other:?}"),
        }
        let (parser, _) = parse(&[r#"{"type":"system","subtype":"init"}"#]);
        assert!(matches!(
            parser.verdict(&ExecStatus::Exited(0)),
            Verdict::Failed { .. }
        ));
    }
}
