//! The daemon: watches the tasks folder and cron schedules, queues runs with bounded
//! concurrency, persists its state so that a crash loses nothing, and takes control requests.

pub mod queue;
pub mod records;
pub mod schedule;
pub mod state;
pub mod watch;
