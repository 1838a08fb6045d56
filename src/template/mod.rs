//! Rendering steps with minijinja: strict undefined, and shell auto-escaping for `run:` steps so
//! that task text, branch names and agent output are always data, never commands.
//!
//! [`Mode::Shell`] quotes every value for `sh` unless its last filter is `| safe`, and refuses a
//! value inside quotes, here-documents or comments; [`Mode::Text`] (prompts, commit messages, PR
//! bodies) inserts values as they are. Task text is only ever the value `task`, never a template.

mod context;
mod shell;

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::sync::Arc;

use minijinja::value::{Object, ObjectRepr};
use minijinja::{AutoEscape, Environment, State, UndefinedBehavior, Value};

pub use context::{Context, FailedCheck, REPO_FIELDS, ROOTS, RUN_FIELDS, Repo, RunInfo};
pub use shell::HazardKind;
use shell::{RAW_END, RAW_START, VALUE_END, VALUE_START};

/// How a template's output is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A command for `sh -c`: interpolated values are single-quoted.
    Shell,
    /// Text for people or agents: values are inserted unchanged.
    Text,
}

impl Mode {
    fn template_name(self) -> &'static str {
        match self {
            Mode::Shell => "run.sh",
            Mode::Text => "text.txt",
        }
    }
}

/// A template that could not be parsed or rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub message: String,
    /// Byte range in the template source, when known.
    pub range: Option<Range<usize>>,
    /// The expression that was undefined, when that is what went wrong (e.g. `vars.name`).
    pub undefined: Option<String>,
    /// In a `run:` command: the value that would not have been one plain word, and where.
    pub hazard: Option<HazardKind>,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.undefined {
            Some(name) => write!(f, "undefined variable `{name}`"),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TemplateError {}

/// A `{{ }}` in a `run:` template whose value would not be one plain word for `sh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellHazard {
    /// Byte offset of the `{{` in the template source.
    pub offset: usize,
    pub kind: HazardKind,
}

/// Every `{{ }}` of a `run:` template written inside quotes, backquotes, `${ }`, `$(( ))`, a
/// here-document or a comment, or right after `\` or `$`: places where the quotes the value gets
/// would not make it one word of data. The template is read straight through, both branches of
/// an `if` and a loop's body once; a template that does not parse gives what its text shows.
pub fn shell_hazards(source: &str) -> Vec<ShellHazard> {
    let (text, places) = shell::skeleton(source);
    shell::scan(&text)
        .into_iter()
        .map(|found| ShellHazard {
            offset: places
                .iter()
                .find(|(at, _)| *at == found.offset)
                .map_or(0, |&(_, source)| source),
            kind: found.kind,
        })
        .collect()
}

/// A value marked `| safe` in a `run:` template: shell code, inserted as it is.
#[derive(Debug)]
struct Raw(String);

impl Object for Raw {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result
    where
        Self: Sized + 'static,
    {
        f.write_str(&self.0)
    }
}

/// Whether a value is being written into a `run:` command. This goes by the template, not by
/// its auto-escape setting, so `{% autoescape false %}` cannot turn the quoting off.
fn is_shell(state: &State) -> bool {
    state.name() == Mode::Shell.template_name()
}

/// The names a template reads, such as `task`, `vars.name` or `steps.describe.title`.
pub type Names = BTreeSet<String>;

/// The template engine, configured once and shared.
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_debug(true);
        // Bounds the work a template can do (a loop over a huge range, say).
        env.set_fuel(Some(5_000_000));
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".sh") {
                AutoEscape::Custom("sh".into())
            } else {
                AutoEscape::None
            }
        });
        // In shell mode every value is quoted, whatever filter made it, and bracketed by markers
        // so that `render` can check where it landed; only a `Raw` (`| safe`) goes in as code.
        // Markers inside a value (captured blocks, macro output) are dropped: it is all one word.
        // So is NUL: no script handed to `sh -c` (a C string) can hold one, and a task text or
        // agent output with one would otherwise stop the step from starting at all.
        env.set_formatter(|out, state, value| {
            if !is_shell(state) {
                return minijinja::escape_formatter(out, state, value);
            }
            if let Some(raw) = value.downcast_object_ref::<Raw>() {
                out.write_char(RAW_START)?;
                out.write_str(&raw.0)?;
                out.write_char(RAW_END)?;
                return Ok(());
            }
            let text = match value.as_str() {
                Some(s) => s.to_owned(),
                None => value.to_string(),
            };
            let text: String = text
                .chars()
                .filter(|&c| !shell::is_marker(c) && c != '\0')
                .collect();
            out.write_char(VALUE_START)?;
            out.write_str(&shell_quote(&text))?;
            out.write_char(VALUE_END)?;
            Ok(())
        });
        env.add_filter("tail", tail);
        env.add_filter("head", head);
        // `safe` is the one way to insert shell code; in shell mode `escape` and `shell_quote`
        // leave the value as it is, since it is quoted on output anyway.
        env.add_filter("safe", |state: &State, text: String| {
            if is_shell(state) {
                Value::from_object(Raw(text))
            } else {
                Value::from_safe_string(text)
            }
        });
        for name in ["escape", "e"] {
            env.add_filter(name, |state: &mut State, value: Value| {
                if is_shell(state) {
                    Ok(Value::from(value.to_string()))
                } else {
                    minijinja::filters::escape(state, &value)
                }
            });
        }
        env.add_filter("shell_quote", |state: &State, text: String| {
            if is_shell(state) {
                text
            } else {
                shell_quote(&text)
            }
        });
        Self { env }
    }

    /// Parses a template and returns the variables it reads (nested, like `vars.name`).
    pub fn check(&self, source: &str, mode: Mode) -> Result<Names, TemplateError> {
        let template = self
            .env
            .template_from_named_str(mode.template_name(), source)
            .map_err(|e| convert(&e, source))?;
        Ok(template.undeclared_variables(true).into_iter().collect())
    }

    /// Filters a template applies that do not exist, as (byte offset, name). minijinja only finds
    /// these when a render reaches them; this finds them all up front.
    pub fn unknown_filters(&self, source: &str) -> Vec<(usize, String)> {
        let mut unknown = Vec::new();
        for (offset, name) in filter_uses(source) {
            let probe = format!("{{{{ '' | {name} }}}}");
            let missing = match self.env.render_str(&probe, ()) {
                Err(e) => e.kind() == minijinja::ErrorKind::UnknownFilter,
                Ok(_) => false,
            };
            if missing {
                unknown.push((offset, name));
            }
        }
        unknown
    }

    /// Parses an `if:` condition and returns the variables it reads.
    pub fn check_condition(&self, condition: &str) -> Result<Names, TemplateError> {
        let expression = strip_braces(condition);
        let compiled = self
            .env
            .compile_expression(expression)
            .map_err(|e| convert(&e, expression))?;
        Ok(compiled.undeclared_variables(true).into_iter().collect())
    }

    /// Renders a template. In [`Mode::Shell`] it refuses a template with a [`shell_hazards`]
    /// place, and a rendered command in which a value is not exactly one quoted word (such as a
    /// value inside quotes that an `if` chose at run time, or one a filter changed after quoting).
    pub fn render(
        &self,
        source: &str,
        mode: Mode,
        context: &Context,
    ) -> Result<String, TemplateError> {
        if mode == Mode::Shell
            && let Some(hazard) = shell_hazards(source).first()
        {
            return Err(TemplateError {
                message: format!(
                    "a template {} in a shell command: {}",
                    hazard.kind.place(),
                    hazard.kind.hint()
                ),
                range: Some(hazard.offset..hazard.offset + 2),
                undefined: None,
                hazard: Some(hazard.kind),
            });
        }
        let template = self
            .env
            .template_from_named_str(mode.template_name(), source)
            .map_err(|e| convert(&e, source))?;
        let rendered = template
            .render(Value::from(minijinja::value::Serde(context)))
            .map_err(|e| convert(&e, source))?;
        if mode == Mode::Text {
            return Ok(rendered);
        }
        if let Some(found) = shell::scan(&rendered).first() {
            let line = rendered[..found.offset].matches('\n').count() + 1;
            return Err(TemplateError {
                message: format!(
                    "a value {} on line {line} of the rendered shell command: {}",
                    found.kind.place(),
                    found.kind.hint()
                ),
                range: None,
                undefined: None,
                hazard: Some(found.kind),
            });
        }
        Ok(shell::strip_markers(&rendered))
    }

    /// Evaluates an `if:` condition to true or false.
    pub fn eval_condition(
        &self,
        condition: &str,
        context: &Context,
    ) -> Result<bool, TemplateError> {
        let expression = strip_braces(condition);
        let compiled = self
            .env
            .compile_expression(expression)
            .map_err(|e| convert(&e, expression))?;
        compiled
            .eval(Value::from(minijinja::value::Serde(context)))
            .map(|v| v.is_true())
            .map_err(|e| convert(&e, expression))
    }
}

/// Every `| name` inside `{{ }}` or `{% %}`, as (byte offset of the name, name).
fn filter_uses(source: &str) -> Vec<(usize, String)> {
    let mut uses = Vec::new();
    let mut rest = 0;
    while let Some(open) = source[rest..].find(['{']) {
        let start = rest + open;
        let close = match source.get(start + 1..start + 2) {
            Some("{") => "}}",
            Some("%") => "%}",
            _ => {
                rest = start + 1;
                continue;
            }
        };
        let end = source[start..]
            .find(close)
            .map_or(source.len(), |e| start + e);
        let block = &source[start..end];
        let mut in_quote: Option<char> = None;
        for (i, c) in block.char_indices() {
            match (in_quote, c) {
                (Some(q), c) if c == q => in_quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => in_quote = Some(c),
                (None, '|') => {
                    let after = &block[i + 1..];
                    let skipped = after.len() - after.trim_start().len();
                    let name: String = after
                        .trim_start()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        uses.push((start + i + 1 + skipped, name));
                    }
                }
                _ => {}
            }
        }
        rest = end.max(start + 1);
    }
    uses
}

/// `if:` may be written bare (`run.failed_checks == 0`) or wrapped in `{{ }}`.
fn strip_braces(condition: &str) -> &str {
    let trimmed = condition.trim();
    trimmed
        .strip_prefix("{{")
        .and_then(|s| s.strip_suffix("}}"))
        .map_or(trimmed, str::trim)
}

fn convert(error: &minijinja::Error, source: &str) -> TemplateError {
    let range = error.range().filter(|r| r.end <= source.len());
    let undefined = (error.kind() == minijinja::ErrorKind::UndefinedError)
        .then(|| {
            range
                .clone()
                .and_then(|r| source.get(r))
                .map(|s| s.trim().to_owned())
        })
        .flatten();
    let mut message = error.detail().map_or_else(
        || error.kind().to_string(),
        |detail| format!("{}: {detail}", error.kind()),
    );
    if let Some(name) = &undefined {
        message = format!("undefined variable `{name}`");
    }
    TemplateError {
        message,
        range,
        undefined,
        hazard: None,
    }
}

/// Quotes `text` for POSIX sh: the result is always exactly one word with exactly this content.
pub fn shell_quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('\'');
    for c in text.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

fn tail(text: String, lines: Option<usize>) -> String {
    let lines = lines.unwrap_or(50);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn head(text: String, lines: Option<usize>) -> String {
    let lines = lines.unwrap_or(50);
    text.lines().take(lines).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips_single_quotes() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn undeclared_variables_are_nested_and_skip_loop_variables() {
        let t = Templates::new();
        let names = t
            .check(
                "{% for c in failed %}{{ c.id }}{% endfor %}{{ steps.a.b }} {{ vars.x | tail(3) }}",
                Mode::Text,
            )
            .unwrap();
        let names: Vec<_> = names.into_iter().collect();
        assert_eq!(names, ["failed", "steps.a.b", "vars.x"]);
    }

    #[test]
    fn syntax_errors_have_a_range() {
        let err = Templates::new()
            .check("ok\n{{ task }\n", Mode::Text)
            .unwrap_err();
        assert!(err.range.is_some(), "{err:?}");
    }

    #[test]
    fn unknown_filters_are_found_without_rendering() {
        let t = Templates::new();
        let found = t.unknown_filters("{{ task | truncate(20) }} {{ x | tail(2) | upper }} {% if a | nope %}{% endif %} '|' {{ 'a|b' }}");
        let names: Vec<&str> = found.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["truncate", "nope"]);
    }

    #[test]
    fn escape_keeps_its_builtin_meaning_in_text() {
        let t = Templates::new();
        let ctx = Context {
            task: "<b>".into(),
            repo: Repo {
                owner: "a".into(),
                name: "b".into(),
                full_name: "a/b".into(),
                clone_url: "https://github.com/a/b.git".into(),
            },
            branch: "b".into(),
            base: "main".into(),
            vars: Default::default(),
            steps: Default::default(),
            run: RunInfo {
                id: "r".into(),
                failed_checks: 0,
            },
            failed: None,
        };
        let text = t.render("{{ task | e }}", Mode::Text, &ctx).unwrap();
        assert_eq!(text, "&lt;b&gt;");
        let shell = t.render("{{ task | e }}", Mode::Shell, &ctx).unwrap();
        assert_eq!(shell, "'<b>'");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n".into(), Some(2)), "b\nc");
        assert_eq!(head("a\nb\nc\n".into(), Some(2)), "a\nb");
    }
}
