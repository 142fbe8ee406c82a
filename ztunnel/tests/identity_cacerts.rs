//! `ztunnel ca --cacerts-dir` over its real gRPC API on loopback: an operator's
//! root and intermediate made here with rcgen, in Istio's `cacerts` layout. A
//! client trusting only `root-cert.pem` reaches the CA (its serving chain carries
//! the intermediate) and gets leaves that chain to that root through the
//! intermediate; a broken directory stops the CA with the file named.

use std::{path::PathBuf, sync::Arc, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject};
use time::OffsetDateTime;
use ztunnel::identity::{
    Identity, TrustBundle, WorkloadCert,
    auth::{NodeName, StaticNodeAuthorizer},
    ca::server::{self, CaServerConfig, RootSource},
    client::{self, CaClient, CaClientConfig, CertificateSigner, TokenSource},
    csr,
};

const DAY: Duration = Duration::from_secs(24 * 3600);
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A scratch directory for test `name`, inside cargo's target directory.
fn tempdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ambit-cacerts-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = OffsetDateTime::now_utc() - DAY;
    params.not_after = OffsetDateTime::now_utc() + DAY * 30;
    params
}

/// The operator's material: `(root PEM, intermediate PEM, intermediate key)`,
/// the intermediate signed by `signer` (default: the root).
fn operator(signer: Option<(&CertificateParams, &KeyPair)>) -> (String, String, KeyPair) {
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("operator root");
    let root_pem = root_params.self_signed(&root_key).unwrap().pem();
    let inter_key = KeyPair::generate().unwrap();
    let issuer = match signer {
        Some((params, key)) => Issuer::new(params.clone(), key),
        None => Issuer::new(root_params, &root_key),
    };
    let inter_pem = ca_params("operator intermediate")
        .signed_by(&inter_key, &issuer)
        .unwrap()
        .pem();
    (root_pem, inter_pem, inter_key)
}

/// Writes `cacerts/` and `tokens` under a scratch directory; returns the config.
fn config(name: &str, root: &str, inter: &str, key: &KeyPair) -> CaServerConfig {
    let dir = tempdir(name);
    let cacerts = dir.join("cacerts");
    std::fs::create_dir_all(&cacerts).unwrap();
    std::fs::write(cacerts.join("ca-cert.pem"), inter).unwrap();
    std::fs::write(cacerts.join("ca-key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(cacerts.join("root-cert.pem"), root).unwrap();
    std::fs::write(cacerts.join("cert-chain.pem"), format!("{inter}{root}")).unwrap();
    std::fs::write(dir.join("tokens"), format!("{TOKEN} node-a\n")).unwrap();
    let mut config = CaServerConfig::local(&dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.root = RootSource::Cacerts(cacerts);
    config.trust_domain = "mesh.example".to_owned();
    config
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn a_client_trusting_only_the_operator_root_gets_leaves_through_the_intermediate() {
    let (root, inter, key) = operator(None);
    let config = config("served", &root, &inter, &key);
    let authz = Arc::new(StaticNodeAuthorizer::new());
    authz.add(&NodeName::new("node-a"), "shop", "cart");
    let server = server::build(&config, authz, None).await.unwrap();
    let addr = server.local_addr().unwrap();
    assert_eq!(
        server.roots_pem(),
        std::slice::from_ref(&root),
        "the bundle handed out"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    // The client trusts root-cert.pem only: the TLS handshake with the CA
    // succeeds only if the serving chain carries the intermediate.
    let bundle = TrustBundle::from_pem(root.as_bytes(), "root-cert.pem").unwrap();
    let client = CaClient::new(
        CaClientConfig {
            address: addr.to_string(),
            server_name: "ambit-ca".to_owned(),
            token: TokenSource::Static(TOKEN.to_owned()),
            timeout: Duration::from_secs(10),
        },
        bundle.clone(),
    )
    .unwrap();
    let cart: Identity = "spiffe://mesh.example/ns/shop/sa/cart".parse().unwrap();
    let (leaf_key, csr_pem) = csr::create(&cart).unwrap();
    let chain = client
        .sign(&csr_pem, Duration::from_secs(600))
        .await
        .expect("the CA answers a client that trusts only the operator root");
    assert_eq!(chain.len(), 3, "leaf, intermediate, root: {chain:?}");
    assert_eq!(der(&chain[1]), der(&inter));
    assert_eq!(der(&chain[2]), der(&root));
    bundle
        .client_verifier()
        .unwrap()
        .verify_client_cert(&der(&chain[0]), &[der(&chain[1])], UnixTime::now())
        .expect("a ztunnel trusting the operator root accepts the leaf");
    let cert = WorkloadCert::from_response(&cart, &leaf_key, &chain, &bundle).unwrap();
    assert_eq!(
        cert.chain().len(),
        2,
        "leaf + intermediate kept for handshakes"
    );

    // The trust domain is the configured one: cluster.local is refused.
    let other: Identity = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
    let (_, csr_pem) = csr::create(&other).unwrap();
    let err = client
        .sign(&csr_pem, Duration::from_secs(600))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            client::Error::Rpc {
                code: tonic::Code::InvalidArgument,
                ..
            }
        ),
        "{err:?}"
    );

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_intermediate_of_another_root_stops_the_ca_naming_the_files() {
    let stranger_key = KeyPair::generate().unwrap();
    let stranger = ca_params("someone else's root");
    let (root, inter, key) = operator(Some((&stranger, &stranger_key)));
    let config = config("unrooted", &root, &inter, &key);
    let err = server::build(&config, Arc::new(StaticNodeAuthorizer::new()), None)
        .await
        .err()
        .expect("refused");
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        text.contains("cannot load the plug-in CA from its cacerts directory"),
        "{text}"
    );
    assert!(
        text.contains("ca-cert.pem is not signed by a certificate of"),
        "{text}"
    );
    assert!(text.contains("root-cert.pem"), "{text}");
}
