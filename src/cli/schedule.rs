//! `maxions schedule`: when each scheduled task fires next, read exactly as the daemon reads it
//! (the same validation as `maxions validate`, the same DST rule as the daemon's scheduler).

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use clap::ValueEnum;
use serde::Serialize;

use super::{Output, exit};
use crate::config::Task;
use crate::config::diagnostic::{Styles, render};
use crate::config::validate::{FileKind, Validation, Validator, typed};
use crate::config::yaml;
use crate::daemon::schedule::Schedule;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Task files or directories (every *.yaml and *.yml below a directory).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// List the slots after this instant (RFC 3339, e.g. `2026-03-29T00:00:00Z`) instead of now.
    #[arg(long, value_name = "RFC3339", value_parser = parse_instant)]
    pub from: Option<DateTime<FixedOffset>>,

    /// How many slots to list per task.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub count: u16,

    /// `text` for people; `json` for an array of {task, schedule, timezone, next: [RFC3339...]}
    /// with the instants in the task's own UTC offset.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

fn parse_instant(text: &str) -> Result<DateTime<FixedOffset>, String> {
    DateTime::parse_from_rfc3339(text).map_err(|error| {
        format!("{error}: expected an RFC 3339 instant such as `2026-03-29T00:00:00Z` or `2026-03-29T09:00:00+02:00`")
    })
}

/// One scheduled task and its next slots.
#[derive(Debug, Serialize)]
struct Listing {
    task: String,
    schedule: String,
    timezone: String,
    next: Vec<String>,
    #[serde(skip)]
    local: Vec<DateTime<chrono_tz::Tz>>,
}

pub fn run(args: &Args, output: Output) -> u8 {
    let result = Validator::new().validate_paths(&args.paths);
    print_diagnostics(&result, output);
    if result.unreadable {
        return exit::UNREADABLE;
    }
    if result.errors() > 0 {
        return exit::INVALID;
    }
    let from = args
        .from
        .map_or_else(Utc::now, |from| from.with_timezone(&Utc));
    let listings = match listings(&result, from, usize::from(args.count)) {
        Ok(listings) => listings,
        Err(message) => {
            eprintln!("error: {message}");
            return exit::INVALID;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            let json = serde_json::to_string_pretty(&listings).unwrap_or_else(|_| "[]".into());
            let _ = writeln!(stdout, "{json}");
        }
        Format::Text => {
            if listings.is_empty() && !output.quiet {
                let tasks = result
                    .files
                    .iter()
                    .filter(|(_, kind)| *kind == Some(FileKind::Task))
                    .count();
                let noun = if tasks == 1 {
                    "task file"
                } else {
                    "task files"
                };
                eprintln!("no task has a `schedule` ({tasks} {noun} read)");
            }
            for (i, listing) in listings.iter().enumerate() {
                if i > 0 {
                    let _ = writeln!(stdout);
                }
                let _ = write!(stdout, "{}", text(listing));
            }
        }
    }
    exit::OK
}

/// Errors and warnings exactly as `maxions validate` prints them (`-q`: errors only).
fn print_diagnostics(result: &Validation, output: Output) {
    let styles = Styles::colored();
    let mut stderr = anstream::stderr().lock();
    for d in &result.diagnostics {
        if output.quiet && !d.is_error() {
            continue;
        }
        let source = result.sources.get(&d.file).map(|s| &**s);
        let _ = writeln!(stderr, "{}", render(d, source, &styles));
    }
}

/// The scheduled tasks among the validated files, in the order they were found. Their text is
/// already read and checked, so it is only parsed again here, not re-read.
fn listings(
    result: &Validation,
    from: DateTime<Utc>,
    count: usize,
) -> Result<Vec<Listing>, String> {
    let mut listings = Vec::new();
    for (file, kind) in &result.files {
        if *kind != Some(FileKind::Task) {
            continue;
        }
        let Some(text) = result.sources.get(file) else {
            continue;
        };
        let task = yaml::parse(text)
            .ok()
            .and_then(|tree| typed::<Task>(&tree))
            .ok_or_else(|| format!("{file}: cannot read the task again after validating it"))?;
        let Some(expr) = &task.schedule else {
            continue;
        };
        let schedule = Schedule::new(expr, task.timezone.as_deref())
            .map_err(|message| format!("{file}: {message}"))?;
        let tz = schedule.timezone();
        let local: Vec<_> = schedule
            .upcoming(from, count)
            .into_iter()
            .map(|slot| slot.with_timezone(&tz))
            .collect();
        listings.push(Listing {
            task: file.clone(),
            schedule: expr.clone(),
            timezone: tz.name().to_owned(),
            next: local
                .iter()
                .map(|slot| slot.to_rfc3339_opts(SecondsFormat::Secs, false))
                .collect(),
            local,
        });
    }
    Ok(listings)
}

/// ```text
/// tasks/weekly-deps.yaml: 0 9 * * 1 (Europe/Berlin)
///   Mon 2026-03-30 09:00 CEST  2026-03-30T07:00:00Z
/// ```
fn text(listing: &Listing) -> String {
    let mut out = format!(
        "{}: {} ({})\n",
        listing.task, listing.schedule, listing.timezone
    );
    if listing.local.is_empty() {
        out.push_str("  no slot: no date matches within a year\n");
    }
    for slot in &listing.local {
        let utc = slot
            .with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::Secs, true);
        out.push_str(&format!(
            "  {}  {utc}\n",
            slot.format("%a %Y-%m-%d %H:%M %:z %Z")
        ));
    }
    out
}
