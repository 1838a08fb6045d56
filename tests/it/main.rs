//! maxions' integration tests: one test binary, shared helpers in `support`.

mod egress;
mod redact;
mod support;
mod templates;
mod validate;
