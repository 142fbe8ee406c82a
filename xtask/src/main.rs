//! `cargo xtask`: ambit's developer tasks.
//!
//! Every command that builds or tests first runs `bootstrap`, so a fresh machine
//! needs nothing but `cargo xtask test` (or `demo`) to get going.
#![forbid(unsafe_code)]

mod bootstrap;
mod ebpf;
mod exec;
mod fuzz;
mod manifests;
mod tasks;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// ambit developer tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Subcommand)]
enum Command {
    /// Install what building the eBPF programs needs (nightly rust-src, LLVM 22
    /// development packages, bpf-linker); does nothing when all is present.
    Bootstrap,
    /// Build the eBPF object (target bpfel-unknown-none) that ztunnel embeds.
    BuildEbpf,
    /// Build the eBPF object and every crate.
    Build {
        /// Build with optimizations.
        #[arg(long)]
        release: bool,
    },
    /// Run the whole test suite: unit, integration and end-to-end (needs root).
    Test {
        /// Only the end-to-end suites in tests/ (network namespaces, BPF).
        #[arg(long, conflicts_with = "unit")]
        e2e: bool,
        /// Only the unit and in-process tests (no root needed).
        #[arg(long)]
        unit: bool,
    },
    /// rustfmt and clippy (-D warnings) over every crate, the eBPF crate too.
    Lint,
    /// Benchmark the data path against a plaintext baseline on a two-node
    /// testbed (release build, needs root; installs iperf3 when missing).
    Bench {
        /// Fewer and shorter rounds (under 3 minutes), for development.
        #[arg(long)]
        quick: bool,
        /// Where bench.json, bench.md and the SVG plots go [default: target/bench].
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
        /// Only these scenarios (comma-separated, e.g. mesh_http,mesh_waypoint).
        #[arg(long, value_name = "NAMES")]
        only: Option<String>,
        /// Instead of the rounds, a soak: mixed load through the mesh and the
        /// waypoint for this long, watching memory, errors and descriptors
        /// (soak.json, soak.md).
        #[arg(long, value_name = "SECONDS", conflicts_with_all = ["quick", "only"])]
        soak: Option<u64>,
        /// Rounds of every scenario, instead of the mode's (5, or 3 with --quick).
        #[arg(long, value_name = "N", conflicts_with = "soak")]
        rounds: Option<u32>,
        /// Also run `mesh_variant`: mesh_no_sockmap with these ztunnel
        /// environment variables (KEY=VALUE,...), next to it in every round,
        /// and compare the two round by round.
        #[arg(long, value_name = "KEY=VALUE,...", conflicts_with = "soak")]
        variant: Option<String>,
        /// Instead of the rounds, profile what a node runs (two ztunnels under
        /// callgrind, with traffic) and rewrite ztunnel/layout.ld, the code
        /// layout of release builds (installs valgrind when missing).
        #[arg(long, conflicts_with_all = ["quick", "only", "soak", "out", "rounds", "variant"])]
        code_layout: bool,
    },
    /// The local two-node mesh demo (needs root).
    Demo {
        /// Run the steps up to N (1 to 7).
        #[arg(long, value_name = "N")]
        step: Option<u32>,
        /// Leave the testbed running at the end, and print how to use it.
        #[arg(long)]
        keep: bool,
        /// Remove a testbed left by --keep or by an interrupted run.
        #[arg(long)]
        down: bool,
    },
    /// Run the fuzz targets of fuzz/ (cargo-fuzz on nightly; installs it when
    /// missing): 10 minutes each, or 10^6 executions each with --quick.
    Fuzz {
        /// 10^6 executions per target instead of 10 minutes.
        #[arg(long)]
        quick: bool,
        /// Only this target.
        #[arg(value_name = "TARGET")]
        target: Option<String>,
    },
    /// Write the CRD manifests of deploy/crds from ztunnel's Rust types.
    Manifests {
        /// Only check that the checked-in manifests are up to date.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let root = exec::workspace_root().context("cannot find the workspace root")?;
    match command {
        Command::Bootstrap => bootstrap::run(),
        Command::BuildEbpf => ebpf::build(&root).map(|_| ()),
        Command::Build { release } => tasks::build(&root, release),
        Command::Test { e2e, unit } => tasks::test(&root, tasks::Suites::from_flags(e2e, unit)),
        Command::Lint => tasks::lint(&root),
        Command::Bench {
            quick,
            out,
            only,
            soak,
            rounds,
            variant,
            code_layout,
        } => tasks::bench(
            &root,
            tasks::BenchArgs {
                quick,
                out: out.as_deref(),
                only: only.as_deref(),
                soak,
                rounds,
                variant: variant.as_deref(),
            },
            code_layout,
        ),
        Command::Demo { step, keep, down } => tasks::demo(&root, step, keep, down),
        Command::Manifests { check } => manifests::run(&root, check),
        Command::Fuzz { quick, target } => {
            bootstrap::run()?;
            fuzz::run(&root, quick, target.as_deref())
        }
    }
}
