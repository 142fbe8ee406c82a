//! The traffic view: `GET /ui`, one page with everything it needs embedded,
//! and the JSON it polls (`/api/graph`, `/api/flows`,
//! `/api/workloads/<namespace>/<name>`), built from the process's
//! [`FlowLog`], registry and certificates.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    flows::{FlowLog, FlowPage, GRAPH_WINDOW, Graph},
    identity::CertSnapshot,
    registry::Snapshot,
};

/// The page: HTML, CSS and script in one file, no request to any other
/// origin.
pub const PAGE: &str = include_str!("ui.html");

/// Denials listed per workload.
const DENIALS: usize = 10;

/// The value of `key` in a query string.
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// `/api/graph[?minutes=N]` (1 to 60, default 5).
pub fn graph(flows: &FlowLog, query: Option<&str>) -> Result<Graph, String> {
    let window = match query_value(query, "minutes") {
        None => GRAPH_WINDOW,
        Some(minutes) => match minutes.parse::<u64>() {
            Ok(m @ 1..=60) => Duration::from_secs(m * 60),
            _ => return Err(format!("minutes={minutes:?}: expected 1 to 60")),
        },
    };
    Ok(flows.graph(window))
}

/// `/api/flows[?since=SEQ]`: the flows after `since`, newest first.
pub fn flows(flows: &FlowLog, query: Option<&str>) -> Result<FlowPage, String> {
    let since = match query_value(query, "since") {
        None => 0,
        Some(since) => since
            .parse()
            .map_err(|_| format!("since={since:?}: expected a flow's seq (a number)"))?,
    };
    Ok(flows.since(since))
}

/// A policy that selects a workload.
#[derive(Debug, Serialize)]
struct PolicyRef {
    kind: &'static str,
    name: String,
    action: Value,
}

/// `/api/workloads/<namespace>/<name>`: the workload (pods whose canonical
/// name, or own name, is `name`), its identity, its certificate when this
/// process holds it, the policies that select it and its last denials.
/// `None` when the registry has no such workload.
pub fn workload(
    snapshot: &Snapshot,
    certs: &[CertSnapshot],
    flows: &FlowLog,
    trust_domain: &str,
    namespace: &str,
    name: &str,
) -> Option<Value> {
    let pods: Vec<_> = snapshot
        .workloads()
        .filter(|w| {
            &*w.namespace == namespace
                && (crate::metrics::workload_names(w).0 == name || &*w.name == name)
        })
        .collect();
    let first = pods.first()?;
    let identity = format!(
        "spiffe://{trust_domain}/ns/{namespace}/sa/{}",
        first.service_account
    );
    let certificate = certs.iter().find(|c| c.identity == identity);
    let policies = snapshot.policies_for(first);
    let mut selecting: Vec<PolicyRef> = policies
        .authorization
        .iter()
        .map(|p| PolicyRef {
            kind: "AuthorizationPolicy",
            name: p.key.to_string(),
            action: serde_json::to_value(p.action).unwrap_or_default(),
        })
        .collect();
    selecting.extend(
        policies
            .peer_mesh
            .iter()
            .chain(&policies.peer_namespace)
            .chain(&policies.peer_workload)
            .map(|p| PolicyRef {
                kind: "PeerAuthentication",
                name: p.key.to_string(),
                action: Value::Null,
            }),
    );
    selecting.extend(policies.request_authentication.iter().map(|p| PolicyRef {
        kind: "RequestAuthentication",
        name: p.key.to_string(),
        action: Value::Null,
    }));
    selecting.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    Some(json!({
        "namespace": namespace,
        "workload": name,
        "identity": identity,
        "pods": pods.iter().map(|w| json!({
            "name": &*w.name,
            "node": &*w.node,
            "ips": &w.ips,
        })).collect::<Vec<_>>(),
        "certificate": certificate,
        "policies": selecting,
        "denials": flows.denials_to(namespace, name, DENIALS),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{Endpoint, Flow};

    #[test]
    fn the_page_is_small_and_self_contained() {
        assert!(PAGE.len() < 200 * 1024, "{} bytes", PAGE.len());
        // No script, style, image or font from elsewhere: the only absolute
        // URL is SVG's namespace name, which is never fetched.
        let absolute: Vec<&str> = PAGE
            .match_indices("http")
            .map(|(at, _)| &PAGE[at..(at + 40).min(PAGE.len())])
            .filter(|url| !url.starts_with("http://www.w3.org/2000/svg"))
            .collect();
        assert!(absolute.is_empty(), "{absolute:?}");
        for attribute in [" src=", " href=", "@import", "url(http"] {
            assert!(!PAGE.contains(attribute), "{attribute}");
        }
    }

    #[test]
    fn queries_are_checked() {
        let log = FlowLog::default();
        assert_eq!(graph(&log, None).unwrap().window_s, 300);
        assert_eq!(graph(&log, Some("minutes=1")).unwrap().window_s, 60);
        for bad in ["minutes=0", "minutes=61", "minutes=x"] {
            let err = graph(&log, Some(bad)).unwrap_err();
            assert!(err.contains("expected 1 to 60"), "{bad}: {err}");
        }
        assert_eq!(flows(&log, Some("since=0")).unwrap().next, 0);
        let err = flows(&log, Some("since=-1")).unwrap_err();
        assert!(err.contains("since"), "{err}");
    }

    #[test]
    fn a_workload_shows_identity_policies_and_denials() {
        let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: server-1, namespace: demo, uid: u1, labels: {app: server}}
spec: {serviceAccountName: api, nodeName: a}
status: {podIP: 198.18.16.10, podIPs: [{ip: 198.18.16.10}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-7001, namespace: demo}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ["7001"]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec: {mtls: {mode: STRICT}}
"#;
        let registry = crate::registry::Registry::new(crate::registry::Options {
            node: Some("a".into()),
            ..crate::registry::Options::default()
        });
        let parsed = crate::config::file::parse(yaml, std::path::Path::new("test.yaml")).unwrap();
        registry.apply(
            parsed
                .objects
                .into_iter()
                .map(crate::registry::Change::Upsert),
        );
        let snapshot = registry.snapshot();
        let log = FlowLog::default();
        log.record(Flow {
            direction: "inbound",
            src: Endpoint {
                namespace: "demo".into(),
                workload: "client".into(),
                ..Endpoint::default()
            },
            dst: Endpoint {
                namespace: "demo".into(),
                workload: "server".into(),
                ..Endpoint::default()
            },
            decision: "deny",
            policy: "DENY policy demo/no-7001 rule 0 matched".into(),
            ..Flow::default()
        });
        let view = workload(&snapshot, &[], &log, "cluster.local", "demo", "server").unwrap();
        assert_eq!(view["identity"], "spiffe://cluster.local/ns/demo/sa/api");
        assert_eq!(view["pods"][0]["name"], "server-1");
        assert_eq!(view["certificate"], Value::Null, "not held by this process");
        let policies: Vec<(&str, &str)> = view["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["kind"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        assert_eq!(
            policies,
            [
                ("AuthorizationPolicy", "demo/no-7001"),
                ("PeerAuthentication", "demo/strict")
            ]
        );
        assert_eq!(view["policies"][0]["action"], "DENY");
        assert_eq!(view["denials"].as_array().unwrap().len(), 1);
        assert!(
            view["denials"][0]["policy"]
                .as_str()
                .unwrap()
                .contains("demo/no-7001")
        );
        // By pod name too; an unknown one is none.
        assert!(workload(&snapshot, &[], &log, "cluster.local", "demo", "server-1").is_some());
        assert!(workload(&snapshot, &[], &log, "cluster.local", "demo", "nope").is_none());
        assert!(workload(&snapshot, &[], &log, "cluster.local", "other", "server").is_none());
    }
}
