//! Request/response latency: the output of `ambit-testbin rr` and the HDR
//! histograms behind it.

use hdrhistogram::Histogram;

/// The largest latency recorded, in nanoseconds: a minute.
pub const MAX_NS: u64 = 60_000_000_000;

/// One `rr` run: its percentiles (microseconds) and its histogram
/// (nanoseconds).
#[derive(Debug, Clone)]
pub struct LatencyRun {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Every latency of the run, in nanoseconds.
    pub histogram: Histogram<u64>,
}

/// An empty histogram with the bounds every latency is recorded with
/// (`ambit-testbin rr` too).
pub fn empty_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("constant bounds are valid")
}

/// Parses what `ambit-testbin rr` printed: its summary line and its
/// `histogram <ns>:<count> ...` line. The percentiles are recomputed from the
/// histogram, so both always agree.
pub fn parse(output: &str) -> Result<LatencyRun, String> {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("histogram "))
        .ok_or_else(|| format!("no histogram line in {output:?}"))?;
    let mut histogram = empty_histogram();
    for bucket in line.split_whitespace() {
        let (value, count) = bucket
            .split_once(':')
            .ok_or_else(|| format!("bad histogram bucket {bucket:?}"))?;
        let value: u64 = value
            .parse()
            .map_err(|e| format!("bad histogram value {value:?}: {e}"))?;
        let count: u64 = count
            .parse()
            .map_err(|e| format!("bad histogram count {count:?}: {e}"))?;
        histogram
            .record_n(value.clamp(1, MAX_NS), count)
            .map_err(|e| format!("histogram bucket {bucket:?}: {e:?}"))?;
    }
    if histogram.is_empty() {
        return Err(format!("an empty latency histogram in {output:?}"));
    }
    Ok(from_histogram(histogram))
}

/// The percentiles of `histogram` (nanoseconds), in microseconds.
pub fn from_histogram(histogram: Histogram<u64>) -> LatencyRun {
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1e3;
    LatencyRun {
        p50_us: us(0.50),
        p90_us: us(0.90),
        p99_us: us(0.99),
        p999_us: us(0.999),
        histogram,
    }
}

/// Every run's latencies in one histogram.
pub fn merge<'a>(runs: impl IntoIterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut merged = empty_histogram();
    for run in runs {
        merged
            .add(run)
            .expect("histograms with the same bounds always add");
    }
    merged
}

/// The cumulative distribution of `histogram` as (latency in microseconds,
/// fraction of requests at or below it) points, for plotting.
pub fn cdf(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    histogram
        .iter_quantiles(4)
        .map(|v| (v.value_iterated_to() as f64 / 1e3, v.quantile_iterated_to()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "rr count=10 size=1024 rate=2000 p50_us=1.0 p90_us=9.0 p99_us=9.0 p999_us=9.0 max_us=9.0\n\
                          histogram 1000:5 2000:4 9000:1\n";

    #[test]
    fn parses_the_histogram_and_recomputes_percentiles() {
        let run = parse(OUTPUT).expect("parses");
        assert_eq!(run.histogram.len(), 10);
        assert!((run.p50_us - 1.0).abs() < 0.01, "{}", run.p50_us);
        assert!((run.p90_us - 2.0).abs() < 0.01, "{}", run.p90_us);
        assert!((run.p99_us - 9.0).abs() < 0.01, "{}", run.p99_us);
    }

    #[test]
    fn rejects_output_without_a_histogram() {
        assert!(parse("rr count=1 p50_us=3").is_err());
        assert!(parse("histogram ").is_err());
        assert!(parse("histogram 12:x").is_err());
    }

    #[test]
    fn merging_adds_counts_and_the_cdf_reaches_one() {
        let a = parse(OUTPUT).expect("parses");
        let b = parse("histogram 100000:10").expect("parses");
        let merged = merge([&a.histogram, &b.histogram]);
        assert_eq!(merged.len(), 20);
        let points = cdf(&merged);
        assert!(
            points
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
        );
        let last = points.last().expect("points");
        assert!(
            (last.1 - 1.0).abs() < 1e-9 && (last.0 - 100.0).abs() < 0.1,
            "{last:?}"
        );
    }
}
