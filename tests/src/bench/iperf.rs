//! iperf3 (`-J`) results.

/// What one iperf3 client run moved, as the receiving side counted it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    /// Bytes the server received.
    pub bytes: u64,
    /// Seconds the test ran.
    pub seconds: f64,
    /// Received bits per second, in Gbit/s.
    pub gbps: f64,
}

/// Parses the JSON report of `iperf3 -c ... -J`. A report with an `error`
/// (iperf3 exits non-zero then, but still prints JSON) is an error carrying
/// iperf3's message.
pub fn parse(json: &str) -> Result<Transfer, String> {
    let report: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("iperf3 printed no JSON report: {e}"))?;
    if let Some(error) = report.get("error").and_then(serde_json::Value::as_str) {
        return Err(format!("iperf3: {error}"));
    }
    let received = &report["end"]["sum_received"];
    let bytes = received["bytes"]
        .as_u64()
        .ok_or("iperf3 report: no end.sum_received.bytes")?;
    let seconds = received["seconds"]
        .as_f64()
        .ok_or("iperf3 report: no end.sum_received.seconds")?;
    if seconds <= 0.0 || bytes == 0 {
        return Err(format!(
            "iperf3 report: {bytes} bytes in {seconds} s, nothing was transferred"
        ));
    }
    let bits_per_second = received["bits_per_second"]
        .as_f64()
        .unwrap_or(bytes as f64 * 8.0 / seconds);
    Ok(Transfer {
        bytes,
        seconds,
        gbps: bits_per_second / 1e9,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of a real `iperf3 -c <ip> -t 2 -J` report (iperf 3.12) that
    /// matter, between two pods of the testbed.
    const REPORT: &str = r#"{
        "start": {"connected": [{"socket": 5, "local_host": "198.18.16.10", "local_port": 40668,
                   "remote_host": "198.18.17.10", "remote_port": 5201}],
                  "version": "iperf 3.12", "test_start": {"protocol": "TCP", "num_streams": 1,
                  "blksize": 131072, "duration": 2}},
        "intervals": [],
        "end": {
            "streams": [],
            "sum_sent": {"start": 0, "end": 2.000123, "seconds": 2.000123, "bytes": 5047582720,
                         "bits_per_second": 20188.7e6, "retransmits": 0, "sender": true},
            "sum_received": {"start": 0, "end": 2.000456, "seconds": 2.000456, "bytes": 5046927360,
                             "bits_per_second": 20183.1e6, "sender": true},
            "cpu_utilization_percent": {"host_total": 60.1, "remote_total": 40.2}
        }
    }"#;

    #[test]
    fn reads_what_the_receiver_counted() {
        let t = parse(REPORT).expect("parses");
        assert_eq!(t.bytes, 5_046_927_360);
        assert!((t.seconds - 2.000_456).abs() < 1e-9);
        assert!((t.gbps - 20.1831).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn computes_the_rate_when_iperf_leaves_it_out() {
        let json = r#"{"end": {"sum_received": {"seconds": 2.0, "bytes": 2500000000}}}"#;
        assert!((parse(json).expect("parses").gbps - 10.0).abs() < 1e-9);
    }

    #[test]
    fn errors_carry_iperf3s_message() {
        let json = r#"{"start": {}, "intervals": [], "end": {},
                       "error": "unable to connect to server: Connection refused"}"#;
        let error = parse(json).expect_err("an error report");
        assert!(error.contains("Connection refused"), "{error}");
        assert!(parse("iperf3: error - the server is busy").is_err());
        assert!(parse(r#"{"end": {"sum_received": {"seconds": 0, "bytes": 0}}}"#).is_err());
    }
}
