//! The plug-in CA: an operator's root and intermediate made here with rcgen,
//! written in the `cacerts` layout; leaves issued from it verify against the
//! operator's root alone, and each broken directory is refused naming the file.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject};
use time::OffsetDateTime;

use super::*;
use crate::identity::{
    Identity, TrustBundle, WorkloadCert,
    ca::{CertificateAuthority, SigningPolicy},
    csr,
    spiffe::TrustDomain,
};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A CA certificate and its key, as an operator would make them.
struct Ca {
    pem: String,
    key: KeyPair,
    params: CertificateParams,
}

impl Ca {
    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::new(self.params.clone(), &self.key)
    }
}

fn ca_params(name: &str, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "operator");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = OffsetDateTime::now_utc() - DAY;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    params
}

fn root(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = ca_params(name, OffsetDateTime::now_utc() + DAY * 365);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { pem, key, params }
}

fn signed_by(params: CertificateParams, issuer: &Ca) -> Ca {
    let key = KeyPair::generate().unwrap();
    let pem = params.signed_by(&key, &issuer.issuer()).unwrap().pem();
    Ca { pem, key, params }
}

fn intermediate(name: &str, root: &Ca) -> Ca {
    signed_by(ca_params(name, OffsetDateTime::now_utc() + DAY * 30), root)
}

/// A scratch directory for test `name`, emptied first.
fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ambit-cacerts-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the four files: `inter` with its key, `roots`, and the chain
/// intermediate + first root (as Istio's tooling writes it).
fn write(name: &str, inter: &Ca, roots: &[&Ca]) -> PathBuf {
    let dir = tempdir(name);
    fs::write(dir.join(CA_CERT_FILE), &inter.pem).unwrap();
    fs::write(dir.join(CA_KEY_FILE), inter.key.serialize_pem()).unwrap();
    let roots_pem: String = roots.iter().map(|r| r.pem.as_str()).collect();
    fs::write(dir.join(ROOT_CERT_FILE), roots_pem).unwrap();
    fs::write(
        dir.join(CERT_CHAIN_FILE),
        format!("{}{}", inter.pem, roots[0].pem),
    )
    .unwrap();
    dir
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn cart() -> Identity {
    "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()
}

fn load_err(dir: &Path) -> Error {
    let err = Cacerts::load_dir(dir).unwrap_err();
    fs::remove_dir_all(dir).unwrap();
    err
}

#[test]
fn leaves_from_the_intermediate_verify_against_the_operator_root_only() {
    let op_root = root("operator root");
    let inter = intermediate("operator intermediate", &op_root);
    let dir = write("leaf", &inter, &[&op_root]);
    let cacerts = Cacerts::load_dir(&dir).unwrap();
    assert_eq!(cacerts.roots_pem(), vec![op_root.pem.clone()]);
    let ca = CertificateAuthority::from_cacerts(
        cacerts,
        TrustDomain::default(),
        SigningPolicy::default(),
        Vec::new(),
    )
    .unwrap();
    assert_eq!(
        ca.roots_pem(),
        std::slice::from_ref(&op_root.pem),
        "the bundle handed out"
    );

    let (key, csr_pem) = csr::create(&cart()).unwrap();
    let issued = ca.sign(&csr_pem, 3600).unwrap();
    // Leaf, then cert-chain.pem (intermediate, root); the root is not repeated.
    assert_eq!(issued.chain_pem.len(), 3, "{:?}", issued.chain_pem);
    assert_eq!(der(&issued.chain_pem[1]), der(&inter.pem));
    assert_eq!(der(&issued.chain_pem[2]), der(&op_root.pem));

    // A ztunnel trusting only root-cert.pem accepts the leaf as a client...
    let bundle = TrustBundle::from_file(&dir.join(ROOT_CERT_FILE)).unwrap();
    assert_eq!(bundle.len(), 1);
    let verifier = bundle.client_verifier().unwrap();
    let leaf = der(&issued.chain_pem[0]);
    verifier
        .verify_client_cert(&leaf, &[der(&inter.pem)], UnixTime::now())
        .expect("leaf + intermediate chain to the operator's root");
    // ...but not without the intermediate: the chain really goes through it.
    assert!(
        verifier
            .verify_client_cert(&leaf, &[], UnixTime::now())
            .is_err()
    );
    // The certificate manager's checks pass, and it keeps leaf + intermediate.
    let cert = WorkloadCert::from_response(&cart(), &key, &issued.chain_pem, &bundle).unwrap();
    assert_eq!(cert.chain().len(), 2);
    assert_eq!(cert.chain()[1], der(&inter.pem));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_serving_certificate_carries_the_intermediate() {
    let op_root = root("operator root");
    let inter = intermediate("operator intermediate", &op_root);
    let dir = write("serving", &inter, &[&op_root]);
    let ca = CertificateAuthority::from_cacerts(
        Cacerts::load_dir(&dir).unwrap(),
        TrustDomain::default(),
        SigningPolicy::default(),
        Vec::new(),
    )
    .unwrap();
    let (chain, _key) = ca.serving_cert(&["ambit-ca".to_owned()], DAY).unwrap();
    assert_eq!(chain.len(), 3, "leaf then cert-chain.pem");
    assert_eq!(chain[1], der(&inter.pem));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn several_roots_are_trusted_at_once_for_rotation() {
    let old = root("old root");
    let new = root("new root");
    let inter = intermediate("intermediate under the new root", &new);
    // root-cert.pem: old and new; the intermediate chains to the second.
    let dir = write("rotation", &inter, &[&new, &old]);
    fs::write(
        dir.join(ROOT_CERT_FILE),
        format!("{}\n{}", old.pem, new.pem),
    )
    .unwrap();
    let ca = CertificateAuthority::from_cacerts(
        Cacerts::load_dir(&dir).unwrap(),
        TrustDomain::default(),
        SigningPolicy::default(),
        Vec::new(),
    )
    .unwrap();
    let roots: Vec<_> = ca.roots_pem().iter().map(|p| der(p)).collect();
    assert_eq!(roots, [der(&old.pem), der(&new.pem)]);
    let (_, csr_pem) = csr::create(&cart()).unwrap();
    let issued = ca.sign(&csr_pem, 60).unwrap();
    // Leaf, intermediate, new root (from cert-chain.pem), then the old root.
    let served: Vec<_> = issued.chain_pem[1..].iter().map(|p| der(p)).collect();
    assert_eq!(served, [der(&inter.pem), der(&new.pem), der(&old.pem)]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_two_level_chain_is_followed_to_the_root() {
    let op_root = root("operator root");
    let middle = intermediate("regional CA", &op_root);
    let inter = intermediate("cluster CA", &middle);
    let dir = write("two-level", &inter, &[&op_root]);
    fs::write(
        dir.join(CERT_CHAIN_FILE),
        format!("{}{}{}", inter.pem, middle.pem, op_root.pem),
    )
    .unwrap();
    let ca = CertificateAuthority::from_cacerts(
        Cacerts::load_dir(&dir).unwrap(),
        TrustDomain::default(),
        SigningPolicy::default(),
        Vec::new(),
    )
    .unwrap();
    let (key, csr_pem) = csr::create(&cart()).unwrap();
    let issued = ca.sign(&csr_pem, 60).unwrap();
    let bundle = TrustBundle::from_pem(op_root.pem.as_bytes(), "root").unwrap();
    WorkloadCert::from_response(&cart(), &key, &issued.chain_pem, &bundle).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn each_missing_file_is_named() {
    let op_root = root("root");
    let inter = intermediate("intermediate", &op_root);
    for file in [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        let dir = write(&format!("missing-{file}"), &inter, &[&op_root]);
        fs::remove_file(dir.join(file)).unwrap();
        let err = load_err(&dir);
        assert!(
            matches!(&err, Error::Missing { path } if path.ends_with(file)),
            "{file}: {err:?}"
        );
        assert!(
            err.to_string().contains(&format!("{file} does not exist")),
            "{err}"
        );
    }
}

#[test]
fn an_unreadable_file_is_named() {
    let op_root = root("root");
    let inter = intermediate("intermediate", &op_root);
    let dir = write("unreadable", &inter, &[&op_root]);
    // A directory where the key should be: exists, but cannot be read as a file.
    fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
    fs::create_dir(dir.join(CA_KEY_FILE)).unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(&err, Error::Read { path, .. } if path.ends_with(CA_KEY_FILE)),
        "{err:?}"
    );
}

#[test]
fn pem_that_does_not_parse_is_named() {
    let op_root = root("root");
    let inter = intermediate("intermediate", &op_root);
    for file in [CA_CERT_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        let dir = write(&format!("garbage-{file}"), &inter, &[&op_root]);
        fs::write(
            dir.join(file),
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load_err(&dir);
        let text = crate::identity::error_chain(&err);
        assert!(text.contains(file), "{file}: {text}");
        assert!(
            matches!(err, Error::Pem { .. } | Error::Roots { .. }),
            "{file}: {err:?}"
        );
    }
    let dir = write("garbage-key", &inter, &[&op_root]);
    fs::write(dir.join(CA_KEY_FILE), "not a key").unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(&err, Error::Key { path, .. } if path.ends_with(CA_KEY_FILE)),
        "{err:?}"
    );
    let dir = write("empty-cert", &inter, &[&op_root]);
    fs::write(dir.join(CA_CERT_FILE), "").unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(&err, Error::Count { path, found: 0, .. } if path.ends_with(CA_CERT_FILE)),
        "{err:?}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let op_root = root("root");
    let inter = intermediate("intermediate", &op_root);
    let dir = write("mismatch", &inter, &[&op_root]);
    fs::write(
        dir.join(CA_KEY_FILE),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err:?}");
    assert!(
        err.to_string().contains("ca-key.pem is not the key of")
            && err.to_string().ends_with("ca-cert.pem"),
        "{err}"
    );
}

#[test]
fn a_leaf_as_intermediate_is_refused() {
    let op_root = root("root");
    let mut params = ca_params("not a CA", OffsetDateTime::now_utc() + DAY);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = signed_by(params, &op_root);
    let dir = write("not-ca", &leaf, &[&op_root]);
    let err = load_err(&dir);
    assert!(
        matches!(&err, Error::NotCa { path, .. } if path.ends_with(CA_CERT_FILE)),
        "{err:?}"
    );
    assert!(err.to_string().contains("basic constraints"), "{err}");
}

#[test]
fn an_intermediate_of_another_root_is_refused() {
    let op_root = root("operator root");
    let stranger = root("someone else's root");
    let inter = intermediate("intermediate", &stranger);
    let dir = write("other-root", &inter, &[&op_root]);
    let err = load_err(&dir);
    assert!(matches!(err, Error::Unrooted { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("ca-cert.pem is not signed by a certificate of")
            && text.contains("root-cert.pem"),
        "{text}"
    );
}

#[test]
fn a_forged_intermediate_with_the_right_issuer_name_is_refused() {
    // Same subject as the operator's root, different key: the names match, the
    // signature does not.
    let op_root = root("operator root");
    let forger = root("operator root");
    let inter = intermediate("intermediate", &forger);
    let dir = write("forged", &inter, &[&op_root]);
    let err = load_err(&dir);
    assert!(matches!(err, Error::Unrooted { .. }), "{err:?}");
}

#[test]
fn an_expired_intermediate_is_refused() {
    let op_root = root("root");
    let mut params = ca_params("expired", OffsetDateTime::now_utc() - DAY / 2);
    params.not_before = OffsetDateTime::now_utc() - DAY * 2;
    let inter = signed_by(params, &op_root);
    let dir = write("expired", &inter, &[&op_root]);
    let err = load_err(&dir);
    assert!(
        matches!(&err, Error::Expired { path, .. } if path.ends_with(CA_CERT_FILE)),
        "{err:?}"
    );
    assert!(err.to_string().contains("is not valid now"), "{err}");
}

#[test]
fn a_chain_that_does_not_start_with_the_intermediate_is_refused() {
    let op_root = root("root");
    let inter = intermediate("intermediate", &op_root);
    let dir = write("chain-start", &inter, &[&op_root]);
    fs::write(dir.join(CERT_CHAIN_FILE), &op_root.pem).unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, Error::ChainStart { .. }), "{err:?}");
    assert!(err.to_string().contains("cert-chain.pem"), "{err}");
}

#[test]
fn a_non_ca_in_root_cert_is_refused() {
    let op_root = root("root");
    let inter = intermediate("intermediate", &op_root);
    let dir = write("root-not-ca", &inter, &[&op_root]);
    // The intermediate's own certificate is a CA; a leaf is not.
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["x".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    fs::write(dir.join(ROOT_CERT_FILE), leaf.pem()).unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(&err, Error::Roots { path, .. } if path.ends_with(ROOT_CERT_FILE)),
        "{err:?}"
    );
}

#[test]
fn debug_never_prints_the_key() {
    let op_root = root("root");
    let inter = intermediate("intermediate", &op_root);
    let dir = write("debug", &inter, &[&op_root]);
    let cacerts = Cacerts::load_dir(&dir).unwrap();
    let text = format!("{cacerts:?}");
    assert!(!text.contains("PRIVATE"), "{text}");
    fs::remove_dir_all(&dir).unwrap();
}
