//! What `/proc` says about processes (CPU time, resident memory) and about the
//! machine a benchmark ran on.

use std::path::Path;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`): 100 on
/// every Linux architecture ambit runs on.
const USER_HZ: f64 = 100.0;

/// User plus system CPU seconds that process `pid` (all its threads) has used.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / USER_HZ)
        .ok_or_else(|| format!("{path}: no utime/stime in {stat:?}"))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted from
/// its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest: " <state> <ppid> ...": field 3 is the first.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// Milliseconds the hypervisor has taken from this machine's virtual CPUs
/// since boot (`steal` of `/proc/stat`, all CPUs together).
pub fn steal_ms() -> Result<f64, String> {
    let path = "/proc/stat";
    let stat = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    parse_steal_ticks(&stat)
        .map(|ticks| ticks as f64 * 1000.0 / USER_HZ)
        .ok_or_else(|| format!("{path}: no steal time in its \"cpu\" line"))
}

/// The eighth number of the `cpu` line (all CPUs): `steal`, in `USER_HZ`
/// ticks (0 where the kernel has no paravirtual steal clock).
fn parse_steal_ticks(stat: &str) -> Option<u64> {
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

/// Open file descriptors of process `pid` (0 when it is gone).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Open file descriptors of `pid` once they are `at_most`, or after 5 s
/// (connections a process closes take a moment to go): what it holds then.
pub fn open_fds_settled(pid: u32, at_most: usize) -> usize {
    let mut fds = open_fds(pid);
    for _ in 0..50 {
        if fds <= at_most {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        fds = open_fds(pid);
    }
    fds
}

/// Resident memory of process `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    status_kib(pid, "VmRSS")
}

/// Resident anonymous memory of process `pid` in KiB (`RssAnon`: heap and
/// stacks, without the binary's pages mapped from the page cache).
pub fn rss_anon_kib(pid: u32) -> Result<u64, String> {
    status_kib(pid, "RssAnon")
}

fn status_kib(pid: u32, field: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status_field_kib(&status, field).ok_or_else(|| format!("{path}: no {field}"))
}

/// A `<field>: <n> kB` line of `/proc/<pid>/status` or `/proc/meminfo`.
fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// The machine a report was made on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Online logical CPUs.
    pub cores: usize,
    /// The CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// Total memory in GiB.
    pub memory_gib: f64,
    /// 1-minute load average when the run started and when it ended: the
    /// machine is shared, and this says how busy it was.
    pub load_before: f64,
    /// See `load_before`.
    pub load_after: f64,
    /// When the run started, UTC (RFC 3339).
    pub date: String,
}

impl Machine {
    /// Reads /proc now; `load_after` is filled in at the end of the run.
    pub fn current() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        Self {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".to_owned()),
            memory_gib: status_field_kib(&read("/proc/meminfo"), "MemTotal")
                .map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0)),
            load_before: load_average(),
            load_after: f64::NAN,
            date: rfc3339(std::time::SystemTime::now()),
        }
    }
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// `time` as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The commit the workspace at `dir` is on, when git can tell.
pub fn git_commit(dir: &Path) -> Option<String> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "safe.directory=*", "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_number_of_the_cpu_line() {
        let stat = "cpu  4872780 760 1364152 4601603 27722 0 208009 13147 0 0\n\
                    cpu0 2082261 394 680094 2663530 6090 0 102474 6559 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_steal_ticks(stat), Some(13147));
        assert_eq!(parse_steal_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_steal_ticks("cpu  1 2 3\n"), None);
        assert!(steal_ms().is_ok_and(|ms| ms >= 0.0));
    }

    #[test]
    fn cpu_ticks_count_fields_after_the_command_name() {
        // A command name with a space and a parenthesis.
        let stat = "4242 (zt (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 \
                    123 456 789 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("4242 (zt) S 1"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn our_own_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).expect("stat") >= 0.0);
        assert!(rss_kib(pid).expect("status") > 0);
    }

    #[test]
    fn status_fields_in_kib() {
        let status = "Name:\tztunnel\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(status_field_kib(status, "VmRSS"), Some(12345));
        assert_eq!(status_field_kib(status, "VmHWM"), None);
        assert_eq!(status_field_kib(status, "Threads"), None);
    }

    #[test]
    fn cpu_model_from_cpuinfo() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
    }

    #[test]
    fn dates_are_utc_rfc3339() {
        let at = |secs| rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
