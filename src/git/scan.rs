//! Finds secret values in bytes that are about to leave maxions (the blobs of a branch before it
//! is pushed), in the encodings an agent or a tool is likely to write them in: plain, base64
//! (standard and URL-safe, at all three byte alignments, also when wrapped over lines), percent
//! encoding and hex. One Aho-Corasick automaton holds every form of every secret, built once.
//!
//! This catches accidents and careless exfiltration, not a determined adversary: a secret that is
//! reversed, split, encrypted or rot13'd passes. Derived forms shorter than [`MIN_DERIVED_LEN`]
//! bytes are left out (a 4-byte secret's base64 core is 4 characters, which random base64 text
//! holds by chance); the plain form is always searched.

use std::fmt;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

use crate::secret::Secret;

/// The shortest encoded form (other than plain) that is searched for.
pub const MIN_DERIVED_LEN: usize = 8;

/// How a secret's value was written where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Plain,
    Base64,
    Base64Url,
    PercentEncoded,
    Hex,
}

impl Encoding {
    /// `" (as base64)"`, or nothing for plain text: a suffix for messages.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Plain => "",
            Self::Base64 => " (as base64)",
            Self::Base64Url => " (as URL-safe base64)",
            Self::PercentEncoded => " (percent-encoded)",
            Self::Hex => " (as hex)",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plain => "plain",
            Self::Base64 => "base64",
            Self::Base64Url => "url-safe base64",
            Self::PercentEncoded => "percent-encoded",
            Self::Hex => "hex",
        })
    }
}

/// A secret found: its name (never its value) and the form it was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding<'s> {
    pub name: &'s str,
    pub encoding: Encoding,
}

/// Searches `bytes` for every form of every secret. For many inputs, build a [`Scanner`] once.
#[must_use]
pub fn find_secret<'s>(bytes: &[u8], secrets: &'s [Secret]) -> Option<Finding<'s>> {
    let scanner = Scanner::new(secrets)?;
    let mut stream = scanner.stream();
    stream.write(bytes).or_else(|| stream.finish())
}

/// One automaton per kind of text it runs over: raw bytes for plain and percent-encoded forms;
/// bytes with ASCII whitespace removed for base64 and hex, which tools wrap over lines
/// (`base64` at 76 columns, PEM at 64, `xxd -p` at 60) or space out (`xxd`, `od`).
struct Matcher {
    automaton: AhoCorasick,
    /// For each pattern: which secret, in which form.
    origins: Vec<(usize, Encoding)>,
    max_len: usize,
}

/// Every form of a set of secrets, compiled. Cheap to stream many inputs through.
pub struct Scanner<'s> {
    secrets: &'s [Secret],
    raw: Option<Matcher>,
    stripped: Option<Matcher>,
}

impl<'s> Scanner<'s> {
    /// `None` when there is nothing to look for.
    #[must_use]
    pub fn new(secrets: &'s [Secret]) -> Option<Self> {
        let mut raw = Vec::new();
        let mut stripped = Vec::new();
        for (index, secret) in secrets.iter().enumerate() {
            let value = secret.expose().as_bytes();
            raw.push((value.to_vec(), index, Encoding::Plain));
            for form in percent_forms(value) {
                raw.push((form, index, Encoding::PercentEncoded));
            }
            for form in base64_cores(value, false) {
                stripped.push((form, index, Encoding::Base64));
            }
            for form in base64_cores(value, true) {
                stripped.push((form, index, Encoding::Base64Url));
            }
            let hex: Vec<u8> = value.iter().flat_map(|b| hex_pair(*b, false)).collect();
            stripped.push((hex.to_ascii_uppercase(), index, Encoding::Hex));
            stripped.push((hex, index, Encoding::Hex));
        }
        let keep = |(form, ..): &(Vec<u8>, usize, Encoding)| form.len() >= MIN_DERIVED_LEN;
        let raw: Vec<_> = raw
            .into_iter()
            .filter(|entry| entry.2 == Encoding::Plain || keep(entry))
            .collect();
        stripped.retain(keep);
        let (raw, stripped) = (Matcher::build(raw), Matcher::build(stripped));
        (raw.is_some() || stripped.is_some()).then_some(Self {
            secrets,
            raw,
            stripped,
        })
    }

    /// A search over one input that arrives in chunks of any size.
    #[must_use]
    pub fn stream(&self) -> ScanStream<'_, 's> {
        ScanStream {
            scanner: self,
            raw_carry: Vec::new(),
            stripped_carry: Vec::new(),
        }
    }

    fn finding(&self, matcher: &Matcher, pattern: usize) -> Finding<'s> {
        let (index, encoding) = matcher.origins[pattern];
        Finding {
            name: self.secrets[index].name(),
            encoding,
        }
    }
}

impl Matcher {
    fn build(mut patterns: Vec<(Vec<u8>, usize, Encoding)>) -> Option<Self> {
        // Plain first, so that when forms coincide (an alphanumeric secret is its own percent
        // encoding) the report says the simplest one.
        patterns.sort_by_key(|(_, _, encoding)| *encoding != Encoding::Plain);
        let max_len = patterns.iter().map(|(form, ..)| form.len()).max()?;
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(patterns.iter().map(|(form, ..)| form))
            // Secrets are few and short; a build failure would mean tens of megabytes of them.
            .ok()?;
        Some(Self {
            automaton,
            origins: patterns.iter().map(|(_, i, e)| (*i, *e)).collect(),
            max_len,
        })
    }
}

/// One input being scanned. Keeps the last `max_len - 1` bytes of each view so that a secret
/// split across two chunks is still found.
pub struct ScanStream<'a, 's> {
    scanner: &'a Scanner<'s>,
    raw_carry: Vec<u8>,
    stripped_carry: Vec<u8>,
}

impl<'s> ScanStream<'_, 's> {
    /// Scans the next chunk; the first finding, if any.
    pub fn write(&mut self, chunk: &[u8]) -> Option<Finding<'s>> {
        let scanner = self.scanner;
        if let Some(matcher) = &scanner.raw
            && let Some(found) = search(matcher, &mut self.raw_carry, chunk.iter().copied())
        {
            return Some(scanner.finding(matcher, found));
        }
        if let Some(matcher) = &scanner.stripped {
            let bytes = chunk.iter().copied().filter(|b| !b.is_ascii_whitespace());
            if let Some(found) = search(matcher, &mut self.stripped_carry, bytes) {
                return Some(scanner.finding(matcher, found));
            }
        }
        None
    }

    /// Ends the input. Every occurrence is reported by [`Self::write`] as soon as its last byte
    /// arrives, so this finds nothing new; it exists so callers say where an input ends.
    pub fn finish(&mut self) -> Option<Finding<'s>> {
        self.raw_carry.clear();
        self.stripped_carry.clear();
        None
    }
}

/// Appends `bytes` to `carry`, searches the whole, and keeps only the tail that could still
/// start an occurrence.
fn search(
    matcher: &Matcher,
    carry: &mut Vec<u8>,
    bytes: impl Iterator<Item = u8>,
) -> Option<usize> {
    carry.extend(bytes);
    let found = matcher
        .automaton
        .find(carry.as_slice())
        .map(|m| m.pattern().as_usize());
    let keep = matcher.max_len.saturating_sub(1).min(carry.len());
    carry.drain(..carry.len() - keep);
    found
}

/// The base64 characters that depend only on the secret's bytes, for the secret starting at
/// each of the three offsets within a 3-byte group. Characters that mix in a neighbouring byte
/// (at either end) are dropped, so the core matches whatever surrounds the secret.
fn base64_cores(value: &[u8], url_safe: bool) -> Vec<Vec<u8>> {
    let engine = if url_safe {
        &URL_SAFE_NO_PAD
    } else {
        &STANDARD_NO_PAD
    };
    (0..3)
        .map(|offset| {
            let mut padded = vec![0u8; offset];
            padded.extend_from_slice(value);
            let encoded = engine.encode(&padded).into_bytes();
            // Character i covers bits [6i, 6i + 6); the secret covers [8 offset, 8 (offset + n)).
            let first = (8 * offset).div_ceil(6);
            let end = (8 * (offset + value.len())) / 6;
            encoded.get(first..end).unwrap_or_default().to_vec()
        })
        .collect()
}

/// Percent-encoded forms: as `encodeURIComponent` and friends write it (unreserved characters
/// kept) and with every byte encoded, each with upper- and lower-case hex digits.
fn percent_forms(value: &[u8]) -> Vec<Vec<u8>> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let mut forms = Vec::new();
    for upper in [true, false] {
        for all in [false, true] {
            let mut form = Vec::new();
            for &b in value {
                if !all && unreserved(b) {
                    form.push(b);
                } else {
                    form.push(b'%');
                    form.extend(hex_pair(b, upper));
                }
            }
            if form != value && !forms.contains(&form) {
                forms.push(form);
            }
        }
    }
    forms
}

fn hex_pair(byte: u8, upper: bool) -> [u8; 2] {
    let digits = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    [
        digits[usize::from(byte >> 4)],
        digits[usize::from(byte & 0xf)],
    ]
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use proptest::prelude::*;

    use super::*;

    const TOKEN: &str = "ghp_S3cr3t/Value+With=Symbols?&";

    fn secrets() -> Vec<Secret> {
        vec![
            Secret::new("OTHER", "unrelated-secret-value").unwrap(),
            Secret::new("GIT_TOKEN", TOKEN).unwrap(),
        ]
    }

    fn found(text: &[u8]) -> Option<(String, Encoding)> {
        let secrets = secrets();
        find_secret(text, &secrets).map(|f| (f.name.to_owned(), f.encoding))
    }

    fn token(encoding: Encoding) -> Option<(String, Encoding)> {
        Some(("GIT_TOKEN".to_owned(), encoding))
    }

    #[test]
    fn finds_the_plain_value_anywhere() {
        assert_eq!(
            found(format!("x = \"{TOKEN}\"\n").as_bytes()),
            token(Encoding::Plain)
        );
        assert_eq!(found(b"nothing to see here"), None);
    }

    #[test]
    fn finds_base64_at_every_alignment_and_in_both_alphabets() {
        for prefix in ["", "a", "ab", "abc", "user:"] {
            let text = format!("{prefix}{TOKEN}\n");
            let standard = STANDARD.encode(&text);
            assert_eq!(
                found(standard.as_bytes()),
                token(Encoding::Base64),
                "{prefix:?}"
            );
            // Where the core has no `+` or `/`, both alphabets agree and the standard one is named.
            let url = URL_SAFE.encode(&text);
            let (name, encoding) = found(url.as_bytes()).unwrap();
            assert_eq!(name, "GIT_TOKEN");
            assert!(
                matches!(encoding, Encoding::Base64 | Encoding::Base64Url),
                "{prefix:?}"
            );
        }
    }

    #[test]
    fn finds_base64_wrapped_over_lines() {
        let encoded = STANDARD.encode(format!("{}{TOKEN}", "x".repeat(50)));
        let wrapped: Vec<String> = encoded
            .as_bytes()
            .chunks(16)
            .map(|line| String::from_utf8_lossy(line).into_owned())
            .collect();
        let text = wrapped.join("\r\n");
        assert_eq!(found(text.as_bytes()), token(Encoding::Base64));
    }

    #[test]
    fn finds_percent_encoding_in_both_cases_and_fully_encoded() {
        let component = "ghp_S3cr3t%2FValue%2BWith%3DSymbols%3F%26";
        assert_eq!(found(component.as_bytes()), token(Encoding::PercentEncoded));
        let lower = component
            .replace("%2F", "%2f")
            .replace("%2B", "%2b")
            .replace("%3D", "%3d");
        let lower = lower.replace("%3F", "%3f");
        assert_eq!(found(lower.as_bytes()), token(Encoding::PercentEncoded));
        let every: String = TOKEN.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(found(every.as_bytes()), token(Encoding::PercentEncoded));
    }

    #[test]
    fn finds_hex_in_either_case_and_spaced_out() {
        let hex: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
        assert_eq!(found(hex.as_bytes()), token(Encoding::Hex));
        assert_eq!(found(hex.to_uppercase().as_bytes()), token(Encoding::Hex));
        let spaced: String = TOKEN.bytes().map(|b| format!("{b:02x} ")).collect();
        assert_eq!(found(spaced.as_bytes()), token(Encoding::Hex));
    }

    #[test]
    fn an_alphanumeric_secret_is_reported_as_plain() {
        let secrets = [Secret::new("KEY", "abcdefgh12345678").unwrap()];
        let finding = find_secret(b"--abcdefgh12345678--", &secrets).unwrap();
        assert_eq!((finding.name, finding.encoding), ("KEY", Encoding::Plain));
    }

    #[test]
    fn short_secrets_are_searched_only_where_the_form_is_long_enough() {
        let secrets = [Secret::new("PIN", "wxyz").unwrap()];
        assert!(find_secret(b"..wxyz..", &secrets).is_some());
        // Hex of four bytes is eight characters: still searched.
        assert!(find_secret(b"7778797a", &secrets).is_some());
        // The base64 core of four bytes is too short to search without false alarms.
        assert!(find_secret(STANDARD.encode("wxyz").as_bytes(), &secrets).is_none());
    }

    #[test]
    fn no_secrets_means_no_scanner() {
        assert!(Scanner::new(&[]).is_none());
        assert_eq!(find_secret(b"anything", &[]), None);
    }

    proptest! {
        /// A secret is found wherever chunk boundaries fall, in every form.
        #[test]
        fn found_across_any_chunking(
            prefix in proptest::collection::vec(any::<u8>(), 0..40),
            cut in 1usize..60,
            form in 0usize..4,
        ) {
            let secrets = secrets();
            let scanner = Scanner::new(&secrets).unwrap();
            let mut payload = prefix.clone();
            payload.extend_from_slice(TOKEN.as_bytes());
            let text: Vec<u8> = match form {
                0 => payload,
                1 => STANDARD.encode(&payload).into_bytes(),
                2 => payload.iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect(),
                _ => {
                    let mut text = prefix.clone();
                    text.extend_from_slice(b"ghp_S3cr3t%2FValue%2BWith%3DSymbols%3F%26");
                    text
                }
            };
            let mut stream = scanner.stream();
            let hit = text.chunks(cut).find_map(|chunk| stream.write(chunk));
            prop_assert_eq!(hit.map(|f| f.name), Some("GIT_TOKEN"));
        }
    }
}
