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
        // How far it got says whether it failed at once or under load.
        let intervals = report["intervals"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        if intervals.is_empty() {
            return Err(format!("iperf3: {error}"));
        }
        let seconds = intervals
            .last()
            .and_then(|i| i["sum"]["end"].as_f64())
            .unwrap_or(0.0);
        let bytes: u64 = intervals
            .iter()
            .filter_map(|i| i["sum"]["bytes"].as_u64())
            .sum();
        return Err(format!(
            "iperf3: {error} (after {seconds:.1} s and {:.2} GiB)",
            bytes as f64 / f64::from(1u32 << 30)
        ));
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

    /// A real `iperf3 -c 127.0.0.1 -t 1 -J` report (iperf 3.12, in a private
    /// network namespace), cut down to the parts that matter.
    const REPORT: &str = r#"{
        "start": {"version": "iperf 3.12", "test_start": {"protocol": "TCP", "num_streams": 1,
                  "blksize": 131072, "omit": 0, "duration": 1}},
        "intervals": [],
        "end": {
            "streams": [],
            "sum_sent": {"start": 0, "end": 1.000404, "seconds": 1.000404, "bytes": 4092067840,
                         "bits_per_second": 32723322497.710922, "retransmits": 38, "sender": true},
            "sum_received": {"start": 0, "end": 1.000447, "seconds": 1.000447, "bytes": 4092067840,
                             "bits_per_second": 32721916023.537476, "sender": true}
        }
    }"#;

    #[test]
    fn reads_what_the_receiver_counted() {
        let t = parse(REPORT).expect("parses");
        assert_eq!(t.bytes, 4_092_067_840);
        assert!((t.seconds - 1.000_447).abs() < 1e-9);
        assert!((t.gbps - 32.721_916_023_537_476).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn computes_the_rate_when_iperf_leaves_it_out() {
        let json = r#"{"end": {"sum_received": {"seconds": 2.0, "bytes": 2500000000}}}"#;
        assert!((parse(json).expect("parses").gbps - 10.0).abs() < 1e-9);
    }

    #[test]
    fn errors_carry_iperf3s_message() {
        // What iperf3 3.12 prints when nothing listens.
        let json = r#"{"start": {}, "intervals": [], "end": {},
                       "error": "unable to connect to server: Connection refused"}"#;
        let error = parse(json).expect_err("an error report");
        assert!(error.contains("Connection refused"), "{error}");
        assert!(parse("iperf3: error - the server is busy").is_err());
        let json = r#"{"start": {}, "end": {}, "error": "unable to write to stream socket: Cannot allocate memory",
                       "intervals": [{"sum": {"start": 0, "end": 1.0, "bytes": 1073741824}},
                                     {"sum": {"start": 1.0, "end": 1.5, "bytes": 536870912}}]}"#;
        assert_eq!(
            parse(json).expect_err("an error report"),
            "iperf3: unable to write to stream socket: Cannot allocate memory (after 1.5 s and 1.50 GiB)"
        );
        assert!(parse(r#"{"end": {"sum_received": {"seconds": 0, "bytes": 0}}}"#).is_err());
    }
}
