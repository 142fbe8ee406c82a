//! Both configuration sources build identical registries from the same objects:
//! generated object sets go once through the local file (as YAML) and once
//! through the fake API server and the Kubernetes source. That includes node
//! zones (current and legacy labels) and endpoint zones.

use std::{path::Path, sync::Arc, time::Duration};

use ambit_tests::apiserver::ApiServer;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use ztunnel::{
    config::{
        crd::{AuthorizationPolicy, Gateway, PeerAuthentication},
        file,
        kubernetes::KubeSource,
    },
    registry::{Change, Dump, Options, Registry},
};

const NAMESPACES: [&str; 3] = ["shop", "bank", "istio-system"];
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const APPS: [&str; 3] = ["web", "db", "cache"];
const ZONES: [&str; 2] = ["z1", "z2"];

/// One generated object, as JSON with its kind.
#[derive(Debug, Clone)]
struct Generated {
    kind: &'static str,
    value: Value,
}

#[derive(Debug, Clone)]
struct PodSpec {
    ns: usize,
    node: usize,
    app: usize,
    v6: bool,
    ready: bool,
    opt_out: bool,
    host_network: bool,
    named_sa: bool,
    /// The `zone` of the pod's endpoints in EndpointSlices (else its node's).
    endpoint_zone: Option<usize>,
}

fn pod_strategy() -> impl Strategy<Value = PodSpec> {
    (
        0..3usize,
        0..3usize,
        0..3usize,
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.1),
        any::<bool>(),
        prop::option::of(0..2usize),
    )
        .prop_map(
            |(ns, node, app, v6, ready, opt_out, host_network, named_sa, endpoint_zone)| PodSpec {
                ns,
                node,
                app,
                v6,
                ready,
                opt_out,
                host_network,
                named_sa,
                endpoint_zone,
            },
        )
}

/// How a node is declared: not at all, without zone, or with its zone in the
/// current label, the legacy one, or both (the current one wins).
#[derive(Debug, Clone, Copy)]
enum NodeZone {
    Absent,
    None,
    Current(usize),
    Legacy(usize),
    Both(usize, usize),
}

fn node_strategy() -> impl Strategy<Value = NodeZone> {
    prop_oneof![
        Just(NodeZone::Absent),
        Just(NodeZone::None),
        (0..2usize).prop_map(NodeZone::Current),
        (0..2usize).prop_map(NodeZone::Legacy),
        (0..2usize, 0..2usize).prop_map(|(a, b)| NodeZone::Both(a, b)),
    ]
}

#[derive(Debug, Clone)]
struct PolicySpec {
    ns: usize,
    selector: Option<usize>,
    action: usize,
    principal: bool,
    ip_block: bool,
    port: Option<u16>,
}

fn policy_strategy() -> impl Strategy<Value = PolicySpec> {
    (
        0..3usize,
        prop::option::of(0..3usize),
        0..3usize,
        any::<bool>(),
        any::<bool>(),
        prop::option::of(1..=65535u16),
    )
        .prop_map(
            |(ns, selector, action, principal, ip_block, port)| PolicySpec {
                ns,
                selector,
                action,
                principal,
                ip_block,
                port,
            },
        )
}

#[derive(Debug, Clone)]
struct World {
    ambient: [bool; 3],
    pods: Vec<PodSpec>,
    services: Vec<(usize, usize, bool)>, // (namespace, app, named target port)
    policies: Vec<PolicySpec>,
    peer: Vec<(usize, Option<usize>, usize)>,
    waypoint: Option<usize>,
    nodes: [NodeZone; 3],
}

fn world_strategy() -> impl Strategy<Value = World> {
    (
        any::<[bool; 3]>(),
        prop::collection::vec(pod_strategy(), 0..14),
        prop::collection::vec((0..3usize, 0..3usize, any::<bool>()), 0..4),
        prop::collection::vec(policy_strategy(), 0..4),
        prop::collection::vec((0..3usize, prop::option::of(0..3usize), 0..4usize), 0..3),
        prop::option::of(0..3usize),
        [node_strategy(), node_strategy(), node_strategy()],
    )
        .prop_map(
            |(ambient, pods, services, policies, peer, waypoint, nodes)| World {
                ambient,
                pods,
                services,
                policies,
                peer,
                waypoint,
                nodes,
            },
        )
}

fn pod_ip(i: usize) -> String {
    format!("198.18.{}.{}", i / 200, i % 200 + 1)
}

/// The Kubernetes objects of a world, with the EndpointSlices a controller would
/// make (so that neither source has to derive endpoints).
fn objects(world: &World) -> Vec<Generated> {
    let mut out = Vec::new();
    for (i, ns) in NAMESPACES.iter().enumerate() {
        let labels = if world.ambient[i] {
            json!({"istio.io/dataplane-mode": "ambient"})
        } else {
            json!({})
        };
        out.push(Generated { kind: "Namespace", value: json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}) });
    }
    for (i, p) in world.pods.iter().enumerate() {
        let mut labels = json!({"app": APPS[p.app]});
        if p.opt_out {
            labels["istio.io/dataplane-mode"] = json!("none");
        }
        let mut ips = vec![json!({"ip": pod_ip(i)})];
        if p.v6 {
            ips.push(json!({"ip": format!("fd00::{:x}", i + 1)}));
        }
        let mut spec = json!({"nodeName": NODES[p.node], "containers": [{"name": "app", "image": "app", "ports": [{"name": "http", "containerPort": 8080}]}]});
        if p.host_network {
            spec["hostNetwork"] = json!(true);
        }
        if p.named_sa {
            spec["serviceAccountName"] = json!(APPS[p.app]);
        }
        let conditions =
            json!([{"type": "Ready", "status": if p.ready { "True" } else { "False" }}]);
        out.push(Generated { kind: "Pod", value: json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod-{i}"), "namespace": NAMESPACES[p.ns], "uid": format!("00000000-0000-4000-9000-{i:012x}"),
                         "labels": labels, "annotations": {"ambit.dev/netns": format!("/var/run/netns/pod-{i}")}},
            "spec": spec,
            "status": {"podIP": pod_ip(i), "podIPs": ips, "conditions": conditions},
        })});
    }
    for (i, &(ns, app, named)) in world.services.iter().enumerate() {
        let target = if named { json!("http") } else { json!(8080) };
        out.push(Generated { kind: "Service", value: json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": NAMESPACES[ns], "labels": {"istio.io/use-waypoint": "waypoint"}},
            "spec": {"clusterIP": format!("198.19.0.{}", i + 1), "selector": {"app": APPS[app]},
                     "ports": [{"name": "http", "port": 80, "targetPort": target}]},
        })});
        let endpoints: Vec<Value> = (world.pods.iter().enumerate())
            .filter(|(_, p)| p.ns == ns && p.app == app)
            .map(|(j, p)| {
                let mut endpoint = json!({
                    "addresses": [pod_ip(j)],
                    "conditions": {"ready": p.ready, "serving": p.ready, "terminating": false},
                    "nodeName": NODES[p.node],
                    "targetRef": {"kind": "Pod", "name": format!("pod-{j}"), "namespace": NAMESPACES[ns]},
                });
                if let Some(zone) = p.endpoint_zone {
                    endpoint["zone"] = json!(ZONES[zone]);
                }
                endpoint
            })
            .collect();
        out.push(Generated { kind: "EndpointSlice", value: json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": format!("svc-{i}-abc"), "namespace": NAMESPACES[ns], "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        })});
    }
    for (i, p) in world.policies.iter().enumerate() {
        let mut source = json!({});
        if p.principal {
            source["principals"] = json!([format!("cluster.local/ns/{}/sa/*", NAMESPACES[p.ns])]);
        }
        if p.ip_block || !p.principal {
            source["ipBlocks"] = json!(["198.18.0.0/16"]);
        }
        let mut rule = json!({"from": [{"source": source}]});
        if let Some(port) = p.port {
            rule["to"] = json!([{"operation": {"ports": [port.to_string()]}}]);
        }
        let action = ["ALLOW", "DENY", "AUDIT"][p.action];
        let mut spec = json!({"action": action, "rules": [rule]});
        if let Some(app) = p.selector {
            spec["selector"] = json!({"matchLabels": {"app": APPS[app]}});
        }
        out.push(Generated { kind: "AuthorizationPolicy", value: json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": format!("ap-{i}"), "namespace": NAMESPACES[p.ns]}, "spec": spec,
        })});
    }
    for (i, &(ns, selector, mode)) in world.peer.iter().enumerate() {
        let mode = ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"][mode];
        let mut spec = json!({"mtls": {"mode": mode}});
        if let Some(app) = selector {
            spec["selector"] = json!({"matchLabels": {"app": APPS[app]}});
            spec["portLevelMtls"] = json!({"8080": {"mode": "PERMISSIVE"}});
        }
        out.push(Generated {
            kind: "PeerAuthentication",
            value: json!({
                "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": format!("pa-{i}"), "namespace": NAMESPACES[ns]}, "spec": spec,
            }),
        });
    }
    for (node, zone) in NODES.iter().zip(world.nodes) {
        let labels = match zone {
            NodeZone::Absent => continue,
            NodeZone::None => json!({"kubernetes.io/hostname": node}),
            NodeZone::Current(z) => json!({"topology.kubernetes.io/zone": ZONES[z]}),
            NodeZone::Legacy(z) => json!({"failure-domain.beta.kubernetes.io/zone": ZONES[z]}),
            NodeZone::Both(current, legacy) => json!({
                "topology.kubernetes.io/zone": ZONES[current],
                "failure-domain.beta.kubernetes.io/zone": ZONES[legacy],
            }),
        };
        out.push(Generated {
            kind: "Node",
            value: json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node, "labels": labels},
                "spec": {"podCIDR": "10.244.0.0/24"},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]},
            }),
        });
    }
    if let Some(ns) = world.waypoint {
        out.push(Generated { kind: "Gateway", value: json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": NAMESPACES[ns]},
            "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
            "status": {"addresses": [{"type": "IPAddress", "value": "198.19.1.1"}]},
        })});
    }
    out
}

fn registry() -> Registry {
    Registry::new(Options {
        node: Some("node-a".into()),
        ..Options::default()
    })
}

fn through_file(objects: &[Generated]) -> Dump {
    let text: Vec<String> = objects
        .iter()
        .map(|o| serde_yaml_ng::to_string(&o.value).unwrap())
        .collect();
    let parsed = file::parse(&text.join("---\n"), Path::new("generated.yaml"))
        .unwrap()
        .objects;
    let reg = registry();
    reg.apply(parsed.into_iter().map(Change::Upsert));
    reg.snapshot().dump()
}

fn create(server: &ApiServer, object: &Generated) {
    fn typed<K: serde::de::DeserializeOwned>(v: &Value) -> K {
        serde_json::from_value(v.clone()).unwrap()
    }
    let v = &object.value;
    match object.kind {
        "Namespace" => server.create(&typed::<Namespace>(v)),
        "Pod" => server.create(&typed::<Pod>(v)),
        "Service" => server.create(&typed::<Service>(v)),
        "EndpointSlice" => server.create(&typed::<EndpointSlice>(v)),
        "AuthorizationPolicy" => server.create(&typed::<AuthorizationPolicy>(v)),
        "PeerAuthentication" => server.create(&typed::<PeerAuthentication>(v)),
        "Gateway" => server.create(&typed::<Gateway>(v)),
        "Node" => server.create(&typed::<Node>(v)),
        other => panic!("no helper for {other}"),
    }
    .unwrap();
}

async fn through_kubernetes(objects: &[Generated]) -> Dump {
    let server = ApiServer::start().await.unwrap();
    for object in objects {
        create(&server, object);
    }
    let reg = Arc::new(registry());
    let source = KubeSource::new(server.client().unwrap());
    let mut synced = source.synced();
    let task = tokio::spawn(source.run(Arc::clone(&reg)));
    tokio::time::timeout(Duration::from_secs(20), synced.wait_for(|s| *s))
        .await
        .unwrap()
        .unwrap();
    task.abort();
    assert!(
        server.metadata_only_count("nodes") > 0,
        "nodes are listed and watched metadata-only"
    );
    reg.snapshot().dump()
}

/// The zone each node should have, by the labels it was given.
fn expected_zones(world: &World) -> std::collections::BTreeMap<String, Option<String>> {
    (NODES.iter().zip(world.nodes))
        .filter_map(|(node, zone)| {
            let zone = match zone {
                NodeZone::Absent => return None,
                NodeZone::None => None,
                NodeZone::Current(z) | NodeZone::Legacy(z) | NodeZone::Both(z, _) => {
                    Some(ZONES[z].to_owned())
                }
            };
            Some(((*node).to_owned(), zone))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn both_sources_build_the_same_registry(world in world_strategy()) {
        let objects = objects(&world);
        let from_file = through_file(&objects);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let from_kube = runtime.block_on(through_kubernetes(&objects));
        prop_assert!(!from_file.namespaces.is_empty());
        prop_assert_eq!(from_file.workloads.len(), world.pods.len());
        let zones: std::collections::BTreeMap<String, Option<String>> = (from_file.nodes.iter())
            .map(|(name, node)| (name.clone(), node.zone.as_ref().map(ToString::to_string)))
            .collect();
        prop_assert_eq!(zones, expected_zones(&world));
        // The one intended difference: only the operator's file names a pod's
        // network namespace; the Kubernetes source never takes it from the
        // object (its author could name any).
        prop_assert!(from_kube.workloads.values().all(|w| w.netns().is_none()));
        let mut from_file = from_file;
        for workload in from_file.workloads.values_mut() {
            let mut w = (**workload).clone();
            if let Some(local) = w.local.as_mut() {
                local.netns = None;
            }
            *workload = Arc::new(w);
        }
        prop_assert_eq!(from_file, from_kube);
    }
}
