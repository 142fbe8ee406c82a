//! Writing a run's report: `bench.json`, `bench.md` and the SVG plots.

use std::path::Path;

use hdrhistogram::Histogram;

use super::{
    h2load::Protocol,
    latency, plot,
    report::{LOAD_RATES, LoadKeys, RSS_HELD, Report, THROUGHPUT, THROUGHPUT_P4, THROUGHPUT_P16},
    run::Collected,
    scenario::{SCENARIOS, Workload},
    stats,
};

/// Writes `bench.json`, `bench.md` and the plots into `out`.
pub(super) fn write(out: &Path, report: &Report, collected: &[Collected]) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let write = |name: &str, contents: &str| {
        let path = out.join(name);
        std::fs::write(&path, contents).map_err(|e| format!("{}: {e}", path.display()))
    };
    let json = serde_json::to_string_pretty(&report.to_json()).map_err(|e| e.to_string())?;
    write("bench.json", &format!("{json}\n"))?;
    write("bench.md", &report.to_markdown())?;
    // Colors follow the scenario's place in SCENARIOS, the same in every plot.
    let measured = || {
        SCENARIOS
            .iter()
            .zip(collected)
            .enumerate()
            .filter(|(_, (s, _))| s.unavailable.is_none())
    };
    for (file, title, pick) in [
        (
            "latency_cdf_1kib.svg",
            "1 KiB request/response latency CDF (all rounds)",
            (|c: &Collected| &c.latency_1k) as fn(&Collected) -> &Vec<Histogram<u64>>,
        ),
        (
            "latency_cdf_1b.svg",
            "1 B request/response latency CDF (all rounds)",
            |c: &Collected| &c.latency_1b,
        ),
    ] {
        let lines: Vec<plot::Line<'_>> = measured()
            .filter(|(_, (_, c))| !pick(c).is_empty())
            .map(|(i, (s, c))| plot::Line {
                name: s.name,
                color: i,
                points: latency::cdf(&latency::merge(pick(c))),
            })
            .collect();
        if !lines.is_empty() {
            write(
                file,
                &plot::latency_cdf(title, plot::FROM_INTENDED_SEND, &lines)?,
            )?;
        }
    }
    http_cdf(out, collected)?;
    // Growth plots, the medians of the rounds: ztunnel's memory by idle
    // connections held, latency under load by offered rate.
    let by_rate = |pick: fn(&LoadKeys) -> &'static str| -> Vec<(u32, &'static str)> {
        LOAD_RATES.iter().map(|k| (k.rate, pick(k))).collect()
    };
    for (file, title, x_desc, y_desc, keys) in [
        (
            "rss_by_connections.svg",
            "ztunnel RSS (the larger node's) by idle proxied connections held",
            "connections held (log scale)",
            "MiB",
            RSS_HELD.to_vec(),
        ),
        (
            "latency_by_load_p50.svg",
            "1 KiB request/response p50 over 16 connections, by offered rate",
            "offered requests/s (log scale)",
            "µs from the intended send time",
            by_rate(|k| k.p50),
        ),
        (
            "latency_by_load_p99.svg",
            "1 KiB request/response p99 over 16 connections, by offered rate",
            "offered requests/s (log scale)",
            "µs from the intended send time",
            by_rate(|k| k.p99),
        ),
    ] {
        let lines: Vec<plot::Line<'_>> = measured()
            .map(|(i, (s, c))| plot::Line {
                name: s.name,
                color: i,
                points: (keys.iter())
                    .filter_map(|&(x, key)| {
                        stats::median(c.runs.values(key)).map(|y| (f64::from(x), y))
                    })
                    .collect(),
            })
            .filter(|line| !line.points.is_empty())
            .collect();
        if !lines.is_empty() {
            write(file, &plot::growth(title, x_desc, y_desc, &lines)?)?;
        }
    }
    for (file, title, key, workload) in [
        (
            "throughput.svg",
            "Single-stream bulk throughput (iperf3)",
            THROUGHPUT,
            Workload::Bulk,
        ),
        (
            "throughput_p4.svg",
            "Bulk throughput, 4 parallel streams (iperf3 -P 4)",
            THROUGHPUT_P4,
            Workload::ParallelBulk,
        ),
        (
            "throughput_p16.svg",
            "Bulk throughput, 16 parallel streams (iperf3 -P 16)",
            THROUGHPUT_P16,
            Workload::ParallelBulk,
        ),
    ] {
        let bars: Vec<plot::Bar<'_>> = measured()
            .filter(|(_, (s, _))| s.workloads.contains(&workload))
            .map(|(i, (s, c))| {
                let values = c.runs.values(key);
                plot::Bar {
                    name: s.name,
                    color: i,
                    value: stats::median(values).zip(stats::spread(values)).map(
                        |(median, spread)| plot::BarValue {
                            median,
                            min: spread.min,
                            max: spread.max,
                        },
                    ),
                }
            })
            .collect();
        if !bars.is_empty() {
            write(file, &plot::throughput_bars(title, &bars)?)?;
        }
    }
    Ok(())
}

/// `latency_cdf_http.svg`: a line per HTTP scenario and protocol, all rounds
/// merged; HTTP/2 lines take colors after the scenarios'.
fn http_cdf(out: &Path, collected: &[Collected]) -> Result<(), String> {
    let mut lines = Vec::new();
    for (i, (scenario, c)) in SCENARIOS.iter().zip(collected).enumerate() {
        for (k, protocol) in Protocol::ALL.into_iter().enumerate() {
            let runs: Vec<&Histogram<u64>> = c
                .latency_http
                .iter()
                .filter(|(p, _)| *p == protocol)
                .map(|(_, h)| h)
                .collect();
            if !runs.is_empty() {
                lines.push((
                    format!("{} {}", scenario.name, protocol.label()),
                    i + k * SCENARIOS.len(),
                    latency::cdf(&latency::merge(runs)),
                ));
            }
        }
    }
    if lines.is_empty() {
        return Ok(());
    }
    let lines: Vec<plot::Line<'_>> = lines
        .iter()
        .map(|(name, color, points)| plot::Line {
            name,
            color: *color,
            points: points.clone(),
        })
        .collect();
    let svg = plot::latency_cdf(
        "HTTP latency CDF at 1,000 requests/s (h2load, all rounds)",
        "latency from when h2load sent the request, µs (log scale)",
        &lines,
    )?;
    let path = out.join("latency_cdf_http.svg");
    std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        host::Machine,
        report::{LOAD_RATES, RSS_HELD},
        scenario::MESH_NO_SOCKMAP,
    };

    #[test]
    fn growth_plots_are_written_for_what_was_measured() {
        let mut collected: Vec<Collected> =
            SCENARIOS.iter().map(|_| Collected::default()).collect();
        let Some(i) = SCENARIOS.iter().position(|s| s.name == MESH_NO_SOCKMAP) else {
            panic!("no {MESH_NO_SOCKMAP} scenario");
        };
        for (n, (count, key)) in RSS_HELD.iter().enumerate() {
            collected[i]
                .runs
                .push(key, 20.0 + n as f64 * f64::from(*count) / 100.0);
        }
        collected[i].runs.push(LOAD_RATES[0].p99, 700.0);
        collected[i].runs.push(LOAD_RATES[1].p99, 1500.0);
        let report = Report {
            machine: Machine::current(),
            commit: None,
            settings: serde_json::json!({}),
            duration_s: 1.0,
            scenarios: Vec::new(),
            notes: Vec::new(),
            variant: String::new(),
        };
        let out = std::env::temp_dir().join(format!("ambit-output-test-{}", std::process::id()));
        let written = write(&out, &report, &collected);
        let read = |name: &str| std::fs::read_to_string(out.join(name)).ok();
        let (rss, p99, p50) = (
            read("rss_by_connections.svg"),
            read("latency_by_load_p99.svg"),
            read("latency_by_load_p50.svg"),
        );
        let _ = std::fs::remove_dir_all(&out);
        assert_eq!(written, Ok(()));
        for svg in [&rss, &p99] {
            assert!(
                svg.as_deref().is_some_and(|s| s.contains(MESH_NO_SOCKMAP)),
                "a plot with the measured scenario's line"
            );
        }
        assert_eq!(p50, None, "no p50 measured: no plot");
    }
}
