//! The policies the waypoint enforces, per destination: compiled once per
//! configuration generation, swapped whole, so that a change applies to the
//! next request and a request sees one generation throughout.

use std::{collections::HashMap, sync::Arc};

use ztunnel::{
    config::ErrorChain,
    policy::{CompiledPolicies, compile},
    registry::{ObjectKey, Snapshot, Waypoint, WaypointPolicies},
};

use crate::jwt::{Authenticator, JwksCache};

/// What one destination's requests are checked against.
pub struct DestinationPolicies {
    /// L4 and L7 AuthorizationPolicy.
    pub authorization: CompiledPolicies,
    /// RequestAuthentication (JWT).
    pub authentication: Authenticator,
}

impl DestinationPolicies {
    fn compile(policies: &WaypointPolicies, jwks: &JwksCache) -> Self {
        Self {
            authorization: compile(policies.authorization.iter().map(|p| &**p)),
            authentication: Authenticator::new(&policies.request_authentication, jwks),
        }
    }
}

/// The destinations of one waypoint and their policies, for one generation.
#[derive(Default)]
pub struct PolicyTable {
    generation: u64,
    /// Per Service that uses the waypoint.
    services: HashMap<ObjectKey, Arc<DestinationPolicies>>,
    /// Traffic addressed to workloads (no Service): what is attached to the
    /// waypoint itself.
    workloads: Option<Arc<DestinationPolicies>>,
}

impl PolicyTable {
    /// Compiles the policies of every destination that `gateway` serves in
    /// `snapshot`. Problems (jwtRules that cannot be enforced) are logged; they
    /// reject the tokens they concern.
    pub fn build(snapshot: &Snapshot, gateway: &ObjectKey, jwks: &JwksCache) -> Self {
        let Some(waypoint) = snapshot.waypoint(gateway) else {
            return Self {
                generation: snapshot.generation(),
                ..Self::default()
            };
        };
        let mut services = HashMap::new();
        for service in snapshot.services() {
            if snapshot
                .waypoint_for_service(service)
                .is_some_and(|w| w.key == *gateway)
            {
                let policies = snapshot.policies_for_waypoint(waypoint, Some(&service.key));
                let compiled = DestinationPolicies::compile(&policies, jwks);
                report(&compiled, Some(&service.key));
                services.insert(service.key.clone(), Arc::new(compiled));
            }
        }
        let workloads =
            DestinationPolicies::compile(&snapshot.policies_for_waypoint(waypoint, None), jwks);
        report(&workloads, None);
        Self {
            generation: snapshot.generation(),
            services,
            workloads: Some(Arc::new(workloads)),
        }
    }

    /// The configuration generation it was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The policies of traffic to `service`, or to a workload (`None`).
    /// `None` when the table does not know the destination (a configuration
    /// newer than the table): the caller compiles them from its snapshot.
    pub fn get(&self, service: Option<&ObjectKey>) -> Option<Arc<DestinationPolicies>> {
        match service {
            Some(key) => self.services.get(key).cloned(),
            None => self.workloads.clone(),
        }
    }
}

/// The policies of one destination compiled from `snapshot` (a destination
/// the table does not hold yet).
pub fn compile_one(
    snapshot: &Snapshot,
    waypoint: &Waypoint,
    service: Option<&ObjectKey>,
    jwks: &JwksCache,
) -> DestinationPolicies {
    DestinationPolicies::compile(&snapshot.policies_for_waypoint(waypoint, service), jwks)
}

fn report(policies: &DestinationPolicies, service: Option<&ObjectKey>) {
    let destination = service.map_or_else(|| "workloads".to_owned(), ToString::to_string);
    for problem in policies.authentication.problems() {
        tracing::warn!(%destination, error = %ErrorChain(problem), "RequestAuthentication rule rejected");
    }
}
