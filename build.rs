//! Builds `maxions-relay`, the tiny program that runs inside allowlisted sandboxes, as a static
//! executable (any image can run it) and leaves it in `OUT_DIR` for `include_bytes!`. It is one
//! std-only file compiled with rustc directly: no dependencies, about a second.
//!
//! Static glibc comes from `-C target-feature=+crt-static` (a static-pie binary). When that
//! fails (no static libc on this machine, or not a Linux target), maxions is still built, with
//! an empty relay and a warning: `network: allowlist` then reports that it is unavailable.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "src/sandbox/egress/relay_program.rs";

fn main() {
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let output = out_dir.join("maxions-relay");
    if let Err(why) = build_relay(&out_dir, &output) {
        println!(
            "cargo::warning=the sandbox relay was not built, so `network: allowlist` will be unavailable: {why}"
        );
        std::fs::write(&output, b"").expect("OUT_DIR is writable");
    }
}

fn build_relay(out_dir: &std::path::Path, output: &std::path::Path) -> Result<(), String> {
    let target = std::env::var("TARGET").map_err(|e| e.to_string())?;
    if !target.contains("-linux-") {
        return Err(format!(
            "sandboxes run Linux and this build targets {target}"
        ));
    }
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("no CARGO_MANIFEST_DIR")?);
    let source = manifest_dir.join(SOURCE);
    let wrapper = out_dir.join("maxions_relay_main.rs");
    let wrapper_text = format!(
        "#[path = {:?}]\nmod program;\nfn main() -> std::process::ExitCode {{ program::main() }}\n",
        source.display().to_string()
    );
    std::fs::write(&wrapper, wrapper_text).map_err(|e| e.to_string())?;
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let result = Command::new(rustc)
        .args([
            "--edition=2024",
            "--crate-type=bin",
            "--crate-name=maxions_relay",
        ])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "codegen-units=1", "-C", "target-feature=+crt-static"])
        .args(["--cap-lints=allow", "--target", &target, "-o"])
        .arg(output)
        .arg(&wrapper)
        .output()
        .map_err(|e| format!("could not run rustc: {e}"))?;
    if result.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&result.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(5).collect();
        Err(format!(
            "rustc failed ({}): {}",
            result.status,
            last.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }
}
