//! A git object id, validated once: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits. Everything
//! the host-side git layer hands back or takes in as a commit or tree is an [`Oid`], so a string
//! read from a git process (or from a hostile bundle) is checked before anything acts on it.

use std::fmt;

/// A git object id: 40 or 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Oid(String);

impl Oid {
    /// Parses an object id; upper-case hex is accepted and stored lowercase. `None` for anything
    /// else (wrong length, a non-hex character, surrounding whitespace).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let valid = matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| Self(text.to_ascii_lowercase()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, for messages a person reads.
    #[must_use]
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oid({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sha1_and_sha256_ids() {
        let sha1 = "9ce5f0005c62a1b62dc3dec5a3e98ad6f61a2e4a";
        assert_eq!(Oid::parse(sha1).unwrap().to_string(), sha1);
        assert_eq!(Oid::parse(&sha1.to_uppercase()).unwrap().as_str(), sha1);
        assert!(Oid::parse(&"ab".repeat(32)).is_some());
        assert_eq!(Oid::parse(sha1).unwrap().short(), "9ce5f0005c62");
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "9ce5f00",
            "9ce5f0005c62a1b62dc3dec5a3e98ad6f61a2e4a\n",
            " 9ce5f0005c62a1b62dc3dec5a3e98ad6f61a2e4",
            "zce5f0005c62a1b62dc3dec5a3e98ad6f61a2e4a",
            "refs/heads/main",
            "é".repeat(20).as_str(),
        ] {
            assert!(Oid::parse(bad).is_none(), "{bad:?}");
        }
    }
}
