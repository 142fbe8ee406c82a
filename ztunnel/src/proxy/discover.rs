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
//! Either way a pod waits until it has an address: `PodManager` enrolls a
//! namespace only if it holds the pod's addresses.

use std::{
    collections::{HashMap, HashSet},
    io,
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
pub enum NetnsSource {
    /// The configuration names them (local file).
    Config,
    /// The pods' own processes, found by their cgroups (Kubernetes).
    Processes {
        /// The procfs scan.
        scan: ProcessScan,
        /// What was found, by pod uid, while the pod stays enrolled: the
        /// same path is handed out while it still names the same namespace.
        found: HashMap<String, (std::path::PathBuf, NetnsId)>,
    },
}

impl NetnsSource {
    /// Namespaces from the pods' processes in the procfs `proc`.
    pub fn processes(proc: &std::path::Path) -> io::Result<Self> {
        Ok(Self::Processes {
            scan: ProcessScan::new(proc)?,
            found: HashMap::new(),
        })
    }

    /// The enrolled pods of `node` in `snapshot`, with their network
    /// namespaces where known.
    pub fn desired(&mut self, snapshot: &Snapshot, node: &str) -> Desired {
        let mut desired = Desired::default();
        // A pod without an address yet waits: its namespace is checked
        // against its addresses before it is enrolled.
        let (enrolled, waiting): (Vec<_>, Vec<_>) =
            (snapshot.enrolled_pods(node).into_iter()).partition(|p| !p.ips.is_empty());
        desired.unresolved = waiting.len();
        match self {
            Self::Config => {
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
            Self::Processes { scan, found } => {
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
