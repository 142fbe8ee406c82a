//! AuthorizationPolicy evaluation per decision: 1,000 policies in the mesh, 50
//! of them applying to the workload (mesh-wide and namespace ALLOW, DENY, AUDIT
//! and CUSTOM policies with principals, namespaces, addresses, ports and `when`
//! conditions), and a mix of connections that are allowed by early and late
//! policies, denied by a DENY, or denied because no ALLOW rule matches.
//!
//! Plain std timing: each decision is timed on its own (median and p99 over
//! 100,000, with the cost of reading the clock reported beside), and a batch
//! gives the mean without the clock. A counting allocator checks that
//! evaluation allocates nothing; the run fails if it does. Run with
//! `cargo bench -p ztunnel --bench policy`. Targets (issue 8): median < 1 us,
//! zero allocations per evaluation.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ztunnel::{
    config::file,
    policy::{Attributes, Peer, PolicyIndex, Verdict, compile_for_workload},
    registry::{Change, ObjectKey, Options, Registry},
};

/// Allocations made by the process so far.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting calls that allocate.
struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the counter
// is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const POLICIES: usize = 1_000;
const APPLYING: usize = 50;
const SAMPLES: usize = 100_000;
const BATCH: usize = 1_000_000;
/// ALLOW policies in the workload's namespace that apply to it.
const ALLOWS: usize = 40;

fn policy(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{namespace: {namespace}, name: {name}}}\nspec: {spec}\n"
    )
}

/// How the ALLOW policies name their second principal.
#[derive(Clone, Copy)]
enum Principals {
    /// A prefix (`.../sa/worker-*`): every rule is scanned.
    Mixed,
    /// An exact name: rules skip other peers by fingerprint.
    Exact,
}

/// The mesh: namespaces, the workload `shop/backend`, and 1,000 policies of
/// which 50 apply to it (5 mesh-wide, 45 in `shop`).
fn mesh(principals: Principals) -> String {
    let mut out = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n\
         ---\napiVersion: v1\nkind: Pod\n\
         metadata: {name: backend, namespace: shop, labels: {app: backend, version: v1}}\n\
         spec: {nodeName: node-a, serviceAccountName: backend, containers: [{name: b, image: b}]}\n\
         status: {podIP: 198.18.1.20}\n",
    );
    let mut add = |ns: &str, name: String, spec: String| out.push_str(&policy(ns, &name, &spec));
    // Mesh-wide (root namespace, no selector): 5 that apply.
    let root = "istio-system";
    add(root, "deny-blocklist".into(), "{action: DENY, rules: [{from: [{source: {ipBlocks: [203.0.113.0/24, 198.51.100.0/24]}}]}]}".into());
    add(root, "deny-ssh".into(), "{action: DENY, rules: [{to: [{operation: {ports: [\"22\"]}}], from: [{source: {notNamespaces: [istio-system]}}]}]}".into());
    add(
        root,
        "audit-admin-port".into(),
        "{action: AUDIT, rules: [{to: [{operation: {ports: [\"9090\"]}}]}]}".into(),
    );
    add(
        root,
        "audit-legacy".into(),
        "{action: AUDIT, rules: [{from: [{source: {namespaces: [\"legacy-*\"]}}]}]}".into(),
    );
    add(root, "ext-authz".into(), "{action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {ports: [\"7070\"]}}]}]}".into());
    // Root namespace, selectors for other apps: 45 that do not apply.
    for j in 0..45 {
        add(
            root,
            format!("other-{j}"),
            format!(
                "{{selector: {{matchLabels: {{app: other-{j}}}}}, rules: [{{from: [{{source: {{namespaces: [ns-{j}]}}}}]}}]}}"
            ),
        );
    }
    // The workload's namespace: 40 ALLOW and 5 DENY that apply.
    for k in 0..ALLOWS {
        let worker = match principals {
            Principals::Mixed => format!("\"cluster.local/ns/client-{k}/sa/worker-*\""),
            Principals::Exact => format!("cluster.local/ns/client-{k}/sa/worker-3"),
        };
        let selector = if k % 2 == 0 {
            "selector: {matchLabels: {app: backend}}, "
        } else {
            ""
        };
        add(
            "shop",
            format!("allow-{k:02}"),
            format!(
                "{{{selector}rules: [\
             {{from: [{{source: {{principals: [cluster.local/ns/client-{k}/sa/app-{k}, {worker}]}}}}], to: [{{operation: {{ports: [\"8080\", \"8443\"]}}}}]}}, \
             {{from: [{{source: {{namespaces: [team-{k}], notPrincipals: [\"*/sa/untrusted\"]}}}}], when: [{{key: source.ip, values: [10.{k}.0.0/16]}}]}}]}}"
            ),
        );
    }
    for d in 0..5 {
        add(
            "shop",
            format!("deny-{d}"),
            format!(
                "{{action: DENY, selector: {{matchLabels: {{app: backend}}}}, rules: [\
             {{from: [{{source: {{principals: [\"*/sa/blocked-{d}\"]}}}}]}}, \
             {{from: [{{source: {{ipBlocks: [192.0.2.{d}]}}}}], to: [{{operation: {{notPorts: [\"8080\"]}}}}]}}]}}"
            ),
        );
    }
    // The workload's namespace, other apps: 55 that do not apply.
    for j in 0..55 {
        add(
            "shop",
            format!("web-{j}"),
            format!("{{selector: {{matchLabels: {{app: web-{j}}}}}, rules: [{{}}]}}"),
        );
    }
    // Other namespaces: 850 that do not apply.
    for i in 0..(POLICIES - 150) {
        add(
            &format!("ns-{:02}", i % 17),
            format!("p-{i}"),
            format!(
                "{{rules: [{{from: [{{source: {{principals: [cluster.local/ns/x/sa/s-{i}]}}}}], to: [{{operation: {{ports: [\"80\"]}}}}]}}]}}"
            ),
        );
    }
    out
}

/// One connection of the input mix.
struct Input {
    src: IpAddr,
    port: u16,
    identity: Option<String>,
}

/// 64 connections: allowed by the first rule of an early or late ALLOW policy,
/// allowed by a second rule, denied by no match, by a namespace DENY, or by a
/// mesh-wide DENY, and some on the audited port.
fn inputs() -> Vec<Input> {
    (0..64)
        .map(|i| {
            let k = (i * 7) % ALLOWS;
            let mtls = |src: &str, port, id: String| Input {
                src: src.parse().expect("valid address"),
                port,
                identity: Some(id),
            };
            match i % 8 {
                0 | 1 => mtls(
                    "198.18.1.10",
                    8080,
                    format!("spiffe://cluster.local/ns/client-{k}/sa/app-{k}"),
                ),
                2 => mtls(
                    "198.18.1.11",
                    8443,
                    format!("spiffe://cluster.local/ns/client-{k}/sa/worker-3"),
                ),
                3 => mtls(
                    &format!("10.{k}.1.1"),
                    8080,
                    format!("spiffe://cluster.local/ns/team-{k}/sa/api"),
                ),
                4 => mtls(
                    "198.18.1.12",
                    8080,
                    "spiffe://cluster.local/ns/unknown/sa/someone".into(),
                ),
                5 => mtls(
                    "198.18.1.13",
                    8080,
                    format!("spiffe://cluster.local/ns/shop/sa/blocked-{}", i % 5),
                ),
                6 => mtls(
                    "198.18.1.14",
                    9090,
                    format!("spiffe://cluster.local/ns/client-{k}/sa/app-{k}"),
                ),
                _ => Input {
                    src: "203.0.113.9".parse().expect("valid"),
                    port: 8080,
                    identity: None,
                },
            }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn main() {
    println!(
        "policy evaluation benchmark: {POLICIES} policies in the mesh, {APPLYING} apply to the workload"
    );
    let allocations = run(
        "ALLOW rules with exact and prefix principals",
        Principals::Mixed,
    ) + run("ALLOW rules with exact principals only", Principals::Exact);
    if allocations != 0 {
        eprintln!("FAIL: evaluation allocated");
        std::process::exit(1);
    }
}

/// Measures one mesh; returns the allocations made while evaluating.
fn run(label: &str, principals: Principals) -> u64 {
    let objects = file::parse(&mesh(principals), Path::new("mesh.yaml"))
        .expect("the mesh parses")
        .objects;
    let registry = Registry::new(Options {
        node: Some("node-a".into()),
        ..Options::default()
    });
    registry.apply(objects.into_iter().map(Change::Upsert));
    let snap = registry.snapshot();
    let backend = snap
        .workload(&ObjectKey::new("shop", "backend"))
        .expect("the workload exists");
    let applying = snap.policies_for(backend).authorization.len();
    assert_eq!(applying, APPLYING, "policies applying to the workload");

    let start = Instant::now();
    let compiled = compile_for_workload(&snap, backend);
    let compile_time = start.elapsed();
    let start = Instant::now();
    let index = PolicyIndex::build(&snap);
    let index_time = start.elapsed();
    assert_eq!(index.len(), 1);

    let dst_ip: IpAddr = "198.18.1.20".parse().expect("valid");
    let inputs = inputs();
    let attributes: Vec<Attributes<'_>> = inputs
        .iter()
        .map(|i| {
            let peer = (i.identity.as_deref()).map(|id| Peer::from_uri(id).expect("a SPIFFE id"));
            Attributes::connection(i.src, SocketAddr::new(dst_ip, i.port), peer)
        })
        .collect();
    let allowed = attributes
        .iter()
        .filter(|a| compiled.evaluate(a).verdict == Verdict::Allow)
        .count();
    let audited = attributes
        .iter()
        .filter(|a| !compiled.evaluate(a).audits.is_empty())
        .count();

    // Warm up, then time each decision.
    for a in attributes.iter().cycle().take(10_000) {
        black_box(compiled.evaluate(black_box(a)));
    }
    let mut times = Vec::with_capacity(SAMPLES);
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    for a in attributes.iter().cycle().take(SAMPLES) {
        let start = Instant::now();
        let decision = compiled.evaluate(black_box(a));
        black_box(&decision);
        times.push(start.elapsed());
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;

    // The cost of reading the clock twice, measured the same way.
    let mut clock = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let start = Instant::now();
        clock.push(black_box(start).elapsed());
    }

    // A batch without the clock inside: the mean.
    let start = Instant::now();
    for a in attributes.iter().cycle().take(BATCH) {
        black_box(compiled.evaluate(black_box(a)));
    }
    let mean = start.elapsed() / u32::try_from(BATCH).expect("fits");

    times.sort_unstable();
    clock.sort_unstable();
    let median = percentile(&times, 0.5);
    assert_eq!(compiled.len(), APPLYING);
    println!("{label}:");
    println!(
        "  input mix: {} connections, {allowed} allowed, {} denied, {audited} audited",
        attributes.len(),
        attributes.len() - allowed
    );
    println!(
        "  per decision (each timed):  median {:.0} ns [target < 1000 ns], p99 {:.0} ns, max {:.0} ns (of {SAMPLES})",
        ns(median),
        ns(percentile(&times, 0.99)),
        ns(times[times.len() - 1])
    );
    println!(
        "  clock read pair alone:      median {:.0} ns, p99 {:.0} ns (included above)",
        ns(percentile(&clock, 0.5)),
        ns(percentile(&clock, 0.99))
    );
    println!(
        "  per decision (batch mean):  {:.0} ns (of {BATCH})",
        ns(mean)
    );
    println!(
        "  allocations per decision:   {} [target 0] ({allocations} in {SAMPLES} decisions)",
        allocations as f64 / SAMPLES as f64
    );
    println!(
        "  compile for the workload:   {:.1} us; index for the node: {:.1} us",
        compile_time.as_secs_f64() * 1e6,
        index_time.as_secs_f64() * 1e6
    );
    allocations
}
