//! `cargo xtask bench`: the data path against a plaintext baseline on a
//! two-node testbed, in one run, as ratios (this machine is shared and noisy).
//!
//! Every round runs every scenario of [`scenario::SCENARIOS`] in turn
//! (baseline, mesh, ..., then again), so drift hits all alike; the report gives
//! each metric's median over the rounds and the runs themselves. Workloads:
//! single-stream bulk throughput (iperf3), open-loop request/response latency
//! at a fixed rate and over 16 connections at rising rates (`ambit-testbin
//! rr`, HDR histograms), new connections per
//! second (`ambit-testbin crr`), ztunnel CPU and memory from /proc, and HTTP
//! through the ztunnels with and without the waypoint (h2load against
//! `ambit-httpbin`: latency at a fixed rate, requests/s, the waypoint's CPU
//! and memory).
//!
//! The driver is the `ambit-bench` bench target of this crate (so it runs from
//! `target/release/deps` and finds the release `ztunnel`, `waypoint`,
//! `ambit-testbin` and `ambit-httpbin` next to it); `cargo xtask bench
//! [--quick] [--out DIR]` builds and runs it as root. It writes
//! `DIR/bench.json`, `DIR/bench.md` and SVG plots.

pub mod h2load;
pub mod host;
mod http;
pub mod iperf;
pub mod latency;
pub mod layout;
mod output;
pub mod plot;
pub mod report;
mod run;
pub mod scenario;
pub mod soak;
pub mod stats;

use std::path::PathBuf;

/// How much to measure.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Settings {
    /// `--quick`: fewer and shorter rounds, for development.
    pub quick: bool,
    /// Where the report goes.
    #[serde(skip)]
    pub out: PathBuf,
    /// Rounds of every scenario (the medians are over these).
    pub rounds: usize,
    /// Seconds of each iperf3 run.
    pub bulk_seconds: u32,
    /// Requests per second of the latency runs.
    pub rr_rate: u32,
    /// Requests per latency run (each size).
    pub rr_count: u32,
    /// Seconds of each rate of the latency-under-load runs (1 KiB over
    /// [`report::LOAD_CONNECTIONS`] connections at each of
    /// [`report::LOAD_RATES`]).
    pub load_seconds: u32,
    /// Seconds of bulk transfer into a slow reader (first round only).
    pub slow_seconds: u32,
    /// Connections per connection-rate run.
    pub crr_count: u32,
    /// Idle proxied connections held at once to read ztunnel's memory, one
    /// count after the other (the largest also gives memory per connection).
    pub held_connections: Vec<u32>,
    /// HTTP requests per second of the fixed-rate runs.
    pub http_rate: u32,
    /// HTTP requests per fixed-rate run (each protocol).
    pub http_requests: u32,
    /// Seconds of each closed-loop HTTP run (after a 0.5 s warm-up).
    pub http_seconds: u32,
    /// `--only`: the scenarios to run (empty: all of them).
    pub only: Vec<String>,
    /// `--soak SECONDS`: instead of the rounds, a soak this long
    /// ([`soak`]).
    pub soak: Option<u64>,
    /// `--variant KEY=VALUE,...`: the environment that the
    /// [`scenario::MESH_VARIANT`] ztunnels get on top of
    /// [`scenario::MESH_NO_SOCKMAP`]'s (empty: that scenario does not run).
    pub variant: Vec<(String, String)>,
}

impl Settings {
    /// The full run: about 10 minutes on a 2-core machine.
    pub fn full(out: PathBuf) -> Self {
        Self {
            quick: false,
            out,
            rounds: 5,
            bulk_seconds: 5,
            rr_rate: 2000,
            rr_count: 10_000,
            load_seconds: 5,
            slow_seconds: 60,
            crr_count: 5000,
            held_connections: report::RSS_HELD.iter().map(|&(n, _)| n).collect(),
            http_rate: 1000,
            http_requests: 5000,
            http_seconds: 3,
            only: Vec::new(),
            soak: None,
            variant: Vec::new(),
        }
    }

    /// `--quick`: about two and a half minutes.
    pub fn quick(out: PathBuf) -> Self {
        Self {
            quick: true,
            out,
            rounds: 3,
            bulk_seconds: 2,
            rr_rate: 2000,
            rr_count: 3000,
            load_seconds: 2,
            slow_seconds: 10,
            crr_count: 2000,
            held_connections: report::RSS_HELD.iter().map(|&(n, _)| n).collect(),
            http_rate: 1000,
            http_requests: 2000,
            http_seconds: 2,
            only: Vec::new(),
            soak: None,
            variant: Vec::new(),
        }
    }

    /// `--soak SECONDS`: one cycle of short workloads after the other (about
    /// 15 s each) for `seconds`.
    pub fn soak(out: PathBuf, seconds: u64) -> Self {
        Self {
            quick: false,
            out,
            rounds: 1,
            bulk_seconds: 2,
            rr_rate: 1000,
            rr_count: 1000,
            load_seconds: 1,
            slow_seconds: 2,
            crr_count: 200,
            held_connections: Vec::new(),
            http_rate: 500,
            http_requests: 500,
            http_seconds: 1,
            only: Vec::new(),
            soak: Some(seconds),
            variant: Vec::new(),
        }
    }

    /// From the command line: `[--quick] [--out DIR] [--only NAME,...]
    /// [--rounds N] [--variant KEY=VALUE,...]` (and `--bench`, which `cargo
    /// bench` adds).
    pub fn from_args(args: &[String]) -> Result<Self, String> {
        let mut quick = false;
        let mut out = None;
        let mut only = Vec::new();
        let mut soak = None;
        let mut variant = Vec::new();
        let mut rounds = None;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--bench" => {}
                "--only" => {
                    let list = args.next().ok_or("--only needs scenario names")?;
                    for name in list.split(',').filter(|n| !n.is_empty()) {
                        if !run::scenario_names().any(|known| known == name) {
                            return Err(format!(
                                "--only: no scenario {name:?} (there are {})",
                                run::scenario_names().collect::<Vec<_>>().join(", ")
                            ));
                        }
                        only.push(name.to_owned());
                    }
                }
                "--out" => {
                    out = Some(PathBuf::from(args.next().ok_or("--out needs a directory")?));
                }
                "--rounds" => {
                    let n = args.next().ok_or("--rounds needs a number")?;
                    rounds = Some(
                        n.parse::<usize>()
                            .ok()
                            .filter(|n| (1..=100).contains(n))
                            .ok_or_else(|| format!("--rounds {n:?}: expected 1 to 100"))?,
                    );
                }
                "--variant" => {
                    let list = args.next().ok_or("--variant needs KEY=VALUE,...")?;
                    variant = parse_variant(list)?;
                }
                "--soak" => {
                    let seconds = args.next().ok_or("--soak needs a number of seconds")?;
                    soak = Some(
                        seconds
                            .parse::<u64>()
                            .ok()
                            .filter(|s| *s >= 30)
                            .ok_or_else(|| {
                                format!("--soak {seconds:?}: expected seconds, at least 30")
                            })?,
                    );
                }
                other => match other.strip_prefix("--out=") {
                    Some(dir) => out = Some(PathBuf::from(dir)),
                    None => return Err(format!("unknown argument {other:?}")),
                },
            }
        }
        let out = out.unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench"))
        });
        if let Some(seconds) = soak {
            if quick || !only.is_empty() || !variant.is_empty() || rounds.is_some() {
                return Err(
                    "--soak runs alone: no --quick, --only, --rounds or --variant with it"
                        .to_owned(),
                );
            }
            return Ok(Self::soak(out, seconds));
        }
        let mut settings = if quick {
            Self::quick(out)
        } else {
            Self::full(out)
        };
        settings.only = only;
        settings.variant = variant;
        if let Some(rounds) = rounds {
            settings.rounds = rounds;
        }
        let named = |name: &str| settings.only.iter().any(|n| n == name);
        if settings.variant.is_empty() && named(scenario::MESH_VARIANT) {
            return Err(format!(
                "--only {}: that scenario runs only with --variant KEY=VALUE,...",
                scenario::MESH_VARIANT
            ));
        }
        if !settings.variant.is_empty()
            && !settings.only.is_empty()
            && (!named(scenario::MESH_VARIANT) || !named(scenario::MESH_NO_SOCKMAP))
        {
            return Err(format!(
                "--variant compares {} with {} round by round: --only must name both",
                scenario::MESH_VARIANT,
                scenario::MESH_NO_SOCKMAP
            ));
        }
        Ok(settings)
    }

    /// Whether the scenario `name` runs.
    pub fn selects(&self, name: &str) -> bool {
        if name == scenario::MESH_VARIANT && self.variant.is_empty() {
            return false;
        }
        self.only.is_empty() || self.only.iter().any(|n| n == name)
    }

    /// `--variant` as it was given: "KEY=VALUE, ...".
    pub fn variant_text(&self) -> String {
        self.variant
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `--variant KEY=VALUE,...`: environment variables of ztunnel (upper-case
/// letters, digits and `_`), each once.
fn parse_variant(list: &str) -> Result<Vec<(String, String)>, String> {
    let mut variant: Vec<(String, String)> = Vec::new();
    for item in list.split(',').filter(|item| !item.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("--variant {item:?}: expected KEY=VALUE"));
        };
        let valid = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(format!(
                "--variant {item:?}: {key:?} is not an environment variable name \
                 (upper-case letters, digits and _)"
            ));
        }
        if variant.iter().any(|(k, _)| k == key) {
            return Err(format!("--variant: {key} is given twice"));
        }
        variant.push((key.to_owned(), value.to_owned()));
    }
    if variant.is_empty() {
        return Err("--variant needs KEY=VALUE,...".to_owned());
    }
    Ok(variant)
}

/// The `ambit-bench` entry point.
pub fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, file] = args.as_slice()
        && flag == "--code-layout"
    {
        return code_layout(std::path::Path::new(file));
    }
    let settings = match Settings::from_args(&args) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!(
                "ambit-bench: {error}\nusage: ambit-bench [--quick] [--out DIR] [--only NAME,...] \
                 [--rounds N] [--variant KEY=VALUE,...] | [--out DIR] --soak SECONDS | \
                 --code-layout FILE"
            );
            return std::process::ExitCode::from(2);
        }
    };
    if !crate::testbed::privileged("ambit-bench") {
        eprintln!("ambit-bench: run it as root, through `cargo xtask bench`");
        return std::process::ExitCode::FAILURE;
    }
    if let Some(seconds) = settings.soak {
        return match soak::soak(&settings, seconds) {
            Ok(report) => {
                println!("{}", report.to_markdown());
                eprintln!("ambit-bench: wrote {}", settings.out.display());
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("ambit-bench: soak: {error}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match run::run(&settings) {
        Ok(markdown) => {
            println!("{markdown}");
            eprintln!("ambit-bench: wrote {}", settings.out.display());
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ambit-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--code-layout FILE`: profiles what a node runs and writes the linker
/// script of the release build's code layout ([`layout`]).
fn code_layout(file: &std::path::Path) -> std::process::ExitCode {
    if !crate::testbed::privileged("ambit-bench") {
        eprintln!("ambit-bench: run it as root, through `cargo xtask bench --code-layout`");
        return std::process::ExitCode::FAILURE;
    }
    match layout::profile(file) {
        Ok(layout) => {
            eprintln!(
                "ambit-bench: wrote {}: {} sections, {} KiB of {} KiB of code",
                file.display(),
                layout.sections.len(),
                layout.bytes / 1024,
                layout.text_bytes / 1024
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ambit-bench: code layout: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|&s| s.to_owned()).collect()
    }

    #[test]
    fn arguments() {
        let s = Settings::from_args(&args(&["--bench", "--quick", "--out", "/tmp/x"])).expect("ok");
        assert_eq!(s, Settings::quick(PathBuf::from("/tmp/x")));
        let s = Settings::from_args(&args(&["--out=/tmp/y"])).expect("ok");
        assert_eq!(s, Settings::full(PathBuf::from("/tmp/y")));
        assert!(
            Settings::from_args(&args(&[]))
                .expect("ok")
                .out
                .ends_with("target/bench")
        );
        assert!(Settings::from_args(&args(&["--out"])).is_err());
        assert!(Settings::from_args(&args(&["--fast"])).is_err());
        let s = Settings::from_args(&args(&["--only", "mesh_http,mesh_waypoint"])).expect("ok");
        assert!(s.selects("mesh_waypoint") && !s.selects("baseline"));
        assert!(Settings::full(PathBuf::new()).selects("baseline"));
        let error = Settings::from_args(&args(&["--only", "mesh_htp"])).expect_err("a typo");
        assert!(
            error.contains("mesh_htp") && error.contains("mesh_http"),
            "{error}"
        );
        let s = Settings::from_args(&args(&["--quick", "--rounds", "8"])).expect("ok");
        assert_eq!(
            (s.rounds, s.bulk_seconds),
            (8, Settings::quick(PathBuf::new()).bulk_seconds)
        );
        let s = Settings::from_args(&args(&["--soak", "3600", "--out", "/tmp/s"])).expect("ok");
        assert_eq!(s, Settings::soak(PathBuf::from("/tmp/s"), 3600));
        for bad in [
            &["--soak"][..],
            &["--soak", "10"],
            &["--soak", "x"],
            &["--soak", "60", "--quick"],
            &["--soak", "60", "--variant", "A=1"],
            &["--soak", "60", "--rounds", "3"],
            &["--rounds", "0"],
            &["--rounds"],
        ] {
            assert!(Settings::from_args(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_variant_is_an_environment_and_runs_next_to_mesh_no_sockmap() {
        let s = Settings::from_args(&args(&["--quick", "--variant", "AMBIT_X=1,AMBIT_Y=a=b"]))
            .expect("ok");
        assert_eq!(
            s.variant,
            [
                ("AMBIT_X".to_owned(), "1".to_owned()),
                ("AMBIT_Y".to_owned(), "a=b".to_owned())
            ]
        );
        assert_eq!(s.variant_text(), "AMBIT_X=1, AMBIT_Y=a=b");
        assert!(s.selects(scenario::MESH_VARIANT) && s.selects(scenario::BASELINE));
        assert!(!Settings::quick(PathBuf::new()).selects(scenario::MESH_VARIANT));
        let s = Settings::from_args(&args(&[
            "--only",
            "mesh_no_sockmap,mesh_variant",
            "--variant",
            "AMBIT_X=",
        ]))
        .expect("an empty value is a value");
        assert!(s.selects(scenario::MESH_VARIANT) && !s.selects(scenario::BASELINE));
        for (bad, says) in [
            (&["--variant"][..], "KEY=VALUE"),
            (&["--variant", ","], "KEY=VALUE"),
            (&["--variant", "AMBIT_X"], "expected KEY=VALUE"),
            (&["--variant", "ambit_x=1"], "\"ambit_x\" is not"),
            (&["--variant", "=1"], "\"\" is not"),
            (&["--variant", "A=1,A=2"], "A is given twice"),
            (&["--only", "mesh_variant"], "only with --variant"),
            (
                &["--only", "mesh_variant", "--variant", "A=1"],
                "must name both",
            ),
        ] {
            let error = Settings::from_args(&args(bad)).expect_err("refused");
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }

    #[test]
    fn every_mode_repeats_at_least_three_times() {
        for s in [
            Settings::quick(PathBuf::new()),
            Settings::full(PathBuf::new()),
        ] {
            assert!(s.rounds >= 3);
            assert!(s.rr_count >= 1000 && s.held_connections.last() == Some(&10_000));
            // The targets are at 1,000 requests/s; a p99 wants 10 above it.
            assert_eq!(s.http_rate, 1000);
            assert!(s.http_requests >= 1000);
        }
    }
}
