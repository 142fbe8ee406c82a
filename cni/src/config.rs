//! The network config on stdin: this plugin's entry of the conflist, with the
//! conflist's `cniVersion` and `name` and, when chained, the previous plugin's
//! result in `prevResult`.
//!
//! Only `cniVersion`, `ztunnelSocket`, `timeoutSeconds` and `prevResult` are
//! read; every other field is ignored, and `prevResult` is kept as raw JSON so
//! that ADD can hand it on unchanged.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use serde_json::{Map, Value};

/// The `cniVersion`s this plugin accepts, oldest first. 0.3.0 is the first with
/// conflists and `prevResult`, which a chained plugin needs.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// Where ztunnel listens for this plugin when the config names no socket.
pub const DEFAULT_ZTUNNEL_SOCKET: &str = "/var/run/ambit/cni.sock";

/// How long to wait for ztunnel when the config sets no `timeoutSeconds`.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;

/// The file, beside ztunnel's socket, that lists the namespaces in the mesh.
pub const ENROLLED_NAMESPACES_FILE: &str = "enrolled-namespaces";

/// Errors reading the network config.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// stdin is not JSON, or a field has the wrong JSON type.
    Decode(serde_json::Error),
    /// `cniVersion` is missing or not in [`SUPPORTED_VERSIONS`].
    UnsupportedVersion {
        /// The version as written (`None` when the field is absent).
        version: Option<String>,
    },
    /// `ztunnelSocket` is the empty string.
    EmptySocket,
    /// `timeoutSeconds` is 0, which would give the socket no time at all.
    ZeroTimeout,
    /// `prevResult.ips` is not a list of objects with an `address` in CIDR form.
    BadPrevResultIp {
        /// The index in `prevResult.ips` (0 when `ips` itself is not a list).
        index: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Decode(_) => f.write_str("cannot decode the network config on stdin"),
            Error::UnsupportedVersion { version: None } => {
                f.write_str("the network config has no cniVersion")
            }
            Error::UnsupportedVersion {
                version: Some(version),
            } => write!(
                f,
                "cniVersion {version:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
            Error::EmptySocket => f.write_str("ztunnelSocket is empty"),
            Error::ZeroTimeout => f.write_str("timeoutSeconds must be at least 1"),
            Error::BadPrevResultIp { index, problem } => {
                write!(f, "prevResult.ips[{index}]: {problem}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Decode(source) => Some(source),
            _ => None,
        }
    }
}

/// The fields of stdin this plugin reads; serde ignores the others.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    ztunnel_socket: Option<PathBuf>,
    timeout_seconds: Option<u64>,
    prev_result: Option<Map<String, Value>>,
}

/// The plugin's network config, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The conflist's `cniVersion`, one of [`SUPPORTED_VERSIONS`]; results and
    /// errors are written under it.
    pub cni_version: String,
    /// ztunnel's unix socket for this plugin.
    pub ztunnel_socket: PathBuf,
    /// The longest the whole exchange with ztunnel may take (connect, write,
    /// read).
    pub timeout: Duration,
    /// The previous plugin's result, as it came (`None` when not chained).
    pub prev_result: Option<Map<String, Value>>,
}

impl NetConf {
    /// Reads and checks the config from stdin's bytes.
    pub fn parse(stdin: &[u8]) -> Result<Self, Error> {
        let raw: RawConf = serde_json::from_slice(stdin).map_err(Error::Decode)?;
        let cni_version = match raw.cni_version {
            Some(version) if SUPPORTED_VERSIONS.contains(&version.as_str()) => version,
            version => return Err(Error::UnsupportedVersion { version }),
        };
        let ztunnel_socket = raw
            .ztunnel_socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ZTUNNEL_SOCKET));
        if ztunnel_socket.as_os_str().is_empty() {
            return Err(Error::EmptySocket);
        }
        let timeout_seconds = raw.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        if timeout_seconds == 0 {
            return Err(Error::ZeroTimeout);
        }
        Ok(Self {
            cni_version,
            ztunnel_socket,
            timeout: Duration::from_secs(timeout_seconds),
            prev_result: raw.prev_result,
        })
    }

    /// The enrolled-namespaces file: [`ENROLLED_NAMESPACES_FILE`] in the
    /// directory of the socket.
    pub fn enrolled_namespaces_file(&self) -> PathBuf {
        self.ztunnel_socket
            .parent()
            .unwrap_or(Path::new("/"))
            .join(ENROLLED_NAMESPACES_FILE)
    }

    /// The pod's addresses from `prevResult.ips[].address`, without their
    /// prefix lengths; empty when there is no `prevResult` or no `ips`.
    pub fn pod_ips(&self) -> Result<Vec<IpAddr>, Error> {
        let Some(ips) = self.prev_result.as_ref().and_then(|prev| prev.get("ips")) else {
            return Ok(Vec::new());
        };
        let Value::Array(ips) = ips else {
            return Err(Error::BadPrevResultIp {
                index: 0,
                problem: "ips is not a list",
            });
        };
        ips.iter()
            .enumerate()
            .map(|(index, ip)| {
                let bad = |problem| Error::BadPrevResultIp { index, problem };
                let address = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("no address string"))?;
                // "198.18.1.10/24": the prefix length is the subnet's, not the pod's.
                let host = address.split_once('/').map_or(address, |(host, _)| host);
                host.parse()
                    .map_err(|_| bad("address is not an IP address in CIDR form"))
            })
            .collect()
    }

    /// The result ADD prints: `prevResult` unchanged but for its `cniVersion`,
    /// which becomes the config's; `{"cniVersion": ..}` alone when not chained.
    pub fn result_json(&self) -> String {
        let mut result = self.prev_result.clone().unwrap_or_default();
        result.insert(
            "cniVersion".to_owned(),
            Value::String(self.cni_version.clone()),
        );
        let mut out = Value::Object(result).to_string();
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(conf: &Value) -> Result<NetConf, Error> {
        NetConf::parse(conf.to_string().as_bytes())
    }

    #[test]
    fn defaults_apply_and_unknown_fields_are_ignored() {
        let conf =
            parse(&json!({"cniVersion": "1.0.0", "name": "k8s", "type": "ambit-cni", "mtu": 1}))
                .unwrap();
        assert_eq!(conf.ztunnel_socket, Path::new(DEFAULT_ZTUNNEL_SOCKET));
        assert_eq!(conf.timeout, Duration::from_secs(30));
        assert_eq!(conf.prev_result, None);
        assert_eq!(
            conf.enrolled_namespaces_file(),
            Path::new("/var/run/ambit/enrolled-namespaces")
        );
    }

    #[test]
    fn fields_override_defaults() {
        let conf = parse(
            &json!({"cniVersion": "0.4.0", "ztunnelSocket": "/run/z/s.sock", "timeoutSeconds": 2}),
        )
        .unwrap();
        assert_eq!(conf.ztunnel_socket, Path::new("/run/z/s.sock"));
        assert_eq!(conf.timeout, Duration::from_secs(2));
        assert_eq!(
            conf.enrolled_namespaces_file(),
            Path::new("/run/z/enrolled-namespaces")
        );
    }

    #[test]
    fn unsupported_and_missing_versions_are_refused() {
        assert!(matches!(
            parse(&json!({"cniVersion": "0.2.0"})),
            Err(Error::UnsupportedVersion { version: Some(v) }) if v == "0.2.0"
        ));
        assert!(matches!(
            parse(&json!({"name": "k8s"})),
            Err(Error::UnsupportedVersion { version: None })
        ));
    }

    #[test]
    fn bad_json_and_wrong_types_fail_to_decode() {
        assert!(matches!(
            NetConf::parse(b"{not json"),
            Err(Error::Decode(_))
        ));
        assert!(matches!(
            parse(&json!({"cniVersion": "1.0.0", "timeoutSeconds": "30"})),
            Err(Error::Decode(_))
        ));
    }

    #[test]
    fn zero_timeout_and_empty_socket_are_invalid() {
        assert!(matches!(
            parse(&json!({"cniVersion": "1.0.0", "timeoutSeconds": 0})),
            Err(Error::ZeroTimeout)
        ));
        assert!(matches!(
            parse(&json!({"cniVersion": "1.0.0", "ztunnelSocket": ""})),
            Err(Error::EmptySocket)
        ));
    }

    #[test]
    fn pod_ips_drop_the_prefix_length() {
        let conf = parse(&json!({"cniVersion": "1.0.0", "prevResult": {"ips": [
            {"address": "198.18.1.10/24", "gateway": "198.18.1.1", "interface": 0},
            {"address": "fd00::10/64"},
        ]}}))
        .unwrap();
        let ips: Vec<IpAddr> = vec!["198.18.1.10".parse().unwrap(), "fd00::10".parse().unwrap()];
        assert_eq!(conf.pod_ips().unwrap(), ips);
    }

    #[test]
    fn pod_ips_are_empty_without_prev_result_or_ips() {
        let conf = parse(&json!({"cniVersion": "1.0.0"})).unwrap();
        assert!(conf.pod_ips().unwrap().is_empty());
        let conf =
            parse(&json!({"cniVersion": "1.0.0", "prevResult": {"interfaces": []}})).unwrap();
        assert!(conf.pod_ips().unwrap().is_empty());
    }

    #[test]
    fn bad_pod_ip_names_its_index() {
        let conf = parse(&json!({"cniVersion": "1.0.0", "prevResult": {"ips": [
            {"address": "198.18.1.10/24"}, {"address": "nope/24"},
        ]}}))
        .unwrap();
        let error = conf.pod_ips().unwrap_err();
        assert!(
            matches!(error, Error::BadPrevResultIp { index: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn result_is_prev_result_under_the_config_version() {
        let prev =
            json!({"cniVersion": "0.4.0", "ips": [{"address": "198.18.1.10/24"}], "dns": {}});
        let conf = parse(&json!({"cniVersion": "1.0.0", "prevResult": prev})).unwrap();
        let result: Value = serde_json::from_str(&conf.result_json()).unwrap();
        let mut expected = prev;
        expected["cniVersion"] = json!("1.0.0");
        assert_eq!(result, expected);
    }

    #[test]
    fn result_without_prev_result_is_the_version_alone() {
        let conf = parse(&json!({"cniVersion": "0.3.1"})).unwrap();
        assert_eq!(conf.result_json(), "{\"cniVersion\":\"0.3.1\"}\n");
    }
}
