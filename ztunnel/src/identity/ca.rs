//! The mesh certificate authority: the signing core ([`CertificateAuthority`]), its
//! key material (a self-generated root: [`root`], [`secret`]; or an operator's
//! intermediate in Istio's `cacerts` layout: [`cacerts`]) and the gRPC server
//! ([`server`]) that ztunnels call.
//!
//! With a root of its own, the CA answers leaf + roots. With a plug-in
//! intermediate it signs with the intermediate's key and answers leaf +
//! `cert-chain.pem` + the roots of `root-cert.pem` not already in it; the roots it
//! hands out as the trust bundle are those of `root-cert.pem`.
//!
//! Every certificate it issues is an ECDSA P-256 leaf with exactly one SAN, the
//! caller's SPIFFE URI, `CA:false`, key usage digitalSignature + keyEncipherment,
//! extended key usage serverAuth + clientAuth, a random 128-bit serial and a
//! lifetime clamped to the configured maximum (valid from a little before now, see
//! [`settings::CERT_CLOCK_SKEW`]). Nothing else from the CSR is copied.

pub mod cacerts;
pub mod local;
pub mod root;
pub mod secret;
pub mod server;

use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use time::OffsetDateTime;

use super::{
    csr::{self, ValidCsr},
    spiffe::{Identity, TrustDomain},
};
use crate::settings;
pub use cacerts::Cacerts;
pub use local::{LocalCa, new_token};
pub use root::RootCa;

/// Errors of the signing core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The signing policy is inconsistent.
    #[error("invalid CA signing policy: {reason}")]
    Policy {
        /// What is wrong.
        reason: &'static str,
    },
    /// The CSR was refused.
    #[error("the certificate signing request is invalid")]
    Csr(#[from] csr::Error),
    /// rcgen could not build or sign a certificate.
    #[error("cannot sign the certificate")]
    Sign(#[source] rcgen::Error),
    /// The signing certificate and key cannot act as an issuer.
    #[error("the CA certificate cannot be used as an issuer")]
    Issuer(#[source] rcgen::Error),
    /// The system random number generator failed.
    #[error("cannot draw a random serial number")]
    Random,
}

/// How long the certificates of a CA live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigningPolicy {
    /// Used when the caller asks for no particular lifetime (validity `<= 0`).
    pub default_validity: Duration,
    /// The longest lifetime issued; longer requests are cut to this.
    pub max_validity: Duration,
}

impl Default for SigningPolicy {
    fn default() -> Self {
        Self {
            default_validity: settings::CERT_DEFAULT_VALIDITY,
            max_validity: settings::CERT_MAX_VALIDITY,
        }
    }
}

impl SigningPolicy {
    /// Checks that the lifetimes make sense.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_validity < Duration::from_secs(1) {
            return Err(Error::Policy {
                reason: "the maximum validity must be at least one second",
            });
        }
        if self.default_validity.is_zero() || self.default_validity > self.max_validity {
            return Err(Error::Policy {
                reason: "the default validity must be positive and at most the maximum",
            });
        }
        Ok(())
    }

    /// The lifetime to issue for a request of `requested_secs` seconds
    /// (`validity_duration` of the API): `<= 0` means the default, and anything
    /// above the maximum is clamped to it.
    pub fn validity_for(&self, requested_secs: i64) -> Duration {
        match u64::try_from(requested_secs) {
            Ok(0) | Err(_) => self.default_validity,
            Ok(secs) => Duration::from_secs(secs).min(self.max_validity),
        }
    }
}

/// A leaf certificate issued by the CA.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The identity it certifies.
    pub identity: Identity,
    /// PEM certificates: the leaf first, then the intermediates up to the root
    /// (a plug-in CA's `cert-chain.pem`), then the trusted roots not already given.
    pub chain_pem: Vec<String>,
    /// The leaf's serial number, as lowercase hex.
    pub serial_hex: String,
}

/// The signing core: a signing key and certificate (a root, or a plug-in
/// intermediate), a trust domain and a policy.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    policy: SigningPolicy,
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate up to the root (empty when it is the root), served
    /// after each leaf.
    chain: Vec<cacerts::PemCert>,
    /// The roots callers should trust.
    roots_pem: Vec<String>,
    /// The roots appended to each answer: those of `roots_pem` not in `chain`.
    trailing_roots_pem: Vec<String>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("policy", &self.policy)
            .field("chain", &self.chain.len())
            .field("roots", &self.roots_pem.len())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A CA signing with `root` for `trust_domain`. `extra_roots_pem` are other
    /// roots returned to callers beside this one (root rotation).
    pub fn new(
        root: RootCa,
        trust_domain: TrustDomain,
        policy: SigningPolicy,
        extra_roots_pem: Vec<String>,
    ) -> Result<Self, Error> {
        let (cert_der, cert_pem, key) = root.into_parts();
        let mut roots_pem = vec![cert_pem];
        roots_pem.extend(extra_roots_pem);
        Self::with_issuer(
            &cert_der,
            key,
            Vec::new(),
            roots_pem,
            (trust_domain, policy),
        )
    }

    /// A CA signing with a plug-in intermediate (checked by
    /// [`Cacerts::load_dir`]) for `trust_domain`: answers carry its
    /// `cert-chain.pem`, and the roots handed out are its `root-cert.pem`, then
    /// `extra_roots_pem`.
    pub fn from_cacerts(
        cacerts: Cacerts,
        trust_domain: TrustDomain,
        policy: SigningPolicy,
        extra_roots_pem: Vec<String>,
    ) -> Result<Self, Error> {
        let (cert_der, key, chain, roots) = cacerts.into_parts();
        let mut roots_pem: Vec<String> = roots.into_iter().map(|r| r.pem).collect();
        roots_pem.extend(extra_roots_pem);
        Self::with_issuer(&cert_der, key, chain, roots_pem, (trust_domain, policy))
    }

    fn with_issuer(
        cert_der: &CertificateDer<'_>,
        key: KeyPair,
        chain: Vec<cacerts::PemCert>,
        roots_pem: Vec<String>,
        (trust_domain, policy): (TrustDomain, SigningPolicy),
    ) -> Result<Self, Error> {
        policy.validate()?;
        let issuer = Issuer::from_ca_cert_der(cert_der, key).map_err(Error::Issuer)?;
        let trailing_roots_pem = roots_pem
            .iter()
            .filter(|root| {
                let der = CertificateDer::from_pem_slice(root.as_bytes()).ok();
                !chain.iter().any(|c| Some(&c.der) == der.as_ref())
            })
            .cloned()
            .collect();
        Ok(Self {
            trust_domain,
            policy,
            issuer,
            chain,
            roots_pem,
            trailing_roots_pem,
        })
    }

    /// The trust domain it signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Its lifetime policy.
    pub fn policy(&self) -> &SigningPolicy {
        &self.policy
    }

    /// The roots callers should trust (PEM): the signing root first, or a plug-in
    /// CA's `root-cert.pem`; then the extra roots.
    pub fn roots_pem(&self) -> &[String] {
        &self.roots_pem
    }

    /// Validates `csr_pem` and signs it for `requested_secs` (clamped) from now.
    pub fn sign(&self, csr_pem: &str, requested_secs: i64) -> Result<IssuedCert, Error> {
        let csr = csr::validate(csr_pem, &self.trust_domain)?;
        self.sign_valid(&csr, requested_secs, OffsetDateTime::now_utc())
    }

    /// Signs a CSR that [`csr::validate`] accepted, valid from `now`.
    pub fn sign_valid(
        &self,
        csr: &ValidCsr,
        requested_secs: i64,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, Error> {
        let validity = self.policy.validity_for(requested_secs);
        let serial = random_serial()?;
        let serial_hex = hex(&serial);
        let mut params = leaf_params(now, validity, serial);
        let uri = csr.identity().to_string().try_into().map_err(Error::Sign)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let cert = params
            .signed_by(csr.public_key(), &self.issuer)
            .map_err(Error::Sign)?;
        let mut chain_pem =
            Vec::with_capacity(1 + self.chain.len() + self.trailing_roots_pem.len());
        chain_pem.push(cert.pem());
        chain_pem.extend(self.chain.iter().map(|c| c.pem.clone()));
        chain_pem.extend(self.trailing_roots_pem.iter().cloned());
        Ok(IssuedCert {
            identity: csr.identity().clone(),
            chain_pem,
            serial_hex,
        })
    }

    /// A TLS serving certificate and key for the CA's own endpoint, with `dns_names`
    /// as DNS SANs (IP addresses are written as IP SANs); the chain is the leaf,
    /// then a plug-in CA's `cert-chain.pem`, so that clients trusting only the
    /// root can verify it.
    pub fn serving_cert(
        &self,
        dns_names: &[String],
        validity: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(Error::Sign)?;
        let mut params = leaf_params(OffsetDateTime::now_utc(), validity, random_serial()?);
        let names = CertificateParams::new(dns_names.to_vec()).map_err(Error::Sign)?;
        params.subject_alt_names = names.subject_alt_names;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).map_err(Error::Sign)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().map(|c| c.der.clone()));
        Ok((chain, key))
    }
}

/// The parameters every leaf shares; the caller adds the SANs.
fn leaf_params(now: OffsetDateTime, validity: Duration, serial: [u8; 16]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    // Valid a little before now, for peers whose clocks lag the CA's: the
    // skew allowance, but at most a tenth of the lifetime (short test lifetimes).
    params.not_before = now - settings::CERT_CLOCK_SKEW.min(validity / 10);
    params.not_after = now + validity;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.use_authority_key_identifier_extension = true;
    params
}

/// 128 random bits, positive (top bit clear) and never zero-led, as RFC 5280 wants.
fn random_serial() -> Result<[u8; 16], Error> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| Error::Random)?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

/// The certificates of a PEM bundle, each as its DER and a PEM text of its
/// own (encoded again from the DER: nothing of the input but the certificates
/// is kept). Parsing is rustls-pki-types'; blocks of other types are skipped.
pub fn pem_certs(
    text: &str,
) -> Result<Vec<(String, CertificateDer<'static>)>, rustls_pki_types::pem::Error> {
    CertificateDer::pem_slice_iter(text.as_bytes())
        .map(|der| {
            der.map(|der| {
                let pem = pem::encode_config(
                    &pem::Pem::new("CERTIFICATE", der.as_ref()),
                    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
                );
                (pem, der)
            })
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests;
