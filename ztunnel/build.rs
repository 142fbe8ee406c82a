//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the ztunnel binary
//! (feature `capture`), so the daemon is one self-contained file, and generates the
//! mesh CA's gRPC code from `proto/ca.proto` (protox: no `protoc` needed).

use std::path::PathBuf;

/// Overrides where the object is read from (default: `<workspace>/target/ebpf/ambit.bpf.o`).
const OBJECT_ENV: &str = "AMBIT_EBPF_OBJECT";

/// The mesh CA's API (identity::ca), compiled without `protoc`.
const CA_PROTO: &str = "proto/ca.proto";

/// The code layout of release builds: a linker script that places the
/// functions a node runs first (`cargo xtask bench --code-layout` writes it;
/// docs/architecture.md, "Code layout").
const LAYOUT: &str = "layout.ld";

/// `false` links release builds without [`LAYOUT`].
const LAYOUT_ENV: &str = "AMBIT_CODE_LAYOUT";

fn main() {
    compile_ca_proto();
    code_layout();
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

/// Release builds of the `ztunnel` binary on Linux place the functions that
/// [`LAYOUT`] names first, in its order, in a section of their own before
/// `.text`: the code a node runs then shares pages, and the rest is never
/// faulted in (the kernel maps up to 64 KiB around each page fault, so one
/// function run in a page of cold code costs 16 pages). A name the build does
/// not have matches nothing, so a stale layout is only less compact.
fn code_layout() {
    println!("cargo::rerun-if-env-changed={LAYOUT_ENV}");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("PROFILE") != "release"
        || var("CARGO_CFG_TARGET_OS") != "linux"
        || var(LAYOUT_ENV) == "false"
    {
        return;
    }
    let script = PathBuf::from(var("CARGO_MANIFEST_DIR")).join(LAYOUT);
    println!("cargo::rerun-if-changed={}", script.display());
    if script.is_file() {
        println!(
            "cargo::rustc-link-arg-bin=ztunnel=-Wl,-T,{}",
            script.display()
        );
    }
}

/// Generates the Rust code of [`CA_PROTO`] (client and server) into `OUT_DIR`.
fn compile_ca_proto() {
    println!("cargo::rerun-if-changed={CA_PROTO}");
    let descriptors = match protox::compile([CA_PROTO], ["proto"]) {
        Ok(descriptors) => descriptors,
        Err(err) => panic!("{CA_PROTO} does not compile: {err}"),
    };
    if let Err(err) = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(descriptors)
    {
        panic!("cannot generate the gRPC code of {CA_PROTO}: {err}");
    }
}
