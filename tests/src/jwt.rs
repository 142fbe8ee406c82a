//! A JWT issuer for the end-to-end tests: ES256 keys and the TLS material of a
//! JWKS server, all generated at test time so no key ever lives in the repo.
//!
//! An [`Issuer`] is one signing key (P-256, from aws-lc-rs) with its `iss` and
//! `kid`; it publishes its public key as a JWK Set ([`Issuer::jwks_json`], or
//! [`jwks_json_of`] for several keys during a rotation) and signs tokens with
//! jsonwebtoken. [`TlsMaterial`] is a fresh CA and a server certificate it signs,
//! for `ambit-httpbin jwks`: the server presents the leaf, the waypoint under test
//! trusts the CA.
//!
//! A validator usually allows some clock skew (jsonwebtoken's default leeway is
//! 60 s), so an expired token for a test should have expired well before that:
//! `token_for(.., -3600)`.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet, PublicKeyUse},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// One ES256 signing key of a JWT issuer.
pub struct Issuer {
    issuer: String,
    kid: String,
    key: EncodingKey,
    /// The uncompressed public point: 0x04, then x and y (32 bytes each).
    public_key: Vec<u8>,
    jwk: Jwk,
}

impl Issuer {
    /// A new P-256 key for `issuer` (the `iss` of its tokens), published and
    /// used under key id `kid`.
    pub fn generate(issuer: &str, kid: &str) -> Issuer {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("aws-lc-rs generates P-256 keys");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("aws-lc-rs reads the PKCS#8 document it just wrote");
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        // jsonwebtoken derives x and y from the same key and encodes them as
        // base64url without padding (RFC 7518 section 6.2.1).
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)
            .expect("a P-256 PKCS#8 key has EC public components");
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Issuer {
            issuer: issuer.to_owned(),
            kid: kid.to_owned(),
            key,
            public_key: pair.public_key().as_ref().to_vec(),
            jwk,
        }
    }

    /// The `iss` of this issuer's tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id, in the JWK and in each token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as an uncompressed SEC1 point (65 bytes: 0x04, x, y).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The public key as a JWK: `kty` EC, `crv` P-256, `x`, `y`, `kid`, `alg`
    /// ES256, `use` sig.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// A JWK Set holding this key only: `{"keys":[{..}]}`.
    pub fn jwks_json(&self) -> String {
        jwks_json_of(&[self])
    }

    /// `claims` signed with this key: header `{"alg":"ES256","typ":"JWT","kid":..}`.
    /// The claims are taken as given (no `iss` is added).
    pub fn token(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
            .expect("an ES256 key signs any JSON claims")
    }

    /// A token with `iss` (this issuer), `sub`, `groups`, `iat` (now, or `exp`
    /// when that is earlier) and `exp` (now + `ttl_secs`; negative for a token
    /// that has already expired).
    pub fn token_for(&self, sub: &str, groups: &[&str], ttl_secs: i64) -> String {
        let now = unix_now();
        let exp = now.saturating_add(ttl_secs);
        self.token(&serde_json::json!({
            "iss": self.issuer,
            "sub": sub,
            "groups": groups,
            "iat": now.min(exp),
            "exp": exp,
        }))
    }
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key stays out of test output.
        f.debug_struct("Issuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// One JWK Set with the keys of all `issuers`, in order: what a JWKS endpoint
/// serves while keys rotate.
pub fn jwks_json_of(issuers: &[&Issuer]) -> String {
    let set = JwkSet {
        keys: issuers.iter().map(|issuer| issuer.jwk.clone()).collect(),
    };
    serde_json::to_string(&set).expect("a JWK Set serializes to JSON")
}

fn unix_now() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970");
    i64::try_from(since_epoch.as_secs()).expect("seconds since 1970 fit in i64")
}

/// A fresh self-signed CA and a server certificate it signed, all PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The CA certificate: what a client trusts.
    pub ca_pem: String,
    /// The server's leaf certificate (signed by the CA), without the CA.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8.
    pub key_pem: String,
}

impl TlsMaterial {
    /// A new CA ("ambit test CA") and a leaf for server authentication valid for
    /// `san_ips` and `san_dns`; P-256 keys, both valid from 1975 to 4096 (rcgen's
    /// defaults), so no test depends on the clock.
    pub fn generate(san_ips: &[IpAddr], san_dns: &[&str]) -> TlsMaterial {
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = common_name("ambit test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("rcgen generates P-256 keys");
        let ca =
            CertifiedIssuer::self_signed(ca_params, ca_key).expect("the CA's parameters are valid");

        let mut params = CertificateParams::default();
        params.distinguished_name = common_name("ambit test server");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = san_ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        for name in san_dns {
            let name = (*name)
                .try_into()
                .unwrap_or_else(|e| panic!("{name:?} is not a DNS name: {e}"));
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        let key = KeyPair::generate().expect("rcgen generates P-256 keys");
        let cert = params
            .signed_by(&key, &ca)
            .expect("the leaf's parameters are valid");
        TlsMaterial {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir` (which must exist) and
    /// returns their paths in that order.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf, PathBuf)> {
        let paths = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        std::fs::write(&paths.0, &self.ca_pem)?;
        std::fs::write(&paths.1, &self.cert_pem)?;
        std::fs::write(&paths.2, &self.key_pem)?;
        Ok(paths)
    }
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}
