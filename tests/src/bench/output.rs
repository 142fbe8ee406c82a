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
    // ztunnel's memory by idle connections held: the medians of the rounds.
    let lines: Vec<plot::Line<'_>> = measured()
        .map(|(i, (s, c))| plot::Line {
            name: s.name,
            color: i,
            points: (RSS_HELD.iter())
                .filter_map(|&(count, key)| {
                    stats::median(c.runs.values(key)).map(|mib| (f64::from(count), mib))
                })
                .collect(),
        })
        .filter(|line| !line.points.is_empty())
        .collect();
    if !lines.is_empty() {
        write(
            "rss_by_connections.svg",
            &plot::growth(
                "ztunnel RSS (the larger node's) by idle proxied connections held",
                "connections held (log scale)",
                "MiB",
                &lines,
            )?,
        )?;
    }
    // Latency under load: the medians of the rounds, by offered rate.
    for (file, title, pick) in [
        (
            "latency_by_load_p50.svg",
            "1 KiB request/response p50 over 16 connections, by offered rate",
            (|k: &LoadKeys| k.p50) as fn(&LoadKeys) -> &'static str,
        ),
        (
            "latency_by_load_p99.svg",
            "1 KiB request/response p99 over 16 connections, by offered rate",
            |k: &LoadKeys| k.p99,
        ),
    ] {
        let lines: Vec<plot::Line<'_>> = measured()
            .map(|(i, (s, c))| plot::Line {
                name: s.name,
                color: i,
                points: (LOAD_RATES.iter())
                    .filter_map(|keys| {
                        stats::median(c.runs.values(pick(keys)))
                            .map(|us| (f64::from(keys.rate), us))
                    })
                    .collect(),
            })
            .filter(|line| !line.points.is_empty())
            .collect();
        if !lines.is_empty() {
            write(
                file,
                &plot::growth(
                    title,
                    "offered requests/s (log scale)",
                    "µs from the intended send time",
                    &lines,
                )?,
            )?;
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
