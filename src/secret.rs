//! A secret's name and value, kept apart from ordinary strings so that it cannot be printed by
//! accident: `Debug` and `Display` show `***`, and the value is reached only through
//! [`Secret::expose`].
//!
//! Every secret value is also fed to the redactor (`sandbox::redact`), which masks it in all output
//! that leaves a sandbox. A very short value would turn that into a disaster (a secret `ab` would
//! mask every `ab` in every log), so values shorter than [`Secret::MIN_LEN`] bytes are refused
//! when the secret is built, which is at configuration time.

use std::fmt;

/// A named secret. Its value never appears in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    name: String,
    value: String,
}

/// Why a secret could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret `{name}` is shorter than {min} characters; secrets that short would mask ordinary \
         text in every log, so they are refused (use a longer value)",
        min = Secret::MIN_LEN
    )]
    TooShort { name: String },
    #[error(
        "secret name `{name}` is not a valid environment variable name; use letters, digits and \
         `_`, not starting with a digit"
    )]
    InvalidName { name: String },
}

impl Secret {
    /// The shortest value (in bytes) a secret may have.
    pub const MIN_LEN: usize = 4;

    /// Builds a secret. The name must be usable as an environment variable (secrets reach a step
    /// only that way); the value must be at least [`Secret::MIN_LEN`] bytes long.
    ///
    /// # Errors
    /// [`SecretError::InvalidName`] or [`SecretError::TooShort`]; neither message contains the
    /// value.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Result<Self, SecretError> {
        let name = name.into();
        let value = value.into();
        if !is_env_name(&name) {
            return Err(SecretError::InvalidName { name });
        }
        if value.len() < Self::MIN_LEN {
            return Err(SecretError::TooShort { name });
        }
        Ok(Self { name, value })
    }

    /// The secret's name, e.g. `GIT_TOKEN`. Names are not secret.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The secret's value. Call this only where the value is handed to the process that needs it
    /// (the environment of one exec), never to build text for a person.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.value
    }
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first == b'_' || first.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new("GIT_TOKEN", "ghp_abcdef").unwrap();
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{:?}", vec![secret.clone()]), "[***]");
        assert_eq!(secret.name(), "GIT_TOKEN");
        assert_eq!(secret.expose(), "ghp_abcdef");
    }

    #[test]
    fn values_shorter_than_four_bytes_are_refused() {
        for short in ["", "a", "abc"] {
            let err = Secret::new("TOKEN", short).unwrap_err();
            assert_eq!(
                err,
                SecretError::TooShort {
                    name: "TOKEN".into()
                }
            );
            assert!(
                err.to_string().contains("shorter than 4 characters"),
                "{err}"
            );
        }
        assert!(Secret::new("TOKEN", "abcd").is_ok());
    }

    #[test]
    fn error_messages_never_contain_the_value() {
        let err = Secret::new("TOKEN", "zq!").unwrap_err().to_string();
        assert!(!err.contains("zq!"), "{err}");
        let err = Secret::new("1BAD", "long enough value")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("long enough value"), "{err}");
    }

    #[test]
    fn names_must_be_environment_variable_names() {
        for bad in ["", "1ABC", "A-B", "A B", "ÄB"] {
            assert!(
                matches!(
                    Secret::new(bad, "value"),
                    Err(SecretError::InvalidName { .. })
                ),
                "{bad:?} should be refused"
            );
        }
        for good in ["A", "_A", "GIT_TOKEN", "token2"] {
            assert!(
                Secret::new(good, "value").is_ok(),
                "{good:?} should be accepted"
            );
        }
    }
}
