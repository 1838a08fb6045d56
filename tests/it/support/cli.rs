//! Runs the real `maxions` binary: `Maxions::new().args([...]).run()` then assert on what a user
//! would see.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Maxions {
    command: Command,
}

#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Maxions {
    pub fn new() -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_maxions"));
        command
            .current_dir(super::root())
            .env("NO_COLOR", "1")
            .env_remove("MAXIONS_LOG")
            .stdin(Stdio::null());
        Self { command }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn arg_path(mut self, path: impl AsRef<Path>) -> Self {
        self.command.arg(path.as_ref());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.command.current_dir(dir);
        self
    }

    pub fn run(mut self) -> Outcome {
        let output = self.command.output().expect("run maxions");
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Default for Maxions {
    fn default() -> Self {
        Self::new()
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_maxions"))
}
