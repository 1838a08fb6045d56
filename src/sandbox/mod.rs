//! Where steps execute: the `Sandbox` trait, its Docker backend, the egress proxy and the
//! streaming secret redactor that every byte leaving a sandbox passes through.

pub mod egress;
pub mod redact;
