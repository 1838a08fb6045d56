//! Durations (`90s`, `45m`, `1h30m`) and byte sizes (`512m`, `4g`), parsed once at load time.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way people write them in config: `90s`, `45m`, `1h30m`, `2h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

/// A size in bytes, written `512m`, `4g`, `1024k` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

pub const DURATION_HINT: &str = "write a number followed by h, m or s, like 90s, 45m or 1h30m";
pub const SIZE_HINT: &str = "write a number followed by k, m or g, like 512m or 4g";

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err("a duration cannot be empty".into());
        }
        let mut total: u64 = 0;
        let mut last_rank = usize::MAX;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(format!(
                    "invalid duration `{text}`: expected a number at `{rest}`"
                ));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration `{text}`: number too large"))?;
            rest = &rest[digits..];
            let (unit, rank, seconds) = match rest.chars().next() {
                Some('h') => ('h', 2, 3600),
                Some('m') => ('m', 1, 60),
                Some('s') => ('s', 0, 1),
                Some(other) => {
                    return Err(format!("invalid duration `{text}`: unknown unit `{other}`"));
                }
                None => return Err(format!("invalid duration `{text}`: missing a unit")),
            };
            if rank >= last_rank {
                return Err(format!(
                    "invalid duration `{text}`: units must go from largest to smallest, each once (`{unit}` is out of place)"
                ));
            }
            last_rank = rank;
            rest = &rest[1..];
            total = number
                .checked_mul(seconds)
                .and_then(|s| total.checked_add(s))
                .ok_or_else(|| format!("invalid duration `{text}`: too large"))?;
        }
        if total == 0 {
            return Err(format!(
                "invalid duration `{text}`: must be longer than zero"
            ));
        }
        Ok(Self(Duration::from_secs(total)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        let mut wrote = false;
        for (value, unit) in [(h, 'h'), (m, 'm'), (s, 's')] {
            if value > 0 {
                write!(f, "{value}{unit}")?;
                wrote = true;
            }
        }
        if !wrote {
            write!(f, "{}ms", self.0.as_millis())?;
        }
        Ok(())
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid size `{text}`: expected a number"));
        }
        let number: u64 = trimmed[..digits]
            .parse()
            .map_err(|_| format!("invalid size `{text}`: number too large"))?;
        let unit = trimmed[digits..].to_ascii_lowercase();
        let multiplier: u64 = match unit.trim_end_matches(['b', 'i']) {
            "" if unit.is_empty() || unit == "b" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            "t" => 1 << 40,
            _ => return Err(format!("invalid size `{text}`: unknown unit `{unit}`")),
        };
        let bytes = number
            .checked_mul(multiplier)
            .ok_or_else(|| format!("invalid size `{text}`: too large"))?;
        if bytes == 0 {
            return Err(format!("invalid size `{text}`: must be larger than zero"));
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, 't'), (30, 'g'), (20, 'm'), (10, 'k')] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

macro_rules! string_backed {
    ($ty:ty, $format:literal, $description:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "format": $format,
                    "description": $description,
                })
            }
        }
    };
}

string_backed!(
    HumanDuration,
    "maxions-duration",
    "A duration: a number followed by h, m or s, largest unit first, like 90s, 45m or 1h30m."
);
string_backed!(
    ByteSize,
    "maxions-size",
    "A size: a number followed by k, m, g or t (powers of 1024), like 512m or 4g."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (text, secs) in [
            ("90s", 90),
            ("45m", 2700),
            ("1h30m", 5400),
            ("2h", 7200),
            ("1h1m1s", 3661),
        ] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.0.as_secs(), secs, "{text}");
        }
        assert_eq!(
            HumanDuration(Duration::from_secs(5400)).to_string(),
            "1h30m"
        );
        assert_eq!(HumanDuration(Duration::from_secs(90)).to_string(), "1m30s");
    }

    #[test]
    fn bad_durations_are_refused_with_a_reason() {
        for text in [
            "",
            "90",
            "m",
            "90x",
            "30m1h",
            "1m1m",
            "0s",
            "99999999999999999999h",
            "1.5h",
            "-5m",
        ] {
            assert!(
                text.parse::<HumanDuration>().is_err(),
                "{text:?} should be refused"
            );
        }
    }

    #[test]
    fn sizes_parse_and_print() {
        for (text, bytes) in [
            ("512m", 512 << 20),
            ("4g", 4 << 30),
            ("1024", 1024),
            ("64k", 64 << 10),
            ("2GiB", 2 << 30),
            ("1Gb", 1 << 30),
        ] {
            let s: ByteSize = text.parse().unwrap();
            assert_eq!(s.0, bytes, "{text}");
        }
        assert_eq!(ByteSize(4 << 30).to_string(), "4g");
        for text in ["", "g", "4x", "0", "-1m", "1.5g", "99999999999t"] {
            assert!(
                text.parse::<ByteSize>().is_err(),
                "{text:?} should be refused"
            );
        }
    }
}
