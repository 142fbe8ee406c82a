//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` (nightly,
//! libFuzzer), each from its seed corpus in `fuzz/corpus/<target>`; what a
//! run discovers goes to `target/fuzz-corpus/<target>`, crashes to
//! `fuzz/artifacts/<target>` (turn each into a regression test).

use std::{path::Path, process::Command};

use anyhow::{Context, bail};

use crate::{bootstrap::NIGHTLY, exec};

/// The targets, in the order they run.
pub const TARGETS: [&str; 8] = [
    "config_file",
    "csr",
    "spiffe_id",
    "trust_bundle",
    "connect_request",
    "http_path",
    "http_framing",
    "jwt",
];

/// Executions per target with `--quick`.
const QUICK_RUNS: u64 = 1_000_000;
/// Seconds per target without `--quick`.
const FULL_SECONDS: u64 = 600;
/// Largest input tried (bytes).
const MAX_LEN: u32 = 4096;

/// cargo-fuzz's version, installed when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Runs `only` (or every target): `quick` for [`QUICK_RUNS`] executions
/// each, else for [`FULL_SECONDS`] each. Fails at the first crash.
pub fn run(root: &Path, quick: bool, only: Option<&str>) -> anyhow::Result<()> {
    let targets: Vec<&str> = match only {
        Some(name) if TARGETS.contains(&name) => vec![name],
        Some(name) => bail!(
            "no fuzz target {name:?}: the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("fuzz");
    for target in targets {
        let found = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&found)
            .with_context(|| format!("cannot create {}", found.display()))?;
        let seeds = fuzz_dir.join("corpus").join(target);
        let limit = if quick {
            format!("-runs={QUICK_RUNS}")
        } else {
            format!("-max_total_time={FULL_SECONDS}")
        };
        eprintln!("fuzz: {target} ({limit})");
        exec::run(
            Command::new("cargo")
                .current_dir(&fuzz_dir)
                .arg(format!("+{NIGHTLY}"))
                .args(["fuzz", "run", "--release", "--debug-assertions", target])
                .arg(&found)
                .arg(&seeds)
                .args([
                    "--",
                    &limit,
                    &format!("-max_len={MAX_LEN}"),
                    "-print_final_stats=1",
                ]),
        )
        .with_context(|| {
            format!(
                "fuzz target {target} failed: the input is in fuzz/artifacts/{target}; \
                 replay it with `cargo +{NIGHTLY} fuzz run {target} <file>` in fuzz/"
            )
        })?;
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = exec::output(Command::new("cargo").args(["fuzz", "--version"]))
        .ok()
        .flatten()
        .is_some_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    exec::run(Command::new("cargo").args([
        "install",
        "--locked",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
    .context("cannot install cargo-fuzz")
}
