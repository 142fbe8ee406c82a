//! `ambit-demo`, what `cargo xtask demo` runs: the whole mesh on a two-node
//! testbed of network namespaces, step by step, each step with its evidence
//! (packets captured on the wire between the nodes, access logs, status codes,
//! metrics). The configuration is the Kubernetes objects in `demo/mesh.yaml`,
//! rewritten as the steps go; everything is removed at the end.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use ambit_tests::{
    Testbed,
    jwt::Issuer,
    mesh::{MeshConfig, Ztunnel, ZtunnelOptions},
    testbed::{Process, contains},
    waypoint::{
        API_POD_PORT, GATEWAY, GATEWAY_NAME_LABEL, ISSUER, JWKS_PORT, Jwks, KID, Waypoint,
        WaypointOptions, curl, request_authentication, start_httpbin,
    },
};

/// How long a configuration change may take to reach a ztunnel.
const APPLY: Duration = Duration::from_secs(10);

const HEADER: &str = "\
# The mesh of `cargo xtask demo`: the same Kubernetes objects a user applies
# to a cluster (Namespaces, the pods of the sample app with their service
# accounts, Services, PeerAuthentication, AuthorizationPolicy,
# RequestAuthentication and a waypoint Gateway). ztunnel and the waypoint
# watch this file: the demo rewrites it at each step.
#
#   web (node a) -> api (node b, Service api, waypoint wp) -> db (node b, Service db)
#   outsider: a pod of the namespace `legacy`, outside the mesh
#   jwks: the identity provider's key server (namespace `idp`, outside the mesh)
";

const API_SERVICE: &str = r"
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: demo
spec:
  clusterIP: 198.19.0.20
  selector:
    app: api
  ports:
  - name: http
    port: 80
    targetPort: 8080";

const API_SERVICE_WITH_WAYPOINT: &str = r"
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: demo
  labels:
    istio.io/use-waypoint: wp
spec:
  clusterIP: 198.19.0.20
  selector:
    app: api
  ports:
  - name: http
    port: 80
    targetPort: 8080";

const DB_SERVICE: &str = r"
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: demo
spec:
  clusterIP: 198.19.0.30
  selector:
    app: db
  ports:
  - name: tcp-db
    port: 5432
    targetPort: 8080";

const STRICT: &str = r"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: demo
spec:
  mtls:
    mode: STRICT";

const DB_ONLY_FROM_API: &str = r"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: db-from-api
  namespace: demo
spec:
  selector:
    matchLabels:
      app: db
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/demo/sa/api]";

const ADMINS_MAY_WRITE: &str = r"
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
  - from: [{source: {requestPrincipals: ['*']}}]
    to: [{operation: {methods: [POST], paths: ['/api/*']}}]
    when: [{key: 'request.auth.claims[groups]', values: [admin]}]
  - from: [{source: {requestPrincipals: ['*']}}]
    to: [{operation: {methods: [GET], paths: ['/api/*']}}]";

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let started = Instant::now();
    match run() {
        Ok(()) => {
            println!(
                "\nAll steps passed in {:.0} s; the testbed is removed.",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("\ndemo failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The demo's world: the testbed, its configuration, the running processes.
struct Demo {
    config: PathBuf,
    mesh: MeshConfig,
    ztunnels: Vec<Ztunnel>,
    _servers: Vec<Process>,
    bed: Testbed,
}

fn step(number: u32, what: &str) -> Instant {
    println!("\n{number}. {what}");
    Instant::now()
}

fn evidence(line: impl AsRef<str>) {
    println!("   {}", line.as_ref());
}

fn done(since: Instant) {
    println!("   ok ({:.1} s)", since.elapsed().as_secs_f64());
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok { Ok(()) } else { Err(what()) }
}

impl Demo {
    fn write(&self, mesh: &MeshConfig) -> Result<()> {
        let yaml = format!("{HEADER}{}", mesh.to_yaml(&self.bed));
        std::fs::write(&self.config, yaml)
            .map_err(|e| format!("cannot write {}: {e}", self.config.display()))
    }

    /// Writes `mesh` and waits until every ztunnel applied it.
    fn apply(&mut self, mesh: MeshConfig) -> Result<()> {
        let mut pending: Vec<&Ztunnel> = self.ztunnels.iter().collect();
        let first = pending.remove(0);
        let write = || self.write(&mesh);
        let nested = pending.iter().fold(
            Box::new(write) as Box<dyn FnOnce() -> Result<()>>,
            |inner, zt| {
                Box::new(move || {
                    zt.after_update(APPLY, inner)
                        .map_err(|e| e.to_string())
                        .and_then(|r| r)
                })
            },
        );
        first
            .after_update(APPLY, nested)
            .map_err(|e| e.to_string())
            .and_then(|r| r)?;
        self.mesh = mesh;
        Ok(())
    }

    fn curl(&self, pod: &str, args: &[&str]) -> Result<(u16, String)> {
        curl(&self.bed, pod, args)
    }
}

fn run() -> Result<()> {
    let setup = step(
        0,
        "setting up: two nodes, the CA, a ztunnel per node, the sample app",
    );
    let bed = Testbed::builder("demo")
        .node("a")
        .node("b")
        .pod("web", "a")
        .pod("outsider", "a")
        .pod("wp", "a")
        .pod("api", "b")
        .pod("db", "b")
        .pod("jwks", "b")
        .build()
        .map_err(|e| format!("cannot build the testbed: {e}"))?;
    let issuer = Issuer::generate(ISSUER, KID);
    let jwks = Jwks::start(&bed, "jwks", JWKS_PORT, &[&issuer]);
    let mesh = MeshConfig::default()
        .namespace("demo", false)
        .namespace("legacy", false)
        .namespace("idp", false)
        .pod("web", "demo")
        .pod("api", "demo")
        .pod("db", "demo")
        .pod("wp", "demo")
        .label("wp", GATEWAY_NAME_LABEL, "wp")
        .pod("outsider", "legacy")
        .pod("jwks", "idp")
        .document(API_SERVICE)
        .document(DB_SERVICE);
    std::fs::create_dir_all("demo").map_err(|e| format!("cannot create demo/: {e}"))?;
    let config = std::fs::canonicalize("demo")
        .map_err(|e| format!("cannot resolve demo/: {e}"))?
        .join("mesh.yaml");
    let mut demo = Demo {
        config,
        mesh: mesh.clone(),
        ztunnels: Vec::new(),
        _servers: Vec::new(),
        bed,
    };
    demo.write(&mesh)?;
    for node in ["a", "b"] {
        let zt = Ztunnel::start(&demo.bed, node, &demo.config, &ZtunnelOptions::default())
            .map_err(|e| format!("ztunnel on node {node} does not start: {e}"))?;
        demo.ztunnels.push(zt);
    }
    let listen = format!("[::]:{API_POD_PORT}");
    demo._servers
        .push(start_httpbin(&demo.bed, "api", &listen, "api"));
    demo._servers
        .push(start_httpbin(&demo.bed, "db", &listen, "db"));
    evidence(format!(
        "configuration: {} (Kubernetes objects, rewritten at each step)",
        demo.config.display()
    ));
    evidence(format!(
        "web {} on node a; api {} and db {} on node b",
        demo.bed.pod("web").ipv4(),
        demo.bed.pod("api").ipv4(),
        demo.bed.pod("db").ipv4()
    ));
    done(setup);

    let api_pod = format!("http://{}:{API_POD_PORT}", demo.bed.pod("api").ipv4());
    plaintext_before_enrollment(&demo, &api_pod)?;
    mtls_after_the_label(&mut demo, &api_pod)?;
    strict(&mut demo, &api_pod)?;
    l4_policy(&mut demo)?;
    let waypoint = waypoint(&mut demo, &issuer, &jwks)?;
    fail_closed(&mut demo)?;
    metrics(&demo, &waypoint)?;
    drop(waypoint);
    drop(jwks);
    Ok(())
}

fn plaintext_before_enrollment(demo: &Demo, api_pod: &str) -> Result<()> {
    let since = step(
        1,
        "before enrollment: web -> api in plaintext (namespace demo has no label)",
    );
    let capture = demo
        .bed
        .capture_fabric("step1", "tcp")
        .map_err(|e| format!("cannot capture the fabric: {e}"))?;
    let (status, _) = demo.curl("web", &[&format!("{api_pod}/api/items")])?;
    check(status == 200, || format!("web -> api answered {status}"))?;
    let seen = capture.wait_for(&[b"GET /api/items"], Duration::from_secs(3));
    check(contains(&seen, b"GET /api/items HTTP/1.1"), || {
        "the request was not seen in clear on the fabric".to_owned()
    })?;
    evidence(format!("GET /api/items -> {status}"));
    evidence("capture between the nodes: \"GET /api/items HTTP/1.1\" in clear, to port 8080");
    done(since);
    Ok(())
}

fn mtls_after_the_label(demo: &mut Demo, api_pod: &str) -> Result<()> {
    let since = step(
        2,
        "label the namespace istio.io/dataplane-mode=ambient (no app restarts)",
    );
    let mesh = demo.mesh.clone().namespace("demo", true);
    demo.apply(mesh)?;
    let capture = demo
        .bed
        .capture_fabric("step2", "tcp")
        .map_err(|e| format!("cannot capture the fabric: {e}"))?;
    let (status, _) = demo.curl("web", &[&format!("{api_pod}/api/items")])?;
    check(status == 200, || format!("web -> api answered {status}"))?;
    std::thread::sleep(Duration::from_millis(300));
    let seen = capture.stop();
    check(!contains(&seen, b"GET /api/items"), || {
        "the request crossed the fabric in clear after enrollment".to_owned()
    })?;
    // TLS 1.3 application data records begin 17 03 03.
    check(contains(&seen, &[0x17, 0x03, 0x03]), || {
        "no TLS record was captured".to_owned()
    })?;
    evidence(format!("GET /api/items -> {status}"));
    evidence("capture between the nodes: no clear bytes, only TLS to port 15008");
    let line = demo.ztunnels[1]
        .wait_for_log(APPLY, |l| {
            l["target"] == "access" && l["direction"] == "inbound" && l["src.identity"] != ""
        })
        .map_err(|e| format!("no inbound access log on node b: {e}"))?;
    evidence(format!(
        "node b's access log: {} -> {}",
        line["src.identity"].as_str().unwrap_or("?"),
        line["dst.identity"].as_str().unwrap_or("?")
    ));
    done(since);
    Ok(())
}

fn strict(demo: &mut Demo, api_pod: &str) -> Result<()> {
    let since = step(
        3,
        "PeerAuthentication STRICT: plaintext from outside the mesh is refused",
    );
    let mesh = demo.mesh.clone().document(STRICT);
    demo.apply(mesh)?;
    let url = format!("{api_pod}/api/items");
    match demo.curl("outsider", &[&url]) {
        Ok((status, _)) => return Err(format!("outsider -> api answered {status}")),
        Err(error) => evidence(format!(
            "outsider (namespace legacy, not in the mesh) -> api: refused ({})",
            curl_error(&error)
        )),
    }
    let (status, _) = demo.curl("web", &[&url])?;
    check(status == 200, || format!("web -> api answered {status}"))?;
    evidence(format!("web (in the mesh) -> api: {status}"));
    done(since);
    Ok(())
}

fn l4_policy(demo: &mut Demo) -> Result<()> {
    let since = step(4, "L4 AuthorizationPolicy: db accepts only api's identity");
    let mesh = demo.mesh.clone().document(DB_ONLY_FROM_API);
    demo.apply(mesh)?;
    let db = "http://198.19.0.30:5432/rows";
    match demo.curl("web", &[db]) {
        Ok((status, _)) => return Err(format!("web -> db answered {status}")),
        Err(_) => evidence("web -> db: refused"),
    }
    let (status, _) = demo.curl("api", &[db])?;
    check(status == 200, || format!("api -> db answered {status}"))?;
    evidence(format!("api -> db: {status}"));
    let denied = demo.ztunnels[1]
        .wait_for_log(APPLY, |l| {
            l["target"] == "access" && l["error"].as_str().is_some_and(|e| e.contains("denied"))
        })
        .map_err(|e| format!("no denial in node b's access log: {e}"))?;
    evidence(format!(
        "node b's access log: {}",
        denied["error"].as_str().unwrap_or("?")
    ));
    done(since);
    Ok(())
}

fn waypoint(demo: &mut Demo, issuer: &Issuer, jwks: &Jwks) -> Result<Waypoint> {
    let since = step(
        5,
        "a waypoint for api: RequestAuthentication (JWT) and an L7 AuthorizationPolicy",
    );
    let mesh = demo
        .mesh
        .clone()
        .document(GATEWAY)
        .document(API_SERVICE_WITH_WAYPOINT)
        .document(&request_authentication(&jwks.url))
        .document(ADMINS_MAY_WRITE);
    // The api Service, now labelled to use the waypoint, replaces the first.
    let mesh = mesh.without_document(API_SERVICE);
    demo.apply(mesh)?;
    let options = WaypointOptions {
        jwks_ca: Some(jwks.ca_file.clone()),
        ..WaypointOptions::default()
    };
    let waypoint = Waypoint::start(&demo.bed, "wp", &demo.config, "demo/wp", &options)
        .map_err(|e| format!("the waypoint does not start: {e}"))?;
    evidence("rule: POST /api/* needs a valid JWT with groups [admin]; GET /api/* any valid JWT");
    let alice = issuer.token_for("alice", &["admin"], 600);
    let bob = issuer.token_for("bob", &["dev"], 600);
    let forged = Issuer::generate(ISSUER, KID).token_for("alice", &["admin"], 600);
    let api = "http://198.19.0.20/api";
    let cases: [(&str, &str, &str, Option<&str>, u16); 5] = [
        ("no token", "GET", "/items", None, 403),
        ("a forged token", "GET", "/items", Some(&forged), 401),
        ("bob (groups: [dev])", "GET", "/items", Some(&bob), 200),
        ("bob (groups: [dev])", "POST", "/orders", Some(&bob), 403),
        (
            "alice (groups: [admin])",
            "POST",
            "/orders",
            Some(&alice),
            200,
        ),
    ];
    for (who, method, path, token, want) in cases {
        let url = format!("{api}{path}");
        let auth = token.map(|t| format!("authorization: Bearer {t}"));
        let mut args = vec!["-X", method, url.as_str()];
        if let Some(auth) = &auth {
            args.extend(["-H", auth.as_str()]);
        }
        let (status, body) = demo.curl("web", &args)?;
        check(status == want, || {
            format!("{method} /api{path} with {who}: {status} {body:?}, want {want}")
        })?;
        let note = if status == 200 {
            String::new()
        } else {
            format!(" {}", body.trim())
        };
        evidence(format!("{method} /api{path}, {who}: {status}{note}"));
    }
    let line = waypoint
        .wait_for_log(APPLY, |l| l["message"] == "request denied")
        .map_err(|e| format!("no denial in the waypoint's log: {e}"))?;
    evidence(format!(
        "waypoint log: request denied, {}",
        line["policy"].as_str().unwrap_or("?")
    ));
    done(since);
    Ok(waypoint)
}

fn fail_closed(demo: &mut Demo) -> Result<()> {
    let since = step(6, "ztunnel on node a dies: web's traffic fails closed");
    let capture = demo
        .bed
        .capture_fabric("step6", "tcp")
        .map_err(|e| format!("cannot capture the fabric: {e}"))?;
    demo.ztunnels[0].kill();
    let api_pod = format!(
        "http://{}:{API_POD_PORT}/api/items",
        demo.bed.pod("api").ipv4()
    );
    let attempt = Instant::now();
    match demo.curl("web", &[&api_pod]) {
        Ok((status, _)) => return Err(format!("web -> api answered {status} without ztunnel")),
        Err(_) => evidence(format!(
            "web -> api while ztunnel is down: refused after {} ms",
            attempt.elapsed().as_millis()
        )),
    }
    std::thread::sleep(Duration::from_millis(300));
    let seen = capture.stop();
    check(!contains(&seen, b"GET /api/items"), || {
        "a plaintext request left the node while ztunnel was down".to_owned()
    })?;
    evidence("capture between the nodes: no clear bytes left node a");
    let zt = Ztunnel::start(&demo.bed, "a", &demo.config, &ZtunnelOptions::default())
        .map_err(|e| format!("ztunnel on node a does not restart: {e}"))?;
    demo.ztunnels[0] = zt;
    let (status, _) = demo.curl("web", &[&api_pod])?;
    check(status == 200, || {
        format!("web -> api after the restart answered {status}")
    })?;
    evidence(format!(
        "ztunnel restarted (pinned maps reused): web -> api: {status}"
    ));
    done(since);
    Ok(())
}

fn metrics(demo: &Demo, waypoint: &Waypoint) -> Result<()> {
    let since = step(7, "metrics: Prometheus text on :15020");
    let mut scrape = demo.bed.pod_command("wp", "curl");
    scrape.args(["-s", "--max-time", "5", "http://127.0.0.1:15020/metrics"]);
    let out = demo
        .bed
        .run(scrape, Duration::from_secs(10))
        .map_err(|e| format!("cannot scrape the waypoint: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    check(!lines.is_empty(), || {
        format!(
            "no istio_requests_total from the waypoint:\n{text}\n{}",
            waypoint.stderr()
        )
    })?;
    for line in lines {
        let code = label(line, "response_code");
        let source = label(line, "source_workload");
        let value = line.rsplit(' ').next().unwrap_or("?");
        evidence(format!(
            "waypoint: istio_requests_total{{source_workload=\"{source}\", destination_service_name=\"api\", response_code=\"{code}\"}} {value}"
        ));
    }
    let mut node = demo.bed.node_command("b", "curl");
    node.args(["-s", "--max-time", "5", "http://127.0.0.1:15020/metrics"]);
    let out = demo
        .bed
        .run(node, Duration::from_secs(10))
        .map_err(|e| format!("cannot scrape ztunnel on node b: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().filter(|l| l.starts_with("ambit_config_")) {
        evidence(format!("ztunnel b: {line}"));
    }
    done(since);
    Ok(())
}

/// curl's own message (`curl: (56) Recv failure: ...`) out of a failed run.
fn curl_error(error: &str) -> &str {
    error
        .find("curl: (")
        .map_or(error, |i| &error[i..])
        .lines()
        .next()
        .unwrap_or("")
        .trim()
}

/// The value of `name="..."` in a metric line.
fn label<'a>(line: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    line.split_once(&key)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("?", |(value, _)| value)
}
