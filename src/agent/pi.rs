//! pi (`@mariozechner/pi-coding-agent`): `pi --mode json -p --no-session PROMPT`, one JSON event
//! per line. Each assistant `message_end` carries that model call's usage and cost; pi exits 0
//! even when the model call failed, so the verdict comes from the last assistant message's
//! `stopReason` (`error`, `aborted`) and `errorMessage`.
//!
//! A `provider` of the blueprint becomes a `models.json` in `PI_CODING_AGENT_DIR` naming the
//! key's environment variable (never its value). Extensions, skills and prompt templates that a
//! repository might carry are not loaded: the repository is untrusted.

use serde_json::{Value, json};

use super::{Activity, Agent, AgentError, Call, Invocation, Parser, Usage, Verdict, clip};
use crate::config::blueprint::{AgentSpec, ProviderApi};
use crate::sandbox::{ExecRequest, ExecStatus};

pub struct Pi;

/// The provider name maxions gives a blueprint's own `provider` in `models.json`.
const PROVIDER: &str = "maxions";

impl Agent for Pi {
    fn invocation(&self, call: &Call<'_>) -> Result<Invocation, AgentError> {
        let spec = call.spec;
        let dir = call.home.to_owned();
        let instructions = format!("{}/instructions.md", call.home);
        let mut argv: Vec<String> = [
            "pi",
            "--mode",
            "json",
            "-p",
            "--no-session",
            "--no-extensions",
            "--no-skills",
            "--no-prompt-templates",
            "--append-system-prompt",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        argv.push(instructions.clone());
        // pi retries a failed model call itself, three times over 14 s by default, each with
        // two SDK retries, and waits up to ten minutes for an answer's headers: bounded here,
        // maxions' own retries and idle timeout do the rest.
        let settings = json!({
            "retry": {"maxRetries": 2, "baseDelayMs": 2000, "provider": {"timeoutMs": 120_000, "maxRetries": 1}}
        });
        let mut files = vec![
            (instructions, call.instructions.as_bytes().to_vec()),
            (
                format!("{dir}/settings.json"),
                serde_json::to_vec_pretty(&settings).unwrap_or_default(),
            ),
        ];
        let mut request = ExecRequest::default();
        if let Some(provider) = &spec.provider {
            let Some(model) = &spec.model else {
                return Err(AgentError::Config(
                    "`agent.provider` needs `agent.model`: the model's id at that provider".into(),
                ));
            };
            let api = provider.api.unwrap_or(ProviderApi::OpenaiCompletions);
            let prices = spec.prices.unwrap_or_default();
            let models = json!({
                "providers": {
                    PROVIDER: {
                        "baseUrl": provider.base_url,
                        "api": api.as_str(),
                        // The name of the environment variable, which pi reads itself.
                        "apiKey": provider.key.as_ref().map_or("MAXIONS_NO_KEY", |k| k.0.as_str()),
                        "compat": {"supportsDeveloperRole": false, "supportsReasoningEffort": false},
                        "models": [{
                            "id": model,
                            "name": model,
                            "reasoning": false,
                            "input": ["text"],
                            "contextWindow": 128_000,
                            "maxTokens": 16_384,
                            "cost": {
                                "input": prices.input,
                                "output": prices.output,
                                "cacheRead": prices.cache_read.unwrap_or(prices.input),
                                "cacheWrite": prices.cache_write.unwrap_or(prices.input),
                            },
                        }],
                    }
                }
            });
            files.push((
                format!("{dir}/models.json"),
                serde_json::to_vec_pretty(&models).unwrap_or_default(),
            ));
            argv.extend(["--provider".into(), PROVIDER.into(), "--model".into()]);
            argv.push(model.clone());
            if provider.key.is_none() {
                request
                    .env
                    .push(("MAXIONS_NO_KEY".into(), "no-key-needed".into()));
            }
        } else if let Some(model) = &spec.model {
            argv.extend(["--model".into(), model.clone()]);
        }
        argv.extend(spec.flags.iter().cloned());
        argv.push(super::prompt_arg(call.prompt)?);
        request.argv = argv;
        let mut env = super::base_env(call.home);
        env.extend(
            [
                ("PI_CODING_AGENT_DIR", dir.as_str()),
                ("PI_OFFLINE", "1"),
                ("PI_TELEMETRY", "0"),
                ("PI_SKIP_VERSION_CHECK", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        env.append(&mut request.env);
        request.env = env;
        Ok(Invocation { request, files })
    }

    fn parser(&self, _spec: &AgentSpec) -> Box<dyn Parser> {
        Box::new(PiParser::default())
    }
}

#[derive(Default)]
struct PiParser {
    usage: Usage,
    /// The last assistant message's `stopReason` and `errorMessage`.
    last_stop: Option<(String, Option<String>)>,
}

impl Parser for PiParser {
    fn line(&mut self, line: &str, out: &mut Vec<Activity>) -> bool {
        let Some((event, kind)) = super::json_event(line) else {
            return false;
        };
        match kind.as_str() {
            "message_end" => {
                let Some(message) = event.get("message") else {
                    return true;
                };
                if message.get("role").and_then(Value::as_str) != Some("assistant") {
                    return true;
                }
                if let Some(content) = message.get("content").and_then(Value::as_array) {
                    for part in content {
                        if part.get("type").and_then(Value::as_str) == Some("text")
                            && let Some(text) = part.get("text").and_then(Value::as_str)
                            && !text.trim().is_empty()
                        {
                            out.push(Activity::Text { text: clip(text) });
                        }
                    }
                }
                if let Some(usage) = message.get("usage") {
                    self.usage = self.usage.plus(&usage_of(usage));
                }
                let stop = message
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let error = message
                    .get("errorMessage")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some(error) = &error {
                    out.push(Activity::Error {
                        message: clip(error),
                    });
                }
                self.last_stop = Some((stop, error));
            }
            "tool_execution_start" => {
                out.push(Activity::ToolCall {
                    tool: str_field(&event, "toolName"),
                    input: clip(&event.get("args").map(Value::to_string).unwrap_or_default()),
                });
            }
            "tool_execution_end" => {
                out.push(Activity::ToolResult {
                    tool: Some(str_field(&event, "toolName")),
                    output: clip(&result_text(event.get("result"))),
                    error: event
                        .get("isError")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                });
            }
            // pi retries a failed model call itself (its settings bound how often).
            "auto_retry_start" => out.push(Activity::Error {
                message: clip(&format!(
                    "retrying (attempt {} of {}) after: {}",
                    event.get("attempt").and_then(Value::as_u64).unwrap_or(0),
                    event
                        .get("maxAttempts")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    str_field(&event, "errorMessage")
                )),
            }),
            _ => {}
        }
        true
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn verdict(&self, status: &ExecStatus) -> Verdict {
        if let Some((stop, error)) = &self.last_stop
            && matches!(stop.as_str(), "error" | "aborted")
        {
            let message = error
                .clone()
                .unwrap_or_else(|| format!("stopReason {stop}"));
            return Verdict::Failed {
                provider: super::provider_failure(&message),
                reason: format!("pi stopped: {}", super::clip(&message)),
            };
        }
        if !status.success() {
            return Verdict::Failed {
                reason: format!("pi {status}"),
                provider: false,
            };
        }
        if self.last_stop.is_none() {
            return Verdict::Failed {
                reason: "pi exited without an answer from the model".into(),
                provider: false,
            };
        }
        Verdict::Succeeded
    }
}

fn str_field(event: &Value, name: &str) -> String {
    event
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned()
}

/// A tool result's text: pi gives `{content: [{type: text, text}]}`.
fn result_text(result: Option<&Value>) -> String {
    let Some(result) = result else {
        return String::new();
    };
    if let Some(text) = result.as_str() {
        return text.to_owned();
    }
    match result.get("content").and_then(Value::as_array) {
        Some(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        None => result.to_string(),
    }
}

/// One model call's usage, as pi reports it.
fn usage_of(usage: &Value) -> Usage {
    Usage {
        input_tokens: super::tokens(usage.get("input")),
        output_tokens: super::tokens(usage.get("output")),
        cache_read_tokens: super::tokens(usage.get("cacheRead")),
        cache_write_tokens: super::tokens(usage.get("cacheWrite")),
        cost_usd: usage
            .get("cost")
            .and_then(|c| c.get("total"))
            .and_then(Value::as_f64)
            .filter(|c| c.is_finite() && *c >= 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> (PiParser, Vec<Activity>) {
        let mut parser = PiParser::default();
        let mut out = Vec::new();
        for line in lines {
            parser.line(line, &mut out);
        }
        (parser, out)
    }

    #[test]
    fn a_failed_model_call_fails_the_run_although_pi_exits_0() {
        let (parser, out) = parse(&[
            r#"{"type":"agent_start"}"#,
            r#"{"type":"message_end","message":{"role":"assistant","content":[],"stopReason":"error","errorMessage":"500 Internal Server Error","usage":{"input":0,"output":0}}}"#,
            r#"{"type":"agent_end"}"#,
        ]);
        match parser.verdict(&ExecStatus::Exited(0)) {
            Verdict::Failed { reason, provider } => {
                assert!(reason.contains("500"), "{reason}");
                assert!(provider);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(out.as_slice(), [Activity::Error { .. }]));
    }

    #[test]
    fn tool_calls_results_text_and_usage_are_read() {
        let (parser, out) = parse(&[
            r#"{"type":"tool_execution_start","toolCallId":"1","toolName":"bash","args":{"command":"ls"}}"#,
            r#"{"type":"tool_execution_end","toolCallId":"1","toolName":"bash","result":{"content":[{"type":"text","text":"a.txt"}]},"isError":false}"#,
            r#"{"type":"message_end","message":{"role":"assistant","content":[{"type":"text","text":"done"}],"stopReason":"stop","usage":{"input":100,"output":20,"cacheRead":5,"cacheWrite":0,"totalTokens":125,"cost":{"total":0.25}}}}"#,
            r#"{"type":"message_end","message":{"role":"user","content":[{"type":"text","text":"ignored"}]}}"#,
        ]);
        assert_eq!(parser.verdict(&ExecStatus::Exited(0)), Verdict::Succeeded);
        assert_eq!(parser.usage().total_tokens(), 125);
        assert_eq!(parser.usage().cost_usd, Some(0.25));
        assert_eq!(
            out,
            vec![
                Activity::ToolCall {
                    tool: "bash".into(),
                    input: r#"{"command":"ls"}"#.into()
                },
                Activity::ToolResult {
                    tool: Some("bash".into()),
                    output: "a.txt".into(),
                    error: false
                },
                Activity::Text {
                    text: "done".into()
                },
            ]
        );
    }

    #[test]
    fn a_real_pi_run_reads_as_it_went() {
        let mut parser = PiParser::default();
        let (out, usage) = super::super::replay_success(
            &mut parser,
            include_str!("../../tests/fixtures/agents/pi-success.jsonl"),
        );
        assert!(usage.cost_usd.is_some_and(|c| c > 0.0));
        assert!(out.contains(&Activity::ToolCall {
            tool: "bash".into(),
            input: r#"{"command":"echo hi > f.txt && cat f.txt"}"#.into()
        }));
        assert!(out.contains(&Activity::ToolResult {
            tool: Some("bash".into()),
            output: "hi\n".into(),
            error: false
        }));
        assert!(out.contains(&Activity::Text {
            text: "I wrote hi to f.txt.".into()
        }));
    }

    #[test]
    fn a_real_pi_run_whose_provider_failed_fails_though_pi_exited_0() {
        let mut parser = PiParser::default();
        let out = super::super::replay(
            &mut parser,
            include_str!("../../tests/fixtures/agents/pi-error.jsonl"),
        );
        match parser.verdict(&ExecStatus::Exited(0)) {
            Verdict::Failed { reason, provider } => {
                assert!(reason.contains("500 scripted: provider error"), "{reason}");
                assert!(provider);
            }
            other => panic!("{other:?}"),
        }
        let retries = out
            .iter()
            .filter(|a| matches!(a, Activity::Error { message } if message.starts_with("retrying")))
            .count();
        assert_eq!(retries, 3);
    }

    #[test]
    fn a_line_that_is_not_json_is_left_to_the_caller() {
        let (mut parser, _) = parse(&[]);
        assert!(!parser.line("Warning: something", &mut Vec::new()));
        assert!(matches!(
            parser.verdict(&ExecStatus::Exited(0)),
            Verdict::Failed { .. }
        ));
    }
}
