//! Problems found in config files, and how they are shown: rustc-style with a source excerpt and
//! a caret, or as a stable JSON array for machines.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;

use super::yaml::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in one file. This is also the JSON format of `maxions validate --format json`
/// (an array of these), which is stable: fields are only ever added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(title = "maxions validate diagnostic")]
pub struct Diagnostic {
    /// The file, as given on the command line or found in a directory.
    pub file: String,
    /// 1-based line, or null when the problem has no position (e.g. an unreadable file).
    pub line: Option<usize>,
    /// 1-based column in characters, or null.
    pub column: Option<usize>,
    pub severity: Severity,
    /// A stable, kebab-case identifier of the kind of problem, e.g. `unknown-field`.
    pub code: &'static str,
    pub message: String,
    /// What to do about it, when there is something to say.
    pub hint: Option<String>,
    /// How many characters the caret underlines (at least 1).
    #[serde(skip)]
    pub width: usize,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            file: String::new(),
            line: None,
            column: None,
            severity: Severity::Error,
            code,
            message: message.into(),
            hint: None,
            width: 1,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, message)
        }
    }

    #[must_use]
    pub fn at(mut self, pos: Pos) -> Self {
        if pos.line > 0 {
            self.line = Some(pos.line);
            self.column = Some(pos.column.max(1));
        }
        self
    }

    #[must_use]
    pub fn width(mut self, width: usize) -> Self {
        self.width = width.max(1);
        self
    }

    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    #[must_use]
    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    #[must_use]
    pub fn in_file(mut self, file: impl Into<String>) -> Self {
        self.file = file.into();
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Colors for [`render`]; `Styles::plain()` for none.
#[derive(Debug, Clone, Copy)]
pub struct Styles {
    pub error: anstyle::Style,
    pub warning: anstyle::Style,
    pub gutter: anstyle::Style,
    pub bold: anstyle::Style,
}

impl Styles {
    pub fn plain() -> Self {
        let none = anstyle::Style::new();
        Self {
            error: none,
            warning: none,
            gutter: none,
            bold: none,
        }
    }

    pub fn colored() -> Self {
        use anstyle::{AnsiColor, Style};
        Self {
            error: Style::new().bold().fg_color(Some(AnsiColor::Red.into())),
            warning: Style::new().bold().fg_color(Some(AnsiColor::Yellow.into())),
            gutter: Style::new().bold().fg_color(Some(AnsiColor::Blue.into())),
            bold: Style::new().bold(),
        }
    }
}

/// Renders one diagnostic the way rustc does:
///
/// ```text
/// error[unknown-field]: unknown field `max_round` in `fix`
///   --> blueprints/default.yaml:25:7
///    |
/// 25 |       max_round: 2
///    |       ^^^^^^^^^ did you mean `max_rounds`?
/// ```
///
/// `source` is the file's text when it could be read.
pub fn render(diagnostic: &Diagnostic, source: Option<&str>, styles: &Styles) -> String {
    let mut out = String::new();
    let level = match diagnostic.severity {
        Severity::Error => ("error", styles.error),
        Severity::Warning => ("warning", styles.warning),
    };
    let (name, style) = level;
    let bold = styles.bold;
    let gutter = styles.gutter;
    let _ = writeln!(
        out,
        "{style}{name}[{}]{style:#}{bold}: {}{bold:#}",
        diagnostic.code, diagnostic.message
    );
    let location = match (diagnostic.line, diagnostic.column) {
        (Some(line), Some(column)) => format!("{}:{line}:{column}", diagnostic.file),
        _ => diagnostic.file.clone(),
    };
    let excerpt = diagnostic.line.zip(source).and_then(|(line, source)| {
        source
            .lines()
            .nth(line.saturating_sub(1))
            .map(|l| (line, l))
    });
    let Some((line, text)) = excerpt else {
        let _ = writeln!(out, "  {gutter}-->{gutter:#} {location}");
        if let Some(hint) = &diagnostic.hint {
            let _ = writeln!(out, "  {gutter}={gutter:#} {bold}hint{bold:#}: {hint}");
        }
        return out;
    };
    let number = line.to_string();
    let pad = " ".repeat(number.len());
    let _ = writeln!(out, "{pad}{gutter}-->{gutter:#} {location}");
    let _ = writeln!(out, "{pad} {gutter}|{gutter:#}");
    // Tabs would shift the caret; show them as one space each so the caret lines up.
    let shown: String = text
        .chars()
        .take(400)
        .map(|c| if c == '\t' { ' ' } else { c })
        .collect();
    let _ = writeln!(out, "{gutter}{number} |{gutter:#} {shown}");
    let column = diagnostic.column.unwrap_or(1).max(1);
    let available = shown.chars().count().saturating_sub(column - 1).max(1);
    let carets = "^".repeat(diagnostic.width.clamp(1, available));
    let hint = diagnostic
        .hint
        .as_deref()
        .map(|h| format!(" {h}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{pad} {gutter}|{gutter:#} {}{style}{carets}{hint}{style:#}",
        " ".repeat(column - 1)
    );
    out
}

/// The width of the YAML token that starts at `column` (1-based) of `line`: a quoted string up to
/// its closing quote, else up to a comment or the end of the line.
pub fn token_width(source: &str, pos: Pos) -> usize {
    let Some(line) = source.lines().nth(pos.line.saturating_sub(1)) else {
        return 1;
    };
    let rest: Vec<char> = line.chars().skip(pos.column.saturating_sub(1)).collect();
    match rest.first() {
        Some(&quote @ ('"' | '\'')) => rest[1..]
            .iter()
            .position(|&c| c == quote)
            .map_or(rest.len(), |end| end + 2),
        Some('[' | '{' | '|' | '>') | None => 1,
        Some(_) => {
            let text: String = rest.iter().collect();
            let end = text.find(" #").unwrap_or(text.len());
            let token = text[..end].trim_end();
            // Inside a flow collection the token ends at the next separator.
            let token = token.split([',', ']', '}']).next().unwrap_or(token);
            token.trim_end().chars().count().max(1)
        }
    }
}

/// The closest of `candidates` to `word`, if any is close enough to be what was meant.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
