//! The secrets a run may hand out: exactly those the blueprint names (its steps', its
//! agent's and its provider's key), read now through `maxions.yaml`'s sources, so that a missing one fails the run
//! before anything starts. A name `maxions.yaml` does not define is an error, never a fallback
//! to an environment variable of that name.

use std::collections::BTreeMap;

use crate::config::load::LoadedTask;
use crate::secret::{Secret, resolve_secrets};

use super::EnvReader;

pub(super) fn resolve(
    task: &LoadedTask,
    env: &EnvReader,
) -> Result<BTreeMap<String, Secret>, String> {
    let blueprint = &task.blueprint;
    let mut names: Vec<_> = blueprint
        .steps
        .iter()
        .flat_map(|s| s.secrets.iter().cloned())
        .collect();
    if let Some(agent) = &blueprint.agent {
        names.extend(agent.secrets.iter().cloned());
        names.extend(agent.provider.iter().filter_map(|p| p.key.clone()));
    }
    names.sort_unstable();
    names.dedup();
    resolve_secrets(&task.config, task.config_dir.as_deref(), &names, &|name| {
        env(name)
    })
    .map_err(|e| e.to_string())
}
