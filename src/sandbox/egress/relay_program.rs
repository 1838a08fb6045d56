//! `maxions-relay`: the program a sandbox runs as its main process when its network is an
//! allowlist. The container has no network but loopback; the relay listens on 127.0.0.1:3128
//! inside it and copies every connection, byte for byte, to the egress proxy's Unix socket,
//! which is bind-mounted read-only at /run/maxions/egress.sock.
//!
//! This file is compiled twice: as a module of maxions (for its tests and lints), and on its own
//! by `build.rs` into a static binary that runs in any image (no libc, shell or packages
//! needed). So it uses `std` only, with threads instead of an async runtime, and never
//! resolves a name (static glibc cannot load NSS modules).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// Like `eprintln!`, but a closed stderr is not a reason to die (`eprintln!` panics then).
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

/// Where the relay listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3128";
/// Where the proxy's socket is unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/maxions/egress.sock";
/// Connections relayed at once (each costs two threads); more are turned away.
const MAX_CONNECTIONS: usize = 256;

const USAGE: &str =
    "usage: maxions-relay [--listen 127.0.0.1:3128] [--socket /run/maxions/egress.sock]";

/// What to listen on and where to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub socket: PathBuf,
}

/// Parses `--listen ADDR` and `--socket PATH` (both optional).
///
/// # Errors
/// A message for the user, with the usage line.
pub fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut listen = DEFAULT_LISTEN.to_owned();
    let mut socket = DEFAULT_SOCKET.to_owned();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--listen" => &mut listen,
            "--socket" => &mut socket,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        };
        let Some(value) = args.next() else {
            return Err(format!("`{flag}` needs a value\n{USAGE}"));
        };
        value.clone_into(slot);
    }
    // An address, never a name: resolving would need NSS, which a static binary cannot load.
    let listen = listen
        .parse()
        .map_err(|_| format!("`--listen {listen}` is not an IP address and port\n{USAGE}"))?;
    Ok(Config {
        listen,
        socket: PathBuf::from(socket),
    })
}

/// The program: parse arguments, listen, relay until killed.
#[must_use]
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse_args(&args) {
        Ok(config) => config,
        Err(message) => {
            log!("maxions-relay: {message}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(config.listen) {
        Ok(listener) => listener,
        Err(error) => {
            log!("maxions-relay: cannot listen on {}: {error}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    // The first line tells the bound port when asked to listen on port 0 (tests do).
    match listener.local_addr() {
        Ok(addr) => log!(
            "maxions-relay: listening on {addr}, forwarding to {}",
            config.socket.display()
        ),
        Err(error) => log!("maxions-relay: {error}"),
    }
    serve(&listener, &config.socket);
    ExitCode::FAILURE
}

/// Accepts connections forever, relaying each on its own threads.
pub fn serve(listener: &TcpListener, socket: &Path) {
    let active = Arc::new(AtomicUsize::new(0));
    for client in listener.incoming() {
        let client = match client {
            Ok(client) => client,
            Err(error) => {
                // Out of descriptors or threads: wait a little instead of spinning.
                log!("maxions-relay: accept failed: {error}");
                thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            refuse(
                client,
                "503 Service Unavailable",
                "too many connections through the relay",
            );
            continue;
        }
        let socket = socket.to_path_buf();
        let active = Arc::clone(&active);
        let spawned = thread::Builder::new().name("relay".into()).spawn(move || {
            relay(client, &socket);
            active.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(error) = spawned {
            log!("maxions-relay: cannot start a thread: {error}");
        }
    }
}

/// Copies one client connection to a new connection on the proxy's socket and back.
fn relay(client: TcpStream, socket: &Path) {
    let _ = client.set_nodelay(true);
    let proxy = match UnixStream::connect(socket) {
        Ok(proxy) => proxy,
        Err(error) => {
            let message = format!(
                "the egress proxy at {} is not reachable: {error}",
                socket.display()
            );
            log!("maxions-relay: {message}");
            refuse(client, "502 Bad Gateway", &message);
            return;
        }
    };
    let (Ok(client_reader), Ok(proxy_writer)) = (client.try_clone(), proxy.try_clone()) else {
        return;
    };
    let upload = thread::Builder::new()
        .name("relay-up".into())
        .spawn(move || pump(client_reader, proxy_writer, |w| w.shutdown(Shutdown::Write)));
    pump(proxy, client, |w| w.shutdown(Shutdown::Write));
    if let Ok(upload) = upload {
        let _ = upload.join();
    }
}

/// Copies until end of input, then half-closes the writer so the other side sees the end too.
fn pump<R: Read, W: Write>(mut from: R, mut to: W, half_close: impl FnOnce(&W) -> io::Result<()>) {
    let _ = io::copy(&mut from, &mut to);
    let _ = half_close(&to);
}

/// The relay sits in front of an HTTP proxy, so an HTTP answer is what clients understand.
fn refuse(mut client: TcpStream, status: &str, message: &str) {
    let body = format!("maxions relay: {message}\n");
    let _ = write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // Read what the client already sent before closing: closing with unread input makes the
    // kernel reset the connection, and the client would never see the answer.
    let _ = client.shutdown(Shutdown::Write);
    let _ = client.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let _ = io::copy(&mut client.take(1 << 20), &mut io::sink());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults_are_the_container_paths() {
        assert_eq!(
            parse_args(&[]),
            Ok(Config {
                listen: "127.0.0.1:3128".parse().unwrap(),
                socket: PathBuf::from("/run/maxions/egress.sock"),
            })
        );
    }

    #[test]
    fn flags_override_and_names_are_refused() {
        let config = parse_args(&args(&["--listen", "127.0.0.1:0", "--socket", "/tmp/s"])).unwrap();
        assert_eq!(config.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.socket, PathBuf::from("/tmp/s"));
        assert!(parse_args(&args(&["--listen", "localhost:3128"])).is_err());
        assert!(parse_args(&args(&["--listen"])).is_err());
        assert!(parse_args(&args(&["--bogus"])).is_err());
    }
}
