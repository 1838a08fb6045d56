//! `maxions egress-proxy`: the egress proxy as a process of its own, for a sandbox on an engine
//! that does not share this machine's file system. It runs in a small container beside the
//! sandbox (see `crate::sandbox::egress_container`), serves the Unix socket in a volume the two
//! share, and prints each decision as one JSON line on stdout, which the daemon reads back from
//! the container's log as the run's `egress` events.

use std::net::IpAddr;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use super::{Output, exit};
use crate::sandbox::egress::relay::{BINARY_NAME, SOCKET_NAME};
use crate::sandbox::egress::{EgressPolicy, EgressProxy, StaticResolver, bind_unix};
use crate::sandbox::egress_container::READY;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The directory to serve in: the proxy binds `egress.sock` there and writes the sandbox's
    /// relay program beside it.
    #[arg(long, value_name = "DIR", default_value = "/run/maxions")]
    pub dir: PathBuf,

    /// An allowlist entry (`github.com`, `*.githubusercontent.com`, `host:port`); repeat for more.
    /// None allows nothing.
    #[arg(long = "allow", value_name = "PATTERN")]
    pub allow: Vec<String>,

    /// Tests only: allowed names may resolve to loopback.
    #[arg(long, hide = true)]
    pub loopback_for_tests: bool,

    /// Tests only: resolve NAME to IP instead of asking the system (repeat for more).
    #[arg(long = "resolve-for-tests", value_name = "NAME=IP", hide = true)]
    pub resolve: Vec<String>,
}

pub fn run(args: &Args, _output: Output) -> u8 {
    let mut policy = match EgressPolicy::parse(&args.allow) {
        Ok(policy) => policy,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INVALID;
        }
    };
    if args.loopback_for_tests {
        policy = policy.allow_loopback_for_tests();
    }
    let mut table = StaticResolver::new();
    for entry in &args.resolve {
        let Some((name, ip)) = entry
            .split_once('=')
            .and_then(|(name, ip)| Some((name, ip.parse::<IpAddr>().ok()?)))
        else {
            eprintln!("error: `--resolve-for-tests {entry}` is not NAME=IP");
            return exit::INVALID;
        };
        table = table.with(name, [ip]);
    }
    let Some(runtime) = super::runtime() else {
        return exit::UNREADABLE;
    };
    runtime.block_on(async {
        if let Err(error) = write_relay(&args.dir) {
            eprintln!(
                "error: cannot write the relay into {}: {error}",
                args.dir.display()
            );
            return exit::UNREADABLE;
        }
        let listener = match bind_unix(&args.dir.join(SOCKET_NAME)) {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("error: cannot bind the egress socket: {error}");
                return exit::UNREADABLE;
            }
        };
        let mut proxy = EgressProxy::new(policy).on_event(|event| {
            // One line per decision; a line that cannot be written (the log is gone) is lost
            // with the container, never a reason to stop serving.
            if let Ok(line) = serde_json::to_string(&event) {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        });
        if !args.resolve.is_empty() {
            proxy = proxy.with_resolver(table);
        }
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            terminated().await;
            stop.cancel();
        });
        println!("{READY}");
        proxy.serve_unix(listener, cancel).await;
        exit::OK
    })
}

/// Writes the static relay the sandbox runs, beside the socket, renamed into place whole.
fn write_relay(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(relay) = crate::sandbox::egress::relay::binary() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this build of maxions has no sandbox relay",
        ));
    };
    let partial = dir.join(format!(".{BINARY_NAME}.partial"));
    std::fs::write(&partial, relay)?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, dir.join(BINARY_NAME))
}

/// SIGTERM (what `docker stop` sends) or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
