//! Trust bundles: parsing, refusal of bad input, reloading, and root rotation at
//! the TLS layer (peers with leaves from either of two roots interoperate).

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use x509_parser::{extensions::GeneralName, prelude::X509Certificate};

use super::*;
use crate::identity::{
    Identity, TrustDomain, WorkloadCert,
    ca::{CertificateAuthority, RootCa, SigningPolicy},
    csr,
};

const HOUR: Duration = Duration::from_secs(3600);

fn root() -> RootCa {
    RootCa::generate(&TrustDomain::default(), HOUR).unwrap()
}

fn pem_of(roots: &[&RootCa]) -> Vec<u8> {
    roots
        .iter()
        .map(|r| r.cert_pem().to_owned())
        .collect::<String>()
        .into_bytes()
}

#[test]
fn holds_several_roots() {
    let (a, b) = (root(), root());
    let bundle = TrustBundle::from_pem(&pem_of(&[&a, &b]), "test").unwrap();
    assert_eq!(bundle.len(), 2);
    assert_eq!(bundle.certificates()[1], *b.cert_der());
    assert_eq!(bundle.root_store().len(), 2);
    bundle.client_verifier().unwrap();
    bundle.server_verifier().unwrap();
}

#[test]
fn bad_bundles_are_refused_with_the_source_and_position() {
    let a = root();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["x".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            Vec::new(),
            "the trust bundle roots.pem holds no certificate",
        ),
        (
            b"hello".to_vec(),
            "the trust bundle roots.pem holds no certificate",
        ),
        (
            format!("{}{leaf}", a.cert_pem()).into_bytes(),
            "certificate 2 of the trust bundle roots.pem is unusable as a root: it is not a CA certificate",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            "certificate 1 of the trust bundle roots.pem is unusable as a root: not X.509",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".to_vec(),
            "the trust bundle roots.pem is not valid PEM",
        ),
    ];
    for (pem, expected) in cases {
        let err = TrustBundle::from_pem(&pem, "roots.pem").unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[test]
fn an_expired_only_bundle_is_refused() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let old = params.self_signed(&key).unwrap().pem();
    let err = TrustBundle::from_pem(old.as_bytes(), "old.pem").unwrap_err();
    assert!(matches!(err, Error::NoneValid { .. }), "{err}");
    // Beside a valid root it is kept (it verifies nothing, and rotation may leave it).
    let bundle =
        TrustBundle::from_pem(format!("{old}{}", root().cert_pem()).as_bytes(), "b").unwrap();
    assert_eq!(bundle.len(), 2);
}

#[test]
fn a_bad_replacement_keeps_the_current_roots() {
    let a = root();
    let bundle = TrustBundle::from_pem(&pem_of(&[&a]), "a").unwrap();
    let shared = bundle.clone();
    assert!(bundle.replace_pem(b"junk", "junk").is_err());
    assert_eq!(shared.certificates(), vec![a.cert_der().clone()]);
    let b = root();
    bundle.replace_pem(&pem_of(&[&a, &b]), "ab").unwrap();
    assert_eq!(shared.len(), 2, "clones share the roots");
}

#[tokio::test]
async fn the_watcher_reloads_a_changed_file_and_ignores_a_broken_one() {
    let path = std::env::temp_dir().join(format!("ambit-bundle-{}.pem", std::process::id()));
    let (a, b) = (root(), root());
    std::fs::write(&path, pem_of(&[&a])).unwrap();
    let bundle = TrustBundle::from_file(&path).unwrap();
    let watcher =
        tokio::spawn(BundleWatcher::new(bundle.clone(), &path, Duration::from_millis(20)).run());
    std::fs::write(&path, pem_of(&[&a, &b])).unwrap();
    wait_for(|| bundle.len() == 2).await;
    std::fs::write(&path, b"broken").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(bundle.len(), 2, "a broken file keeps the last good roots");
    std::fs::write(&path, pem_of(&[&b])).unwrap();
    wait_for(|| bundle.certificates() == vec![b.cert_der().clone()]).await;
    watcher.abort();
    std::fs::remove_file(&path).unwrap();
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 2 s");
}

// === root rotation at the TLS layer ===

/// A leaf for `identity` issued by a CA on `root`, through the real CSR path.
fn leaf(root: RootCa, identity: &Identity, bundle: &TrustBundle) -> WorkloadCert {
    crate::identity::testing::leaf(&crate::identity::testing::ca(root), identity, bundle)
}

fn uri_san(cert: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    let (_, cert) = X509Certificate::from_der(cert).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    match &san.value.general_names[..] {
        [GeneralName::URI(uri)] => (*uri).to_owned(),
        other => panic!("unexpected SANs {other:?}"),
    }
}

/// One mutual-TLS 1.3 exchange over loopback; returns the identity each side saw.
async fn handshake(
    server_cert: &WorkloadCert,
    server_bundle: &TrustBundle,
    client_cert: &WorkloadCert,
    client_bundle: &TrustBundle,
) -> Result<(String, String), String> {
    // The HBONE configurations: TLS 1.3, client certificates, secure naming.
    let server_config = crate::hbone::server_config(server_cert, server_bundle).unwrap();
    let client_config =
        crate::hbone::client_config(client_cert, client_bundle, server_cert.identity()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(server_config)
            .accept(tcp)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let peer = uri_san(&tls.get_ref().1.peer_certificates().unwrap()[0]);
        tls.write_all(b"hi").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = async {
        let mut tls = tokio_rustls::TlsConnector::from(client_config)
            .connect(ServerName::try_from("peer").unwrap(), tcp)
            .await
            .map_err(|e| format!("client: {e}"))?;
        let seen = uri_san(&tls.get_ref().1.peer_certificates().unwrap()[0]);
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        assert_eq!(buf, b"hi");
        Ok::<_, String>(seen)
    };
    let client_result = client.await;
    let server_result = server.await.unwrap();
    Ok((server_result?, client_result?))
}

#[tokio::test]
async fn peers_with_leaves_from_either_root_interoperate() {
    let (old, new) = (root(), root());
    let both = TrustBundle::from_pem(&pem_of(&[&old, &new]), "both").unwrap();
    let only_old = TrustBundle::from_pem(&pem_of(&[&old]), "old").unwrap();
    let cart: Identity = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
    let pay: Identity = "spiffe://cluster.local/ns/shop/sa/payments"
        .parse()
        .unwrap();
    let cart_old = leaf(old, &cart, &both);
    let pay_new = leaf(new, &pay, &both);

    // Old-root server, new-root client, and the other way round: both work.
    let (server_saw, client_saw) = handshake(&cart_old, &both, &pay_new, &both).await.unwrap();
    assert_eq!(server_saw, pay.to_string());
    assert_eq!(client_saw, cart.to_string());
    let (server_saw, client_saw) = handshake(&pay_new, &both, &cart_old, &both).await.unwrap();
    assert_eq!(server_saw, cart.to_string());
    assert_eq!(client_saw, pay.to_string());

    // A peer that trusts only the old root refuses a new-root leaf: the bundle matters.
    let err = handshake(&cart_old, &only_old, &pay_new, &both)
        .await
        .unwrap_err();
    assert!(err.contains("server"), "{err}");
    // And the manager's check refuses a leaf of a root outside its bundle.
    let foreign_leaf = {
        let fresh = root();
        let ca = CertificateAuthority::new(
            fresh,
            TrustDomain::default(),
            SigningPolicy::default(),
            Vec::new(),
        )
        .unwrap();
        let (key, csr_pem) = csr::create(&pay).unwrap();
        let issued = ca.sign(&csr_pem, 60).unwrap();
        WorkloadCert::from_response(&pay, &key, &issued.chain_pem, &only_old)
    };
    let err = foreign_leaf.unwrap_err();
    assert!(
        err.to_string()
            .contains("does not chain to the trust bundle"),
        "{err}"
    );
}
