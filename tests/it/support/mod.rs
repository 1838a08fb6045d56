//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod api;
pub mod cli;
pub mod docker;
pub mod engine;
pub mod events;
pub mod git_http;
pub mod github;
pub mod http;
pub mod llm;
pub mod scripted;
pub mod server;

use std::path::{Path, PathBuf};

/// The crate's root directory (where Cargo.toml is).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes `files` (path → content) below a new temporary directory.
pub fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, content) in files {
        write(dir.path(), path, content);
    }
    dir
}

pub fn write(dir: &Path, path: &str, content: &str) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}
