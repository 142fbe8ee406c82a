//! Packet captures on the fabric, where node-to-node traffic crosses.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use super::{Error, Process};

/// A running `tcpdump` on the fabric bridge, writing a pcap file.
///
/// It is started in immediate mode and only handed out once tcpdump says it
/// is listening, so no packet sent afterwards is missed; packets are read back
/// from the file with [`FabricCapture::wait_for`] rather than after a fixed
/// pause.
#[derive(Debug)]
pub struct FabricCapture {
    process: Process,
    file: PathBuf,
}

impl FabricCapture {
    pub(super) fn start(netns: &str, file: PathBuf, filter: &str) -> Result<Self, Error> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "tcpdump", "--immediate-mode", "-U"])
            .args(["-s", "0", "-i", "br0", "-w"])
            .arg(&file)
            .arg(filter);
        let process = Process::spawn(cmd)?;
        process.wait_for_stderr(Duration::from_secs(10), |l| l.contains("listening on"))?;
        Ok(Self { process, file })
    }

    /// The raw bytes captured so far (pcap headers included).
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.file).unwrap_or_default()
    }

    /// Waits up to `timeout` until the captured bytes contain every one of
    /// `needles`, and returns them (whatever was captured, when time runs out).
    pub fn wait_for(&self, needles: &[&[u8]], timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            let bytes = self.bytes();
            if needles.iter().all(|n| contains(&bytes, n)) || Instant::now() >= deadline {
                return bytes;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops tcpdump (it flushes the file on SIGTERM) and returns the capture.
    pub fn stop(mut self) -> Vec<u8> {
        let _ = self.process.terminate(Duration::from_secs(5));
        self.bytes()
    }
}

/// Whether `haystack` contains `needle` anywhere.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
