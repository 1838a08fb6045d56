//! Builds the images sandboxes run, without any registry: a Debian base from the packages apt is
//! configured with (debootstrap + `docker import`), and on top of it the images whose Dockerfiles
//! ship inside the maxions binary. Both are cached and rebuilt only when asked or when their
//! recipe changed.
//!
//! This talks to the engine through the `docker` CLI (shipped with every engine package) because
//! `docker import` of a root-file-system tar and the classic builder are one command each there;
//! everything that runs sandboxes uses the Engine API.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The base image: Debian bookworm, minbase, with git, bash, curl and CA certificates.
pub const BASE_IMAGE: &str = "maxions/base:bookworm";
/// The default sandbox image (`images/sandbox/Dockerfile`).
pub const SANDBOX_IMAGE: &str = "maxions/sandbox:latest";
/// The label that records which recipe an image was built from.
const RECIPE_LABEL: &str = "maxions.recipe";
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
}

/// What happened to one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Built,
    /// Present and built from the same recipe: nothing to do.
    Cached,
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

/// Builds one image unless it is present and up to date (`force` rebuilds anyway). A Dockerfile
/// image also builds its base first when that is missing. `say` gets one line per thing done.
///
/// # Errors
/// When the engine, debootstrap or a mirror is missing, or a build fails.
pub fn build(
    recipe: &Recipe,
    force: bool,
    say: &mut dyn FnMut(&str),
) -> Result<Outcome, ImageError> {
    engine_answers()?;
    let recipe_id = recipe_id(recipe);
    if !force && image_recipe(recipe.tag).as_deref() == Some(recipe_id.as_str()) {
        say(&format!("{}: up to date", recipe.tag));
        return Ok(Outcome::Cached);
    }
    match recipe.source {
        Source::Debootstrap => build_base(recipe, &recipe_id, say)?,
        Source::Dockerfile { text, base } => {
            if image_recipe(base).is_none() {
                let base_recipe = RECIPES
                    .iter()
                    .find(|r| r.tag == base)
                    .expect("every Dockerfile's base is a recipe");
                build(base_recipe, false, say)?;
            }
            build_dockerfile(recipe, text, &recipe_id, say)?;
        }
    }
    Ok(Outcome::Built)
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
        let base =
            std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        let path = base.join(format!("{prefix}-{}", std::process::id()));
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
        assert_eq!(select(&[]).unwrap().len(), RECIPES.len());
        let error = select(&["sandbx".into()]).unwrap_err().to_string();
        assert!(error.contains("base, sandbox"), "{error}");
    }

    #[test]
    fn recipe_ids_are_stable_and_differ() {
        let ids: Vec<_> = RECIPES.iter().map(recipe_id).collect();
        assert_eq!(ids, RECIPES.iter().map(recipe_id).collect::<Vec<_>>());
        assert_ne!(ids[0], ids[1]);
    }
}
