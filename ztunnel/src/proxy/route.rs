//! Where an outbound connection goes, decided from the registry: a Service VIP
//! is load-balanced over its ready endpoints (same node first) with targetPort
//! mapping; a destination in the mesh is reached through HBONE with the identity
//! the registry expects for it (secure naming); anything else passes through as
//! plain TCP.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::{
    identity::{Identity, TrustDomain},
    registry::{Snapshot, TargetPort, Workload},
};

/// The decision for one outbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Through HBONE to `gateway` (the destination pod's HBONE port), asking for
    /// `target`; the server must present `identity`.
    Hbone {
        /// `pod ip:15008`.
        gateway: SocketAddr,
        /// The CONNECT authority: the destination as the application meant it,
        /// after service resolution.
        target: SocketAddr,
        /// The destination workload's identity.
        identity: Identity,
    },
    /// Plain TCP to a destination outside the mesh.
    Passthrough(SocketAddr),
    /// A Service without a ready endpoint for that port.
    NoEndpoint,
}

/// Decides routes; holds the round-robin position.
#[derive(Debug, Default)]
pub struct Router {
    next: AtomicUsize,
}

impl Router {
    /// The route of a connection from a pod of `node` to `dst`.
    pub fn route(
        &self,
        snapshot: &Snapshot,
        node: &str,
        trust_domain: &TrustDomain,
        hbone_port: u16,
        dst: SocketAddr,
    ) -> Route {
        let target = match snapshot.service_port(dst) {
            Some((service, port)) => match self.pick_endpoint(
                snapshot,
                node,
                &service.key,
                &port.target_port,
                port.name.as_deref(),
            ) {
                Some(target) => target,
                None => return Route::NoEndpoint,
            },
            None => dst,
        };
        match snapshot.workload_by_ip(target.ip()) {
            Some(workload) if snapshot.is_enrolled(workload) => {
                match identity_of(workload, trust_domain) {
                    Some(identity) => Route::Hbone {
                        gateway: SocketAddr::new(target.ip(), hbone_port),
                        target,
                        identity,
                    },
                    None => Route::Passthrough(target),
                }
            }
            _ => Route::Passthrough(target),
        }
    }

    /// A ready endpoint of the service, round robin, endpoints on `node` first.
    fn pick_endpoint(
        &self,
        snapshot: &Snapshot,
        node: &str,
        service: &crate::registry::ObjectKey,
        target_port: &TargetPort,
        port_name: Option<&str>,
    ) -> Option<SocketAddr> {
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for set in snapshot.endpoint_sets(service) {
            let port = match target_port {
                TargetPort::Number(n) => Some(*n),
                // A named targetPort is resolved by the slice, under the Service port's name.
                TargetPort::Name(_) => set
                    .ports
                    .iter()
                    .find(|p| p.name.as_deref() == port_name)
                    .map(|p| p.port),
            };
            let Some(port) = port else { continue };
            for endpoint in set.endpoints.iter().filter(|e| e.ready) {
                let Some(ip) = endpoint.addresses.first() else {
                    continue;
                };
                let addr = SocketAddr::new(*ip, port);
                if endpoint.node.as_ref().is_some_and(|n| n.as_str() == node) {
                    local.push(addr);
                } else {
                    remote.push(addr);
                }
            }
        }
        let candidates = if local.is_empty() { remote } else { local };
        if candidates.is_empty() {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        Some(candidates[index])
    }
}

/// The SPIFFE identity of a workload.
pub fn identity_of(workload: &Workload, trust_domain: &TrustDomain) -> Option<Identity> {
    Identity::from_parts(
        trust_domain.clone(),
        workload.namespace.as_str(),
        workload.service_account.as_str(),
    )
    .ok()
}
