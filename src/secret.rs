//! A secret's name and value, kept apart from ordinary strings so that it cannot be printed by
//! accident: `Debug` and `Display` show `***`, and the value is reached only through
//! [`Secret::expose`].
//!
//! Every secret value is also fed to the redactor (`sandbox::redact`), which masks it in all output
//! that leaves a sandbox. A very short value would turn that into a disaster (a secret `ab` would
//! mask every `ab` in every log), so values shorter than [`Secret::MIN_LEN`] bytes are refused
//! when the secret is built, which is at configuration time.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::config::DaemonConfig;
use crate::config::blueprint::SecretName;
use crate::config::daemon::SecretSource;

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
    #[error("secret `{name}` is not defined: add it under `secrets:` in maxions.yaml")]
    Undefined { name: String },
    #[error(
        "secret `{name}` comes from the environment variable `{var}`, which is not set or is \
         empty; export it in the environment maxions runs in"
    )]
    EnvNotSet { name: String, var: String },
    #[error(
        "secret `{name}`: cannot read `{path}`: {reason}; check its `file:` in maxions.yaml",
        path = path.display()
    )]
    Unreadable {
        name: String,
        path: PathBuf,
        reason: String,
    },
}

/// Secret files larger than this are refused: a token or key is a few kilobytes.
pub const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// Reads the secrets `names` from `config`'s `secrets:` section, and from nowhere else: a name
/// that is not defined there is an error, even if the daemon's environment has a variable of
/// that name (which would let a blueprint read any of the daemon's variables, such as the
/// GitHub App's key). `env` reads the daemon's environment; relative `file:` sources are read
/// relative to `config_dir` (the directory of maxions.yaml). A task with no maxions.yaml has an
/// empty `secrets:` and so no secrets at all.
///
/// # Errors
/// The first name that is undefined, unset, unreadable, too short or badly named; no message
/// contains a value.
pub fn resolve_secrets(
    config: &DaemonConfig,
    config_dir: Option<&Path>,
    names: &[SecretName],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Secret>, SecretError> {
    let mut out = BTreeMap::new();
    for SecretName(name) in names {
        if out.contains_key(name) {
            continue;
        }
        let source = config
            .secrets
            .iter()
            .find(|(key, _)| key.0 == *name)
            .map(|(_, source)| source)
            .ok_or_else(|| SecretError::Undefined { name: name.clone() })?;
        let value = match source {
            SecretSource::Env(var) => env(var)
                .filter(|value| !value.trim().is_empty())
                .ok_or_else(|| SecretError::EnvNotSet {
                    name: name.clone(),
                    var: var.clone(),
                })?,
            SecretSource::File(path) => {
                let path = match config_dir {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path.clone(),
                };
                read_secret_file(&path).map_err(|reason| SecretError::Unreadable {
                    name: name.clone(),
                    path,
                    reason,
                })?
            }
        };
        out.insert(name.clone(), Secret::new(name.clone(), value.trim())?);
    }
    Ok(out)
}

fn read_secret_file(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "it is larger than {MAX_SECRET_FILE_BYTES} bytes, which no secret is"
        ));
    }
    String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_owned())
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

    fn config(yaml: &[(&str, SecretSource)]) -> DaemonConfig {
        DaemonConfig {
            secrets: yaml
                .iter()
                .map(|(name, source)| (SecretName((*name).to_owned()), source.clone()))
                .collect(),
            ..DaemonConfig::default()
        }
    }

    fn names(list: &[&str]) -> Vec<SecretName> {
        list.iter().map(|n| SecretName((*n).to_owned())).collect()
    }

    #[test]
    fn an_undefined_secret_never_falls_back_to_the_environment() {
        // The daemon's own variables are there, but no blueprint may read them by naming them.
        let env = |var: &str| {
            matches!(var, "MAXIONS_GITHUB_APP_KEY" | "GIT_TOKEN").then(|| "the-daemon-key".into())
        };
        for name in ["MAXIONS_GITHUB_APP_KEY", "GIT_TOKEN"] {
            let err =
                resolve_secrets(&DaemonConfig::default(), None, &names(&[name]), &env).unwrap_err();
            assert_eq!(err, SecretError::Undefined { name: name.into() });
            assert_eq!(
                err.to_string(),
                format!("secret `{name}` is not defined: add it under `secrets:` in maxions.yaml")
            );
        }
    }

    #[test]
    fn secrets_come_from_their_env_or_file_source() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("llm.key"), "  sk-from-file \n").unwrap();
        let config = config(&[
            ("LLM_KEY", SecretSource::File("llm.key".into())),
            ("NPM_TOKEN", SecretSource::Env("CI_NPM".into())),
        ]);
        let env = |var: &str| (var == "CI_NPM").then(|| "npm-token-value".into());
        let found = resolve_secrets(
            &config,
            Some(dir.path()),
            &names(&["LLM_KEY", "NPM_TOKEN", "LLM_KEY"]),
            &env,
        )
        .unwrap();
        assert_eq!(found["LLM_KEY"].expose(), "sk-from-file");
        assert_eq!(found["NPM_TOKEN"].expose(), "npm-token-value");
        assert_eq!(found["NPM_TOKEN"].name(), "NPM_TOKEN");

        let err = resolve_secrets(&config, Some(dir.path()), &names(&["NPM_TOKEN"]), &|_| None)
            .unwrap_err();
        assert!(
            err.to_string().contains("`CI_NPM`, which is not set"),
            "{err}"
        );
        let err = resolve_secrets(
            &config,
            Some(Path::new("/nonexistent")),
            &names(&["LLM_KEY"]),
            &env,
        )
        .unwrap_err();
        assert!(matches!(err, SecretError::Unreadable { .. }), "{err:?}");
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
