//! The secrets a run may hand out: exactly those the blueprint names, each read from the source
//! `maxions.yaml` gives it. A name that `maxions.yaml` does not define is an error, never a
//! fallback to an environment variable of that name (which would let a blueprint read any of the
//! daemon's variables, its GitHub App key included).

use std::collections::BTreeMap;

use crate::config::daemon::SecretSource;
use crate::config::load::LoadedTask;
use crate::secret::Secret;

use super::EnvReader;

/// Every secret the blueprint names (its steps' and its agent's), read now, so that a missing
/// one fails the run before anything starts.
pub(super) fn resolve(task: &LoadedTask, env: &EnvReader) -> Result<BTreeMap<String, Secret>, String> {
    let blueprint = &task.blueprint;
    let mut names: Vec<&str> = blueprint
        .steps
        .iter()
        .flat_map(|s| s.secrets.iter().map(|n| n.0.as_str()))
        .collect();
    if let Some(agent) = &blueprint.agent {
        names.extend(agent.secrets.iter().map(|n| n.0.as_str()));
    }
    names.sort_unstable();
    names.dedup();
    let mut secrets = BTreeMap::new();
    for name in names {
        let source = task
            .config
            .secrets
            .iter()
            .find(|(k, _)| k.0 == name)
            .map(|(_, v)| v);
        let value = match source {
            Some(SecretSource::Env(var)) => env(var).ok_or_else(|| {
                format!("secret `{name}` comes from the environment variable `{var}`, which is not set")
            })?,
            Some(SecretSource::File(path)) => {
                let path = match &task.config_dir {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path.clone(),
                };
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("secret `{name}`: cannot read {}: {e}", path.display()))?
                    .trim()
                    .to_owned()
            }
            None => {
                return Err(format!(
                    "secret `{name}` is not defined: add it under `secrets:` in maxions.yaml (e.g. `{name}: {{ env: VARIABLE }}`)"
                ));
            }
        };
        let secret = Secret::new(name, value).map_err(|e| e.to_string())?;
        secrets.insert(name.to_owned(), secret);
    }
    Ok(secrets)
}
