//! The mesh CA over its real gRPC API on loopback (TLS 1.3), with the local-mode
//! node token file and an in-memory node authorizer: authorization decisions,
//! audit lines, the certificate manager's rotation, and CA outages.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rustls_pki_types::{CertificateDer, pem::PemObject};
use x509_parser::{extensions::GeneralName, prelude::*};
use ztunnel::identity::{
    CertManager, Identity, ManagerConfig, TrustBundle,
    auth::{NodeName, StaticNodeAuthorizer},
    ca::{LocalCa, server::CaServerConfig},
    client::{self, CaClient, CertificateSigner},
    csr,
};

/// A scratch directory for test `name`, inside cargo's target directory (not
/// /tmp) and emptied first, so runs do not pile up leftovers.
fn tempdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ambit-ca-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

struct Mesh {
    ca: LocalCa,
    authz: Arc<StaticNodeAuthorizer>,
    config: CaServerConfig,
}

impl Mesh {
    async fn start(name: &str, max_validity: Duration) -> Self {
        let mut config = CaServerConfig::local(tempdir(name));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.max_validity = max_validity;
        config.default_validity = max_validity;
        let authz = Arc::new(StaticNodeAuthorizer::new());
        let ca = LocalCa::start(config.clone(), authz.clone()).await.unwrap();
        config.listen = ca.addr();
        Self { ca, authz, config }
    }

    fn client(&self, token: &str) -> CaClient {
        CaClient::new(
            self.ca.client_config(token.to_owned()),
            self.ca.trust_bundle().unwrap(),
        )
        .unwrap()
    }

    /// Stops the CA, keeping its directory and address for a restart.
    async fn stop(self) -> (CaServerConfig, Arc<StaticNodeAuthorizer>) {
        self.ca.shutdown().await.unwrap();
        (self.config, self.authz)
    }
}

fn cart() -> Identity {
    "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()
}

fn rpc_code(err: &client::Error) -> tonic::Code {
    match err {
        client::Error::Rpc { code, .. } => *code,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// Captures log lines of the current thread (tests run on a current-thread runtime,
/// so the server's tasks log here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_authorized_node_gets_a_chain_that_verifies_against_the_bundle() {
    let logs = Logs::default();
    let _guard = logs.install();
    let mesh = Mesh::start("authorized", Duration::from_secs(3600)).await;
    let node = NodeName::new("node-a");
    mesh.authz.add(&node, "shop", "cart");
    let token = mesh.ca.add_node(&node).unwrap();

    let (key, csr_pem) = csr::create(&cart()).unwrap();
    let chain = mesh
        .client(&token)
        .sign(&csr_pem, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf first, root last");

    let bundle = mesh.ca.trust_bundle().unwrap();
    let leaf_der = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    let root_der = CertificateDer::from_pem_slice(chain[1].as_bytes()).unwrap();
    assert_eq!(bundle.certificates(), vec![root_der.clone()]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://cluster.local/ns/shop/sa/cart")]
    );
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(
        lifetime,
        600 + 60,
        "600 s from now, valid from a minute ago"
    );
    // The manager's own checks (key, SAN, chain to the bundle) accept it too.
    ztunnel::identity::WorkloadCert::from_response(&cart(), &key, &chain, &bundle).unwrap();

    let logs = logs.text();
    assert!(logs.contains("certificate issued"), "{logs}");
    assert!(logs.contains("decision=\"allow\""), "{logs}");
    assert!(logs.contains("node=node-a"), "{logs}");
}

#[tokio::test]
async fn a_node_without_a_pod_of_the_service_account_is_denied() {
    let logs = Logs::default();
    let _guard = logs.install();
    let mesh = Mesh::start("denied", Duration::from_secs(3600)).await;
    let (a, b) = (NodeName::new("node-a"), NodeName::new("node-b"));
    mesh.authz.add(&a, "shop", "cart");
    let token_b = mesh.ca.add_node(&b).unwrap();
    let token_a = mesh.ca.add_node(&a).unwrap();

    // node-b asks for cart, whose pod runs on node-a.
    let (_, csr_pem) = csr::create(&cart()).unwrap();
    let err = mesh
        .client(&token_b)
        .sign(&csr_pem, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(rpc_code(&err), tonic::Code::PermissionDenied);
    assert!(
        err.to_string().contains(
            "node node-b may not obtain a certificate for spiffe://cluster.local/ns/shop/sa/cart"
        ),
        "{err}"
    );
    // node-a asks for a service account it has no pod of.
    let admin: Identity = "spiffe://cluster.local/ns/shop/sa/admin".parse().unwrap();
    let (_, csr_pem) = csr::create(&admin).unwrap();
    let err = mesh
        .client(&token_a)
        .sign(&csr_pem, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(rpc_code(&err), tonic::Code::PermissionDenied);

    let logs = logs.text();
    let line = logs
        .lines()
        .find(|l| l.contains("certificate request refused") && l.contains("node-b"))
        .unwrap_or_else(|| panic!("no audit line in {logs}"));
    assert!(line.contains("audit"), "{line}");
    assert!(line.contains("decision=\"deny\""), "{line}");
    assert!(
        line.contains("identity=\"spiffe://cluster.local/ns/shop/sa/cart\""),
        "{line}"
    );
    assert!(
        line.contains("no pod of service account shop/cart"),
        "{line}"
    );
}

#[tokio::test]
async fn a_workload_token_gets_its_own_identity_and_nothing_else() {
    let logs = Logs::default();
    let _guard = logs.install();
    let mesh = Mesh::start("workload", Duration::from_secs(3600)).await;
    let token = mesh.ca.add_workload("shop", "waypoint").unwrap();
    let own: Identity = "spiffe://cluster.local/ns/shop/sa/waypoint"
        .parse()
        .unwrap();
    let (_, own_csr) = csr::create(&own).unwrap();
    let chain = mesh
        .client(&token)
        .sign(&own_csr, Duration::from_secs(60))
        .await
        .expect("its own identity");
    assert_eq!(chain.len(), 2);
    // Not another identity, even one with pods on every node.
    mesh.authz.add(&NodeName::new("node-a"), "shop", "cart");
    let (_, cart_csr) = csr::create(&cart()).unwrap();
    let err = mesh
        .client(&token)
        .sign(&cart_csr, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(rpc_code(&err), tonic::Code::PermissionDenied, "{err}");
    assert!(
        err.to_string()
            .contains("a workload may only obtain its own identity (shop/waypoint)"),
        "{err}"
    );
    let logs = logs.text();
    assert!(logs.contains("workload=shop/waypoint"), "{logs}");
}

#[tokio::test]
async fn invalid_tokens_and_csrs_are_refused() {
    let logs = Logs::default();
    let _guard = logs.install();
    let mesh = Mesh::start("tokens", Duration::from_secs(3600)).await;
    let node = NodeName::new("node-a");
    mesh.authz.add(&node, "shop", "cart");
    let token = mesh.ca.add_node(&node).unwrap();
    let (_, csr_pem) = csr::create(&cart()).unwrap();

    for bad in ["not-a-known-token-at-all", ""] {
        let err = mesh
            .client(bad)
            .sign(&csr_pem, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(rpc_code(&err), tonic::Code::Unauthenticated, "{err}");
    }
    let logs_text = logs.text();
    assert!(
        logs_text.contains("decision=\"unauthenticated\""),
        "{logs_text}"
    );
    assert!(
        !logs_text.contains("not-a-known-token-at-all"),
        "tokens are never logged"
    );

    let err = mesh
        .client(&token)
        .sign("garbage", Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(rpc_code(&err), tonic::Code::InvalidArgument);
    assert!(
        err.to_string()
            .contains("not a PEM-encoded CERTIFICATE REQUEST"),
        "{err}"
    );

    // A CSR asking for CA powers is refused, not signed.
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(cart().to_string().try_into().unwrap())];
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let ca_csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let err = mesh
        .client(&token)
        .sign(&ca_csr, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(rpc_code(&err), tonic::Code::InvalidArgument);
    assert!(err.to_string().contains("CA powers"), "{err}");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_cannot_connect() {
    let mesh = Mesh::start("untrusted", Duration::from_secs(3600)).await;
    let token = mesh.ca.add_node(&NodeName::new("n")).unwrap();
    let other = ztunnel::identity::ca::RootCa::generate(
        &ztunnel::identity::TrustDomain::default(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let wrong = TrustBundle::from_pem(other.cert_pem().as_bytes(), "other").unwrap();
    let client = CaClient::new(mesh.ca.client_config(token), wrong).unwrap();
    let (_, csr_pem) = csr::create(&cart()).unwrap();
    let err = client
        .sign(&csr_pem, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(rpc_code(&err), tonic::Code::Unavailable, "{err}");
}

fn manager(mesh: &Mesh, token: &str, validity: Duration) -> CertManager {
    CertManager::new(
        Arc::new(mesh.client(token)),
        mesh.ca.trust_bundle().unwrap(),
        ManagerConfig {
            validity,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        },
    )
}

async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

#[tokio::test]
async fn the_manager_caches_and_rotates_before_expiry() {
    let mesh = Mesh::start("rotate", Duration::from_secs(4)).await;
    let node = NodeName::new("node-a");
    mesh.authz.add(&node, "shop", "cart");
    let token = mesh.ca.add_node(&node).unwrap();
    let manager = manager(&mesh, &token, Duration::from_secs(4));

    let first = manager.fetch(&cart()).await.unwrap();
    assert_eq!(first.identity(), &cart());
    let again = manager.fetch(&cart()).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "cached");
    let snap = manager.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].state, "available");
    assert_eq!(snap[0].serial.as_deref(), Some(first.serial()));
    assert!(!format!("{first:?}").contains("PRIVATE"), "no key in Debug");

    // Rotation happens at about half life, before the first certificate expires.
    let rotated = wait_until(Duration::from_secs(4), || {
        manager.snapshot()[0].serial.as_deref() != Some(first.serial())
    })
    .await;
    assert!(rotated, "no rotation within the certificate's lifetime");
    assert!(
        SystemTime::now() < first.not_after(),
        "rotated before expiry"
    );
    let second = manager.fetch(&cart()).await.unwrap();
    assert_ne!(second.serial(), first.serial());
    assert!(second.not_after() > first.not_after());
}

#[tokio::test]
async fn a_ca_outage_keeps_existing_identities_until_expiry_and_recovers() {
    let mesh = Mesh::start("outage", Duration::from_secs(4)).await;
    let node = NodeName::new("node-a");
    mesh.authz.add(&node, "shop", "cart");
    let token = mesh.ca.add_node(&node).unwrap();
    let manager = manager(&mesh, &token, Duration::from_secs(4));
    let first = manager.fetch(&cart()).await.unwrap();

    let (config, authz) = mesh.stop().await;
    // Renewal fails from half life on; the current certificate stays in use.
    let failing = wait_until(Duration::from_secs(4), || {
        manager.snapshot()[0].state == "renewal_failing"
    })
    .await;
    assert!(failing, "{:?}", manager.snapshot());
    let during = manager.fetch(&cart()).await.unwrap();
    assert_eq!(during.serial(), first.serial());
    assert!(manager.snapshot()[0].last_error.is_some());

    // Past expiry, with the CA still down, there is no certificate.
    let remaining = first
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(remaining + Duration::from_millis(100)).await;
    let err = manager.fetch(&cart()).await.unwrap_err();
    assert!(
        err.to_string().contains("no certificate is available for"),
        "{err}"
    );

    // The CA comes back on the same address with the same root: the manager recovers.
    let ca = LocalCa::start(config, authz).await.unwrap();
    let recovered = wait_until(Duration::from_secs(5), || {
        manager.snapshot()[0].state == "available"
    })
    .await;
    assert!(recovered, "{:?}", manager.snapshot());
    let fresh = manager.fetch(&cart()).await.unwrap();
    assert_ne!(fresh.serial(), first.serial());
    ca.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_first_request_for_a_denied_identity_fails_fast() {
    let mesh = Mesh::start("first-denied", Duration::from_secs(3600)).await;
    let token = mesh.ca.add_node(&NodeName::new("node-a")).unwrap();
    let manager = manager(&mesh, &token, Duration::from_secs(60));
    let err = manager.fetch(&cart()).await.unwrap_err();
    assert!(err.to_string().contains("PermissionDenied"), "{err}");
    assert_eq!(manager.snapshot()[0].state, "unavailable");
    manager.forget(&cart());
    assert!(manager.is_empty());
}

#[tokio::test]
async fn extra_roots_are_handed_out_and_a_bad_extra_roots_file_stops_the_ca() {
    let old = ztunnel::identity::ca::RootCa::generate(
        &ztunnel::identity::TrustDomain::default(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let dir = tempdir("extra-roots");
    std::fs::create_dir_all(&dir).unwrap();
    let extra = dir.join("old-roots.pem");
    std::fs::write(&extra, old.cert_pem()).unwrap();
    let mut config = CaServerConfig::local(dir.join("ca"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.extra_roots_file = Some(extra.clone());
    let authz = Arc::new(StaticNodeAuthorizer::new());
    let node = NodeName::new("node-a");
    authz.add(&node, "shop", "cart");
    let ca = LocalCa::start(config.clone(), authz.clone()).await.unwrap();
    // The written bundle trusts both roots; chains end with both.
    let bundle = ca.trust_bundle().unwrap();
    assert_eq!(bundle.len(), 2);
    let token = ca.add_node(&node).unwrap();
    let client = CaClient::new(ca.client_config(token), bundle).unwrap();
    let (_, csr_pem) = csr::create(&cart()).unwrap();
    let chain = client
        .sign(&csr_pem, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[2], old.cert_pem());
    ca.shutdown().await.unwrap();

    std::fs::write(&extra, "not a certificate").unwrap();
    let err = LocalCa::start(config, authz).await.unwrap_err();
    assert_eq!(err.to_string(), "cannot start the local CA");
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    while let Some(e) = source {
        chain.push_str(&e.to_string());
        chain.push_str(": ");
        source = e.source();
    }
    assert!(
        chain.contains("old-roots.pem holds no certificate"),
        "{chain}"
    );
}
