//! Process settings: flags and environment variables, parsed and validated once at
//! startup. The mesh configuration (workloads, policies) is not here; it comes
//! from the sources in `config`.
//!
//! Every environment variable is a const with its default beside it, and is read
//! through [`EnvSource`] so tests never touch the process environment.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use serde::Serialize;

/// Outbound listener, inside each enrolled pod, on loopback.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext listener (PERMISSIVE), on the pod IP.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// Inbound HBONE listener (mTLS + HTTP/2 CONNECT), on the pod IP.
pub const HBONE_PORT: u16 = 15008;
/// Admin endpoint (`/config_dump`, `/debug/...`).
pub const ADMIN_PORT: u16 = 15000;
/// Prometheus metrics.
pub const STATS_PORT: u16 = 15020;
/// Readiness (`/healthz/ready`).
pub const READINESS_PORT: u16 = 15021;
/// The mesh CA's gRPC endpoint (`ztunnel ca`; Istio's istiod port).
pub const CA_PORT: u16 = 15012;

/// Lifetime of a workload certificate when the caller asks for none.
pub const CERT_DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Longest workload certificate lifetime the CA issues by default.
pub const CERT_MAX_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far before "now" a certificate becomes valid, for peers whose clocks lag
/// (at most a tenth of the certificate's lifetime).
pub const CERT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// First retry delay of the certificate manager when the CA fails.
pub const CERT_RETRY_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest retry delay of the certificate manager.
pub const CERT_RETRY_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// DNS names of the CA's serving certificate; ztunnels verify the first by default.
pub const CA_SERVER_NAMES: [&str; 3] = ["ambit-ca", "ambit-ca.ambit-system.svc", "localhost"];
/// Lifetime of the CA's serving certificate (re-issued at half life).
pub const CA_SERVING_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Deadline of a TLS handshake with the CA.
pub const CA_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a TCP connection to the CA.
pub const CA_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one certificate request, connection included.
pub const CA_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Node token file in a local CA's directory.
pub const CA_TOKEN_FILE: &str = "tokens";
/// How often the trust bundle file is checked for changes.
pub const TRUST_BUNDLE_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The cgroup v2 directory the capture programs attach to. Default: the root of
/// the cgroup v2 hierarchy (every pod of the node); tests give one per node.
pub const NODE_CGROUP_ENV: &str = "AMBIT_NODE_CGROUP";
/// Log line format: `plain` (default) or `json`.
pub const LOG_FORMAT_ENV: &str = "LOG_FORMAT";
/// Default of [`LOG_FORMAT_ENV`].
pub const LOG_FORMAT_DEFAULT: LogFormat = LogFormat::Plain;

/// Where settings are read from: the real environment, or a map in tests.
pub trait EnvSource {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A setting with a value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The value is not one of those allowed.
    #[error("{name}={value:?} is invalid: expected {expected}")]
    Invalid {
        /// The variable or flag.
        name: &'static str,
        /// What it was set to.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

/// Format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// The validated settings of a ztunnel process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// See [`NODE_CGROUP_ENV`]; `None` means the cgroup v2 root.
    pub node_cgroup: Option<PathBuf>,
    /// See [`LOG_FORMAT_ENV`].
    pub log_format: LogFormat,
}

impl Settings {
    /// Reads the settings from `env`.
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, Error> {
        let node_cgroup = env
            .var(NODE_CGROUP_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let log_format = match env.var(LOG_FORMAT_ENV).as_deref() {
            None | Some("") => LOG_FORMAT_DEFAULT,
            Some(value) => parse_log_format(LOG_FORMAT_ENV, value)?,
        };
        let settings = Self {
            node_cgroup,
            log_format,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(path) = &self.node_cgroup
            && !path.is_absolute()
        {
            return Err(Error::Invalid {
                name: NODE_CGROUP_ENV,
                value: path.display().to_string(),
                expected: "an absolute path to a cgroup v2 directory",
            });
        }
        Ok(())
    }
}

/// Parses a log format named by `name` (for the error message).
pub fn parse_log_format(name: &'static str, value: &str) -> Result<LogFormat, Error> {
    match value {
        "plain" => Ok(LogFormat::Plain),
        "json" => Ok(LogFormat::Json),
        _ => Err(Error::Invalid {
            name,
            value: value.to_owned(),
            expected: "plain or json",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_when_unset() {
        let settings = Settings::from_env(&env(&[])).unwrap();
        assert_eq!(
            settings,
            Settings {
                node_cgroup: None,
                log_format: LogFormat::Plain
            }
        );
    }

    #[test]
    fn reads_each_variable() {
        let settings = Settings::from_env(&env(&[
            (NODE_CGROUP_ENV, "/sys/fs/cgroup/node-a"),
            (LOG_FORMAT_ENV, "json"),
        ]))
        .unwrap();
        assert_eq!(
            settings.node_cgroup,
            Some(PathBuf::from("/sys/fs/cgroup/node-a"))
        );
        assert_eq!(settings.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_name_the_variable_and_the_value() {
        let err = Settings::from_env(&env(&[(LOG_FORMAT_ENV, "yaml")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LOG_FORMAT=\"yaml\" is invalid: expected plain or json"
        );
        let err = Settings::from_env(&env(&[(NODE_CGROUP_ENV, "relative/dir")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("AMBIT_NODE_CGROUP=\"relative/dir\" is invalid"),
            "{err}"
        );
    }
}
