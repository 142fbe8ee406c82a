//! The testbed: simulated nodes and pods in network namespaces and cgroups.
//!
//! Layout (DESIGN.md section 10), for node `i` and its pod `j`:
//!
//! ```text
//!  fabric netns: bridge br0 (198.18.0.2/24, fd00:a::2/64: the control plane,
//!                routes to each node's pod subnet via that node)
//!                br0 ── veth vn<i> ══ eth0 in node i (198.18.0.(10+i)/24, fd00:a::(10+i)/64)
//!  node i netns: bridge cbr0 (198.18.(16+i).1/24, fd00:1:i::1/64), forwarding on,
//!                routes to every other node's pod subnet via that node
//!                cbr0 ── veth vp<j> ══ eth0 in pod (198.18.(16+i).(10+j)/24, fd00:1:i::(10+j)/64)
//!  control plane cgroup: <cgroup2>/ambit-tests/<prefix>/control-plane (the
//!                mesh CA, an API server: processes in the fabric netns)
//!  node i cgroup: <cgroup2>/ambit-tests/<prefix>/<node name>
//!                 ├── ztunnel/            the node's ztunnel
//!                 ├── kubelet/            the "kubelet" (health probes)
//!                 └── kubepods/pod<uid>/  each pod's processes, a pause first
//! ```
//!
//! Interfaces are created inside their namespaces (`ip -n`), so the host
//! namespace never sees one. Every process a test starts in a pod runs in that
//! pod's cgroup under its node's, as on a node run by a kubelet (cgroupfs
//! driver); each pod holds a `sleep infinity` process from its creation, as a
//! pod sandbox holds a pause container. Other node processes run in the
//! node's cgroup itself.

mod capture;
mod cgroup;
mod owner;
mod process;
mod sys;

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Once,
    time::Duration,
};

pub use capture::{FabricCapture, contains};
pub use process::Process;
pub use sys::wait_with_timeout;

/// Where `ip netns` keeps its namespace files.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Where testbeds pin BPF state: `<this>/<prefix>/<node>`.
pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf/ambit-tests";
/// The control plane's address on the fabric (IPv4 and IPv6).
pub const CONTROL_PLANE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// See [`CONTROL_PLANE_V4`].
pub const CONTROL_PLANE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 2);
/// At most this many nodes, and this many pods per node (address plan).
pub const MAX_NODES: usize = 200;
/// See [`MAX_NODES`].
pub const MAX_PODS_PER_NODE: usize = 200;

/// What went wrong while building, using or tearing down a testbed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command could not be started or waited for.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr} {stdout}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
        /// What it printed on stdout.
        stdout: String,
    },
    /// A command ran longer than allowed and was killed.
    #[error("`{command}` did not finish within {after:?}")]
    Timeout {
        /// The command line.
        command: String,
        /// The limit.
        after: Duration,
    },
    /// A cgroup could not be created, read or removed.
    #[error("cgroup {path}")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// A directory (pins, scratch files) could not be removed.
    #[error("cannot remove {path}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// No cgroup v2 hierarchy is mounted.
    #[error("no cgroup v2 hierarchy is mounted")]
    NoCgroup2,
    /// The requested layout does not fit the address plan or names something
    /// undeclared.
    #[error("invalid testbed layout: {0}")]
    Layout(String),
    /// Reading a process's output failed.
    #[error("process `{command}`: {reason}")]
    Process {
        /// The command line.
        command: String,
        /// What happened.
        reason: String,
    },
}

/// Runs `cmd` (outside any testbed) to completion within `timeout`; a
/// non-zero exit or a timeout is an error carrying what it printed.
pub fn run_command(cmd: &mut Command, timeout: Duration) -> Result<Output, Error> {
    sys::output(cmd, timeout)
}

/// Whether this test may use the testbed (root, network namespaces, cgroups).
///
/// Outside CI, a test without the privileges prints why and returns `false`, so
/// the caller can skip. When `CI` is set, a missing privilege is a failure: this
/// panics instead of letting the test skip silently.
pub fn privileged(test: &str) -> bool {
    let reason = if !is_root() {
        Some("needs root (network namespaces, cgroups, BPF)")
    } else if !Path::new("/proc/self/ns/net").exists() {
        Some("needs network namespaces (CONFIG_NET_NS)")
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) if std::env::var_os("CI").is_some() => {
            panic!("{test}: {reason}; CI is set, so this fails instead of skipping")
        }
        Some(reason) => {
            eprintln!("skipping {test}: {reason}");
            false
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

/// A simulated node: a network namespace and a cgroup v2 subtree.
#[derive(Debug, Clone)]
pub struct Node {
    name: String,
    index: usize,
    netns: String,
    cgroup: PathBuf,
    pin_dir: PathBuf,
}

impl Node {
    /// The name given to the builder.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The node's network namespace name (for `ip netns`).
    pub fn netns(&self) -> &str {
        &self.netns
    }
    /// The namespace file, as ztunnel and `nsenter` take it.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }
    /// The node's cgroup v2 directory: every process of the node runs in it
    /// or below (the capture attaches here).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
    /// The cgroup of the node's ztunnel.
    pub fn ztunnel_cgroup(&self) -> PathBuf {
        self.cgroup.join("ztunnel")
    }
    /// The cgroup of the node's kubelet: its connects to enrolled pods are
    /// health probes.
    pub fn kubelet_cgroup(&self) -> PathBuf {
        self.cgroup.join("kubelet")
    }
    /// The bpffs directory for this node's ztunnel (maps and links), removed at
    /// teardown.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
    /// The node's address on the fabric.
    pub fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, octet(10 + self.index))
    }
    /// The node's IPv6 address on the fabric.
    pub fn ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, hextet(10 + self.index))
    }
    /// The node's address on its pods' bridge (their default gateway).
    pub fn pod_gateway_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, octet(16 + self.index), 1)
    }
    /// The IPv6 default gateway of the node's pods.
    pub fn pod_gateway_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 1, hextet(self.index), 0, 0, 0, 0, 1)
    }
}

/// A simulated pod: a network namespace with a veth to its node, and a cgroup
/// named after its uid.
#[derive(Debug, Clone)]
pub struct Pod {
    name: String,
    node: String,
    uid: String,
    netns: String,
    cgroup: PathBuf,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
}

impl Pod {
    /// The name given to the builder.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The pod's uid (a UUID, as Kubernetes gives), unique per testbed.
    pub fn uid(&self) -> &str {
        &self.uid
    }
    /// The pod's cgroup (`<node>/kubepods/pod<uid>`), where its processes run.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
    /// The name of the node the pod runs on.
    pub fn node(&self) -> &str {
        &self.node
    }
    /// The pod's network namespace name.
    pub fn netns(&self) -> &str {
        &self.netns
    }
    /// The namespace file, as ztunnel and `nsenter` take it.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }
    /// The pod IP.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }
    /// The pod's IPv6 address.
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }
}

fn octet(n: usize) -> u8 {
    u8::try_from(n).expect("the builder bounds node and pod counts to the address plan")
}

fn hextet(n: usize) -> u16 {
    u16::try_from(n).expect("the builder bounds node and pod counts to the address plan")
}

/// Declares the nodes and pods of a testbed; [`TestbedBuilder::build`] creates
/// them.
#[derive(Debug, Clone)]
pub struct TestbedBuilder {
    tag: String,
    nodes: Vec<String>,
    pods: Vec<(String, String)>,
    /// Pods whose network a CNI plugin sets up, not the testbed.
    bare: Vec<String>,
}

impl TestbedBuilder {
    /// Adds a node.
    #[must_use]
    pub fn node(mut self, name: &str) -> Self {
        self.nodes.push(name.to_owned());
        self
    }

    /// Adds a pod on `node`.
    #[must_use]
    pub fn pod(mut self, name: &str, node: &str) -> Self {
        self.pods.push((name.to_owned(), node.to_owned()));
        self
    }

    /// Adds a pod on `node` whose network namespace has nothing in it but
    /// `lo`: a container runtime's CNI plugins (run by the test) give it its
    /// link, its addresses ([`Pod::ipv4`], [`Pod::ipv6`], as for any pod of
    /// that slot) and its routes. Its cgroup and pause process exist as for
    /// any pod.
    #[must_use]
    pub fn bare_pod(mut self, name: &str, node: &str) -> Self {
        self.bare.push(name.to_owned());
        self.pod(name, node)
    }

    /// Creates the namespaces, links, addresses, routes and cgroups. On failure,
    /// whatever was created is torn down again.
    pub fn build(self) -> Result<Testbed, Error> {
        self.check()?;
        cleanup_stale_once();
        let prefix = owner::new_prefix(&self.tag);
        let mut bed = Testbed {
            fabric: format!("{prefix}-fab"),
            cgroup: cgroup::testbeds_root()?.join(&prefix),
            prefix,
            nodes: Vec::new(),
            pods: Vec::new(),
            netns: Vec::new(),
            pauses: Vec::new(),
            mesh_ca: std::cell::OnceCell::new(),
            torn_down: false,
        };
        // `bed` tears down what exists so far if any step fails (Drop).
        bed.create_fabric()?;
        for (index, name) in self.nodes.iter().enumerate() {
            bed.create_node(index, name)?;
        }
        bed.route_between_nodes()?;
        for (name, node) in &self.pods {
            bed.create_pod(name, node, self.bare.contains(name))?;
        }
        Ok(bed)
    }

    fn check(&self) -> Result<(), Error> {
        if self.nodes.is_empty() || self.nodes.len() > MAX_NODES {
            return Err(Error::Layout(format!(
                "{} nodes; between 1 and {MAX_NODES} fit",
                self.nodes.len()
            )));
        }
        let valid = |n: &str| {
            !n.is_empty()
                && n.len() <= 16
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        for name in self.nodes.iter().chain(self.pods.iter().map(|(p, _)| p)) {
            if !valid(name) {
                return Err(Error::Layout(format!(
                    "name {name:?}: use 1 to 16 of [A-Za-z0-9_]"
                )));
            }
        }
        for node in &self.nodes {
            let pods = self.pods.iter().filter(|(_, n)| n == node).count();
            if pods > MAX_PODS_PER_NODE {
                return Err(Error::Layout(format!(
                    "{pods} pods on node {node}; at most {MAX_PODS_PER_NODE} fit"
                )));
            }
        }
        if let Some((pod, node)) = self.pods.iter().find(|(_, n)| !self.nodes.contains(n)) {
            return Err(Error::Layout(format!(
                "pod {pod} is on undeclared node {node}"
            )));
        }
        let mut names: Vec<&String> = self
            .nodes
            .iter()
            .chain(self.pods.iter().map(|(p, _)| p))
            .collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Layout(format!("name {} is used twice", w[0])));
        }
        Ok(())
    }
}

/// A running testbed. Dropping it (also while unwinding from a panic) tears
/// everything down; [`Testbed::teardown`] does the same and reports errors.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    fabric: String,
    cgroup: PathBuf,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    /// Every namespace created so far, in creation order.
    netns: Vec<String>,
    /// Each pod's `sleep infinity`, which keeps its cgroup and namespace
    /// populated (killed at teardown).
    pauses: Vec<Process>,
    /// The mesh CA, once a test started it (see `mesh::MeshCa`).
    mesh_ca: std::cell::OnceCell<crate::mesh::MeshCa>,
    torn_down: bool,
}

impl Testbed {
    /// Starts declaring a testbed; `tag` (usually the test name) goes into every
    /// resource name.
    pub fn builder(tag: &str) -> TestbedBuilder {
        TestbedBuilder {
            tag: tag.to_owned(),
            nodes: Vec::new(),
            pods: Vec::new(),
            bare: Vec::new(),
        }
    }

    /// The prefix of every resource name of this testbed.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The node named `name`. Panics when there is none: a typo in a test.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node named {name} in this testbed"))
    }

    /// The pod named `name`. Panics when there is none: a typo in a test.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod named {name} in this testbed"))
    }

    /// The fabric's network namespace (the bridge between the nodes), where a
    /// test can watch what crosses between nodes.
    pub fn fabric_netns(&self) -> &str {
        &self.fabric
    }

    /// The mesh CA of this testbed, started by `start` the first time.
    pub fn mesh_ca_or_start(
        &self,
        start: impl FnOnce() -> Result<crate::mesh::MeshCa, Error>,
    ) -> Result<&crate::mesh::MeshCa, Error> {
        if let Some(ca) = self.mesh_ca.get() {
            return Ok(ca);
        }
        let ca = start()?;
        Ok(self.mesh_ca.get_or_init(|| ca))
    }

    /// The mesh CA, if a test started it.
    pub fn mesh_ca(&self) -> Option<&crate::mesh::MeshCa> {
        self.mesh_ca.get()
    }

    /// A command that runs `program` in the control plane: the fabric's network
    /// namespace (reachable from every node and pod at [`CONTROL_PLANE_V4`])
    /// and the control plane's cgroup, outside every node's.
    pub fn control_plane_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        enter(
            &self.cgroup.join("control-plane"),
            &Path::new(NETNS_DIR).join(&self.fabric),
            program.as_ref(),
        )
    }

    /// Starts capturing the fabric's packets that match the tcpdump `filter`
    /// into `<workdir>/<name>.pcap`; returns once tcpdump is listening.
    pub fn capture_fabric(&self, name: &str, filter: &str) -> Result<FabricCapture, Error> {
        FabricCapture::start(
            &self.fabric,
            self.workdir().join(format!("{name}.pcap")),
            filter,
        )
    }

    /// Every network namespace of the testbed (fabric, nodes, pods).
    pub fn netns_names(&self) -> &[String] {
        &self.netns
    }

    /// The cgroup directory holding the node cgroups.
    pub fn cgroup_dir(&self) -> &Path {
        &self.cgroup
    }

    /// A scratch directory of this testbed (config files, logs), removed at
    /// teardown.
    pub fn workdir(&self) -> PathBuf {
        let dir = std::env::temp_dir().join(&self.prefix);
        // Creating it lazily keeps testbeds that need none free of it.
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// A command that runs `program` inside pod `pod`'s network namespace and
    /// cgroup.
    pub fn pod_command(&self, pod: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let pod = self.pod(pod);
        enter(pod.cgroup(), &pod.netns_path(), program.as_ref())
    }

    /// A command that runs `program` in node `node`'s network namespace and
    /// cgroup: a process of the node that is neither its ztunnel nor its
    /// kubelet (as a host-network pod, or sshd).
    pub fn node_command(&self, node: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let node = self.node(node);
        enter(node.cgroup(), &node.netns_path(), program.as_ref())
    }

    /// A command that runs `program` as node `node`'s ztunnel: in the node's
    /// network namespace and the ztunnel cgroup.
    pub fn ztunnel_command(&self, node: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let node = self.node(node);
        enter(&node.ztunnel_cgroup(), &node.netns_path(), program.as_ref())
    }

    /// A command that runs `program` as node `node`'s kubelet: in the node's
    /// network namespace and the kubelet cgroup (its connects to enrolled pods
    /// are health probes).
    pub fn kubelet_command(&self, node: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let node = self.node(node);
        enter(&node.kubelet_cgroup(), &node.netns_path(), program.as_ref())
    }

    /// Runs `cmd` to completion within `timeout`; a non-zero exit is an error
    /// that carries its output.
    pub fn run(&self, mut cmd: Command, timeout: Duration) -> Result<Output, Error> {
        sys::output(&mut cmd, timeout)
    }

    /// Starts `cmd` in the background; it is killed when the [`Process`] is
    /// dropped, and at the latest at teardown.
    pub fn spawn(&self, cmd: Command) -> Result<Process, Error> {
        Process::spawn(cmd)
    }

    /// Tears everything down: kills every process in the node cgroups and the
    /// namespaces, deletes the namespaces (and with them every veth and bridge)
    /// and removes the cgroups.
    pub fn teardown(mut self) -> Result<(), Error> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<(), Error> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        if let Some(mut ca) = self.mesh_ca.take() {
            ca.stop();
        }
        let mut first_error = cgroup::remove_tree(&self.cgroup).err();
        // Already killed with their cgroups: reap them.
        for mut pause in self.pauses.drain(..) {
            pause.kill();
        }
        // Pinned links hold the cgroups' programs and the pods' sk_lookup (and so
        // their namespaces) alive: unpin them before the namespaces go.
        if let Err(e) = remove_dir(&Path::new(BPF_PIN_ROOT).join(&self.prefix)) {
            first_error.get_or_insert(e);
        }
        if let Err(e) = remove_dir(&std::env::temp_dir().join(&self.prefix)) {
            first_error.get_or_insert(e);
        }
        for netns in self.netns.iter().rev() {
            if let Err(e) = delete_netns(netns) {
                first_error.get_or_insert(e);
            }
        }
        // The directories every testbed shares go with the last one: while
        // another testbed lives they are not empty and stay (and one being
        // built recreates them, `create_dir_all` of its own path).
        let _ = std::fs::remove_dir(BPF_PIN_ROOT);
        if let Some(root) = self.cgroup.parent() {
            let _ = std::fs::remove_dir(root);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn add_netns(&mut self, name: String) -> Result<(), Error> {
        sys::run("ip", &["netns", "add", &name])?;
        self.netns.push(name);
        let name = self.netns.last().expect("just pushed");
        sys::ip_in(name, &["link", "set", "lo", "up"])?;
        // No duplicate address detection: addresses are unique by construction,
        // and DAD would leave them tentative (unusable) for a second or two.
        sysctl(
            name,
            &[
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ],
        )
    }

    fn create_fabric(&mut self) -> Result<(), Error> {
        let fabric = self.fabric.clone();
        self.add_netns(fabric.clone())?;
        sys::ip_in(&fabric, &["link", "add", "br0", "type", "bridge"])?;
        sys::ip_in(
            &fabric,
            &[
                "addr",
                "add",
                &format!("{CONTROL_PLANE_V4}/24"),
                "dev",
                "br0",
            ],
        )?;
        sys::ip_in(
            &fabric,
            &[
                "addr",
                "add",
                &format!("{CONTROL_PLANE_V6}/64"),
                "dev",
                "br0",
                "nodad",
            ],
        )?;
        sys::ip_in(&fabric, &["link", "set", "br0", "up"])?;
        cgroup::create(&self.cgroup)?;
        cgroup::create(&self.cgroup.join("control-plane"))
    }

    fn create_node(&mut self, index: usize, name: &str) -> Result<(), Error> {
        let node = Node {
            name: name.to_owned(),
            index,
            netns: format!("{}-n-{name}", self.prefix),
            cgroup: self.cgroup.join(name),
            pin_dir: Path::new(BPF_PIN_ROOT).join(&self.prefix).join(name),
        };
        self.add_netns(node.netns.clone())?;
        sysctl(
            &node.netns,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
            ],
        )?;
        cgroup::create(&node.cgroup)?;
        cgroup::create(&node.ztunnel_cgroup())?;
        cgroup::create(&node.kubelet_cgroup())?;
        let (ns, fabric) = (node.netns.as_str(), self.fabric.as_str());
        let uplink = format!("vn{index}");
        sys::ip_in(
            fabric,
            &[
                "link", "add", &uplink, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        sys::ip_in(fabric, &["link", "set", &uplink, "master", "br0", "up"])?;
        sys::ip_in(
            ns,
            &["addr", "add", &format!("{}/24", node.ipv4()), "dev", "eth0"],
        )?;
        sys::ip_in(
            ns,
            &[
                "addr",
                "add",
                &format!("{}/64", node.ipv6()),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        sys::ip_in(ns, &["link", "set", "eth0", "up"])?;
        sys::ip_in(ns, &["link", "add", "cbr0", "type", "bridge"])?;
        sys::ip_in(
            ns,
            &[
                "addr",
                "add",
                &format!("{}/24", node.pod_gateway_v4()),
                "dev",
                "cbr0",
            ],
        )?;
        sys::ip_in(
            ns,
            &[
                "addr",
                "add",
                &format!("{}/64", node.pod_gateway_v6()),
                "dev",
                "cbr0",
                "nodad",
            ],
        )?;
        sys::ip_in(ns, &["link", "set", "cbr0", "up"])?;
        self.nodes.push(node);
        Ok(())
    }

    fn route_between_nodes(&self) -> Result<(), Error> {
        // The control plane reaches each node's pods through that node.
        for node in &self.nodes {
            let subnet_v4 = format!("198.18.{}.0/24", 16 + node.index);
            let subnet_v6 = format!("fd00:1:{:x}::/64", node.index);
            sys::ip_in(
                &self.fabric,
                &["route", "add", &subnet_v4, "via", &node.ipv4().to_string()],
            )?;
            sys::ip_in(
                &self.fabric,
                &[
                    "-6",
                    "route",
                    "add",
                    &subnet_v6,
                    "via",
                    &node.ipv6().to_string(),
                ],
            )?;
        }
        for node in &self.nodes {
            for other in self.nodes.iter().filter(|o| o.index != node.index) {
                let subnet_v4 = format!("198.18.{}.0/24", 16 + other.index);
                let subnet_v6 = format!("fd00:1:{:x}::/64", other.index);
                sys::ip_in(
                    &node.netns,
                    &["route", "add", &subnet_v4, "via", &other.ipv4().to_string()],
                )?;
                sys::ip_in(
                    &node.netns,
                    &[
                        "-6",
                        "route",
                        "add",
                        &subnet_v6,
                        "via",
                        &other.ipv6().to_string(),
                    ],
                )?;
            }
        }
        Ok(())
    }

    fn create_pod(&mut self, name: &str, node_name: &str, bare: bool) -> Result<(), Error> {
        let node = self.node(node_name).clone();
        let slot = self.pods.iter().filter(|p| p.node == node_name).count();
        let uid = pod_uid(&self.prefix, name);
        let pod = Pod {
            name: name.to_owned(),
            node: node_name.to_owned(),
            cgroup: node.cgroup.join("kubepods").join(format!("pod{uid}")),
            uid,
            netns: format!("{}-p-{name}", self.prefix),
            ipv4: Ipv4Addr::new(198, 18, octet(16 + node.index), octet(10 + slot)),
            ipv6: Ipv6Addr::new(0xfd00, 1, hextet(node.index), 0, 0, 0, 0, hextet(10 + slot)),
        };
        self.add_netns(pod.netns.clone())?;
        if !bare {
            self.link_pod(&pod, &node, slot)?;
        }
        cgroup::create(&pod.cgroup)?;
        let mut pause = enter(&pod.cgroup, &pod.netns_path(), "sleep".as_ref());
        pause.arg("infinity");
        self.pauses.push(Process::spawn(pause)?);
        self.pods.push(pod);
        Ok(())
    }

    /// A veth from `node`'s bridge into `pod`, its addresses and routes.
    fn link_pod(&self, pod: &Pod, node: &Node, slot: usize) -> Result<(), Error> {
        let (ns, node_ns) = (pod.netns.as_str(), node.netns.as_str());
        let port = format!("vp{slot}");
        sys::ip_in(
            node_ns,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        sys::ip_in(node_ns, &["link", "set", &port, "master", "cbr0", "up"])?;
        sys::ip_in(
            ns,
            &["addr", "add", &format!("{}/24", pod.ipv4), "dev", "eth0"],
        )?;
        sys::ip_in(
            ns,
            &[
                "addr",
                "add",
                &format!("{}/64", pod.ipv6),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        sys::ip_in(ns, &["link", "set", "eth0", "up"])?;
        sys::ip_in(
            ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &node.pod_gateway_v4().to_string(),
            ],
        )?;
        sys::ip_in(
            ns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &node.pod_gateway_v6().to_string(),
            ],
        )?;
        Ok(())
    }
}

/// A UUID-shaped uid for pod `name` of the testbed `prefix` (unique per
/// testbed, as the prefix is).
fn pod_uid(prefix: &str, name: &str) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let half = |salt: u8| {
        let mut hasher = DefaultHasher::new();
        (salt, prefix, name).hash(&mut hasher);
        hasher.finish()
    };
    let bits = (u128::from(half(1)) << 64) | u128::from(half(2));
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(error) = self.teardown_inner() {
            // Drop may run while a test panics: report, never panic again. The next
            // run's stale cleanup removes whatever is left.
            eprintln!("testbed {}: teardown failed: {error}", self.prefix);
        }
    }
}

/// A command that moves itself into `cgroup`, then enters the network namespace
/// `netns` and execs `program`. The cgroup move comes first and from outside the
/// namespace: processes forked later inherit both.
fn enter(cgroup: &Path, netns: &Path, program: &std::ffi::OsStr) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec nsenter --net="$ns" -- "$@""#)
        .arg("sh")
        .arg(cgroup)
        .arg(netns)
        .arg(program);
    cmd
}

/// Writes sysctls of the namespace `netns` (paths relative to /proc/sys).
fn sysctl(netns: &str, settings: &[(&str, &str)]) -> Result<(), Error> {
    let script: String = settings
        .iter()
        .map(|(key, value)| format!("echo {value} > /proc/sys/{key} && "))
        .collect();
    sys::run(
        "ip",
        &["netns", "exec", netns, "sh", "-c", &format!("{script}true")],
    )
    .map(|_| ())
}

/// Removes a directory tree; a missing one is fine.
fn remove_dir(path: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Kills the processes left in `netns` and deletes it.
fn delete_netns(netns: &str) -> Result<(), Error> {
    if !Path::new(NETNS_DIR).join(netns).exists() {
        return Ok(());
    }
    if let Ok(pids) = sys::run("ip", &["netns", "pids", netns]) {
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    sys::run("ip", &["netns", "delete", netns]).map(|_| ())
}

static STALE_CLEANUP: Once = Once::new();

fn cleanup_stale_once() {
    STALE_CLEANUP.call_once(|| {
        if let Err(error) = cleanup_stale() {
            eprintln!("testbed: cleaning up after a previous run failed: {error}");
        }
    });
}

/// Removes the namespaces and cgroups of testbeds whose process is gone (a run
/// that crashed or was killed). Those of live processes, including parallel test
/// binaries, are left alone.
pub fn cleanup_stale() -> Result<(), Error> {
    let list = sys::run("ip", &["netns", "list"])?;
    let mut first_error = None;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if owner::is_stale(name)
            && let Err(e) = delete_netns(name)
        {
            first_error.get_or_insert(e);
        }
    }
    let root = cgroup::testbeds_root()?;
    for (dir, remove) in [
        (root, cgroup::remove_tree as fn(&Path) -> Result<(), Error>),
        (PathBuf::from(BPF_PIN_ROOT), remove_dir),
        (std::env::temp_dir(), remove_dir),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if owner::is_stale(&name.to_string_lossy())
                && let Err(e) = remove(&entry.path())
            {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
