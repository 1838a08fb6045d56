//! `maxions schema`.

use std::path::PathBuf;

use super::{Output, exit};
use crate::config::schema;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the schemas into this directory instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// With --out: write nothing, and exit 1 if the files there differ from the generated ones.
    #[arg(long, requires = "out")]
    pub check: bool,
}

pub fn run(args: &Args, output: Output) -> u8 {
    let mut files = schema::all();
    files.extend(crate::runner::schemas());
    files.push(crate::api::openapi::schema_file());
    let Some(dir) = &args.out else {
        for file in &files {
            println!("// {}", file.file_name);
            println!("{}", render(file.schema));
        }
        return exit::OK;
    };
    if args.check {
        let stale: Vec<&str> = files
            .iter()
            .filter(|f| {
                std::fs::read_to_string(dir.join(f.file_name)).ok() != Some(render(f.schema))
            })
            .map(|f| f.file_name)
            .collect();
        if stale.is_empty() {
            return exit::OK;
        }
        eprintln!(
            "error: schemas in `{}` are stale: {}\n  run `maxions schema --out {}` and commit the result",
            dir.display(),
            stale.join(", "),
            dir.display()
        );
        return exit::INVALID;
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("error: cannot create `{}`: {e}", dir.display());
        return exit::UNREADABLE;
    }
    for file in &files {
        let path = dir.join(file.file_name);
        if let Err(e) = std::fs::write(&path, render(file.schema)) {
            eprintln!("error: cannot write `{}`: {e}", path.display());
            return exit::UNREADABLE;
        }
        if !output.quiet {
            eprintln!("wrote {}", path.display());
        }
    }
    exit::OK
}

fn render(schema: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}
