//! Where an outbound connection goes, decided from the registry: traffic to a
//! Service or workload that uses a waypoint goes to one of the waypoint's pods
//! over HBONE (the original destination as the CONNECT authority, the
//! waypoint's identity checked), and nowhere else when it has none ready; a
//! Service VIP is load-balanced over its ready endpoints (same node first, then
//! same zone) with targetPort mapping; a destination in the mesh is reached
//! through HBONE with the identity the registry expects for it (secure naming);
//! anything else passes through as plain TCP.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::{
    identity::{Identity, TrustDomain},
    registry::{Endpoint, EndpointSet, ObjectKey, Snapshot, TargetPort, Waypoint, Workload},
};

/// The decision for one outbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Through HBONE to `gateway` (the destination pod's HBONE port, or a
    /// waypoint pod's), asking for `target`; the server must present
    /// `identity`.
    Hbone {
        /// `pod ip:15008`.
        gateway: SocketAddr,
        /// The CONNECT authority: the destination as the application meant it,
        /// after service resolution (through a waypoint: as the application
        /// addressed it, a VIP the waypoint resolves).
        target: SocketAddr,
        /// The identity the server must present (the destination workload's,
        /// or the waypoint's).
        identity: Identity,
        /// The waypoint it goes through, if any.
        waypoint: Option<ObjectKey>,
    },
    /// Plain TCP to a destination outside the mesh.
    Passthrough(SocketAddr),
    /// A Service without a ready endpoint for that port.
    NoEndpoint,
    /// The destination uses this waypoint and none of its pods is ready: the
    /// connection is refused, never sent around it.
    NoWaypoint(ObjectKey),
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
        self.decide(snapshot, node, trust_domain, hbone_port, dst, true)
    }

    /// The route of a request or connection a waypoint forwards to `dst`:
    /// as [`route`](Self::route), but never to a waypoint (the caller is the
    /// waypoint), so traffic cannot loop.
    pub fn past_waypoint(
        &self,
        snapshot: &Snapshot,
        node: &str,
        trust_domain: &TrustDomain,
        hbone_port: u16,
        dst: SocketAddr,
    ) -> Route {
        self.decide(snapshot, node, trust_domain, hbone_port, dst, false)
    }

    fn decide(
        &self,
        snapshot: &Snapshot,
        node: &str,
        trust_domain: &TrustDomain,
        hbone_port: u16,
        dst: SocketAddr,
        waypoints: bool,
    ) -> Route {
        let target = match snapshot.service_port(dst) {
            Some((service, port)) => {
                if waypoints && let Some(waypoint) = snapshot.waypoint_for_service(service) {
                    return self.via_waypoint(
                        snapshot,
                        node,
                        trust_domain,
                        hbone_port,
                        waypoint,
                        dst,
                    );
                }
                match self.pick_endpoint(
                    snapshot,
                    node,
                    &service.key,
                    &port.target_port,
                    port.name.as_deref(),
                ) {
                    Some(target) => target,
                    None => return Route::NoEndpoint,
                }
            }
            None => dst,
        };
        match snapshot.workload_by_ip(target.ip()) {
            Some(workload) if snapshot.is_enrolled(workload) => {
                // Addressed to the pod itself (not through a Service).
                if waypoints
                    && target == dst
                    && let Some(waypoint) = snapshot.waypoint_for_workload(workload)
                {
                    return self.via_waypoint(
                        snapshot,
                        node,
                        trust_domain,
                        hbone_port,
                        waypoint,
                        dst,
                    );
                }
                match identity_of(workload, trust_domain) {
                    Some(identity) => Route::Hbone {
                        gateway: SocketAddr::new(target.ip(), hbone_port),
                        target,
                        identity,
                        waypoint: None,
                    },
                    None => Route::Passthrough(target),
                }
            }
            _ => Route::Passthrough(target),
        }
    }

    /// To a ready pod of `waypoint` (on `node` when it has one there, round
    /// robin otherwise), asking for `dst` as addressed.
    fn via_waypoint(
        &self,
        snapshot: &Snapshot,
        node: &str,
        trust_domain: &TrustDomain,
        hbone_port: u16,
        waypoint: &Waypoint,
        dst: SocketAddr,
    ) -> Route {
        let ready = || {
            (snapshot.waypoint_instances(&waypoint.key).iter())
                .filter(|w| w.ready)
                .filter_map(|w| Some((w, w.ips.iter().find(|ip| ip.is_ipv4() == dst.is_ipv4())?)))
        };
        let local = ready().filter(|(w, _)| &*w.node == node).count();
        let count = if local > 0 { local } else { ready().count() };
        if count == 0 {
            return Route::NoWaypoint(waypoint.key.clone());
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let picked = ready()
            .filter(|(w, _)| local == 0 || &*w.node == node)
            .nth(index);
        match picked.and_then(|(w, ip)| Some((identity_of(w, trust_domain)?, ip))) {
            Some((identity, ip)) => Route::Hbone {
                gateway: SocketAddr::new(ip, hbone_port),
                target: dst,
                identity,
                waypoint: Some(waypoint.key.clone()),
            },
            None => Route::NoWaypoint(waypoint.key.clone()),
        }
    }

    /// A ready endpoint of the service, round robin within the best tier
    /// present: on `node`, else in `node`'s zone (when both zones are known),
    /// else any. Two passes over the endpoints and no allocation: it runs per
    /// connection.
    fn pick_endpoint(
        &self,
        snapshot: &Snapshot,
        node: &str,
        service: &ObjectKey,
        target_port: &TargetPort,
        port_name: Option<&str>,
    ) -> Option<SocketAddr> {
        let local_zone = snapshot.node_zone(node);
        // The zone is looked up only while it can still matter.
        let tier = |endpoint: &Endpoint, best: Tier| {
            if endpoint.node.as_deref() == Some(node) {
                Tier::SameNode
            } else if best > Tier::SameNode
                && local_zone.is_some()
                && snapshot.endpoint_zone(endpoint) == local_zone
            {
                Tier::SameZone
            } else {
                Tier::Other
            }
        };
        let candidates = || {
            (snapshot.endpoint_sets(service).iter())
                .filter_map(|set| Some((set, slice_port(set, target_port, port_name)?)))
                .flat_map(|(set, port)| {
                    (set.endpoints.iter().filter(|e| e.ready))
                        .map(move |e| (e, SocketAddr::new(e.address, port)))
                })
        };
        let (mut best, mut count) = (Tier::Other, 0usize);
        for (endpoint, _) in candidates() {
            let tier = tier(endpoint, best);
            if tier < best {
                (best, count) = (tier, 1);
            } else if tier == best {
                count += 1;
            }
        }
        if count == 0 {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % count;
        candidates()
            .filter(|(e, _)| best == Tier::Other || tier(e, best) == best)
            .nth(index)
            .map(|(_, addr)| addr)
    }
}

/// How near an endpoint is to the client's node; the nearest tier present
/// takes every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    SameNode,
    SameZone,
    Other,
}

/// The port of a slice's endpoints for the Service port: a number as is; a
/// named targetPort resolved by the slice, under the Service port's name.
fn slice_port(set: &EndpointSet, target_port: &TargetPort, port_name: Option<&str>) -> Option<u16> {
    match target_port {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(_) => set
            .ports
            .iter()
            .find(|p| p.name.as_deref() == port_name)
            .map(|p| p.port),
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

#[cfg(test)]
mod tests;
