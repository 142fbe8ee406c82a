//! Running waypoints on a testbed: the `waypoint` process in its pod, the
//! peers its tests talk to (`ambit-httpbin` backends, a JWKS server, curl and
//! gRPC clients in pods), and [`World`], the mesh most waypoint tests share.
//!
//! A waypoint is declared the way Istio declares one: a Gateway of class
//! `istio-waypoint` with an HBONE listener on 15008, and a testbed pod labelled
//! `gateway.networking.k8s.io/gateway-name=<gateway>` that runs the process.
//! ztunnel never enrolls that pod; it speaks HBONE itself, with a certificate
//! for its own service account from the testbed's [`MeshCa`].

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{
    jwt::{Issuer, TlsMaterial, jwks_json_of},
    mesh::{CaSource, MeshCa, MeshConfig, READY_TIMEOUT, Ztunnel, ZtunnelOptions},
    testbed::{Error, Process, Testbed},
};

/// The VIP of [`World`]'s Service `demo/api`.
pub const API_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
/// The Service port of `demo/api` named `http`.
pub const API_HTTP_PORT: u16 = 80;
/// The Service port of `demo/api` named `grpc`.
pub const API_GRPC_PORT: u16 = 9090;
/// The port the `api` pod's httpbin listens on (both Service ports target it).
pub const API_POD_PORT: u16 = 8080;
/// The port of [`World`]'s JWKS server.
pub const JWKS_PORT: u16 = 8443;
/// The `iss` of [`World`]'s tokens, and the issuer its RequestAuthentication
/// accepts.
pub const ISSUER: &str = "https://idp.test";
/// The key id of [`World`]'s signing key.
pub const KID: &str = "k1";
/// The SPIFFE identity of [`World`]'s waypoint (`demo/wp`).
pub const WAYPOINT_IDENTITY: &str = "spiffe://cluster.local/ns/demo/sa/wp";
/// The SPIFFE identity of [`World`]'s `client` pod.
pub const CLIENT_IDENTITY: &str = "spiffe://cluster.local/ns/demo/sa/client";
/// The label that makes a pod an instance of a Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// How long a request helper lets curl or a client run in all.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The waypoint binary of this build (`target/<profile>/waypoint`). Build it
/// first with `cargo build -p waypoint`.
pub fn waypoint_binary() -> PathBuf {
    let binary = crate::mesh::binary_dir().join("waypoint");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p waypoint`",
        binary.display()
    );
    binary
}

/// `ambit-httpbin` of this build; cargo builds it with the tests of
/// ambit-tests.
pub fn httpbin_binary() -> PathBuf {
    let binary = crate::mesh::binary_dir().join("ambit-httpbin");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p ambit-tests --bins`",
        binary.display()
    );
    binary
}

/// Options of a waypoint process.
#[derive(Debug, Clone)]
pub struct WaypointOptions {
    /// `--service-account`; the waypoint's default is the Gateway's name.
    /// Also names the CA token's holder (`<gateway namespace>/<account>`).
    pub service_account: Option<String>,
    /// `--jwks-ca`: a PEM file of the CAs it trusts for `jwksUri` fetches.
    pub jwks_ca: Option<PathBuf>,
    /// `--node`: by default the node the pod runs on; `Some("")` leaves the
    /// flag out.
    pub node: Option<String>,
    /// `AMBIT_DRAIN_TIMEOUT_SECONDS`.
    pub drain: Duration,
    /// More arguments, appended as given.
    pub args: Vec<String>,
}

impl Default for WaypointOptions {
    fn default() -> Self {
        Self {
            service_account: None,
            jwks_ca: None,
            node: None,
            drain: Duration::from_secs(1),
            args: Vec::new(),
        }
    }
}

/// A waypoint process running in a testbed pod, logging JSON.
#[derive(Debug)]
pub struct Waypoint {
    process: Process,
}

impl Waypoint {
    /// Starts `waypoint --config <config> --gateway <gateway>` inside `pod`'s
    /// network namespace and cgroup, as a client of the testbed's mesh CA
    /// (started from `config` if no ztunnel started it yet), and waits until
    /// it logs `ready`. A waypoint that prints `Error: ...` instead is an
    /// [`Error::Process`] with its whole stderr.
    pub fn start(
        bed: &Testbed,
        pod: &str,
        config: &Path,
        gateway: &str,
        options: &WaypointOptions,
    ) -> Result<Self, Error> {
        let (namespace, name) = gateway.split_once('/').ok_or_else(|| Error::Process {
            command: "waypoint".into(),
            reason: format!("gateway {gateway:?} is not <namespace>/<name>"),
        })?;
        let account = options.service_account.as_deref().unwrap_or(name);
        let ca = bed.mesh_ca_or_start(|| MeshCa::start(bed, CaSource::File(config)))?;
        let token = ca.token_file(&format!("{namespace}/{account}"))?;
        let mut cmd = bed.pod_command(pod, waypoint_binary());
        cmd.arg("--config").arg(config).args(["--gateway", gateway]);
        ca.client_env(&mut cmd, &token);
        if let Some(account) = &options.service_account {
            cmd.args(["--service-account", account]);
        }
        match options.node.as_deref() {
            None => {
                cmd.args(["--node", bed.pod(pod).node()]);
            }
            Some("") => {}
            Some(node) => {
                cmd.args(["--node", node]);
            }
        }
        if let Some(ca) = &options.jwks_ca {
            cmd.arg("--jwks-ca").arg(ca);
        }
        cmd.args(&options.args)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .env(
                "AMBIT_DRAIN_TIMEOUT_SECONDS",
                options.drain.as_secs_f64().to_string(),
            );
        let process = bed.spawn(cmd)?;
        // `Error: ...` is a start failure, `error: ...` a flag clap refused.
        let failed = |l: &str| l.starts_with("Error:") || l.starts_with("error:");
        let line = process.wait_for_stderr(READY_TIMEOUT, |l| {
            l.contains(r#""message":"ready""#) || failed(l)
        })?;
        if failed(&line) {
            // The rest of the error chain follows the first line.
            std::thread::sleep(Duration::from_millis(100));
            return Err(Error::Process {
                command: "waypoint".into(),
                reason: format!("failed to start:\n{}", process.stderr().join("\n")),
            });
        }
        Ok(Self { process })
    }

    /// Every JSON log line so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.process.json_logs()
    }

    /// The access log lines so far (`target` = `access`): message `request`
    /// for an HTTP request, `connection complete`, `connection failed` or
    /// `connection denied` for a TCP stream (docs/waypoint.md, "Access log").
    pub fn access_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["target"] == "access")
            .collect()
    }

    /// The access log lines of HTTP requests so far.
    pub fn request_logs(&self) -> Vec<serde_json::Value> {
        self.access_logs()
            .into_iter()
            .filter(|l| l["message"] == "request")
            .collect()
    }

    /// Waits until a log line satisfies `matches`.
    pub fn wait_for_log(
        &self,
        timeout: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, Error> {
        self.process.wait_for_json(timeout, matches)
    }

    /// Raw stderr, for failure messages.
    pub fn stderr(&self) -> String {
        self.process.stderr().join("\n")
    }

    /// SIGTERM, then waits for the drain to finish (up to `timeout`).
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus, Error> {
        self.process.terminate(timeout)
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// Starts `ambit-httpbin serve <listen> <name>` in `pod` and waits until it
/// listens.
pub fn start_httpbin(bed: &Testbed, pod: &str, listen: &str, name: &str) -> Process {
    let mut cmd = bed.pod_command(pod, httpbin_binary());
    cmd.args(["serve", listen, name]);
    let server = bed.spawn(cmd).expect("httpbin starts");
    server
        .wait_for_line("listening", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("httpbin {name} listens in {pod}: {e}"));
    server
}

/// What a curl run printed: the status and the body.
pub type CurlReply = (u16, String);

/// Runs `curl -sS --max-time 5 <args>` in `pod`: the HTTP status and the
/// body, or, when curl failed (no connection, no response, time-out), its
/// exit status and message.
pub fn curl(bed: &Testbed, pod: &str, args: &[&str]) -> Result<CurlReply, String> {
    let mut cmd = bed.pod_command(pod, "curl");
    cmd.args(["-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"])
        .args(args);
    let out = bed.run(cmd, CLIENT_TIMEOUT).map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, code) = stdout
        .rsplit_once('\n')
        .ok_or_else(|| format!("curl printed no status: {stdout:?}"))?;
    let status = code
        .trim()
        .parse()
        .map_err(|_| format!("curl printed the status {code:?}"))?;
    Ok((status, body.to_owned()))
}

/// The outcome of one `ambit.test.Echo/Say` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcReply {
    /// The gRPC status code (0 for a reply).
    pub code: i32,
    /// The reply's message, or the status message.
    pub message: String,
    /// The server that replied, `-` without a reply.
    pub server: String,
    /// The request metadata the server saw (`key=value`, sorted), on a reply.
    pub metadata: Vec<String>,
}

/// Calls `ambit.test.Echo/Say` on `addr` from `pod` with `message` and the
/// `key=value` `metadata`; `Err` when no gRPC status came back at all.
pub fn grpc_call(
    bed: &Testbed,
    pod: &str,
    addr: SocketAddr,
    message: &str,
    metadata: &[&str],
) -> Result<GrpcReply, String> {
    let mut cmd = bed.pod_command(pod, httpbin_binary());
    cmd.args(["grpc-call", &addr.to_string(), message])
        .args(metadata)
        .env("AMBIT_TESTBIN_TIMEOUT_MS", "5000");
    let out = bed.run(cmd, CLIENT_TIMEOUT).map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("grpc "))
        .ok_or_else(|| format!("grpc-call printed no result: {stdout:?}"))?;
    let parse = || {
        let rest = line.strip_prefix("code=")?;
        let (code, rest) = rest.split_once(" message=")?;
        let (message, server) = rest.rsplit_once(" server=")?;
        Some((code.parse().ok()?, message.to_owned(), server.to_owned()))
    };
    let (code, message, server) = parse().ok_or_else(|| format!("grpc-call printed {line:?}"))?;
    let metadata = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("metadata "))
        .map(str::to_owned)
        .collect();
    Ok(GrpcReply {
        code,
        message,
        server,
        metadata,
    })
}

/// What `ambit-httpbin raw` got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// Every byte the server sent, as text.
    pub response: String,
    /// Whether the server closed the connection (FIN or reset) rather than
    /// leaving it open for 2 s.
    pub closed: bool,
}

static RAW_FILES: AtomicU32 = AtomicU32::new(0);

/// Sends exactly `bytes` to `addr` from `pod` over one TCP connection
/// (`ambit-httpbin raw`) and returns what came back.
pub fn raw(bed: &Testbed, pod: &str, addr: SocketAddr, bytes: &[u8]) -> Result<RawReply, String> {
    let file = bed.workdir().join(format!(
        "raw-{}.bin",
        RAW_FILES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, bytes).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let mut cmd = bed.pod_command(pod, httpbin_binary());
    cmd.args(["raw", &addr.to_string()])
        .arg(format!("@{}", file.display()))
        .env("AMBIT_TESTBIN_TIMEOUT_MS", "5000");
    let out = bed.run(cmd, CLIENT_TIMEOUT).map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (response, last) = stdout
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .unwrap_or(("", stdout.trim_end_matches('\n')));
    let closed = match last.strip_prefix("closed=") {
        Some("true") => true,
        Some("false") => false,
        _ => return Err(format!("raw printed no closed= line: {stdout:?}")),
    };
    Ok(RawReply {
        response: response.to_owned(),
        closed,
    })
}

/// An `ambit-httpbin jwks` server: HTTPS with a certificate from a CA of its
/// own, serving a JWK Set file.
#[derive(Debug)]
pub struct Jwks {
    process: Process,
    /// The CA that signed the server's certificate: what `--jwks-ca` names.
    pub ca_file: PathBuf,
    /// The JWK Set it serves (read again for each request).
    pub body_file: PathBuf,
    /// `https://<pod IPv4>:<port>/jwks.json`.
    pub url: String,
}

impl Jwks {
    /// Starts a JWKS server for the keys of `issuers` in `pod`, on `port`
    /// (all addresses), with TLS material for the pod's addresses written
    /// into `<workdir>/jwks`.
    pub fn start(bed: &Testbed, pod: &str, port: u16, issuers: &[&Issuer]) -> Self {
        let spec = bed.pod(pod);
        let dir = bed.workdir().join("jwks");
        std::fs::create_dir_all(&dir).expect("the JWKS directory is created");
        let tls = TlsMaterial::generate(&[IpAddr::V4(spec.ipv4()), IpAddr::V6(spec.ipv6())], &[]);
        let (ca_file, cert, key) = tls.write_to(&dir).expect("TLS material written");
        let body_file = dir.join("jwks.json");
        std::fs::write(&body_file, jwks_json_of(issuers)).expect("JWK Set written");
        let mut cmd = bed.pod_command(pod, httpbin_binary());
        cmd.arg("jwks")
            .arg(format!("[::]:{port}"))
            .arg(&cert)
            .arg(&key)
            .arg(&body_file);
        let process = bed.spawn(cmd).expect("the JWKS server starts");
        process
            .wait_for_line("listening", Duration::from_secs(10))
            .expect("the JWKS server listens");
        Self {
            process,
            ca_file,
            body_file,
            url: format!("https://{}:{port}/jwks.json", spec.ipv4()),
        }
    }

    /// Replaces the served keys with those of `issuers` (atomically).
    pub fn publish(&self, issuers: &[&Issuer]) {
        let staging = self.body_file.with_extension("tmp");
        std::fs::write(&staging, jwks_json_of(issuers)).expect("JWK Set written");
        std::fs::rename(&staging, &self.body_file).expect("JWK Set replaced");
    }

    /// The fetches it served since the last call (`fetch <target>` lines),
    /// waiting up to `timeout` for the first one.
    pub fn fetches(&self, timeout: Duration) -> Vec<String> {
        let mut fetches = Vec::new();
        let mut wait = timeout;
        while let Ok(line) = self.process.next_line(wait) {
            if let Some(target) = line.strip_prefix("fetch ") {
                fetches.push(target.to_owned());
            }
            wait = Duration::from_millis(100);
        }
        fetches
    }
}

/// The Gateway `demo/wp`: a waypoint, as `istioctl waypoint generate` writes
/// it.
pub const GATEWAY: &str = r"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: wp
  namespace: demo
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE";

/// The Service `demo/api` (VIP [`API_VIP`]): port 80 `http` and port 9090
/// `grpc`, both to 8080 of the pods labelled `app: api`, through the waypoint
/// `wp`.
pub const API_SERVICE: &str = r"
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: demo
  labels:
    istio.io/use-waypoint: wp
spec:
  clusterIP: 198.19.0.20
  selector:
    app: api
  ports:
  - name: http
    port: 80
    targetPort: 8080
  - name: grpc
    port: 9090
    targetPort: 8080";

/// A RequestAuthentication on the Gateway `demo/wp` for tokens of [`ISSUER`]
/// with keys from `jwks_uri`.
pub fn request_authentication(jwks_uri: &str) -> String {
    format!(
        r"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: idp
  namespace: demo
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: wp
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: {jwks_uri}"
    )
}

/// Declares a [`World`]: which policies (and other documents) it starts with.
#[derive(Debug, Clone)]
pub struct WorldBuilder {
    tag: String,
    documents: Vec<String>,
}

impl WorldBuilder {
    /// Adds a YAML document (an AuthorizationPolicy, say) to the mesh.
    #[must_use]
    pub fn document(mut self, yaml: &str) -> Self {
        self.documents.push(yaml.to_owned());
        self
    }

    /// Builds the testbed, writes the mesh, starts the servers, both ztunnels
    /// and the waypoint, and waits until each is ready. Panics on any failure:
    /// a test cannot go on without its world.
    pub fn build(self) -> World {
        let bed = Testbed::builder(&self.tag)
            .node("a")
            .node("b")
            .pod("client", "a")
            .pod("wp", "a")
            .pod("api", "b")
            .pod("jwks", "b")
            .build()
            .expect("testbed builds");
        let issuer = Issuer::generate(ISSUER, KID);
        let jwks = Jwks::start(&bed, "jwks", JWKS_PORT, &[&issuer]);
        let mut mesh = MeshConfig::default()
            .namespace("demo", true)
            .namespace("idp", false)
            .pod("client", "demo")
            .pod("api", "demo")
            .pod("wp", "demo")
            .label("wp", GATEWAY_NAME_LABEL, "wp")
            .pod("jwks", "idp")
            .document(API_SERVICE)
            .document(GATEWAY)
            .document(&request_authentication(&jwks.url));
        for document in &self.documents {
            mesh = mesh.document(document);
        }
        let config = bed.workdir().join("mesh.yaml");
        mesh.write(&bed, &config).expect("config written");
        let zt_a =
            Ztunnel::start(&bed, "a", &config, &ZtunnelOptions::default()).expect("ztunnel a");
        let zt_b =
            Ztunnel::start(&bed, "b", &config, &ZtunnelOptions::default()).expect("ztunnel b");
        let api = start_httpbin(&bed, "api", &format!("[::]:{API_POD_PORT}"), "api");
        let options = WaypointOptions {
            jwks_ca: Some(jwks.ca_file.clone()),
            ..WaypointOptions::default()
        };
        let waypoint = Waypoint::start(&bed, "wp", &config, "demo/wp", &options)
            .unwrap_or_else(|e| panic!("the waypoint starts: {e}"));
        World {
            waypoint,
            zt_a,
            zt_b,
            api,
            jwks,
            issuer,
            mesh,
            config,
            bed,
        }
    }
}

/// The mesh of the waypoint tests. Nodes `a` and `b`; namespace `demo`
/// (ambient) with `client` (node a), `api` (node b, `ambit-httpbin serve` as
/// "api" on [`API_POD_PORT`]) and the waypoint pod `wp` (node a) of the Gateway
/// `demo/wp`; namespace `idp` (not ambient) with the JWKS server `jwks` (node
/// b). The Service `demo/api` ([`API_SERVICE`]) uses the waypoint, whose
/// RequestAuthentication accepts [`World::issuer`]'s tokens.
///
/// Fields drop in order: the processes go before the testbed.
#[derive(Debug)]
pub struct World {
    /// The waypoint of `demo/wp`, in pod `wp`.
    pub waypoint: Waypoint,
    /// Node a's ztunnel (client and waypoint).
    pub zt_a: Ztunnel,
    /// Node b's ztunnel (api).
    pub zt_b: Ztunnel,
    /// The api backend.
    pub api: Process,
    /// The JWKS server.
    pub jwks: Jwks,
    /// The signing key the JWKS server publishes.
    pub issuer: Issuer,
    /// The mesh as written.
    pub mesh: MeshConfig,
    /// The mesh's configuration file.
    pub config: PathBuf,
    /// The testbed.
    pub bed: Testbed,
}

impl World {
    /// Starts declaring a world; `tag` names the testbed (keep it short and
    /// unique per test).
    pub fn builder(tag: &str) -> WorldBuilder {
        WorldBuilder {
            tag: tag.to_owned(),
            documents: Vec::new(),
        }
    }

    /// `http://<API_VIP>:<port><path>`.
    pub fn url(port: u16, path: &str) -> String {
        format!("http://{API_VIP}:{port}{path}")
    }

    /// The Service's gRPC address.
    pub fn grpc_addr() -> SocketAddr {
        SocketAddr::from((API_VIP, API_GRPC_PORT))
    }

    /// The api pod's own address (no Service, so no waypoint).
    pub fn api_pod_addr(&self) -> SocketAddr {
        SocketAddr::from((self.bed.pod("api").ipv4(), API_POD_PORT))
    }

    /// Rewrites the mesh with `document` added, and waits until both
    /// ztunnels applied it.
    pub fn add_document(&mut self, document: &str, timeout: Duration) {
        let mesh = self.mesh.clone().document(document);
        self.zt_a
            .after_update(timeout, || {
                self.zt_b.after_update(timeout, || {
                    mesh.write(&self.bed, &self.config)
                        .expect("config rewritten");
                })
            })
            .expect("ztunnel a applied the update")
            .expect("ztunnel b applied the update");
        self.mesh = mesh;
    }
}
