//! `cargo xtask bootstrap`: installs what building the eBPF programs needs, when
//! missing (DESIGN.md section 11). Idempotent; one line when all is present.

use std::process::Command;

use anyhow::{Context, bail};

use crate::exec;

/// The nightly toolchain that builds the eBPF crate (`-Z build-std=core`).
pub const NIGHTLY: &str = "nightly";
/// LLVM major version that bpf-linker links against; Debian packages it.
const LLVM_MAJOR: &str = "22";
const LLVM_PACKAGES: [&str; 3] = ["llvm-22-dev", "libpolly-22-dev", "libclang-22-dev"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// bpf-linker 0.13 is the release known to build against LLVM 22; a plain
/// `cargo install bpf-linker` wants LLVM 23 and fails.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// One thing bootstrap makes sure of.
struct Step {
    name: &'static str,
    present: fn() -> anyhow::Result<bool>,
    install: fn() -> anyhow::Result<()>,
    /// What a user would run by hand when the step fails.
    by_hand: fn() -> String,
    needs_root: bool,
}

const STEPS: [Step; 9] = [
    Step {
        name: "nightly rust-src",
        present: rust_src_present,
        install: install_rust_src,
        by_hand: || format!("rustup component add rust-src --toolchain {NIGHTLY}"),
        needs_root: false,
    },
    Step {
        name: "LLVM 22 development packages",
        present: llvm_present,
        install: install_llvm,
        by_hand: || {
            format!(
                "apt-get update && apt-get install -y {}",
                LLVM_PACKAGES.join(" ")
            )
        },
        needs_root: true,
    },
    Step {
        name: "bpf-linker (LLVM 22)",
        present: bpf_linker_present,
        install: install_bpf_linker,
        by_hand: || {
            format!(
                "LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --version {BPF_LINKER_VERSION} --locked \
                 --no-default-features --features llvm-{LLVM_MAJOR} --force"
            )
        },
        needs_root: false,
    },
    Step {
        name: "test tools (tcpdump, curl, kubectl, CNI plugins)",
        present: || Ok(test_tools_present()),
        install: install_test_tools,
        by_hand: || {
            format!(
                "apt-get update && apt-get install -y {} {CNI_PACKAGE}",
                TEST_PACKAGES.join(" ")
            )
        },
        needs_root: true,
    },
    Step {
        name: "pip (python3-pip)",
        // Only needed to install kubernetes-validate.
        present: || Ok(kubernetes_validate_present() || pip_present()),
        install: || apt_install(&["python3-pip"]),
        by_hand: || "apt-get update && apt-get install -y python3-pip".to_owned(),
        needs_root: true,
    },
    Step {
        name: "kubernetes-validate (deploy/ schemas)",
        present: || Ok(kubernetes_validate_present()),
        install: install_kubernetes_validate,
        by_hand: || format!("python3 -m pip {}", KUBERNETES_VALIDATE_INSTALL.join(" ")),
        needs_root: false,
    },
    Step {
        name: "cargo-deny (lint: licenses, bans, sources)",
        present: || Ok(cargo_deny_present()),
        install: || {
            exec::run(Command::new("cargo").args([
                "install",
                "--locked",
                "cargo-deny",
                "--version",
                CARGO_DENY_VERSION,
            ]))
        },
        by_hand: || format!("cargo install --locked cargo-deny --version {CARGO_DENY_VERSION}"),
        needs_root: false,
    },
    Step {
        name: "chromium (the traffic view's browser test)",
        present: || Ok(std::path::Path::new(CHROMIUM).is_file()),
        install: || apt_install(&["chromium"]),
        by_hand: || "apt-get update && apt-get install -y chromium".to_owned(),
        needs_root: true,
    },
    Step {
        name: "playwright-core (tests/ui, npm)",
        present: || Ok(exec::workspace_root()?.join(PLAYWRIGHT_PROBE).is_file()),
        install: || {
            exec::run(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                    .arg(exec::workspace_root()?.join("tests/ui")),
            )
        },
        by_hand: || "npm ci --prefix tests/ui".to_owned(),
        needs_root: false,
    },
];

/// cargo-deny checks deny.toml in `cargo xtask lint`.
const CARGO_DENY_VERSION: &str = "0.20.2";

fn cargo_deny_present() -> bool {
    exec::output(Command::new("cargo").args(["deny", "--version"]))
        .ok()
        .flatten()
        .is_some_and(|o| o.status.success())
}

/// Debian's Chromium, which tests/tests/ui.rs drives headless.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A file of the Playwright client that `npm ci` puts under tests/ui (the
/// version pinned in tests/ui/package-lock.json).
const PLAYWRIGHT_PROBE: &str = "tests/ui/node_modules/playwright-core/package.json";

/// kubernetes-validate (PyPI) validates the manifests of deploy/ against a
/// Kubernetes release's schemas (tests/tests/manifests.rs). 1.37.0 carries the
/// schemas up to Kubernetes 1.37. Installed for the user: `--user` needs no
/// root, and Debian's Python refuses any pip install without
/// `--break-system-packages` (PEP 668), which with `--user` touches only
/// ~/.local. The test runs it as `python3 -m kubernetes_validate` when
/// ~/.local/bin is not on PATH.
const KUBERNETES_VALIDATE_INSTALL: [&str; 7] = [
    "install",
    "--quiet",
    "--user",
    "--break-system-packages",
    "--no-warn-script-location",
    "--root-user-action=ignore",
    "kubernetes-validate==1.37.0",
];

fn pip_present() -> bool {
    exec::output(Command::new("python3").args(["-m", "pip", "--version"]))
        .ok()
        .flatten()
        .is_some_and(|o| o.status.success())
}

/// Whether kubernetes-validate runs, as a command or as a Python module.
fn kubernetes_validate_present() -> bool {
    let runs = |cmd: &mut Command| {
        exec::output(cmd.arg("--version"))
            .ok()
            .flatten()
            .is_some_and(|o| o.status.success())
    };
    runs(&mut Command::new("kubernetes-validate"))
        || runs(Command::new("python3").args(["-m", "kubernetes_validate"]))
}

fn install_kubernetes_validate() -> anyhow::Result<()> {
    exec::run(
        Command::new("python3")
            .args(["-m", "pip"])
            .args(KUBERNETES_VALIDATE_INSTALL),
    )
}

/// Debian packages the end-to-end tests use: tcpdump watches the wire between
/// nodes (is it TLS?); curl is the HTTP/1.1 and HTTP/2 client of the waypoint
/// tests; kubectl renders deploy/'s kustomizations (`kubectl kustomize`, in
/// tests/tests/manifests.rs). Each package installs a command of its name.
const TEST_PACKAGES: [&str; 3] = ["tcpdump", "curl", "kubectl"];

/// The reference CNI plugins (bridge, host-local, ...), which the CNI test
/// chains `ambit-cni` after, as a container runtime would; installed in
/// [`CNI_PLUGIN_DIR`], not on the PATH.
const CNI_PACKAGE: &str = "containernetworking-plugins";

/// Where Debian's [`CNI_PACKAGE`] puts the plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

fn test_tools_present() -> bool {
    TEST_PACKAGES.iter().all(|p| which(p).is_some())
        && std::path::Path::new(CNI_PLUGIN_DIR)
            .join("bridge")
            .is_file()
}

fn install_test_tools() -> anyhow::Result<()> {
    let mut packages = TEST_PACKAGES.to_vec();
    packages.push(CNI_PACKAGE);
    apt_install(&packages)
}

/// `cargo xtask bench --code-layout` runs ztunnel under valgrind's callgrind
/// (and `callgrind_control` to dump its profile).
pub fn profiler() -> anyhow::Result<()> {
    if which("valgrind").is_some() && which("callgrind_control").is_some() {
        return Ok(());
    }
    if !exec::is_root() {
        bail!(
            "bench --code-layout: valgrind missing and installing needs root; run as root, or by hand: \
             apt-get update && apt-get install -y valgrind"
        );
    }
    eprintln!("bench: installing valgrind");
    apt_install(&["valgrind"]).context(
        "bench: installing valgrind failed; to see why, run by hand: apt-get update && apt-get install -y valgrind",
    )
}

/// Debian packages `cargo xtask bench` runs, each with the command it installs:
/// iperf3 measures bulk throughput; h2load (nghttp2-client) drives the HTTP
/// scenarios (HTTP/1.1 and HTTP/2, fixed rate and closed loop).
const BENCH_PACKAGES: [(&str, &str); 2] = [("iperf3", "iperf3"), ("nghttp2-client", "h2load")];

/// Installs the benchmark tools when missing (root needed then).
pub fn bench_tools() -> anyhow::Result<()> {
    let missing = || -> Vec<&str> {
        BENCH_PACKAGES
            .iter()
            .filter(|(_, command)| which(command).is_none())
            .map(|&(package, _)| package)
            .collect()
    };
    let packages = missing();
    if packages.is_empty() {
        return Ok(());
    }
    let by_hand = format!(
        "apt-get update && apt-get install -y {}",
        packages.join(" ")
    );
    if !exec::is_root() {
        bail!(
            "bench: {} missing and installing needs root; run as root, or by hand: {by_hand}",
            packages.join(", ")
        );
    }
    eprintln!("bench: installing {}", packages.join(" "));
    apt_install(&packages).with_context(|| {
        format!(
            "bench: installing {} failed; to see why, run by hand: {by_hand}",
            packages.join(" ")
        )
    })?;
    let still = missing();
    if !still.is_empty() {
        bail!(
            "bench: {} still missing after installing; run by hand: {by_hand}",
            still.join(", ")
        );
    }
    Ok(())
}

/// Installs every missing piece, in order.
pub fn run() -> anyhow::Result<()> {
    let mut installed = Vec::new();
    for step in &STEPS {
        let present =
            (step.present)().with_context(|| format!("bootstrap: cannot check `{}`", step.name))?;
        if present {
            continue;
        }
        if step.needs_root && !exec::is_root() {
            bail!(
                "bootstrap: `{}` is missing and installing it needs root; run `cargo xtask bootstrap` as root, \
                 or by hand: {}",
                step.name,
                (step.by_hand)()
            );
        }
        eprintln!("bootstrap: installing {}", step.name);
        (step.install)().with_context(|| {
            format!(
                "bootstrap: installing `{}` failed; to see why, run by hand: {}",
                step.name,
                (step.by_hand)()
            )
        })?;
        if !(step.present)()? {
            bail!(
                "bootstrap: `{}` still missing after installing it; run by hand: {}",
                step.name,
                (step.by_hand)()
            );
        }
        installed.push(step.name);
    }
    if installed.is_empty() {
        eprintln!(
            "bootstrap: all present (nightly rust-src, LLVM {LLVM_MAJOR} dev packages, bpf-linker, tcpdump, curl, kubectl, CNI plugins, kubernetes-validate, cargo-deny, chromium, playwright-core)"
        );
    } else {
        eprintln!("bootstrap: installed {}", installed.join(", "));
    }
    Ok(())
}

fn rust_src_present() -> anyhow::Result<bool> {
    let output = exec::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?
    .context("rustup is not installed: ambit builds with a rustup-managed toolchain")?;
    // A missing toolchain makes rustup fail; that counts as "not present".
    Ok(output.status.success()
        && String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|l| l.starts_with("rust-src")))
}

fn install_rust_src() -> anyhow::Result<()> {
    let toolchains = exec::output(Command::new("rustup").args(["toolchain", "list"]))?
        .context("rustup is not installed")?;
    let has_nightly = String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|l| l.starts_with(NIGHTLY));
    // Never `toolchain install` an existing nightly: that would update it, and the
    // pinned aya-ebpf needs the one the machine has.
    if has_nightly {
        exec::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))
    } else {
        exec::run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
    }
}

fn llvm_present() -> anyhow::Result<bool> {
    let output = exec::output(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}\n"])
            .args(LLVM_PACKAGES),
    )?
    .context("dpkg-query is not installed: bootstrap supports Debian-based hosts")?;
    let installed = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.ends_with(" installed"))
        .count();
    Ok(output.status.success() && installed == LLVM_PACKAGES.len())
}

fn install_llvm() -> anyhow::Result<()> {
    apt_install(&LLVM_PACKAGES)
}

/// `apt-get install` of `packages`, refreshing the package lists first when apt
/// does not know them yet (fresh machines often have empty lists).
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let policy = exec::output(Command::new("apt-cache").args(["policy", packages[0]]))?
        .context("apt-cache is not installed")?;
    let known = String::from_utf8_lossy(&policy.stdout)
        .lines()
        .any(|l| l.trim_start().starts_with("Candidate:") && !l.contains("(none)"));
    if !known {
        exec::run(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    exec::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpf_linker_present() -> anyhow::Result<bool> {
    let Some(path) = which("bpf-linker") else {
        return Ok(false);
    };
    // Built against another LLVM (or against a removed one), it cannot link our
    // objects: ldd shows which libLLVM it loads and whether it is found.
    let ldd = exec::output(Command::new("ldd").arg(&path))?.context("ldd is not installed")?;
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let llvm_line = ldd.lines().find(|l| l.contains("libLLVM"));
    Ok(llvm_line.is_some_and(|l| {
        l.contains(&format!("libLLVM.so.{LLVM_MAJOR}")) && !l.contains("not found")
    }))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    exec::run(
        exec::cargo(None)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}

/// The first `name` on PATH (or in cargo's bin directory, which rustup puts on
/// PATH but a non-login shell may lack).
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".cargo"))
        })
        .map(|home| home.join("bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
