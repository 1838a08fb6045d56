//! Secret redaction for every byte that leaves a sandbox: logs, step outputs, error messages and
//! PR bodies. A [`Redactor`] holds the secret values; [`RedactStream`] applies it to a stream that
//! arrives in chunks of any size; [`Redactor::redact_str`] applies it to one finished string.
//!
//! The rule, for one-shot and streamed input alike: every maximal run of bytes covered by at
//! least one occurrence of at least one secret is replaced by [`MASK`]. Occurrences may overlap
//! (one secret a prefix or substring of another, or two secrets sharing bytes) or touch; the union
//! is masked once. Work is done on raw bytes, so invalid UTF-8 and binary output are fine.
//!
//! The mask is a constant `***` rather than `[REDACTED:NAME]`: it tells a reader nothing about the
//! secret's length (a mask covering a union could not name one secret anyway), and it is what a
//! `Secret`'s own `Debug`/`Display` print, so a masked value looks the same wherever it shows up.

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::secret::Secret;

/// What every masked run of bytes is replaced with.
pub const MASK: &[u8] = b"***";

/// An immutable set of secrets to mask. Cheap to clone; share one per step.
#[derive(Clone, Default)]
pub struct Redactor {
    /// `None` when there is nothing to mask: output passes through untouched.
    patterns: Option<Arc<Patterns>>,
}

struct Patterns {
    /// Standard (not leftmost) semantics: the only kind that reports overlapping matches.
    automaton: AhoCorasick,
    /// The distinct secret values, sorted, to find which tails might start a secret.
    sorted: Vec<Box<[u8]>>,
    max_len: usize,
}

/// The redactor could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the secret redactor (too many or too long secrets): {0}")]
pub struct RedactorError(#[from] aho_corasick::BuildError);

impl Redactor {
    /// A redactor that masks the given secrets.
    ///
    /// # Errors
    /// Only when the secrets are too many or too long for the matcher to be built in memory.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Result<Self, RedactorError> {
        let mut sorted: Vec<Box<[u8]>> = secrets
            .into_iter()
            .map(|secret| Box::from(secret.expose().as_bytes()))
            .collect();
        sorted.sort_unstable();
        sorted.dedup();
        let Some(max_len) = sorted.iter().map(|value| value.len()).max() else {
            return Ok(Self::none());
        };
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&sorted)?;
        Ok(Self {
            patterns: Some(Arc::new(Patterns {
                automaton,
                sorted,
                max_len,
            })),
        })
    }

    /// A redactor with no secrets: everything passes through unchanged.
    #[must_use]
    pub fn none() -> Self {
        Self { patterns: None }
    }

    /// Whether this redactor masks nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.patterns.is_none()
    }

    /// Masks every secret in a complete piece of text, e.g. an error message or a result field.
    /// Borrows when there is nothing to mask.
    #[must_use]
    pub fn redact_str<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match self.redact(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Secrets are valid UTF-8, and in valid UTF-8 an occurrence of a valid UTF-8 sequence
            // starts and ends on character boundaries, so replacing whole runs keeps it valid.
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// Masks every secret in a complete byte string. Borrows when there is nothing to mask.
    #[must_use]
    pub fn redact<'t>(&self, bytes: &'t [u8]) -> Cow<'t, [u8]> {
        match &self.patterns {
            Some(patterns) if patterns.automaton.is_match(bytes) => {
                let mut out = Vec::with_capacity(bytes.len());
                let mut stream = self.stream();
                stream.write(bytes, &mut out);
                stream.finish(&mut out);
                Cow::Owned(out)
            }
            _ => Cow::Borrowed(bytes),
        }
    }

    /// A filter for one stream of output (use one per stream: stdout and stderr each need their
    /// own, as a secret can only be split across chunks of the same stream).
    #[must_use]
    pub fn stream(&self) -> RedactStream {
        RedactStream {
            patterns: self.patterns.clone(),
            pending: Vec::new(),
            mask_end: None,
        }
    }
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.patterns.as_ref().map_or(0, |p| p.sorted.len());
        f.debug_struct("Redactor").field("secrets", &count).finish()
    }
}

/// The state of redaction over one stream: feed chunks with [`RedactStream::write`], then call
/// [`RedactStream::finish`] once at the end of the stream.
///
/// A tail of at most `max_secret_len - 1` bytes is held back while it could still be the start of
/// a secret completed by the next chunk; anything that cannot is written out at once, so a
/// live log lags only when its last bytes look like the start of a secret.
pub struct RedactStream {
    patterns: Option<Arc<Patterns>>,
    /// Bytes not yet written out; may hold the start of a secret.
    pending: Vec<u8>,
    /// End (index into `pending`) of the masked run whose `***` has been written already. Bytes
    /// before it are swallowed, and an occurrence starting at or before it extends it.
    mask_end: Option<usize>,
}

impl RedactStream {
    /// Redacts `chunk`, appending to `out` all the output that is certain so far.
    pub fn write(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let Some(patterns) = self.patterns.clone() else {
            out.extend_from_slice(chunk);
            return;
        };
        if self.pending.is_empty() {
            // The common case: scan the chunk where it lies and keep only its undecided tail.
            let done = self.drain_decided(&patterns, chunk, false, out);
            self.pending.extend_from_slice(&chunk[done..]);
        } else {
            let mut buffer = std::mem::take(&mut self.pending);
            buffer.extend_from_slice(chunk);
            let done = self.drain_decided(&patterns, &buffer, false, out);
            buffer.drain(..done);
            self.pending = buffer;
        }
    }

    /// Writes out everything held back. Call once, when the stream has ended.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let Some(patterns) = self.patterns.clone() else {
            return;
        };
        let buffer = std::mem::take(&mut self.pending);
        self.drain_decided(&patterns, &buffer, true, out);
        self.mask_end = None;
    }

    /// Writes the decided prefix of `buffer` (all of it when `last`) to `out` and returns its
    /// length. Afterwards `mask_end` is relative to the rest of `buffer`.
    fn drain_decided(
        &mut self,
        patterns: &Patterns,
        buffer: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> usize {
        let decided = if last {
            buffer.len()
        } else {
            patterns.undecided_from(buffer)
        };
        // Occurrences starting in the undecided tail are found again with the next chunk.
        let mut spans: Vec<(usize, usize)> = patterns
            .automaton
            .find_overlapping_iter(buffer)
            .map(|m| (m.start(), m.end()))
            .filter(|&(start, _)| start < decided)
            .collect();
        spans.sort_unstable();

        // Bytes before `cursor` are written or swallowed; those in `cursor..mask_end` are masked.
        let mut cursor = 0;
        for (start, end) in spans {
            match self.mask_end {
                Some(mask_end) if start <= mask_end => self.mask_end = Some(mask_end.max(end)),
                mask_end => {
                    let from = mask_end.map_or(cursor, |m| m.max(cursor));
                    out.extend_from_slice(&buffer[from..start]);
                    out.extend_from_slice(MASK);
                    cursor = start;
                    self.mask_end = Some(end);
                }
            }
        }
        let from = self.mask_end.map_or(cursor, |m| m.max(cursor));
        if from < decided {
            out.extend_from_slice(&buffer[from..decided]);
        }
        // A run that ends exactly at `decided` stays open: an occurrence starting right there
        // touches it and joins it.
        self.mask_end = self
            .mask_end
            .and_then(|mask_end| mask_end.checked_sub(decided));
        decided
    }
}

impl Patterns {
    /// Where the tail of `buffer` that could still be the start of a secret begins: the first
    /// position whose suffix is a proper prefix of some secret, or `buffer.len()`. Every later
    /// occurrence must start there or after, so everything before it is final.
    fn undecided_from(&self, buffer: &[u8]) -> usize {
        let first = buffer.len().saturating_sub(self.max_len - 1);
        (first..buffer.len())
            .find(|&at| self.starts_a_secret(&buffer[at..]))
            .unwrap_or(buffer.len())
    }

    fn starts_a_secret(&self, tail: &[u8]) -> bool {
        // In sorted order, the values that start with `tail` come right at its insertion point
        // (values are distinct, so at most one equals `tail`).
        let at = self.sorted.partition_point(|value| &value[..] < tail);
        self.sorted[at..]
            .iter()
            .take(2)
            .any(|value| value.len() > tail.len() && value.starts_with(tail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(values: &[&str]) -> Redactor {
        let secrets: Vec<Secret> = values
            .iter()
            .enumerate()
            .map(|(i, value)| Secret::new(format!("S{i}"), *value).unwrap())
            .collect();
        Redactor::new(&secrets).unwrap()
    }

    fn streamed(redactor: &Redactor, chunks: &[&[u8]]) -> Vec<u8> {
        let mut stream = redactor.stream();
        let mut out = Vec::new();
        for chunk in chunks {
            stream.write(chunk, &mut out);
        }
        stream.finish(&mut out);
        out
    }

    #[test]
    fn masks_a_secret_in_a_string() {
        let r = redactor(&["hunter22"]);
        assert_eq!(r.redact_str("pw=hunter22;"), "pw=***;");
        assert!(matches!(r.redact_str("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn masks_a_secret_split_across_chunks() {
        let r = redactor(&["hunter22"]);
        assert_eq!(streamed(&r, &[b"pw=hun", b"ter", b"22;"]), b"pw=***;");
        assert_eq!(streamed(&r, &[b"pw=hunter2", b"2"]), b"pw=***");
    }

    #[test]
    fn overlapping_and_touching_secrets_are_masked_once() {
        let r = redactor(&["abcd", "cdef", "bc12", "wxyz"]);
        assert_eq!(r.redact_str("[abcdef]"), "[***]");
        // One secret inside another.
        let r2 = redactor(&["token", "my-token-value"]);
        assert_eq!(r2.redact_str("x my-token-value y token"), "x *** y ***");
        // Touching occurrences form one run.
        assert_eq!(r.redact_str("abcdwxyz!"), "***!");
    }

    #[test]
    fn a_tail_that_cannot_start_a_secret_is_not_held_back() {
        let r = redactor(&["world-secret"]);
        let mut stream = r.stream();
        let mut out = Vec::new();
        stream.write(b"hello\n", &mut out);
        assert_eq!(out, b"hello\n");
        stream.write(b"hello wor", &mut out);
        assert_eq!(out, b"hello\nhello ");
        stream.write(b"ld\n", &mut out);
        assert_eq!(out, b"hello\nhello world\n");
        stream.finish(&mut out);
        assert_eq!(out, b"hello\nhello world\n");
    }

    #[test]
    fn finish_flushes_a_held_tail() {
        let r = redactor(&["secret-value"]);
        assert_eq!(
            streamed(&r, &[b"ends with secret-val"]),
            b"ends with secret-val"
        );
    }

    #[test]
    fn binary_and_invalid_utf8_pass_through() {
        let r = redactor(&["\u{e9}t\u{e9}-key"]);
        let mut input = vec![0xff, 0x00, 0xc3];
        input.extend_from_slice("\u{e9}t\u{e9}-key".as_bytes());
        input.push(0xfe);
        assert_eq!(
            r.redact(&input).as_ref(),
            &[0xff, 0x00, 0xc3, b'*', b'*', b'*', 0xfe]
        );
    }

    #[test]
    fn no_secrets_means_no_change() {
        let r = Redactor::new([]).unwrap();
        assert!(r.is_empty());
        assert_eq!(streamed(&r, &[b"abc", b"def"]), b"abcdef");
        assert_eq!(
            format!("{:?}", redactor(&["abcd", "abcd"])),
            "Redactor { secrets: 1 }"
        );
    }
}
