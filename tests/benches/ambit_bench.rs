//! `cargo xtask bench`: the data path against a plaintext baseline, sockmap on
//! and off, ztunnel CPU and memory (see `ambit_tests::bench`). Needs root and
//! the release `ztunnel` (`cargo build --release -p ztunnel`); xtask builds it.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ambit_tests::bench::main()
}
