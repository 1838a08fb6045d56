//! `maxions image`: builds the sandbox images locally, no registry needed. Also what `maxions run`
//! and `maxions demo` do first on a fresh machine: start an engine, build missing images.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::terminal::printable;
use super::{Output, exit};
use crate::config::load::LoadedTask;
use crate::sandbox::bootstrap::{self, Progress};
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
    /// Dockerfile inside maxions, with this machine's CA bundle copied in; `agent-pi`,
    /// `agent-claude` and `agent-codex` add a coding agent to the sandbox, from npm packages
    /// pinned by a lockfile inside maxions and fetched with this machine's npm. Images already
    /// built from the same recipe are skipped; an image built from another recipe is rebuilt.
    Build {
        /// Images to build: `base`, `sandbox`, `agent-pi`, `agent-claude`, `agent-codex`
        /// (default: all).
        names: Vec<String>,
        /// Rebuild even when the image is present and up to date.
        #[arg(long)]
        force: bool,
        /// Make the images ready on this engine of maxions.yaml's `engines` too: built on the
        /// engine the `docker` command reaches, then loaded onto it through the Engine API
        /// (as `docker save | docker load`) unless it has them from the same recipe already.
        #[arg(long, value_name = "NAME")]
        engine: Option<String>,
        /// The config file naming the engines. Default: ./maxions.yaml if there is one.
        #[arg(long, value_name = "FILE", requires = "engine")]
        config: Option<std::path::PathBuf>,
    },
    /// List the images maxions builds and whether each is present.
    List,
}

pub fn run(args: &Args, output: Output) -> u8 {
    match &args.command {
        ImageCommand::Build {
            names,
            force,
            engine,
            config,
        } => {
            let recipes = match image::select(names) {
                Ok(recipes) => recipes,
                Err(error) => {
                    eprintln!("error: {error}");
                    return exit::INVALID;
                }
            };
            let code = build(&recipes, *force, output);
            match engine {
                Some(engine) if code == exit::OK => {
                    load_onto(&recipes, engine, config.as_deref(), output)
                }
                _ => code,
            }
        }
        ImageCommand::List => {
            for recipe in RECIPES {
                let state = if image::exists(recipe.tag) {
                    "present"
                } else {
                    "missing"
                };
                let version = recipe
                    .agent()
                    .map(|a| format!(" [{}@{}]", a.package, a.version))
                    .unwrap_or_default();
                println!(
                    "{:<12} {:<27} {:<8} {}{version}",
                    recipe.name, recipe.tag, state, recipe.what
                );
            }
            exit::OK
        }
    }
}

fn build(recipes: &[&'static image::Recipe], force: bool, output: Output) -> u8 {
    // An engine first, started if none answers and this machine allows it.
    let Some(runtime) = super::runtime() else {
        return exit::UNREADABLE;
    };
    let (progress, spinner) = progress(output);
    let engine = runtime.block_on(bootstrap::ensure_engine(&progress));
    finish(spinner);
    if let Err(error) = engine {
        eprintln!("error: {error}");
        return exit::UNREADABLE;
    }
    let mut say = |line: &str| {
        if !output.quiet {
            eprintln!("{line}");
        }
    };
    for &recipe in recipes {
        // A forced build of one image does not force the images under it (they are built only
        // when missing or stale); `build --force` with no names forces them all.
        match image::build(recipe, force, &mut say) {
            Ok(Outcome::Built | Outcome::Cached | Outcome::NotOurs) => {}
            Err(error) => {
                eprintln!("error: cannot build {}: {error}", recipe.tag);
                return exit::UNREADABLE;
            }
        }
    }
    exit::OK
}

/// Loads the images named (default: all) onto the engine `name` of maxions.yaml from the one
/// the `docker` command reaches, each unless it is there from the same recipe already.
fn load_onto(
    recipes: &[&'static image::Recipe],
    name: &str,
    config: Option<&std::path::Path>,
    output: Output,
) -> u8 {
    use crate::sandbox::DockerEngine;
    use crate::sandbox::peers::{Peer, copy_image, has_current};
    let setup = crate::daemon::Setup::locate(config);
    let config = match setup.config() {
        Ok(config) => config,
        Err(problems) => {
            eprintln!("error: {problems}");
            return exit::INVALID;
        }
    };
    let Some(engine) = config.engines.iter().find(|e| e.name == name) else {
        let known: Vec<&str> = config.engines.iter().map(|e| e.name.as_str()).collect();
        eprintln!(
            "error: no engine `{name}` under `engines:` in {}; the engines are: {}",
            setup
                .config_file
                .as_deref()
                .map_or_else(|| "maxions.yaml".into(), |p| p.display().to_string()),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
        return exit::INVALID;
    };
    let endpoint = crate::daemon::engines::endpoint_of(engine, &setup.dir);
    let Some(runtime) = super::runtime() else {
        return exit::UNREADABLE;
    };
    runtime.block_on(async {
        let (here, there) = match tokio::try_join!(
            DockerEngine::connect(),
            DockerEngine::connect_endpoint(&endpoint)
        ) {
            Ok(both) => both,
            Err(error) => {
                eprintln!("error: {error}");
                return exit::UNREADABLE;
            }
        };
        let from = Peer {
            name: "this machine's".to_owned(),
            docker: here.client().clone(),
        };
        let to = Peer {
            name: name.to_owned(),
            docker: there.client().clone(),
        };
        for recipe in recipes {
            match has_current(&to.docker, recipe.tag).await {
                Ok(true) => {
                    if !output.quiet {
                        eprintln!("{} is on engine {name} already", recipe.tag);
                    }
                    continue;
                }
                Ok(false) => {}
                Err(error) => {
                    eprintln!("error: {error}");
                    return exit::UNREADABLE;
                }
            }
            let started = std::time::Instant::now();
            match copy_image(&from, &to, recipe.tag).await {
                Ok(bytes) => {
                    if !output.quiet {
                        eprintln!(
                            "loaded {} onto engine {name} ({} MB in {:.1} s)",
                            recipe.tag,
                            bytes / 1_000_000,
                            started.elapsed().as_secs_f32()
                        );
                    }
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    return exit::UNREADABLE;
                }
            }
        }
        exit::OK
    })
}

/// Before a run: an engine that answers (started when none does and this machine allows it), and
/// the run's image built if it is one maxions builds and is missing. Progress goes to stderr (a
/// spinner with the current step on a terminal). Returns whether the run can go ahead; when not,
/// the reason has been printed.
pub(super) async fn prepare(loaded: &LoadedTask, output: Output) -> bool {
    let image = crate::runner::sandbox_image(loaded);
    let (progress, spinner) = progress(output);
    let ready = match bootstrap::ensure_engine(&progress).await {
        Ok(engine) => bootstrap::ensure_images(&engine, &[image], &progress).await,
        Err(error) => Err(error),
    };
    finish(spinner);
    match ready {
        Ok(()) => true,
        Err(error) => {
            eprintln!("error: {error}");
            false
        }
    }
}

/// Lines as they come, and on a terminal a spinner that shows how long the current one takes
/// (debootstrap and image builds take minutes and print little).
fn progress(output: Output) -> (Progress, Option<ProgressBar>) {
    if output.quiet {
        return (Progress::silent(), None);
    }
    if !std::io::stderr().is_terminal() {
        return (
            Progress::new(|line| eprintln!("setup: {}", printable(line))),
            None,
        );
    }
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("       {spinner} {msg} {elapsed}") {
        spinner.set_style(style);
    }
    spinner.enable_steady_tick(std::time::Duration::from_millis(100));
    let bar = spinner.clone();
    let progress = Progress::new(move |line| {
        let line = printable(line).into_owned();
        bar.println(format!("setup: {line}"));
        bar.set_message(line);
    });
    (progress, Some(spinner))
}

fn finish(spinner: Option<ProgressBar>) {
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
}
