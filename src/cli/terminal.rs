//! Text from a run (step output, reasons, titles) is hostile: an escape sequence in it could write
//! the operator's clipboard (OSC 52), retitle or redraw the terminal, or overwrite a line with
//! `\r`. [`printable`] makes such text harmless to print while keeping it readable.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The longest SGR sequence kept (`ESC [ … m`); colour sequences are short, and a bound keeps
/// the parse simple.
const MAX_SGR: usize = 32;

/// Shows `text` as it may reach a terminal: `\n` and `\t` stay; SGR colour sequences whose every
/// parameter is on a small list that cannot hide text stay (anstream strips them when colours are
/// off); every other control character is shown visibly in caret notation (`ESC` as `^[`, `\r`
/// as `^M`), C1 controls and bidirectional overrides as `<U+XXXX>`. Borrows when nothing changes.
#[must_use]
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_care) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b'
            && let Some(len) = safe_sgr(rest)
        {
            out.push_str(&rest[..len]);
            rest = &rest[len..];
            continue;
        }
        match c {
            '\n' | '\t' => out.push(c),
            '\x00'..='\x1f' => {
                out.push('^');
                out.push(char::from(c as u8 + 0x40));
            }
            '\x7f' => out.push_str("^?"),
            c if needs_care(c) => {
                let _ = write!(out, "<U+{:04X}>", u32::from(c));
            }
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

fn needs_care(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        // Bidirectional embeddings, overrides and isolates reorder what is shown.
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The length of the SGR sequence at the start of `text` if it only sets styles that keep text
/// readable: reset, bold, dim, italic, underline, their resets, and foreground colours other than
/// black (black on a dark terminal, concealed text, or backgrounds could hide a line).
fn safe_sgr(text: &str) -> Option<usize> {
    let body = text.strip_prefix("\x1b[")?;
    let end = body.bytes().take(MAX_SGR).position(|b| b == b'm')?;
    let params = &body[..end];
    let safe = params.split(';').all(|p| {
        p.is_empty()
            || p.parse::<u8>().is_ok_and(|n| {
                matches!(n, 0..=4 | 22..=24 | 31..=37 | 39 | 90..=97) && p.len() <= 2
            })
    });
    safe.then_some(2 + end + 1)
}

/// The first `n` characters of `text`: ids and shas are shown short, and slicing bytes would
/// panic on a multi-byte character (they come from exec output and the engine).
#[must_use]
pub fn short(text: &str, n: usize) -> &str {
    text.char_indices()
        .nth(n)
        .map_or(text, |(at, _)| &text[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        // OSC 52 clipboard write, title change, cursor moves, clear screen, carriage return.
        let hostile = "a\x1b]52;c;ZWNobyBwd25lZA==\x07b\x1b]0;title\x1b\\c\x1b[2J\x1b[Hd\rX\x08";
        assert_eq!(
            printable(hostile),
            "a^[]52;c;ZWNobyBwd25lZA==^Gb^[]0;title^[\\c^[[2J^[[Hd^MX^H"
        );
        // C1 CSI, DEL, a bidi override.
        assert_eq!(
            printable("x\u{9b}2Jy\x7f\u{202e}z"),
            "x<U+009B>2Jy^?<U+202E>z"
        );
    }

    #[test]
    fn newlines_tabs_and_readable_colours_stay() {
        assert!(matches!(printable("plain\ttext\n"), Cow::Borrowed(_)));
        assert_eq!(
            printable("\x1b[1;31merror\x1b[0m ok\x1b[m"),
            "\x1b[1;31merror\x1b[0m ok\x1b[m"
        );
        // Concealed, black, background, 256-colour: shown, not applied.
        assert_eq!(printable("\x1b[8mhidden"), "^[[8mhidden");
        assert_eq!(printable("\x1b[30;40mx"), "^[[30;40mx");
        assert_eq!(printable("\x1b[38;5;1mx"), "^[[38;5;1mx");
        assert_eq!(printable("\x1b[001mx"), "^[[001mx");
        // Unterminated.
        assert_eq!(printable("\x1b[31"), "^[[31");
    }

    #[test]
    fn short_never_splits_a_character() {
        assert_eq!(short("0123456789abcdef", 12), "0123456789ab");
        assert_eq!(short("abc", 12), "abc");
        assert_eq!(short("ééééééééééééé", 12), "éééééééééééé");
        assert_eq!(short("a\u{1f600}", 1), "a");
    }
}
