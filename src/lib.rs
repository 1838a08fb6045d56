//! maxions: run unattended, one-shot coding agents from declarative YAML.
//!
//! The pipeline reads top-down: `config` (load and validate YAML) → `template` (render steps) →
//! `sandbox` (where steps execute) → `agent` (how coding agents start and what they say) → `git` (the trusted host-side mirror that fetches, checks
//! and pushes) → `forge` (where branches are pushed and pull requests opened) → `cli` (the thin
//! edge that shows results to a person).

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod error_chain;
pub mod forge;
#[cfg(test)]
mod fuzzing;
pub mod git;
pub mod logging;
pub mod runner;
pub mod sandbox;
pub mod secret;
pub mod template;
