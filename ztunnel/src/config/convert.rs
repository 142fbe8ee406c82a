//! Core Kubernetes kinds (and Gateways) to registry objects. Pods are reduced
//! to the fields the data path needs; the registry drops the local part of pods
//! of other nodes. Nodes are reduced to their zone.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{ResourceExt, core::PartialObjectMeta};

use super::{
    Invalid, LEGACY_ZONE_LABEL, Problem, SERVICE_NAME_LABEL, WAYPOINT_CLASS, ZONE_LABEL, crd,
};
use crate::registry::{
    self, EndpointPort, EndpointSet, Labels, LocalPod, Name, Object, ObjectKey, PodIps, Protocol,
    ServicePort, TargetPort, Uid, Waypoint, WaypointFor, Workload,
};

pub(super) fn namespace(ns: &Namespace, key: &ObjectKey) -> Result<Object, Invalid> {
    Ok(Object::Namespace(registry::Namespace {
        name: Name::new(&key.name),
        labels: Arc::new(labels("metadata.labels", ns.labels())?),
    }))
}

/// A node's zone: `topology.kubernetes.io/zone`, else the legacy
/// `failure-domain.beta.kubernetes.io/zone` (an empty value counts as unset).
/// Every label is validated, as for other objects; only the zone is kept.
pub(super) fn node(node: &PartialObjectMeta<Node>, key: &ObjectKey) -> Result<Object, Invalid> {
    let labels = labels("metadata.labels", node.labels())?;
    let zone = [ZONE_LABEL, LEGACY_ZONE_LABEL]
        .iter()
        .find_map(|label| labels.get(label).filter(|z| !z.is_empty()));
    Ok(Object::Node(registry::Node {
        name: Name::new(&key.name),
        zone: zone.map(Name::new),
    }))
}

/// A pod, or `None` when the data path has no use for it: not scheduled yet, or
/// finished (`Succeeded`/`Failed` pods keep their IP in the status, but it may
/// already belong to another pod). Its network namespace is never read from the
/// object: anyone who may create a pod writes its annotations. Only the local
/// file source, which the operator writes, names it (see `file`).
pub(super) fn pod(pod: &Pod, key: &ObjectKey) -> Result<Option<Object>, Invalid> {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let Some(node) = spec
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
    else {
        return Ok(None);
    };
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return Ok(None);
    }
    let mut addresses: Vec<&str> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|ip| ip.ip.as_str()).collect())
        .unwrap_or_default();
    if addresses.is_empty()
        && let Some(ip) = status.and_then(|s| s.pod_ip.as_deref())
    {
        addresses.push(ip);
    }
    let ips = pod_ips(&addresses)?;
    let ready = (status.and_then(|s| s.conditions.as_ref()))
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let uid = match pod.uid() {
        Some(uid) if !uid.is_empty() => Uid::new(&uid),
        // A hand-written file may leave it out; the key is unique too.
        _ => Uid::new(&key.to_string()),
    };
    Ok(Some(Object::Workload(Workload {
        name: (*key.name).into(),
        namespace: key.namespace.clone(),
        service_account: spec
            .and_then(|s| s.service_account_name.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .into(),
        node: node.into(),
        ips,
        labels: Arc::new(labels("metadata.labels", pod.labels())?),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ready,
        local: Some(Box::new(LocalPod { uid, netns: None })),
    })))
}

fn pod_ips(addresses: &[&str]) -> Result<PodIps, Invalid> {
    let mut ips = PodIps::default();
    for (i, text) in addresses.iter().enumerate() {
        let field = || format!("status.podIPs[{i}]");
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if ips.v4.is_none() => ips.v4 = Some(v4),
            Ok(IpAddr::V6(v6)) if ips.v6.is_none() => ips.v6 = Some(v6),
            Ok(IpAddr::V4(_)) => return Err(Invalid::new(field(), Problem::SecondAddress("IPv4"))),
            Ok(IpAddr::V6(_)) => return Err(Invalid::new(field(), Problem::SecondAddress("IPv6"))),
            Err(_) => return Err(Invalid::new(field(), Problem::Ip((*text).to_owned()))),
        }
    }
    Ok(ips)
}

pub(super) fn service(svc: &Service, key: ObjectKey) -> Result<Object, Invalid> {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut vips = Vec::new();
    let cluster_ips = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]));
    for (i, ip) in cluster_ips.unwrap_or_default().iter().enumerate() {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let vip = ip
            .parse::<IpAddr>()
            .map_err(|_| Invalid::new(format!("spec.clusterIPs[{i}]"), Problem::Ip(ip.clone())))?;
        vips.push(vip);
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.unwrap_or_default().iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let port = port_number(&format!("{field}.port"), p.port)?;
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(port_number(&format!("{field}.targetPort"), *n)?)
            }
            Some(IntOrString::String(name)) if name.is_empty() => {
                return Err(Invalid::new(format!("{field}.targetPort"), Problem::Empty));
            }
            Some(IntOrString::String(name)) => TargetPort::Name(name.as_str().into()),
        };
        ports.push(ServicePort {
            name: p.name.as_deref().filter(|n| !n.is_empty()).map(Into::into),
            port,
            target_port,
            protocol: protocol(&format!("{field}.protocol"), p.protocol.as_deref())?,
            app_protocol: (p.app_protocol.as_deref())
                .filter(|a| !a.is_empty())
                .map(Into::into),
        });
    }
    let selector = match spec.selector {
        Some(sel) if !sel.is_empty() => Some(labels("spec.selector", &sel)?),
        _ => None,
    };
    Ok(Object::Service(registry::Service {
        key,
        vips,
        ports,
        selector,
        labels: Arc::new(labels("metadata.labels", svc.labels())?),
    }))
}

/// An EndpointSlice of addresses (`FQDN` slices are not for the data path).
pub(super) fn endpoint_slice(
    slice: &EndpointSlice,
    key: ObjectKey,
) -> Result<Option<Object>, Invalid> {
    if slice.address_type == "FQDN" {
        return Ok(None);
    }
    let service = slice
        .labels()
        .get(SERVICE_NAME_LABEL)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Invalid::new(
                format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
                Problem::Required,
            )
        })?;
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}]");
        let Some(port) = p.port else { continue };
        ports.push(EndpointPort {
            name: p.name.as_deref().filter(|n| !n.is_empty()).map(Into::into),
            port: port_number(&format!("{field}.port"), port)?,
            protocol: protocol(&format!("{field}.protocol"), p.protocol.as_deref())?,
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().flatten().enumerate() {
        // Every address must parse; the first is the one kept (the API
        // requires at least one; they are fungible).
        let mut address = None;
        for (j, a) in e.addresses.iter().enumerate() {
            let ip = a.parse::<IpAddr>().map_err(|_| {
                Invalid::new(
                    format!("endpoints[{i}].addresses[{j}]"),
                    Problem::Ip(a.clone()),
                )
            })?;
            address.get_or_insert(ip);
        }
        let address = address
            .ok_or_else(|| Invalid::new(format!("endpoints[{i}].addresses"), Problem::Empty))?;
        let conditions = e.conditions.clone().unwrap_or_default();
        let ready = conditions.ready.unwrap_or(true);
        endpoints.push(registry::Endpoint {
            address,
            ready,
            serving: conditions.serving.unwrap_or(ready),
            terminating: conditions.terminating.unwrap_or(false),
            node: e.node_name.as_deref().map(Into::into),
            zone: endpoint_zone(i, e.zone.as_deref())?,
        });
    }
    Ok(Some(Object::EndpointSet(EndpointSet {
        key,
        service: service.as_str().into(),
        ports,
        endpoints,
    })))
}

/// An endpoint's `zone`: a label value, as the node label it copies; empty
/// counts as unset.
fn endpoint_zone(i: usize, zone: Option<&str>) -> Result<Option<Name>, Invalid> {
    match zone {
        None | Some("") => Ok(None),
        Some(zone) if is_label_value(zone) => Ok(Some(zone.into())),
        Some(zone) => Err(Invalid::new(
            format!("endpoints[{i}].zone"),
            Problem::LabelValue(zone.to_owned()),
        )),
    }
}

/// A waypoint, or `None` for Gateways of other classes.
pub(super) fn gateway(gw: &crd::Gateway, key: ObjectKey) -> Result<Option<Object>, Invalid> {
    if gw.spec.gateway_class_name != WAYPOINT_CLASS {
        return Ok(None);
    }
    if gw.spec.listeners.is_empty() {
        return Err(Invalid::new("spec.listeners", Problem::Required));
    }
    let mut ports = Vec::new();
    for (i, l) in gw.spec.listeners.iter().enumerate() {
        if l.port == 0 {
            return Err(Invalid::new(
                format!("spec.listeners[{i}].port"),
                Problem::Port("0".into()),
            ));
        }
        ports.push(l.port);
    }
    let status = gw.status.iter().flat_map(|s| s.addresses.iter());
    let mut addresses = Vec::new();
    for (i, a) in gw.spec.addresses.iter().chain(status).enumerate() {
        if a.type_.as_deref().is_some_and(|t| t != "IPAddress") {
            continue;
        }
        let ip = a.value.parse::<IpAddr>().map_err(|_| {
            Invalid::new(
                format!("addresses[{i}].value"),
                Problem::Ip(a.value.clone()),
            )
        })?;
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    let traffic = match gw
        .labels()
        .get(registry::WAYPOINT_FOR_LABEL)
        .map(String::as_str)
    {
        None | Some("service") => WaypointFor::Service,
        Some("workload") => WaypointFor::Workload,
        Some("all") => WaypointFor::All,
        Some("none") => WaypointFor::None,
        Some(other) => {
            return Err(Invalid::new(
                format!("metadata.labels[{}]", registry::WAYPOINT_FOR_LABEL),
                Problem::WaypointFor(other.to_owned()),
            ));
        }
    };
    Ok(Some(Object::Waypoint(Waypoint {
        key,
        class: gw.spec.gateway_class_name.as_str().into(),
        addresses,
        ports,
        traffic,
    })))
}

fn port_number(field: &str, port: i32) -> Result<u16, Invalid> {
    u16::try_from(port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| Invalid::new(field, Problem::Port(port.to_string())))
}

fn protocol(field: &str, protocol: Option<&str>) -> Result<Protocol, Invalid> {
    match protocol {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(Invalid::new(field, Problem::Protocol(other.to_owned()))),
    }
}

/// Validates label keys and values (Kubernetes syntax) and builds the set.
pub(super) fn labels(field: &str, map: &BTreeMap<String, String>) -> Result<Labels, Invalid> {
    for (k, v) in map {
        if !is_label_key(k) {
            return Err(Invalid::new(field, Problem::LabelKey(k.clone())));
        }
        if !is_label_value(v) {
            return Err(Invalid::new(
                format!("{field}[{k}]"),
                Problem::LabelValue(v.clone()),
            ));
        }
    }
    Ok(map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
}

/// `[prefix/]name`: prefix a DNS subdomain (<= 253), name <= 63 characters of
/// `[A-Za-z0-9._-]`, starting and ending alphanumeric.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// Empty, or <= 63 characters of `[A-Za-z0-9._-]` starting and ending
/// alphanumeric.
fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    value.is_empty()
        || (bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_syntax() {
        for good in ["app", "istio.io/dataplane-mode", "a.b-c/x_y.z", "A1"] {
            assert!(is_label_key(good), "{good}");
        }
        for bad in [
            "",
            "-app",
            "app-",
            "a b",
            "Istio.io/x",
            "/x",
            "x/",
            &"a".repeat(64),
        ] {
            assert!(!is_label_key(bad), "{bad}");
        }
        assert!(is_label_value(""));
        assert!(!is_label_value("a*"));
    }

    #[test]
    fn the_netns_annotation_of_a_pod_object_is_ignored() {
        let key = ObjectKey::new("ns", "p");
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns",
                         "annotations": {"ambit.dev/netns": "/proc/self/ns/net"}},
            "spec": {"containers": [], "nodeName": "n1"},
            "status": {"podIP": "198.18.1.1"}
        }))
        .unwrap();
        let Some(Object::Workload(w)) = pod(&p, &key).unwrap() else {
            panic!("a workload");
        };
        assert_eq!(w.netns(), None);
    }

    #[test]
    fn finished_and_unscheduled_pods_are_not_workloads() {
        let key = ObjectKey::new("ns", "p");
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [], "nodeName": "n1"},
            "status": {"phase": "Succeeded", "podIP": "198.18.1.1"}
        }))
        .unwrap();
        assert!(pod(&p, &key).unwrap().is_none());
        p.status.as_mut().unwrap().phase = Some("Running".into());
        assert!(pod(&p, &key).unwrap().is_some());
        p.spec.as_mut().unwrap().node_name = None;
        assert!(pod(&p, &key).unwrap().is_none());
    }
}
