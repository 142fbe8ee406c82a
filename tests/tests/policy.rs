//! L4 AuthorizationPolicy end to end: the three-tier sample (frontend ->
//! backend -> db, one service account each) with a namespace deny-all and ALLOW
//! rules by principal, a DENY by namespace that wins over an ALLOW, and AUDIT.

use std::{net::SocketAddr, time::Duration};

use ambit_tests::{
    Testbed,
    mesh::{MeshConfig, Ztunnel, ZtunnelOptions, send, start_server},
    privileged,
    testbed::Process,
};

const WAIT: Duration = Duration::from_secs(10);

const POLICIES: &str = r"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: shop
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: backend-from-frontend
  namespace: shop
spec:
  selector:
    matchLabels:
      app: backend
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/frontend]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: backend-from-other
  namespace: shop
spec:
  selector:
    matchLabels:
      app: backend
  action: ALLOW
  rules:
  - from:
    - source:
        namespaces: [other]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: db-from-backend
  namespace: shop
spec:
  selector:
    matchLabels:
      app: db
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/backend]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: audit-db
  namespace: shop
spec:
  selector:
    matchLabels:
      app: db
  action: AUDIT
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/backend]";

const DENY_OTHER: &str = r"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-other
  namespace: shop
spec:
  selector:
    matchLabels:
      app: backend
  action: DENY
  rules:
  - from:
    - source:
        namespaces: [other]";

#[test]
fn three_tiers_with_deny_all_allow_by_principal_deny_wins_and_audit() {
    if !privileged("three_tiers_with_deny_all_allow_by_principal_deny_wins_and_audit") {
        return;
    }
    let bed = Testbed::builder("three_tier")
        .node("a")
        .node("b")
        .pod("frontend", "a")
        .pod("db", "a")
        .pod("intruder", "a")
        .pod("backend", "b")
        .build()
        .expect("testbed builds");
    let base = MeshConfig::default()
        .namespace("shop", true)
        .namespace("other", true)
        .pod("frontend", "shop")
        .pod("backend", "shop")
        .pod("db", "shop")
        .pod("intruder", "other")
        .document(POLICIES);
    let config = bed.workdir().join("mesh.yaml");
    base.write(&bed, &config).expect("config written");
    let zt_a = Ztunnel::start(&bed, "a", &config, &ZtunnelOptions::default()).expect("ztunnel a");
    let zt_b = Ztunnel::start(&bed, "b", &config, &ZtunnelOptions::default()).expect("ztunnel b");
    let servers: Vec<Process> = ["backend", "db"]
        .iter()
        .map(|pod| start_server(&bed, pod, "echo", "[::]:7000"))
        .collect();
    let backend = SocketAddr::from((bed.pod("backend").ipv4(), 7000));
    let db = SocketAddr::from((bed.pod("db").ipv4(), 7000));

    // The allowed paths work.
    send(&bed, "frontend", backend, "tier").expect("frontend -> backend is allowed");
    send(&bed, "backend", db, "tier").expect("backend -> db is allowed");
    // Everything else fails: deny-all plus no matching ALLOW rule.
    send(&bed, "frontend", db, "tier").expect_err("frontend -> db is denied");
    let denied = zt_a
        .wait_for_log(WAIT, |l| {
            l["target"] == "audit"
                && l["decision"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("denied"))
        })
        .expect("the denial is an audit line");
    assert_eq!(
        denied["src.identity"], "spiffe://cluster.local/ns/shop/sa/frontend",
        "{denied}"
    );
    // The access line of each connection says what decided it.
    let zt_of = |pod: &str| {
        if bed.pod(pod).node() == "a" {
            &zt_a
        } else {
            &zt_b
        }
    };
    let to = |addr: SocketAddr| {
        move |l: &serde_json::Value| {
            l["target"] == "access"
                && l["direction"] == "inbound"
                && l["dst.addr"] == addr.to_string()
        }
    };
    let allowed = zt_of("backend")
        .wait_for_log(WAIT, to(backend))
        .expect("the allowed connection is logged");
    assert!(
        allowed["decision"]
            .as_str()
            .is_some_and(|d| d.starts_with("allowed") && d.contains("shop/")),
        "{allowed}"
    );
    let refused = zt_of("db")
        .wait_for_log(WAIT, |l| to(db)(l) && l["error"] != "")
        .expect("the denied connection is logged");
    assert!(
        refused["decision"]
            .as_str()
            .is_some_and(|d| d.starts_with("denied")),
        "{refused}"
    );
    // The denied connection never reached the db.
    let db_lines: Vec<String> =
        std::iter::from_fn(|| servers[1].next_line(Duration::from_millis(300)).ok()).collect();
    assert_eq!(
        db_lines
            .iter()
            .filter(|l| l.starts_with("accepted"))
            .count(),
        1,
        "only backend's: {db_lines:?}"
    );

    // AUDIT logs without blocking: backend -> db was allowed and audited.
    let audit = zt_a
        .wait_for_log(WAIT, |l| {
            l["target"] == "audit"
                && l["audit"]
                    .as_str()
                    .is_some_and(|d| d.contains("shop/audit-db"))
        })
        .expect("the AUDIT policy logged");
    assert!(
        audit["decision"]
            .as_str()
            .is_some_and(|d| d.starts_with("allowed")),
        "{audit}"
    );

    // Allowed by namespace, until a DENY by namespace joins: DENY wins, at once.
    send(&bed, "intruder", backend, "tier").expect("other/intruder is allowed by namespace");
    zt_b.after_update(WAIT, || {
        base.clone()
            .document(DENY_OTHER)
            .write(&bed, &config)
            .expect("config rewritten");
    })
    .expect("node b applied the DENY policy");
    send(&bed, "intruder", backend, "tier").expect_err("the DENY policy wins over the ALLOW");
    let line = zt_b
        .wait_for_log(WAIT, |l| {
            l["target"] == "audit"
                && l["decision"]
                    .as_str()
                    .is_some_and(|d| d.contains("shop/deny-other"))
        })
        .expect("the deciding DENY policy is named");
    assert!(
        line["decision"]
            .as_str()
            .is_some_and(|d| d.starts_with("denied")),
        "{line}"
    );
    send(&bed, "frontend", backend, "tier").expect("frontend is still allowed");
}

/// A DENY policy with a typo in its ports: Istio's webhook would refuse it;
/// here it must still deny what it might have matched.
const DENY_WITH_TYPO: &str = r"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-other-http
  namespace: shop
spec:
  selector:
    matchLabels:
      app: backend
  action: DENY
  rules:
  - from:
    - source:
        namespaces: [other]
    to:
    - operation:
        ports: [http]";

#[test]
fn an_invalid_policy_is_enforced_fail_closed_reported_and_counted() {
    if !privileged("an_invalid_policy_is_enforced_fail_closed_reported_and_counted") {
        return;
    }
    let bed = Testbed::builder("invalid_policy")
        .node("a")
        .node("b")
        .pod("frontend", "a")
        .pod("intruder", "a")
        .pod("backend", "b")
        .build()
        .expect("testbed builds");
    let mesh = MeshConfig::default()
        .namespace("shop", true)
        .namespace("other", true)
        .pod("frontend", "shop")
        .pod("backend", "shop")
        .pod("intruder", "other")
        .document(DENY_WITH_TYPO);
    let config = bed.workdir().join("mesh.yaml");
    mesh.write(&bed, &config).expect("config written");
    let _zt_a = Ztunnel::start(&bed, "a", &config, &ZtunnelOptions::default()).expect("ztunnel a");
    let zt_b = Ztunnel::start(&bed, "b", &config, &ZtunnelOptions::default()).expect("ztunnel b");
    let _server = start_server(&bed, "backend", "echo", "[::]:7000");
    let backend = SocketAddr::from((bed.pod("backend").ipv4(), 7000));

    // The file loaded; the policy is enforced without its unreadable part:
    // other/intruder is denied on every port, shop/frontend is not.
    send(&bed, "intruder", backend, "x").expect_err("the DENY still denies");
    send(&bed, "frontend", backend, "x").expect("the rest of the rule still narrows it");
    let report = zt_b
        .logs()
        .into_iter()
        .find(|l| l["message"] == "invalid policy enforced fail-closed")
        .unwrap_or_else(|| panic!("the problem is logged:\n{}", zt_b.stderr()));
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("mesh.yaml:")
                && e.contains(
                    "spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port number"
                )),
        "{report}"
    );
    let get = |url: &str| {
        let mut curl = bed.node_command("b", "curl");
        curl.args(["-sS", "--max-time", "5", url]);
        let out = bed.run(curl, WAIT).expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let node_b = bed.node("b").ipv4();
    let metrics = get(&format!("http://{node_b}:15020/metrics"));
    assert!(
        metrics
            .lines()
            .any(|l| l == "ambit_config_invalid_policies{kind=\"AuthorizationPolicy\"} 1"),
        "{metrics}"
    );
    let dump: serde_json::Value =
        serde_json::from_str(&get("http://127.0.0.1:15000/config_dump")).expect("JSON");
    let problems = &dump["authorization_policies"]["shop/deny-other-http"]["problems"];
    assert!(
        problems[0]
            .as_str()
            .is_some_and(|p| p.contains("is not a port number")),
        "{problems}"
    );
}
