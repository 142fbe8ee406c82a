//! Traffic capture with eBPF: loads the programs embedded in this binary, attaches
//! them to the node's cgroup and reads their maps.
//!
//! This is the only module that uses aya or `unsafe`. The object comes from
//! `ebpf/programs`, built by `cargo xtask build-ebpf` and embedded at compile time;
//! map and program names come from `ambit-ebpf-common`, never from literals.

mod host;
mod netns;

use std::{fs::File, io, path::Path, path::PathBuf};

use ambit_ebpf_common::{map_name, program_name};
use aya::{
    Ebpf,
    maps::{MapError, PerCpuHashMap},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
};

pub use host::{Privileges, cgroup2_mount, check_host};
pub use netns::{NetnsCookie, in_netns, netns_cookie};

/// The programs and maps as built by `cargo xtask build-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AMBIT_EBPF_OBJECT"));

/// Errors of the capture layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host cannot run the capture (kernel, cgroup v2, privileges).
    #[error("this host cannot run ztunnel's eBPF capture")]
    Host(#[from] host::HostError),
    /// The kernel refused the embedded object.
    #[error("cannot load the embedded eBPF object")]
    Load(#[source] aya::EbpfError),
    /// The object lacks a program this build expects: the object and the binary
    /// were built from different sources.
    #[error("Bug: program {name} is missing from the embedded eBPF object")]
    MissingProgram {
        /// The program's function name.
        name: &'static str,
    },
    /// The object lacks a map this build expects.
    #[error("Bug: map {name} is missing from the embedded eBPF object")]
    MissingMap {
        /// The map's name.
        name: &'static str,
    },
    /// Loading (verifying) or attaching a program failed.
    #[error("eBPF program {name} could not be {action}")]
    Program {
        /// The program's function name.
        name: &'static str,
        /// `loaded` or `attached`.
        action: &'static str,
        /// What the kernel or aya said.
        #[source]
        source: ProgramError,
    },
    /// A map could not be opened or read.
    #[error("eBPF map {name} could not be read")]
    Map {
        /// The map's name.
        name: &'static str,
        /// What the kernel or aya said.
        #[source]
        source: MapError,
    },
    /// The cgroup to attach to could not be opened.
    #[error("cannot open cgroup {path}")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A network namespace could not be entered or inspected.
    #[error("cannot use network namespace {path}")]
    Netns {
        /// The namespace file (for example `/var/run/netns/<name>`).
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The loaded eBPF programs of one node. Dropping it detaches every program it
/// attached and unloads them.
#[derive(Debug)]
pub struct Capture {
    ebpf: Ebpf,
    attached_to: Option<PathBuf>,
}

impl Capture {
    /// Checks the host (see [`check_host`]) and loads the embedded programs into
    /// the kernel, verified but not attached anywhere yet.
    pub fn load() -> Result<Self, Error> {
        check_host()?;
        let mut ebpf = Ebpf::load(OBJECT).map_err(Error::Load)?;
        let name = program_name::COUNT_CONNECT4;
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram { name })?
            .try_into()
            .map_err(|source| Error::Program {
                name,
                action: "loaded",
                source,
            })?;
        program.load().map_err(|source| Error::Program {
            name,
            action: "loaded",
            source,
        })?;
        Ok(Self {
            ebpf,
            attached_to: None,
        })
    }

    /// Attaches the cgroup programs to `cgroup` (a cgroup v2 directory): every
    /// socket created by a process in that subtree passes through them.
    ///
    /// In production this is the cgroup v2 root; in tests, one cgroup per simulated
    /// node. Attaching uses `CgroupAttachMode::Single`: on kernel 6.18,
    /// `AllowMultiple` makes `bpf_link_create` fail with EINVAL.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), Error> {
        let file = File::open(cgroup).map_err(|source| Error::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let name = program_name::COUNT_CONNECT4;
        let program: &mut CgroupSockAddr = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram { name })?
            .try_into()
            .map_err(|source| Error::Program {
                name,
                action: "attached",
                source,
            })?;
        program
            .attach(&file, CgroupAttachMode::Single)
            .map_err(|source| Error::Program {
                name,
                action: "attached",
                source,
            })?;
        tracing::info!(cgroup = %cgroup.display(), program = name, "attached");
        self.attached_to = Some(cgroup.to_owned());
        Ok(())
    }

    /// The cgroup the programs are attached to, if any.
    pub fn attached_to(&self) -> Option<&Path> {
        self.attached_to.as_deref()
    }

    /// How many IPv4 `connect()` calls the programs have seen from sockets of the
    /// network namespace `cookie` (0 for a namespace never seen).
    pub fn connect_count(&self, cookie: NetnsCookie) -> Result<u64, Error> {
        let name = map_name::CONNECT_COUNTS;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap { name })?;
        let counts: PerCpuHashMap<_, u64, u64> =
            PerCpuHashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
        match counts.get(&cookie.get(), 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().sum()),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(source) => Err(Error::Map { name, source }),
        }
    }
}
