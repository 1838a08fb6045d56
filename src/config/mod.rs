//! Task, blueprint and daemon configuration: the typed model, loading with source locations,
//! semantic validation and diagnostics.

pub mod blueprint;
pub mod check;
pub mod daemon;
pub mod diagnostic;
pub mod formats;
pub mod load;
pub mod schema;
pub mod task;
pub mod units;
pub mod validate;
pub mod yaml;

pub use blueprint::{Blueprint, Step, StepKind};
pub use daemon::DaemonConfig;
pub use diagnostic::{Diagnostic, Severity};
pub use task::{RepoRef, Task};
pub use units::{ByteSize, HumanDuration};
