//! What a local sandbox backend needs to give a container allowlisted egress: a host directory
//! holding the proxy's socket and the static relay binary, mounted read-only at
//! [`CONTAINER_DIR`]; the relay as the container's main process; proxy variables for each exec.
//!
//! ```text
//! host:      <dir>/egress.sock  (mode 0666, served by EgressProxy)   <dir>/maxions-relay
//! container: /run/maxions/egress.sock                                /run/maxions/maxions-relay
//!            main process: /run/maxions/maxions-relay --listen 127.0.0.1:3128 --socket ...
//!            each exec:    HTTP_PROXY=HTTPS_PROXY=http://127.0.0.1:3128
//! ```
//!
//! The relay binary is built by `build.rs` from `relay_program.rs` as a static executable and
//! embedded in maxions, so that `maxions` stays one file to install and the bytes can also be
//! shipped to an engine that does not share this machine's file system.

use std::io;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use super::proxy::bind_unix;
use super::relay_program::{DEFAULT_LISTEN, DEFAULT_SOCKET};

/// Where the egress directory is mounted inside a container (read-only).
pub const CONTAINER_DIR: &str = "/run/maxions";
/// The proxy's socket, in the egress directory.
pub const SOCKET_NAME: &str = "egress.sock";
/// The relay executable, in the egress directory.
pub const BINARY_NAME: &str = "maxions-relay";
/// Where the relay listens inside the container.
pub const LISTEN_ADDR: &str = DEFAULT_LISTEN;

const EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/maxions-relay"));

/// The static relay executable for this machine's architecture, or `None` when this build of
/// maxions could not produce one (`build.rs` said why in a warning).
#[must_use]
pub fn binary() -> Option<&'static [u8]> {
    (!EMBEDDED.is_empty()).then_some(EMBEDDED)
}

/// The container's command: run the relay from the mounted egress directory.
#[must_use]
pub fn container_command() -> Vec<String> {
    vec![
        format!("{CONTAINER_DIR}/{BINARY_NAME}"),
        "--listen".to_owned(),
        LISTEN_ADDR.to_owned(),
        "--socket".to_owned(),
        DEFAULT_SOCKET.to_owned(),
    ]
}

/// The environment each exec in an allowlisted sandbox gets, in both spellings that tools read.
/// Loopback stays direct so that a step can still talk to servers it starts itself.
#[must_use]
pub fn proxy_env() -> Vec<(String, String)> {
    let url = format!("http://{LISTEN_ADDR}");
    let no_proxy = "localhost,127.0.0.1,::1".to_owned();
    [
        ("HTTP_PROXY", &url),
        ("HTTPS_PROXY", &url),
        ("http_proxy", &url),
        ("https_proxy", &url),
        ("NO_PROXY", &no_proxy),
        ("no_proxy", &no_proxy),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.clone()))
    .collect()
}

/// The host side of one sandbox's egress: a directory to mount read-only at [`CONTAINER_DIR`].
#[derive(Debug, Clone)]
pub struct EgressDir {
    dir: PathBuf,
}

impl EgressDir {
    /// Creates `dir` (mode 0755, so a container's non-root user can traverse it), writes the relay
    /// binary into it and binds the proxy's socket there. Serve the returned listener with
    /// [`super::EgressProxy::serve_unix`]. Call within a tokio runtime.
    ///
    /// # Errors
    /// When this build has no relay binary, or the directory, binary or socket cannot be made.
    pub fn prepare(dir: &Path) -> io::Result<(Self, UnixListener)> {
        use std::os::unix::fs::PermissionsExt;

        let Some(relay) = binary() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this build of maxions has no sandbox relay (see the build warnings), so \
                 `network: allowlist` is not available; use `network: none` or rebuild maxions",
            ));
        };
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let binary_path = dir.join(BINARY_NAME);
        // Write beside and rename, so that a container never sees a half-written executable.
        let partial = dir.join(format!(".{BINARY_NAME}.partial"));
        std::fs::write(&partial, relay)?;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&partial, &binary_path)?;
        let listener = bind_unix(&dir.join(SOCKET_NAME))?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
            },
            listener,
        ))
    }

    /// The directory to bind-mount (read-only) at [`CONTAINER_DIR`].
    #[must_use]
    pub fn host_dir(&self) -> &Path {
        &self.dir
    }

    /// The proxy's socket on the host.
    #[must_use]
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join(SOCKET_NAME)
    }

    /// The relay executable on the host.
    #[must_use]
    pub fn binary_path(&self) -> PathBuf {
        self.dir.join(BINARY_NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_command_matches_the_mount() {
        assert_eq!(
            container_command(),
            [
                "/run/maxions/maxions-relay",
                "--listen",
                "127.0.0.1:3128",
                "--socket",
                "/run/maxions/egress.sock"
            ]
        );
        assert_eq!(DEFAULT_SOCKET, format!("{CONTAINER_DIR}/{SOCKET_NAME}"));
    }

    #[test]
    fn the_embedded_relay_is_a_static_executable() {
        // A dynamically linked executable names its loader in a PT_INTERP segment; a static-pie
        // one has none (it keeps PT_DYNAMIC only to relocate itself).
        const PT_INTERP: u32 = 3;
        let elf = binary().expect("build.rs should have built the relay");
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "64-bit ELF expected");
        let u16_at = |at: usize| usize::from(u16::from_le_bytes([elf[at], elf[at + 1]]));
        let phoff = usize::try_from(u64::from_le_bytes(elf[32..40].try_into().unwrap())).unwrap();
        let (entry_size, count) = (u16_at(54), u16_at(56));
        let types: Vec<u32> = (0..count)
            .map(|i| {
                let at = phoff + i * entry_size;
                u32::from_le_bytes(elf[at..at + 4].try_into().unwrap())
            })
            .collect();
        assert!(
            !types.contains(&PT_INTERP),
            "the relay must not need a dynamic loader"
        );
    }
}
