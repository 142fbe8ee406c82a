//! A workload certificate as the manager caches it, built from the CA's answer
//! only after checking it: the leaf carries exactly the requested identity and our
//! key, and chains to the trust bundle.

use std::time::{Duration, SystemTime};

use rcgen::{KeyPair, PublicKeyData};
use rustls::{client::verify_server_cert_signed_by_trust_anchor, server::ParsedCertificate};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime, pem::PemObject,
};
use x509_parser::{
    extensions::GeneralName,
    prelude::{FromDer, X509Certificate},
};

use crate::identity::{bundle::TrustBundle, spiffe::Identity};

/// The CA's answer cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The chain is empty.
    #[error("the CA returned no certificate")]
    Empty,
    /// An element is not a PEM certificate.
    #[error("certificate {index} returned by the CA is not a valid PEM certificate: {reason}")]
    Malformed {
        /// 1-based position in the chain.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The leaf is not what was asked for.
    #[error("the CA's certificate does not match the request: {reason}")]
    Mismatch {
        /// What differs.
        reason: String,
    },
    /// The leaf does not chain to the trust bundle.
    #[error("the CA's certificate does not chain to the trust bundle")]
    Untrusted(#[source] rustls::Error),
}

/// A workload's certificate chain and private key. `Debug` never shows the key.
pub struct WorkloadCert {
    identity: Identity,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_before", &rfc3339(self.not_before))
            .field("not_after", &rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    /// Checks the CA's `chain_pem` (leaf first, roots last) for `identity` and
    /// `key`, and keeps the leaf, its intermediates and the key.
    pub fn from_response(
        identity: &Identity,
        key: &KeyPair,
        chain_pem: &[String],
        bundle: &TrustBundle,
    ) -> Result<Self, Error> {
        let certs = chain_pem
            .iter()
            .enumerate()
            .map(|(i, pem)| {
                CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Malformed {
                    index: i + 1,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (leaf_der, rest) = certs.split_first().ok_or(Error::Empty)?;
        let mismatch = |reason: String| Error::Mismatch { reason };
        let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|e| Error::Malformed {
            index: 1,
            reason: e.to_string(),
        })?;
        check_leaf(&leaf, identity, key).map_err(mismatch)?;
        // Keep intermediates; drop self-issued roots (the bundle provides those).
        let mut intermediates = Vec::new();
        for (i, der) in rest.iter().enumerate() {
            let (_, cert) = X509Certificate::from_der(der).map_err(|e| Error::Malformed {
                index: i + 2,
                reason: e.to_string(),
            })?;
            if cert.subject() != cert.issuer() {
                intermediates.push(der.clone());
            }
        }
        let parsed = ParsedCertificate::try_from(leaf_der).map_err(Error::Untrusted)?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &bundle.root_store(),
            &intermediates,
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(Error::Untrusted)?;
        let serial = leaf.raw_serial().iter().fold(String::new(), |mut s, b| {
            use std::fmt::Write;
            let _ = write!(s, "{b:02x}");
            s
        });
        let not_before = system_time(leaf.validity().not_before.timestamp());
        let not_after = system_time(leaf.validity().not_after.timestamp());
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(leaf_der.clone());
        chain.extend(intermediates);
        Ok(Self {
            identity: identity.clone(),
            chain,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            serial,
            not_before,
            not_after,
        })
    }

    /// The identity certified.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The leaf followed by any intermediates (not the roots), as presented in TLS.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key, for this process's TLS configuration only.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// Serial number, lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// True once `now` is past the end of validity.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// Bytes held on the heap by this certificate (chain, key, identity, serial),
    /// for the memory budget.
    pub fn heap_bytes(&self) -> usize {
        self.chain.iter().map(|c| c.len()).sum::<usize>()
            + self.chain.capacity() * size_of::<CertificateDer<'static>>()
            + self.key.secret_pkcs8_der().len()
            + self.serial.capacity()
            + self.identity.trust_domain().as_str().len()
            + self.identity.namespace().len()
            + self.identity.service_account().len()
    }
}

fn check_leaf(
    leaf: &X509Certificate<'_>,
    identity: &Identity,
    key: &KeyPair,
) -> Result<(), String> {
    if leaf.is_ca() {
        return Err("the leaf is a CA certificate".to_owned());
    }
    if leaf.public_key().raw != key.subject_public_key_info() {
        return Err("the leaf does not carry the requested key".to_owned());
    }
    let san = leaf
        .subject_alternative_name()
        .map_err(|e| format!("its SAN extension is invalid ({e})"))?
        .ok_or("the leaf has no SAN")?;
    let expected = identity.to_string();
    match &san.value.general_names[..] {
        [GeneralName::URI(uri)] if *uri == expected => Ok(()),
        names => Err(format!(
            "the leaf's SANs are {names:?}, expected only {expected}"
        )),
    }
}

fn system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

/// `t` as RFC 3339 (UTC), for logs and the admin endpoint.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "invalid time".to_owned())
}
