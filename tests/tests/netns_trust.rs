//! Which network namespace ztunnel enrolls for a pod, and what it never
//! enrolls. In Kubernetes mode a pod's object names nothing ztunnel trusts
//! (anyone who may create a pod writes its annotations): the namespace is the
//! one the pod's processes are in, found by the cgroup of its uid. In local
//! mode the operator's file names it, but the node's own namespace, one
//! another pod is in and one without the pod's addresses are refused whatever
//! the file says.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use ambit_tests::{
    Testbed,
    apiserver::ApiServer,
    mesh::{MeshConfig, Ztunnel, ZtunnelOptions, send, start_server},
    privileged,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde_json::json;
use ztunnel::capture::{NetnsCookie, netns_cookie, pinned_enrollment};

const WAIT: Duration = Duration::from_secs(10);

fn bed(tag: &str) -> Testbed {
    Testbed::builder(tag)
        .node("a")
        .node("b")
        .pod("client", "a")
        .pod("attacker", "a")
        .pod("grabber", "a")
        .pod("server", "b")
        .build()
        .expect("testbed builds")
}

fn cookie(path: &std::path::Path) -> NetnsCookie {
    netns_cookie(path).expect("the namespace has a cookie")
}

/// The pod object a user would create: the real pod's uid, addresses and
/// node, and an `ambit.dev/netns` annotation naming `netns`.
fn pod(bed: &Testbed, name: &str, netns: &str) -> Pod {
    let p = bed.pod(name);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "uid": p.uid(),
                     "labels": {"app": name},
                     "annotations": {"ambit.dev/netns": netns}},
        "spec": {"nodeName": p.node(), "serviceAccountName": name,
                 "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": p.ipv4().to_string(),
                   "podIPs": [{"ip": p.ipv4().to_string()}, {"ip": p.ipv6().to_string()}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .expect("a pod")
}

/// The identities node b's ztunnel saw on its inbound connections, by the
/// message the client sent.
fn inbound_identities(zt: &Ztunnel) -> BTreeMap<String, String> {
    zt.access_logs()
        .iter()
        .filter(|l| l["direction"] == "inbound" && l["mode"] == "hbone")
        .filter_map(|l| {
            Some((
                l["src.addr"].as_str()?.to_owned(),
                l["src.identity"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_pods_are_enrolled_by_their_own_namespace_never_the_one_their_object_names() {
    if !privileged(
        "kubernetes_pods_are_enrolled_by_their_own_namespace_never_the_one_their_object_names",
    ) {
        return;
    }
    let bed = bed("kube_netns");
    let (server, kubeconfig) = ApiServer::start_in_node(&bed, "a").expect("the API server starts");

    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}},
    }))
    .unwrap();
    server.create(&ns).unwrap();
    let client_netns = bed.pod("client").netns_path().display().to_string();
    // The client's object names the node's own namespace; the attacker's
    // names the client's (to send as the attacker with the client's traffic);
    // the grabber's names pid 1's. None of it is believed.
    server
        .create(&pod(&bed, "client", "/proc/self/ns/net"))
        .unwrap();
    server
        .create(&pod(&bed, "attacker", &client_netns))
        .unwrap();
    server
        .create(&pod(&bed, "grabber", "/proc/1/ns/net"))
        .unwrap();
    server
        .create(&pod(&bed, "server", "/proc/self/ns/net"))
        .unwrap();

    let options = ZtunnelOptions::default();
    let (bed_ref, kube_ref) = (&bed, &kubeconfig);
    let (zt_a, zt_b) = tokio::task::block_in_place(|| {
        let a = Ztunnel::start_kubernetes(bed_ref, "a", kube_ref, &options).expect("ztunnel a");
        let b = Ztunnel::start_kubernetes(bed_ref, "b", kube_ref, &options).expect("ztunnel b");
        (a, b)
    });

    // Each pod of node a is enrolled in its own namespace, and nothing else
    // is: not the node's, not pid 1's.
    let enrolled = pinned_enrollment(bed.node("a").pin_dir()).expect("pinned map reads");
    let mut own: Vec<NetnsCookie> = ["client", "attacker", "grabber"]
        .iter()
        .map(|p| cookie(&bed.pod(p).netns_path()))
        .collect();
    own.sort();
    let mut got = enrolled.clone();
    got.sort();
    assert_eq!(got, own, "node a enrolls exactly its pods' own namespaces");
    assert!(!enrolled.contains(&cookie(&bed.node("a").netns_path())));

    // Traffic of each pod carries that pod's identity.
    let logs = tokio::task::block_in_place(|| {
        let _echo = start_server(&bed, "server", "echo", "[::]:7000");
        let dst = SocketAddr::from((bed.pod("server").ipv4(), 7000));
        let mut sources = BTreeMap::new();
        for name in ["client", "attacker"] {
            let reply = send(&bed, name, dst, name)
                .unwrap_or_else(|e| panic!("{name} reaches the server: {e}\n{}", zt_a.stderr()));
            let from = reply
                .split_whitespace()
                .find_map(|w| w.strip_prefix("from="))
                .expect("the server names the client address")
                .to_owned();
            sources.insert(name, from);
        }
        // Access lines are written as connections end, just after the replies.
        let deadline = std::time::Instant::now() + WAIT;
        while inbound_identities(&zt_b).len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        (sources, inbound_identities(&zt_b))
    });
    let (sources, identities) = logs;
    for name in ["client", "attacker"] {
        let ip = if name == "client" {
            bed.pod("client").ipv4()
        } else {
            bed.pod("attacker").ipv4()
        };
        assert!(sources[name].contains(&ip.to_string()), "{sources:?}");
        let identity = identities
            .iter()
            .find(|(addr, _)| addr.starts_with(&format!("{ip}:")))
            .map(|(_, id)| id.clone())
            .unwrap_or_else(|| panic!("no inbound line from {name}: {identities:?}"));
        assert_eq!(
            identity,
            format!("spiffe://cluster.local/ns/demo/sa/{name}"),
            "{name}'s traffic carries its own identity"
        );
    }
    drop(server);
}

#[test]
fn the_node_namespace_and_another_pods_namespace_are_refused_even_when_the_file_names_them() {
    if !privileged(
        "the_node_namespace_and_another_pods_namespace_are_refused_even_when_the_file_names_them",
    ) {
        return;
    }
    let bed = bed("file_netns");
    let client_netns = bed.pod("client").netns_path().display().to_string();
    let config = MeshConfig::default()
        .namespace("demo", true)
        .pod("client", "demo")
        .pod("attacker", "demo")
        .pod("grabber", "demo")
        .pod("server", "demo")
        // ztunnel's own namespace is the node's.
        .netns("grabber", "/proc/self/ns/net")
        .netns("attacker", &client_netns);
    let path = bed.workdir().join("mesh.yaml");
    config.write(&bed, &path).expect("config written");
    let zt_a = Ztunnel::start(&bed, "a", &path, &ZtunnelOptions::default()).expect("ztunnel a");
    let refused = |pod: &str, reason: &str| {
        zt_a.logs().iter().any(|l| {
            l["message"] == "pod not captured"
                && l["error"].as_str().is_some_and(|e| {
                    e.contains(&format!("pod demo/{pod}: network namespace")) && e.contains(reason)
                })
        })
    };
    assert!(
        refused("grabber", "it is the node's own network namespace"),
        "{}",
        zt_a.stderr()
    );
    // Whatever the order of enrollment: a pod's namespace holds its address.
    let attacker_ip = bed.pod("attacker").ipv4();
    assert!(
        refused(
            "attacker",
            &format!("it does not hold the pod's address {attacker_ip}")
        ),
        "{}",
        zt_a.stderr()
    );
    let enrolled = pinned_enrollment(bed.node("a").pin_dir()).expect("pinned map reads");
    assert_eq!(
        enrolled,
        vec![cookie(&bed.pod("client").netns_path())],
        "only the client, in its own namespace"
    );
}
