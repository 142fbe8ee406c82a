//! Which pods of this node to capture, and in which network namespace: the
//! registry says which pods are enrolled; where their namespace comes from
//! depends on the source of the configuration.
//!
//! - The local file names it (`ambit.dev/netns`): the operator writes the file.
//! - In Kubernetes the object a user writes names nothing ztunnel trusts: the
//!   namespace is the one the pod's own processes are in, found through the
//!   cgroup the kubelet made for the pod's uid ([`ProcessScan`]). A pod whose
//!   processes are not there yet is retried until they are.
//!
//! - The CNI plugin (`ambit-cni`, through [`super::cni`]) names it when the
//!   container runtime creates the pod, before its app starts: the runtime
//!   made the namespace, so this is trusted in either mode and comes first.
//!   It also brings the addresses the runtime's plugins gave the pod, used
//!   until the registry has the pod's own (the kubelet reports them only
//!   after the CNI ADD returns).
//!
//! Either way a pod waits until it has an address: `PodManager` enrolls a
//! namespace only if it holds the pod's addresses.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use super::LocalPod;
use crate::{
    capture::{NetnsId, PodNetns, ProcessScan},
    registry::Snapshot,
};

/// The pods of a node to capture.
#[derive(Debug, Default)]
pub struct Desired {
    /// Those whose network namespace is known.
    pub pods: Vec<LocalPod>,
    /// How many more should be captured but their network namespace is not
    /// known yet (Kubernetes: no process of theirs found yet).
    pub unresolved: usize,
}

/// Where the network namespaces of the node's pods come from.
#[derive(Debug)]
pub struct NetnsSource {
    kind: Kind,
    /// What the CNI plugin named, by pod uid.
    cni: HashMap<String, CniNetns>,
    /// The host's procfs, when it is not ztunnel's `/proc`.
    proc: Option<PathBuf>,
}

#[derive(Debug)]
enum Kind {
    /// The configuration names them (local file).
    Config,
    /// The pods' own processes, found by their cgroups (Kubernetes).
    Processes {
        /// The procfs scan.
        scan: ProcessScan,
        /// What was found, by pod uid, while the pod stays enrolled: the
        /// same path is handed out while it still names the same namespace.
        found: HashMap<String, (PathBuf, NetnsId)>,
    },
}

/// A pod's network namespace as the CNI plugin named it, for one sandbox.
#[derive(Debug, Clone)]
struct CniNetns {
    /// The runtime's sandbox id: a DEL removes only its own sandbox's entry.
    sandbox: String,
    path: PathBuf,
    id: NetnsId,
    /// Sorted, so that the same set compares equal however it was listed.
    ips: Vec<IpAddr>,
}

/// What [`NetnsSource::set_cni`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniSet {
    /// A new entry, or one that replaced an older sandbox's.
    Named,
    /// The same sandbox and namespace were already named.
    Unchanged,
}

impl NetnsSource {
    /// Namespaces from the configuration (local file).
    pub fn config() -> Self {
        Self {
            kind: Kind::Config,
            cni: HashMap::new(),
            proc: None,
        }
    }

    /// Namespaces from the pods' processes in the procfs `proc`.
    pub fn processes(proc: &Path) -> io::Result<Self> {
        Ok(Self {
            kind: Kind::Processes {
                scan: ProcessScan::new(proc)?,
                found: HashMap::new(),
            },
            cni: HashMap::new(),
            proc: (proc != Path::new("/proc")).then(|| proc.to_owned()),
        })
    }

    /// Takes the namespace at `path` and the addresses `ips` that the CNI
    /// plugin gave for the pod `uid` in the runtime's sandbox `sandbox`. A
    /// later sandbox of the same pod replaces the earlier one's entry. A
    /// `/proc/<pid>/ns/net` path (some runtimes hand that over) is read in
    /// the host's procfs when ztunnel has its own.
    ///
    /// # Errors
    ///
    /// When `path` cannot be read (it is checked again when enrolling).
    pub fn set_cni(
        &mut self,
        uid: &str,
        sandbox: &str,
        path: &Path,
        mut ips: Vec<IpAddr>,
    ) -> io::Result<CniSet> {
        let path = match (&self.proc, path.strip_prefix("/proc")) {
            (Some(host), Ok(rest)) => host.join(rest),
            _ => path.to_owned(),
        };
        let id = NetnsId::of(&path)?;
        if let Some(named) = self.cni.get(uid)
            && named.sandbox == sandbox
            && named.id == id
        {
            return Ok(CniSet::Unchanged);
        }
        ips.sort_unstable();
        ips.dedup();
        let sandbox = sandbox.to_owned();
        self.cni.insert(
            uid.to_owned(),
            CniNetns {
                sandbox,
                path,
                id,
                ips,
            },
        );
        Ok(CniSet::Named)
    }

    /// Forgets what the CNI plugin said of the pod `uid` in `sandbox`;
    /// whether there was such an entry (a DEL of an older sandbox leaves the
    /// newer one's alone).
    pub fn remove_cni(&mut self, uid: &str, sandbox: &str) -> bool {
        let mine = self.cni.get(uid).is_some_and(|n| n.sandbox == sandbox);
        if mine {
            self.cni.remove(uid);
        }
        mine
    }

    /// The sandbox whose namespace the CNI plugin named for the pod `uid`.
    pub fn cni_sandbox(&self, uid: &str) -> Option<&str> {
        self.cni.get(uid).map(|n| n.sandbox.as_str())
    }

    /// The enrolled pods of `node` in `snapshot`, with their network
    /// namespaces where known.
    pub fn desired(&mut self, snapshot: &Snapshot, node: &str) -> Desired {
        let mut desired = Desired::default();
        // A pod without an address yet waits: its namespace is checked
        // against its addresses before it is enrolled.
        let (mut enrolled, waiting): (Vec<_>, Vec<_>) =
            (snapshot.enrolled_pods(node).into_iter()).partition(|p| !p.ips.is_empty());
        // Named by the CNI plugin: its namespace, and the addresses the
        // runtime's plugins gave it (the registry's may still be another
        // sandbox's, or come later); the namespace must still be the one
        // named.
        self.cni
            .retain(|_, named| NetnsId::of(&named.path).is_ok_and(|now| now == named.id));
        let cni = &self.cni;
        let named_pod = |pod: &crate::registry::EnrolledPod| {
            let named = cni.get(&pod.uid.to_string())?;
            let mut local = LocalPod::from_enrolled(pod, Some((named.path.clone(), named.id)))?;
            if !named.ips.is_empty() {
                local.ips.clone_from(&named.ips);
            }
            (!local.ips.is_empty()).then_some(local)
        };
        enrolled.retain(|pod| match named_pod(pod) {
            Some(local) => {
                desired.pods.push(local);
                false
            }
            None => true,
        });
        for pod in &waiting {
            match named_pod(pod) {
                Some(local) => desired.pods.push(local),
                None => desired.unresolved += 1,
            }
        }
        match &mut self.kind {
            Kind::Config => {
                for pod in &enrolled {
                    match LocalPod::from_enrolled(pod, None) {
                        Some(local) => desired.pods.push(local),
                        None => {
                            tracing::debug!(pod = %pod.name, "enrolled pod without a network namespace in the configuration");
                            desired.unresolved += 1;
                        }
                    }
                }
            }
            Kind::Processes { scan, found } => {
                let uids: Vec<String> = enrolled.iter().map(|p| p.uid.to_string()).collect();
                found.retain(|uid, (path, id)| {
                    uids.contains(uid) && NetnsId::of(path).is_ok_and(|now| now == *id)
                });
                let missing: HashSet<&str> = (uids.iter())
                    .map(String::as_str)
                    .filter(|uid| !found.contains_key(*uid))
                    .collect();
                match scan.find(&missing) {
                    Ok(scanned) => {
                        for (uid, netns) in scanned {
                            match netns {
                                PodNetns::Found { path, id } => {
                                    found.insert(uid, (path, id));
                                }
                                PodNetns::Host => tracing::warn!(
                                    pod_uid = uid,
                                    "a pod's processes are in the node's network namespace: never enrolled"
                                ),
                                PodNetns::Ambiguous => tracing::warn!(
                                    pod_uid = uid,
                                    "a pod's processes are in several network namespaces: not enrolled"
                                ),
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot scan /proc for the pods' network namespaces");
                    }
                }
                for (pod, uid) in enrolled.iter().zip(&uids) {
                    match found.get(uid) {
                        Some((path, id)) => desired
                            .pods
                            .extend(LocalPod::from_enrolled(pod, Some((path.clone(), *id)))),
                        None => desired.unresolved += 1,
                    }
                }
            }
        }
        desired
    }
}
