//! `cargo xtask build-ebpf`: builds `ebpf/programs` for `bpfel-unknown-none`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context;

use crate::{bootstrap, exec};

/// Where cargo builds the eBPF crate (kept apart from host builds).
const TARGET_DIR: &str = "target/ebpf";
/// The object ztunnel's build script embeds (see ztunnel/build.rs).
pub const OBJECT: &str = "target/ebpf/ambit.bpf.o";

/// Builds the object and copies it to [`OBJECT`] when its bytes changed, so an
/// unchanged object never makes ztunnel rebuild. Cargo itself skips the build when
/// no source of the eBPF crates changed.
pub fn build(root: &Path) -> anyhow::Result<PathBuf> {
    exec::run(
        exec::cargo(Some(bootstrap::NIGHTLY))
            .current_dir(root)
            .args(["build", "--quiet", "--package", "ambit-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            // The workspace's release profile (fat LTO, one codegen unit) is
            // for the user-space binaries; the eBPF crate keeps the defaults
            // it was verified with (the same instructions as before it).
            .args(["--config", "profile.release.lto=false"])
            .args(["--config", "profile.release.codegen-units=16"])
            .args(["--target-dir", TARGET_DIR]),
    )
    .context(
        "building the eBPF programs failed (is the toolchain there? `cargo xtask bootstrap`)",
    )?;
    let built = root
        .join(TARGET_DIR)
        .join("bpfel-unknown-none/release/ambit-ebpf");
    let object = root.join(OBJECT);
    let bytes = fs::read(&built).with_context(|| format!("cannot read {}", built.display()))?;
    if fs::read(&object).ok().as_deref() != Some(bytes.as_slice()) {
        fs::write(&object, &bytes).with_context(|| format!("cannot write {}", object.display()))?;
        eprintln!(
            "build-ebpf: wrote {} ({} bytes)",
            object.display(),
            bytes.len()
        );
    }
    Ok(object)
}

/// `cargo clippy` for the eBPF crate, on its own target.
pub fn clippy(root: &Path) -> anyhow::Result<()> {
    exec::run(
        exec::cargo(Some(bootstrap::NIGHTLY))
            .current_dir(root)
            .args(["clippy", "--quiet", "--package", "ambit-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--target-dir", TARGET_DIR, "--", "-D", "warnings"]),
    )
}
