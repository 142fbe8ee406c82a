//! Identity benchmarks (plain std timing; `cargo bench -p ztunnel --bench identity`):
//!
//! 1. CA signing throughput on one core: `CertificateAuthority::sign` (CSR parse,
//!    proof-of-possession check, certificate build, ECDSA P-256 signature, PEM) in
//!    a loop on one thread. Target: >= 2,000 signatures/s.
//! 2. The same through the real gRPC API over TLS 1.3 on loopback, client and
//!    server sharing one current-thread runtime (so one core for both ends):
//!    throughput with 32 concurrent callers, then the latency of sequential calls.
//! 3. ztunnel memory per cached identity: live heap bytes (counting global
//!    allocator) held by a `CertManager` after it fetched N identities from a
//!    local CA, as the difference between two counts so fixed costs cancel.
//!    Target: <= 8 KiB.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        Arc,
        atomic::{AtomicIsize, Ordering},
    },
    time::{Duration, Instant},
};

use ztunnel::identity::{
    CertManager, Identity, ManagerConfig, TrustDomain,
    auth::{NodeName, StaticNodeAuthorizer},
    ca::{CertificateAuthority, LocalCa, RootCa, SigningPolicy, server::CaServerConfig},
    client::{CaClient, CertificateSigner},
    csr,
};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter
// is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size().cast_signed(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size().cast_signed(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size().cast_signed(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size.cast_signed() - layout.size().cast_signed(),
            Ordering::Relaxed,
        );
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn identity(i: usize) -> Identity {
    Identity::new("cluster.local", "bench", &format!("sa-{i}")).expect("valid by construction")
}

fn bench_sign_core() {
    let td = TrustDomain::default();
    let root = RootCa::generate(&td, Duration::from_secs(3600)).expect("root");
    let ca = CertificateAuthority::new(root, td, SigningPolicy::default(), Vec::new()).expect("ca");
    let csrs: Vec<String> = (0..64)
        .map(|i| csr::create(&identity(i)).expect("csr").1)
        .collect();
    // Warm up, then time.
    for csr in &csrs {
        ca.sign(csr, 86_400).expect("sign");
    }
    let n: u32 = 10_000;
    let start = Instant::now();
    for i in 0..n as usize {
        ca.sign(&csrs[i % csrs.len()], 86_400).expect("sign");
    }
    let elapsed = start.elapsed();
    println!(
        "ca_sign_core: {n} certificates in {:.3} s = {:.0} signatures/s on one thread ({:.1} us each)",
        elapsed.as_secs_f64(),
        f64::from(n) / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / f64::from(n)
    );
}

async fn start_ca(name: &str, accounts: usize) -> (LocalCa, String) {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ambit-bench-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = CaServerConfig::local(&dir);
    config.listen = "127.0.0.1:0".parse().expect("addr");
    let authz = Arc::new(StaticNodeAuthorizer::new());
    let node = NodeName::new("bench-node");
    for i in 0..accounts {
        authz.add(&node, "bench", &format!("sa-{i}"));
    }
    let ca = LocalCa::start(config, authz).await.expect("local CA");
    let token = ca.add_node(&node).expect("token");
    (ca, token)
}

async fn bench_sign_grpc() {
    let (ca, token) = start_ca("grpc", 64).await;
    let client = Arc::new(
        CaClient::new(ca.client_config(token), ca.trust_bundle().expect("bundle")).expect("client"),
    );
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..64)
            .map(|i| csr::create(&identity(i)).expect("csr").1)
            .collect(),
    );
    client
        .sign(&csrs[0], Duration::from_secs(86_400))
        .await
        .expect("warm up");
    let (workers, per_worker) = (32, 100);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, csrs) = (client.clone(), csrs.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_worker {
                client
                    .sign(&csrs[(w + i) % csrs.len()], Duration::from_secs(86_400))
                    .await
                    .expect("sign over gRPC");
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
    let elapsed = start.elapsed();
    let n = workers * per_worker;
    println!(
        "ca_sign_grpc: {n} certificates over gRPC/TLS 1.3 in {:.3} s = {:.0} signatures/s, client and server on one core",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    let start = Instant::now();
    for i in 0..200 {
        client
            .sign(&csrs[i % csrs.len()], Duration::from_secs(86_400))
            .await
            .expect("sign over gRPC");
    }
    println!(
        "ca_sign_grpc_latency: {:.0} us per sequential request",
        start.elapsed().as_secs_f64() * 1e6 / 200.0
    );
    ca.shutdown().await.expect("shutdown");
}

async fn fetch_all(manager: &CertManager, range: std::ops::Range<usize>) {
    for i in range {
        manager.fetch(&identity(i)).await.expect("fetch");
    }
}

async fn bench_memory() {
    let (small, large) = (100, 1100);
    let (ca, token) = start_ca("memory", large).await;
    let bundle = ca.trust_bundle().expect("bundle");
    let client = CaClient::new(ca.client_config(token), bundle.clone()).expect("client");
    let manager = CertManager::new(Arc::new(client), bundle, ManagerConfig::default());
    fetch_all(&manager, 0..small).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let at_small = LIVE.load(Ordering::Relaxed);
    fetch_all(&manager, small..large).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let at_large = LIVE.load(Ordering::Relaxed);
    let per_identity = (at_large - at_small) as f64 / (large - small) as f64;
    let sample = manager.fetch(&identity(0)).await.expect("cached");
    println!(
        "memory_per_identity: {per_identity:.0} bytes live heap per cached identity ({} identities; of which certificate+key+identity data {} bytes)",
        manager.len(),
        sample.heap_bytes()
    );
    drop(manager);
    ca.shutdown().await.expect("shutdown");
}

fn main() {
    // `cargo bench` passes `--bench`; filters are not supported.
    bench_sign_core();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench_sign_grpc());
    runtime.block_on(bench_memory());
}
