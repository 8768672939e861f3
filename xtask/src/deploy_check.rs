//! `cargo xtask deploy-check [--renderer auto|kustomize|kubectl|builtin]`: checks everything under
//! `deploy/` without a cluster.
//!
//! 1. Makes sure the Python tools are there: a virtualenv in `target/deploy-check-venv` with the
//!    pinned [`PYTHON_PACKAGES`] (installed from PyPI once; a change of the pins reinstalls).
//! 2. Renders every overlay of `deploy/kubernetes/overlays/` with a real kustomize when there is one:
//!    `kustomize build`, else `kubectl kustomize` when kubectl embeds kustomize v5. Neither is
//!    needed: `deploy_check/kustomize_lite.py` renders the subset of kustomize the overlays use, and
//!    when a real kustomize rendered them too, both must give the same objects.
//! 3. Lints every YAML file under `deploy/` with yamllint (`deploy/.yamllint`, warnings fail).
//! 4. Runs `deploy_check/checks.py`: every rendered object and every `*.example.yaml` manifest
//!    against the schemas of [`KUBERNETES_VERSION`] with unknown fields refused (kubernetes-validate);
//!    the references the schemas cannot see; the TOML configuration files; the OpenTelemetry
//!    Collector configuration; the Grafana dashboard's JSON and metric names.
//!
//! Prints what it checked; exits non-zero on any failure, naming the file and the problem.

use crate::{root, target_dir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The Python tools and everything they depend on, pinned exactly (the one place to bump them).
const PYTHON_PACKAGES: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "yamllint==1.38.0",
    // What those two depend on.
    "attrs==26.1.0",
    "importlib_resources==7.1.0",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "packaging==26.3",
    "pathspec==1.1.1",
    "PyYAML==6.0.3",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "typing_extensions==4.16.0",
];

/// The Kubernetes version whose API schemas the manifests are validated against: the oldest the
/// manifests are meant for (every field they use exists there), one kubernetes-validate ships.
const KUBERNETES_VERSION: &str = "1.31.0";

/// The oldest kustomize whose rendering the overlays are written for (`patches`, `resources`
/// holding directories).
const KUSTOMIZE_MAJOR: u32 = 5;

#[derive(Clone, Copy, PartialEq)]
enum Choice {
    Auto,
    Kustomize,
    Kubectl,
    Builtin,
}

/// A real kustomize: the command line that renders a directory (appended) to stdout.
struct Renderer {
    label: String,
    program: String,
    args: Vec<&'static str>,
}

pub fn deploy_check(args: &[String]) -> Result<(), String> {
    let choice = match args {
        [] => Choice::Auto,
        [flag, value] if flag == "--renderer" => match value.as_str() {
            "auto" => Choice::Auto,
            "kustomize" => Choice::Kustomize,
            "kubectl" => Choice::Kubectl,
            "builtin" => Choice::Builtin,
            other => {
                return Err(format!(
                    "--renderer {other}: auto, kustomize, kubectl or builtin"
                ));
            }
        },
        _ => {
            return Err(
                "usage: cargo xtask deploy-check [--renderer auto|kustomize|kubectl|builtin]"
                    .into(),
            );
        }
    };
    let started = Instant::now();
    let root = root();
    let work = target_dir().join("deploy-check");
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let mut failures = Vec::new();

    println!("== Python tools");
    let venv = python_tools(&target_dir().join("deploy-check-venv"))?;

    println!("== rendering");
    let overlays = overlays(&root.join("deploy/kubernetes/overlays"))?;
    let renderer = renderer(choice)?;
    let mut rendered = Vec::new();
    match &renderer {
        Some(r) => {
            for overlay in &overlays {
                let name = overlay.file_name().unwrap_or_default().to_string_lossy();
                let out = work.join(format!("{name}.yaml"));
                match render(r, overlay, &out) {
                    Ok(()) => {
                        println!("  ok    {} rendered by {}", rel(overlay), r.label);
                        rendered.push((overlay.clone(), out));
                    }
                    Err(e) => {
                        let problem = format!("{}: {}: {e}", rel(overlay), r.label);
                        println!("  FAIL  {problem}");
                        failures.push(problem);
                    }
                }
            }
        }
        None => {
            println!("  no kustomize: the overlays are rendered by the built-in renderer alone")
        }
    }

    println!("== yamllint (deploy/.yamllint)");
    let lint = Command::new(venv.join("bin/yamllint"))
        .args(["--strict", "--format", "parsable", "--config-file"])
        .arg(root.join("deploy/.yamllint"))
        .arg("deploy")
        .current_dir(&root)
        .status()
        .map_err(|e| format!("yamllint: {e}"))?;
    if lint.success() {
        println!("  ok    every YAML file under deploy/");
    } else {
        failures.push("yamllint: see the lines above".into());
    }

    let script = root.join("xtask/src/deploy_check/checks.py");
    let mut checks = Command::new(venv.join("bin/python"));
    checks
        // No __pycache__ next to the scripts, in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // Its lines in order with ours when the output is a pipe.
        .env("PYTHONUNBUFFERED", "1")
        .arg(&script)
        .arg("--root")
        .arg(&root)
        .args(["--kubernetes-version", KUBERNETES_VERSION]);
    for overlay in &overlays {
        checks.arg("--overlay").arg(overlay);
    }
    if let Some(r) = &renderer {
        checks.args(["--renderer", &r.label]);
    }
    for (overlay, out) in &rendered {
        let mut arg = overlay.clone().into_os_string();
        arg.push("=");
        arg.push(out);
        checks.arg("--rendered").arg(arg);
    }
    let status = checks
        .current_dir(&root)
        .status()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !status.success() {
        failures.push("checks: see the FAIL lines above".into());
    }

    let took = started.elapsed().as_secs_f64();
    if failures.is_empty() {
        println!("deploy-check: everything under deploy/ holds ({took:.1} s)");
        Ok(())
    } else {
        Err(format!(
            "deploy-check failed ({took:.1} s):\n  {}",
            failures.join("\n  ")
        ))
    }
}

/// The virtualenv with the pinned tools, created and filled when missing or when the pins changed.
fn python_tools(venv: &Path) -> Result<PathBuf, String> {
    let python = venv.join("bin/python");
    let stamp = venv.join("deploy-check-packages.txt");
    let wanted = PYTHON_PACKAGES.join("\n") + "\n";
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        println!("  ok    {} (up to date)", rel(venv));
        return Ok(venv.to_owned());
    }
    if !python.exists() {
        let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let status = Command::new(&python3)
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .map_err(|e| format!("{python3}: {e} (deploy-check needs Python 3.11 or later)"))?;
        if !status.success() {
            return Err(format!(
                "{python3} -m venv {} failed (on Debian: apt-get install python3-venv)",
                venv.display()
            ));
        }
    }
    println!("  installing {}", PYTHON_PACKAGES[..2].join(", "));
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .args(PYTHON_PACKAGES)
        .status()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !status.success() {
        return Err(format!("pip install into {} failed", venv.display()));
    }
    std::fs::write(&stamp, wanted).map_err(|e| format!("{}: {e}", stamp.display()))?;
    println!("  ok    {} (installed)", rel(venv));
    Ok(venv.to_owned())
}

/// The overlay directories, in name order.
fn overlays(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut overlays: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    overlays.sort();
    if overlays.is_empty() {
        return Err(format!("{}: no overlay", dir.display()));
    }
    Ok(overlays)
}

/// The real kustomize to render with, if any (and if wanted).
fn renderer(choice: Choice) -> Result<Option<Renderer>, String> {
    if choice == Choice::Builtin {
        return Ok(None);
    }
    if matches!(choice, Choice::Auto | Choice::Kustomize) {
        let program = std::env::var("KUSTOMIZE").unwrap_or_else(|_| "kustomize".into());
        if let Some(version) = output(Command::new(&program).arg("version")) {
            let version = version.trim().to_owned();
            if major(&version) >= Some(KUSTOMIZE_MAJOR) {
                return Ok(Some(Renderer {
                    label: format!("kustomize {version}"),
                    program,
                    args: vec!["build"],
                }));
            }
            println!("  {program} {version} is older than v{KUSTOMIZE_MAJOR}: not used");
        }
        if choice == Choice::Kustomize {
            return Err(format!(
                "--renderer kustomize: no kustomize v{KUSTOMIZE_MAJOR} ({program})"
            ));
        }
    }
    // `kubectl version --client` prints "Kustomize Version: v5.5.0" on a line of its own.
    let embedded = output(Command::new("kubectl").args(["version", "--client"])).and_then(|out| {
        out.lines()
            .find_map(|l| l.strip_prefix("Kustomize Version: "))
            .map(|v| v.trim().to_owned())
    });
    match embedded {
        Some(version) if major(&version) >= Some(KUSTOMIZE_MAJOR) => Ok(Some(Renderer {
            label: format!("kubectl kustomize ({version})"),
            program: "kubectl".into(),
            args: vec!["kustomize"],
        })),
        _ if choice == Choice::Kubectl => Err(format!(
            "--renderer kubectl: no kubectl embedding kustomize v{KUSTOMIZE_MAJOR}"
        )),
        _ => Ok(None),
    }
}

/// `v5.5.0` or `{Version:kustomize/v5.5.0 …}` → 5.
fn major(version: &str) -> Option<u32> {
    let at = version.find('v')?;
    let digits: String = version[at + 1..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn render(r: &Renderer, overlay: &Path, out: &Path) -> Result<(), String> {
    let output = Command::new(&r.program)
        .args(&r.args)
        .arg(overlay)
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
    }
    std::fs::write(out, &output.stdout).map_err(|e| format!("{}: {e}", out.display()))
}

/// A command's stdout, if it ran and succeeded.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A path relative to the repository, for messages.
fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}
