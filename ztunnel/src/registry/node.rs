//! Nodes, reduced to what endpoint selection needs: the zone of each.

use serde::Serialize;

use super::Name;

/// A Kubernetes Node: its name and zone, nothing else (a ztunnel never needs
/// a node's status, capacity or images).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// `metadata.name`.
    pub name: Name,
    /// The label `topology.kubernetes.io/zone`, else the legacy
    /// `failure-domain.beta.kubernetes.io/zone`; `None` when neither is set
    /// (or both are empty).
    pub zone: Option<Name>,
}
