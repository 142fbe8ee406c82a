//! `cargo xtask bench --soak SECONDS`: steady mixed load through the mesh
//! for a long time, watching what must not drift: the ztunnels' and the
//! waypoint's resident memory after warm-up, errors, file descriptors.
//!
//! Each cycle runs, one after the other, from the enrolled `client` pod:
//! bulk (iperf3 to `server` through both ztunnels), 1 KiB request/response
//! at a fixed rate, connection churn (connect, one exchange, close), and
//! HTTP/1.1 and HTTP/2 with a JWT through the waypoint to the Service
//! `demo/api` (fixed rate, then closed loop). Memory is sampled after each
//! cycle; the first tenth of the run (at least one cycle) is warm-up.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    Settings, host,
    run::{Bench, Nodes},
    scenario::{Dataplane, Route},
};

/// Largest RSS growth after warm-up that passes, percent.
pub const MAX_RSS_GROWTH_PCT: f64 = 5.0;
/// How long the pools may take to close their connections after the load:
/// the waypoint's upstream connections close 60 s (swept every 10 s) after
/// their last request, and only then does the HBONE connection under them
/// start its own 60 s idle time.
const FD_SETTLE: Duration = Duration::from_secs(150);

/// The processes watched.
#[derive(Debug, Clone, Serialize)]
struct Watched {
    name: String,
    pid: u32,
}

/// Memory of every watched process at one moment.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    /// Seconds since the load started.
    at_s: f64,
    /// RSS per watched process, KiB (in [`SoakReport::processes`] order).
    rss_kib: Vec<u64>,
}

/// What a soak found.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    commit: Option<String>,
    load_before: f64,
    load_after: f64,
    seconds: f64,
    cycles: usize,
    warmup_cycles: usize,
    processes: Vec<String>,
    samples: Vec<Sample>,
    /// Per process: RSS growth from the end of warm-up to the end, percent
    /// (medians of the three samples at each end).
    rss_growth_pct: Vec<f64>,
    /// Failed workloads: how many times, and the first error.
    errors: BTreeMap<String, (usize, String)>,
    /// Open descriptors per process before the load and after it settled.
    fds_before: Vec<usize>,
    fds_after: Vec<usize>,
}

impl SoakReport {
    /// Whether every target holds: RSS growth under [`MAX_RSS_GROWTH_PCT`],
    /// no error, descriptors back to their baseline.
    pub fn passed(&self) -> bool {
        self.rss_growth_pct.iter().all(|g| *g < MAX_RSS_GROWTH_PCT)
            && self.errors.is_empty()
            && self.fds_back()
    }

    fn fds_back(&self) -> bool {
        self.fds_before
            .iter()
            .zip(&self.fds_after)
            .all(|(before, after)| after <= before)
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Soak\n\n{:.0} s of mixed load ({} cycles, the first {} warm-up) at commit `{}`, \
             load average {:.1} before and {:.1} after.\n",
            self.seconds,
            self.cycles,
            self.warmup_cycles,
            self.commit.as_deref().unwrap_or("?"),
            self.load_before,
            self.load_after,
        );
        md.push_str("| process | RSS after warm-up, MiB | RSS at the end, MiB | peak, MiB | growth | fds before | fds after |\n|---|---:|---:|---:|---:|---:|---:|\n");
        let warm = self
            .samples
            .get(self.warmup_cycles.min(self.samples.len().saturating_sub(1)));
        for (i, name) in self.processes.iter().enumerate() {
            let mib = |s: Option<&Sample>| {
                s.and_then(|s| s.rss_kib.get(i))
                    .map_or(0.0, |k| *k as f64 / 1024.0)
            };
            let peak = self
                .samples
                .iter()
                .filter_map(|s| s.rss_kib.get(i))
                .max()
                .map_or(0.0, |k| *k as f64 / 1024.0);
            let _ = writeln!(
                md,
                "| {name} | {:.1} | {:.1} | {peak:.1} | {:+.1}% | {} | {} |",
                mib(warm),
                mib(self.samples.last()),
                self.rss_growth_pct.get(i).copied().unwrap_or(0.0),
                self.fds_before.get(i).copied().unwrap_or(0),
                self.fds_after.get(i).copied().unwrap_or(0),
            );
        }
        md.push('\n');
        if self.errors.is_empty() {
            md.push_str("No workload failed.\n");
        } else {
            for (what, (count, first)) in &self.errors {
                let _ = writeln!(md, "- {what} failed {count} times; first: {first}");
            }
        }
        let _ = writeln!(
            md,
            "\nTargets: RSS growth after warm-up < {MAX_RSS_GROWTH_PCT}% ({}), 0 errors ({}), \
             descriptors back to their baseline ({}): **{}**.",
            if self.rss_growth_pct.iter().all(|g| *g < MAX_RSS_GROWTH_PCT) {
                "pass"
            } else {
                "miss"
            },
            if self.errors.is_empty() {
                "pass"
            } else {
                "miss"
            },
            if self.fds_back() { "pass" } else { "miss" },
            if self.passed() { "pass" } else { "miss" },
        );
        md
    }
}

/// Growth from the first to the last three samples' medians, percent.
fn growth_pct(series: &[u64]) -> f64 {
    let median = |s: &[u64]| {
        let values: Vec<f64> = s.iter().map(|&v| v as f64).collect();
        super::stats::median(&values).unwrap_or(0.0)
    };
    let n = series.len().min(3);
    if n == 0 {
        return 0.0;
    }
    let (first, last) = (median(&series[..n]), median(&series[series.len() - n..]));
    if first == 0.0 {
        return 0.0;
    }
    (last - first) / first * 100.0
}

/// Runs the soak for `seconds` and writes `soak.json` and `soak.md` into
/// `settings.out`.
pub(super) fn soak(settings: &Settings, seconds: u64) -> Result<SoakReport, String> {
    let load_before = host::load_average();
    // The commit the binaries were built from: the tree may move meanwhile.
    let commit = host::git_commit(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    let bench = Bench::new(settings)?;
    let nodes = Nodes::start(
        bench.bed(),
        bench.config(),
        Dataplane::Mesh {
            sockmap: false,
            waypoint: true,
            variant: false,
        },
        &[],
    )?;
    let mut watched: Vec<Watched> = nodes
        .ztunnel_pids()
        .into_iter()
        .zip(["ztunnel a", "ztunnel b"])
        .map(|(pid, name)| Watched {
            name: name.to_owned(),
            pid,
        })
        .collect();
    if let Some(pid) = nodes.waypoint_pid() {
        watched.push(Watched {
            name: "waypoint".to_owned(),
            pid,
        });
    }
    let fds_before: Vec<usize> = watched.iter().map(|w| host::open_fds(w.pid)).collect();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut errors: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut failed = |what: &str, error: String| {
        eprintln!("ambit-bench: soak: {what} failed: {error}");
        errors
            .entry(what.to_owned())
            .and_modify(|(n, _)| *n += 1)
            .or_insert((1, error));
    };
    let mut cycles = 0;
    let mut warmup_cycles = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        if let Err(e) = bench.bulk("client", "server", 1) {
            failed("bulk", e);
        }
        if let Err(e) = bench.latency("client", "server", 1024) {
            failed("1 KiB request/response", e);
        }
        if let Err(e) = bench.crr("client", "server") {
            failed("connection churn", e);
        }
        for (what, error) in bench.http("client", Route::Service, &nodes).failures {
            failed(&format!("HTTP through the waypoint: {what}"), error);
        }
        cycles += 1;
        let at_s = started.elapsed().as_secs_f64();
        if at_s < seconds as f64 / 10.0 || cycles == 1 {
            warmup_cycles = cycles;
        }
        let rss_kib = watched
            .iter()
            .map(|w| host::rss_kib(w.pid))
            .collect::<Result<Vec<_>, _>>()?;
        eprintln!(
            "ambit-bench: soak cycle {cycles} at {at_s:.0} s: RSS {} KiB",
            rss_kib
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" / ")
        );
        samples.push(Sample { at_s, rss_kib });
    }
    let soaked = started.elapsed().as_secs_f64();
    // Descriptors: wait for the pools' idle connections to close.
    let deadline = Instant::now() + FD_SETTLE;
    let mut fds_after: Vec<usize> = watched.iter().map(|w| host::open_fds(w.pid)).collect();
    while Instant::now() < deadline && fds_after.iter().zip(&fds_before).any(|(a, b)| a > b) {
        std::thread::sleep(Duration::from_secs(1));
        fds_after = watched.iter().map(|w| host::open_fds(w.pid)).collect();
    }
    let after_warmup = &samples[warmup_cycles.min(samples.len().saturating_sub(1))..];
    let rss_growth_pct = (0..watched.len())
        .map(|i| {
            let series: Vec<u64> = after_warmup
                .iter()
                .filter_map(|s| s.rss_kib.get(i).copied())
                .collect();
            growth_pct(&series)
        })
        .collect();
    nodes.stop();
    let report = SoakReport {
        commit,
        load_before,
        load_after: host::load_average(),
        seconds: soaked,
        cycles,
        warmup_cycles,
        processes: watched.into_iter().map(|w| w.name).collect(),
        samples,
        rss_growth_pct,
        errors,
        fds_before,
        fds_after,
    };
    let out = &settings.out;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(out.join("soak.json"), format!("{json}\n"))
        .and_then(|()| std::fs::write(out.join("soak.md"), report.to_markdown()))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_compares_the_medians_of_the_ends() {
        assert!((growth_pct(&[100, 100, 100, 104, 104, 104]) - 4.0).abs() < 1e-9);
        // One spike at either end does not move a median of three.
        assert!(growth_pct(&[100, 300, 100, 100, 100, 90, 100]).abs() < 1e-9);
        assert!(growth_pct(&[]).abs() < 1e-9);
    }

    #[test]
    fn the_verdict_needs_all_three_targets() {
        let report = |growth: f64, errors: usize, fds_after: usize| SoakReport {
            commit: None,
            load_before: 0.0,
            load_after: 0.0,
            seconds: 60.0,
            cycles: 4,
            warmup_cycles: 1,
            processes: vec!["ztunnel a".to_owned()],
            samples: Vec::new(),
            rss_growth_pct: vec![growth],
            errors: (0..errors)
                .map(|i| (format!("w{i}"), (1, "boom".to_owned())))
                .collect(),
            fds_before: vec![20],
            fds_after: vec![fds_after],
        };
        assert!(report(1.0, 0, 20).passed());
        assert!(!report(6.0, 0, 20).passed(), "memory grew");
        assert!(!report(1.0, 1, 20).passed(), "an error");
        assert!(!report(1.0, 0, 21).passed(), "a descriptor leaked");
        assert!(report(6.0, 1, 21).to_markdown().contains("**miss**"));
    }
}
