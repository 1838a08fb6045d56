//! `kind: command`: any program. The prompt goes on its stdin; its output is logged as it is;
//! exit 0 is success. A program may report what it spent by printing lines such as
//! `{"type":"usage","input_tokens":1200,"output_tokens":300,"cost_usd":0.01}` (each line adds
//! to the total), so that budgets apply to it as to any agent.

use super::{Activity, Agent, AgentError, Call, Invocation, Parser, Usage, Verdict};
use crate::config::blueprint::AgentSpec;
use crate::sandbox::{ExecRequest, ExecStatus};

pub struct Command;

impl Agent for Command {
    fn invocation(&self, call: &Call<'_>) -> Result<Invocation, AgentError> {
        let Some(command) = &call.spec.command else {
            return Err(AgentError::Config(
                "`agent.kind: command` needs `agent.command`".into(),
            ));
        };
        let mut argv = command.clone();
        argv.extend(call.spec.flags.iter().cloned());
        let mut request = ExecRequest::new(argv).stdin(call.prompt.as_bytes().to_vec());
        request.env = super::base_env(call.home);
        request.env.push((
            "MAXIONS_INSTRUCTIONS".to_owned(),
            format!("{}/instructions.md", call.home),
        ));
        Ok(Invocation {
            request,
            files: vec![(
                format!("{}/instructions.md", call.home),
                call.instructions.as_bytes().to_vec(),
            )],
        })
    }

    fn parser(&self, _spec: &AgentSpec) -> Box<dyn Parser> {
        Box::new(CommandParser::default())
    }

    fn structured(&self) -> bool {
        false
    }
}

#[derive(Default)]
struct CommandParser {
    usage: Usage,
}

impl Parser for CommandParser {
    fn line(&mut self, line: &str, _out: &mut Vec<Activity>) -> bool {
        let line = line.trim();
        if !line.starts_with('{') || !line.contains("\"usage\"") {
            return false;
        }
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            return false;
        };
        if value.get("type").and_then(|t| t.as_str()) != Some("usage") {
            return false;
        }
        let reported = Usage {
            input_tokens: super::tokens(value.get("input_tokens")),
            output_tokens: super::tokens(value.get("output_tokens")),
            cache_read_tokens: super::tokens(value.get("cache_read_tokens")),
            cache_write_tokens: super::tokens(value.get("cache_write_tokens")),
            cost_usd: value
                .get("cost_usd")
                .and_then(serde_json::Value::as_f64)
                .filter(|c| c.is_finite() && *c >= 0.0),
        };
        self.usage = self.usage.plus(&reported);
        true
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn verdict(&self, status: &ExecStatus) -> Verdict {
        if status.success() {
            Verdict::Succeeded
        } else {
            Verdict::Failed {
                reason: format!("the agent {status}"),
                provider: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_lines_add_up_and_other_lines_are_output() {
        let mut parser = CommandParser::default();
        let mut out = Vec::new();
        assert!(!parser.line("editing src/main.rs", &mut out));
        assert!(parser.line(
            r#"{"type":"usage","input_tokens":100,"output_tokens":20,"cost_usd":0.5}"#,
            &mut out
        ));
        assert!(parser.line(r#"{"type":"usage","input_tokens":1}"#, &mut out));
        assert!(!parser.line(r#"{"type":"other","usage":1}"#, &mut out));
        let usage = parser.usage();
        assert_eq!(usage.total_tokens(), 121);
        assert_eq!(usage.cost_usd, Some(0.5));
        assert!(out.is_empty());
        assert_eq!(parser.verdict(&ExecStatus::Exited(0)), Verdict::Succeeded);
        assert!(matches!(
            parser.verdict(&ExecStatus::Exited(3)),
            Verdict::Failed {
                provider: false,
                ..
            }
        ));
    }
}
