//! Endpoints of the file's Services: a local file has no EndpointSlice
//! controller, so for a Service with a selector and no EndpointSlice of its own
//! the source derives them from the selected pods, as the controller would (one
//! set per distinct port mapping, named `<service>-local-<n>`).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::Pod;

use crate::{
    config::Resource,
    registry::{
        Endpoint, EndpointPort, EndpointSet, Object, ObjectKey, Service, TargetPort, Workload,
    },
};

/// Per Service port: its name and the port it reaches on a pod.
type PortMapping = Vec<(Option<Box<str>>, u16)>;

/// Endpoint sets for the Services of `objects` that have a selector and no
/// EndpointSlice in the file.
pub(super) fn derive(resources: &[Resource], objects: &[Object]) -> Vec<Object> {
    let has_slices: std::collections::HashSet<ObjectKey> = objects
        .iter()
        .filter_map(|o| match o {
            Object::EndpointSet(s) => Some(s.service_key()),
            _ => None,
        })
        .collect();
    let pods: BTreeMap<ObjectKey, &Pod> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::Pod(p) => Some((r.key(), p)),
            _ => None,
        })
        .collect();
    let mut workloads: Vec<&Workload> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Workload(w) => Some(w),
            _ => None,
        })
        .collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut out = Vec::new();
    for object in objects {
        let Object::Service(svc) = object else {
            continue;
        };
        let Some(selector) = &svc.selector else {
            continue;
        };
        if has_slices.contains(&svc.key) {
            continue;
        }
        let mut by_ports: BTreeMap<PortMapping, Vec<Endpoint>> = BTreeMap::new();
        for w in workloads
            .iter()
            .filter(|w| w.namespace == svc.key.namespace && w.labels.contains_all(selector))
        {
            // IPv4 first, as the pod's address list; a pod without one yet
            // is no endpoint.
            let Some(address) = w.ips.iter().next() else {
                continue;
            };
            let mapping = port_mapping(svc, pods.get(&w.object_key()).copied());
            by_ports.entry(mapping).or_default().push(Endpoint {
                address,
                ready: w.ready,
                serving: w.ready,
                terminating: false,
                node: Some(w.node.clone()),
                // The node's zone stands in (the registry looks it up).
                zone: None,
            });
        }
        for (n, (mapping, endpoints)) in by_ports.into_iter().enumerate() {
            let ports = mapping
                .into_iter()
                .zip(&svc.ports)
                .map(|((name, port), sp)| EndpointPort {
                    name,
                    port,
                    protocol: sp.protocol,
                })
                .collect();
            out.push(Object::EndpointSet(EndpointSet {
                key: ObjectKey::new(&svc.key.namespace, &format!("{}-local-{n}", svc.key.name)),
                service: Arc::clone(&svc.key.name),
                ports,
                endpoints,
            }));
        }
    }
    out
}

/// For each Service port, its name and the port it reaches on `pod` (a named
/// target port resolved through the pod's container ports; 0 when the pod has
/// no port of that name, so it serves nothing there).
fn port_mapping(svc: &Service, pod: Option<&Pod>) -> PortMapping {
    svc.ports
        .iter()
        .map(|sp| {
            let port = match &sp.target_port {
                TargetPort::Number(n) => *n,
                TargetPort::Name(name) => pod
                    .and_then(|p| p.spec.as_ref())
                    .into_iter()
                    .flat_map(|s| s.containers.iter())
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|p| p.name.as_deref() == Some(&**name))
                    .and_then(|p| u16::try_from(p.container_port).ok())
                    .unwrap_or(0),
            };
            (sp.name.clone(), port)
        })
        .collect()
}
