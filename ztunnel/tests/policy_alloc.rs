//! Evaluating AuthorizationPolicies allocates nothing: connections and HTTP
//! requests, allowed and denied, with AUDIT matches, and HTTP attributes
//! evaluated or enforced fail-safe. A counting allocator (per thread, so the
//! test harness does not interfere) checks every decision.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    hint::black_box,
    path::Path,
};

use ztunnel::{
    config::file,
    policy::{Attributes, Claims, Headers, Peer, Request, RequestAuth, compile_for_workload},
    registry::{Change, ObjectKey, Options, Registry},
};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting this thread's allocations.
struct Counting;

fn count() {
    // `try_with`: the slot may be gone while the thread exits.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter
// is only bookkeeping (a const-initialized thread local, which never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: shop, labels: {app: backend}}
spec: {nodeName: node-a, containers: [{name: b, image: b}]}
status: {podIP: 198.18.1.20}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {namespace: shop, name: allow}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend, "*/sa/worker"]}}]
    to: [{operation: {ports: ["8080"], methods: [GET], paths: ["/api/*"]}}]
  - from: [{source: {ipBlocks: [10.0.0.0/8]}}]
    when: [{key: "request.auth.claims[groups]", values: [admin]}, {key: "request.headers[X-User]", values: ["*"]}]
  - to: [{operation: {ports: ["9090"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {namespace: shop, name: deny}
spec:
  action: DENY
  rules:
  - from: [{source: {notNamespaces: [shop, other]}}]
    to: [{operation: {notPorts: ["9090"]}}]
  - when: [{key: source.ip, values: [203.0.113.0/24]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {namespace: shop, name: audit}
spec:
  action: AUDIT
  rules: [{to: [{operation: {hosts: ["*.example.com"]}}]}, {}]
"#;

struct NoHeaders;

impl Headers for NoHeaders {
    fn get(&self, name: &str) -> Option<&str> {
        (name == "x-user").then_some("alice")
    }
}

struct Groups;

impl Claims for Groups {
    fn any(&self, path: &[Box<str>], matches: &mut dyn FnMut(&str) -> bool) -> bool {
        path.len() == 1 && &*path[0] == "groups" && ["dev", "admin"].into_iter().any(matches)
    }
}

#[test]
fn evaluation_allocates_nothing() {
    let objects = file::parse(MESH, Path::new("mesh.yaml"))
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
        .expect("the workload");
    let compiled = compile_for_workload(&snap, backend);
    assert_eq!(compiled.len(), 3);

    let frontend = Peer::from_uri("spiffe://cluster.local/ns/shop/sa/frontend").expect("an id");
    let outsider = Peer::from_uri("spiffe://cluster.local/ns/x/sa/worker").expect("an id");
    let dst = |port| std::net::SocketAddr::new([198, 18, 1, 20].into(), port);
    let request = Request {
        method: "GET",
        path: "/api/items",
        host: "shop.example.com",
        headers: &NoHeaders,
        auth: Some(RequestAuth {
            principal: "https://issuer/alice",
            audiences: &["backend"],
            presenter: None,
            claims: &Groups,
        }),
    };
    let cases = [
        Attributes::connection([198, 18, 1, 10].into(), dst(8080), Some(frontend)),
        Attributes::connection([198, 18, 1, 10].into(), dst(9090), None),
        Attributes::connection([203, 0, 113, 9].into(), dst(9090), None),
        Attributes::connection([10, 1, 2, 3].into(), dst(8080), Some(outsider)),
        Attributes {
            request: Some(request),
            ..Attributes::connection([10, 1, 2, 3].into(), dst(8080), Some(frontend))
        },
        Attributes {
            request: Some(Request {
                method: "POST",
                ..request
            }),
            sni: Some("backend.shop"),
            ..Attributes::connection([198, 18, 1, 10].into(), dst(8080), Some(outsider))
        },
    ];
    // Every kind of outcome is exercised.
    let outcomes: Vec<(bool, usize)> = cases
        .iter()
        .map(|a| {
            let d = compiled.evaluate(a);
            (d.is_allowed(), d.audits.iter().len())
        })
        .collect();
    assert!(
        outcomes.iter().any(|o| o.0) && outcomes.iter().any(|o| !o.0),
        "{outcomes:?}"
    );
    assert!(outcomes.iter().all(|o| o.1 == 1), "{outcomes:?}");

    let before = allocations();
    for _ in 0..1_000 {
        for a in &cases {
            let decision = compiled.evaluate(black_box(a));
            black_box(decision.reason.policy_rule().map(|r| r.rule()));
            black_box(decision.audits.iter().count());
        }
    }
    assert_eq!(allocations() - before, 0, "allocations while evaluating");
}
