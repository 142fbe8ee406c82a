//! Certificate signing requests: the ztunnel side creates them (a fresh ECDSA P-256
//! key per request, kept in the process), the CA side validates them strictly.
//!
//! The CA never copies anything from a CSR into a certificate except the public key
//! and the SPIFFE ID, and only after [`validate`] has checked that the request is
//! well formed, signed by its own key (proof of possession), carries an ECDSA P-256
//! key, exactly one URI SAN that is a SPIFFE ID of the CA's trust domain, no other
//! SAN, and asks for no CA powers.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, SubjectPublicKeyInfo};
use rustls_pki_types::{CertificateSigningRequestDer, pem::PemObject};
use x509_parser::{
    certification_request::X509CertificationRequest,
    extensions::{GeneralName, ParsedExtension},
    oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY},
    prelude::FromDer,
};

use super::spiffe::{self, Identity, TrustDomain};

/// Largest PEM CSR accepted; a P-256 CSR with one URI SAN is well under 1 KiB.
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;

/// A CSR that cannot be signed, or cannot be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Larger than [`MAX_CSR_PEM_LEN`].
    #[error("the CSR is {len} bytes long; at most {MAX_CSR_PEM_LEN} are accepted")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// No `CERTIFICATE REQUEST` PEM block could be read.
    #[error("the CSR is not a PEM-encoded CERTIFICATE REQUEST")]
    Pem(#[source] rustls_pki_types::pem::Error),
    /// The PEM block does not hold a valid PKCS#10 structure.
    #[error("the CSR is not valid PKCS#10 DER")]
    Der(#[source] x509_parser::error::X509Error),
    /// Bytes follow the PKCS#10 structure.
    #[error("the CSR has {0} bytes of trailing data after its DER structure")]
    TrailingData(usize),
    /// The signature does not verify with the CSR's own key.
    #[error("the CSR's signature does not verify with its public key (no proof of possession)")]
    Signature(#[source] x509_parser::error::X509Error),
    /// The key is not ECDSA P-256.
    #[error("the CSR's key is {found}; only ECDSA P-256 keys are accepted")]
    KeyType {
        /// What the key is.
        found: String,
    },
    /// Its extension request cannot be parsed.
    #[error("the CSR's requested extensions cannot be parsed")]
    Extensions(#[source] x509_parser::error::X509Error),
    /// It requests a CA certificate (or certificate/CRL signing).
    #[error("the CSR requests CA powers ({what}); only leaf certificates are issued")]
    CaRequested {
        /// Which extension asked for it.
        what: &'static str,
    },
    /// It has a SAN other than a URI.
    #[error("the CSR has a {kind} subject alternative name; only one SPIFFE URI SAN is accepted")]
    OtherSan {
        /// The kind of name (`DNS`, `IP address`, `email`, ...).
        kind: &'static str,
    },
    /// It has no URI SAN, or more than one.
    #[error("the CSR has {count} URI subject alternative names; exactly one is required")]
    UriCount {
        /// How many.
        count: usize,
    },
    /// Its URI SAN is not a SPIFFE ID of this mesh.
    #[error("the CSR's URI SAN is not a valid workload identity")]
    Identity(#[source] spiffe::Error),
    /// Its SPIFFE ID is of another trust domain.
    #[error("the CSR is for trust domain {found:?}, but this CA signs for {expected:?}")]
    TrustDomain {
        /// The CSR's trust domain.
        found: String,
        /// The CA's.
        expected: String,
    },
    /// The key cannot be read back (a bug in this module or rcgen).
    #[error("Bug: the CSR's public key was accepted but cannot be re-encoded")]
    PublicKey(#[source] rcgen::Error),
    /// Creating a key or a CSR failed.
    #[error("cannot create a key and CSR")]
    Create(#[source] rcgen::Error),
}

/// A CSR that passed every check: the identity and key the certificate will carry.
#[derive(Debug)]
pub struct ValidCsr {
    identity: Identity,
    public_key: SubjectPublicKeyInfo,
}

impl ValidCsr {
    /// The identity requested (the CSR's only URI SAN).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The subject public key, as rcgen signs it.
    pub fn public_key(&self) -> &SubjectPublicKeyInfo {
        &self.public_key
    }
}

/// Checks a PEM CSR from a caller of the CA. See the module docs for the rules.
pub fn validate(pem: &str, trust_domain: &TrustDomain) -> Result<ValidCsr, Error> {
    if pem.len() > MAX_CSR_PEM_LEN {
        return Err(Error::TooLarge { len: pem.len() });
    }
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(Error::Pem)?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref()).map_err(|err| {
        Error::Der(match err {
            x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
            x509_parser::nom::Err::Incomplete(_) => {
                x509_parser::error::X509Error::InvalidCertificate
            }
        })
    })?;
    if !rest.is_empty() {
        return Err(Error::TrailingData(rest.len()));
    }
    let spki = &csr.certification_request_info.subject_pki;
    check_key_type(spki)?;
    csr.verify_signature().map_err(Error::Signature)?;
    let identity = requested_identity(&csr)?;
    if identity.trust_domain() != trust_domain {
        return Err(Error::TrustDomain {
            found: identity.trust_domain().to_string(),
            expected: trust_domain.to_string(),
        });
    }
    let public_key = SubjectPublicKeyInfo::from_der(spki.raw).map_err(Error::PublicKey)?;
    Ok(ValidCsr {
        identity,
        public_key,
    })
}

fn check_key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), Error> {
    let alg = &spki.algorithm;
    if alg.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        let found = match alg.algorithm.to_id_string().as_str() {
            "1.2.840.113549.1.1.1" => "RSA".to_owned(),
            "1.3.101.112" => "Ed25519".to_owned(),
            "1.3.101.113" => "Ed448".to_owned(),
            other => format!("of algorithm {other}"),
        };
        return Err(Error::KeyType { found });
    }
    let curve = alg
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .ok_or_else(|| Error::KeyType {
            found: "an EC key without a named curve".to_owned(),
        })?;
    if curve != OID_EC_P256 {
        let found = match curve.to_id_string().as_str() {
            "1.3.132.0.34" => "ECDSA P-384".to_owned(),
            "1.3.132.0.35" => "ECDSA P-521".to_owned(),
            other => format!("an EC key on curve {other}"),
        };
        return Err(Error::KeyType { found });
    }
    Ok(())
}

/// The one SPIFFE URI SAN of the CSR, after checking its other extensions.
fn requested_identity(csr: &X509CertificationRequest<'_>) -> Result<Identity, Error> {
    let mut uris = Vec::new();
    let Some(extensions) = csr.requested_extensions() else {
        return Err(Error::UriCount { count: 0 });
    };
    for ext in extensions {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => uris.push(*uri),
                        other => {
                            return Err(Error::OtherSan {
                                kind: san_kind(other),
                            });
                        }
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                return Err(Error::CaRequested {
                    what: "basic constraints CA:true",
                });
            }
            ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                return Err(Error::CaRequested {
                    what: "key usage keyCertSign or cRLSign",
                });
            }
            ParsedExtension::UnsupportedExtension { .. } | ParsedExtension::Unparsed => {}
            ParsedExtension::ParseError { .. } => {
                return Err(Error::Extensions(
                    x509_parser::error::X509Error::InvalidExtensions,
                ));
            }
            // Any other requested extension is ignored: the CA writes its own.
            _ => {}
        }
    }
    let [uri] = uris[..] else {
        return Err(Error::UriCount { count: uris.len() });
    };
    uri.parse().map_err(Error::Identity)
}

fn san_kind(name: &GeneralName<'_>) -> &'static str {
    match name {
        GeneralName::DNSName(_) => "DNS",
        GeneralName::IPAddress(_) => "IP address",
        GeneralName::RFC822Name(_) => "email",
        GeneralName::DirectoryName(_) => "directory name",
        GeneralName::RegisteredID(_) => "registered ID",
        GeneralName::OtherName(..) => "other name",
        GeneralName::X400Address(_) => "X.400 address",
        GeneralName::EDIPartyName(_) => "EDI party name",
        GeneralName::URI(_) => "URI",
        GeneralName::Invalid(..) => "malformed",
    }
}

/// A new ECDSA P-256 key and a PEM CSR for `identity`: empty subject, the SPIFFE
/// URI as the only SAN, as [`validate`] expects. The key never leaves the caller.
pub fn create(identity: &Identity) -> Result<(KeyPair, String), Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(Error::Create)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = identity.to_string().try_into().map_err(Error::Create)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(Error::Create)?;
    let pem = csr.pem().map_err(Error::Create)?;
    Ok((key, pem))
}

#[cfg(test)]
mod tests;
