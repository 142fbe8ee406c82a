//! Running the mesh on a testbed: the local-mode configuration file (Kubernetes
//! objects for the testbed's pods) and ztunnel processes on its nodes.

use std::{
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use crate::testbed::{Error, Process, Testbed};

/// How long a ztunnel may take to start and enroll its pods.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The Kubernetes objects of a test mesh: namespaces (ambient or not), the
/// testbed's pods placed in them, and Nodes (with their zones).
#[derive(Debug, Clone, Default)]
pub struct MeshConfig {
    namespaces: Vec<(String, bool)>,
    pods: Vec<PodEntry>,
    nodes: Vec<(String, Option<String>)>,
    documents: Vec<String>,
}

#[derive(Debug, Clone)]
struct PodEntry {
    pod: String,
    namespace: String,
    service_account: String,
    labels: Vec<(String, String)>,
    ready: bool,
    /// The `ambit.dev/netns` annotation, when not the pod's own namespace.
    netns: Option<String>,
}

impl MeshConfig {
    /// Declares a namespace; `ambient` adds `istio.io/dataplane-mode=ambient`.
    #[must_use]
    pub fn namespace(mut self, name: &str, ambient: bool) -> Self {
        self.namespaces.retain(|(n, _)| n != name);
        self.namespaces.push((name.to_owned(), ambient));
        self
    }

    /// Declares a Node object for the testbed node `node`, with the label
    /// `topology.kubernetes.io/zone=<zone>` when `zone` is given. Nodes not
    /// declared have no Node object (so no zone).
    #[must_use]
    pub fn node(mut self, node: &str, zone: Option<&str>) -> Self {
        self.nodes.retain(|(n, _)| n != node);
        self.nodes.push((node.to_owned(), zone.map(str::to_owned)));
        self
    }

    /// Places the testbed pod `pod` in `namespace`, ready, with label
    /// `app=<pod>` and a service account named after it.
    #[must_use]
    pub fn pod(mut self, pod: &str, namespace: &str) -> Self {
        self.pods.push(PodEntry {
            pod: pod.to_owned(),
            namespace: namespace.to_owned(),
            service_account: pod.to_owned(),
            labels: vec![("app".to_owned(), pod.to_owned())],
            ready: true,
            netns: None,
        });
        self
    }

    fn entry(&mut self, pod: &str) -> &mut PodEntry {
        self.pods
            .iter_mut()
            .find(|p| p.pod == pod)
            .unwrap_or_else(|| panic!("pod {pod} is not placed"))
    }

    /// Gives `pod` the service account `name` (its identity).
    #[must_use]
    pub fn service_account(mut self, pod: &str, name: &str) -> Self {
        name.clone_into(&mut self.entry(pod).service_account);
        self
    }

    /// Adds the label `key=value` to `pod`.
    #[must_use]
    pub fn label(mut self, pod: &str, key: &str, value: &str) -> Self {
        self.entry(pod)
            .labels
            .push((key.to_owned(), value.to_owned()));
        self
    }

    /// Marks `pod` not ready (its Ready condition is False).
    #[must_use]
    pub fn not_ready(mut self, pod: &str) -> Self {
        self.entry(pod).ready = false;
        self
    }

    /// Leaves `pod` without an `ambit.dev/netns` annotation: only the CNI
    /// plugin can name its network namespace.
    #[must_use]
    pub fn without_netns(self, pod: &str) -> Self {
        self.netns(pod, "")
    }

    /// Makes `pod`'s `ambit.dev/netns` annotation name `path` instead of the
    /// pod's own namespace.
    #[must_use]
    pub fn netns(mut self, pod: &str, path: &str) -> Self {
        self.entry(pod).netns = Some(path.to_owned());
        self
    }

    /// Adds a YAML document as is (a Service, a policy, ...).
    #[must_use]
    pub fn document(mut self, yaml: &str) -> Self {
        self.documents.push(yaml.trim().to_owned());
        self
    }

    /// Removes a document added with [`document`](Self::document) (the same
    /// text), to replace it.
    #[must_use]
    pub fn without_document(mut self, yaml: &str) -> Self {
        let yaml = yaml.trim();
        if let Some(i) = self.documents.iter().position(|d| d == yaml) {
            self.documents.remove(i);
        }
        self
    }

    /// The YAML document stream for `bed`.
    pub fn to_yaml(&self, bed: &Testbed) -> String {
        let mut yaml = String::new();
        for (name, ambient) in &self.namespaces {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"
            ));
            if *ambient {
                yaml.push_str("  labels:\n    istio.io/dataplane-mode: ambient\n");
            }
        }
        for (node, zone) in &self.nodes {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n",
                name = bed.node(node).name(),
            ));
            if let Some(zone) = zone {
                yaml.push_str(&format!(
                    "  labels:\n    topology.kubernetes.io/zone: \"{zone}\"\n"
                ));
            }
        }
        for entry in &self.pods {
            let pod = bed.pod(&entry.pod);
            let labels: String = entry
                .labels
                .iter()
                .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
                .collect();
            let netns = entry
                .netns
                .clone()
                .unwrap_or_else(|| pod.netns_path().display().to_string());
            let annotations = if netns.is_empty() {
                String::new()
            } else {
                format!("  annotations:\n    ambit.dev/netns: {netns}\n")
            };
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  \
                 uid: {uid}\n  labels:\n{labels}{annotations}spec:\n  \
                 nodeName: {node}\n  serviceAccountName: {sa}\nstatus:\n  podIP: {v4}\n  podIPs:\n  - ip: {v4}\n  \
                 - ip: {v6}\n  conditions:\n  - type: Ready\n    status: \"{ready}\"\n",
                name = entry.pod,
                uid = pod.uid(),
                namespace = entry.namespace,
                node = pod.node(),
                sa = entry.service_account,
                v4 = pod.ipv4(),
                v6 = pod.ipv6(),
                ready = if entry.ready { "True" } else { "False" },
            ));
        }
        for document in &self.documents {
            yaml.push_str("---\n");
            yaml.push_str(document);
            yaml.push('\n');
        }
        yaml
    }

    /// Writes the configuration to `path` atomically (a watcher never sees half
    /// a file).
    pub fn write(&self, bed: &Testbed, path: &Path) -> std::io::Result<()> {
        let staging = path.with_extension("tmp");
        std::fs::write(&staging, self.to_yaml(bed))?;
        std::fs::rename(&staging, path)
    }
}

/// The mesh CA of a testbed: `ztunnel ca` in the control plane (its own
/// network namespace, at [`crate::testbed::CONTROL_PLANE_V4`]:15012), holding
/// the only copy of the root key; the nodes' ztunnels and the waypoints are
/// its clients, each with a token of its own. Its node authorization reads
/// the mesh's configuration file or API server.
#[derive(Debug)]
pub struct MeshCa {
    process: Process,
    dir: PathBuf,
    address: std::net::SocketAddr,
}

/// Where the mesh CA reads which pods run on which node.
#[derive(Debug, Clone, Copy)]
pub enum CaSource<'a> {
    /// The mesh's configuration file.
    File(&'a Path),
    /// The API server this kubeconfig names.
    Kubernetes(&'a Path),
}

impl MeshCa {
    /// Starts the CA of `bed` (its key material in `<workdir>/ca`, created on
    /// first use) and waits until it serves.
    pub fn start(bed: &Testbed, source: CaSource<'_>) -> Result<Self, Error> {
        let dir = bed.workdir().join("ca");
        let io = |e: std::io::Error| Error::Process {
            command: "ztunnel ca".into(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let tokens = Self::tokens_path(bed);
        if !tokens.exists() {
            std::fs::write(&tokens, "").map_err(io)?;
        }
        let address = std::net::SocketAddr::from((crate::testbed::CONTROL_PLANE_V4, 15012));
        let mut cmd = bed.control_plane_command(ztunnel_binary());
        cmd.arg("ca")
            .arg("--listen")
            .arg(address.to_string())
            .arg("--root-dir")
            .arg(&dir)
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json");
        match source {
            CaSource::File(config) => {
                cmd.arg("--token-file")
                    .arg(&tokens)
                    .arg("--config")
                    .arg(config);
            }
            // As deploy/ca/deployment.yaml runs it: callers authenticated by
            // TokenReview (the fake API server answers from the same tokens
            // file), the roots published, waypoints deployed from the
            // PodTemplate `ambit-waypoint` when a test creates one.
            CaSource::Kubernetes(kubeconfig) => {
                cmd.env("KUBECONFIG", kubeconfig).args([
                    "--allowed-service-account=ambit-system/ztunnel",
                    "--token-review-audience=ambit-ca",
                    "--root-configmap=ambit-ca-root-cert",
                    "--waypoint-template=ambit-waypoint",
                    "--namespace=ambit-system",
                ]);
            }
        }
        let process = bed.spawn(cmd)?;
        let line = process.wait_for_stderr(READY_TIMEOUT, |l| {
            l.contains(r#""message":"CA serving""#) || l.starts_with("Error:")
        })?;
        if line.starts_with("Error:") {
            return Err(Error::Process {
                command: "ztunnel ca".into(),
                reason: format!("failed to start:\n{}", process.stderr().join("\n")),
            });
        }
        // What clients trust: the root, in a file they watch (a test may add
        // a root to it to rotate).
        std::fs::copy(dir.join("ca.crt"), dir.join("bundle.pem")).map_err(io)?;
        Ok(Self {
            process,
            dir,
            address,
        })
    }

    /// The tokens file of `bed`'s CA: `<token> <holder>` lines.
    pub fn tokens_path(bed: &Testbed) -> PathBuf {
        bed.workdir().join("ca").join("tokens")
    }

    /// The directory of its key material (`ca.key`, `ca.crt`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The address of its API.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// The trust bundle its clients load.
    pub fn bundle_file(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }

    /// A token file for the caller `holder` (a node name, or
    /// `<namespace>/<service-account>` for a workload), registered with the CA.
    pub fn token_file(&self, holder: &str) -> Result<PathBuf, Error> {
        let io = |e: std::io::Error| Error::Process {
            command: "ztunnel ca".into(),
            reason: e.to_string(),
        };
        let path = self.dir.join(format!("token-{}", holder.replace('/', "-")));
        if !path.exists() {
            let token = ztunnel::identity::ca::new_token().map_err(io)?;
            std::fs::write(&path, &token).map_err(io)?;
            let mut tokens = std::fs::OpenOptions::new()
                .append(true)
                .open(self.dir.join("tokens"))
                .map_err(io)?;
            std::io::Write::write_all(&mut tokens, format!("{token} {holder}\n").as_bytes())
                .map_err(io)?;
        }
        Ok(path)
    }

    /// The environment of a client of this CA holding `token_file`.
    pub fn client_env(&self, cmd: &mut std::process::Command, token_file: &Path) {
        cmd.env("CA_ADDRESS", self.address.to_string())
            .env("AMBIT_CA_ROOT", self.bundle_file())
            .env("AMBIT_CA_TOKEN_FILE", token_file);
    }

    /// Every JSON log line of the CA so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.process.json_logs()
    }

    /// Kills it (teardown).
    pub fn stop(&mut self) {
        self.process.kill();
    }
}

/// Options of a ztunnel process.
#[derive(Debug, Clone)]
pub struct ZtunnelOptions {
    /// Whether `sk_msg` shortcuts the loopback hop (off by default, as in
    /// ztunnel).
    pub sockmap: bool,
    /// Drain timeout on SIGTERM.
    pub drain: Duration,
    /// Run the mesh CA in-process from this directory (`--ca-dir`, the
    /// development mode); by default ztunnel is a client of the testbed's
    /// [`MeshCa`].
    pub ca_dir: Option<PathBuf>,
    /// The idle timeout of proxied connections (default: ztunnel's).
    pub idle: Option<Duration>,
    /// Where it listens for the CNI plugin (`AMBIT_CNI_SOCKET`; default: no
    /// socket in local mode; in Kubernetes mode the testbed always sets one,
    /// so that nodes never share the host's default path).
    pub cni_socket: Option<PathBuf>,
    /// More environment variables, set last.
    pub env: Vec<(String, String)>,
    /// A program that runs ztunnel, with its arguments before ztunnel's path
    /// (a profiler; empty: ztunnel runs directly).
    pub launcher: Vec<std::ffi::OsString>,
}

impl Default for ZtunnelOptions {
    fn default() -> Self {
        Self {
            sockmap: false,
            drain: Duration::from_secs(20),
            ca_dir: None,
            idle: None,
            cni_socket: None,
            env: Vec::new(),
            launcher: Vec::new(),
        }
    }
}

impl ZtunnelOptions {
    /// The `sk_msg` shortcut on, whatever ztunnel's start-up check of
    /// blocking sockmap reads finds (`AMBIT_SOCKMAP_IGNORE_READ_CHECK`; the
    /// kernel here fails it): for clients that read without blocking, retry a
    /// read the kernel ends with EAGAIN, or read only small answers, which
    /// that failure does not reach.
    pub fn force_sockmap(mut self) -> Self {
        self.sockmap = true;
        self.env
            .push(("AMBIT_SOCKMAP_IGNORE_READ_CHECK".into(), "true".into()));
        self
    }
}

/// A ztunnel process running on a testbed node, logging JSON.
#[derive(Debug)]
pub struct Ztunnel {
    process: Process,
}

/// `ambit-testbin` of this build, beside the test executable's directory.
pub fn testbin_binary() -> PathBuf {
    binary_dir().join("ambit-testbin")
}

/// The directory of this build's binaries (`target/<profile>`): the
/// executable's own for a binary there (`ambit-demo`), the parent of `deps/`
/// for a test.
pub fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the executable has a path");
    let dir = exe.parent().expect("the executable is in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps/ has a parent").to_owned()
    } else {
        dir.to_owned()
    }
}

/// The exposition of `node`'s ztunnel metrics endpoint (`127.0.0.1:15020` in
/// the node's network namespace).
pub fn node_metrics(bed: &Testbed, node: &str) -> String {
    let mut cmd = bed.node_command(node, "curl");
    cmd.args(["-sf", "http://127.0.0.1:15020/metrics"]);
    let out = bed
        .run(cmd, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("ztunnel {node}'s metrics endpoint answers: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `series` (the name and its labels) in `node`'s ztunnel
/// metrics, 0 when the series does not exist.
pub fn node_metric(bed: &Testbed, node: &str, series: &str) -> u64 {
    let series = format!("{series} ");
    node_metrics(bed, node)
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("a number"))
}

/// Starts `ambit-testbin <mode> <listen>` (echo or sink) in `pod` and waits until
/// it listens.
pub fn start_server(bed: &Testbed, pod: &str, mode: &str, listen: &str) -> Process {
    let mut cmd = bed.pod_command(pod, testbin_binary());
    cmd.args([mode, listen]);
    let server = bed.spawn(cmd).expect("server starts");
    server
        .wait_for_line("listening", Duration::from_secs(10))
        .expect("server listens");
    server
}

/// One request from `pod` to `dst` (3 s I/O limit); the line the client printed,
/// or the error it reported.
pub fn send(
    bed: &Testbed,
    pod: &str,
    dst: std::net::SocketAddr,
    message: &str,
) -> Result<String, String> {
    let mut cmd = bed.pod_command(pod, testbin_binary());
    cmd.args(["send", &dst.to_string(), message])
        .env("AMBIT_TESTBIN_TIMEOUT_MS", "3000");
    bed.run(cmd, Duration::from_secs(10))
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .map_err(|e| e.to_string())
}

/// The usual two-node bed: nodes a and b, `client` on a and `server` on b,
/// both in the ambient namespace `demo`, with `documents` (policies, ...)
/// added; and the mesh file, written.
pub fn client_and_server(tag: &str, documents: &[&str]) -> (Testbed, PathBuf) {
    let bed = Testbed::builder(tag)
        .node("a")
        .node("b")
        .pod("client", "a")
        .pod("server", "b")
        .build()
        .expect("testbed builds");
    let mut config = MeshConfig::default()
        .namespace("demo", true)
        .pod("client", "demo")
        .pod("server", "demo");
    for document in documents {
        config = config.document(document);
    }
    let path = bed.workdir().join("mesh.yaml");
    config.write(&bed, &path).expect("config written");
    (bed, path)
}

/// The ztunnel binary of this build: next to the test executable's directory
/// (`target/<profile>/ztunnel`). `cargo xtask test` builds it first.
pub fn ztunnel_binary() -> PathBuf {
    let binary = binary_dir().join("ztunnel");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p ztunnel` (cargo xtask test does)",
        binary.display()
    );
    binary
}

impl Ztunnel {
    /// Starts ztunnel on `node` with the configuration file `config`, inside the
    /// node's network namespace and cgroup, and waits until it is ready.
    pub fn start(
        bed: &Testbed,
        node: &str,
        config: &Path,
        options: &ZtunnelOptions,
    ) -> Result<Self, Error> {
        let mut cmd = match options.launcher.split_first() {
            Some((program, args)) => {
                let mut cmd = bed.ztunnel_command(node, program);
                cmd.args(args).arg(ztunnel_binary());
                cmd
            }
            None => bed.ztunnel_command(node, ztunnel_binary()),
        };
        cmd.arg("--config").arg(config);
        Self::spawn(bed, node, cmd, options, CaSource::File(config))
    }

    /// Starts ztunnel on `node` in Kubernetes mode: it reads the API server
    /// that `kubeconfig` names (the fake one of a test), and waits until it is
    /// ready.
    pub fn start_kubernetes(
        bed: &Testbed,
        node: &str,
        kubeconfig: &Path,
        options: &ZtunnelOptions,
    ) -> Result<Self, Error> {
        let mut cmd = bed.ztunnel_command(node, ztunnel_binary());
        cmd.env("KUBECONFIG", kubeconfig);
        Self::spawn(bed, node, cmd, options, CaSource::Kubernetes(kubeconfig))
    }

    fn spawn(
        bed: &Testbed,
        node: &str,
        mut cmd: std::process::Command,
        options: &ZtunnelOptions,
        ca_source: CaSource<'_>,
    ) -> Result<Self, Error> {
        let spec = bed.node(node);
        let cni_socket = match (&options.cni_socket, &ca_source) {
            (Some(path), _) => Some(path.clone()),
            (None, CaSource::Kubernetes(_)) => {
                Some(bed.workdir().join(format!("cni-{node}")).join("cni.sock"))
            }
            (None, CaSource::File(_)) => None,
        };
        match &options.ca_dir {
            Some(dir) => {
                cmd.arg("--ca-dir").arg(dir);
            }
            None => {
                let ca = bed.mesh_ca_or_start(|| MeshCa::start(bed, ca_source))?;
                let token = ca.token_file(node)?;
                ca.client_env(&mut cmd, &token);
            }
        }
        cmd.args(["--node", node])
            .arg("--node-cgroup")
            .arg(spec.cgroup())
            .env("AMBIT_PROBE_CGROUP", spec.kubelet_cgroup())
            .arg("--pin-dir")
            .arg(spec.pin_dir())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .env(
                "AMBIT_DRAIN_TIMEOUT_SECONDS",
                options.drain.as_secs_f64().to_string(),
            );
        if options.sockmap {
            cmd.arg("--sockmap");
        }
        if let Some(idle) = options.idle {
            cmd.env("AMBIT_IDLE_TIMEOUT_SECONDS", idle.as_secs_f64().to_string());
        }
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        if let Some(path) = cni_socket {
            cmd.env("AMBIT_CNI_SOCKET", path);
        }
        let process = bed.spawn(cmd)?;
        // A ztunnel that cannot start prints "Error: ..." and exits: stop waiting.
        let line = process.wait_for_stderr(READY_TIMEOUT, |l| {
            l.contains(r#""message":"ready""#) || l.starts_with("Error:")
        })?;
        if line.starts_with("Error:") {
            std::thread::sleep(Duration::from_millis(100));
            return Err(Error::Process {
                command: "ztunnel".into(),
                reason: format!("failed to start:\n{}", process.stderr().join("\n")),
            });
        }
        Ok(Self { process })
    }

    /// Every JSON log line so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.process.json_logs()
    }

    /// Runs `change` (rewriting the configuration file, say), then waits up
    /// to `timeout` until this ztunnel has applied a new configuration
    /// generation: from then on, new connections see it.
    pub fn after_update<T>(
        &self,
        timeout: Duration,
        change: impl FnOnce() -> T,
    ) -> Result<T, Error> {
        let applied = |l: &serde_json::Value| l["message"] == "configuration applied";
        let before = self.logs().iter().filter(|l| applied(l)).count();
        let result = change();
        let deadline = std::time::Instant::now() + timeout;
        while self.logs().iter().filter(|l| applied(l)).count() <= before {
            if std::time::Instant::now() >= deadline {
                return Err(Error::Process {
                    command: "ztunnel".into(),
                    reason: format!(
                        "no new configuration applied within {timeout:?}:\n{}",
                        self.stderr()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(result)
    }

    /// The access log lines so far (`target` = `access`).
    pub fn access_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["target"] == "access")
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

/// A Service `demo/web` with the VIP 198.19.0.10, port 80 (named `http`) to
/// target port 7000 of the pods labelled `svc: web`, for the service tests.
pub const WEB_SERVICE: &str = r"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  clusterIP: 198.19.0.10
  selector:
    svc: web
  ports:
  - name: http
    port: 80
    targetPort: 7000";
