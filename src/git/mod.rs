//! maxions' trusted, host-side git: a bare mirror per repository in the state dir, fetched and
//! pushed with the forge's token on the host, so that no credential ever enters a sandbox. The
//! sandbox gets a bundle of the base; what it hands back is a bundle that is checked here before
//! maxions writes (and pushes) a commit of its own.

mod command;
mod error;
mod import;
mod lock;
mod mirror;
mod oid;
mod remote;
pub mod scan;

pub use error::{BundleRejection, GitError};
pub use import::{Author, Expect, Import, Imported};
pub use mirror::{Mirror, Pushed};
pub use oid::Oid;
pub use scan::{Encoding, Finding, Scanner, find_secret};
