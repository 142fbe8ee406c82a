//! Traffic capture with eBPF: loads the programs embedded in this binary, attaches
//! them to the node's cgroup and to enrolled pods' network namespaces, and keeps
//! the maps the data path reads.
//!
//! This is the only module that uses aya or `unsafe`. The object comes from
//! `ebpf/programs`, built by `cargo xtask build-ebpf` and embedded at compile time;
//! map and program names come from `ambit-ebpf-common`, never from literals.
//!
//! State that must outlive a ztunnel restart lives in bpffs under the pin
//! directory (`/sys/fs/bpf/ambit/<node>/` by default): the maps, by name, and the
//! program links. Links stay attached while ztunnel is down, so an enrolled pod's
//! connects keep being redirected to a listener that is not there and fail:
//! traffic never leaves a pod uncaptured. A new ztunnel attaches its programs
//! first, then replaces the pinned links, so there is no uncaptured gap either.

mod host;
mod netns;
mod pin;
mod podns;
mod route;
mod shortcut;

use std::{
    collections::HashMap as StdHashMap,
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::BorrowedFd,
    path::{Path, PathBuf},
};

use ambit_ebpf_common::{
    AF_INET, AF_INET6, FlowKey, ListenerKey, NODE_IDS_SLOTS, OrigDst, PortKey, SETTINGS_SLOTS,
    flag, map_name, node_id, program_name, setting,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuHashMap, SockHash, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SkLookup, SkMsg, SockOps,
        links::{FdLink, PinnedLink},
    },
};

pub use host::{
    HostError, MIN_KERNEL, Privileges, cgroup_id, cgroup2_mount, check_host, own_cgroup,
    raise_open_file_limit,
};
pub use netns::{Netns, NetnsCookie, in_netns, netns_cookie, own_netns_cookie};
pub use podns::{NetnsId, PodNetns, ProcessScan};
pub use route::{add_probe_addresses, missing_addresses, setup_transparent_return};
pub use shortcut::{
    ReadCounter, ShortcutConnection, ShortcutReads, ShortcutStats, TcpMemory, TcpPressure,
    shortcut_connections, shortcut_stats,
};

/// The programs and maps as built by `cargo xtask build-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AMBIT_EBPF_OBJECT"));

/// The cgroup programs of the capture, in attach order.
const CGROUP_PROGRAMS: [&str; 7] = [
    program_name::GUARD_BIND4,
    program_name::GUARD_BIND6,
    program_name::TRACK_SOCKETS,
    program_name::PEER_ORIG4,
    program_name::PEER_ORIG6,
    program_name::REDIRECT_CONNECT4,
    program_name::REDIRECT_CONNECT6,
];

/// Errors of the capture layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host cannot run the capture (kernel, cgroup v2, privileges).
    #[error("this host cannot run ztunnel's eBPF capture")]
    Host(#[from] HostError),
    /// The kernel refused the embedded object.
    #[error("cannot load the embedded eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    /// The object lacks a program or map this build expects: the object and the
    /// binary were built from different sources.
    #[error("Bug: {kind} {name} is missing from the embedded eBPF object")]
    Missing {
        /// `program` or `map`.
        kind: &'static str,
        /// Its name.
        name: &'static str,
    },
    /// Loading (verifying) or attaching a program failed.
    #[error("eBPF program {name} could not be {action}")]
    Program {
        /// The program's function name.
        name: &'static str,
        /// `loaded`, `attached` or `detached`.
        action: &'static str,
        /// What the kernel or aya said.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("eBPF map {name}: cannot {action}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// What was attempted.
        action: &'static str,
        /// What the kernel or aya said.
        #[source]
        source: MapError,
    },
    /// A link could not be taken over from aya to be pinned.
    #[error("eBPF program {name}: cannot take its link")]
    Link {
        /// The program's function name.
        name: &'static str,
        /// What aya said.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// bpffs or a pin in it could not be used.
    #[error("cannot use pinned BPF state at {path}")]
    Pin {
        /// The bpffs path.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// The cgroup to attach to could not be opened.
    #[error("cannot open cgroup {path}")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// A network namespace could not be entered or inspected.
    #[error("cannot use network namespace {path}")]
    Netns {
        /// The namespace file (for example `/var/run/netns/<name>`).
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// Routes or rules in a pod's network namespace could not be set up.
    #[error("cannot set up routing in network namespace {path}: {what}")]
    Route {
        /// The namespace file.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// A network sysctl of the transparent return path could not be set in a
    /// pod's namespace.
    #[error(
        "cannot set {file} in network namespace {netns} \
         (AMBIT_SYSCTL_NET: the host's /proc/sys/net mounted writable; a container runtime \
         mounts the container's own /proc/sys read-only)"
    )]
    Sysctl {
        /// The namespace file.
        netns: PathBuf,
        /// The sysctl file written.
        file: PathBuf,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
}

fn map_error(name: &'static str, action: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map {
        name,
        action,
        source,
    }
}

fn program_error(name: &'static str, action: &'static str) -> impl FnOnce(ProgramError) -> Error {
    move |source| Error::Program {
        name,
        action,
        source,
    }
}

/// How to run the capture on this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaptureConfig {
    /// bpffs directory for this node's maps and links.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory whose sockets are captured (the node's pods).
    pub cgroup: PathBuf,
    /// ztunnel's own cgroup v2 directory: connects from it are never
    /// redirected.
    pub own_cgroup: PathBuf,
    /// The kubelet's cgroup v2 directory: its connects to enrolled pods leave
    /// from the probe address. `None`: no process is taken for the kubelet,
    /// so STRICT pods refuse every plaintext probe.
    pub probe_cgroup: Option<PathBuf>,
    /// Whether `sk_msg` shortcuts the app <-> ztunnel loopback hop.
    pub sockmap: bool,
    /// The most bytes an application may have sent over the shortcut that
    /// ztunnel has not read yet; past it, its sends take loopback TCP.
    pub shortcut_cap: u32,
    /// A stream read this far without a pause while on TCP leaves the
    /// shortcut for good (0: never; see [`ReadCounter`]).
    pub shortcut_bulk: u64,
    /// Keep the shortcut on even when the kernel fails the start-up check of
    /// blocking sockmap reads (for testing the shortcut on such a kernel;
    /// applications may see the failure).
    pub sockmap_ignore_read_check: bool,
    /// Outbound listener port inside pods.
    pub outbound_port: u16,
    /// Inbound HBONE listener port.
    pub hbone_port: u16,
    /// Inbound plaintext listener port.
    pub inbound_plaintext_port: u16,
    /// Destinations never redirected (address, prefix length).
    pub excluded_nets: Vec<(IpAddr, u8)>,
}

/// The loaded eBPF programs of one node.
#[derive(Debug)]
pub struct Capture {
    ebpf: Ebpf,
    config: CaptureConfig,
    /// sk_lookup links of enrolled namespaces, pinned under the pin directory.
    netns_links: StdHashMap<NetnsCookie, PinnedLink>,
}

impl Capture {
    /// Checks the host (see [`check_host`]), mounts bpffs when needed and loads
    /// the embedded programs into the kernel, reusing the maps pinned by a
    /// previous ztunnel of this node. Nothing is attached yet.
    pub fn load(config: CaptureConfig) -> Result<Self, Error> {
        check_host()?;
        pin::ensure_bpffs()?;
        let maps_dir = config.pin_dir.join("maps");
        pin::create_dir(&maps_dir)?;
        pin::create_dir(&config.pin_dir.join("links"))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(OBJECT)
            .map_err(|e| Error::Load(Box::new(e)))?;
        for name in CGROUP_PROGRAMS
            .into_iter()
            .chain([program_name::COUNT_CONNECT4])
        {
            load_cgroup_program(&mut ebpf, name)?;
        }
        let name = program_name::SHORTCUT_LOOPBACK;
        let sk_msg: &mut SkMsg = program(&mut ebpf, name)?;
        sk_msg.load().map_err(program_error(name, "loaded"))?;
        let name = program_name::STEER_INBOUND;
        let sk_lookup: &mut SkLookup = program(&mut ebpf, name)?;
        sk_lookup.load().map_err(program_error(name, "loaded"))?;
        let mut capture = Self {
            ebpf,
            config,
            netns_links: StdHashMap::new(),
        };
        capture.write_settings()?;
        capture.write_exclusions()?;
        capture.write_node_ids()?;
        Ok(capture)
    }

    /// Tells the programs which cgroups are ztunnel's and the kubelet's, and
    /// which network namespace is the node's. A restarted ztunnel in a new
    /// cgroup moves its predecessor's to the previous slot, so the old one's
    /// connects stay unredirected while it drains.
    fn write_node_ids(&mut self) -> Result<(), Error> {
        let cgroup_error = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Cgroup { path, source }
        };
        let own =
            cgroup_id(&self.config.own_cgroup).map_err(cgroup_error(&self.config.own_cgroup))?;
        let probe = match &self.config.probe_cgroup {
            Some(path) => cgroup_id(path).map_err(cgroup_error(path))?,
            None => 0,
        };
        let host = own_netns_cookie()?.get();
        let name = map_name::NODE_IDS;
        let mut ids: Array<_, u64> = map_mut(&mut self.ebpf, name)?;
        let current = ids
            .get(&node_id::ZTUNNEL_CGROUP, 0)
            .map_err(map_error(name, "read"))?;
        let mut values = vec![
            (node_id::ZTUNNEL_CGROUP, own),
            (node_id::PROBE_CGROUP, probe),
            (node_id::HOST_NETNS, host),
        ];
        if current != own {
            values.push((node_id::PREVIOUS_ZTUNNEL_CGROUP, current));
        }
        for (slot, value) in values {
            debug_assert!(slot < NODE_IDS_SLOTS);
            ids.set(slot, value, 0)
                .map_err(map_error(name, "write an id"))?;
        }
        Ok(())
    }

    /// The configuration the capture runs with.
    pub fn config(&self) -> &CaptureConfig {
        &self.config
    }

    fn write_settings(&mut self) -> Result<(), Error> {
        let name = map_name::SETTINGS;
        let mut settings: Array<_, u32> = map_mut(&mut self.ebpf, name)?;
        let flags = if self.config.sockmap {
            flag::SOCKMAP
        } else {
            0
        };
        let values = [
            (setting::FLAGS, flags),
            (setting::SHORTCUT_CAP, self.config.shortcut_cap),
            (setting::OUTBOUND_PORT, u32::from(self.config.outbound_port)),
            (setting::HBONE_PORT, u32::from(self.config.hbone_port)),
            (
                setting::INBOUND_PLAINTEXT_PORT,
                u32::from(self.config.inbound_plaintext_port),
            ),
        ];
        for (slot, value) in values {
            debug_assert!(slot < SETTINGS_SLOTS);
            settings
                .set(slot, value, 0)
                .map_err(map_error(name, "write a setting"))?;
        }
        Ok(())
    }

    fn write_exclusions(&mut self) -> Result<(), Error> {
        let name = map_name::EXCLUDED_NETS;
        let mut nets: LpmTrie<_, [u8; 16], u8> = map_mut(&mut self.ebpf, name)?;
        for (ip, prefix) in &self.config.excluded_nets {
            let (addr, bits) = match ip {
                IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), u32::from(*prefix) + 96),
                IpAddr::V6(v6) => (v6.octets(), u32::from(*prefix)),
            };
            nets.insert(&Key::new(bits.min(128), addr), 1, 0)
                .map_err(map_error(name, "insert an exclusion"))?;
        }
        Ok(())
    }

    /// Attaches the capture to the node's cgroup and pins the links, replacing
    /// those of a previous ztunnel (attach first, then swap the pins, so no
    /// connect escapes in between). The loopback shortcut is attached to its
    /// SockHash and stays with the pinned map.
    pub fn attach(&mut self) -> Result<(), Error> {
        let cgroup_path = self.config.cgroup.clone();
        let cgroup = File::open(&cgroup_path).map_err(|source| Error::Cgroup {
            path: cgroup_path.clone(),
            source,
        })?;
        for name in CGROUP_PROGRAMS {
            let link = attach_cgroup_program(&mut self.ebpf, name, &cgroup)?;
            let path = self.config.pin_dir.join("links").join(name);
            pin::replace_link(link, &path)?;
        }
        self.attach_sk_msg()?;
        if self.config.sockmap {
            self.check_sockmap_reads()?;
        }
        tracing::info!(cgroup = %cgroup_path.display(), pin_dir = %self.config.pin_dir.display(), "capture attached");
        Ok(())
    }

    /// Turns the shortcut off when this kernel's sockmap receive path breaks
    /// a blocking read (see [`shortcut::probe_sockmap_reads`]):
    /// every application socket on the shortcut would get it. Unless the
    /// configuration says to keep it on anyway (for tests of the shortcut
    /// itself on such a kernel).
    fn check_sockmap_reads(&mut self) -> Result<(), Error> {
        let name = map_name::LOOPBACK_SOCKS;
        let netns = own_netns_cookie()?;
        let mut socks: SockHash<_, ambit_ebpf_common::SockKey> = map_mut(&mut self.ebpf, name)?;
        let found =
            shortcut::probe_sockmap_reads(&mut socks, netns).map_err(|source| Error::Pin {
                path: map_pin(&self.config.pin_dir, name),
                source,
            })?;
        let shortcut::SockmapReads::Broken(what) = found else {
            tracing::info!("sk_msg shortcut on: this kernel's sockmap reads behave as TCP's");
            return Ok(());
        };
        if self.config.sockmap_ignore_read_check {
            tracing::warn!(read = %what, "sk_msg shortcut on although this kernel fails blocking reads on sockmap sockets: applications that block in a read may fail with EAGAIN");
            return Ok(());
        }
        tracing::error!(read = %what, "sk_msg shortcut off: on this kernel a blocking read on a sockmap socket does not behave as on TCP (tcp_bpf_recvmsg), which applications on the shortcut would see; see docs/architecture.md");
        self.config.sockmap = false;
        self.write_settings()
    }

    fn attach_sk_msg(&mut self) -> Result<(), Error> {
        let map_name = map_name::LOOPBACK_SOCKS;
        let socks: SockHash<_, ambit_ebpf_common::SockKey> = map_ref(&self.ebpf, map_name)?;
        let fd = socks.fd().try_clone().map_err(|source| Error::Pin {
            path: self.config.pin_dir.clone(),
            source,
        })?;
        let name = program_name::SHORTCUT_LOOPBACK;
        let sk_msg: &mut SkMsg = program(&mut self.ebpf, name)?;
        match sk_msg.attach(&fd) {
            Ok(id) => {
                // Forget the link: the attachment lives with the pinned map, so the
                // shortcut keeps working for connections that outlive this process.
                let link = sk_msg
                    .take_link(id)
                    .map_err(program_error(name, "attached"))?;
                std::mem::forget(link);
                Ok(())
            }
            // An attach replaces a previous ztunnel's program (sockets already
            // in the map keep theirs); only a program attached through a
            // bpf_link, which ztunnel never makes, refuses it.
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EBUSY) =>
            {
                tracing::warn!(
                    "loopback shortcut: the pinned map has a program attached through a bpf_link; keeping it"
                );
                Ok(())
            }
            Err(source) => Err(Error::Program {
                name,
                action: "attached",
                source,
            }),
        }
    }

    /// Starts capturing the pod whose network namespace is `netns`: its
    /// outbound connects are redirected, and inbound connections from outside
    /// the pod are steered to the listeners registered with
    /// [`Capture::register_listener`] (dropped while there are none).
    pub fn enroll(&mut self, netns: &Netns) -> Result<(), Error> {
        let name = program_name::STEER_INBOUND;
        let sk_lookup: &mut SkLookup = program(&mut self.ebpf, name)?;
        let id = sk_lookup
            .attach(netns.file())
            .map_err(program_error(name, "attached"))?;
        let link = FdLink::from(
            sk_lookup
                .take_link(id)
                .map_err(program_error(name, "attached"))?,
        );
        let path = self.netns_link_path(netns.cookie());
        let pinned = pin::replace_link(link, &path)?;
        self.netns_links.insert(netns.cookie(), pinned);
        let map_name = map_name::ENROLLED;
        let mut enrolled: HashMap<_, u64, u32> = map_mut(&mut self.ebpf, map_name)?;
        enrolled
            .insert(netns.cookie().get(), 0, 0)
            .map_err(map_error(map_name, "enroll a pod"))?;
        Ok(())
    }

    /// Stops capturing the pod of `cookie`: new connects are no longer redirected
    /// and inbound steering is detached. Existing connections are not touched.
    pub fn unenroll(&mut self, cookie: NetnsCookie) -> Result<(), Error> {
        let map_name = map_name::ENROLLED;
        let mut enrolled: HashMap<_, u64, u32> = map_mut(&mut self.ebpf, map_name)?;
        match enrolled.remove(&cookie.get()) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(Error::Map {
                    name: map_name,
                    action: "unenroll a pod",
                    source,
                });
            }
        }
        let path = self.netns_link_path(cookie);
        match self.netns_links.remove(&cookie) {
            // Unpinning and dropping the last descriptor detaches the program.
            Some(pinned) => drop(
                pinned
                    .unpin()
                    .map_err(|source| Error::Pin { path, source })?,
            ),
            None => pin::remove(&path)?,
        }
        Ok(())
    }

    /// Records `ips` as addresses of an enrolled pod of this node (the
    /// kubelet's probes to them leave from the probe address).
    pub fn add_pod_addrs(&mut self, ips: &[IpAddr]) -> Result<(), Error> {
        let name = map_name::POD_ADDRS;
        let mut addrs: HashMap<_, [u8; 16], u32> = map_mut(&mut self.ebpf, name)?;
        for ip in ips {
            addrs
                .insert(mapped(*ip), 0, 0)
                .map_err(map_error(name, "add a pod address"))?;
        }
        Ok(())
    }

    /// Forgets `ips` as addresses of an enrolled pod.
    pub fn remove_pod_addrs(&mut self, ips: &[IpAddr]) -> Result<(), Error> {
        let name = map_name::POD_ADDRS;
        let mut addrs: HashMap<_, [u8; 16], u32> = map_mut(&mut self.ebpf, name)?;
        for ip in ips {
            match addrs.remove(&mapped(*ip)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(Error::Map {
                        name,
                        action: "remove a pod address",
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The pod addresses recorded in the (pinned) POD_ADDRS map.
    pub fn pod_addrs(&self) -> Result<Vec<IpAddr>, Error> {
        let name = map_name::POD_ADDRS;
        let addrs: HashMap<_, [u8; 16], u32> = map_ref(&self.ebpf, name)?;
        addrs
            .keys()
            .map(|key| {
                key.map(|bytes| {
                    let v6 = std::net::Ipv6Addr::from(bytes);
                    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
                })
                .map_err(map_error(name, "read"))
            })
            .collect()
    }

    /// The network namespaces enrolled in the (pinned) ENROLLED map: this
    /// ztunnel's and any a previous one left.
    pub fn enrolled_cookies(&self) -> Result<Vec<NetnsCookie>, Error> {
        let name = map_name::ENROLLED;
        let enrolled: HashMap<_, u64, u32> = map_ref(&self.ebpf, name)?;
        enrolled
            .keys()
            .map(|key| {
                key.map(NetnsCookie::from_raw)
                    .map_err(map_error(name, "read"))
            })
            .collect()
    }

    /// Registers `listener` as the socket that takes inbound connections to `ip`
    /// on `port` (the HBONE or the plaintext port). A socket is removed from the
    /// map by the kernel when it closes.
    pub fn register_listener(
        &mut self,
        ip: IpAddr,
        port: u16,
        listener: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        let name = map_name::LISTENERS;
        let mut listeners: SockHash<_, ListenerKey> = map_mut(&mut self.ebpf, name)?;
        listeners
            .insert(listener_key(ip, port), listener, 0)
            .map_err(map_error(name, "register a listener"))
    }

    /// Removes the listener of `ip` and `port`, if any.
    pub fn unregister_listener(&mut self, ip: IpAddr, port: u16) -> Result<(), Error> {
        let name = map_name::LISTENERS;
        let mut listeners: SockHash<_, ListenerKey> = map_mut(&mut self.ebpf, name)?;
        match listeners.remove(&listener_key(ip, port)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(Error::Map {
                name,
                action: "remove a listener",
                source,
            }),
        }
    }

    /// Where ztunnel reports what it read from its shortcut sockets, when the
    /// shortcut is on.
    pub fn shortcut_reads(&self) -> Result<Option<ShortcutReads>, Error> {
        if !self.config.sockmap {
            return Ok(None);
        }
        ShortcutReads::open(
            &self.config.pin_dir,
            self.config.shortcut_cap,
            self.config.shortcut_bulk,
        )
        .map(Some)
    }

    /// A handle on the original destinations of redirected connections, for the
    /// outbound listeners (cheap to clone, usable from any task).
    pub fn orig_dst_table(&self) -> Result<OrigDstTable, Error> {
        let name = map_name::ORIG_DST_BY_PORT;
        let map = pinned_map(&self.config.pin_dir, name, aya::maps::Map::LruHashMap)?;
        Ok(OrigDstTable(std::sync::Arc::new(map)))
    }

    /// A handle on the transparent flows the inbound side registers before it
    /// connects to an application from a client's address.
    pub fn transparent_flows(&self) -> Result<TransparentFlows, Error> {
        let name = map_name::TRANSPARENT_FLOWS;
        let map = pinned_map(&self.config.pin_dir, name, aya::maps::Map::LruHashMap)?;
        Ok(TransparentFlows(std::sync::Arc::new(
            std::sync::Mutex::new(map),
        )))
    }

    fn netns_link_path(&self, cookie: NetnsCookie) -> PathBuf {
        self.config.pin_dir.join("links").join(format!(
            "{}-{}",
            program_name::STEER_INBOUND,
            cookie.get()
        ))
    }

    /// Attaches the connect counter (the first program, a diagnostic) to
    /// `cgroup`; it stays attached while this `Capture` lives.
    pub fn attach_connect_counter(&mut self, cgroup: &Path) -> Result<(), Error> {
        let file = File::open(cgroup).map_err(|source| Error::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let name = program_name::COUNT_CONNECT4;
        let program: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
        program
            .attach(&file, CgroupAttachMode::Single)
            .map_err(program_error(name, "attached"))?;
        Ok(())
    }

    /// How many IPv4 `connect()` calls the connect counter has seen from sockets
    /// of the network namespace `cookie` (0 for a namespace never seen).
    pub fn connect_count(&self, cookie: NetnsCookie) -> Result<u64, Error> {
        let name = map_name::CONNECT_COUNTS;
        let counts: PerCpuHashMap<_, u64, u64> = map_ref(&self.ebpf, name)?;
        match counts.get(&cookie.get(), 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().sum()),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(source) => Err(Error::Map {
                name,
                action: "read",
                source,
            }),
        }
    }
}

/// The network namespaces enrolled in the pinned maps under `pin_dir`, as a
/// running (or stopped) ztunnel of that node left them. For operators and
/// tests: the state a restarted ztunnel picks up.
pub fn pinned_enrollment(pin_dir: &Path) -> Result<Vec<NetnsCookie>, Error> {
    let name = map_name::ENROLLED;
    let map: HashMap<_, u64, u32> = pinned_map(pin_dir, name, aya::maps::Map::HashMap)?;
    map.keys()
        .map(|key| {
            key.map(NetnsCookie::from_raw)
                .map_err(map_error(name, "read"))
        })
        .collect()
}

/// How full one of the node's eBPF maps is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MapOccupancy {
    /// The map's name (`ENROLLED`, `LOOPBACK_SOCKS`, ...).
    pub name: &'static str,
    /// Entries in it now.
    pub entries: u64,
    /// Its `max_entries`.
    pub capacity: u32,
}

/// The occupancy of the node's maps whose entries are live state, read from
/// their pins under `pin_dir` (one key walk each: call it off the data path).
/// `ORIG_DST_BY_PORT` is left out: an LRU map overwritten as ports are
/// reused, it fills by design; so are the fixed-size arrays.
pub fn map_occupancy(pin_dir: &Path) -> Result<Vec<MapOccupancy>, Error> {
    fn walk<T>(
        pin_dir: &Path,
        name: &'static str,
        count: fn(&T, usize) -> usize,
    ) -> Result<MapOccupancy, Error>
    where
        T: TryFrom<aya::maps::Map, Error = MapError>,
    {
        let data =
            MapData::from_pin(map_pin(pin_dir, name)).map_err(map_error(name, "open its pin"))?;
        let capacity = data
            .info()
            .map_err(map_error(name, "read its description"))?
            .max_entries();
        let map = aya::maps::Map::from_map_data(data)
            .and_then(T::try_from)
            .map_err(map_error(name, "open"))?;
        // A walk that races with deletions may restart: never past capacity.
        let cap = usize::try_from(capacity).unwrap_or(usize::MAX);
        let entries = count(&map, cap).min(cap);
        Ok(MapOccupancy {
            name,
            entries: u64::try_from(entries).unwrap_or(u64::MAX),
            capacity,
        })
    }
    fn hash<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>, cap: usize) -> usize {
        map.keys().take(cap).take_while(Result::is_ok).count()
    }
    fn sock<K: aya::Pod>(map: &SockHash<MapData, K>, cap: usize) -> usize {
        map.keys().take(cap).take_while(Result::is_ok).count()
    }
    Ok(vec![
        walk(pin_dir, map_name::ENROLLED, hash::<u64, u32>)?,
        walk(pin_dir, map_name::POD_ADDRS, hash::<[u8; 16], u32>)?,
        walk(pin_dir, map_name::LISTENERS, sock::<ListenerKey>)?,
        walk(
            pin_dir,
            map_name::LOOPBACK_SOCKS,
            sock::<ambit_ebpf_common::SockKey>,
        )?,
        walk(pin_dir, map_name::ORIG_DST, hash::<u64, OrigDst>)?,
        walk(pin_dir, map_name::TRANSPARENT_FLOWS, hash::<FlowKey, u8>)?,
    ])
}

/// Where redirected connections meant to go, as published by the `sockops`
/// program: read by the outbound listeners for each accepted connection.
#[derive(Debug, Clone)]
pub struct OrigDstTable(std::sync::Arc<HashMap<MapData, PortKey, OrigDst>>);

impl OrigDstTable {
    /// The original destination of the connection ztunnel accepted from `peer`
    /// (the application's socket) in the pod namespace `netns`, if it was
    /// redirected. The entry is overwritten when the port is reused, before the
    /// next connection from it can be accepted.
    pub fn lookup(
        &self,
        netns: NetnsCookie,
        peer: SocketAddr,
    ) -> Result<Option<SocketAddr>, Error> {
        let family = if peer.is_ipv4() { AF_INET } else { AF_INET6 };
        let key = PortKey {
            netns_cookie: netns.get(),
            port: peer.port(),
            family,
            _pad: 0,
        };
        match self.0.get(&key, 0) {
            Ok(orig) => Ok(Some(orig_to_socket_addr(&orig))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(Error::Map {
                name: map_name::ORIG_DST_BY_PORT,
                action: "read",
                source,
            }),
        }
    }
}

/// ztunnel's connects from a client's address to an application in a pod,
/// which `sk_lookup` must let through instead of steering them back to ztunnel.
#[derive(Debug, Clone)]
pub struct TransparentFlows(std::sync::Arc<std::sync::Mutex<HashMap<MapData, FlowKey, u8>>>);

impl TransparentFlows {
    /// Registers the flow from `src` (a client's address, already bound) to
    /// `dst` until the returned guard is dropped: drop it once the connect
    /// completed, later packets belong to the established connection.
    pub fn register(&self, src: SocketAddr, dst: SocketAddr) -> Result<FlowGuard, Error> {
        let key = FlowKey {
            local_addr: mapped(dst.ip()),
            remote_addr: mapped(src.ip()),
            local_port: dst.port(),
            remote_port: src.port(),
            _pad: 0,
        };
        let name = map_name::TRANSPARENT_FLOWS;
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(key, 1, 0)
            .map_err(map_error(name, "register a transparent flow"))?;
        Ok(FlowGuard {
            flows: self.clone(),
            key,
        })
    }
}

/// Removes a transparent flow when dropped.
#[derive(Debug)]
pub struct FlowGuard {
    flows: TransparentFlows,
    key: FlowKey,
}

impl Drop for FlowGuard {
    fn drop(&mut self) {
        let mut map = self
            .flows
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Already gone (LRU eviction) is fine.
        if let Err(error) = map.remove(&self.key)
            && !matches!(error, MapError::KeyNotFound)
        {
            tracing::warn!(%error, "cannot remove a transparent flow");
        }
    }
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn orig_to_socket_addr(orig: &OrigDst) -> SocketAddr {
    let v6 = std::net::Ipv6Addr::from(orig.addr);
    let ip = match (orig.family, v6.to_ipv4_mapped()) {
        (AF_INET, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, orig.port)
}

/// Opens map `name` of the loaded object as `T`.
fn map_ref<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<&'a aya::maps::Map, Error = MapError>,
{
    let map = ebpf.map(name).ok_or(Error::Missing { kind: "map", name })?;
    T::try_from(map).map_err(map_error(name, "open"))
}

/// Opens map `name` of the loaded object as `T`, for writing.
fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(Error::Missing { kind: "map", name })?;
    T::try_from(map).map_err(map_error(name, "open"))
}

/// Where map `name` is pinned under the pin directory `pin_dir`.
fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("maps").join(name)
}

/// Opens map `name` from its pin under `pin_dir`, as a map of `kind`, owned
/// by the caller (usable apart from the loaded object, from any task).
fn pinned_map<T>(
    pin_dir: &Path,
    name: &'static str,
    kind: fn(MapData) -> aya::maps::Map,
) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let data =
        MapData::from_pin(map_pin(pin_dir, name)).map_err(map_error(name, "open its pin"))?;
    T::try_from(kind(data)).map_err(map_error(name, "open"))
}

fn listener_key(ip: IpAddr, port: u16) -> ListenerKey {
    ListenerKey {
        addr: mapped(ip),
        port,
        _pad: [0; 6],
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(Error::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(program_error(name, "loaded"))
}

fn load_cgroup_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), Error> {
    if name == program_name::TRACK_SOCKETS {
        let sock_ops: &mut SockOps = program(ebpf, name)?;
        return sock_ops.load().map_err(program_error(name, "loaded"));
    }
    let sock_addr: &mut CgroupSockAddr = program(ebpf, name)?;
    sock_addr.load().map_err(program_error(name, "loaded"))
}

/// Attaches one cgroup program and returns its link, owned by the caller.
fn attach_cgroup_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
) -> Result<FdLink, Error> {
    // CgroupAttachMode::Single: with bpf_link_create the kernel allows several
    // links per cgroup anyway, and AllowMultiple fails with EINVAL on 6.18.
    if name == program_name::TRACK_SOCKETS {
        let sock_ops: &mut SockOps = program(ebpf, name)?;
        let id = sock_ops
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(program_error(name, "attached"))?;
        let link = sock_ops
            .take_link(id)
            .map_err(program_error(name, "attached"))?;
        return FdLink::try_from(link).map_err(|source| Error::Link { name, source });
    }
    let sock_addr: &mut CgroupSockAddr = program(ebpf, name)?;
    let id = sock_addr
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(program_error(name, "attached"))?;
    let link = sock_addr
        .take_link(id)
        .map_err(program_error(name, "attached"))?;
    FdLink::try_from(link).map_err(|source| Error::Link { name, source })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn original_destinations_convert_back_per_family() {
        let v4 = Ipv4Addr::new(198, 18, 17, 10);
        let orig = OrigDst {
            addr: v4.to_ipv6_mapped().octets(),
            port: 7000,
            family: AF_INET,
            _pad: 0,
            netns_cookie: 1,
        };
        assert_eq!(orig_to_socket_addr(&orig), SocketAddr::from((v4, 7000)));
        let v6 = Ipv6Addr::new(0xfd00, 1, 1, 0, 0, 0, 0, 10);
        let orig = OrigDst {
            addr: v6.octets(),
            port: 443,
            family: AF_INET6,
            _pad: 0,
            netns_cookie: 1,
        };
        assert_eq!(orig_to_socket_addr(&orig), SocketAddr::from((v6, 443)));
    }

    #[test]
    fn listener_keys_map_ipv4_into_ipv6() {
        let key = listener_key(IpAddr::V4(Ipv4Addr::new(198, 18, 16, 10)), 15006);
        assert_eq!(
            key.addr,
            Ipv4Addr::new(198, 18, 16, 10).to_ipv6_mapped().octets()
        );
        assert_eq!(key.port, 15006);
    }
}
