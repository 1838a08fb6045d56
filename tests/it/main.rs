//! maxions' integration tests: one test binary, shared helpers in `support`.

mod cli_run;
mod daemon_process;
mod egress;
mod forge;
mod git_host;
mod redact;
mod runner;
mod sandbox;
mod schemas;
mod steps;
mod support;
mod templates;
mod validate;
mod watch;
