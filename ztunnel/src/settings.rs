//! Process settings: flags and environment variables, parsed and validated once at
//! startup. The mesh configuration (workloads, policies) is not here; it comes
//! from the sources in `config`.
//!
//! Every environment variable is a const with its default beside it, and is read
//! through [`EnvSource`] so tests never touch the process environment.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use serde::Serialize;

use crate::identity::TrustDomain;

/// Outbound listener, inside each enrolled pod, on loopback.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext listener (PERMISSIVE), on the pod IP.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// Inbound HBONE listener (mTLS + HTTP/2 CONNECT), on the pod IP.
pub const HBONE_PORT: u16 = 15008;
/// HTTP/2 flow-control window of one HBONE stream: large enough for a
/// single stream to fill a fast link.
pub const HBONE_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 flow-control window of one HBONE connection (all its streams).
pub const HBONE_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame an HBONE peer may send us (fewer frame headers and
/// wake-ups for bulk data than the 16 KiB default).
pub const HBONE_MAX_FRAME: u32 = 256 * 1024;
/// Data HTTP/2 queues per stream before a write waits for the socket.
pub const HBONE_SEND_BUFFER: usize = 1024 * 1024;
/// Data one HBONE connection may have queued for its peer, all streams
/// together (a peer that never reads holds at most this much of ours, not
/// [`HBONE_SEND_BUFFER`] per stream). The same as the connection's receive
/// window, so a connection holds at most this much each way.
pub const HBONE_CONNECTION_SEND_BUDGET: u32 = 16 * 1024 * 1024;
/// Concurrent CONNECT streams per HBONE connection.
pub const HBONE_MAX_STREAMS: u32 = 100;
/// Largest header list (HPACK-decoded) an HBONE peer may send on one stream.
/// A CONNECT carries a few hundred bytes (`:authority`, `traceparent`,
/// `baggage`); h2's default, 16 MiB, would let one authenticated peer make
/// the server hold gigabytes. A larger block ends the connection.
pub const HBONE_MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams a peer may open and reset before the server accepts them (the
/// HTTP/2 rapid reset attack, CVE-2023-44487) before the connection is ended.
pub const HBONE_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server may reset for a peer's protocol errors before it ends
/// the connection.
pub const HBONE_MAX_LOCAL_ERROR_RESETS: usize = 64;
/// How long the server may take to decide a CONNECT and connect to its target
/// (authorization and the connect to the application) before it answers 504.
pub const HBONE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the TLS and HTTP/2 handshakes of an HBONE connection may take
/// (either side): a peer that accepts TCP and then stalls is dropped.
pub const HBONE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval on HBONE connections (both sides): a peer that
/// vanished without a FIN is noticed within this plus
/// [`HBONE_KEEPALIVE_TIMEOUT`], and its pooled connection replaced.
pub const HBONE_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered.
pub const HBONE_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A pooled HBONE connection without streams for this long is closed.
pub const HBONE_POOL_IDLE: Duration = Duration::from_secs(60);
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
/// Audience a ztunnel's projected service-account token must carry for the CA
/// (`ztunnel ca --token-review-audience`, and the DaemonSet's projected token).
/// A dedicated audience, so that no token minted for the API server (or for
/// anything else) is accepted; Istio's equivalent is `istio-ca`.
pub const CA_TOKEN_AUDIENCE: &str = "ambit-ca";
/// Node token file in a local CA's directory.
pub const CA_TOKEN_FILE: &str = "tokens";
/// How often the trust bundle file is checked for changes.
pub const TRUST_BUNDLE_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// `SO_MARK` of ztunnel's own sockets. The capture does not go by it (any pod
/// with CAP_NET_ADMIN can set a mark): it knows ztunnel's sockets by ztunnel's
/// cgroup.
pub const ZTUNNEL_MARK: u32 = 0x539;
/// `SO_MARK` of ztunnel's transparent sockets (connects to an app from the
/// client's address): the pods' policy rule routes replies to them back to
/// ztunnel.
pub const TRANSPARENT_MARK: u32 = 0x53a;
/// Routing table, inside each pod, of the transparent return path.
pub const ROUTE_TABLE: u32 = 0x539;
/// How often the occupancy of the eBPF maps is read (`ambit_ebpf_map_entries`,
/// `/config_dump`): a walk of the live maps, a system call per entry.
pub const MAP_OCCUPANCY_PERIOD: Duration = Duration::from_secs(5);
/// With the sk_msg shortcut on, how often the node's TCP memory is read to
/// hold redirects off under pressure.
pub const TCP_PRESSURE_PERIOD: Duration = Duration::from_millis(100);
/// How often an enrolled pod whose network namespace is not known yet (no
/// process of it found) is looked for again.
pub const POD_NETNS_RETRY: Duration = Duration::from_secs(1);
/// How long a connection to a destination may take to establish.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `host:port` of the mesh CA's API, for processes without `--ca-dir`.
pub const CA_ADDRESS_ENV: &str = "CA_ADDRESS";
/// Default of [`CA_ADDRESS_ENV`]: the CA's Service.
pub const CA_ADDRESS_DEFAULT: &str = "ambit-ca.ambit-system.svc:15012";
/// The name the CA's serving certificate must carry (default: the host of
/// [`CA_ADDRESS_ENV`] when it is a name, else `ambit-ca`).
pub const CA_SERVER_NAME_ENV: &str = "AMBIT_CA_SERVER_NAME";
/// The token file a CA client authenticates with (a projected
/// service-account token with the CA's audience).
pub const CA_TOKEN_FILE_ENV: &str = "AMBIT_CA_TOKEN_FILE";
/// Default of [`CA_TOKEN_FILE_ENV`].
pub const CA_TOKEN_FILE_DEFAULT: &str = "/var/run/secrets/tokens/ambit-ca";
/// The mesh's trust bundle (PEM roots) a CA client trusts.
pub const CA_ROOT_ENV: &str = "AMBIT_CA_ROOT";
/// Default of [`CA_ROOT_ENV`]: the root ConfigMap's mount.
pub const CA_ROOT_DEFAULT: &str = "/var/run/secrets/ambit/root-cert.pem";

/// The SPIFFE trust domain of the mesh (`spiffe://<this>/ns/<ns>/sa/<sa>`): the
/// identities ztunnel and the waypoint ask for and accept, and those `ztunnel ca`
/// signs (its `--trust-domain` defaults to it). Every process of one mesh must
/// agree on it.
pub const TRUST_DOMAIN_ENV: &str = "TRUST_DOMAIN";
/// Default of [`TRUST_DOMAIN_ENV`].
pub const TRUST_DOMAIN_DEFAULT: &str = crate::identity::DEFAULT_TRUST_DOMAIN;
/// `ztunnel ca`: a plug-in CA directory in Istio's `cacerts` layout
/// (`--cacerts-dir`; unset: the CA's own root).
pub const CACERTS_DIR_ENV: &str = "AMBIT_CACERTS_DIR";
/// `ztunnel ca`: its own namespace (the downward API's `metadata.namespace`).
pub const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";
/// The mesh's namespace: default of [`POD_NAMESPACE_ENV`] for the CA.
pub const SYSTEM_NAMESPACE: &str = "ambit-system";
/// `ztunnel ca`: publish the roots as this ConfigMap (`--root-configmap`).
pub const ROOT_CONFIGMAP_ENV: &str = "AMBIT_ROOT_CONFIGMAP";
/// `ztunnel ca`: the PodTemplate waypoints are deployed from
/// (`--waypoint-template`; unset: no waypoint controller).
pub const WAYPOINT_TEMPLATE_ENV: &str = "AMBIT_WAYPOINT_TEMPLATE";

/// This node's name (Kubernetes: the downward API's `spec.nodeName`).
pub const NODE_NAME_ENV: &str = "NODE_NAME";
/// Local mode: the YAML file of Kubernetes objects to run the node from.
pub const CONFIG_FILE_ENV: &str = "AMBIT_CONFIG";
/// bpffs directory for this node's pinned maps and links.
pub const PIN_DIR_ENV: &str = "AMBIT_BPF_PIN_DIR";
/// Default parent of [`PIN_DIR_ENV`]: `<this>/<node name>`.
pub const PIN_DIR_DEFAULT_PARENT: &str = "/sys/fs/bpf/ambit";
/// Whether `sk_msg` shortcuts the app <-> ztunnel loopback hop (`true`/`false`).
pub const SOCKMAP_ENV: &str = "AMBIT_SOCKMAP";
/// Default of [`SOCKMAP_ENV`]: off. The shortcut redirects only while
/// ztunnel keeps up (see [`SOCKMAP_CAP_ENV`]), and an application socket in
/// the sockmap gets the kernel's sockmap receive path (`tcp_bpf_recvmsg`) for
/// its own reads: on some kernels that path answers FIONREAD with 0 and a read
/// with a receive timeout at end of file with EAGAIN.
pub const SOCKMAP_DEFAULT: bool = false;
/// With the shortcut on, the most bytes an application may have sent over it
/// that ztunnel has not read yet (bytes). Past it the application's sends take
/// loopback TCP, whose buffers slow or block the sender, until ztunnel has read
/// everything: the redirect itself has no backpressure in the kernel.
pub const SOCKMAP_CAP_ENV: &str = "AMBIT_SOCKMAP_CAP_BYTES";
/// With the shortcut on, keep it on even when the start-up check finds that
/// this kernel's sockmap receive path breaks a blocking read (a wake-up
/// without data ends it with EAGAIN; `true`/`false`, default false). For
/// testing the shortcut on such a kernel: applications on it that block in a
/// read may fail.
pub const SOCKMAP_IGNORE_READ_CHECK_ENV: &str = "AMBIT_SOCKMAP_IGNORE_READ_CHECK";
/// With the shortcut on, a connection that ztunnel has read this many bytes
/// from without the socket ever reading dry, while its sends are on loopback
/// TCP (its application the cap ahead), leaves the shortcut for good: its
/// socket's sends and reads get the plain TCP path back, which for a bulk
/// stream costs less than the sockmap's (bytes; 0: never).
pub const SOCKMAP_BULK_ENV: &str = "AMBIT_SOCKMAP_BULK_BYTES";
/// Default of [`SOCKMAP_BULK_ENV`]: 32 MiB, so bursts up to that size keep
/// returning to the redirect between them.
pub const SOCKMAP_BULK_DEFAULT: u64 = 32 * 1024 * 1024;
/// Default of [`SOCKMAP_CAP_ENV`]: 1 MiB, four of the relay's largest reads.
pub const SOCKMAP_CAP_DEFAULT: u32 = 1024 * 1024;
/// The range [`SOCKMAP_CAP_ENV`] accepts: at least one of the kernel's largest
/// redirected messages (17 fragments of up to 32 KiB), at most 64 MiB.
pub const SOCKMAP_CAP_RANGE: std::ops::RangeInclusive<u32> = 1024 * 1024..=64 * 1024 * 1024;
/// Whether ztunnel gives free heap pages back to the kernel after a burst
/// (`true`/`false`; `ztunnel::heap`). Off for an allocator other than glibc's
/// (`LD_PRELOAD`), whose statistics glibc cannot read.
pub const HEAP_TRIM_ENV: &str = "AMBIT_HEAP_TRIM";
/// On SIGTERM, how long connections in flight may take to finish (seconds).
pub const DRAIN_TIMEOUT_ENV: &str = "AMBIT_DRAIN_TIMEOUT_SECONDS";
/// Default of [`DRAIN_TIMEOUT_ENV`].
pub const DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// A proxied connection that moves no byte either way for this long is closed
/// (seconds), so a stuck or vanished peer cannot hold buffers forever.
pub const IDLE_TIMEOUT_ENV: &str = "AMBIT_IDLE_TIMEOUT_SECONDS";
/// Default of [`IDLE_TIMEOUT_ENV`]: one hour.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3600);

/// The share of successful connections (and, at the waypoint, requests)
/// that get an access log line, from 0 to 1 (default 1: all). Failures,
/// denials and audit lines are always written.
pub const ACCESS_LOG_SAMPLE_ENV: &str = "AMBIT_ACCESS_LOG_SAMPLE";
/// Threads of the proxy's async runtime (1 to 64).
pub const WORKER_THREADS_ENV: &str = "AMBIT_WORKER_THREADS";
/// Default of [`WORKER_THREADS_ENV`] on a node with `cores` cores: half of
/// them, at least 1 and at most 2 (Istio's ztunnel uses 2). The proxy shares
/// the node with its workloads; on 2 cores, one worker saves the cross-thread
/// wake-ups the runtime makes to balance work: measured 15 µs less added
/// latency per request/response and 12% less CPU, at the same bulk throughput.
pub fn default_worker_threads(cores: usize) -> usize {
    (cores / 2).clamp(1, 2)
}

/// The cgroup v2 directory the capture programs attach to. Default: the root of
/// the cgroup v2 hierarchy (every pod of the node); tests give one per node.
pub const NODE_CGROUP_ENV: &str = "AMBIT_NODE_CGROUP";
/// The kubelet's cgroup v2 directory, absolute or relative to the cgroup v2
/// mount: its connects to enrolled pods of the node (health probes) leave from
/// the probe address, the only plaintext a STRICT pod accepts. Empty: none.
pub const PROBE_CGROUP_ENV: &str = "AMBIT_PROBE_CGROUP";
/// Default of [`PROBE_CGROUP_ENV`]: the kubelet's systemd unit.
pub const PROBE_CGROUP_DEFAULT: &str = "system.slice/kubelet.service";
/// Kubernetes mode: the procfs of the node's processes, where pods' network
/// namespaces are found through their processes (`/proc` with hostPID; the
/// host's procfs mounted elsewhere, as the DaemonSet does, otherwise).
pub const HOST_PROC_ENV: &str = "AMBIT_HOST_PROC";
/// Default of [`HOST_PROC_ENV`].
pub const HOST_PROC_DEFAULT: &str = "/proc";
/// The network sysctls (`/proc/sys/net`) ztunnel writes in an enrolled pod's
/// network namespace (`ipv4/tcp_fwmark_accept`). Which namespace a file under
/// it shows is the opener's, whatever procfs mount it is reached through, so
/// a container that is not privileged (whose runtime mounts `/proc/sys`
/// read-only) writes through the host's `/proc/sys/net` mounted writable
/// elsewhere, as the DaemonSet does.
pub const SYSCTL_NET_ENV: &str = "AMBIT_SYSCTL_NET";
/// Default of [`SYSCTL_NET_ENV`].
pub const SYSCTL_NET_DEFAULT: &str = "/proc/sys/net";
/// The unix socket on which the CNI plugin `ambit-cni` asks this ztunnel to
/// enroll a new pod's network namespace (`proxy::cni`). Kubernetes mode
/// listens on [`CNI_SOCKET_DEFAULT`] unless this is set (empty: no socket);
/// local mode only when it is set.
pub const CNI_SOCKET_ENV: &str = "AMBIT_CNI_SOCKET";
/// Default of [`CNI_SOCKET_ENV`] in Kubernetes mode (a hostPath the
/// container runtime's plugin reaches).
pub const CNI_SOCKET_DEFAULT: &str = "/var/run/ambit/cni.sock";
/// How long a CNI ADD may wait for its pod to appear in the registry and be
/// enrolled before it is answered with an error (the plugin waits 30 s).
pub const CNI_ENROLL_TIMEOUT: Duration = Duration::from_secs(25);
/// Log line format: `plain` (default) or `json`.
pub const LOG_FORMAT_ENV: &str = "LOG_FORMAT";
/// Default of [`LOG_FORMAT_ENV`].
pub const LOG_FORMAT_DEFAULT: LogFormat = LogFormat::Plain;

/// The OTLP/gRPC collector that spans are exported to (`http://host:4317`);
/// unset: no export. [`OTLP_TRACES_ENDPOINT_ENV`] wins when both are set, as
/// in OpenTelemetry's SDKs.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The collector for spans alone (see [`OTLP_ENDPOINT_ENV`]).
pub const OTLP_TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `service.name` of exported spans (default: `ztunnel` or `waypoint`).
pub const OTEL_SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";

// Mesh configuration sources (`config`, `registry`).
/// The root namespace of the mesh: its policies without a selector apply mesh-wide.
pub const ROOT_NAMESPACE_DEFAULT: &str = "istio-system";
/// How often the local configuration file is checked for changes.
pub const CONFIG_FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Most changes the Kubernetes source applies to the registry in one batch.
pub const KUBE_BATCH_MAX: usize = 4096;

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
    /// The trust domain is not a valid SPIFFE trust domain.
    #[error("{name}={value:?} is invalid: expected a SPIFFE trust domain")]
    TrustDomain {
        /// The variable.
        name: &'static str,
        /// What it was set to.
        value: String,
        /// Which rule it breaks.
        #[source]
        source: crate::identity::spiffe::NameError,
    },
}

/// An OTLP/gRPC endpoint: `http://host:port` (plaintext gRPC, as to a
/// collector agent on the node; TLS to a collector is not built in).
pub fn parse_otlp_endpoint(name: &'static str, value: &str) -> Result<String, Error> {
    let invalid = || Error::Invalid {
        name,
        value: value.to_owned(),
        expected: "an http:// URL of an OTLP/gRPC collector (http://host:4317)",
    };
    let uri: hyper::Uri = value.parse().map_err(|_| invalid())?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(authority)) if !authority.host().is_empty() => Ok(value.to_owned()),
        _ => Err(invalid()),
    }
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// See [`TRUST_DOMAIN_ENV`].
    pub trust_domain: TrustDomain,
    /// See [`NODE_NAME_ENV`].
    pub node_name: Option<String>,
    /// See [`CONFIG_FILE_ENV`].
    pub config_file: Option<PathBuf>,
    /// See [`NODE_CGROUP_ENV`]; `None` means the cgroup v2 root.
    pub node_cgroup: Option<PathBuf>,
    /// See [`PIN_DIR_ENV`]; `None` means `/sys/fs/bpf/ambit/<node name>`.
    pub pin_dir: Option<PathBuf>,
    /// See [`PROBE_CGROUP_ENV`] (unset: [`PROBE_CGROUP_DEFAULT`]; empty: none).
    pub probe_cgroup: Option<PathBuf>,
    /// See [`HOST_PROC_ENV`].
    pub host_proc: PathBuf,
    /// See [`SYSCTL_NET_ENV`].
    pub sysctl_net: PathBuf,
    /// See [`CNI_SOCKET_ENV`]: `None` unset, `Some("")` off.
    pub cni_socket: Option<PathBuf>,
    /// The remote CA ([`CA_ADDRESS_ENV`] and the others): used unless
    /// `--ca-dir` runs one in-process.
    pub ca: crate::identity::remote::RemoteCa,
    /// See [`SOCKMAP_ENV`].
    pub sockmap: bool,
    /// See [`SOCKMAP_CAP_ENV`].
    pub sockmap_cap: u32,
    /// See [`SOCKMAP_BULK_ENV`] (0: never).
    pub sockmap_bulk: u64,
    /// See [`SOCKMAP_IGNORE_READ_CHECK_ENV`].
    pub sockmap_ignore_read_check: bool,
    /// See [`HEAP_TRIM_ENV`] (default true).
    pub heap_trim: bool,
    /// See [`DRAIN_TIMEOUT_ENV`].
    pub drain_timeout: Duration,
    /// See [`IDLE_TIMEOUT_ENV`].
    pub idle_timeout: Duration,
    /// See [`LOG_FORMAT_ENV`].
    pub log_format: LogFormat,
    /// See [`WORKER_THREADS_ENV`]; `None` means [`default_worker_threads`].
    pub worker_threads: Option<usize>,
    /// See [`ACCESS_LOG_SAMPLE_ENV`].
    pub access_log_sample: f64,
    /// See [`OTLP_ENDPOINT_ENV`].
    pub otlp_endpoint: Option<String>,
    /// See [`OTEL_SERVICE_NAME_ENV`].
    pub otel_service: Option<String>,
    /// What one HBONE peer may cost the server (`AMBIT_HBONE_*`, see
    /// [`crate::hbone::guard`]).
    pub hbone: crate::hbone::Limits,
}

impl Settings {
    /// Reads the settings from `env`.
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, Error> {
        let var = |name| env.var(name).filter(|v| !v.is_empty());
        let log_format = match var(LOG_FORMAT_ENV) {
            None => LOG_FORMAT_DEFAULT,
            Some(value) => parse_log_format(LOG_FORMAT_ENV, &value)?,
        };
        let sockmap = match var(SOCKMAP_ENV) {
            None => SOCKMAP_DEFAULT,
            Some(value) => parse_bool(SOCKMAP_ENV, &value)?,
        };
        let sockmap_cap = match var(SOCKMAP_CAP_ENV) {
            None => SOCKMAP_CAP_DEFAULT,
            Some(value) => value
                .parse::<u32>()
                .ok()
                .filter(|cap| SOCKMAP_CAP_RANGE.contains(cap))
                .ok_or(Error::Invalid {
                    name: SOCKMAP_CAP_ENV,
                    value,
                    expected: "a number of bytes from 1048576 (1 MiB) to 67108864 (64 MiB)",
                })?,
        };
        let sockmap_bulk = match var(SOCKMAP_BULK_ENV) {
            None => SOCKMAP_BULK_DEFAULT,
            Some(value) => value
                .parse::<u64>()
                .ok()
                .filter(|bytes| *bytes == 0 || *bytes >= u64::from(*SOCKMAP_CAP_RANGE.start()))
                .ok_or(Error::Invalid {
                    name: SOCKMAP_BULK_ENV,
                    value,
                    expected: "0 (never) or a number of bytes of at least 1048576 (1 MiB)",
                })?,
        };
        let sockmap_ignore_read_check = match var(SOCKMAP_IGNORE_READ_CHECK_ENV) {
            None => false,
            Some(value) => parse_bool(SOCKMAP_IGNORE_READ_CHECK_ENV, &value)?,
        };
        let heap_trim = match var(HEAP_TRIM_ENV) {
            None => true,
            Some(value) => parse_bool(HEAP_TRIM_ENV, &value)?,
        };
        let drain_timeout = match var(DRAIN_TIMEOUT_ENV) {
            None => DRAIN_TIMEOUT_DEFAULT,
            Some(value) => parse_seconds(DRAIN_TIMEOUT_ENV, &value)?,
        };
        let idle_timeout = match var(IDLE_TIMEOUT_ENV) {
            None => IDLE_TIMEOUT_DEFAULT,
            Some(value) => parse_seconds(IDLE_TIMEOUT_ENV, &value)?,
        };
        let access_log_sample = match var(ACCESS_LOG_SAMPLE_ENV) {
            None => 1.0,
            Some(value) => parse_fraction(ACCESS_LOG_SAMPLE_ENV, &value)?,
        };
        let otlp_endpoint = match (var(OTLP_TRACES_ENDPOINT_ENV), var(OTLP_ENDPOINT_ENV)) {
            (Some(value), _) => Some(parse_otlp_endpoint(OTLP_TRACES_ENDPOINT_ENV, &value)?),
            (None, Some(value)) => Some(parse_otlp_endpoint(OTLP_ENDPOINT_ENV, &value)?),
            (None, None) => None,
        };
        let worker_threads = match var(WORKER_THREADS_ENV) {
            None => None,
            Some(value) => Some(parse_threads(WORKER_THREADS_ENV, &value)?),
        };
        let trust_domain = match var(TRUST_DOMAIN_ENV) {
            None => {
                TrustDomain::new(TRUST_DOMAIN_DEFAULT).map_err(|source| Error::TrustDomain {
                    name: TRUST_DOMAIN_ENV,
                    value: TRUST_DOMAIN_DEFAULT.to_owned(),
                    source,
                })?
            }
            Some(value) => parse_trust_domain(TRUST_DOMAIN_ENV, &value)?,
        };
        let settings = Self {
            trust_domain,
            node_name: var(NODE_NAME_ENV),
            config_file: var(CONFIG_FILE_ENV).map(PathBuf::from),
            node_cgroup: var(NODE_CGROUP_ENV).map(PathBuf::from),
            pin_dir: var(PIN_DIR_ENV).map(PathBuf::from),
            // Set but empty: no kubelet cgroup at all.
            probe_cgroup: match env.var(PROBE_CGROUP_ENV) {
                None => Some(PathBuf::from(PROBE_CGROUP_DEFAULT)),
                Some(v) if v.is_empty() => None,
                Some(v) => Some(PathBuf::from(v)),
            },
            host_proc: PathBuf::from(var(HOST_PROC_ENV).as_deref().unwrap_or(HOST_PROC_DEFAULT)),
            sysctl_net: PathBuf::from(var(SYSCTL_NET_ENV).as_deref().unwrap_or(SYSCTL_NET_DEFAULT)),
            cni_socket: env.var(CNI_SOCKET_ENV).map(PathBuf::from),
            ca: crate::identity::remote::RemoteCa {
                address: var(CA_ADDRESS_ENV).unwrap_or_else(|| CA_ADDRESS_DEFAULT.to_owned()),
                server_name: var(CA_SERVER_NAME_ENV),
                token_file: PathBuf::from(
                    var(CA_TOKEN_FILE_ENV)
                        .as_deref()
                        .unwrap_or(CA_TOKEN_FILE_DEFAULT),
                ),
                root_file: PathBuf::from(var(CA_ROOT_ENV).as_deref().unwrap_or(CA_ROOT_DEFAULT)),
            },
            sockmap,
            sockmap_cap,
            sockmap_bulk,
            sockmap_ignore_read_check,
            heap_trim,
            drain_timeout,
            idle_timeout,
            log_format,
            worker_threads,
            access_log_sample,
            otlp_endpoint,
            otel_service: var(OTEL_SERVICE_NAME_ENV),
            hbone: crate::hbone::Limits::from_env(env)?,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Where and as what spans are exported, if anywhere; `service` names
    /// them unless [`OTEL_SERVICE_NAME_ENV`] does.
    pub fn otlp(&self, service: &str) -> Option<crate::telemetry::Otlp> {
        Some(crate::telemetry::Otlp {
            endpoint: self.otlp_endpoint.clone()?,
            service: self
                .otel_service
                .clone()
                .unwrap_or_else(|| service.to_owned()),
        })
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), Error> {
        for (name, path) in [
            (NODE_CGROUP_ENV, &self.node_cgroup),
            (PIN_DIR_ENV, &self.pin_dir),
            (HOST_PROC_ENV, &Some(self.host_proc.clone())),
            (SYSCTL_NET_ENV, &Some(self.sysctl_net.clone())),
            (
                CNI_SOCKET_ENV,
                &self
                    .cni_socket
                    .clone()
                    .filter(|p| !p.as_os_str().is_empty()),
            ),
        ] {
            if let Some(path) = path
                && !path.is_absolute()
            {
                return Err(Error::Invalid {
                    name,
                    value: path.display().to_string(),
                    expected: "an absolute path",
                });
            }
        }
        if let Some(node) = &self.node_name
            && !is_dns_subdomain(node)
        {
            return Err(Error::Invalid {
                name: NODE_NAME_ENV,
                value: node.clone(),
                expected: "a Kubernetes node name (lowercase alphanumerics, '-' and '.', at most 253)",
            });
        }
        Ok(())
    }

    /// The CNI socket to listen on: in Kubernetes mode (`kubernetes`) the
    /// default unless set, in local mode only when set; never when set empty.
    pub fn cni_socket(&self, kubernetes: bool) -> Option<PathBuf> {
        match &self.cni_socket {
            Some(path) if path.as_os_str().is_empty() => None,
            Some(path) => Some(path.clone()),
            None => kubernetes.then(|| PathBuf::from(CNI_SOCKET_DEFAULT)),
        }
    }

    /// The bpffs directory of this node's pinned state.
    pub fn pin_dir(&self, node: &str) -> PathBuf {
        self.pin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(PIN_DIR_DEFAULT_PARENT).join(node))
    }
}

/// Whether `name` is a valid DNS-1123 subdomain (Kubernetes object names).
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Parses `true`/`false` (also `1`/`0`) named by `name`.
pub fn parse_bool(name: &'static str, value: &str) -> Result<bool, Error> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(Error::Invalid {
            name,
            value: value.to_owned(),
            expected: "true or false",
        }),
    }
}

/// Parses a fraction from 0 to 1 named by `name`.
pub fn parse_fraction(name: &'static str, value: &str) -> Result<f64, Error> {
    value
        .parse::<f64>()
        .ok()
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| Error::Invalid {
            name,
            value: value.to_owned(),
            expected: "a fraction from 0 to 1",
        })
}

/// Parses a non-negative number of seconds named by `name`.
pub fn parse_seconds(name: &'static str, value: &str) -> Result<Duration, Error> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| Error::Invalid {
            name,
            value: value.to_owned(),
            expected: "a non-negative number of seconds",
        })
}

/// Parses a thread count named by `name` (for the error message): 1 to 64.
pub fn parse_threads(name: &'static str, value: &str) -> Result<usize, Error> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(|| Error::Invalid {
            name,
            value: value.to_owned(),
            expected: "a number of threads from 1 to 64",
        })
}

/// Parses a SPIFFE trust domain named by `name` (for the error message).
pub fn parse_trust_domain(name: &'static str, value: &str) -> Result<TrustDomain, Error> {
    TrustDomain::new(value).map_err(|source| Error::TrustDomain {
        name,
        value: value.to_owned(),
        source,
    })
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
                trust_domain: TrustDomain::new("cluster.local").unwrap(),
                node_name: None,
                config_file: None,
                node_cgroup: None,
                pin_dir: None,
                probe_cgroup: Some(PathBuf::from("system.slice/kubelet.service")),
                host_proc: PathBuf::from("/proc"),
                sysctl_net: PathBuf::from("/proc/sys/net"),
                cni_socket: None,
                ca: crate::identity::remote::RemoteCa {
                    address: "ambit-ca.ambit-system.svc:15012".into(),
                    server_name: None,
                    token_file: "/var/run/secrets/tokens/ambit-ca".into(),
                    root_file: "/var/run/secrets/ambit/root-cert.pem".into(),
                },
                sockmap: false,
                sockmap_cap: 1024 * 1024,
                sockmap_bulk: SOCKMAP_BULK_DEFAULT,
                sockmap_ignore_read_check: false,
                heap_trim: true,
                drain_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(3600),
                log_format: LogFormat::Plain,
                worker_threads: None,
                access_log_sample: 1.0,
                otlp_endpoint: None,
                otel_service: None,
                hbone: crate::hbone::Limits::default(),
            }
        );
        assert_eq!(
            settings.pin_dir("node-a"),
            PathBuf::from("/sys/fs/bpf/ambit/node-a")
        );
    }

    #[test]
    fn reads_each_variable() {
        let settings = Settings::from_env(&env(&[
            (NODE_CGROUP_ENV, "/sys/fs/cgroup/node-a"),
            (LOG_FORMAT_ENV, "json"),
            (NODE_NAME_ENV, "node-a"),
            (CONFIG_FILE_ENV, "/etc/ambit/mesh.yaml"),
            (PIN_DIR_ENV, "/sys/fs/bpf/test"),
            (SOCKMAP_ENV, "true"),
            (SOCKMAP_CAP_ENV, "4194304"),
            (SOCKMAP_BULK_ENV, "0"),
            (SOCKMAP_IGNORE_READ_CHECK_ENV, "true"),
            (HEAP_TRIM_ENV, "false"),
            (DRAIN_TIMEOUT_ENV, "2.5"),
            (WORKER_THREADS_ENV, "4"),
            (PROBE_CGROUP_ENV, "/sys/fs/cgroup/kubelet"),
        ]))
        .unwrap();
        assert_eq!(
            settings.probe_cgroup,
            Some(PathBuf::from("/sys/fs/cgroup/kubelet"))
        );
        let none = Settings::from_env(&env(&[(PROBE_CGROUP_ENV, "")])).unwrap();
        assert_eq!(none.probe_cgroup, None, "set but empty: no kubelet cgroup");
        assert_eq!(
            settings.node_cgroup,
            Some(PathBuf::from("/sys/fs/cgroup/node-a"))
        );
        assert_eq!(settings.log_format, LogFormat::Json);
        assert_eq!(settings.node_name.as_deref(), Some("node-a"));
        assert_eq!(
            settings.config_file,
            Some(PathBuf::from("/etc/ambit/mesh.yaml"))
        );
        assert_eq!(
            settings.pin_dir("node-a"),
            PathBuf::from("/sys/fs/bpf/test")
        );
        assert!(settings.sockmap);
        assert_eq!(settings.sockmap_cap, 4 * 1024 * 1024);
        assert_eq!(
            settings.sockmap_bulk, 0,
            "0: bulk transfers stay on the shortcut"
        );
        assert_eq!(
            Settings::from_env(&env(&[])).unwrap().sockmap_bulk,
            SOCKMAP_BULK_DEFAULT
        );
        for bad in ["1", "1048575", "32MiB", "-1"] {
            let error = Settings::from_env(&env(&[(SOCKMAP_BULK_ENV, bad)]))
                .expect_err(bad)
                .to_string();
            assert!(error.contains(SOCKMAP_BULK_ENV), "{error}");
        }
        assert!(settings.sockmap_ignore_read_check);
        for bad in ["0", "65536", "67108865", "1MiB", "-1"] {
            let error = Settings::from_env(&env(&[(SOCKMAP_CAP_ENV, bad)]))
                .expect_err(bad)
                .to_string();
            assert!(error.contains(SOCKMAP_CAP_ENV), "{error}");
        }
        assert!(!settings.heap_trim);
        assert!(
            Settings::from_env(&env(&[])).unwrap().heap_trim,
            "on by default"
        );
        assert!(Settings::from_env(&env(&[(HEAP_TRIM_ENV, "no")])).is_err());
        assert_eq!(settings.drain_timeout, Duration::from_millis(2500));
        assert_eq!(settings.worker_threads, Some(4));
    }

    #[test]
    fn the_otlp_endpoint_is_read_and_checked() {
        let off = Settings::from_env(&env(&[])).unwrap();
        assert_eq!(off.otlp("ztunnel"), None, "no endpoint: no export");
        let on = Settings::from_env(&env(&[(OTLP_ENDPOINT_ENV, "http://collector:4317")])).unwrap();
        let otlp = on.otlp("ztunnel").unwrap();
        assert_eq!(
            (otlp.endpoint.as_str(), otlp.service.as_str()),
            ("http://collector:4317", "ztunnel")
        );
        let both = Settings::from_env(&env(&[
            (OTLP_ENDPOINT_ENV, "http://collector:4317"),
            (OTLP_TRACES_ENDPOINT_ENV, "http://traces:4317"),
            (OTEL_SERVICE_NAME_ENV, "ztunnel-eu"),
        ]))
        .unwrap();
        let otlp = both.otlp("ztunnel").unwrap();
        assert_eq!(
            (otlp.endpoint.as_str(), otlp.service.as_str()),
            ("http://traces:4317", "ztunnel-eu"),
            "the traces endpoint and the service name win"
        );
        for bad in [
            "collector:4317",
            "https://collector:4317",
            "http://",
            "not a url",
        ] {
            let err = Settings::from_env(&env(&[(OTLP_ENDPOINT_ENV, bad)])).unwrap_err();
            assert!(
                err.to_string().contains(OTLP_ENDPOINT_ENV) && err.to_string().contains("http://"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn trust_domain_is_read_and_checked() {
        let settings = Settings::from_env(&env(&[(TRUST_DOMAIN_ENV, "mesh.example")])).unwrap();
        assert_eq!(settings.trust_domain.as_str(), "mesh.example");
        let unset = Settings::from_env(&env(&[(TRUST_DOMAIN_ENV, "")])).unwrap();
        assert_eq!(
            unset.trust_domain.as_str(),
            "cluster.local",
            "empty: default"
        );
        for bad in ["Mesh.Example", "a/b", "spiffe://x", &"a".repeat(256)] {
            let err = Settings::from_env(&env(&[(TRUST_DOMAIN_ENV, bad)])).unwrap_err();
            let chain = crate::identity::error_chain(&err);
            assert!(
                chain.starts_with(&format!(
                    "TRUST_DOMAIN={bad:?} is invalid: expected a SPIFFE trust domain: trust domain {bad:?} is invalid: "
                )),
                "{chain}"
            );
        }
    }

    #[test]
    fn worker_threads_default_to_half_the_cores_between_one_and_two() {
        let by_cores: Vec<usize> = [1, 2, 3, 4, 64].map(default_worker_threads).to_vec();
        assert_eq!(by_cores, [1, 1, 1, 2, 2]);
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
        for (name, value) in [
            (SOCKMAP_ENV, "yes"),
            (DRAIN_TIMEOUT_ENV, "-1"),
            (DRAIN_TIMEOUT_ENV, "soon"),
            (NODE_NAME_ENV, "Node_A"),
            (NODE_NAME_ENV, "-a"),
            (PIN_DIR_ENV, "bpf"),
            (WORKER_THREADS_ENV, "0"),
            (WORKER_THREADS_ENV, "65"),
            (WORKER_THREADS_ENV, "two"),
        ] {
            let err = Settings::from_env(&env(&[(name, value)])).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("{name}={value:?} is invalid")),
                "{err}"
            );
        }
    }
}
