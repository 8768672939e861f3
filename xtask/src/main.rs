//! `cargo xtask …`: the one entry point for what a contributor runs.
//!
//! - `up`: builds and runs both services on the embedded default (SQLite under `data/`), sharing
//!   one signing secret, and prints their addresses and how to mint a token.
//! - `demo`: plays every seed flow against both services on a fresh data directory, printing what
//!   each party saw; fails on any difference from the seeds.
//! - `ci`: what CI runs: formatting, lints, every test.
//! - `bench [--quick]`: builds the release binaries and runs the benchmark harness
//!   (`session-service/examples/bench.rs`) against them; writes `target/bench/report.json` and
//!   `target/bench/report.md`. `--quick` is the short run for CI, so the harness never rots.
//! - `crash-test [--cycles N] [--seed S] [--release]`: runs both services under a mixed load, kills
//!   them with SIGKILL at random moments and checks after each restart that no acknowledged change
//!   is lost and the logs have no gap and no duplicate (`session-service/examples/crash_test.rs`).
//!   Debug builds unless `--release`.
//! - `deploy-check`: renders the Kubernetes overlays and validates everything under `deploy/`
//!   (manifests against the Kubernetes schemas, YAML lint, the collector configuration, the
//!   dashboard) with pinned Python tools in a virtualenv under `target/`; see [`deploy_check`].
//!
//! Deliberately dependency-free: it only drives `cargo`, the built binaries and (deploy-check)
//! Python tools.

mod deploy_check;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const INTERACTION_SERVER_ADDR: &str = "127.0.0.1:50051";
const SESSION_SERVICE_ADDR: &str = "127.0.0.1:50052";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => up(),
        Some("ci") => ci(),
        Some("demo") => demo(),
        Some("bench") => bench(&args[1..]),
        Some("crash-test") => crash_test(&args[1..]),
        Some("deploy-check") => deploy_check::deploy_check(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <up|demo|ci|bench|deploy-check>\n  up            run both services on the embedded default (SQLite in data/)\n  demo          play every seed flow against both services; fails on any difference\n  ci            formatting, lints and every test, as CI runs them\n  bench         [--quick] measure both services (release builds); report in target/bench/\n  crash-test    [--cycles N] [--seed S] [--release] kill both services under load, N times; check nothing is lost\n  deploy-check  [--renderer auto|kustomize|kubectl|builtin] render and validate deploy/"
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

fn demo() -> Result<(), String> {
    build_services(false)?;
    let bin_dir = target_dir().join("debug");
    run(cargo()
        .args([
            "run",
            "--quiet",
            "-p",
            "session-service",
            "--example",
            "demo",
        ])
        .env("IXN_DEMO_BIN_DIR", bin_dir))
}

/// The benchmark harness against the release binaries. Arguments go to the harness (`--quick`,
/// `--only …`); the report goes to `target/bench/` unless `--out` says otherwise.
fn bench(args: &[String]) -> Result<(), String> {
    build_services(true)?;
    let target = target_dir();
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "session-service",
        "--example",
        "bench",
        "--",
    ]);
    if !args.iter().any(|a| a == "--out") {
        cmd.arg("--out").arg(target.join("bench"));
    }
    run(cmd
        .args(args)
        .env("IXN_BENCH_BIN_DIR", target.join("release")))
}

/// The crash test against the debug binaries (release with `--release`); other arguments go to
/// the harness.
fn crash_test(args: &[String]) -> Result<(), String> {
    let release = args.iter().any(|a| a == "--release");
    build_services(release)?;
    let profile = if release { "release" } else { "debug" };
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "-p",
        "session-service",
        "--example",
        "crash_test",
    ]);
    if release {
        cmd.arg("--release");
    }
    run(cmd
        .arg("--")
        .args(args.iter().filter(|a| *a != "--release"))
        .env("IXN_CRASH_BIN_DIR", target_dir().join(profile)))
}

/// Builds both services' binaries.
fn build_services(release: bool) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    run(cmd.args(["-p", "interaction-server", "-p", "session-service"]))
}

/// Where cargo puts what it builds.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
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
    build_services(true)?;
    let bin = |name: &str| target_dir().join("release").join(name);
    let ixn_dir = data.join("interaction-server");
    let session_dir = data.join("session-service");
    let mut ixn = Command::new(bin("interaction-server"))
        .args(["--listen", INTERACTION_SERVER_ADDR, "--data-dir"])
        .arg(&ixn_dir)
        .env("IXN_JWT_SECRET", &secret)
        .spawn()
        .map_err(|e| format!("interaction-server: {e}"))?;
    let sessions = Command::new(bin("session-service"))
        .args(["--listen", SESSION_SERVICE_ADDR, "--data-dir"])
        .arg(&session_dir)
        .args([
            "--interaction-server",
            &format!("http://{INTERACTION_SERVER_ADDR}"),
        ])
        .env("IXN_JWT_SECRET", &secret)
        .spawn();
    let mut sessions = match sessions {
        Ok(child) => child,
        Err(e) => {
            let _ = ixn.kill();
            return Err(format!("session-service: {e}"));
        }
    };
    println!(
        "interaction-server: grpc://{INTERACTION_SERVER_ADDR}  (data in {})",
        ixn_dir.display()
    );
    println!(
        "session-service:    grpc://{SESSION_SERVICE_ADDR}  (data in {})",
        session_dir.display()
    );
    println!(
        "both share the signing secret in {}; mint a token with:",
        data.join("jwt-secret").display()
    );
    println!(
        "  IXN_JWT_SECRET=$(cat {}) {} token --role agent --agent-id a1 --tenant t1",
        data.join("jwt-secret").display(),
        bin("interaction-server").display()
    );
    println!("(roles: media_server, agent, router, reporter, service, admin). Ctrl-C stops both.");
    // Ctrl-C reaches both children (same process group); if one stops on its own, stop the other.
    loop {
        let ixn_done = ixn.try_wait().map_err(|e| e.to_string())?;
        let sessions_done = sessions.try_wait().map_err(|e| e.to_string())?;
        match (ixn_done, sessions_done) {
            (Some(a), Some(b)) => {
                return if a.success() && b.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "interaction-server exited {a}, session-service exited {b}"
                    ))
                };
            }
            (Some(_), None) => terminate(&mut sessions),
            (None, Some(_)) => terminate(&mut ixn),
            (None, None) => {}
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Asks a child to drain (SIGTERM), as Kubernetes would.
fn terminate(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
