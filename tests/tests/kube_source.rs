//! The Kubernetes configuration source against the fake API server: initial
//! list, adds/updates/deletes, a watch dropped mid-way, `410 Gone` and relist,
//! and invalid objects. kube-rs runs unmodified against real HTTP.

use std::{sync::Arc, time::Duration};

use ambit_tests::apiserver::ApiServer;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::json;
use ztunnel::{
    config::{crd::AuthorizationPolicy, kubernetes::KubeSource},
    registry::{ObjectKey, Options, Registry, Snapshot},
};

fn namespace(name: &str, ambient: bool) -> Namespace {
    let labels = if ambient {
        json!({"istio.io/dataplane-mode": "ambient"})
    } else {
        json!({})
    };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }))
    .unwrap()
}

fn pod(ns: &str, name: &str, node: &str, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name},
                     "annotations": {"ambit.dev/netns": format!("/var/run/netns/{name}")}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .unwrap()
}

fn node(name: &str, labels: &serde_json::Value) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"images": [{"names": ["registry.example/big:1"], "sizeBytes": 1_000_000_000}]},
    }))
    .unwrap()
}

fn zone(s: &Snapshot, node: &str) -> Option<String> {
    s.node_zone(node).map(ToString::to_string)
}

fn policy(ns: &str, name: &str, spec: &serde_json::Value) -> AuthorizationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    }))
    .unwrap()
}

struct Running {
    server: ApiServer,
    registry: Arc<Registry>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(server: ApiServer) -> Running {
    let registry = Arc::new(Registry::new(Options {
        node: Some("node-a".into()),
        ..Options::default()
    }));
    let source = KubeSource::new(server.client().expect("client"));
    let mut synced = source.synced();
    let task = tokio::spawn(source.run(Arc::clone(&registry)));
    tokio::time::timeout(Duration::from_secs(20), synced.wait_for(|s| *s))
        .await
        .expect("the source syncs")
        .expect("the source runs");
    Running {
        server,
        registry,
        task,
    }
}

/// Waits until `check` holds for the registry's snapshot.
async fn eventually(registry: &Registry, what: &str, check: impl Fn(&Snapshot) -> bool) {
    let mut rx = registry.subscribe();
    let wait = async {
        loop {
            if check(&rx.borrow_and_update()) {
                return;
            }
            rx.changed().await.expect("the registry lives");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

fn has_pod(s: &Snapshot, ip: &str) -> bool {
    s.workload_by_ip(ip.parse().unwrap()).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_then_adds_updates_and_deletes() {
    let server = ApiServer::start().await.unwrap();
    server.create(&namespace("shop", true)).unwrap();
    server
        .create(&pod("shop", "web", "node-a", "198.18.1.2"))
        .unwrap();
    server
        .create(&pod("shop", "db", "node-b", "198.18.2.2"))
        .unwrap();
    let run = start(server).await;
    let snap = run.registry.snapshot();
    assert_eq!(snap.workload_count(), 2);
    let web = snap.workload_by_ip("198.18.1.2".parse().unwrap()).unwrap();
    assert!(web.local.is_some(), "own node's pods are kept in full");
    assert_eq!(
        web.netns(),
        None,
        "never the netns its annotation names: anyone creating a pod writes those"
    );
    assert!(
        snap.workload_by_ip("198.18.2.2".parse().unwrap())
            .unwrap()
            .local
            .is_none()
    );
    assert_eq!(snap.enrolled_pods("node-a").len(), 1);

    run.server
        .create(&pod("shop", "cache", "node-a", "198.18.1.3"))
        .unwrap();
    eventually(&run.registry, "added pod", |s| has_pod(s, "198.18.1.3")).await;
    run.server
        .update(&pod("shop", "cache", "node-a", "198.18.1.4"))
        .unwrap();
    eventually(&run.registry, "updated pod", |s| {
        has_pod(s, "198.18.1.4") && !has_pod(s, "198.18.1.3")
    })
    .await;
    run.server.delete::<Pod>(Some("shop"), "db").unwrap();
    eventually(&run.registry, "deleted pod", |s| !has_pod(s, "198.18.2.2")).await;

    // Enrollment toggled at runtime: the namespace label releases the pods.
    run.server.update(&namespace("shop", false)).unwrap();
    eventually(&run.registry, "namespace released", |s| {
        s.enrolled_pods("node-a").is_empty()
    })
    .await;
    run.server.update(&namespace("shop", true)).unwrap();
    eventually(&run.registry, "namespace captured", |s| {
        s.enrolled_pods("node-a").len() == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_resumes_without_losing_events() {
    let server = ApiServer::start().await.unwrap();
    server
        .create(&pod("shop", "web", "node-a", "198.18.1.2"))
        .unwrap();
    let run = start(server).await;
    let watches = run.server.watch_count("pods");
    let lists = run.server.list_count("pods");
    run.server.pause_watches(true);
    run.server.drop_watches();
    run.server
        .create(&pod("shop", "late", "node-b", "198.18.2.9"))
        .unwrap();
    run.server.delete::<Pod>(Some("shop"), "web").unwrap();
    run.server.pause_watches(false);
    eventually(&run.registry, "events missed while disconnected", |s| {
        has_pod(s, "198.18.2.9") && !has_pod(s, "198.18.1.2")
    })
    .await;
    assert!(
        run.server.watch_count("pods") > watches,
        "the watch was reopened"
    );
    assert_eq!(
        run.server.list_count("pods"),
        lists,
        "resumed from its resourceVersion, no relist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_and_leaves_no_stale_entries() {
    let server = ApiServer::start().await.unwrap();
    server.create(&namespace("shop", true)).unwrap();
    for i in 0..5 {
        server
            .create(&pod(
                "shop",
                &format!("p{i}"),
                "node-a",
                &format!("198.18.1.{}", 10 + i),
            ))
            .unwrap();
    }
    server
        .create(&policy(
            "shop",
            "deny-old",
            &json!({"action": "DENY", "rules": [{}]}),
        ))
        .unwrap();
    let run = start(server).await;
    assert_eq!(run.registry.snapshot().workload_count(), 5);
    let lists = run.server.list_count("pods");

    run.server.pause_watches(true);
    run.server.drop_watches();
    // Changes the client never sees as events: the history is then gone.
    run.server.delete::<Pod>(Some("shop"), "p0").unwrap();
    run.server.delete::<Pod>(Some("shop"), "p1").unwrap();
    run.server
        .update(&pod("shop", "p2", "node-a", "198.18.1.99"))
        .unwrap();
    run.server
        .create(&pod("shop", "new", "node-b", "198.18.2.1"))
        .unwrap();
    run.server
        .delete::<AuthorizationPolicy>(Some("shop"), "deny-old")
        .unwrap();
    run.server.expire_history();
    run.server.pause_watches(false);

    eventually(&run.registry, "relisted state", |s| {
        s.workload_count() == 4
            && has_pod(s, "198.18.2.1")
            && has_pod(s, "198.18.1.99")
            && s.authorization_policy(&ObjectKey::new("shop", "deny-old"))
                .is_none()
    })
    .await;
    let snap = run.registry.snapshot();
    for stale in ["198.18.1.10", "198.18.1.11", "198.18.1.12"] {
        assert!(!has_pod(&snap, stale), "stale entry {stale} after relist");
    }
    assert!(snap.workload(&ObjectKey::new("shop", "p0")).is_none());
    assert!(
        run.server.list_count("pods") > lists,
        "410 Gone made the client relist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_are_enforced_fail_closed_and_other_invalid_objects_keep_their_last_version()
 {
    let server = ApiServer::start().await.unwrap();
    server
        .create(&policy(
            "shop",
            "ap",
            &json!({"action": "DENY", "rules": [{}]}),
        ))
        .unwrap();
    server
        .create(&policy(
            "shop",
            "bad",
            &json!({"action": "CUSTOM", "rules": [{}]}),
        ))
        .unwrap();
    server
        .create(&pod("shop", "web", "node-a", "198.18.1.2"))
        .unwrap();
    let run = start(server).await;
    let snap = run.registry.snapshot();
    assert!(
        snap.authorization_policy(&ObjectKey::new("shop", "ap"))
            .is_some()
    );
    // Skipping it would drop what it matches from the deny list: it is kept,
    // with its problem, and a match still denies (no provider: fail closed).
    let bad = snap
        .authorization_policy(&ObjectKey::new("shop", "bad"))
        .expect("the invalid CUSTOM policy is kept");
    assert_eq!(bad.action, ztunnel::registry::Action::Custom);
    assert!(
        bad.problems[0].contains("action CUSTOM requires provider.name"),
        "{:?}",
        bad.problems
    );

    // A bad update replaces the policy with its fail-closed form: an ALLOW
    // whose rule with the unreadable source allows nobody.
    run.server
        .update(&policy(
            "shop",
            "ap",
            &json!({"rules": [{"from": [{"source": {"ipBlocks": ["nope"]}}]}]}),
        ))
        .unwrap();
    eventually(&run.registry, "the fail-closed version", |s| {
        s.authorization_policy(&ObjectKey::new("shop", "ap"))
            .is_some_and(|p| !p.problems.is_empty())
    })
    .await;
    let ap = run
        .registry
        .snapshot()
        .authorization_policy(&ObjectKey::new("shop", "ap"))
        .cloned()
        .unwrap();
    assert_eq!(ap.action, ztunnel::registry::Action::Allow);
    assert!(ap.rules[0].from[0].invalid, "{ap:?}");
    assert!(
        ap.problems[0].contains("spec.rules[0].from[0].source.ipBlocks[0]"),
        "{:?}",
        ap.problems
    );
    run.server
        .update(&policy(
            "shop",
            "ap",
            &json!({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]}),
        ))
        .unwrap();
    eventually(&run.registry, "good update", |s| {
        s.authorization_policy(&ObjectKey::new("shop", "ap"))
            .is_some_and(|p| p.problems.is_empty() && !p.rules[0].from[0].invalid)
    })
    .await;

    // Any other invalid object is skipped and its last good version stays.
    run.server
        .update(&pod("shop", "web", "node-a", "198.18.1.999"))
        .unwrap();
    run.server
        .create(&pod("shop", "marker", "node-a", "198.18.1.50"))
        .unwrap();
    eventually(&run.registry, "marker after the bad update", |s| {
        has_pod(s, "198.18.1.50")
    })
    .await;
    assert!(
        has_pod(&run.registry.snapshot(), "198.18.1.2"),
        "the last good pod stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_zones_follow_the_labels_and_a_bad_zone_keeps_the_last_good_one() {
    let server = ApiServer::start().await.unwrap();
    server
        .create(&node(
            "node-a",
            &json!({"topology.kubernetes.io/zone": "z1"}),
        ))
        .unwrap();
    server
        .create(&node(
            "node-b",
            &json!({"failure-domain.beta.kubernetes.io/zone": "z2"}),
        ))
        .unwrap();
    let run = start(server).await;
    let snap = run.registry.snapshot();
    assert_eq!(zone(&snap, "node-a").as_deref(), Some("z1"));
    assert_eq!(zone(&snap, "node-b").as_deref(), Some("z2"), "legacy label");
    // The watch follows the list; on a loaded machine it may not be open yet
    // when the source reports synced.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while run.server.metadata_only_count("nodes") < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        run.server.metadata_only_count("nodes") >= 2,
        "nodes are listed and watched metadata-only"
    );

    // A status-only update (the kubelet's, every few minutes) changes nothing
    // the registry keeps: no new snapshot, only the marker's.
    let generation = run.registry.load().generation();
    let mut status_only = node("node-a", &json!({"topology.kubernetes.io/zone": "z1"}));
    status_only.status.as_mut().unwrap().phase = Some("Running".into());
    run.server.update(&status_only).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.server
        .create(&node("first-marker", &json!({})))
        .unwrap();
    eventually(&run.registry, "first marker", |s| {
        s.node_object("first-marker").is_some()
    })
    .await;
    assert_eq!(
        run.registry.load().generation(),
        generation + 1,
        "an unchanged node makes no snapshot"
    );

    run.server
        .update(&node(
            "node-b",
            &json!({"topology.kubernetes.io/zone": "z3"}),
        ))
        .unwrap();
    eventually(&run.registry, "zone changed", |s| {
        zone(s, "node-b").as_deref() == Some("z3")
    })
    .await;

    // A bad value is skipped: the last good zone stays.
    run.server
        .update(&node(
            "node-b",
            &json!({"topology.kubernetes.io/zone": "not a zone"}),
        ))
        .unwrap();
    // A node after it on the same watch: once it is seen, so was the bad one.
    run.server
        .create(&node(
            "marker",
            &json!({"topology.kubernetes.io/zone": "z9"}),
        ))
        .unwrap();
    eventually(&run.registry, "marker after the bad update", |s| {
        zone(s, "marker").is_some()
    })
    .await;
    assert_eq!(
        zone(&run.registry.snapshot(), "node-b").as_deref(),
        Some("z3"),
        "the last good zone stays"
    );

    run.server.delete::<Node>(None, "node-a").unwrap();
    eventually(&run.registry, "node deleted", |s| {
        zone(s, "node-a").is_none()
    })
    .await;
}
