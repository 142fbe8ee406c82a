//! The rows of the conformance table, grouped by what they cover. Policies are
//! `(namespace/name, spec)` with the spec as a YAML flow mapping; `spec: {}` is
//! an ALLOW policy without rules.

use super::{
    ADMIN, CLIENT_OTHER, Case, FOREIGN, FRONTEND, Want::*, case, get, jwt, mtls, plaintext,
};

const ALLOW_FRONTEND: &str =
    "{rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]}";
const DENY_ALL: &str = "{action: DENY, rules: [{}]}";
const ALLOW_ALL: &str = "{rules: [{}]}";

/// Action order, defaults, empty rules, AUDIT and CUSTOM.
pub(super) fn precedence() -> Vec<Case> {
    vec![
        case(
            "no policy: allowed by default",
            &[],
            mtls(FRONTEND),
            Default,
        ),
        case(
            "a DENY policy that does not match: allowed by default",
            &[(
                "shop/deny-other",
                "{action: DENY, rules: [{from: [{source: {namespaces: [other]}}]}]}",
            )],
            mtls(FRONTEND),
            Default,
        ),
        case(
            "ALLOW without rules denies everything",
            &[("shop/deny-all", "{}")],
            mtls(FRONTEND),
            NoMatch,
        ),
        case(
            "ALLOW with the empty rule allows everything, plaintext too",
            &[("shop/allow-all", ALLOW_ALL)],
            plaintext(),
            Allowed("shop/allow-all", 0),
        ),
        case(
            "DENY without rules matches nothing",
            &[("shop/deny-none", "{action: DENY}")],
            plaintext(),
            Default,
        ),
        case(
            "DENY with the empty rule denies everything",
            &[("shop/deny-all", DENY_ALL)],
            mtls(FRONTEND),
            Denied("shop/deny-all", 0),
        ),
        case(
            "DENY wins over a matching ALLOW",
            &[
                ("shop/allow-frontend", ALLOW_FRONTEND),
                (
                    "shop/deny-shop",
                    "{action: DENY, rules: [{from: [{source: {namespaces: [shop]}}]}]}",
                ),
            ],
            mtls(FRONTEND),
            Denied("shop/deny-shop", 0),
        ),
        case(
            "ALLOW policies apply and none matches: denied",
            &[(
                "shop/allow-admin",
                "{rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/admin]}}]}]}",
            )],
            mtls(FRONTEND),
            NoMatch,
        ),
        case(
            "any ALLOW policy may allow",
            &[
                (
                    "shop/allow-admin",
                    "{rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/admin]}}]}]}",
                ),
                ("shop/allow-frontend", ALLOW_FRONTEND),
            ],
            mtls(FRONTEND),
            Allowed("shop/allow-frontend", 0),
        ),
        case(
            "the matching rule's index is reported",
            &[(
                "shop/allow",
                "{rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/admin]}}]}, {from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]}",
            )],
            mtls(FRONTEND),
            Allowed("shop/allow", 1),
        ),
        case(
            "of two matching DENY policies the first by name decides",
            &[("shop/b-deny", DENY_ALL), ("shop/a-deny", DENY_ALL)],
            mtls(FRONTEND),
            Denied("shop/a-deny", 0),
        ),
        case(
            "a matching CUSTOM policy denies: no ext_authz provider",
            &[(
                "shop/ext",
                "{action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {ports: [\"8080\"]}}]}]}",
            )],
            mtls(FRONTEND),
            Custom("shop/ext", 0),
        ),
        case(
            "a CUSTOM policy that does not match changes nothing",
            &[(
                "shop/ext",
                "{action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {ports: [\"9090\"]}}]}]}",
            )],
            mtls(FRONTEND),
            Default,
        ),
        case(
            "CUSTOM is evaluated before DENY",
            &[
                ("shop/a-deny", DENY_ALL),
                (
                    "shop/z-ext",
                    "{action: CUSTOM, provider: {name: opa}, rules: [{}]}",
                ),
            ],
            mtls(FRONTEND),
            Custom("shop/z-ext", 0),
        ),
        case(
            "CUSTOM without rules never matches",
            &[
                ("shop/ext", "{action: CUSTOM, provider: {name: opa}}"),
                ("shop/allow-all", ALLOW_ALL),
            ],
            mtls(FRONTEND),
            Allowed("shop/allow-all", 0),
        ),
        case(
            "AUDIT only logs and is no ALLOW policy",
            &[("shop/audit", "{action: AUDIT, rules: [{}]}")],
            plaintext(),
            Default,
        )
        .audits(&["shop/audit"]),
        case(
            "AUDIT is reported beside a DENY",
            &[
                (
                    "shop/audit",
                    "{action: AUDIT, rules: [{from: [{source: {namespaces: [shop]}}]}]}",
                ),
                ("shop/deny-all", DENY_ALL),
            ],
            mtls(FRONTEND),
            Denied("shop/deny-all", 0),
        )
        .audits(&["shop/audit"]),
        case(
            "AUDIT that does not match is not reported",
            &[
                (
                    "shop/audit",
                    "{action: AUDIT, rules: [{from: [{source: {namespaces: [other]}}]}]}",
                ),
                ("shop/allow-frontend", ALLOW_FRONTEND),
            ],
            mtls(FRONTEND),
            Allowed("shop/allow-frontend", 0),
        ),
        case(
            "namespace deny-all plus ALLOW by principal lets the principal in",
            &[
                ("shop/deny-all", "{}"),
                ("shop/allow-frontend", ALLOW_FRONTEND),
            ],
            mtls(FRONTEND),
            Allowed("shop/allow-frontend", 0),
        ),
        case(
            "namespace deny-all plus ALLOW by principal keeps others out",
            &[
                ("shop/deny-all", "{}"),
                ("shop/allow-frontend", ALLOW_FRONTEND),
            ],
            mtls(ADMIN),
            NoMatch,
        ),
        case(
            "a DENY by namespace wins over an ALLOW by principal",
            &[
                (
                    "shop/allow-client",
                    "{rules: [{from: [{source: {principals: [cluster.local/ns/other/sa/client]}}]}]}",
                ),
                (
                    "shop/deny-other",
                    "{action: DENY, rules: [{from: [{source: {namespaces: [other]}}]}]}",
                ),
            ],
            mtls(CLIENT_OTHER),
            Denied("shop/deny-other", 0),
        ),
    ]
}

/// Which policies apply: namespace, root namespace, selector, targetRefs.
pub(super) fn selection() -> Vec<Case> {
    vec![
        case(
            "a policy of another namespace does not apply",
            &[("other/deny-all", DENY_ALL)],
            mtls(FRONTEND),
            Default,
        ),
        case(
            "a root-namespace policy without selector applies mesh-wide",
            &[("istio-system/deny-all", DENY_ALL)],
            mtls(FRONTEND),
            Denied("istio-system/deny-all", 0),
        ),
        case(
            "a root-namespace policy with a matching selector applies",
            &[(
                "istio-system/backend-admin",
                "{selector: {matchLabels: {app: backend}}, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/admin]}}]}]}",
            )],
            mtls(FRONTEND),
            NoMatch,
        ),
        case(
            "root-namespace and namespace ALLOW policies both count",
            &[
                (
                    "istio-system/allow-admin",
                    "{rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/admin]}}]}]}",
                ),
                ("shop/allow-frontend", ALLOW_FRONTEND),
            ],
            mtls(FRONTEND),
            Allowed("shop/allow-frontend", 0),
        ),
        case(
            "a selector that does not match: the policy does not apply",
            &[("shop/web-only", "{selector: {matchLabels: {app: web}}}")],
            mtls(FRONTEND),
            Default,
        ),
        case(
            "a selector on a subset of the labels applies",
            &[(
                "shop/backend",
                "{action: DENY, selector: {matchLabels: {app: backend}}, rules: [{}]}",
            )],
            mtls(FRONTEND),
            Denied("shop/backend", 0),
        ),
        case(
            "a selector needing a label the pod lacks does not apply",
            &[(
                "shop/backend-db",
                "{action: DENY, selector: {matchLabels: {app: backend, tier: db}}, rules: [{}]}",
            )],
            mtls(FRONTEND),
            Default,
        ),
        case(
            "targetRefs to a Service are for waypoints, not workloads",
            &[(
                "shop/svc",
                "{action: DENY, targetRefs: [{group: \"\", kind: Service, name: backend}], rules: [{}]}",
            )],
            mtls(FRONTEND),
            Default,
        ),
        case(
            "targetRefs to a waypoint Gateway do not apply at ztunnel",
            &[(
                "shop/wp",
                "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}], rules: [{from: [{source: {principals: [nobody]}}]}]}",
            )],
            mtls(FRONTEND),
            Default,
        ),
    ]
}

/// `principals`, `notPrincipals` and their string matches.
pub(super) fn principals() -> Vec<Case> {
    let allow = |p: &'static str| -> Vec<(&'static str, &'static str)> { vec![("shop/p", p)] };
    let rows: Vec<(&str, &str, _, _)> = vec![
        (
            "exact principal",
            ALLOW_FRONTEND,
            mtls(FRONTEND),
            Allowed("shop/p", 0),
        ),
        (
            "exact principal, another service account",
            ALLOW_FRONTEND,
            mtls(ADMIN),
            NoMatch,
        ),
        (
            "principals are case-sensitive",
            "{rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/Frontend]}}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "principals carry no spiffe:// prefix",
            "{rules: [{from: [{source: {principals: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]}}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "the trust domain is part of an exact principal",
            ALLOW_FRONTEND,
            mtls(FOREIGN),
            NoMatch,
        ),
        (
            "prefix principal",
            "{rules: [{from: [{source: {principals: [\"cluster.local/ns/shop/*\"]}}]}]}",
            mtls(ADMIN),
            Allowed("shop/p", 0),
        ),
        (
            "prefix principal, another namespace",
            "{rules: [{from: [{source: {principals: [\"cluster.local/ns/shop/*\"]}}]}]}",
            mtls(CLIENT_OTHER),
            NoMatch,
        ),
        (
            "suffix principal, any trust domain",
            "{rules: [{from: [{source: {principals: [\"*/sa/frontend\"]}}]}]}",
            mtls(FOREIGN),
            Allowed("shop/p", 0),
        ),
        (
            "suffix principal, another service account",
            "{rules: [{from: [{source: {principals: [\"*/sa/frontend\"]}}]}]}",
            mtls(ADMIN),
            NoMatch,
        ),
        (
            "presence principal matches any mTLS peer",
            "{rules: [{from: [{source: {principals: [\"*\"]}}]}]}",
            mtls(CLIENT_OTHER),
            Allowed("shop/p", 0),
        ),
        (
            "presence principal does not match plaintext",
            "{rules: [{from: [{source: {principals: [\"*\"]}}]}]}",
            plaintext(),
            NoMatch,
        ),
        (
            "values of principals are ORed",
            "{rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/admin, cluster.local/ns/shop/sa/frontend]}}]}]}",
            mtls(FRONTEND),
            Allowed("shop/p", 0),
        ),
        (
            "DENY notPrincipals denies the others",
            "{action: DENY, rules: [{from: [{source: {notPrincipals: [cluster.local/ns/shop/sa/frontend]}}]}]}",
            mtls(ADMIN),
            Denied("shop/p", 0),
        ),
        (
            "DENY notPrincipals spares the listed one",
            "{action: DENY, rules: [{from: [{source: {notPrincipals: [cluster.local/ns/shop/sa/frontend]}}]}]}",
            mtls(FRONTEND),
            Default,
        ),
        (
            "DENY notPrincipals * denies plaintext (require mTLS)",
            "{action: DENY, rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]}",
            plaintext(),
            Denied("shop/p", 0),
        ),
        (
            "DENY notPrincipals * lets mTLS through",
            "{action: DENY, rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]}",
            mtls(FRONTEND),
            Default,
        ),
        (
            "principals and notPrincipals in one source",
            "{rules: [{from: [{source: {principals: [\"cluster.local/ns/shop/*\"], notPrincipals: [cluster.local/ns/shop/sa/admin]}}]}]}",
            mtls(ADMIN),
            NoMatch,
        ),
    ];
    rows.into_iter()
        .map(|(name, p, conn, want)| case(name, &allow(p), conn, want))
        .collect()
}

/// `namespaces` and `notNamespaces` (from the peer certificate).
pub(super) fn namespaces() -> Vec<Case> {
    let rows: Vec<(&str, &str, _, _)> = vec![
        (
            "namespace of the peer",
            "{rules: [{from: [{source: {namespaces: [shop]}}]}]}",
            mtls(FRONTEND),
            Allowed("shop/n", 0),
        ),
        (
            "namespace of another peer",
            "{rules: [{from: [{source: {namespaces: [shop]}}]}]}",
            mtls(CLIENT_OTHER),
            NoMatch,
        ),
        (
            "namespace prefix",
            "{rules: [{from: [{source: {namespaces: [\"oth*\"]}}]}]}",
            mtls(CLIENT_OTHER),
            Allowed("shop/n", 0),
        ),
        (
            "namespace presence does not match plaintext",
            "{rules: [{from: [{source: {namespaces: [\"*\"]}}]}]}",
            plaintext(),
            NoMatch,
        ),
        (
            "DENY notNamespaces denies other namespaces",
            "{action: DENY, rules: [{from: [{source: {notNamespaces: [shop]}}]}]}",
            mtls(CLIENT_OTHER),
            Denied("shop/n", 0),
        ),
        (
            "DENY notNamespaces denies plaintext",
            "{action: DENY, rules: [{from: [{source: {notNamespaces: [shop]}}]}]}",
            plaintext(),
            Denied("shop/n", 0),
        ),
        (
            "DENY notNamespaces spares the namespace",
            "{action: DENY, rules: [{from: [{source: {notNamespaces: [shop]}}]}]}",
            mtls(FRONTEND),
            Default,
        ),
    ];
    rows.into_iter()
        .map(|(name, p, conn, want)| case(name, &[("shop/n", p)], conn, want))
        .collect()
}

/// How sources, operations, conditions and rules combine.
pub(super) fn structure() -> Vec<Case> {
    let rows: Vec<(&str, &str, _, _)> = vec![
        (
            "fields of a source are ANDed",
            "{rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend], namespaces: [other]}}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "from entries are ORed",
            "{rules: [{from: [{source: {namespaces: [other]}}, {source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]}",
            mtls(FRONTEND),
            Allowed("shop/s", 0),
        ),
        (
            "from and to are ANDed",
            "{rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}], to: [{operation: {ports: [\"9090\"]}}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "to entries are ORed",
            "{rules: [{to: [{operation: {ports: [\"9090\"]}}, {operation: {ports: [\"8080\"]}}]}]}",
            mtls(FRONTEND),
            Allowed("shop/s", 0),
        ),
        (
            "when conditions are ANDed",
            "{rules: [{when: [{key: source.namespace, values: [shop]}, {key: destination.port, values: [\"9090\"]}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "from, to and when all match",
            "{rules: [{from: [{source: {namespaces: [shop]}}], to: [{operation: {ports: [\"8080\"]}}], when: [{key: source.ip, values: [198.18.0.0/16]}]}]}",
            mtls(FRONTEND),
            Allowed("shop/s", 0),
        ),
        (
            "values and notValues of one condition",
            "{rules: [{when: [{key: source.ip, values: [198.18.0.0/16], notValues: [198.18.1.10]}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
    ];
    rows.into_iter()
        .map(|(name, p, conn, want)| case(name, &[("shop/s", p)], conn, want))
        .collect()
}

/// `ipBlocks`, `remoteIpBlocks` and their `not` forms.
pub(super) fn addresses() -> Vec<Case> {
    let rows: Vec<(&str, &str, _, _)> = vec![
        (
            "ipBlocks CIDR",
            "{rules: [{from: [{source: {ipBlocks: [198.18.1.0/24]}}]}]}",
            mtls(FRONTEND),
            Allowed("shop/ip", 0),
        ),
        (
            "ipBlocks single address",
            "{rules: [{from: [{source: {ipBlocks: [198.18.1.10]}}]}]}",
            plaintext(),
            Allowed("shop/ip", 0),
        ),
        (
            "ipBlocks elsewhere",
            "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "ipBlocks IPv6",
            "{rules: [{from: [{source: {ipBlocks: [\"fd00::/8\"]}}]}]}",
            mtls(FRONTEND).src("fd00::1:10"),
            Allowed("shop/ip", 0),
        ),
        (
            "ipBlocks IPv4 against an IPv4-mapped source",
            "{rules: [{from: [{source: {ipBlocks: [198.18.1.0/24]}}]}]}",
            mtls(FRONTEND).src("::ffff:198.18.1.10"),
            Allowed("shop/ip", 0),
        ),
        (
            "DENY notIpBlocks denies outside",
            "{action: DENY, rules: [{from: [{source: {notIpBlocks: [198.18.0.0/16]}}]}]}",
            plaintext().src("203.0.113.9"),
            Denied("shop/ip", 0),
        ),
        (
            "DENY notIpBlocks spares inside",
            "{action: DENY, rules: [{from: [{source: {notIpBlocks: [198.18.0.0/16]}}]}]}",
            plaintext(),
            Default,
        ),
        (
            "ALLOW remoteIpBlocks matches nothing at L4 (an L7 attribute)",
            "{rules: [{from: [{source: {remoteIpBlocks: [198.18.1.10]}}]}]}",
            plaintext(),
            NoMatch,
        ),
        (
            "DENY remoteIpBlocks of another range still denies at L4",
            "{action: DENY, rules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]}]}",
            plaintext(),
            Denied("shop/ip", 0),
        ),
        (
            "DENY notRemoteIpBlocks denies at L4",
            "{action: DENY, rules: [{from: [{source: {notRemoteIpBlocks: [198.18.1.10]}}]}]}",
            plaintext(),
            Denied("shop/ip", 0),
        ),
        (
            "DENY remoteIpBlocks beside namespaces spares other namespaces at L4",
            "{action: DENY, rules: [{from: [{source: {namespaces: [other], remoteIpBlocks: [10.0.0.0/8]}}]}]}",
            mtls(FRONTEND),
            Default,
        ),
    ];
    rows.into_iter()
        .map(|(name, p, conn, want)| case(name, &[("shop/ip", p)], conn, want))
        .collect()
}

/// `ports` and `notPorts` (the original destination port).
pub(super) fn ports() -> Vec<Case> {
    let rows: Vec<(&str, &str, _, _)> = vec![
        (
            "ports match the destination port",
            "{rules: [{to: [{operation: {ports: [\"80\", \"8080\"]}}]}]}",
            mtls(FRONTEND),
            Allowed("shop/port", 0),
        ),
        (
            "ports on another port",
            "{rules: [{to: [{operation: {ports: [\"8080\"]}}]}]}",
            mtls(FRONTEND).port(9090),
            NoMatch,
        ),
        (
            "DENY notPorts denies other ports",
            "{action: DENY, rules: [{to: [{operation: {notPorts: [\"8080\"]}}]}]}",
            mtls(FRONTEND).port(22),
            Denied("shop/port", 0),
        ),
        (
            "DENY notPorts spares the listed port",
            "{action: DENY, rules: [{to: [{operation: {notPorts: [\"8080\"]}}]}]}",
            mtls(FRONTEND),
            Default,
        ),
        (
            "DENY on a port spares the others",
            "{action: DENY, rules: [{to: [{operation: {ports: [\"8080\"]}}]}]}",
            mtls(FRONTEND).port(9090),
            Default,
        ),
    ];
    rows.into_iter()
        .map(|(name, p, conn, want)| case(name, &[("shop/port", p)], conn, want))
        .collect()
}

/// `when` on L4 keys.
pub(super) fn conditions() -> Vec<Case> {
    let rows: Vec<(&str, &str, _, _)> = vec![
        (
            "when source.ip CIDR",
            "{rules: [{when: [{key: source.ip, values: [198.18.1.0/24]}]}]}",
            plaintext(),
            Allowed("shop/w", 0),
        ),
        (
            "when source.ip notValues",
            "{rules: [{when: [{key: source.ip, notValues: [198.18.1.10]}]}]}",
            plaintext(),
            NoMatch,
        ),
        (
            "ALLOW when remote.ip matches nothing at L4",
            "{rules: [{when: [{key: remote.ip, values: [198.18.1.10]}]}]}",
            plaintext(),
            NoMatch,
        ),
        (
            "DENY when remote.ip of another range denies at L4",
            "{action: DENY, rules: [{when: [{key: remote.ip, values: [10.0.0.0/8]}]}]}",
            plaintext(),
            Denied("shop/w", 0),
        ),
        (
            "when source.namespace",
            "{rules: [{when: [{key: source.namespace, values: [shop]}]}]}",
            mtls(FRONTEND),
            Allowed("shop/w", 0),
        ),
        (
            "when source.namespace notValues holds for plaintext",
            "{rules: [{when: [{key: source.namespace, notValues: [other]}]}]}",
            plaintext(),
            Allowed("shop/w", 0),
        ),
        (
            "when source.namespace on plaintext",
            "{rules: [{when: [{key: source.namespace, values: [\"*\"]}]}]}",
            plaintext(),
            NoMatch,
        ),
        (
            "when source.principal prefix",
            "{rules: [{when: [{key: source.principal, values: [\"cluster.local/ns/other/*\"]}]}]}",
            mtls(CLIENT_OTHER),
            Allowed("shop/w", 0),
        ),
        (
            "when source.principal notValues",
            "{rules: [{when: [{key: source.principal, notValues: [cluster.local/ns/shop/sa/frontend]}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "when destination.ip is the workload",
            "{rules: [{when: [{key: destination.ip, values: [198.18.1.20]}]}]}",
            mtls(FRONTEND),
            Allowed("shop/w", 0),
        ),
        (
            "when destination.ip elsewhere",
            "{rules: [{when: [{key: destination.ip, values: [198.18.2.0/24]}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "when destination.port",
            "{rules: [{when: [{key: destination.port, values: [\"8080\"]}]}]}",
            mtls(FRONTEND),
            Allowed("shop/w", 0),
        ),
        (
            "when destination.port notValues",
            "{rules: [{when: [{key: destination.port, notValues: [\"8080\"]}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "ALLOW when connection.sni matches nothing at L4",
            "{rules: [{when: [{key: connection.sni, values: [\"*.shop.svc.cluster.local\"]}]}]}",
            mtls(FRONTEND).sni("backend.shop.svc.cluster.local"),
            NoMatch,
        ),
        (
            "DENY when connection.sni denies at L4",
            "{action: DENY, rules: [{when: [{key: connection.sni, values: [other.example]}]}]}",
            mtls(FRONTEND),
            Denied("shop/w", 0),
        ),
    ];
    rows.into_iter()
        .map(|(name, p, conn, want)| case(name, &[("shop/w", p)], conn, want))
        .collect()
}

/// HTTP attributes at ztunnel: ALLOW rules match nothing, DENY drops them.
pub(super) fn http_at_l4() -> Vec<Case> {
    let rows: Vec<(&str, &str, _, _)> = vec![
        (
            "ALLOW with methods matches nothing at L4",
            "{rules: [{to: [{operation: {methods: [GET]}}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "ALLOW with hosts matches nothing at L4",
            "{rules: [{to: [{operation: {hosts: [backend.shop]}}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "ALLOW with an L4 rule beside an HTTP one",
            "{rules: [{to: [{operation: {paths: [\"/api/*\"]}}]}, {from: [{source: {namespaces: [shop]}}]}]}",
            mtls(FRONTEND),
            Allowed("shop/h", 1),
        ),
        (
            "ALLOW rule with HTTP in one from entry is omitted whole",
            "{rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}, {source: {requestPrincipals: [\"*\"]}}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "ALLOW with a request.headers condition matches nothing",
            "{rules: [{when: [{key: \"request.headers[X-User]\", values: [alice]}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "DENY with only methods denies every connection",
            "{action: DENY, rules: [{to: [{operation: {methods: [POST]}}]}]}",
            mtls(FRONTEND),
            Denied("shop/h", 0),
        ),
        (
            "DENY with ports and paths denies on that port",
            "{action: DENY, rules: [{to: [{operation: {ports: [\"8080\"], paths: [\"/admin\"]}}]}]}",
            mtls(FRONTEND),
            Denied("shop/h", 0),
        ),
        (
            "DENY with ports and paths spares other ports",
            "{action: DENY, rules: [{to: [{operation: {ports: [\"8080\"], paths: [\"/admin\"]}}]}]}",
            mtls(FRONTEND).port(9090),
            Default,
        ),
        (
            "DENY with principals and methods spares other principals",
            "{action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/admin]}}], to: [{operation: {methods: [DELETE]}}]}]}",
            mtls(FRONTEND),
            Default,
        ),
        (
            "DENY with a JWT claim condition denies",
            "{action: DENY, rules: [{when: [{key: \"request.auth.claims[groups]\", values: [guest]}]}]}",
            mtls(FRONTEND),
            Denied("shop/h", 0),
        ),
        (
            "DENY notRequestPrincipals * (require a JWT) denies at L4",
            "{action: DENY, rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]}",
            mtls(FRONTEND),
            Denied("shop/h", 0),
        ),
        (
            "DENY with an experimental envoy key denies",
            "{action: DENY, rules: [{when: [{key: \"experimental.envoy.filters.a[b]\", values: [x]}]}]}",
            mtls(FRONTEND),
            Denied("shop/h", 0),
        ),
    ];
    rows.into_iter()
        .map(|(name, p, conn, want)| case(name, &[("shop/h", p)], conn, want))
        .collect()
}

/// HTTP attributes at a waypoint, where the request is known.
pub(super) fn http_at_l7() -> Vec<Case> {
    let req = || mtls(FRONTEND);
    let rows: Vec<(&str, &str, _, _)> = vec![
        (
            "L7 remoteIpBlocks without a forwarded client is the source",
            "{rules: [{from: [{source: {remoteIpBlocks: [198.18.1.10]}}]}]}",
            req().http(get("/")),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 remoteIpBlocks is the forwarded client",
            "{rules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}]}",
            req().remote("203.0.113.7").http(get("/")),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 remote.ip of another client",
            "{rules: [{when: [{key: remote.ip, values: [203.0.113.0/24]}]}]}",
            req().http(get("/")),
            NoMatch,
        ),
        (
            "L7 when connection.sni",
            "{rules: [{when: [{key: connection.sni, values: [\"*.shop.svc.cluster.local\"]}]}]}",
            req().sni("backend.shop.svc.cluster.local").http(get("/")),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 when connection.sni without SNI",
            "{rules: [{when: [{key: connection.sni, values: [\"*\"]}]}]}",
            req().http(get("/")),
            NoMatch,
        ),
        (
            "L7 methods match",
            "{rules: [{to: [{operation: {methods: [GET, HEAD]}}]}]}",
            req().http(get("/")),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 methods do not match",
            "{rules: [{to: [{operation: {methods: [GET]}}]}]}",
            req().http(get("/").method("POST")),
            NoMatch,
        ),
        (
            "L7 path prefix",
            "{rules: [{to: [{operation: {paths: [\"/api/*\"]}}]}]}",
            req().http(get("/api/v1/items")),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 path template {*} is one segment",
            "{rules: [{to: [{operation: {paths: [\"/api/{*}/users\"]}}]}]}",
            req().http(get("/api/v1/users")),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 path template {*} is not two segments",
            "{rules: [{to: [{operation: {paths: [\"/api/{*}/users\"]}}]}]}",
            req().http(get("/api/v1/v2/users")),
            NoMatch,
        ),
        (
            "L7 path template {**} is the rest of the path",
            "{rules: [{to: [{operation: {paths: [\"/files/{**}\"]}}]}]}",
            req().http(get("/files/a/b/c")),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 DENY path template {**} needs a segment",
            "{action: DENY, rules: [{to: [{operation: {paths: [\"/files/{**}\"]}}]}]}",
            req().http(get("/files/")),
            Default,
        ),
        (
            "L7 DENY notPaths template",
            "{action: DENY, rules: [{to: [{operation: {notPaths: [\"/public/{**}\"]}}]}]}",
            req().http(get("/public")),
            Denied("shop/l7", 0),
        ),
        (
            "L7 DENY notPaths",
            "{action: DENY, rules: [{to: [{operation: {notPaths: [\"/public/*\"]}}]}]}",
            req().http(get("/admin")),
            Denied("shop/l7", 0),
        ),
        (
            "L7 hosts ignore case and port",
            "{rules: [{to: [{operation: {hosts: [Backend.Shop.svc.cluster.local]}}]}]}",
            req().http(get("/").host("backend.shop.svc.cluster.local:8080")),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 requestPrincipals prefix",
            "{rules: [{from: [{source: {requestPrincipals: [\"https://issuer.example/*\"]}}]}]}",
            req().http(get("/").jwt(jwt("https://issuer.example/alice"))),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 requestPrincipals * without a JWT",
            "{rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]}",
            req().http(get("/")),
            NoMatch,
        ),
        (
            "L7 request.headers",
            "{rules: [{when: [{key: \"request.headers[X-User]\", values: [alice]}]}]}",
            req().http(get("/").header("x-user", "alice")),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 claims list",
            "{rules: [{when: [{key: \"request.auth.claims[groups]\", values: [admin]}]}]}",
            req().http(get("/").jwt(jwt("i/s").claim(&["groups"], &["dev", "admin"]))),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 nested claims",
            "{rules: [{when: [{key: \"request.auth.claims[org][team]\", values: [payments]}]}]}",
            req().http(get("/").jwt(jwt("i/s").claim(&["org", "team"], &["payments"]))),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 audiences",
            "{rules: [{when: [{key: request.auth.audiences, values: [backend]}]}]}",
            req().http(get("/").jwt(crate::policy::tests::Jwt {
                audiences: vec!["web", "backend"],
                ..jwt("i/s")
            })),
            Allowed("shop/l7", 0),
        ),
        (
            "L7 still cannot evaluate experimental keys",
            "{rules: [{when: [{key: \"experimental.envoy.filters.a[b]\", values: [x]}]}]}",
            req().http(get("/")),
            NoMatch,
        ),
    ];
    rows.into_iter()
        .map(|(name, p, conn, want)| case(name, &[("shop/l7", p)], conn, want))
        .collect()
}

/// `serviceAccounts` and `notServiceAccounts` (namespace and name of the peer).
pub(super) fn service_accounts() -> Vec<Case> {
    let rows: Vec<(&str, (&str, &str), _, _)> = vec![
        (
            "serviceAccounts with a namespace",
            (
                "shop/sa",
                "{rules: [{from: [{source: {serviceAccounts: [shop/frontend]}}]}]}",
            ),
            mtls(FRONTEND),
            Allowed("shop/sa", 0),
        ),
        (
            "serviceAccounts without a namespace are the policy's",
            (
                "shop/sa",
                "{rules: [{from: [{source: {serviceAccounts: [frontend]}}]}]}",
            ),
            mtls(FRONTEND),
            Allowed("shop/sa", 0),
        ),
        (
            "serviceAccounts of a root-namespace policy default to the root namespace",
            (
                "istio-system/sa",
                "{rules: [{from: [{source: {serviceAccounts: [frontend]}}]}]}",
            ),
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "serviceAccounts ignore the trust domain",
            (
                "shop/sa",
                "{rules: [{from: [{source: {serviceAccounts: [shop/frontend]}}]}]}",
            ),
            mtls(FOREIGN),
            Allowed("shop/sa", 0),
        ),
        (
            "serviceAccounts of another namespace",
            (
                "shop/sa",
                "{rules: [{from: [{source: {serviceAccounts: [other/frontend]}}]}]}",
            ),
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "serviceAccounts do not match plaintext",
            (
                "shop/sa",
                "{rules: [{from: [{source: {serviceAccounts: [shop/frontend]}}]}]}",
            ),
            plaintext(),
            NoMatch,
        ),
        (
            "DENY notServiceAccounts denies the others",
            (
                "shop/sa",
                "{action: DENY, rules: [{from: [{source: {notServiceAccounts: [shop/frontend, other/client]}}]}]}",
            ),
            mtls(ADMIN),
            Denied("shop/sa", 0),
        ),
        (
            "DENY notServiceAccounts spares the listed",
            (
                "shop/sa",
                "{action: DENY, rules: [{from: [{source: {notServiceAccounts: [shop/frontend, other/client]}}]}]}",
            ),
            mtls(CLIENT_OTHER),
            Default,
        ),
        (
            "DENY notServiceAccounts denies plaintext",
            (
                "shop/sa",
                "{action: DENY, rules: [{from: [{source: {notServiceAccounts: [frontend]}}]}]}",
            ),
            plaintext(),
            Denied("shop/sa", 0),
        ),
    ];
    rows.into_iter()
        .map(|(name, p, conn, want)| case(name, &[p], conn, want))
        .collect()
}

/// Policies that fail validation are enforced fail-closed, never skipped.
pub(super) fn invalid() -> Vec<Case> {
    let rows: Vec<(&str, &str, _, _)> = vec![
        (
            "an invalid ALLOW policy still counts: nothing it does not allow gets through",
            "{rules: [{to: [{operation: {ports: [http]}}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "the valid rules of an invalid ALLOW policy still allow",
            "{rules: [{to: [{operation: {ports: [http]}}]}, {from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]}",
            mtls(FRONTEND),
            Allowed("shop/bad", 1),
        ),
        (
            "the invalid rule of an ALLOW policy matches nothing",
            "{rules: [{to: [{operation: {ports: [http]}}]}, {from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]}",
            mtls(ADMIN),
            NoMatch,
        ),
        (
            "an invalid when entry in an ALLOW rule matches nothing",
            "{rules: [{when: [{key: source.ip}]}]}",
            plaintext(),
            NoMatch,
        ),
        (
            "a DENY rule is enforced without its invalid entry",
            "{action: DENY, rules: [{from: [{source: {namespaces: [shop]}}], to: [{operation: {ports: [http]}}]}]}",
            mtls(FRONTEND),
            Denied("shop/bad", 0),
        ),
        (
            "a DENY rule without its invalid entry spares what its valid part excludes",
            "{action: DENY, rules: [{from: [{source: {namespaces: [shop]}}], to: [{operation: {ports: [http]}}]}]}",
            mtls(CLIENT_OTHER),
            Default,
        ),
        (
            "a DENY with an invalid source denies whatever it might have matched",
            "{action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.300/24]}}]}]}",
            mtls(FRONTEND),
            Denied("shop/bad", 0),
        ),
        (
            "a DENY with an unknown when key denies",
            "{action: DENY, rules: [{when: [{key: source.foo, values: [x]}]}]}",
            plaintext(),
            Denied("shop/bad", 0),
        ),
        (
            "a DENY with an unreadable selector applies to the whole namespace",
            "{action: DENY, selector: {matchLabels: {\"bad key!\": x}}, rules: [{}]}",
            mtls(FRONTEND),
            Denied("shop/bad", 0),
        ),
        (
            "an ALLOW with an unreadable selector applies to the whole namespace",
            "{selector: {matchLabels: {\"bad key!\": x}}, rules: [{from: [{source: {namespaces: [other]}}]}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "a DENY with a selector and targetRefs keeps the selector",
            "{action: DENY, selector: {matchLabels: {app: backend}}, targetRefs: [{kind: Service, name: backend}], rules: [{}]}",
            mtls(FRONTEND),
            Denied("shop/bad", 0),
        ),
        (
            "a DENY with an unknown targetRef kind applies to the whole namespace",
            "{action: DENY, targetRefs: [{kind: HTTPRoute, name: r}], rules: [{}]}",
            mtls(FRONTEND),
            Denied("shop/bad", 0),
        ),
        (
            "an ALLOW with a provider allows nothing",
            "{provider: {name: opa}, rules: [{}]}",
            mtls(FRONTEND),
            NoMatch,
        ),
        (
            "a CUSTOM policy without a provider denies what it matches",
            "{action: CUSTOM, rules: [{}]}",
            mtls(FRONTEND),
            Custom("shop/bad", 0),
        ),
    ];
    rows.into_iter()
        .map(|(name, p, conn, want)| case(name, &[("shop/bad", p)], conn, want))
        .collect()
}
