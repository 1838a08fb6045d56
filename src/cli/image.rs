//! `maxions image`: builds the sandbox images locally, no registry needed.

use super::{Output, exit};
use crate::sandbox::image::{self, Outcome, RECIPES};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build the images sandboxes run (all of them, or the ones named).
    ///
    /// `base` is Debian bookworm made with debootstrap from the mirror apt uses, imported into
    /// the engine; `sandbox` (maxions/sandbox:latest, the default image) is built on it from a
    /// Dockerfile inside maxions, with this machine's CA bundle copied in. Images already built
    /// from the same recipe are skipped.
    Build {
        /// Images to build: `base`, `sandbox` (default: all).
        names: Vec<String>,
        /// Rebuild even when the image is present and up to date.
        #[arg(long)]
        force: bool,
    },
    /// List the images maxions builds and whether each is present.
    List,
}

pub fn run(args: &Args, output: Output) -> u8 {
    match &args.command {
        ImageCommand::Build { names, force } => build(names, *force, output),
        ImageCommand::List => {
            for recipe in RECIPES {
                let state = if image::exists(recipe.tag) {
                    "present"
                } else {
                    "missing"
                };
                println!(
                    "{:<8} {:<24} {:<8} {}",
                    recipe.name, recipe.tag, state, recipe.what
                );
            }
            exit::OK
        }
    }
}

fn build(names: &[String], force: bool, output: Output) -> u8 {
    let recipes = match image::select(names) {
        Ok(recipes) => recipes,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INVALID;
        }
    };
    let mut say = |line: &str| {
        if !output.quiet {
            eprintln!("{line}");
        }
    };
    for recipe in recipes {
        // A forced build of `sandbox` alone does not rebuild the base; `build --force` does all.
        match image::build(recipe, force, &mut say) {
            Ok(Outcome::Built | Outcome::Cached) => {}
            Err(error) => {
                eprintln!("error: cannot build {}: {error}", recipe.tag);
                return exit::UNREADABLE;
            }
        }
    }
    exit::OK
}
