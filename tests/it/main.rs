//! maxions' integration tests: one test binary, shared helpers in `support`.

mod agent_limits;
mod agents;
mod agents_e2e;
mod api;
mod api_http;
mod cli_run;
mod daemon;
mod daemon_process;
mod dashboard;
mod egress;
mod forge;
mod fuzz;
mod git_host;
mod images;
mod llm;
mod logs_cli;
mod redact;
mod runner;
mod sandbox;
mod schedule_cli;
mod schemas;
mod steps;
mod support;
mod templates;
mod validate;
mod watch;
