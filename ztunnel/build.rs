//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the ztunnel binary
//! (feature `capture`), so the daemon is one self-contained file.

use std::path::PathBuf;

/// Overrides where the object is read from (default: `<workspace>/target/ebpf/ambit.bpf.o`).
const OBJECT_ENV: &str = "AMBIT_EBPF_OBJECT";

fn main() {
    println!("cargo::rerun-if-env-changed={OBJECT_ENV}");
    if std::env::var_os("CARGO_FEATURE_CAPTURE").is_none() {
        return;
    }
    let object = match std::env::var_os(OBJECT_ENV) {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest = PathBuf::from(
                std::env::var_os("CARGO_MANIFEST_DIR")
                    .expect("cargo always sets CARGO_MANIFEST_DIR"),
            );
            manifest.join("../target/ebpf/ambit.bpf.o")
        }
    };
    println!("cargo::rerun-if-changed={}", object.display());
    if !object.is_file() {
        panic!(
            "the eBPF object {} is missing: run `cargo xtask build-ebpf` first (or build \
             ztunnel without the `capture` feature)",
            object.display()
        );
    }
    let object = object
        .canonicalize()
        .expect("the object was just found, so its path resolves");
    println!("cargo::rustc-env=AMBIT_EBPF_OBJECT={}", object.display());
}
