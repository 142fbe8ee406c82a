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
# The api Service: a virtual IP that ztunnel resolves to api's pods.
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
# Step 5: the same Service, now sending its traffic through the waypoint wp.
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
# The db Service (plain TCP to ztunnel: the port name says tcp).
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
# Step 3: mutual TLS required for every workload of the namespace.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: demo
spec:
  mtls:
    mode: STRICT";

const DB_ONLY_FROM_API: &str = r"
# Step 4: db accepts connections from api's identity only (L4, at db's ztunnel).
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
# Step 5: at the waypoint, POST /api/* needs a valid token whose groups hold
# admin; GET /api/* needs any valid token; everything else is denied.
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

/// Set in the demo process that the supervisor starts.
const CHILD_ENV: &str = "AMBIT_DEMO_CHILD";

/// For the demo's own test: a step to break on purpose (`l4-policy`: step 4
/// writes no policy), so that its checks are seen to fail.
const BREAK_ENV: &str = "AMBIT_DEMO_BREAK";

const USAGE: &str = "usage: ambit-demo [--step N] [--keep] | --down
  --step N  run the steps up to N (1 to 7)
  --keep    leave the testbed running at the end, and print how to use it
  --down    remove a testbed left by --keep (or by an interrupted run)";

/// The command line.
#[derive(Debug, Default)]
struct Options {
    last_step: u32,
    keep: bool,
    down: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut options = Self {
            last_step: 7,
            ..Self::default()
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--keep" => options.keep = true,
                "--down" => options.down = true,
                "--step" => {
                    let value = args.next().ok_or("--step needs a number")?;
                    options.last_step = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=7).contains(n))
                        .ok_or_else(|| format!("--step takes 1 to 7, not {value:?}"))?;
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(options)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("ambit-demo: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if options.down {
        stop_kept_demo();
        return match ambit_tests::testbed::cleanup_stale() {
            Ok(()) => {
                println!("ambit-demo: removed what earlier demo runs left");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("ambit-demo: cleaning up failed: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(error) = ztunnel::capture::check_host() {
        eprintln!("ambit-demo: this machine cannot run the mesh: {error}");
        return ExitCode::FAILURE;
    }
    if std::env::var_os(CHILD_ENV).is_none() {
        return supervise(&args);
    }
    let started = Instant::now();
    let results = run(&options);
    let failed = summary(&results);
    if failed == 0 {
        println!(
            "\nAll {} steps passed in {:.0} s.",
            results.len(),
            started.elapsed().as_secs_f64()
        );
        ExitCode::SUCCESS
    } else {
        println!("\n{failed} of {} steps failed.", results.len());
        ExitCode::FAILURE
    }
}

/// Runs the demo in a child process and waits for it. On Ctrl-C (or SIGTERM,
/// as `--down` sends) it kills the child and, still alive, removes what the
/// child left (its testbed is stale once its process is gone).
fn supervise(args: &[String]) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            eprintln!("ambit-demo: cannot find its own executable: {error}");
            return ExitCode::FAILURE;
        }
    };
    let child = std::process::Command::new(exe)
        .args(args)
        .env(CHILD_ENV, "1")
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            eprintln!("ambit-demo: cannot start the demo: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ambit-demo: {error}");
            let _ = child.kill();
            return ExitCode::FAILURE;
        }
    };
    let pid = child.id();
    if args.iter().any(|a| a == "--keep")
        && let Err(error) = std::fs::create_dir_all("demo")
            .and_then(|()| std::fs::write(PID_FILE, std::process::id().to_string()))
    {
        eprintln!("ambit-demo: cannot write {PID_FILE}: {error}; stop it with Ctrl-C");
    }
    let (status, interrupted) = runtime.block_on(async move {
        let mut waiting = tokio::task::spawn_blocking(move || child.wait());
        let stop = async {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            status = &mut waiting => (status, false),
            () = stop => {
                // The child may ignore SIGINT (started in the background):
                // it holds nothing that needs an orderly end.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                (waiting.await, true)
            }
        }
    });
    let _ = std::fs::remove_file(PID_FILE);
    let ok = matches!(&status, Ok(Ok(s)) if s.success());
    if interrupted || !ok {
        if let Err(error) = ambit_tests::testbed::cleanup_stale() {
            eprintln!("ambit-demo: cleaning up failed: {error}; run `cargo xtask demo --down`");
        } else if interrupted {
            eprintln!("\nambit-demo: interrupted; the testbed is removed");
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Where a demo kept running by `--keep` notes its supervisor's pid.
const PID_FILE: &str = "demo/demo.pid";

/// Interrupts a demo kept running by `--keep` (its supervisor removes the
/// testbed) and waits for it to be gone.
fn stop_kept_demo() {
    let Ok(pid) = std::fs::read_to_string(PID_FILE) else {
        return;
    };
    let pid = pid.trim();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", pid])
        .status();
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while proc_dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(PID_FILE);
}

/// One step's outcome, for the summary.
struct StepResult {
    number: u32,
    expected: &'static str,
    observed: std::result::Result<String, String>,
}

/// Prints the summary table; returns how many steps failed.
fn summary(results: &[StepResult]) -> usize {
    println!("\n| step | expected | observed | result |\n|---|---|---|---|");
    let mut failed = 0;
    for r in results {
        let (observed, verdict) = match &r.observed {
            Ok(observed) => (observed.as_str(), "PASS"),
            Err(error) => {
                failed += 1;
                (error.as_str(), "FAIL")
            }
        };
        let observed = observed.replace('\n', " ");
        println!("| {} | {} | {observed} | {verdict} |", r.number, r.expected);
    }
    failed
}

/// Sets up the world and runs the steps up to `options.last_step`; a step that
/// fails is recorded and the next ones still run.
fn run(options: &Options) -> Vec<StepResult> {
    let mut results = Vec::new();
    let setup = step(
        0,
        "setting up: two nodes, the CA, a ztunnel per node, the sample app",
    );
    let world = match setup_world() {
        Ok(world) => {
            done(setup);
            world
        }
        Err(error) => {
            println!("   FAIL: {error}");
            results.push(StepResult {
                number: 0,
                expected: "the testbed, the CA, two ztunnels and the app start",
                observed: Err(error),
            });
            return results;
        }
    };
    let (mut demo, issuer, jwks) = world;
    let api_pod = format!("http://{}:{API_POD_PORT}", demo.bed.pod("api").ipv4());
    let mut waypoint = None;
    let broken = std::env::var(BREAK_ENV).unwrap_or_default();
    type StepFn<'a> = Box<dyn FnOnce(&mut Demo) -> Result<String> + 'a>;
    let steps: Vec<(u32, &str, &'static str, StepFn)> = vec![
        (
            1,
            "before enrollment: web -> api in plaintext (namespace demo has no label)",
            "web -> api served; the request seen in clear between the nodes",
            Box::new(|d: &mut Demo| plaintext_before_enrollment(d, &api_pod)),
        ),
        (
            2,
            "label the namespace istio.io/dataplane-mode=ambient (no app restarts)",
            "served; only TLS between the nodes; both identities logged",
            Box::new(|d: &mut Demo| mtls_after_the_label(d, &api_pod)),
        ),
        (
            3,
            "PeerAuthentication STRICT: plaintext from outside the mesh is refused",
            "outsider refused; web still served",
            Box::new(|d: &mut Demo| strict(d, &api_pod)),
        ),
        (
            4,
            "L4 AuthorizationPolicy: db accepts only api's identity",
            "web -> db refused; api -> db served",
            Box::new(|d: &mut Demo| l4_policy(d, broken == "l4-policy")),
        ),
        (
            5,
            "a waypoint for api: RequestAuthentication (JWT) and an L7 AuthorizationPolicy",
            "no token 403, forged 401, admin POST 200, GET with a token 200",
            Box::new(|d: &mut Demo| {
                let (summary, started) = waypoint_step(d, &issuer, &jwks)?;
                waypoint = Some(started);
                Ok(summary)
            }),
        ),
        (
            6,
            "ztunnel on node a dies: web's traffic fails closed, then resumes",
            "refused while down, no clear bytes; served after the restart",
            Box::new(fail_closed),
        ),
    ];
    for (number, what, expected, run_step) in steps {
        if number > options.last_step {
            break;
        }
        let since = step(number, what);
        let observed = run_step(&mut demo);
        report(&observed, since);
        results.push(StepResult {
            number,
            expected,
            observed,
        });
    }
    if options.last_step >= 7 {
        let since = step(
            7,
            "metrics: Istio's names on :15020, logs and the admin endpoint",
        );
        let observed = metrics(&demo, waypoint.as_ref());
        report(&observed, since);
        results.push(StepResult {
            number: 7,
            expected: "istio_requests_total from the waypoint; ztunnel's gauges",
            observed,
        });
    }
    if options.keep {
        summary(&results);
        keep(&demo);
        // The processes live as long as this one reads their logs: wait for
        // Ctrl-C or `--down` (the supervisor then removes everything).
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    drop(waypoint);
    results
}

fn report(observed: &Result<String>, since: Instant) {
    match observed {
        Ok(_) => done(since),
        Err(error) => println!("   FAIL: {error}"),
    }
}

/// Prints how to use a testbed left running by `--keep`. A pod's process is
/// in the pod's cgroup (the capture is attached per cgroup) and network
/// namespace.
fn keep(demo: &Demo) {
    let enter = |pod: &str| {
        let pod = demo.bed.pod(pod);
        format!(
            "sh -c 'echo $$ > {}/cgroup.procs && exec nsenter --net={} -- \"$@\"' -",
            pod.cgroup().display(),
            pod.netns_path().display()
        )
    };
    println!("\nThe testbed stays up (--keep). Try:");
    println!(
        "  {} curl -s http://198.19.0.20/api/items     # web -> api through the mesh",
        enter("web")
    );
    println!(
        "  ip netns exec {} curl -s http://127.0.0.1:15000/config_dump   # node a's ztunnel admin endpoint",
        demo.bed.node("a").netns()
    );
    println!(
        "  ip netns exec {} curl -s http://127.0.0.1:15020/metrics       # the waypoint's metrics",
        demo.bed.pod("wp").netns()
    );
    println!("  configuration: {}", demo.config.display());
    println!("  cargo xtask demo --down     # or Ctrl-C here: remove it all");
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
    println!("   PASS ({:.1} s)", since.elapsed().as_secs_f64());
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

    /// Writes `mesh` and waits until both ztunnels applied it.
    fn apply(&mut self, mesh: MeshConfig) -> Result<()> {
        let [a, b] = &self.ztunnels[..] else {
            return Err("the demo runs two ztunnels".to_owned());
        };
        a.after_update(APPLY, || {
            b.after_update(APPLY, || self.write(&mesh))
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        })
        .map_err(|e| e.to_string())
        .and_then(|r| r)?;
        self.mesh = mesh;
        Ok(())
    }

    fn curl(&self, pod: &str, args: &[&str]) -> Result<(u16, String)> {
        curl(&self.bed, pod, args)
    }
}

fn setup_world() -> Result<(Demo, Issuer, Jwks)> {
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
    // The identity provider: a key made now, its JWK Set served over HTTPS
    // from a pod, as in a cluster.
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
    Ok((demo, issuer, jwks))
}

fn plaintext_before_enrollment(demo: &mut Demo, api_pod: &str) -> Result<String> {
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
    evidence(format!("web: GET /api/items -> {status}"));
    evidence("capture between the nodes: \"GET /api/items HTTP/1.1\" in clear, to port 8080");
    Ok(format!("{status}; request bytes in clear on the fabric"))
}

fn mtls_after_the_label(demo: &mut Demo, api_pod: &str) -> Result<String> {
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
    evidence(format!("web: GET /api/items -> {status}"));
    evidence("capture between the nodes: no clear bytes, only TLS to port 15008");
    let line = demo.ztunnels[1]
        .wait_for_log(APPLY, |l| {
            l["target"] == "access" && l["direction"] == "inbound" && l["src.identity"] != ""
        })
        .map_err(|e| format!("no inbound access log on node b: {e}"))?;
    let (src, dst) = (
        line["src.identity"].as_str().unwrap_or("?").to_owned(),
        line["dst.identity"].as_str().unwrap_or("?").to_owned(),
    );
    evidence(format!("node b's access log: {src} -> {dst}"));
    Ok(format!("{status}; TLS only; {src} -> {dst}"))
}

fn strict(demo: &mut Demo, api_pod: &str) -> Result<String> {
    let mesh = demo.mesh.clone().document(STRICT);
    demo.apply(mesh)?;
    let url = format!("{api_pod}/api/items");
    let refused = match demo.curl("outsider", &[&url]) {
        Ok((status, _)) => return Err(format!("outsider -> api answered {status}")),
        Err(error) => curl_error(&error).to_owned(),
    };
    evidence(format!(
        "outsider (namespace legacy, not in the mesh) -> api: refused ({refused})"
    ));
    let (status, _) = demo.curl("web", &[&url])?;
    check(status == 200, || format!("web -> api answered {status}"))?;
    evidence(format!("web (in the mesh) -> api: {status}"));
    Ok(format!("outsider refused; web {status}"))
}

fn l4_policy(demo: &mut Demo, broken: bool) -> Result<String> {
    if broken {
        evidence("(broken on purpose: no policy written)");
    } else {
        let mesh = demo.mesh.clone().document(DB_ONLY_FROM_API);
        demo.apply(mesh)?;
    }
    let db = "http://198.19.0.30:5432/rows";
    if let Ok((status, _)) = demo.curl("web", &[db]) {
        return Err(format!("web -> db answered {status}"));
    }
    evidence("web -> db: refused");
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
    Ok(format!("web refused; api {status}"))
}

fn waypoint_step(demo: &mut Demo, issuer: &Issuer, jwks: &Jwks) -> Result<(String, Waypoint)> {
    // The api Service, now labelled to use the waypoint, replaces the first.
    let mesh = demo
        .mesh
        .clone()
        .without_document(API_SERVICE)
        .document(GATEWAY)
        .document(API_SERVICE_WITH_WAYPOINT)
        .document(&request_authentication(&jwks.url))
        .document(ADMINS_MAY_WRITE);
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
    let mut seen = Vec::new();
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
        seen.push(status.to_string());
    }
    let line = waypoint
        .wait_for_log(APPLY, |l| l["message"] == "request denied")
        .map_err(|e| format!("no denial in the waypoint's log: {e}"))?;
    evidence(format!(
        "waypoint log: request denied, {}",
        line["policy"].as_str().unwrap_or("?")
    ));
    Ok((seen.join(", "), waypoint))
}

fn fail_closed(demo: &mut Demo) -> Result<String> {
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
    if let Ok((status, _)) = demo.curl("web", &[&api_pod]) {
        return Err(format!("web -> api answered {status} without ztunnel"));
    }
    let refused_ms = attempt.elapsed().as_millis();
    evidence(format!(
        "web -> api while ztunnel is down: refused after {refused_ms} ms"
    ));
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
    Ok(format!(
        "refused in {refused_ms} ms, no clear bytes; {status} after the restart"
    ))
}

fn metrics(demo: &Demo, waypoint: Option<&Waypoint>) -> Result<String> {
    let waypoint = waypoint.ok_or("no waypoint (step 5 did not start it)")?;
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
    let mut total = 0;
    for line in &lines {
        let code = label(line, "response_code");
        let source = label(line, "source_workload");
        let value = line.rsplit(' ').next().unwrap_or("?");
        total += value.parse::<u64>().unwrap_or(0);
        evidence(format!(
            "waypoint: istio_requests_total{{source_workload=\"{source}\", destination_service_name=\"api\", response_code=\"{code}\", ...}} {value}"
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
    evidence("logs: JSON on each process's stderr (target \"access\" for the access log)");
    evidence("admin: ztunnel's http://127.0.0.1:15000/config_dump in its node's namespace");
    Ok(format!("{total} requests counted by the waypoint"))
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
        // curl's `-w %{http_code}` of a failed transfer.
        .trim_end_matches(" 000")
}

/// The value of `name="..."` in a metric line.
fn label<'a>(line: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    line.split_once(&key)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("?", |(value, _)| value)
}
