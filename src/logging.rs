//! What maxions logs, and what it never logs: every secret a live run can see is registered here,
//! and every formatted log line passes through [`Redacting`] (which masks registered secrets and
//! neutralises terminal control characters) before it reaches stderr or a file.
//!
//! Third-party crates (bollard, hyper, reqwest, octocrab…) log request bodies and headers at
//! debug and trace, and an exec's create body holds its secrets as environment variables. So
//! [`filter`] holds every target but maxions' own at `warn`, whatever `-v` or `MAXIONS_LOG` say:
//! there is deliberately no escape hatch. Redaction is the second wall, for what does get logged.

use std::io::{self, Write};
use std::sync::{Mutex, PoisonError, RwLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::sandbox::redact::{Redactor, RedactorError};
use crate::secret::Secret;

/// The secrets of every live registration, by registration id.
static ENTRIES: Mutex<Vec<(u64, Vec<Secret>)>> = Mutex::new(Vec::new());
/// The redactor for the union of [`ENTRIES`], rebuilt on every change; `None` when empty.
static CURRENT: RwLock<Option<Redactor>> = RwLock::new(None);
static NEXT_ID: Mutex<u64> = Mutex::new(0);

/// Keeps secrets registered for log redaction; dropping it unregisters them.
#[must_use = "the secrets are unregistered as soon as the guard is dropped"]
#[derive(Debug)]
pub struct Guard {
    id: u64,
}

/// Registers secrets (a run's, a forge token) so that no log line shows them while the returned
/// guard lives. Registrations from concurrent runs add up; each guard removes only its own.
///
/// # Errors
/// Only when the matcher for all live secrets cannot be built (far too many or too long).
pub fn register<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Result<Guard, RedactorError> {
    let secrets: Vec<Secret> = secrets.into_iter().cloned().collect();
    let id = {
        let mut next = NEXT_ID.lock().unwrap_or_else(PoisonError::into_inner);
        *next += 1;
        *next
    };
    let mut entries = ENTRIES.lock().unwrap_or_else(PoisonError::into_inner);
    entries.push((id, secrets));
    // Built before the guard exists: on failure the entry goes again and nothing changed.
    match rebuild(&entries) {
        Ok(()) => Ok(Guard { id }),
        Err(error) => {
            entries.retain(|(entry, _)| *entry != id);
            Err(error)
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut entries = ENTRIES.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|(entry, _)| *entry != self.id);
        // A subset of a set that built: this cannot fail in practice, and if it did, keeping
        // the old redactor masks too much rather than too little.
        let _ = rebuild(&entries);
    }
}

fn rebuild(entries: &[(u64, Vec<Secret>)]) -> Result<(), RedactorError> {
    let redactor = Redactor::new(entries.iter().flat_map(|(_, secrets)| secrets))?;
    let redactor = (!redactor.is_empty()).then_some(redactor);
    *CURRENT.write().unwrap_or_else(PoisonError::into_inner) = redactor;
    Ok(())
}

/// A redactor for every secret registered right now, e.g. to mask an error message before it is
/// printed outside tracing.
#[must_use]
pub fn redactor() -> Redactor {
    CURRENT
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_else(Redactor::none)
}

/// A [`MakeWriter`] whose writers hold each formatted event whole, then write it masked and
/// neutralised to `inner` when dropped (the fmt layer drops its writer after every event).
#[derive(Debug, Clone)]
pub struct Redacting<M> {
    inner: M,
}

impl<M> Redacting<M> {
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.inner.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter::new(self.inner.make_writer_for(meta))
    }
}

/// One event's bytes on their way out; see [`Redacting`].
pub struct RedactingWriter<W: Write> {
    inner: W,
    buffer: Vec<u8>,
}

impl<W: Write> RedactingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let buffer = std::mem::take(&mut self.buffer);
        let text = String::from_utf8_lossy(&buffer);
        let masked = redactor().redact_str(&text).into_owned();
        let shown = crate::cli::terminal::printable(&masked);
        self.inner.write_all(shown.as_bytes())?;
        self.inner.flush()
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // Nothing leaves before the whole event is here: a secret is never split across writes.
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Flushing mid-event would split it; the event is written whole on drop.
        Ok(())
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.emit();
    }
}

/// The filter for a verbosity (`quiet`, the number of `-v`) and the value of `MAXIONS_LOG`:
/// maxions' own targets follow them, every other target stays at `warn` (`error` when quiet).
/// Returns the filter and what was ignored in `MAXIONS_LOG`, to say so once logging is up.
#[must_use]
pub fn filter(quiet: bool, verbose: u8, env: Option<&str>) -> (EnvFilter, Vec<String>) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let others = if quiet { "error" } else { "warn" };
    let mut directives = vec![others.to_owned(), format!("maxions={level}")];
    let mut ignored = Vec::new();
    for directive in env.unwrap_or_default().split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        match own_directive(directive) {
            Some(own) => directives.push(own),
            None => ignored.push(directive.to_owned()),
        }
    }
    let filter = EnvFilter::builder()
        .parse(directives.join(","))
        .unwrap_or_else(|_| EnvFilter::new(format!("{others},maxions={level}")));
    (filter, ignored)
}

/// A `MAXIONS_LOG` directive made to apply to maxions' own targets only: a bare level means
/// `maxions=LEVEL`; `maxions…=LEVEL` stays; anything naming another target, or none (a span
/// filter applies to every target), is refused.
fn own_directive(directive: &str) -> Option<String> {
    let (target, level) = match directive.split_once('=') {
        Some((target, level)) => (target, Some(level)),
        None => (directive, None),
    };
    if level.is_none()
        && target
            .parse::<tracing::level_filters::LevelFilter>()
            .is_ok()
    {
        return Some(format!("maxions={target}"));
    }
    // The target ends where a span filter (`target[span{field}]`) starts.
    let name = target.split('[').next().unwrap_or_default();
    let own = name == "maxions" || name.starts_with("maxions::");
    let valid = directive
        .parse::<tracing_subscriber::filter::Directive>()
        .is_ok();
    (own && valid).then(|| directive.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn secret(value: &str) -> Secret {
        Secret::new("LOGGING_TEST", value).unwrap()
    }

    #[test]
    fn registered_secrets_are_masked_until_the_guard_drops() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(Redacting::new(buffer.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let one = register([&secret("unit-secret-one")]).unwrap();
            let two = register([&secret("unit-secret-two")]).unwrap();
            tracing::warn!(env = "TOKEN=unit-secret-one", "exec with unit-secret-two");
            drop(one);
            tracing::warn!("after: unit-secret-one unit-secret-two");
            drop(two);
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("exec with *** env=\"TOKEN=***\""),
            "{text}"
        );
        assert!(lines[1].contains("after: unit-secret-one ***"), "{text}");
    }

    #[test]
    fn control_characters_in_log_lines_are_made_visible() {
        let buffer = Buffer::default();
        let mut writer = Redacting::new(buffer.clone()).make_writer();
        writer
            .write_all(b"title \x1b]0;owned\x07 and \r overwrite\n")
            .unwrap();
        drop(writer);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "title ^[]0;owned^G and ^M overwrite\n");
    }

    #[test]
    fn other_crates_stay_at_warn_whatever_is_asked() {
        let (filter, ignored) = filter(
            false,
            3,
            Some("trace,hyper=trace,maxions::sandbox=debug,[span]=trace,bollard"),
        );
        let shown = filter.to_string();
        assert!(shown.contains("maxions=trace"), "{shown}");
        assert!(shown.contains("maxions::sandbox=debug"), "{shown}");
        assert!(!shown.contains("hyper"), "{shown}");
        assert!(!shown.contains("bollard"), "{shown}");
        assert_eq!(ignored, ["hyper=trace", "[span]=trace", "bollard"]);
        assert_eq!(
            filter.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::TRACE)
        );
        let (quiet, _) = super::filter(true, 0, None);
        assert!(quiet.to_string().contains("maxions=error"), "{quiet}");
    }
}
