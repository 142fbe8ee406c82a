//! The signing core: what a leaf contains, validity bounds, policy checks.

use std::time::Duration;

use rcgen::PublicKeyData;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use test_case::test_case;
use x509_parser::{
    extensions::GeneralName,
    prelude::{FromDer, X509Certificate},
};

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn ca_with(policy: SigningPolicy) -> (CertificateAuthority, CertificateDer<'static>) {
    let td = TrustDomain::default();
    let root = RootCa::generate(&td, HOUR * 24).unwrap();
    let root_der = root.cert_der().clone();
    (
        CertificateAuthority::new(root, td, policy, Vec::new()).unwrap(),
        root_der,
    )
}

fn ca() -> (CertificateAuthority, CertificateDer<'static>) {
    ca_with(SigningPolicy::default())
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn identity() -> Identity {
    "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()
}

#[test]
fn leaf_carries_only_the_spiffe_uri_and_leaf_powers() {
    let (ca, root_der) = ca();
    let (key, csr_pem) = csr::create(&identity()).unwrap();
    let issued = ca.sign(&csr_pem, 3600).unwrap();
    assert_eq!(issued.identity, identity());
    assert_eq!(issued.chain_pem.len(), 2, "leaf then root");
    assert_eq!(der(&issued.chain_pem[1]), root_der);

    let leaf_der = der(&issued.chain_pem[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(leaf.issuer(), root.subject());
    assert_eq!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    assert!(!leaf.is_ca());
    let bc = leaf.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN is critical when the subject is empty");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://cluster.local/ns/shop/sa/cart")]
    );
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign() && !ku.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any);
    let serial_hex: String = leaf
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(issued.serial_hex, serial_hex);
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(lifetime, 3600 + 60, "valid from one minute before issuance");
}

#[test]
fn a_refused_csr_is_never_signed() {
    let (ca, _) = ca();
    let err = ca.sign("garbage", 60).unwrap_err();
    assert!(matches!(err, Error::Csr(_)), "{err:?}");
}

#[test]
fn serials_are_unique() {
    let (ca, _) = ca();
    let (_, csr_pem) = csr::create(&identity()).unwrap();
    let serials: std::collections::HashSet<String> = (0..50)
        .map(|_| ca.sign(&csr_pem, 60).unwrap().serial_hex)
        .collect();
    assert_eq!(serials.len(), 50);
}

#[test_case(0, 24 * 3600 ; "zero means the default")]
#[test_case(-5, 24 * 3600 ; "negative means the default")]
#[test_case(1, 1 ; "one second")]
#[test_case(3600, 3600 ; "as requested")]
#[test_case(7 * 24 * 3600, 7 * 24 * 3600 ; "the maximum")]
#[test_case(7 * 24 * 3600 + 1, 7 * 24 * 3600 ; "clamped to the maximum")]
#[test_case(i64::MAX, 7 * 24 * 3600 ; "huge is clamped")]
fn validity_is_bounded(requested: i64, expected_secs: u64) {
    let policy = SigningPolicy::default();
    assert_eq!(
        policy.validity_for(requested),
        Duration::from_secs(expected_secs)
    );
}

#[test]
fn issued_lifetime_follows_a_custom_maximum() {
    let (ca, _) = ca_with(SigningPolicy {
        default_validity: Duration::from_secs(60),
        max_validity: Duration::from_secs(120),
    });
    let (_, csr_pem) = csr::create(&identity()).unwrap();
    // Lifetimes as clamped, plus the backdating of a tenth of them.
    for (requested, expected) in [(0, 66), (90, 99), (10_000, 132)] {
        let issued = ca.sign(&csr_pem, requested).unwrap();
        let leaf_der = der(&issued.chain_pem[0]);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        let lifetime =
            leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert_eq!(lifetime, expected, "requested {requested}");
    }
}

#[test_case(60, 30, "the default validity must be positive and at most the maximum" ; "default above max")]
#[test_case(0, 30, "the default validity must be positive" ; "zero default")]
#[test_case(0, 0, "the maximum validity must be at least one second" ; "zero max")]
fn inconsistent_policies_are_refused(default: u64, max: u64, expected: &str) {
    let policy = SigningPolicy {
        default_validity: Duration::from_secs(default),
        max_validity: Duration::from_secs(max),
    };
    let err = policy.validate().unwrap_err();
    assert!(err.to_string().contains(expected), "{err}");
    let td = TrustDomain::default();
    let root = RootCa::generate(&td, HOUR).unwrap();
    assert!(CertificateAuthority::new(root, td, policy, Vec::new()).is_err());
}

#[test]
fn extra_roots_are_returned_after_the_signing_root() {
    let td = TrustDomain::default();
    let old = RootCa::generate(&td, HOUR).unwrap();
    let new = RootCa::generate(&td, HOUR).unwrap();
    let new_pem = new.cert_pem().to_owned();
    let ca = CertificateAuthority::new(
        new,
        td,
        SigningPolicy::default(),
        vec![old.cert_pem().to_owned()],
    )
    .unwrap();
    let (_, csr_pem) = csr::create(&identity()).unwrap();
    let issued = ca.sign(&csr_pem, 60).unwrap();
    assert_eq!(issued.chain_pem[1], new_pem);
    assert_eq!(issued.chain_pem[2], old.cert_pem());
}

#[test]
fn serving_cert_names_the_ca() {
    let (ca, _) = ca();
    let names = vec!["ambit-ca".to_owned(), "127.0.0.1".to_owned()];
    let (chain, _key) = ca.serving_cert(&names, HOUR).unwrap();
    let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 2);
    assert!(matches!(
        san.value.general_names[0],
        GeneralName::DNSName("ambit-ca")
    ));
    assert!(!cert.is_ca());
}

#[test]
fn debug_never_prints_the_key() {
    let (ca, _) = ca();
    let text = format!("{ca:?}");
    assert!(!text.contains("PRIVATE"), "{text}");
}

#[test]
fn a_pem_bundle_splits_into_its_certificates_only() {
    let td = TrustDomain::default();
    let (a, b) = (
        RootCa::generate(&td, HOUR).unwrap(),
        RootCa::generate(&td, HOUR).unwrap(),
    );
    let bundle = format!(
        "# two roots\n{}\nsome text between\r\n{}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        a.cert_pem(),
        b.cert_pem()
    );
    let certs = pem_certs(&bundle).unwrap();
    assert_eq!(certs.len(), 2, "the key block is not a certificate");
    for ((pem, der), root) in certs.iter().zip([&a, &b]) {
        assert_eq!(der, root.cert_der());
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"), "{pem}");
        assert!(!pem.contains('\r') && !pem.contains("text"), "{pem}");
        assert_eq!(
            &CertificateDer::from_pem_slice(pem.as_bytes()).unwrap(),
            der
        );
    }
    // A block without its end is an error, not a shorter bundle.
    let cut = &bundle[..bundle.find("-----END CERTIFICATE-----").unwrap()];
    assert!(pem_certs(cut).is_err());
    assert!(pem_certs("no certificate here").unwrap().is_empty());
}
