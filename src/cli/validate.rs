//! `maxions validate`.

use std::io::Write;
use std::path::PathBuf;

use clap::ValueEnum;

use super::{Output, exit};
use crate::config::diagnostic::{Styles, render};
use crate::config::validate::Validator;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories (every *.yaml and *.yml below a directory).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// `human` for people; `json` for a stable array of
    /// {file, line, column, severity, code, message, hint} (schemas/diagnostics.schema.json).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

pub fn run(args: &Args, output: Output) -> u8 {
    let result = Validator::new().validate_paths(&args.paths);
    let code = if result.unreadable {
        exit::UNREADABLE
    } else if result.errors() > 0 {
        exit::INVALID
    } else {
        exit::OK
    };
    match args.format {
        Format::Json => {
            let json =
                serde_json::to_string_pretty(&result.diagnostics).unwrap_or_else(|_| "[]".into());
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{json}");
        }
        Format::Human => {
            let styles = Styles::colored();
            let mut stderr = anstream::stderr().lock();
            for d in &result.diagnostics {
                if output.quiet && !d.is_error() {
                    continue;
                }
                let source = result.sources.get(&d.file).map(|s| &**s);
                let _ = writeln!(stderr, "{}", render(d, source, &styles));
            }
            if !output.quiet {
                let files = result.files.len();
                let noun = if files == 1 { "file" } else { "files" };
                let summary = match (result.errors(), result.warnings()) {
                    (0, 0) => format!("{files} {noun} valid"),
                    (0, w) => format!("{files} {noun} valid, {w} warning{}", plural(w)),
                    (e, 0) => format!("{e} error{} in {files} {noun}", plural(e)),
                    (e, w) => format!(
                        "{e} error{}, {w} warning{} in {files} {noun}",
                        plural(e),
                        plural(w)
                    ),
                };
                let _ = writeln!(stderr, "{summary}");
                if output.verbose > 0 {
                    for (file, kind) in &result.files {
                        let kind = kind.map_or("?", |k| k.noun());
                        let _ = writeln!(stderr, "  {file} ({kind})");
                    }
                }
            }
        }
    }
    code
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
