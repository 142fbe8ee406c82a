//! The AuthorizationPolicy conformance suite: each row is a set of policies as a
//! user writes them (YAML, through the same parser and validation as the local
//! configuration file and the registry's selection), one connection or request,
//! and the decision with the policy and rule that made it. The rows follow
//! Istio's AuthorizationPolicy reference and its "authorization policy
//! conditions" page; the workload is `shop/backend` (labels `app: backend`,
//! `version: v1`, address 198.18.1.20, port 8080).

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
};

use super::*;
use crate::{
    config::file,
    registry::{Change, ObjectKey, Options, Registry, Snapshot},
};

const BASE: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: shop, labels: {app: backend, version: v1}}
spec:
  nodeName: node-a
  serviceAccountName: backend
  containers: [{name: backend, image: backend}]
status: {podIP: 198.18.1.20}
";

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const ADMIN: &str = "spiffe://cluster.local/ns/shop/sa/admin";
const CLIENT_OTHER: &str = "spiffe://cluster.local/ns/other/sa/client";
const FOREIGN: &str = "spiffe://example.org/ns/shop/sa/frontend";

// === connections and requests ===

#[derive(Clone)]
struct Conn {
    src: IpAddr,
    remote: Option<IpAddr>,
    dst: SocketAddr,
    peer: Option<&'static str>,
    sni: Option<&'static str>,
    http: Option<Http>,
}

fn mtls(identity: &'static str) -> Conn {
    Conn {
        src: "198.18.1.10".parse().unwrap(),
        remote: None,
        dst: "198.18.1.20:8080".parse().unwrap(),
        peer: Some(identity),
        sni: None,
        http: None,
    }
}

fn plaintext() -> Conn {
    Conn {
        peer: None,
        ..mtls(FRONTEND)
    }
}

impl Conn {
    fn src(mut self, ip: &str) -> Self {
        self.src = ip.parse().unwrap();
        self
    }

    fn port(mut self, port: u16) -> Self {
        self.dst.set_port(port);
        self
    }

    fn remote(mut self, ip: &str) -> Self {
        self.remote = Some(ip.parse().unwrap());
        self
    }

    fn sni(mut self, sni: &'static str) -> Self {
        self.sni = Some(sni);
        self
    }

    fn http(mut self, http: Http) -> Self {
        self.http = Some(http);
        self
    }
}

#[derive(Clone, Default)]
struct Http {
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: HeaderList,
    jwt: Option<Jwt>,
}

fn get(path: &'static str) -> Http {
    Http {
        method: "GET",
        path,
        host: "backend.shop.svc.cluster.local",
        ..Http::default()
    }
}

impl Http {
    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    fn host(mut self, host: &'static str) -> Self {
        self.host = host;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.0.push((name, value));
        self
    }

    fn jwt(mut self, jwt: Jwt) -> Self {
        self.jwt = Some(jwt);
        self
    }
}

#[derive(Clone, Default)]
struct HeaderList(Vec<(&'static str, &'static str)>);

impl Headers for HeaderList {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

#[derive(Clone, Default)]
struct Jwt {
    principal: &'static str,
    audiences: Vec<&'static str>,
    presenter: Option<&'static str>,
    claims: ClaimList,
}

fn jwt(principal: &'static str) -> Jwt {
    Jwt {
        principal,
        ..Jwt::default()
    }
}

impl Jwt {
    fn claim(mut self, path: &'static [&'static str], values: &'static [&'static str]) -> Self {
        self.claims.0.push((path, values));
        self
    }
}

#[derive(Clone, Default)]
struct ClaimList(Vec<(&'static [&'static str], &'static [&'static str])>);

impl Claims for ClaimList {
    fn any(&self, path: &[Box<str>], matches: &mut dyn FnMut(&str) -> bool) -> bool {
        self.0
            .iter()
            .filter(|(p, _)| p.iter().copied().eq(path.iter().map(|s| &**s)))
            .any(|(_, values)| values.iter().any(|v| matches(v)))
    }
}

// === policies ===

/// YAML documents for `(namespace/name, spec as a YAML flow mapping)` pairs.
fn documents(policies: &[(&str, &str)]) -> String {
    let mut out = String::from(BASE);
    for (key, spec) in policies {
        let (ns, name) = key.split_once('/').unwrap();
        out.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{namespace: {ns}, name: {name}}}\nspec: {spec}\n"
        ));
    }
    out
}

fn snapshot(policies: &[(&str, &str)]) -> Result<Arc<Snapshot>, String> {
    let registry = file::test_registry(&documents(policies))
        .map_err(|e| crate::config::ErrorChain(&e).to_string())?;
    Ok(registry.snapshot())
}

fn compiled(policies: &[(&str, &str)]) -> Result<CompiledPolicies, String> {
    let snap = snapshot(policies)?;
    let backend = snap
        .workload(&ObjectKey::new("shop", "backend"))
        .ok_or("no backend workload")?;
    Ok(compile_for_workload(&snap, backend))
}

// === cases ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// No ALLOW policy: allowed by default.
    Default,
    /// ALLOW policy and rule.
    Allowed(&'static str, usize),
    /// DENY policy and rule.
    Denied(&'static str, usize),
    /// CUSTOM policy and rule (fail closed).
    Custom(&'static str, usize),
    /// ALLOW policies apply, none matched.
    NoMatch,
}

struct Case {
    name: &'static str,
    policies: Vec<(&'static str, &'static str)>,
    conn: Conn,
    want: Want,
    audits: Vec<&'static str>,
}

fn case(
    name: &'static str,
    policies: &[(&'static str, &'static str)],
    conn: Conn,
    want: Want,
) -> Case {
    Case {
        name,
        policies: policies.to_vec(),
        conn,
        want,
        audits: Vec::new(),
    }
}

impl Case {
    fn audits(mut self, audits: &[&'static str]) -> Self {
        self.audits = audits.to_vec();
        self
    }
}

fn got(decision: &Decision<'_>) -> String {
    let by = |r: &PolicyRule<'_>| (r.policy().to_string(), r.rule());
    match &decision.reason {
        Reason::Custom(r) => format!("Custom{:?}", by(r)),
        Reason::Denied(r) => format!("Denied{:?}", by(r)),
        Reason::Allowed(r) => format!("Allowed{:?}", by(r)),
        Reason::NoAllowPolicy => "Default".into(),
        Reason::NoAllowMatched => "NoMatch".into(),
    }
}

fn want(want: Want) -> (String, Verdict) {
    match want {
        Want::Default => ("Default".into(), Verdict::Allow),
        Want::Allowed(p, r) => (format!("Allowed{:?}", (p, r)), Verdict::Allow),
        Want::Denied(p, r) => (format!("Denied{:?}", (p, r)), Verdict::Deny),
        Want::Custom(p, r) => (format!("Custom{:?}", (p, r)), Verdict::Deny),
        Want::NoMatch => ("NoMatch".into(), Verdict::Deny),
    }
}

/// Runs one row; `Err` says what differs.
fn run(case: &Case) -> Result<(), String> {
    let compiled = compiled(&case.policies)?;
    let c = &case.conn;
    let jwt = c.http.as_ref().and_then(|h| h.jwt.as_ref());
    let request = c.http.as_ref().map(|h| Request {
        method: h.method,
        path: h.path,
        host: h.host,
        headers: &h.headers,
        auth: jwt.map(|j| RequestAuth {
            principal: j.principal,
            audiences: &j.audiences,
            presenter: j.presenter,
            claims: &j.claims,
        }),
    });
    let attributes = Attributes {
        source_ip: c.src,
        remote_ip: c.remote,
        destination: c.dst,
        peer: c.peer.map(|p| Peer::from_uri(p).unwrap()),
        sni: c.sni,
        request,
    };
    let decision = compiled.evaluate(&attributes);
    let unfiltered = compiled.clone().without_prefilter();
    if got(&unfiltered.evaluate(&attributes)) != got(&decision) {
        return Err("the principal prefilter changed the decision".into());
    }
    let (want_reason, want_verdict) = want(case.want);
    let audits: Vec<String> = decision
        .audits
        .iter()
        .map(|r| r.policy().to_string())
        .collect();
    if got(&decision) != want_reason || decision.verdict != want_verdict || audits != case.audits {
        return Err(format!(
            "got {} ({:?}, audits {audits:?}), want {want_reason} ({want_verdict:?}, audits {:?})",
            got(&decision),
            decision.verdict,
            case.audits
        ));
    }
    Ok(())
}

#[test]
fn conformance() {
    let cases: Vec<Case> = [
        precedence(),
        selection(),
        principals(),
        namespaces(),
        service_accounts(),
        structure(),
        addresses(),
        ports(),
        conditions(),
        http_at_l4(),
        http_at_l7(),
        invalid(),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut names = std::collections::HashSet::new();
    let failures: Vec<String> = cases
        .iter()
        .inspect(|c| assert!(names.insert(c.name), "duplicate case name {}", c.name))
        .filter_map(|c| run(c).err().map(|e| format!("{}: {e}", c.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

mod rows;
use rows::*;

// === beyond the table ===

#[test]
fn service_accounts_are_validated_as_istio_does() {
    let many: Vec<String> = (0..17).map(|i| format!("sa-{i}")).collect();
    let many = format!(
        "{{rules: [{{from: [{{source: {{serviceAccounts: [{}]}}}}]}}]}}",
        many.join(", ")
    );
    let rows = [
        (
            "{rules: [{from: [{source: {serviceAccounts: [web], principals: [\"*\"]}}]}]}",
            "spec.rules[0].from[0].source.serviceAccounts: cannot be combined with principals or namespaces",
        ),
        (
            "{rules: [{from: [{source: {notServiceAccounts: [web], namespaces: [shop]}}]}]}",
            "spec.rules[0].from[0].source.notServiceAccounts: cannot be combined",
        ),
        (
            "{rules: [{from: [{source: {serviceAccounts: [\"web-*\"]}}]}]}",
            "serviceAccounts[0]: \"web-*\" is not a service account",
        ),
        (
            "{rules: [{from: [{source: {serviceAccounts: [ok, a/b/c]}}]}]}",
            "serviceAccounts[1]: \"a/b/c\" is not a service account",
        ),
        (
            "{rules: [{from: [{source: {serviceAccounts: [/web]}}]}]}",
            "serviceAccounts[0]: \"/web\" is not a service account",
        ),
        (
            many.as_str(),
            "source.serviceAccounts: has more than 16 entries",
        ),
    ];
    for (spec, reason) in rows {
        // Invalid, so kept fail-closed: the problem is named, and the ALLOW
        // rule with the bad source allows nobody.
        let snap = snapshot(&[("shop/p", spec)]).expect(spec);
        let policy = snap
            .authorization_policy(&ObjectKey::new("shop", "p"))
            .expect("the invalid policy is kept");
        assert!(
            policy.problems.iter().any(|p| p.contains(reason)),
            "{spec}: {:?}",
            policy.problems
        );
        let compiled = compiled(&[("shop/p", spec)]).expect(spec);
        let decision = compiled.evaluate(&l4("198.18.1.10", Some(FRONTEND), 8080));
        assert_eq!(got(&decision), "NoMatch", "{spec}");
    }
}

#[test]
fn policies_with_http_attributes_are_named_for_a_warning() {
    let compiled = compiled(&[
        ("shop/l4-only", "{rules: [{to: [{operation: {ports: [\"8080\"]}}]}]}"),
        (
            "shop/allow-get",
            "{rules: [{to: [{operation: {methods: [GET], notPaths: [\"/admin*\"]}}]}]}",
        ),
        (
            "shop/deny-header",
            "{action: DENY, rules: [{when: [{key: \"request.headers[X-Debug]\", values: [\"1\"]}]}]}",
        ),
        (
            "shop/deny-envoy",
            "{action: DENY, rules: [{when: [{key: \"experimental.envoy.filters.a[b]\", values: [x]}]}]}",
        ),
    ])
    .unwrap();
    let notes: Vec<String> = compiled
        .l7_ignored()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(notes.len(), 3, "{notes:#?}");
    assert_eq!(
        notes[0],
        "AuthorizationPolicy shop/allow-get uses L7 attributes (methods, notPaths) that ztunnel \
         cannot evaluate (a waypoint can): its rules that use them match nothing"
    );
    assert!(
        notes[1].starts_with("AuthorizationPolicy shop/deny-envoy has conditions that cannot be evaluated (when experimental.envoy.filters.a[b]")
            && notes[1].ends_with("matching more connections than written"),
        "{}",
        notes[1]
    );
    assert!(
        notes[2].contains("shop/deny-header uses L7 attributes (request.headers[X-Debug])"),
        "{}",
        notes[2]
    );
    assert_eq!(
        compiled.l7_ignored()[2].action,
        crate::registry::Action::Deny
    );
}

fn l4(src: &str, peer: Option<&'static str>, port: u16) -> Attributes<'static> {
    let dst = SocketAddr::new("198.18.1.20".parse().unwrap(), port);
    Attributes::connection(
        src.parse().unwrap(),
        dst,
        peer.map(|p| Peer::from_uri(p).unwrap()),
    )
}

#[test]
fn decisions_display_for_the_audit_log() {
    let compiled = compiled(&[
        ("shop/allow-frontend", "{rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]}"),
        ("shop/deny-9090", "{action: DENY, rules: [{to: [{operation: {ports: [\"1\"]}}]}, {to: [{operation: {ports: [\"9090\"]}}]}]}"),
        ("shop/ext", "{action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {ports: [\"7070\"]}}]}]}"),
    ])
    .unwrap();
    let show = |a: Attributes<'_>| compiled.evaluate(&a).to_string();
    assert_eq!(
        show(l4("198.18.1.10", Some(FRONTEND), 8080)),
        "allowed: ALLOW policy shop/allow-frontend rule 0 matched"
    );
    assert_eq!(
        show(l4("198.18.1.10", Some(FRONTEND), 9090)),
        "denied: DENY policy shop/deny-9090 rule 1 matched"
    );
    assert_eq!(
        show(l4("198.18.1.10", None, 8080)),
        "denied: no ALLOW rule matched"
    );
    assert_eq!(
        show(l4("198.18.1.10", Some(FRONTEND), 7070)),
        "denied: CUSTOM policy shop/ext rule 0 matched and there is no ext_authz provider (\"opa\")"
    );
    let none = CompiledPolicies::default();
    assert_eq!(
        none.evaluate(&l4("198.18.1.10", None, 80)).to_string(),
        "allowed: no ALLOW policy: allowed by default"
    );
    let decision = compiled.evaluate(&l4("198.18.1.10", Some(FRONTEND), 7070));
    let rule = decision.reason.policy_rule().unwrap();
    assert_eq!(rule.provider(), Some("opa"));
    assert_eq!(rule.action(), crate::registry::Action::Custom);
}

#[test]
fn audits_beyond_the_listed_number_are_counted() {
    let names: Vec<String> = (0..AUDITS_LISTED + 3)
        .map(|i| format!("shop/audit-{i:02}"))
        .collect();
    let policies: Vec<(&str, &str)> = names
        .iter()
        .map(|n| {
            (
                n.as_str(),
                "{action: AUDIT, rules: [{to: [{operation: {ports: [\"1\"]}}]}, {}]}",
            )
        })
        .collect();
    let compiled = compiled(&policies).unwrap();
    let decision = compiled.evaluate(&l4("198.18.1.10", None, 8080));
    assert!(decision.is_allowed());
    let listed: Vec<(String, usize)> = decision
        .audits
        .iter()
        .map(|r| (r.policy().to_string(), r.rule()))
        .collect();
    assert_eq!(listed.len(), AUDITS_LISTED);
    assert_eq!(
        listed[0],
        ("shop/audit-00".to_owned(), 1),
        "each policy once, its first match"
    );
    assert_eq!(decision.audits.omitted(), 3);
}

#[test]
fn the_index_follows_registry_changes() {
    let registry = Registry::new(Options {
        node: Some("node-a".into()),
        ..Options::default()
    });
    let extra = "---
apiVersion: v1
kind: Pod
metadata: {name: backend-2, namespace: shop, labels: {app: backend, version: v1}}
spec: {nodeName: node-a, containers: [{name: b, image: b}]}
status: {podIP: 198.18.1.21}
---
apiVersion: v1
kind: Pod
metadata: {name: remote, namespace: shop, labels: {app: backend}}
spec: {nodeName: node-b, containers: [{name: b, image: b}]}
status: {podIP: 198.18.2.21}
";
    let deny_all = [("shop/deny-all", "{}")];
    let text = documents(&deny_all) + extra;
    let objects = file::parse(&text, Path::new("index.yaml")).unwrap().objects;
    registry.apply(objects.into_iter().map(Change::Upsert));
    let index = PolicyIndex::build(&registry.snapshot());
    assert_eq!(index.len(), 2, "the two enrolled pods of node-a");
    let one = index.get(&ObjectKey::new("shop", "backend")).unwrap();
    let two = index.get(&ObjectKey::new("shop", "backend-2")).unwrap();
    assert!(Arc::ptr_eq(one, two), "same policies, one compiled set");
    assert!(index.get(&ObjectKey::new("shop", "remote")).is_none());
    let conn = l4("198.18.1.10", Some(FRONTEND), 8080);
    assert!(!one.evaluate(&conn).is_allowed());

    // The deny-all goes away: a rebuilt index allows new connections at once.
    registry.apply([Change::Delete(
        crate::registry::Kind::AuthorizationPolicy,
        ObjectKey::new("shop", "deny-all"),
    )]);
    let index = PolicyIndex::build(&registry.snapshot());
    assert_eq!(index.generation(), 2);
    let one = index.get(&ObjectKey::new("shop", "backend")).unwrap();
    assert!(one.is_empty());
    assert!(one.evaluate(&conn).is_allowed());
}

#[test]
fn the_index_lists_each_fail_safe_policy_once() {
    let extra = "---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: w, image: w}]}
status: {podIP: 198.18.1.22}
";
    let policies = [
        (
            "shop/get-only",
            "{rules: [{to: [{operation: {methods: [GET]}}]}]}",
        ),
        (
            "shop/backend-only",
            "{selector: {matchLabels: {app: backend}}, rules: [{}]}",
        ),
    ];
    let objects = file::parse(&(documents(&policies) + extra), Path::new("x.yaml"))
        .unwrap()
        .objects;
    let registry = Registry::new(Options {
        node: Some("node-a".into()),
        ..Options::default()
    });
    registry.apply(objects.into_iter().map(Change::Upsert));
    let index = PolicyIndex::build(&registry.snapshot());
    assert_eq!(index.len(), 2);
    let warned: Vec<String> = index
        .l7_ignored()
        .iter()
        .map(|f| f.policy.to_string())
        .collect();
    assert_eq!(warned, ["shop/get-only"]);
}

mod prefilter {
    //! The principal prefilter skips rules; it must never change a decision.

    use proptest::prelude::*;

    use super::*;
    use crate::registry::{
        Action, AuthorizationPolicy,
        policy::{Condition, Rule as RuleSpec, Source},
    };

    const POOL: [&str; 5] = [
        "td/ns/a/sa/x",
        "td/ns/a/sa/y",
        "td/ns/b/sa/x",
        "td/ns/b/sa/y",
        "td/ns/a/*",
    ];

    fn names() -> impl Strategy<Value = Vec<Box<str>>> {
        prop::collection::vec(prop::sample::select(POOL.to_vec()), 1..3)
            .prop_map(|v| v.into_iter().map(Box::from).collect())
    }

    fn rule() -> impl Strategy<Value = RuleSpec> {
        let source = (names(), any::<bool>()).prop_map(|(names, ns)| Source {
            principals: names,
            namespaces: if ns { vec!["a".into()] } else { Vec::new() },
            ..Source::default()
        });
        let when = prop::option::of(names()).prop_map(|names| {
            names.into_iter().map(|values| Condition {
                key: "source.principal".into(),
                values,
                not_values: Vec::new(),
                invalid: false,
            })
        });
        (prop::collection::vec(source, 0..3), when).prop_map(|(from, when)| RuleSpec {
            from,
            to: Vec::new(),
            when: when.collect(),
        })
    }

    fn policy() -> impl Strategy<Value = (Action, Vec<RuleSpec>)> {
        let action = prop::sample::select(vec![Action::Allow, Action::Deny, Action::Audit]);
        (action, prop::collection::vec(rule(), 0..3))
    }

    proptest! {
        #[test]
        fn never_changes_a_decision(
            specs in prop::collection::vec(policy(), 1..5),
            peer in prop::option::of(prop::sample::select(POOL[..4].to_vec())),
        ) {
            let policies: Vec<AuthorizationPolicy> = specs
                .into_iter()
                .enumerate()
                .map(|(i, (action, rules))| AuthorizationPolicy {
                    key: ObjectKey::new("shop", &format!("p{i}")),
                    selector: None,
                    target_refs: Vec::new(),
                    action,
                    provider: None,
                    rules,
                    problems: Vec::new(),
                })
                .collect();
            let compiled = compile(&policies);
            let unfiltered = compiled.clone().without_prefilter();
            let uri = peer.map(|p| format!("spiffe://{p}"));
            let a = l4("198.18.1.10", None, 8080);
            let a = Attributes { peer: uri.as_deref().map(|u| Peer::from_uri(u).unwrap()), ..a };
            let (x, y) = (compiled.evaluate(&a), unfiltered.evaluate(&a));
            prop_assert_eq!(x.to_string(), y.to_string());
            prop_assert_eq!(format!("{:?}", x.audits), format!("{:?}", y.audits));
        }
    }
}
