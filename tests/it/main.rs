//! maxions' integration tests: one test binary, shared helpers in `support`.

mod support;
mod templates;
mod validate;
