//! The compiled policies of every enrolled pod of this node, rebuilt from each
//! registry snapshot, so that a new connection finds its workload's policies
//! with one map lookup and the newest policies apply at once.

use std::{collections::HashMap, sync::Arc};

use super::{CompiledPolicies, FailSafe, compile};
use crate::registry::{AuthorizationPolicy, ObjectKey, Snapshot, Workload};

/// Compiled policies by workload (namespace and pod name) for the enrolled pods
/// of the snapshot's node. Pods that select the same policies share one
/// compiled set.
#[derive(Debug, Clone, Default)]
pub struct PolicyIndex {
    generation: u64,
    workloads: HashMap<ObjectKey, Arc<CompiledPolicies>>,
    /// Each distinct compiled set once, for warnings.
    distinct: Vec<Arc<CompiledPolicies>>,
}

impl PolicyIndex {
    /// Compiles the policies of every enrolled pod of `snapshot`'s node (none
    /// when the snapshot has no node).
    pub fn build(snapshot: &Snapshot) -> Self {
        let mut index = Self {
            generation: snapshot.generation(),
            ..Self::default()
        };
        let Some(node) = snapshot.node() else {
            return index;
        };
        let mut by_set: HashMap<Vec<usize>, Arc<CompiledPolicies>> = HashMap::new();
        for pod in snapshot.enrolled_pods(node) {
            let key = ObjectKey {
                namespace: pod.namespace,
                name: pod.name,
            };
            let Some(workload) = snapshot.workload(&key) else {
                continue;
            };
            let policies = snapshot.policies_for(workload).authorization;
            // The same policies (by identity within this snapshot) compile the same.
            let mut set: Vec<usize> = policies.iter().map(|p| Arc::as_ptr(p).addr()).collect();
            set.sort_unstable();
            let compiled = by_set.entry(set).or_insert_with(|| {
                let compiled = Arc::new(compile(policies.iter().map(|p| &**p)));
                index.distinct.push(Arc::clone(&compiled));
                compiled
            });
            index.workloads.insert(key, Arc::clone(compiled));
        }
        index
    }

    /// The generation of the snapshot this index was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The compiled policies of the workload `key` (namespace, pod name), if it
    /// is an enrolled pod of this node.
    pub fn get(&self, key: &ObjectKey) -> Option<&Arc<CompiledPolicies>> {
        self.workloads.get(key)
    }

    /// Number of workloads indexed.
    pub fn len(&self) -> usize {
        self.workloads.len()
    }

    /// Whether no workload is indexed.
    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty()
    }

    /// Every policy enforced fail-safe for some pod of this node, each once.
    pub fn l7_ignored(&self) -> Vec<&FailSafe> {
        let mut out: Vec<&FailSafe> = (self.distinct.iter())
            .flat_map(|c| c.l7_ignored())
            .collect();
        out.sort_by(|a, b| a.policy.cmp(&b.policy));
        out.dedup_by(|a, b| a.policy == b.policy);
        out
    }
}

/// Compiles the AuthorizationPolicies that apply to `workload` in `snapshot`
/// (by namespace, the root namespace and workload selector; never those
/// attached with `targetRefs`, which are for waypoints).
pub fn compile_for_workload(snapshot: &Snapshot, workload: &Workload) -> CompiledPolicies {
    let policies = snapshot.policies_for(workload).authorization;
    compile(policies.iter().map(|p: &Arc<AuthorizationPolicy>| &**p))
}
