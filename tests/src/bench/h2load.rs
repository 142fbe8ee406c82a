//! h2load (Debian's nghttp2-client), the closed-loop HTTP load: its command
//! line and what it reports. As fast as it goes (`-D`), h2load's own
//! requests/s over the main duration, after a warm-up.
//!
//! The fixed-rate runs use `ambit-httpbin load` instead ([`crate::load`]):
//! h2load's `--rps` sends in bursts about every 10 ms. Both write the same
//! per-request log, read by [`parse_log`] into an HDR histogram.

use hdrhistogram::Histogram;

use super::latency::empty_histogram;

/// Which HTTP h2load speaks (to an `http://` URL: no TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive (`--h1`), one request at a time per connection.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), many streams per connection.
    Http2,
}

impl Protocol {
    /// Both, in the order every round runs them.
    pub const ALL: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];

    /// For the report.
    pub fn label(self) -> &'static str {
        match self {
            Self::Http1 => "HTTP/1.1",
            Self::Http2 => "HTTP/2",
        }
    }

    /// Connections and streams per connection at a fixed rate. HTTP/1.1: ten
    /// keep-alive connections taking the requests in turn, so each carries
    /// 1/10 of the rate and a request waits only behind one that took 10 ms
    /// (at 1,000/s). HTTP/2: one connection, a stream per request, as an
    /// HTTP/2 client multiplexes.
    pub(crate) fn fixed_rate_shape(self) -> (u32, u32) {
        match self {
            Self::Http1 => (10, 1),
            Self::Http2 => (1, 100),
        }
    }

    /// Connections and streams per connection as fast as it goes: enough
    /// requests in flight to keep one proxy thread busy (16 either way), not
    /// so many that queueing alone sets the latency.
    fn closed_loop_shape(self) -> (u32, u32) {
        match self {
            Self::Http1 => (16, 1),
            Self::Http2 => (4, 4),
        }
    }
}

/// A closed-loop run: as fast as it goes for `seconds`, after `warm_up_ms`
/// that are not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedLoop {
    /// The measured duration.
    pub seconds: u32,
    /// The warm-up before it.
    pub warm_up_ms: u32,
}

/// The arguments of one h2load run (after the program name): one thread,
/// `header` on every request, GET `url`.
pub fn args(protocol: Protocol, load: ClosedLoop, url: &str, header: &str) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    if protocol == Protocol::Http1 {
        args.push("--h1".to_owned());
    }
    // A connection silent for 5 s is a stall: h2load counts its requests as
    // timed out instead of waiting until the driver kills it.
    args.extend(["-t1", "-N5s"].map(str::to_owned));
    let (connections, streams) = protocol.closed_loop_shape();
    args.extend([
        format!("-c{connections}"),
        format!("-m{streams}"),
        format!("-D{}", load.seconds),
        format!("--warm-up-time={}ms", load.warm_up_ms),
    ]);
    args.extend(["-H".to_owned(), header.to_owned(), url.to_owned()]);
    args
}

/// What h2load prints at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Requests per second over the run (the main duration with `-D`).
    pub requests_per_s: f64,
    /// Requests in all.
    pub total: u64,
    /// Requests that ended (a response or a failure); with `-D`, those still
    /// in flight when the duration ended are not done.
    pub done: u64,
    /// Requests that got a complete response, whatever its status.
    pub succeeded: u64,
    /// Requests that failed, errored or timed out (h2load's three counts).
    pub failed: u64,
    /// Responses per status class: 2xx, 3xx, 4xx, 5xx.
    pub status: [u64; 4],
}

/// Parses h2load's summary: the `finished in ..., <n> req/s` line, the
/// `requests:` counts and the `status codes:` counts.
pub fn parse_summary(stdout: &str) -> Result<Summary, String> {
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .ok_or_else(|| format!("h2load printed no {prefix:?} line:\n{stdout}"))
    };
    let finished = line("finished in ")?;
    let requests_per_s = finished
        .split(", ")
        .find_map(|part| part.strip_suffix(" req/s"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no req/s in \"finished in {finished}\""))?;
    // "3000 total, 3000 started, 3000 done, 3000 succeeded, 0 failed, 0 errored, 0 timeout"
    let requests = line("requests: ")?;
    let count = |list: &str, name: &str| -> Result<u64, String> {
        list.split(", ")
            .find_map(|part| part.strip_suffix(name)?.trim().parse().ok())
            .ok_or_else(|| format!("no {name:?} count in {list:?}"))
    };
    let status_codes = line("status codes: ")?;
    let mut status = [0; 4];
    for (slot, class) in status.iter_mut().zip([" 2xx", " 3xx", " 4xx", " 5xx"]) {
        *slot = count(status_codes, class)?;
    }
    Ok(Summary {
        requests_per_s,
        total: count(requests, " total")?,
        done: count(requests, " done")?,
        succeeded: count(requests, " succeeded")?,
        failed: count(requests, " failed")?
            + count(requests, " errored")?
            + count(requests, " timeout")?,
        status,
    })
}

impl Summary {
    /// `Ok` when no request failed and every response was a 2xx and, given
    /// `expected` (a run of that many requests), each of them got one;
    /// otherwise what went wrong, in h2load's counts. Without `expected` (a
    /// `-D` run), the few streams h2load cuts when the duration ends (done,
    /// not failed, no status) are no failure.
    pub fn check(&self, expected: Option<u64>) -> Result<(), String> {
        let [ok, redirect, client, server] = self.status;
        let all_ok = self.failed == 0
            && redirect + client + server == 0
            && ok > 0
            && expected.is_none_or(|n| self.total == n && self.done == n && ok == n);
        if all_ok {
            return Ok(());
        }
        Err(format!(
            "{ok} 2xx of {} requests{} ({} done, {} succeeded); {} failed, errored or timed out; \
             status codes: {ok} 2xx, {redirect} 3xx, {client} 4xx, {server} 5xx",
            self.total,
            expected.map_or_else(String::new, |n| format!(", {n} sent")),
            self.done,
            self.succeeded,
            self.failed,
        ))
    }
}

/// The latencies of h2load's `--log-file`: one line per request, tab
/// separated: start (µs since the epoch), status (-1 for a failed stream),
/// microseconds until the end of the response.
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// The latency of every request that got a 2xx, in nanoseconds.
    pub histogram: Histogram<u64>,
    /// Requests without a 2xx.
    pub not_ok: u64,
    /// The status of the first of those (-1: no response).
    pub first_not_ok: Option<i32>,
}

/// Parses a `--log-file`.
pub fn parse_log(text: &str) -> Result<RequestLog, String> {
    let mut log = RequestLog {
        histogram: empty_histogram(),
        not_ok: 0,
        first_not_ok: None,
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split('\t');
        let (Some(_start), Some(status), Some(micros)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("h2load log line {line:?}: not 3 fields"));
        };
        let status: i32 = status
            .trim()
            .parse()
            .map_err(|e| format!("h2load log line {line:?}: status: {e}"))?;
        let micros: u64 = micros
            .trim()
            .parse()
            .map_err(|e| format!("h2load log line {line:?}: latency: {e}"))?;
        if (200..300).contains(&status) {
            log.histogram
                .record(micros.saturating_mul(1000).max(1))
                .map_err(|e| format!("h2load log line {line:?}: {e:?}"))?;
        } else {
            log.not_ok += 1;
            log.first_not_ok.get_or_insert(status);
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What h2load 1.52 printed for `--h1 -c2 --rps=50 -n100` against
    /// ambit-httpbin (the progress lines cut).
    const SUMMARY: &str = "starting benchmark...
spawning thread #0: 2 total client(s). 100 total requests
Application protocol: http/1.1

finished in 983.81ms, 101.65 req/s, 34.64KB/s
requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 100 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 34.08KB (34900) total, 7.62KB (7800) headers (space savings 0.00%), 23.44KB (24000) data
                     min         max         mean         sd        +/- sd
time for request:      334us      6.78ms       888us       971us    94.00%
";

    #[test]
    fn summary_counts_and_rate() {
        let s = parse_summary(SUMMARY).expect("parses");
        assert!((s.requests_per_s - 101.65).abs() < 1e-9, "{s:?}");
        assert_eq!((s.total, s.done, s.succeeded, s.failed), (100, 100, 100, 0));
        assert_eq!(s.status, [100, 0, 0, 0]);
        assert_eq!(s.check(Some(100)), Ok(()));
        assert!(s.check(Some(200)).is_err());
        assert!(parse_summary("finished in 1s, 3 req/s").is_err());
    }

    #[test]
    fn refusals_and_failures_fail_the_check() {
        let refused = SUMMARY.replace("100 2xx, 0 3xx, 0 4xx", "90 2xx, 0 3xx, 10 4xx");
        let error = parse_summary(&refused)
            .expect("parses")
            .check(None)
            .expect_err("10 refused");
        assert!(
            error.contains("90 2xx of 100") && error.contains("10 4xx"),
            "{error}"
        );
        let timed_out = SUMMARY
            .replace("100 done, 100 succeeded", "100 done, 98 succeeded")
            .replace("0 timeout", "2 timeout")
            .replace("100 2xx", "98 2xx");
        let s = parse_summary(&timed_out).expect("parses");
        assert_eq!(s.failed, 2);
        assert!(s.check(None).is_err());
        // What -D runs through the mesh printed: a few streams cut at the
        // end are done, with no status and not failed.
        let in_flight = SUMMARY.replace("100 2xx", "95 2xx");
        let s = parse_summary(&in_flight).expect("parses");
        assert_eq!(s.check(None), Ok(()));
        assert!(s.check(Some(100)).is_err());
    }

    #[test]
    fn log_latencies_in_nanoseconds() {
        let log = parse_log(
            "1796170936811207\t200\t1039\n1796170936811223\t200\t1075\n\
                             1796170936831415\t403\t586\n1796170936831416\t-1\t0\n",
        )
        .expect("parses");
        assert_eq!(log.histogram.len(), 2);
        assert_eq!(
            log.histogram.max(),
            log.histogram.highest_equivalent(1_075_000)
        );
        assert_eq!((log.not_ok, log.first_not_ok), (2, Some(403)));
        assert!(parse_log("1\t200\n").is_err());
        assert!(parse_log("1\tok\t3\n").is_err());
    }

    #[test]
    fn command_lines() {
        let max = args(
            Protocol::Http2,
            ClosedLoop {
                seconds: 2,
                warm_up_ms: 500,
            },
            "http://x/",
            "h: v",
        );
        assert_eq!(
            max.join(" "),
            "-t1 -N5s -c4 -m4 -D2 --warm-up-time=500ms -H h: v http://x/"
        );
        let h1 = args(
            Protocol::Http1,
            ClosedLoop {
                seconds: 3,
                warm_up_ms: 0,
            },
            "http://198.19.0.20/api/items",
            "authorization: Bearer t",
        );
        assert_eq!(
            h1.join(" "),
            "--h1 -t1 -N5s -c16 -m1 -D3 --warm-up-time=0ms -H authorization: Bearer t \
             http://198.19.0.20/api/items"
        );
    }
}
