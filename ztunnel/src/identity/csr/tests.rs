//! CSR validation: one good request and a table of bad ones, each refused with a
//! message naming what is wrong.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SignatureAlgorithm,
};
use test_case::test_case;

use super::*;

fn td() -> TrustDomain {
    TrustDomain::default()
}

const ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// A CSR built with `alg` and `edit` applied to otherwise good params.
fn csr_with(alg: &'static SignatureAlgorithm, edit: impl FnOnce(&mut CertificateParams)) -> String {
    let key = if alg == &rcgen::PKCS_RSA_SHA256 {
        KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048).unwrap()
    } else {
        KeyPair::generate_for(alg).unwrap()
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![uri(ID)];
    edit(&mut params);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn p256(edit: impl FnOnce(&mut CertificateParams)) -> String {
    csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, edit)
}

#[test]
fn created_csr_is_valid_and_names_the_identity() {
    let identity: Identity = ID.parse().unwrap();
    let (key, pem) = create(&identity).unwrap();
    let valid = validate(&pem, &td()).unwrap();
    assert_eq!(valid.identity(), &identity);
    assert_eq!(
        valid.public_key().subject_public_key_info(),
        key.subject_public_key_info()
    );
}

#[test]
fn a_subject_and_client_key_usages_are_tolerated() {
    let pem = p256(|p| {
        p.distinguished_name
            .push(DnType::OrganizationName, "cluster.local");
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.is_ca = IsCa::ExplicitNoCa;
    });
    validate(&pem, &td()).unwrap();
}

#[test_case(p256(|p| p.subject_alt_names = vec![uri(ID), SanType::DnsName("cart.shop".try_into().unwrap())]),
    "DNS subject alternative name" ; "extra DNS SAN")]
#[test_case(p256(|p| p.subject_alt_names.push(SanType::IpAddress([10, 0, 0, 1].into()))),
    "IP address subject alternative name" ; "extra IP SAN")]
#[test_case(p256(|p| p.subject_alt_names.push(SanType::Rfc822Name("a@b.c".try_into().unwrap()))),
    "email subject alternative name" ; "extra email SAN")]
#[test_case(p256(|p| p.subject_alt_names.push(uri("spiffe://cluster.local/ns/shop/sa/admin"))),
    "has 2 URI subject alternative names" ; "two URI SANs")]
#[test_case(p256(|p| p.subject_alt_names.clear()),
    "has 0 URI subject alternative names" ; "no SAN")]
#[test_case(p256(|p| p.subject_alt_names = vec![uri("https://cart.shop/")]),
    "URI SAN is not a valid workload identity: \"https://cart.shop/\" is not a SPIFFE ID" ; "non SPIFFE URI")]
#[test_case(p256(|p| p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/shop/cart")]),
    "URI SAN is not a valid workload identity" ; "wrong SPIFFE path")]
#[test_case(p256(|p| p.subject_alt_names = vec![uri("spiffe://evil.org/ns/shop/sa/cart")]),
    "for trust domain \"evil.org\", but this CA signs for \"cluster.local\"" ; "other trust domain")]
#[test_case(p256(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
    "requests CA powers (basic constraints CA:true)" ; "CA true")]
#[test_case(p256(|p| p.key_usages = vec![KeyUsagePurpose::KeyCertSign]),
    "requests CA powers (key usage keyCertSign or cRLSign)" ; "cert sign usage")]
#[test_case(csr_with(&rcgen::PKCS_ECDSA_P384_SHA384, |_| {}),
    "key is ECDSA P-384; only ECDSA P-256" ; "P-384 key")]
#[test_case(csr_with(&rcgen::PKCS_ED25519, |_| {}),
    "key is Ed25519; only ECDSA P-256" ; "Ed25519 key")]
#[test_case(csr_with(&rcgen::PKCS_RSA_SHA256, |_| {}),
    "key is RSA; only ECDSA P-256" ; "RSA key")]
#[test_case(String::new(), "not a PEM-encoded CERTIFICATE REQUEST" ; "empty")]
#[test_case("hello".to_owned(), "not a PEM-encoded CERTIFICATE REQUEST" ; "garbage")]
#[test_case(CERT_PEM.to_owned(), "not a PEM-encoded CERTIFICATE REQUEST" ; "a certificate instead")]
#[test_case("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".to_owned(),
    "not valid PKCS#10 DER" ; "garbage DER")]
#[test_case("-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n".to_owned(),
    "not a PEM-encoded CERTIFICATE REQUEST" ; "bad base64")]
#[test_case("x".repeat(MAX_CSR_PEM_LEN + 1), "at most 16384 are accepted" ; "too large")]
#[allow(clippy::needless_pass_by_value)] // test_case hands the generated String over
fn bad_csrs_are_refused(pem: String, expected: &str) {
    let err = validate(&pem, &td()).unwrap_err();
    let chain = crate::identity::error_chain(&err);
    assert!(chain.contains(expected), "{chain}");
}

#[test]
fn a_tampered_signature_is_refused() {
    let pem = p256(|_| {});
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
    let mut bytes = der.as_ref().to_vec();
    // The signature is the last element: flip a bit of its final byte.
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let tampered = pem_encode(&bytes);
    let err = validate(&tampered, &td()).unwrap_err();
    assert!(matches!(err, Error::Signature(_)), "{err:?}");
}

#[test]
fn a_csr_signed_by_another_key_is_refused() {
    // Swap the public key of one CSR into another: the signature no longer verifies.
    let a = csr_der(&p256(|_| {}));
    let b = csr_der(&p256(|_| {}));
    let key_a = spki_of(&a);
    let key_b = spki_of(&b);
    let swapped: Vec<u8> = replace(&a, &key_a, &key_b);
    let err = validate(&pem_encode(&swapped), &td()).unwrap_err();
    assert!(matches!(err, Error::Signature(_)), "{err:?}");
}

#[test]
fn trailing_data_is_refused() {
    let mut der = csr_der(&p256(|_| {}));
    der.extend_from_slice(&[0, 0]);
    let err = validate(&pem_encode(&der), &td()).unwrap_err();
    assert!(matches!(err, Error::TrailingData(2)), "{err:?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Random bytes in a CSR PEM block are refused, never signed, never a panic.
    #[test]
    fn random_der_is_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        proptest::prop_assert!(validate(&pem_encode(&bytes), &td()).is_err());
    }

    /// A valid CSR with one byte changed is refused, or still names the same
    /// identity: a mutation never yields a different identity or a panic.
    #[test]
    fn mutated_csrs_never_change_identity(index in 0usize..2000, xor in 1u8..=255) {
        let identity: Identity = ID.parse().unwrap();
        let (_, pem) = create(&identity).unwrap();
        let mut der = csr_der(&pem);
        let at = index % der.len();
        der[at] ^= xor;
        if let Ok(valid) = validate(&pem_encode(&der), &td()) {
            proptest::prop_assert_eq!(valid.identity(), &identity);
        }
    }
}

fn csr_der(pem: &str) -> Vec<u8> {
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

fn spki_of(der: &[u8]) -> Vec<u8> {
    let (_, csr) = X509CertificationRequest::from_der(der).unwrap();
    csr.certification_request_info.subject_pki.raw.to_vec()
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = haystack
        .windows(from.len())
        .position(|w| w == from)
        .unwrap();
    let mut out = haystack.to_vec();
    out[at..at + from.len()].copy_from_slice(to);
    out
}

fn pem_encode(der: &[u8]) -> String {
    use std::fmt::Write;
    let b64 = base64(der);
    let mut out = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for line in b64.as_bytes().chunks(64) {
        writeln!(out, "{}", std::str::from_utf8(line).unwrap()).unwrap();
    }
    out.push_str("-----END CERTIFICATE REQUEST-----\n");
    out
}

/// Standard base64 with padding (test-only helper; the crate never encodes PEM by hand).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A self-signed certificate, to check that a certificate is not taken for a CSR.
const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBdzCCAR2gAwIBAgIUQ4JQn0kGv5l7vWk7pYlY1ZJ2Ck8wCgYIKoZIzj0EAwIw
-----END CERTIFICATE-----
";
