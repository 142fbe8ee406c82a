//! The waypoint end to end, on the [`World`] mesh: client (node a) → ztunnel →
//! waypoint `demo/wp` (node a) → ztunnel → api (node b).
//!
//! - JWT and L7 AuthorizationPolicy over HTTP/1.1, HTTP/2 and gRPC: what a
//!   caller without a token, with a forged or expired one, without the admin
//!   group and with it gets back.
//! - Routing: Service traffic goes through the waypoint and reaches the
//!   backend with the waypoint's identity; pod-IP traffic does not; an L4
//!   policy that admits only the waypoint closes the side door; a dead
//!   waypoint fails requests closed.
//! - Path normalization against a DENY on `/admin*`: no spelling of `/admin`
//!   gets through.
//! - Request smuggling: conflicting framing is a 400 that closes the
//!   connection.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use ambit_tests::{
    jwt::Issuer,
    mesh::{send, start_server},
    privileged,
    waypoint::{
        API_GRPC_PORT, API_HTTP_PORT, API_VIP, CLIENT_IDENTITY, ISSUER, KID, WAYPOINT_IDENTITY,
        World, curl, grpc_call, raw,
    },
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// The seed scenario: admins may POST to `/api/*` and call the Echo service,
/// anyone with a valid token may GET `/api/*`, nothing else is allowed.
const API_ACCESS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: api-access
  namespace: demo
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: wp
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["*"]
    to:
    - operation:
        methods: [POST]
        paths: ["/api/*", "/ambit.test.Echo/*"]
    when:
    - key: request.auth.claims[groups]
      values: [admin]
  - from:
    - source:
        requestPrincipals: ["*"]
    to:
    - operation:
        methods: [GET]
        paths: ["/api/*"]"#;

/// Denies every path under `/admin` (Istio's prefix match); no ALLOW policy,
/// so everything else is allowed.
const DENY_ADMIN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: demo
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: wp
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin*"]"#;

/// An L4 policy on the api pods (enforced by ztunnel): only the waypoint may
/// connect.
const ONLY_FROM_WAYPOINT: &str = r"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: api-only-from-waypoint
  namespace: demo
spec:
  selector:
    matchLabels:
      app: api
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/demo/sa/wp]";

/// The two ways curl speaks HTTP to the Service.
#[derive(Debug, Clone, Copy)]
enum Http {
    One,
    Two,
}

impl Http {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Self::One => &["--http1.1"],
            Self::Two => &["--http2-prior-knowledge"],
        }
    }

    fn protocol(self) -> &'static str {
        match self {
            Self::One => "HTTP/1.1",
            Self::Two => "HTTP/2",
        }
    }
}

/// One request from `client` to the Service's http port: `method` on `path`
/// (sent as is), with `token` as a bearer token.
fn request(
    world: &World,
    http: Http,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let url = World::url(API_HTTP_PORT, path);
    let auth = token.map(|t| format!("authorization: Bearer {t}"));
    let mut args: Vec<&str> = http.flags().to_vec();
    args.extend(["--path-as-is", "-X", method]);
    if method == "POST" {
        args.extend(["-H", "content-type: application/json", "-d", r#"{"qty":1}"#]);
    }
    if let Some(auth) = &auth {
        args.extend(["-H", auth]);
    }
    args.push(&url);
    curl(&world.bed, "client", &args)
}

/// A log field as text: a string as is, a number in decimal (the waypoint
/// may log a status either way).
fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

fn json(body: &str) -> Option<Value> {
    serde_json::from_str(body).ok()
}

/// What the test expects of one request.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This status and exactly this body (trimmed).
    Refused(u16, &'static str),
    /// 200 from the api backend, which saw this target and no
    /// `authorization` header.
    Served(&'static str),
}

/// Checks one reply against `expect`; `None` when it matches, else what
/// went wrong.
fn check(reply: &Result<(u16, String), String>, expect: Expect) -> Option<String> {
    let (status, body) = match reply {
        Ok(reply) => reply,
        Err(error) => return Some(format!("no HTTP reply: {error}")),
    };
    match expect {
        Expect::Refused(want, want_body) => (*status != want || body.trim() != want_body)
            .then(|| format!("got {status} {body:?}, want {want} {want_body:?}")),
        Expect::Served(target) => {
            let Some(echo) = json(body).filter(|_| *status == 200) else {
                return Some(format!("got {status} {body:?}, want 200 from api"));
            };
            if echo["server"] != "api" || echo["target"] != target {
                return Some(format!(
                    "served by {} for {}, want api for {target}",
                    echo["server"], echo["target"]
                ));
            }
            if echo["headers"].get("authorization").is_some() {
                return Some(format!(
                    "the token reached the backend (forwardOriginalToken is false): {echo}"
                ));
            }
            None
        }
    }
}

#[test]
fn jwt_and_l7_policy_decide_http1_http2_and_grpc_requests() {
    if !privileged("jwt_and_l7_policy_decide_http1_http2_and_grpc_requests") {
        return;
    }
    let world = World::builder("wp_jwt").document(API_ACCESS).build();
    let alice = world.issuer.token_for("alice", &["admin", "dev"], 600);
    let bob = world.issuer.token_for("bob", &["dev"], 600);
    let expired = world.issuer.token_for("alice", &["admin"], -3600);
    // Same issuer and key id, another key: the signature cannot verify.
    let forged = Issuer::generate(ISSUER, KID).token_for("alice", &["admin"], 600);

    const DENIED: Expect = Expect::Refused(403, "RBAC: access denied");
    const BAD_TOKEN: Expect = Expect::Refused(401, "Jwt verification fails");
    let cases: [(&str, &str, &str, Option<&str>, Expect); 9] = [
        ("no token", "GET", "/api/items", None, DENIED),
        ("no token", "POST", "/api/orders", None, DENIED),
        (
            "forged token",
            "GET",
            "/api/items",
            Some(&forged),
            BAD_TOKEN,
        ),
        (
            "expired token",
            "GET",
            "/api/items",
            Some(&expired),
            BAD_TOKEN,
        ),
        ("not an admin", "POST", "/api/orders", Some(&bob), DENIED),
        (
            "admin",
            "POST",
            "/api/orders",
            Some(&alice),
            Expect::Served("/api/orders"),
        ),
        (
            "valid token",
            "GET",
            "/api/items",
            Some(&bob),
            Expect::Served("/api/items"),
        ),
        (
            "valid token, other path",
            "GET",
            "/other",
            Some(&bob),
            DENIED,
        ),
        ("admin, other path", "POST", "/other", Some(&alice), DENIED),
    ];
    let mut failures = Vec::new();
    for http in [Http::One, Http::Two] {
        for (who, method, path, token, expect) in &cases {
            let reply = request(&world, http, method, path, *token);
            if let Some(failure) = check(&reply, *expect) {
                failures.push(format!(
                    "{} {who}: {method} {path}: {failure}",
                    http.protocol()
                ));
            }
        }
    }

    let grpc = |token: Option<&str>| {
        let auth = token.map(|t| format!("authorization=Bearer {t}"));
        let metadata: Vec<&str> = auth.iter().map(String::as_str).collect();
        grpc_call(&world.bed, "client", World::grpc_addr(), "hello", &metadata)
    };
    for (who, token, want_code) in [
        ("no token", None, 7),
        ("forged token", Some(forged.as_str()), 16),
        ("expired token", Some(expired.as_str()), 16),
        ("not an admin", Some(bob.as_str()), 7),
        ("admin", Some(alice.as_str()), 0),
    ] {
        match grpc(token) {
            Ok(reply) if reply.code != want_code => failures.push(format!(
                "gRPC {who}: got code {} ({:?}), want {want_code}",
                reply.code, reply.message
            )),
            Ok(reply) if want_code == 0 && reply.server != "api" => {
                failures.push(format!("gRPC {who}: served by {}, want api", reply.server));
            }
            Ok(reply)
                if reply
                    .metadata
                    .iter()
                    .any(|m| m.starts_with("authorization=")) =>
            {
                failures.push(format!(
                    "gRPC {who}: the token reached the backend: {reply:?}"
                ));
            }
            Ok(_) => {}
            Err(error) => failures.push(format!("gRPC {who}: no gRPC status: {error}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests went wrong:\n{}\nwaypoint stderr:\n{}",
        failures.len(),
        cases.len() * 2 + 5,
        failures.join("\n"),
        world.waypoint.stderr()
    );

    // The access log says who asked and why it was decided so (a line is
    // written as its response ends, which may be just after the client has
    // it: wait for it).
    let find = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        (world.waypoint)
            .wait_for_log(Duration::from_secs(5), |l| {
                l["target"] == "access" && l["message"] == "request" && pred(l)
            })
            .unwrap_or_else(|e| {
                panic!(
                    "no access log line for {what} ({e}):\n{}",
                    world.waypoint.stderr()
                )
            })
    };
    let admin = find("the admin's HTTP/2 POST", &|l| {
        l["method"] == "POST"
            && l["path"] == "/api/orders"
            && text(&l["status"]) == "200"
            && l["protocol"] == "HTTP/2"
    });
    assert_eq!(admin["decision"], "allow", "{admin}");
    assert_eq!(
        admin["request_principal"],
        format!("{ISSUER}/alice"),
        "{admin}"
    );
    assert_eq!(admin["src.identity"], CLIENT_IDENTITY, "{admin}");
    assert_eq!(admin["dst.service"], "demo/api", "{admin}");
    assert_eq!(
        admin["dst.addr"],
        format!("{API_VIP}:{API_HTTP_PORT}"),
        "{admin}"
    );
    let forged_line = find("a 401", &|l| text(&l["status"]) == "401");
    assert_eq!(forged_line["decision"], "unauthenticated", "{forged_line}");
    let other = find("GET /other", &|l| {
        l["path"] == "/other" && l["method"] == "GET"
    });
    assert_eq!(other["decision"], "deny", "{other}");
    assert_eq!(text(&other["status"]), "403", "{other}");
    let say = find("the admin's Say", &|l| {
        l["path"] == "/ambit.test.Echo/Say" && text(&l["grpc_status"]) == "0"
    });
    assert_eq!(
        say["dst.addr"],
        format!("{API_VIP}:{API_GRPC_PORT}"),
        "{say}"
    );
    assert_eq!(say["decision"], "allow", "{say}");

    // The same requests in Istio's metrics, scraped as Prometheus would.
    let mut scrape = world.bed.pod_command("wp", "curl");
    scrape.args(["-s", "--max-time", "5", "http://127.0.0.1:15020/metrics"]);
    let out = world
        .bed
        .run(scrape, Duration::from_secs(10))
        .expect("the waypoint serves /metrics");
    let metrics = String::from_utf8_lossy(&out.stdout).into_owned();
    let count = |labels: &[&str]| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let common = [
        r#"reporter="waypoint""#,
        r#"source_workload="client""#,
        r#"source_principal="spiffe://cluster.local/ns/demo/sa/client""#,
        r#"destination_service_name="api""#,
        r#"destination_service_namespace="demo""#,
    ];
    let with = |extra: &[&'static str]| {
        let mut labels = common.to_vec();
        labels.extend_from_slice(extra);
        count(&labels)
    };
    // HTTP/1.1 and HTTP/2: 2 served each, 2 bad tokens each, 5 denied each.
    assert_eq!(
        with(&[r#"response_code="200""#, r#"request_protocol="http""#]),
        4,
        "{metrics}"
    );
    assert_eq!(with(&[r#"response_code="401""#]), 4, "{metrics}");
    assert_eq!(with(&[r#"response_code="403""#]), 10, "{metrics}");
    assert_eq!(
        with(&[r#"request_protocol="grpc""#, r#"grpc_response_status="7""#]),
        2,
        "{metrics}"
    );
    assert_eq!(
        with(&[
            r#"request_protocol="grpc""#,
            r#"grpc_response_status="0""#,
            r#"destination_workload="api""#,
            r#"destination_principal="spiffe://cluster.local/ns/demo/sa/api""#
        ]),
        1,
        "{metrics}"
    );
    assert!(
        metrics.contains("istio_request_duration_milliseconds_bucket{"),
        "{metrics}"
    );
}

/// The address as the backend reports it, without a v4-mapped prefix.
fn peer_ip(echo: &Value) -> Option<IpAddr> {
    let peer: SocketAddr = echo["peer"].as_str()?.parse().ok()?;
    Some(peer.ip().to_canonical())
}

#[test]
fn service_traffic_goes_through_the_waypoint_and_pod_traffic_does_not() {
    if !privileged("service_traffic_goes_through_the_waypoint_and_pod_traffic_does_not") {
        return;
    }
    let mut world = World::builder("wp_route").build();
    let bed = &world.bed;
    let (wp_ips, client_ip) = (
        [
            IpAddr::V4(bed.pod("wp").ipv4()),
            IpAddr::V6(bed.pod("wp").ipv6()),
        ],
        IpAddr::V4(bed.pod("client").ipv4()),
    );
    let api_ip = bed.pod("api").ipv4().to_string();
    let via_service = World::url(API_HTTP_PORT, "/api/via-service");
    let direct_url = format!("http://{}/api/direct", world.api_pod_addr());

    // Through the Service: the waypoint serves it and connects to api itself.
    let (status, body) = curl(bed, "client", &[&via_service]).expect("the Service answers");
    let echo = json(&body).unwrap_or_else(|| panic!("JSON from api: {status} {body:?}"));
    assert_eq!(
        (status, &echo["server"]),
        (200, &Value::from("api")),
        "{body}"
    );
    assert!(
        peer_ip(&echo).is_some_and(|ip| wp_ips.contains(&ip)),
        "api sees the waypoint as its peer: {echo}"
    );
    // Trace context: the client's traceparent (same trace id), tracestate
    // and baggage reach the destination through the waypoint; a request
    // without one gets a traceparent and an x-request-id.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let (status, traced) = curl(
        bed,
        "client",
        &[
            "-H",
            &format!("traceparent: {traceparent}"),
            "-H",
            "tracestate: vendor=opaque",
            "-H",
            "baggage: tenant=blue",
            &World::url(API_HTTP_PORT, "/api/traced"),
        ],
    )
    .expect("the Service answers");
    let traced = json(&traced).unwrap_or_else(|| panic!("JSON from api: {status} {traced:?}"));
    let headers = &traced["headers"];
    assert!(
        text(&headers["traceparent"]).contains(trace_id),
        "the trace id reaches the destination: {traced}"
    );
    assert_eq!(text(&headers["tracestate"]), "vendor=opaque", "{traced}");
    assert_eq!(text(&headers["baggage"]), "tenant=blue", "{traced}");
    // Without one, the request continues the trace of its connection: the
    // id the client's ztunnel logged and sent in the CONNECT.
    let untraced = &echo["headers"];
    let continued = text(&untraced["traceparent"]);
    let connection_trace = continued.split('-').nth(1).unwrap_or_default().to_owned();
    assert_eq!(connection_trace.len(), 32, "{echo}");
    world
        .zt_a
        .wait_for_log(WAIT, |l| {
            l["target"] == "access"
                && l["direction"] == "outbound"
                && l["trace_id"] == connection_trace
        })
        .expect("the request's trace is its connection's");
    assert!(!text(&untraced["x-request-id"]).is_empty(), "{echo}");
    let line = world
        .waypoint
        .wait_for_log(WAIT, |l| {
            l["target"] == "access" && l["path"] == "/api/via-service"
        })
        .expect("the waypoint logged the request");
    assert_eq!(line["decision"], "allow", "{line}");
    assert_eq!(line["dst.service"], "demo/api", "{line}");
    // Its traffic view lists the request, to the api workload.
    let (code, body) = waypoint_admin(bed, "/api/flows");
    assert_eq!(code, "200", "{body}");
    let flows: Value = serde_json::from_str(&body).expect("JSON");
    let request = flows["flows"]
        .as_array()
        .and_then(|f| {
            f.iter().find(|f| {
                f["direction"] == "request"
                    && f["route"]
                        .as_str()
                        .is_some_and(|r| r.ends_with("GET /api/via-service"))
            })
        })
        .unwrap_or_else(|| panic!("no request flow: {body}"));
    assert_eq!(request["src"]["identity"], CLIENT_IDENTITY, "{request}");
    assert_eq!(request["dst"]["workload"], "api", "{request}");
    assert_eq!(request["decision"], "allow", "{request}");
    assert_eq!(
        line["dst.addr"],
        format!("{API_VIP}:{API_HTTP_PORT}"),
        "{line}"
    );
    assert_eq!(line["src.identity"], CLIENT_IDENTITY, "{line}");
    assert_eq!(text(&line["status"]), "200", "{line}");
    assert!(
        line["endpoint"]
            .as_str()
            .is_some_and(|e| e.contains(&api_ip)),
        "the endpoint is the api pod: {line}"
    );

    let outbound = world
        .zt_a
        .wait_for_log(WAIT, |l| {
            l["target"] == "access"
                && l["direction"] == "outbound"
                && l["dst.addr"] == format!("{API_VIP}:{API_HTTP_PORT}")
        })
        .expect("node a logged the client's connection");
    assert_eq!(outbound["waypoint"], "demo/wp", "{outbound}");
    assert_eq!(outbound["dst.identity"], WAYPOINT_IDENTITY, "{outbound}");

    // To the pod IP: no waypoint (waypoint-for defaults to service); api sees
    // the client, and node b's ztunnel the client's identity.
    let (status, body) = curl(bed, "client", &[&direct_url]).expect("the pod answers");
    let echo = json(&body).unwrap_or_else(|| panic!("JSON from api: {status} {body:?}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(peer_ip(&echo), Some(client_ip), "{echo}");
    let inbound = world
        .zt_b
        .wait_for_log(WAIT, |l| {
            l["target"] == "access"
                && l["direction"] == "inbound"
                && l["src.identity"] == CLIENT_IDENTITY
        })
        .expect("node b logged the direct connection");
    assert_eq!(
        inbound["dst.addr"],
        world.api_pod_addr().to_string(),
        "{inbound}"
    );
    assert!(
        !world
            .waypoint
            .request_logs()
            .iter()
            .any(|l| l["path"] == "/api/direct"),
        "the waypoint never saw the pod-IP request:\n{}",
        world.waypoint.stderr()
    );

    // Only the waypoint may reach api: the side door closes, the Service works.
    world.add_document(ONLY_FROM_WAYPOINT, WAIT);
    let bed = &world.bed;
    let side_door = curl(bed, "client", &[&direct_url]);
    assert!(
        !matches!(side_door, Ok((200, _))),
        "the pod-IP request still got through: {side_door:?}"
    );
    world
        .zt_b
        .wait_for_log(WAIT, |l| {
            l["target"] == "audit"
                && l["src.identity"] == CLIENT_IDENTITY
                && l["decision"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("denied"))
        })
        .expect("node b denied the client");
    let (status, body) = curl(
        bed,
        "client",
        &[&World::url(API_HTTP_PORT, "/api/after-policy")],
    )
    .expect("the Service still answers");
    assert_eq!(status, 200, "through the waypoint: {body}");

    // A dead waypoint: requests to the Service fail, and none reaches api.
    world.waypoint.kill();
    // Its connections to api close, so node b logs them now.
    let from_waypoint = world
        .zt_b
        .wait_for_log(WAIT, |l| {
            l["target"] == "access"
                && l["direction"] == "inbound"
                && l["src.identity"] == WAYPOINT_IDENTITY
        })
        .unwrap_or_else(|e| panic!("node b logged the waypoint's connections: {e}"));
    assert_eq!(
        from_waypoint["dst.addr"],
        world.api_pod_addr().to_string(),
        "{from_waypoint}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let inbound_count = |zt: &ambit_tests::mesh::Ztunnel| {
        zt.access_logs()
            .iter()
            .filter(|l| l["direction"] == "inbound")
            .count()
    };
    let before = inbound_count(&world.zt_b);
    let started = Instant::now();
    let reply = curl(
        &world.bed,
        "client",
        &[&World::url(API_HTTP_PORT, "/api/after-kill")],
    );
    let took = started.elapsed();
    assert!(
        !matches!(reply, Ok((200, _))),
        "a request through a dead waypoint got an answer: {reply:?}"
    );
    assert!(
        took < Duration::from_secs(6),
        "it failed within seconds, not {took:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        inbound_count(&world.zt_b),
        before,
        "no connection reached api:\n{}",
        world.zt_b.stderr()
    );
}

/// How a lenient backend could read `target`: percent-decoded once, `\` as
/// `/`, `;params` dropped from each segment (Tomcat, Spring), empty and dot
/// segments resolved. A 200 whose target reads as `/admin...` here got past
/// the DENY.
fn lenient_reading(target: &str) -> String {
    let path = target.split('?').next().unwrap_or_default();
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                decoded.push(u8::try_from(high * 16 + low).expect("two hex digits fit in a byte"));
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    format!("/{}", segments.join("/"))
}

#[test]
fn the_lenient_reading_finds_admin_in_every_spelling() {
    for target in [
        "/admin",
        "//admin",
        "/%61dmin",
        "/api/%2e%2e/admin",
        "/api/..;/admin",
        "/admin;x",
        "/api/..%2fadmin",
        "/api/..%5cadmin",
        "/./admin?x",
    ] {
        assert!(
            lenient_reading(target).starts_with("/admin"),
            "{target} reads as {}",
            lenient_reading(target)
        );
    }
    for target in ["/ADMIN", "/api/admin", "/%2561dmin", "/api/x/../items"] {
        assert!(
            !lenient_reading(target).starts_with("/admin"),
            "{target} reads as {}",
            lenient_reading(target)
        );
    }
}

/// What a path of the corpus must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathExpect {
    /// 403 or 400: it is `/admin` to some backend.
    Blocked,
    /// 200, and the backend saw this target.
    Served(&'static str),
    /// Blocked, or served with the target exactly as sent: a double escape is
    /// not `/admin` to a backend that decodes once (Envoy forwards it too).
    BlockedOrLiteral,
}

#[test]
fn no_spelling_of_a_denied_path_reaches_the_backend() {
    if !privileged("no_spelling_of_a_denied_path_reaches_the_backend") {
        return;
    }
    let world = World::builder("wp_paths").document(DENY_ADMIN).build();
    use PathExpect::{Blocked, BlockedOrLiteral, Served};
    let corpus: &[(&str, PathExpect)] = &[
        ("/admin", Blocked),
        ("/admin/", Blocked),
        ("/admin/x", Blocked),
        ("/admin?x=1", Blocked),
        ("/administrator", Blocked),
        ("/api/../admin", Blocked),
        ("/../admin", Blocked),
        ("//admin", Blocked),
        ("///admin/x", Blocked),
        ("/%61dmin", Blocked),
        ("/%61%64%6d%69%6e", Blocked),
        ("/api/%2e%2e/admin", Blocked),
        ("/api/%2E%2E/admin", Blocked),
        ("/api/.%2e/admin", Blocked),
        ("/./admin", Blocked),
        ("/api/./../admin", Blocked),
        ("/api/..;/admin", Blocked),
        ("/api/..;x/admin", Blocked),
        ("/admin;x", Blocked),
        ("/admin%3bx", Blocked),
        ("/api/%2fadmin", Blocked),
        ("/api/..%2fadmin", Blocked),
        ("/api/..%5cadmin", Blocked),
        ("/admin%00", Blocked),
        ("/%2561dmin", BlockedOrLiteral),
        ("/ADMIN", Served("/ADMIN")),
        ("/api/admin", Served("/api/admin")),
        ("/api/x/../items", Served("/api/items")),
    ];
    let mut bypasses = Vec::new();
    let mut wrong = Vec::new();
    for http in [Http::One, Http::Two] {
        for (path, expect) in corpus {
            let label = format!("{} {path}", http.protocol());
            let (status, body) = match request(&world, http, "GET", path, None) {
                Ok(reply) => reply,
                Err(error) => {
                    wrong.push(format!("{label}: no HTTP reply: {error}"));
                    continue;
                }
            };
            let target = json(&body)
                .filter(|_| status == 200)
                .and_then(|echo| echo["target"].as_str().map(str::to_owned));
            if let Some(target) = &target
                && lenient_reading(target).starts_with("/admin")
            {
                bypasses.push(format!("{label}: 200, the backend saw {target:?}"));
                continue;
            }
            let blocked = matches!(status, 400 | 403);
            let ok = match (expect, &target) {
                (Blocked, _) => blocked,
                (Served(want), Some(target)) => target == want,
                (BlockedOrLiteral, Some(target)) => target == path,
                (BlockedOrLiteral, None) => blocked,
                (Served(_), None) => false,
            };
            if !ok {
                wrong.push(format!("{label}: got {status} {body:?}, want {expect:?}"));
            }
        }
    }
    assert!(
        bypasses.is_empty() && wrong.is_empty(),
        "{} bypasses of the DENY on /admin*:\n{}\n{} other wrong answers:\n{}\nwaypoint stderr:\n{}",
        bypasses.len(),
        bypasses.join("\n"),
        wrong.len(),
        wrong.join("\n"),
        world.waypoint.stderr()
    );
}

#[test]
fn conflicting_framing_never_lets_a_hidden_request_through() {
    if !privileged("conflicting_framing_never_lets_a_hidden_request_through") {
        return;
    }
    let world = World::builder("wp_smuggle").build();
    let service = SocketAddr::from((API_VIP, API_HTTP_PORT));
    let send = |bytes: &str| {
        raw(&world.bed, "client", service, bytes.as_bytes())
            .unwrap_or_else(|e| panic!("raw request {bytes:?}: {e}"))
    };

    // The control: a well-formed request through the same path is served.
    let fine = send("GET /api/fine HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    assert!(fine.response.starts_with("HTTP/1.1 200"), "{fine:?}");

    // Each hides a second request where the two framings disagree: a hop that
    // reads the other framing than the next one would serve `GET /admin`.
    let hidden = "GET /admin HTTP/1.1\r\nHost: api\r\n\r\n";
    let chunked = format!("0\r\n\r\n{hidden}");
    let cl_te = format!(
        "POST /api/a HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{chunked}",
        chunked.len()
    );
    let cl_cl = format!(
        "POST /api/b HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\nContent-Length: {}\r\n\r\n\
         abcd{hidden}",
        4 + hidden.len()
    );
    // hyper folds equal lengths into one before the waypoint sees the head.
    let cl_same = format!(
        "POST /api/c HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n\
         abcd{hidden}"
    );
    // The bad request second on a keep-alive connection, after a good one
    // with a body: its head is found by following the first one's framing.
    let pipelined =
        format!("POST /api/d HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello{cl_te}");
    let mut failures = Vec::new();
    for (what, bytes, answers) in [
        ("Content-Length and Transfer-Encoding", &cl_te, 1),
        ("two different Content-Lengths", &cl_cl, 1),
        ("two equal Content-Lengths", &cl_same, 1),
        (
            "Content-Length and Transfer-Encoding, second",
            &pipelined,
            2,
        ),
    ] {
        let reply = send(bytes);
        // hyper's parser drops Content-Length when Transfer-Encoding is
        // there: the 400 comes from the waypoint's framing guard.
        let last = reply.response.rfind("HTTP/1.1 ").unwrap_or(0);
        if !reply.response[last..].starts_with("HTTP/1.1 400") {
            failures.push(format!("{what}: not refused with 400: {reply:?}"));
        }
        if answers == 2 && !reply.response.starts_with("HTTP/1.1 200") {
            failures.push(format!(
                "{what}: the good request before it failed: {reply:?}"
            ));
        }
        if !reply.closed {
            failures.push(format!("{what}: the connection stays open: {reply:?}"));
        }
        if reply.response.matches("HTTP/1.1 ").count() != answers {
            failures.push(format!(
                "{what}: {answers} answer(s) expected, a hidden request was read: {reply:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nwaypoint stderr:\n{}",
        failures.join("\n"),
        world.waypoint.stderr()
    );
    // Each refusal is logged with its reason.
    // (Two different lengths are hyper's own 400, before any handler.)
    for path in ["/api/a", "/api/c"] {
        let refusal = world.waypoint.wait_for_log(Duration::from_secs(5), |l| {
            l["target"] == "access" && l["path"] == path && l["decision"] == "invalid"
        });
        assert!(refusal.is_ok(), "no refusal logged for {path}");
    }
    let logs = world.waypoint.request_logs();
    for path in ["/api/a", "/api/c"] {
        assert!(
            logs.iter().any(|l| l["path"] == path
                && l["decision"] == "invalid"
                && l["status"] == 400
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("content-length"))),
            "no refusal logged for {path}: {logs:?}"
        );
    }
    let smuggled: Vec<&Value> = logs.iter().filter(|l| l["path"] == "/admin").collect();
    assert!(
        smuggled.is_empty(),
        "the hidden request was served: {smuggled:?}"
    );
}

/// A Service of the api pods with one opaque TCP port, through the waypoint.
const RELAY_SERVICE: &str = r"
apiVersion: v1
kind: Service
metadata:
  name: relay
  namespace: demo
  labels:
    istio.io/use-waypoint: wp
spec:
  clusterIP: 198.19.0.21
  selector:
    app: api
  ports:
  - name: tcp
    port: 7000
    targetPort: 7000";

#[test]
fn a_tcp_stream_through_the_waypoint_keeps_its_trace() {
    if !privileged("a_tcp_stream_through_the_waypoint_keeps_its_trace") {
        return;
    }
    let world = World::builder("wptcp").document(RELAY_SERVICE).build();
    let bed = &world.bed;
    let _echo = start_server(bed, "api", "echo", "[::]:7000");
    let relay = SocketAddr::from(([198, 19, 0, 21], 7000));
    let reply = send(bed, "client", relay, "opaque-bytes").expect("the echo answers");
    assert!(reply.contains("opaque-bytes"), "{reply}");
    // The client's ztunnel starts the trace in its CONNECT to the waypoint;
    // the waypoint relays at L4 and carries it in its own CONNECT; the api
    // node's ztunnel logs the same trace id.
    let outbound = world
        .zt_a
        .wait_for_log(WAIT, |l| {
            l["target"] == "access"
                && l["direction"] == "outbound"
                && l["dst.addr"] == relay.to_string()
        })
        .expect("the client's ztunnel logged the connection");
    assert_eq!(outbound["waypoint"], "demo/wp", "{outbound}");
    let trace_id = text(&outbound["trace_id"]);
    assert_eq!(trace_id.len(), 32, "{outbound}");
    let relayed = world
        .waypoint
        .wait_for_log(WAIT, |l| {
            l["target"] == "access" && l["dst.addr"] == relay.to_string()
        })
        .expect("the waypoint logged the stream");
    assert_eq!(relayed["trace_id"], trace_id.as_str(), "{relayed}");
    assert_eq!(relayed["decision"], "allow", "{relayed}");
    let inbound = world
        .zt_b
        .wait_for_log(WAIT, |l| {
            l["target"] == "access"
                && l["direction"] == "inbound"
                && l["dst.addr"].as_str().is_some_and(|d| d.ends_with(":7000"))
        })
        .expect("the api node's ztunnel logged the stream");
    assert_eq!(inbound["src.identity"], WAYPOINT_IDENTITY, "{inbound}");
    assert_eq!(inbound["trace_id"], trace_id.as_str(), "{inbound}");
    // The waypoint's own traffic view lists the stream.
    let admin = |path: &str| waypoint_admin(bed, path);
    let (code, page) = admin("/ui");
    assert_eq!(code, "200");
    assert!(page.contains("ambit traffic"), "{page:.200}");
    let (code, body) = admin("/api/flows");
    assert_eq!(code, "200", "{body}");
    let flows: Value = serde_json::from_str(&body).expect("JSON");
    let stream = flows["flows"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["direction"] == "stream"))
        .unwrap_or_else(|| panic!("no stream flow: {body}"));
    assert_eq!(stream["src"]["workload"], "client", "{stream}");
    assert_eq!(stream["dst"]["workload"], "api", "{stream}");
    assert_eq!(stream["decision"], "allow", "{stream}");
    assert_eq!(stream["trace_id"], trace_id.as_str(), "{stream}");
}

/// `GET <path>` on the waypoint's admin endpoint (localhost of pod `wp`):
/// the status code and the body.
fn waypoint_admin(bed: &ambit_tests::Testbed, path: &str) -> (String, String) {
    let mut cmd = bed.pod_command("wp", "curl");
    cmd.args([
        "-s",
        "-w",
        "\n%{http_code}",
        &format!("http://127.0.0.1:15000{path}"),
    ]);
    let out = bed.run(cmd, WAIT).expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or_default();
    (code.to_owned(), body.to_owned())
}
