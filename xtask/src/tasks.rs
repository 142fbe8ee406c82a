//! `build`, `test`, `lint`, `bench` and `demo`.

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
    // The same checks as `cargo xtask lint` (fmt, clippy, the waypoint links
    // no aya), so that CI, which runs this command, catches what lint does.
    lint(root)?;
    // The end-to-end suites run the ztunnel, waypoint and ambit-cni binaries
    // themselves, from target/debug; the waypoint alone, so that it links no
    // eBPF.
    exec::run(exec::cargo(None).current_dir(root).args([
        "build",
        "--package",
        "ztunnel",
        "--bins",
    ]))?;
    exec::run(exec::cargo(None).current_dir(root).args([
        "build",
        "--package",
        "waypoint",
        "--bins",
    ]))?;
    exec::run(exec::cargo(None).current_dir(root).args([
        "build",
        "--package",
        "ambit-cni",
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
    exec::run(&mut cargo).context("tests failed")?;
    if suites == Suites::Unit {
        // The e2e crate's own unit tests (testbed naming, the benchmark's
        // statistics and report) and the deploy/ manifest checks need no
        // privileges either.
        exec::run(exec::cargo(None).current_dir(root).args([
            "test",
            "--package",
            E2E_CRATE,
            "--lib",
            "--test",
            "manifests",
        ]))
        .context("tests failed")?;
    }
    Ok(())
}

/// The benchmark driver: a bench target of the e2e crate, so that it runs from
/// `target/release/deps` and finds the release `ztunnel`, `waypoint`,
/// `ambit-testbin` and `ambit-httpbin` beside it
/// (`ambit_tests::mesh::ztunnel_binary`).
const BENCH_TARGET: &str = "ambit-bench";

/// What `cargo xtask bench` passes on to the driver.
#[derive(Debug, Clone, Copy)]
pub struct BenchArgs<'a> {
    /// `--quick`.
    pub quick: bool,
    /// `--out DIR`.
    pub out: Option<&'a Path>,
    /// `--only NAMES`.
    pub only: Option<&'a str>,
    /// `--soak SECONDS`.
    pub soak: Option<u64>,
    /// `--rounds N`.
    pub rounds: Option<u32>,
    /// `--variant KEY=VALUE,...`.
    pub variant: Option<&'a str>,
}

impl BenchArgs<'_> {
    /// The driver's arguments for these (`--out` aside, which it gets as an
    /// absolute path).
    fn driver_args(&self) -> Vec<String> {
        let mut list = Vec::new();
        if self.quick {
            list.push("--quick".to_owned());
        }
        let mut option = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                list.extend([name.to_owned(), value]);
            }
        };
        option("--only", self.only.map(str::to_owned));
        option("--soak", self.soak.map(|s| s.to_string()));
        option("--rounds", self.rounds.map(|r| r.to_string()));
        option("--variant", self.variant.map(str::to_owned));
        list
    }
}

/// `cargo xtask bench`: builds the release `waypoint` on its own (its ztunnel
/// library has no eBPF capture, so it never links aya), the release `ztunnel`
/// on its own (as it ships), then the test binaries and the driver in one
/// cargo invocation, then runs the driver as root (with `code_layout`, the
/// driver profiles ztunnel and rewrites `ztunnel/layout.ld` instead).
pub fn bench(root: &Path, args: BenchArgs<'_>, code_layout: bool) -> anyhow::Result<()> {
    if !exec::is_root() {
        bail!(
            "cargo xtask bench needs root: it builds a testbed of network namespaces and cgroups and loads \
             eBPF programs. Run it as root (for example `sudo -E env PATH=\"$PATH\" cargo xtask bench`)."
        );
    }
    bootstrap::run()?;
    bootstrap::bench_tools()?;
    if code_layout {
        bootstrap::profiler()?;
    }
    ebpf::build(root)?;
    // Alone: built with the e2e crate, cargo would unify ztunnel's features
    // and link the eBPF capture into the waypoint.
    exec::run(exec::cargo(None).current_dir(root).args([
        "build",
        "--release",
        "--package",
        "waypoint",
        "--bins",
    ]))
    .context("building the release waypoint failed")?;
    // ztunnel alone too: what `cargo build --release -p ztunnel` ships, with
    // its own dependency features (they name the generic functions that
    // ztunnel/layout.ld lists).
    exec::run(exec::cargo(None).current_dir(root).args([
        "build",
        "--release",
        "--package",
        "ztunnel",
        "--bin",
        "ztunnel",
    ]))
    .context("building the release ztunnel failed")?;
    let mut build = exec::cargo(None);
    build
        .current_dir(root)
        .args(["build", "--release", "--package", E2E_CRATE])
        .args([
            "--bin",
            "ambit-testbin",
            "--bin",
            "ambit-httpbin",
            "--bench",
            BENCH_TARGET,
        ])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit());
    let output = exec::output(&mut build)?.context("cargo is not installed")?;
    if !output.status.success() {
        bail!("`{}` failed ({})", exec::display(&build), output.status);
    }
    let driver = bench_executable(&String::from_utf8_lossy(&output.stdout)).with_context(|| {
        format!(
            "`{}` named no {BENCH_TARGET} executable",
            exec::display(&build)
        )
    })?;
    if code_layout {
        let script = root.join("ztunnel/layout.ld");
        return exec::run(
            std::process::Command::new(driver)
                .current_dir(root)
                .arg("--code-layout")
                .arg(&script),
        )
        .context("profiling the code layout failed");
    }
    // The driver runs from the workspace root; an absolute directory keeps the
    // report where the user asked for it.
    let out = match args.out {
        Some(dir) => std::path::absolute(dir).context("cannot resolve --out")?,
        None => root.join("target/bench"),
    };
    let mut run = std::process::Command::new(driver);
    run.current_dir(root).arg("--out").arg(&out);
    run.args(args.driver_args());
    exec::run(&mut run).context("the benchmark failed")
}

/// The bench executable in cargo's JSON messages: the `"executable"` of the
/// artifact whose target is [`BENCH_TARGET`].
fn bench_executable(messages: &str) -> Option<std::path::PathBuf> {
    messages
        .lines()
        .filter(|line| {
            line.contains(r#""reason":"compiler-artifact""#)
                && line.contains(&format!(r#""name":"{BENCH_TARGET}""#))
        })
        .find_map(|line| {
            let rest = &line[line.find(r#""executable":""#)? + r#""executable":""#.len()..];
            Some(std::path::PathBuf::from(&rest[..rest.find('"')?]))
        })
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
    // Licenses, banned crates and sources of the dependency tree (deny.toml);
    // no advisory database: that needs the internet.
    exec::run(
        exec::cargo(None)
            .current_dir(root)
            .args(["deny", "--locked", "check", "licenses", "bans", "sources"]),
    )
    .context("cargo deny refused a dependency: see deny.toml")?;
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

/// `cargo xtask demo`: installs what is missing, builds (debug: the first
/// step comes sooner than with a release build), and runs `ambit-demo`, the
/// step-by-step walk through the mesh on a two-node testbed.
pub fn demo(root: &Path, step: Option<u32>, keep: bool, down: bool) -> anyhow::Result<()> {
    if !exec::is_root() {
        bail!(
            "cargo xtask demo needs root: it builds a testbed of network namespaces and cgroups and loads \
             eBPF programs. Run it as root (for example `sudo -E env PATH=\"$PATH\" cargo xtask demo`)."
        );
    }
    let demo = root.join("target/debug/ambit-demo");
    if down {
        return exec::run(
            std::process::Command::new(&demo)
                .arg("--down")
                .current_dir(root),
        );
    }
    bootstrap::run()?;
    let started = std::time::Instant::now();
    println!("demo: building (eBPF programs, ztunnel, waypoint, the sample app)...");
    ebpf::build(root)?;
    for package in [["--package", "ztunnel"], ["--package", "waypoint"]] {
        exec::run(
            exec::cargo(None)
                .current_dir(root)
                .args(["build", "--quiet", "--bins"])
                .args(package),
        )?;
    }
    exec::run(exec::cargo(None).current_dir(root).args([
        "build",
        "--quiet",
        "--package",
        E2E_CRATE,
        "--bins",
    ]))?;
    println!("demo: built in {:.0} s", started.elapsed().as_secs_f64());
    let mut command = std::process::Command::new(&demo);
    command.current_dir(root);
    if let Some(step) = step {
        command.args(["--step", &step.to_string()]);
    }
    if keep {
        command.arg("--keep");
    }
    exec::run(&mut command).context("the demo failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_options_reach_the_driver() {
        let none = BenchArgs {
            quick: false,
            out: None,
            only: None,
            soak: None,
            rounds: None,
            variant: None,
        };
        assert!(none.driver_args().is_empty());
        let all = BenchArgs {
            quick: true,
            only: Some("baseline,mesh_variant"),
            rounds: Some(8),
            variant: Some("AMBIT_X=1"),
            ..none
        };
        assert_eq!(
            all.driver_args(),
            [
                "--quick",
                "--only",
                "baseline,mesh_variant",
                "--rounds",
                "8",
                "--variant",
                "AMBIT_X=1"
            ]
        );
        let soak = BenchArgs {
            soak: Some(3600),
            ..none
        };
        assert_eq!(soak.driver_args(), ["--soak", "3600"]);
    }

    #[test]
    fn finds_the_bench_executable_in_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"ztunnel"},"executable":"/w/target/release/ztunnel","fresh":true}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"kind":["bench"],"name":"ambit-bench","src_path":"/w/tests/benches/ambit_bench.rs"},"profile":{},"executable":"/w/target/release/deps/ambit_bench-0123abcd","fresh":false}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            bench_executable(messages),
            Some(std::path::PathBuf::from(
                "/w/target/release/deps/ambit_bench-0123abcd"
            ))
        );
        assert_eq!(
            bench_executable(r#"{"reason":"build-finished","success":true}"#),
            None
        );
    }
}
