//! File source tests: a valid file becomes registry objects, each kind of bad
//! document is refused with its place and reason, and the last good
//! configuration survives bad edits.

use std::{net::IpAddr, path::Path, sync::Arc, time::Duration};

use super::*;
use crate::registry::{Options, Registry};

const BASE: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations:
    ambit.dev/netns: /var/run/netns/web
spec:
  nodeName: node-a
  serviceAccountName: web
  containers:
  - name: web
    image: web
    ports:
    - {name: http, containerPort: 8080}
status:
  podIP: 198.18.1.2
  conditions:
  - {type: Ready, status: "True"}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
"#;

fn registry() -> Registry {
    Registry::new(Options {
        node: Some("node-a".into()),
        ..Options::default()
    })
}

#[test]
fn a_valid_file_fills_the_registry() {
    let objects = parse(BASE, Path::new("mesh.yaml")).unwrap().objects;
    let reg = registry();
    reg.apply(objects.into_iter().map(Change::Upsert));
    let snap = reg.snapshot();
    let web = snap.workload_by_ip("198.18.1.2".parse().unwrap()).unwrap();
    assert_eq!(&*web.service_account, "web");
    assert!(web.ready);
    assert_eq!(web.netns().unwrap(), Path::new("/var/run/netns/web"));
    assert_eq!(snap.enrolled_pods("node-a").len(), 1);
    let (svc, port) = snap
        .service_port("198.19.0.10:80".parse().unwrap())
        .unwrap();
    let sets = snap.endpoint_sets(&svc.key);
    assert_eq!(sets.len(), 1, "endpoints derived from the selector");
    assert_eq!(&*sets[0].key.name, "web-local-0");
    assert_eq!(
        sets[0].target_port(port),
        Some(8080),
        "named targetPort resolved"
    );
    assert_eq!(
        sets[0].endpoints[0].address,
        "198.18.1.2".parse::<IpAddr>().unwrap()
    );
}

/// One bad document appended to [`BASE`], what the error must say, and the line
/// (relative to the bad document's first line) it must point at.
struct Row {
    name: &'static str,
    doc: &'static str,
    reason: &'static str,
    line: usize,
}

const ROWS: &[Row] = &[
    Row {
        name: "unknown kind",
        doc: "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        reason: "unknown kind ConfigMap of apiVersion v1",
        line: 0,
    },
    Row {
        name: "unknown group",
        doc: "apiVersion: security.istio.io/v1beta2\nkind: AuthorizationPolicy\nmetadata: {name: x}\n",
        reason: "unknown kind AuthorizationPolicy of apiVersion security.istio.io/v1beta2",
        line: 0,
    },
    Row {
        name: "missing kind",
        doc: "apiVersion: v1\nmetadata: {name: x}\n",
        reason: "kind is missing",
        line: 0,
    },
    Row {
        name: "not a mapping",
        doc: "- a\n- b\n",
        reason: "not a Kubernetes object",
        line: 0,
    },
    Row {
        name: "yaml syntax",
        doc: "apiVersion: v1\nkind: Namespace\nmetadata: {name: [x\n",
        reason: "invalid YAML: did not find expected ',' or ']', while parsing a flow sequence",
        line: 4,
    },
    Row {
        name: "wrong field type",
        doc: "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec:\n  containers: []\n  nodeName: [a]\n",
        reason: "Pod does not match its schema: spec.nodeName: invalid type: sequence, expected a string",
        line: 6,
    },
    Row {
        name: "wrong enum value",
        doc: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: shop}\nspec:\n  mtls: {mode: STRICTER}\n",
        reason: "unknown variant `STRICTER`",
        line: 5,
    },
    Row {
        name: "unknown field",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rules:\n  - from:\n    - source: {principal: [a]}\n",
        reason: "unknown field spec.rules[0].from[0].source.principal",
        line: 0,
    },
    Row {
        name: "duplicate pod ip",
        doc: "apiVersion: v1\nkind: Pod\nmetadata: {name: other, namespace: shop}\nspec: {nodeName: node-b, containers: []}\nstatus: {podIP: 198.18.1.2}\n",
        reason: "Pod shop/other uses address 198.18.1.2, already used by shop/web (document 2)",
        line: 0,
    },
    Row {
        name: "duplicate vip",
        doc: "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: shop}\nspec: {clusterIP: 198.19.0.10}\n",
        reason: "uses address 198.19.0.10, already used by shop/web (document 3)",
        line: 0,
    },
    Row {
        name: "duplicate object",
        doc: "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
        reason: "Namespace shop is already defined by document 1",
        line: 0,
    },
    Row {
        name: "bad pod ip",
        doc: "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec: {nodeName: node-b, containers: []}\nstatus: {podIP: 198.18.1.999}\n",
        reason: "status.podIPs[0]: \"198.18.1.999\" is not an IP address",
        line: 0,
    },
    Row {
        name: "bad zone label",
        doc: "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-b\n  labels: {topology.kubernetes.io/zone: \"eu west\"}\n",
        reason: "Node node-b is invalid: metadata.labels[topology.kubernetes.io/zone]: \"eu west\" is not a valid label value",
        line: 0,
    },
    Row {
        name: "bad legacy zone label",
        doc: "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-b\n  labels: {failure-domain.beta.kubernetes.io/zone: \"-z1\"}\n",
        reason: "Node node-b is invalid: metadata.labels[failure-domain.beta.kubernetes.io/zone]: \"-z1\" is not a valid label value",
        line: 0,
    },
    Row {
        name: "node field of another kind",
        doc: "apiVersion: v1\nkind: Node\nmetadata: {name: node-b}\nspec: {nodeName: node-b}\n",
        reason: "unknown field spec.nodeName",
        line: 0,
    },
    Row {
        name: "bad endpoint zone",
        doc: "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-x\n  namespace: shop\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nendpoints:\n- addresses: [198.18.1.2]\n  zone: \"z1/a\"\n",
        reason: "EndpointSlice shop/web-x is invalid: endpoints[0].zone: \"z1/a\" is not a valid label value",
        line: 0,
    },
    Row {
        name: "endpoint without an address",
        doc: "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-x\n  namespace: shop\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nendpoints:\n- addresses: [198.18.1.2]\n- addresses: []\n",
        reason: "EndpointSlice shop/web-x is invalid: endpoints[1].addresses: must not be empty",
        line: 0,
    },
    Row {
        name: "bad second endpoint address",
        doc: "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-x\n  namespace: shop\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nendpoints:\n- addresses: [198.18.1.2, 198.18.1.300]\n",
        reason: "EndpointSlice shop/web-x is invalid: endpoints[0].addresses[1]: \"198.18.1.300\" is not an IP address",
        line: 0,
    },
    Row {
        name: "bad service port",
        doc: "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: shop}\nspec:\n  ports: [{port: 70000}]\n",
        reason: "spec.ports[0].port: \"70000\" is not a port number",
        line: 0,
    },
];

/// Invalid security policies: the file still loads, and each is reported with
/// its place and enforced fail-closed.
const FAIL_CLOSED: &[Row] = &[
    Row {
        name: "invalid selector",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  selector:\n    matchLabels: {\"bad key!\": x}\n",
        reason: "AuthorizationPolicy shop/p is invalid: spec.selector.matchLabels: \"bad key!\" is not a valid label key",
        line: 0,
    },
    Row {
        name: "custom without provider",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  action: CUSTOM\n  rules: [{}]\n",
        reason: "spec.provider.name: action CUSTOM requires provider.name",
        line: 0,
    },
    Row {
        name: "provider without custom",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  action: DENY\n  provider: {name: ext}\n",
        reason: "spec.provider: provider is only allowed with action CUSTOM",
        line: 0,
    },
    Row {
        name: "selector and targetRefs",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  targetRefs: [{kind: Service, name: web}]\n",
        reason: "only one of selector and targetRefs may be set",
        line: 0,
    },
    Row {
        name: "bad ip block",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rules:\n  - from:\n    - source: {ipBlocks: [10.0.0.0/8, 10.0.0.300/24]}\n",
        reason: "spec.rules[0].from[0].source.ipBlocks[1]: \"10.0.0.300/24\" is not an IP address or CIDR",
        line: 0,
    },
    Row {
        name: "bad principal wildcard",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rules:\n  - from:\n    - source: {principals: [\"cluster.local/*/sa/x\"]}\n",
        reason: "`*` is only allowed alone, at the start or at the end",
        line: 0,
    },
    Row {
        name: "unknown when key",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rules:\n  - when: [{key: source.foo, values: [x]}]\n",
        reason: "spec.rules[0].when[0].key: \"source.foo\" is not a supported condition key",
        line: 0,
    },
    Row {
        name: "when without values",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rules:\n  - when: [{key: source.ip}]\n",
        reason: "spec.rules[0].when[0]: needs values or notValues",
        line: 0,
    },
    Row {
        name: "bad operation port",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rules:\n  - to: [{operation: {ports: [\"99999\"]}}]\n",
        reason: "spec.rules[0].to[0].operation.ports[0]: \"99999\" is not a port number (1-65535)",
        line: 0,
    },
    Row {
        name: "path template operator inside a segment",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rules:\n  - to: [{operation: {paths: [\"/api/*\", \"/api/v{*}/x\"]}}]\n",
        reason: "spec.rules[0].to[0].operation.paths[1]: \"/api/v{*}/x\" is not a path template",
        line: 0,
    },
    Row {
        name: "path template operator after {**}",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rules:\n  - to: [{operation: {notPaths: [\"/{**}/x/{*}\"]}}]\n",
        reason: "spec.rules[0].to[0].operation.notPaths[0]: \"/{**}/x/{*}\" is not a path template",
        line: 0,
    },
    Row {
        name: "path template with a bare star",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rules:\n  - to: [{operation: {paths: [\"/*/x/{*}\"]}}]\n",
        reason: "\"/*/x/{*}\" is not a path template",
        line: 0,
    },
    Row {
        name: "empty source",
        doc: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rules:\n  - from: [{source: {}}]\n",
        reason: "spec.rules[0].from[0].source: must not be empty",
        line: 0,
    },
    Row {
        name: "port level mtls without selector",
        doc: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: shop}\nspec:\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
        reason: "portLevelMtls requires a selector",
        line: 0,
    },
    Row {
        name: "jwt rule without issuer",
        doc: "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: shop}\nspec:\n  jwtRules: [{issuer: \"\", jwksUri: \"https://idp/keys\"}]\n",
        reason: "spec.jwtRules[0].issuer: is required",
        line: 0,
    },
];

#[test]
fn bad_documents_are_refused_with_their_place_and_reason() {
    let base_lines = BASE.lines().count();
    for row in ROWS {
        let text = format!("{BASE}---\n{}", row.doc);
        let err = parse(&text, Path::new("mesh.yaml")).expect_err(row.name);
        let chain = ErrorChain(&err).to_string();
        assert!(chain.contains(row.reason), "{}: {chain}", row.name);
        let Error::Document {
            path,
            line,
            document,
            start,
            ..
        } = &err
        else {
            panic!("{}: {err:?}", row.name);
        };
        assert_eq!(path, Path::new("mesh.yaml"), "{}", row.name);
        assert_eq!(*document, 4, "{}: {chain}", row.name);
        assert_eq!(*start, base_lines + 2, "{}: {chain}", row.name);
        let expected = if row.line == 0 {
            *start
        } else {
            *start + row.line - 1
        };
        assert_eq!(*line, expected, "{}: {chain}", row.name);
        assert!(
            chain.starts_with(&format!(
                "mesh.yaml:{line}: document 4 (line {start}) is refused: "
            )),
            "{}: {chain}",
            row.name
        );
    }
}

#[test]
fn invalid_policies_load_fail_closed_and_are_reported_with_their_place() {
    let base_lines = BASE.lines().count();
    for row in FAIL_CLOSED {
        let text = format!("{BASE}---\n{}", row.doc);
        let parsed = parse(&text, Path::new("mesh.yaml"))
            .unwrap_or_else(|e| panic!("{}: refused: {}", row.name, ErrorChain(&e)));
        let [report] = &parsed.fail_closed[..] else {
            panic!("{}: {:?}", row.name, parsed.fail_closed);
        };
        let chain = ErrorChain(report).to_string();
        let start = base_lines + 2;
        assert!(
            chain.starts_with(&format!(
                "mesh.yaml:{start}: document 4 (line {start}) is enforced fail-closed: "
            )),
            "{}: {chain}",
            row.name
        );
        assert!(chain.contains(row.reason), "{}: {chain}", row.name);
        let policy = parsed
            .objects
            .iter()
            .find(|o| !o.problems().is_empty())
            .unwrap_or_else(|| panic!("{}: the policy is kept", row.name));
        assert!(
            policy.problems().iter().any(|p| row.reason.contains(&**p)
                || p.contains(row.reason)
                || chain.contains(&**p)),
            "{}: {:?}",
            row.name,
            policy.problems()
        );
        // The rest of the file applies.
        assert!(
            parsed
                .objects
                .iter()
                .any(|o| o.key() == ObjectKey::new("shop", "web")),
            "{}",
            row.name
        );
    }
}

#[test]
fn an_invalid_peer_authentication_is_strict_for_every_port_of_its_scope() {
    let bad_labels = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: shop}\nspec:\n  selector: {matchLabels: {\"bad key!\": x}}\n  mtls: {mode: PERMISSIVE}\n  portLevelMtls:\n    \"8080\": {mode: DISABLE}\n    \"0\": {mode: DISABLE}\n";
    let parsed = parse(&format!("{BASE}---\n{bad_labels}"), Path::new("mesh.yaml")).unwrap();
    let Some(Object::PeerAuthentication(pa)) = parsed
        .objects
        .iter()
        .find(|o| o.key() == ObjectKey::new("shop", "p"))
    else {
        panic!("the PeerAuthentication is kept");
    };
    assert_eq!(pa.mtls, Some(crate::registry::MtlsMode::Strict));
    assert!(pa.port_level_mtls.is_empty(), "{pa:?}");
    assert_eq!(
        pa.selector, None,
        "the scope cannot be narrowed: the namespace"
    );
    assert_eq!(pa.problems.len(), 3, "{:?}", pa.problems);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A scratch configuration file whose directory is removed when the test
/// ends, passed or failed.
struct TempFile(PathBuf);

impl std::ops::Deref for TempFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn temp_file(name: &str) -> TempFile {
    let dir = std::env::temp_dir().join(format!("ambit-config-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TempFile(dir.join("mesh.yaml"))
}

#[test]
fn a_bad_edit_keeps_the_last_good_configuration_and_a_fix_applies_a_diff() {
    let path = temp_file("reload");
    write(&path, BASE);
    let reg = registry();
    let mut source = FileSource::new(&*path);
    assert_eq!(
        source.load(&reg).unwrap(),
        4,
        "3 objects and 1 derived endpoint set"
    );
    let good = reg.snapshot().dump();

    write(
        &path,
        &format!("{BASE}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec: 3\n"),
    );
    let err = source.load(&reg).unwrap_err();
    assert!(
        ErrorChain(&err)
            .to_string()
            .contains("Pod does not match its schema"),
        "{err}"
    );
    assert_eq!(
        reg.snapshot().dump(),
        good,
        "the last good configuration stays"
    );

    // Relabel the namespace: exactly one change is applied.
    write(
        &path,
        &BASE.replace(
            "istio.io/dataplane-mode: ambient",
            "istio.io/dataplane-mode: none",
        ),
    );
    let generation = reg.load().generation();
    assert_eq!(source.load(&reg).unwrap(), 1);
    assert_eq!(reg.load().generation(), generation + 1);
    assert!(reg.snapshot().enrolled_pods("node-a").is_empty());
}

#[tokio::test]
async fn the_file_is_watched() {
    let path = temp_file("watch");
    write(&path, BASE);
    let reg = Arc::new(registry());
    let mut source = FileSource::new(&*path).poll_interval(Duration::from_millis(20));
    source.load(&reg).unwrap();
    let mut rx = reg.subscribe();
    rx.mark_unchanged();
    let task = tokio::spawn(source.run(Arc::clone(&reg)));
    write(&path, &BASE.replace("198.18.1.2", "198.18.1.3"));
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(
        reg.load()
            .workload_by_ip("198.18.1.3".parse().unwrap())
            .is_some()
    );
    assert!(
        reg.load()
            .workload_by_ip("198.18.1.2".parse().unwrap())
            .is_none()
    );
    task.abort();
}

const NODES: &str = r#"
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {topology.kubernetes.io/zone: z1, kubernetes.io/hostname: node-a}
---
apiVersion: v1
kind: Node
metadata:
  name: node-b
  labels: {failure-domain.beta.kubernetes.io/zone: z2}
---
apiVersion: v1
kind: Node
metadata:
  name: node-c
  labels:
    topology.kubernetes.io/zone: z3
    failure-domain.beta.kubernetes.io/zone: old
---
apiVersion: v1
kind: Node
metadata: {name: node-d}
spec: {podCIDR: 10.244.3.0/24}
status:
  addresses: [{type: InternalIP, address: 192.168.0.4}]
"#;

#[test]
fn nodes_give_zones_and_a_bad_zone_is_refused_naming_the_node() {
    let path = temp_file("nodes");
    write(&path, &format!("{BASE}{NODES}"));
    let reg = registry();
    let mut source = FileSource::new(&*path);
    source.load(&reg).unwrap();
    let snap = reg.snapshot();
    let zone = |node| snap.node_zone(node).map(|z| z.as_str().to_owned());
    assert_eq!(zone("node-a").as_deref(), Some("z1"));
    assert_eq!(zone("node-b").as_deref(), Some("z2"), "the legacy label");
    assert_eq!(
        zone("node-c").as_deref(),
        Some("z3"),
        "the current label wins"
    );
    assert_eq!(zone("node-d"), None, "no zone label");
    assert_eq!(snap.dump().nodes.len(), 4);
    // The derived endpoint of web (on node-a) has no zone of its own: its
    // node's stands in.
    let sets = snap.endpoint_sets(&ObjectKey::new("shop", "web"));
    let endpoint = &sets[0].endpoints[0];
    assert_eq!(endpoint.zone, None);
    assert_eq!(
        snap.endpoint_zone(endpoint)
            .map(crate::registry::Name::as_str),
        Some("z1")
    );
    let good = snap.dump();

    let bad = format!("{BASE}{NODES}").replace("zone: z2}", r#"zone: "z2 "}"#);
    write(&path, &bad);
    let err = source.load(&reg).unwrap_err();
    let chain = ErrorChain(&err).to_string();
    // The node's document starts three lines above its name (1-based lines).
    let name_line = bad.lines().position(|l| l == "  name: node-b").unwrap() + 1;
    let line = name_line - 3;
    assert_eq!(
        chain,
        format!(
            "{}:{line}: document 5 (line {line}) is refused: Node node-b is invalid: \
             metadata.labels[failure-domain.beta.kubernetes.io/zone]: \"z2 \" is not a valid label value",
            path.display()
        )
    );
    assert_eq!(reg.snapshot().dump(), good, "the running zones stay");
}

/// The complete example of docs/configuration.md is a valid file.
#[test]
fn the_documented_example_is_valid() {
    let doc = include_str!("../../../../docs/configuration.md");
    let start = doc.find("```yaml\n").expect("the page has a yaml example") + 8;
    let end = start + doc[start..].find("```").unwrap();
    let objects = parse(&doc[start..end], Path::new("docs/configuration.md"))
        .unwrap()
        .objects;
    let reg = registry();
    reg.apply(objects.into_iter().map(Change::Upsert));
    let snap = reg.snapshot();
    assert!(!snap.enrolled_pods("node-a").is_empty());
    assert!(snap.workload_count() >= 3);
    assert_eq!(
        snap.node_zone("node-b").map(crate::registry::Name::as_str),
        Some("eu-west-1b")
    );
}

/// The refused Node of docs/configuration.md is refused with that message.
#[test]
fn the_documented_node_error_is_what_a_user_sees() {
    let doc = include_str!("../../../../docs/configuration.md");
    let message = doc
        .lines()
        .find(|l| l.contains("refused: Node "))
        .expect("the page shows a refused Node");
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio.io/dataplane-mode: ambient\n---\n\
                apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  labels: {topology.kubernetes.io/zone: eu-west-1a}\n---\n\
                apiVersion: v1\nkind: Node\nmetadata:\n  name: node-b\n  labels: {topology.kubernetes.io/zone: \"eu west 1\"}\n";
    let err = parse(text, Path::new("mesh.yaml")).unwrap_err();
    assert_eq!(ErrorChain(&err).to_string(), message);
}

/// The refused Pod and the fail-closed policy of docs/configuration.md are
/// reported with those messages.
#[test]
fn the_documented_pod_error_and_fail_closed_policy_are_what_a_user_sees() {
    let doc = include_str!("../../../../docs/configuration.md");
    let shown = |needle: &str| {
        doc.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("the page shows {needle}"))
    };
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {istio.io/dataplane-mode: ambient}\n---\n";
    let pod = format!(
        "{namespace}apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: shop}}\nspec: {{nodeName: node-a, containers: []}}\nstatus: {{podIP: 198.18.1.999}}\n"
    );
    let err = parse(&pod, Path::new("mesh.yaml")).unwrap_err();
    assert_eq!(ErrorChain(&err).to_string(), shown("refused: Pod "));
    let policy = format!(
        "{namespace}apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-web, namespace: shop}}\nspec:\n  rules:\n  - from:\n    - source: {{ipBlocks: [10.0.0.0/8, 10.0.0.300/24]}}\n"
    );
    let parsed = parse(&policy, Path::new("mesh.yaml")).unwrap();
    assert_eq!(
        ErrorChain(&parsed.fail_closed[0]).to_string(),
        shown("enforced fail-closed: AuthorizationPolicy")
    );
}
