//! `build`, `test`, `lint` and `demo`.

use std::path::Path;

use anyhow::{Context, bail};

use crate::{bootstrap, ebpf, exec};

/// Which test suites `cargo xtask test` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suites {
    /// Unit, integration and end-to-end.
    All,
    /// Everything but the end-to-end suites in tests/ (no root needed).
    Unit,
    /// Only the end-to-end suites in tests/.
    E2e,
}

impl Suites {
    /// From the `--e2e` and `--unit` flags (clap rejects both at once).
    pub fn from_flags(e2e: bool, unit: bool) -> Self {
        match (e2e, unit) {
            (true, _) => Self::E2e,
            (_, true) => Self::Unit,
            _ => Self::All,
        }
    }
}

/// The crate holding the testbed and the end-to-end suites.
const E2E_CRATE: &str = "ambit-tests";
/// The BPF-target crate: built and linted by `ebpf`, never for the host.
const EBPF_CRATE: &str = "ambit-ebpf";

pub fn build(root: &Path, release: bool) -> anyhow::Result<()> {
    bootstrap::run()?;
    ebpf::build(root)?;
    let profile: &[&str] = if release { &["--release"] } else { &[] };
    exec::run(
        exec::cargo(None)
            .current_dir(root)
            .args([
                "build",
                "--workspace",
                "--exclude",
                EBPF_CRATE,
                "--all-targets",
            ])
            .args(profile),
    )?;
    // The waypoint alone, so its binary is built without ztunnel's capture feature
    // (features unify across the crates of one cargo invocation).
    exec::run(
        exec::cargo(None)
            .current_dir(root)
            .args(["build", "--package", "waypoint"])
            .args(profile),
    )
}

pub fn test(root: &Path, suites: Suites) -> anyhow::Result<()> {
    if suites != Suites::Unit && !exec::is_root() {
        bail!(
            "cargo xtask test needs root: the end-to-end suites create network namespaces and cgroups and load \
             eBPF programs. Run it as root (for example `sudo -E env PATH=\"$PATH\" cargo xtask test`), or run \
             `cargo xtask test --unit` for the tests that need no privileges."
        );
    }
    bootstrap::run()?;
    ebpf::build(root)?;
    // The end-to-end suites run the ztunnel binary itself, from target/debug.
    exec::run(exec::cargo(None).current_dir(root).args([
        "build",
        "--package",
        "ztunnel",
        "--bins",
    ]))?;
    let mut cargo = exec::cargo(None);
    cargo.current_dir(root).arg("test");
    match suites {
        Suites::All => cargo.args(["--workspace", "--exclude", EBPF_CRATE]),
        Suites::Unit => cargo.args([
            "--workspace",
            "--exclude",
            EBPF_CRATE,
            "--exclude",
            E2E_CRATE,
        ]),
        Suites::E2e => cargo.args(["--package", E2E_CRATE]),
    };
    exec::run(&mut cargo).context("tests failed")
}

pub fn lint(root: &Path) -> anyhow::Result<()> {
    bootstrap::run()?;
    ebpf::build(root)?;
    exec::run(
        exec::cargo(None)
            .current_dir(root)
            .args(["fmt", "--all", "--", "--check"]),
    )
    .context("formatting differs: run `cargo fmt --all`")?;
    exec::run(exec::cargo(None).current_dir(root).args([
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    ebpf::clippy(root)?;
    waypoint_links_no_aya(root)
}

/// The waypoint must never link aya (DESIGN.md section 2).
fn waypoint_links_no_aya(root: &Path) -> anyhow::Result<()> {
    let mut cmd = exec::cargo(None);
    cmd.current_dir(root).args([
        "tree",
        "--package",
        "waypoint",
        "--edges",
        "normal",
        "--prefix",
        "none",
    ]);
    let output = exec::output(&mut cmd)?.context("cargo is not installed")?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            exec::display(&cmd),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if let Some(line) = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|l| l.starts_with("aya"))
    {
        bail!("the waypoint depends on {line}: it must use ztunnel without the `capture` feature");
    }
    Ok(())
}

pub fn demo() -> anyhow::Result<()> {
    bail!(
        "the demo is not there yet: the local two-node mesh (mTLS, identities, allowed and denied connections, \
         JWTs) lands with the capture, identity, HBONE and waypoint issues. Today `cargo xtask test` builds \
         everything and runs the network-namespace testbed and the first eBPF program."
    )
}
