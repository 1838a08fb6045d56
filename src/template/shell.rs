//! A small POSIX `sh` lexer: values are bracketed by markers (Unicode noncharacters) while a
//! `run:` command renders, and [`scan`] reports every value that lands inside quotes, a
//! here-document, a comment, etc., where its own single quotes would not make it one plain word.

use std::fmt;

/// Starts a quoted value in a rendered script (and a `{{ }}` in a template skeleton).
pub(crate) const VALUE_START: char = '\u{FDD0}';
/// Ends a quoted value.
pub(crate) const VALUE_END: char = '\u{FDD1}';
/// Starts a value the blueprint marked `| safe`: shell code, lexed like the script around it.
pub(crate) const RAW_START: char = '\u{FDD2}';
/// Ends a `| safe` value.
pub(crate) const RAW_END: char = '\u{FDD3}';

pub(crate) fn is_marker(c: char) -> bool {
    matches!(c, VALUE_START | VALUE_END | RAW_START | RAW_END)
}

/// Where a value would not be one plain word of data in a `run:` script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HazardKind {
    /// `'{{ x }}'`: the value's own quotes would end these.
    SingleQuotes,
    /// `"{{ x }}"`: likewise, and `$(...)` in double quotes runs.
    DoubleQuotes,
    /// `$'{{ x }}'`.
    DollarQuotes,
    /// `` `{{ x }}` ``: backslashes and backquotes in the value are re-read as code.
    Backquotes,
    /// `${v:-{{ x }}}`.
    ParameterExpansion,
    /// `$(( {{ x }} ))`: arithmetic expands its text as if in double quotes.
    Arithmetic,
    /// A line of a here-document body: an unquoted body runs `$(...)`, and a line of the value
    /// equal to the delimiter would end the document.
    HeredocBody,
    /// `<<{{ x }}`.
    HeredocDelimiter,
    /// `# {{ x }}`: a newline in the value would end the comment.
    Comment,
    /// `\{{ x }}`: the backslash would escape the value's opening quote.
    Escaped,
    /// `${{ x }}`: `$'` starts another kind of quoting in some shells.
    AfterDollar,
    /// A quoted value was changed after quoting (a filter applied to a block or macro output
    /// that was then marked `| safe`), so its quotes can no longer be trusted.
    Altered,
}

impl HazardKind {
    /// Where the value is, for messages: "a template inside single quotes".
    pub fn place(self) -> &'static str {
        match self {
            HazardKind::SingleQuotes => "inside single quotes",
            HazardKind::DoubleQuotes => "inside double quotes",
            HazardKind::DollarQuotes => "inside `$'...'` quotes",
            HazardKind::Backquotes => "inside backquotes",
            HazardKind::ParameterExpansion => "inside a `${...}` expansion",
            HazardKind::Arithmetic => "inside `$((...))` arithmetic",
            HazardKind::HeredocBody => "inside a here-document",
            HazardKind::HeredocDelimiter => "as a here-document delimiter",
            HazardKind::Comment => "inside a shell comment",
            HazardKind::Escaped => "right after a backslash",
            HazardKind::AfterDollar => "right after `$`",
            HazardKind::Altered => "changed after it was quoted",
        }
    }

    /// How to fix it.
    pub fn hint(self) -> &'static str {
        match self {
            HazardKind::SingleQuotes | HazardKind::DoubleQuotes | HazardKind::DollarQuotes => {
                "remove the quotes: values are quoted for you"
            }
            HazardKind::Backquotes => {
                "write `$( )` instead of backquotes: values are quoted for you"
            }
            HazardKind::ParameterExpansion | HazardKind::Arithmetic => {
                "assign the value to a variable first (`v={{ ... }}`) and use \"$v\""
            }
            HazardKind::HeredocBody => {
                "write the value with `printf '%s\\n' {{ ... }}` instead of a here-document: values are quoted for you"
            }
            HazardKind::HeredocDelimiter => "use a fixed word as the here-document delimiter",
            HazardKind::Comment => "take the template out of the comment",
            HazardKind::Escaped => "remove the backslash: values are quoted for you",
            HazardKind::AfterDollar => "remove the `$`: `{{ ... }}` inserts the value itself",
            HazardKind::Altered => {
                "apply filters to values, not to captured blocks or macro output marked `| safe`"
            }
        }
    }
}

impl fmt::Display for HazardKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.place())
    }
}

/// A hazard found by [`scan`]: the byte offset of the value's start marker in the scanned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub offset: usize,
    pub kind: HazardKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// Commands: the top level, or inside `$( )` when `sub`. `parens` counts open `(`.
    Cmd {
        sub: bool,
        parens: u32,
    },
    Single,
    Double,
    DollarSingle,
    Backtick,
    Param,
    Arith {
        parens: u32,
    },
}

struct Heredoc {
    delimiter: String,
    strip_tabs: bool,
}

struct Lexer<'a> {
    chars: Vec<(usize, char)>,
    text: &'a str,
    i: usize,
    stack: Vec<Ctx>,
    word_start: bool,
    pending: Vec<Heredoc>,
    found: Vec<Found>,
}

/// Lexes `text` (a script with value markers) and returns every value that is not one plain word.
pub(crate) fn scan(text: &str) -> Vec<Found> {
    let mut lexer = Lexer {
        chars: text.char_indices().collect(),
        text,
        i: 0,
        stack: vec![Ctx::Cmd {
            sub: false,
            parens: 0,
        }],
        word_start: true,
        pending: Vec::new(),
        found: Vec::new(),
    };
    lexer.run();
    lexer.found
}

/// Removes the markers, giving the script `sh` runs.
pub(crate) fn strip_markers(text: &str) -> String {
    text.chars().filter(|c| !is_marker(*c)).collect()
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.i + ahead).map(|&(_, c)| c)
    }

    /// The index and character `ahead` positions on, skipping end markers: `\\` or `$` before
    /// the end of a `| safe` value still applies to what follows it.
    fn peek_real(&self, ahead: usize) -> (usize, Option<char>) {
        let mut at = self.i + ahead;
        while let Some(&(_, c)) = self.chars.get(at) {
            if c != VALUE_END && c != RAW_END {
                return (at, Some(c));
            }
            at += 1;
        }
        (at, None)
    }

    /// At `\\`: skips it and the character it escapes; a value there is reported as `kind`.
    fn backslash(&mut self, kind: HazardKind) {
        let (at, next) = self.peek_real(1);
        self.i = at;
        match next {
            Some(VALUE_START | RAW_START) => self.misplaced(kind),
            Some(_) => self.i += 1,
            None => {}
        }
    }

    fn offset(&self) -> usize {
        self.chars.get(self.i).map_or(self.text.len(), |&(o, _)| o)
    }

    fn top(&self) -> Ctx {
        self.stack.last().copied().unwrap_or(Ctx::Cmd {
            sub: false,
            parens: 0,
        })
    }

    fn set_top(&mut self, ctx: Ctx) {
        if let Some(top) = self.stack.last_mut() {
            *top = ctx;
        }
    }

    fn pop(&mut self) {
        if self.stack.len() > 1 {
            self.stack.pop();
        }
    }

    fn report(&mut self, kind: HazardKind) {
        let offset = self.offset();
        self.found.push(Found { offset, kind });
    }

    /// At a start marker that is out of place: reports it and skips the value as one token.
    /// Raw values are code, so only their start is judged and their text is lexed as usual.
    fn misplaced(&mut self, kind: HazardKind) {
        let c = self.peek(0);
        self.report(kind);
        self.i += 1;
        if c == Some(VALUE_START) {
            self.skip_to(VALUE_END);
        }
    }

    fn skip_to(&mut self, end: char) {
        while let Some(c) = self.peek(0) {
            self.i += 1;
            if c == end {
                return;
            }
        }
    }

    fn run(&mut self) {
        while let Some(c) = self.peek(0) {
            match self.top() {
                Ctx::Cmd { sub, parens } => self.command(c, sub, parens),
                Ctx::Single => {
                    self.marker_or(c, HazardKind::SingleQuotes, |l| {
                        if c == '\'' {
                            l.pop();
                        }
                    });
                }
                Ctx::DollarSingle => {
                    if c == '\\' {
                        self.backslash(HazardKind::DollarQuotes);
                    } else {
                        self.marker_or(c, HazardKind::DollarQuotes, |l| {
                            if c == '\'' {
                                l.pop();
                            }
                        });
                    }
                }
                Ctx::Backtick => {
                    if c == '\\' {
                        self.backslash(HazardKind::Backquotes);
                    } else {
                        self.marker_or(c, HazardKind::Backquotes, |l| {
                            if c == '`' {
                                l.pop();
                            }
                        });
                    }
                }
                Ctx::Double => self.double(c),
                Ctx::Param => self.param(c),
                Ctx::Arith { parens } => self.arith(c, parens),
            }
        }
    }

    /// Runs `other` for an ordinary character `c`, or reports a start marker as `kind`.
    fn marker_or(&mut self, c: char, kind: HazardKind, other: impl FnOnce(&mut Self)) {
        match c {
            VALUE_START | RAW_START => self.misplaced(kind),
            VALUE_END | RAW_END => self.i += 1,
            _ => {
                other(self);
                self.i += 1;
            }
        }
    }

    fn double(&mut self, c: char) {
        match c {
            VALUE_START | RAW_START => self.misplaced(HazardKind::DoubleQuotes),
            '"' => {
                self.pop();
                self.i += 1;
            }
            '\\' => self.backslash(HazardKind::DoubleQuotes),
            '`' => {
                self.stack.push(Ctx::Backtick);
                self.i += 1;
            }
            '$' => self.dollar(false),
            _ => self.i += 1,
        }
    }

    fn param(&mut self, c: char) {
        match c {
            VALUE_START | RAW_START => self.misplaced(HazardKind::ParameterExpansion),
            '}' => {
                self.pop();
                self.i += 1;
            }
            '\'' => {
                self.stack.push(Ctx::Single);
                self.i += 1;
            }
            '"' => {
                self.stack.push(Ctx::Double);
                self.i += 1;
            }
            '`' => {
                self.stack.push(Ctx::Backtick);
                self.i += 1;
            }
            '\\' => self.backslash(HazardKind::ParameterExpansion),
            '$' => self.dollar(false),
            _ => self.i += 1,
        }
    }

    fn arith(&mut self, c: char, parens: u32) {
        match c {
            VALUE_START | RAW_START => self.misplaced(HazardKind::Arithmetic),
            '(' => {
                self.set_top(Ctx::Arith { parens: parens + 1 });
                self.i += 1;
            }
            ')' if parens == 0 && self.peek(1) == Some(')') => {
                self.pop();
                self.i += 2;
            }
            ')' => {
                self.set_top(Ctx::Arith {
                    parens: parens.saturating_sub(1),
                });
                self.i += 1;
            }
            _ => self.i += 1,
        }
    }

    /// At `$`: what it starts. `$'` only starts quoting outside double quotes.
    fn dollar(&mut self, in_command: bool) {
        let (at, next) = self.peek_real(1);
        match next {
            Some(VALUE_START | RAW_START) => {
                self.i = at;
                self.misplaced(HazardKind::AfterDollar);
            }
            Some('\'') if in_command => {
                self.stack.push(Ctx::DollarSingle);
                self.i = at + 1;
            }
            Some('(') if self.chars.get(at + 1).map(|&(_, c)| c) == Some('(') => {
                self.stack.push(Ctx::Arith { parens: 0 });
                self.i = at + 2;
            }
            Some('(') => {
                self.stack.push(Ctx::Cmd {
                    sub: true,
                    parens: 0,
                });
                self.word_start = true;
                self.i = at + 1;
            }
            Some('{') => {
                self.stack.push(Ctx::Param);
                self.i = at + 1;
            }
            _ => self.i += 1,
        }
    }

    fn command(&mut self, c: char, sub: bool, parens: u32) {
        let word_start = self.word_start;
        self.word_start = false;
        match c {
            VALUE_START => {
                let start = self.i;
                self.i += 1;
                if !self.quoted_word() {
                    self.i = start;
                    self.report(HazardKind::Altered);
                    self.i += 1;
                    self.skip_to(VALUE_END);
                }
            }
            RAW_START | RAW_END => {
                self.i += 1;
                self.word_start = word_start;
            }
            VALUE_END => {
                self.report(HazardKind::Altered);
                self.i += 1;
            }
            '\'' => {
                self.stack.push(Ctx::Single);
                self.i += 1;
            }
            '"' => {
                self.stack.push(Ctx::Double);
                self.i += 1;
            }
            '`' => {
                self.stack.push(Ctx::Backtick);
                self.i += 1;
            }
            '$' => self.dollar(true),
            // A line continuation: the command line goes on.
            '\\' if self.peek(1) == Some('\n') => {
                self.i += 2;
                self.word_start = word_start;
            }
            '\\' => self.backslash(HazardKind::Escaped),
            '#' if word_start => self.comment(),
            // `<<<` is a here-string in bash (and a syntax error in dash), not a here-document.
            '<' if self.peek(1) == Some('<') && self.peek(2) == Some('<') => {
                self.word_start = true;
                self.i += 3;
            }
            '<' if self.peek(1) == Some('<') => {
                let strip_tabs = self.peek(2) == Some('-');
                self.i += if strip_tabs { 3 } else { 2 };
                self.heredoc_delimiter(strip_tabs);
            }
            '\n' => {
                self.i += 1;
                self.word_start = true;
                self.heredoc_bodies();
            }
            '(' => {
                self.set_top(Ctx::Cmd {
                    sub,
                    parens: parens + 1,
                });
                self.word_start = true;
                self.i += 1;
            }
            ')' if sub && parens == 0 => {
                self.pop();
                self.i += 1;
            }
            ')' => {
                self.set_top(Ctx::Cmd {
                    sub,
                    parens: parens.saturating_sub(1),
                });
                self.word_start = true;
                self.i += 1;
            }
            ' ' | '\t' | ';' | '&' | '|' | '<' | '>' => {
                self.word_start = true;
                self.i += 1;
            }
            _ => self.i += 1,
        }
    }

    /// After a value's start marker: exactly what [`super::shell_quote`] writes, then the end
    /// marker. Returns false (without a defined position) when the value was altered.
    fn quoted_word(&mut self) -> bool {
        if self.peek(0) != Some('\'') {
            return false;
        }
        self.i += 1;
        loop {
            match self.peek(0) {
                None => return false,
                Some(c) if is_marker(c) => return false,
                Some('\'') => {
                    if self.peek(1) == Some('\\')
                        && self.peek(2) == Some('\'')
                        && self.peek(3) == Some('\'')
                    {
                        self.i += 4;
                    } else if self.peek(1) == Some(VALUE_END) {
                        self.i += 2;
                        return true;
                    } else {
                        return false;
                    }
                }
                Some(_) => self.i += 1,
            }
        }
    }

    fn comment(&mut self) {
        while let Some(c) = self.peek(0) {
            match c {
                '\n' => return,
                VALUE_START | RAW_START => self.misplaced(HazardKind::Comment),
                _ => self.i += 1,
            }
        }
    }

    /// After `<<` or `<<-`: the delimiter word, with its quotes removed.
    fn heredoc_delimiter(&mut self, strip_tabs: bool) {
        while matches!(self.peek(0), Some(' ' | '\t')) {
            self.i += 1;
        }
        let mut delimiter = String::new();
        while let Some(c) = self.peek(0) {
            match c {
                ' ' | '\t' | '\n' | ';' | '&' | '|' | '<' | '>' | '(' | ')' => break,
                VALUE_START | RAW_START => self.misplaced(HazardKind::HeredocDelimiter),
                '\'' | '"' => {
                    self.i += 1;
                    while let Some(q) = self.peek(0) {
                        self.i += 1;
                        if q == c {
                            break;
                        }
                        if c == '"' && q == '\\' {
                            if let Some(next) = self.peek(0) {
                                delimiter.push(next);
                                self.i += 1;
                            }
                            continue;
                        }
                        delimiter.push(q);
                    }
                }
                '\\' => {
                    if let Some(next) = self.peek(1) {
                        delimiter.push(next);
                    }
                    self.i += 2;
                }
                _ => {
                    delimiter.push(c);
                    self.i += 1;
                }
            }
        }
        self.word_start = true;
        self.pending.push(Heredoc {
            delimiter,
            strip_tabs,
        });
    }

    /// After the newline that ends a line with `<<` operators: their bodies, one after another.
    fn heredoc_bodies(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for doc in pending {
            loop {
                if self.peek(0).is_none() {
                    return;
                }
                let line_start = self.i;
                let mut has_marker = false;
                while let Some(c) = self.peek(0) {
                    if c == '\n' {
                        break;
                    }
                    if matches!(c, VALUE_START | RAW_START) {
                        has_marker = true;
                        self.misplaced(HazardKind::HeredocBody);
                    } else {
                        self.i += 1;
                    }
                }
                let line: String = self.chars[line_start..self.i.min(self.chars.len())]
                    .iter()
                    .map(|&(_, c)| c)
                    .collect();
                if self.peek(0) == Some('\n') {
                    self.i += 1;
                }
                let line = if doc.strip_tabs {
                    line.trim_start_matches('\t')
                } else {
                    line.as_str()
                };
                if !has_marker && line == doc.delimiter {
                    break;
                }
            }
        }
    }
}

/// The literal text of a template with each `{{ }}` replaced by a marked stand-in value (or a
/// marked raw word when its last filter is `safe`) and `{% %}` / `{# #}` tags removed: what the
/// script looks like around its values, read straight through (both branches of an `if`, a
/// loop's body once). Returns the text and, for each stand-in, (its offset, the `{{` offset).
pub(crate) fn skeleton(source: &str) -> (String, Vec<(usize, usize)>) {
    let mut out = String::with_capacity(source.len());
    let mut places = Vec::new();
    let mut rest = 0;
    let mut trim_next = false;
    while rest < source.len() {
        let Some(found) = source[rest..].find('{') else {
            push_literal(&mut out, &source[rest..], trim_next);
            break;
        };
        let open = rest + found;
        let close = match source.get(open + 1..open + 2) {
            Some("{") => "}}",
            Some("%") => "%}",
            Some("#") => "#}",
            _ => {
                push_literal(&mut out, &source[rest..open + 1], trim_next);
                trim_next = false;
                rest = open + 1;
                continue;
            }
        };
        push_literal(&mut out, &source[rest..open], trim_next);
        let inner_start = open + 2;
        let Some(inner_end) = tag_end(source, inner_start, close) else {
            break;
        };
        let inner = &source[inner_start..inner_end];
        if inner.starts_with('-') {
            out.truncate(out.trim_end().len());
        }
        trim_next = inner.ends_with('-');
        rest = inner_end + close.len();
        match close {
            "}}" => {
                places.push((out.len(), open));
                if ends_with_safe(inner.trim_matches(['-', '+'])) {
                    out.push_str(&format!("{RAW_START}x{RAW_END}"));
                } else {
                    out.push_str(&format!("{VALUE_START}'v'{VALUE_END}"));
                }
            }
            "%}" if is_raw_block(inner) => {
                let (body_end, after) = raw_block_end(source, rest);
                push_literal(&mut out, &source[rest..body_end], trim_next);
                trim_next = false;
                rest = after;
            }
            _ => {}
        }
    }
    (out, places)
}

fn push_literal(out: &mut String, text: &str, trim_start: bool) {
    let text = if trim_start { text.trim_start() } else { text };
    // A literal marker character would be mistaken for a value; it is data, so drop it.
    out.extend(text.chars().filter(|c| !is_marker(*c)));
}

/// Where a tag that opened before `from` closes with `close`, skipping string literals.
fn tag_end(source: &str, from: usize, close: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in source[from..].char_indices() {
        let at = from + i;
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if close != "#}" && (c == '\'' || c == '"') => quote = Some(c),
            None if source[at..].starts_with(close) => return Some(at),
            None => {}
        }
    }
    None
}

fn is_raw_block(inner: &str) -> bool {
    inner.trim_matches(['-', '+']).trim() == "raw"
}

/// The end of a `{% raw %}` body starting at `from`: (where the body ends, where the text after
/// `{% endraw %}` starts).
fn raw_block_end(source: &str, from: usize) -> (usize, usize) {
    let mut at = from;
    while let Some(found) = source[at..].find("{%") {
        let open = at + found;
        if let Some(end) = source[open + 2..].find("%}") {
            let inner = &source[open + 2..open + 2 + end];
            if inner.trim_matches(['-', '+']).trim() == "endraw" {
                return (open, open + 2 + end + 2);
            }
        }
        at = open + 2;
    }
    (source.len(), source.len())
}

/// Whether an expression's last filter, outside brackets and strings, is `safe`.
fn ends_with_safe(expr: &str) -> bool {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut last_pipe = None;
    for (i, c) in expr.char_indices() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                '|' if depth == 0 => last_pipe = Some(i),
                _ => {}
            },
        }
    }
    last_pipe.is_some_and(|pipe| {
        let filter = expr[pipe + 1..].trim();
        filter == "safe"
            || filter
                .strip_suffix("()")
                .is_some_and(|f| f.trim_end() == "safe")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `V` stands for a quoted value, `R` for a `| safe` value.
    fn kinds(script: &str) -> Vec<HazardKind> {
        let text = script
            .replace('V', &format!("{VALUE_START}'v'{VALUE_END}"))
            .replace('R', &format!("{RAW_START}x{RAW_END}"));
        scan(&text).into_iter().map(|f| f.kind).collect()
    }

    #[test]
    fn plain_words_are_fine() {
        for ok in [
            "echo V",
            "echo aVb V=V --x=V",
            "echo \"$(echo V)\" '$(' V",
            "x=$(printf %s V | tr a b) && echo \"$x\" V",
            "echo \"a\"V'b'V",
            "cat <<EOF\nbody\nEOF\necho V",
            "cat <<-'EOF' <<\"B\"\n\tbody\n\tEOF\nb\nB\necho V",
            "echo a#b V # a comment\necho V",
            "echo \\$ V \\\nV",
            "case V in (a) echo V;; esac",
            "R V 'q' R",
            "echo ${HOME} $((1 + 2)) V",
            "cat <<<V",
        ] {
            assert_eq!(kinds(ok), [], "{ok:?}");
        }
    }

    #[test]
    fn each_misplaced_value_is_found() {
        use HazardKind::*;
        for (script, want) in [
            ("echo 'V'", vec![SingleQuotes]),
            ("echo \"a V\"", vec![DoubleQuotes]),
            (
                "git commit -m \"V\" && echo 'R'",
                vec![DoubleQuotes, SingleQuotes],
            ),
            ("echo $'V'", vec![DollarQuotes]),
            ("echo `echo V`", vec![Backquotes]),
            ("echo \"`echo V`\"", vec![Backquotes]),
            ("echo ${x:-V}", vec![ParameterExpansion]),
            ("echo $((V + 1))", vec![Arithmetic]),
            ("cat <<EOF\nV\nEOF\necho V", vec![HeredocBody]),
            ("cat <<'EOF'\n  a V\nEOF", vec![HeredocBody]),
            ("cat <<A <<B\nA\nV\nB", vec![HeredocBody]),
            ("cat <<-EOF\n\tEOF\nV\nEOF", vec![]),
            ("$(cat <<EOF\nV\nEOF\n)", vec![HeredocBody]),
            ("cat <<V\nx\n", vec![HeredocDelimiter]),
            ("# do V\necho V", vec![Comment]),
            ("echo \\V", vec![Escaped]),
            ("echo $V", vec![AfterDollar]),
            ("echo \"$(echo 'V')\"", vec![SingleQuotes]),
        ] {
            assert_eq!(kinds(script), want, "{script:?}");
        }
    }

    #[test]
    fn altered_values_are_found() {
        for text in [
            format!("echo {VALUE_START}\"v\"{VALUE_END}"),
            format!("echo {VALUE_START}'v'"),
            format!("echo 'v'{VALUE_END}"),
            format!("echo {VALUE_START}'a'b'{VALUE_END}"),
        ] {
            let found = scan(&text);
            assert_eq!(found.len(), 1, "{text:?}: {found:?}");
            assert_eq!(found[0].kind, HazardKind::Altered);
        }
        let ok = format!("echo {VALUE_START}'it'\\''s'{VALUE_END}");
        assert_eq!(scan(&ok), []);
    }

    #[test]
    fn offsets_point_at_the_marker() {
        let text = format!("echo '{VALUE_START}'v'{VALUE_END}'");
        assert_eq!(scan(&text)[0].offset, "echo '".len());
    }

    #[test]
    fn skeletons_keep_literals_and_mark_values() {
        let (text, places) =
            skeleton("a {{ x }}{% if y %}'{{ y | safe }}'{% endif %}{# c #} {{- z -}}  b");
        let want = format!(
            "a {VALUE_START}'v'{VALUE_END}'{RAW_START}x{RAW_END}'{VALUE_START}'v'{VALUE_END}b"
        );
        assert_eq!(text, want);
        let sources: Vec<usize> = places.iter().map(|p| p.1).collect();
        assert_eq!(sources, [2, 20, 54]);
        let (text, places) = skeleton("{% raw %}'{{ x }}'{% endraw %} {{ \"}}'\" }}");
        assert_eq!(text, format!("'{{{{ x }}}}' {VALUE_START}'v'{VALUE_END}"));
        assert_eq!(places.len(), 1);
        assert!(ends_with_safe(" a | upper | safe "));
        assert!(ends_with_safe("a|safe()"));
        assert!(!ends_with_safe("a | safe if b else c"));
        assert!(!ends_with_safe("f(a | safe)"));
        assert!(!ends_with_safe("'| safe'"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Any text, markers and shell punctuation included, is lexed without a panic.
        #[test]
        fn never_panics(text in "[\\PC\n\t'\"`$(){}<>#\\\\\u{FDD0}\u{FDD1}\u{FDD2}\u{FDD3}-]{0,80}") {
            let _ = scan(&text);
            let _ = strip_markers(&text);
        }

        /// Any template text, tags and all, gives a skeleton without a panic.
        #[test]
        fn skeleton_never_panics(text in "[\\PC\n'\"{}%#|\\\\-]{0,80}") {
            let (skeleton, _) = skeleton(&text);
            let _ = scan(&skeleton);
        }
    }
}
