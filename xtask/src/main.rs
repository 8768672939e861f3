//! `cargo xtask …`: the one entry point for what a contributor runs.
//!
//! - `up`: builds and runs the services on the embedded default (SQLite under `data/`), sharing one
//!   signing secret, and prints their addresses and how to mint a token.
//! - `ci`: what CI runs: formatting, lints, every test.
//!
//! Deliberately dependency-free: it only drives `cargo` and the built binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const INTERACTION_SERVER_ADDR: &str = "127.0.0.1:50051";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => up(),
        Some("ci") => ci(),
        _ => {
            eprintln!(
                "usage: cargo xtask <up|ci>\n  up  run the services on the embedded default (SQLite in data/)\n  ci  formatting, lints and every test, as CI runs them"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .current_dir(root())
        .status()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ci() -> Result<(), String> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace", "--all-features"]))
}

/// The shared signing secret of a local deployment, generated once into `data/jwt-secret`.
fn local_secret(data: &Path) -> Result<String, String> {
    let path = data.join("jwt-secret");
    if let Ok(secret) = std::fs::read_to_string(&path) {
        return Ok(secret.trim().to_owned());
    }
    std::fs::create_dir_all(data).map_err(|e| e.to_string())?;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, &secret).map_err(|e| e.to_string())?;
    Ok(secret)
}

fn up() -> Result<(), String> {
    let root = root();
    let data = root.join("data");
    let secret = local_secret(&data)?;
    run(cargo().args(["build", "--release", "-p", "interaction-server"]))?;
    let bin = root.join("target/release/interaction-server");
    let data_dir = data.join("interaction-server");
    println!(
        "interaction-server: grpc://{INTERACTION_SERVER_ADDR} (data in {})",
        data_dir.display()
    );
    println!("mint a token (roles: media_server, agent, router, reporter, service, admin):");
    println!(
        "  IXN_JWT_SECRET=$(cat {}) {} token --role agent --agent-id a1 --tenant t1",
        data.join("jwt-secret").display(),
        bin.display()
    );
    println!("Ctrl-C stops it.");
    let status = Command::new(&bin)
        .args(["--listen", INTERACTION_SERVER_ADDR, "--data-dir"])
        .arg(&data_dir)
        .env("IXN_JWT_SECRET", secret)
        .status()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("interaction-server exited: {status}"))
    }
}
