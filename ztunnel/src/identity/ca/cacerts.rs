//! A plug-in CA: an operator's intermediate in Istio's `cacerts` layout, a
//! directory (in Kubernetes, the Secret `cacerts` mounted as one) holding
//!
//! - `ca-cert.pem`: the intermediate's certificate, which signs workload leaves;
//! - `ca-key.pem`: its private key (PKCS#8, SEC1 or PKCS#1 PEM);
//! - `root-cert.pem`: the roots workloads trust, one or more PEM certificates
//!   (several at once while a root is rotated); this is the trust bundle the CA
//!   hands out;
//! - `cert-chain.pem`: the intermediate up to the root, served after each leaf.
//!
//! Everything is checked at start, and each refusal names the file: every file
//! must be readable PEM; `ca-cert.pem` must be one CA certificate (basic
//! constraints `CA:true`, and `keyCertSign` when it has a key usage) that is
//! valid now and whose key is `ca-key.pem`; `cert-chain.pem` must start with
//! `ca-cert.pem`; and `ca-cert.pem` must chain, through the CA certificates of
//! `cert-chain.pem`, to a certificate of `root-cert.pem`, each signature
//! verified and each link valid now. The key is never printed nor logged.

use std::{
    io,
    path::{Path, PathBuf},
};

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::bundle::{self, TrustBundle};

/// The intermediate's certificate.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The intermediate's private key.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The trusted roots (one or more certificates).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The intermediate up to the root.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// A `cacerts` directory that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file of the layout is absent.
    #[error(
        "{path} does not exist (a cacerts directory holds {CA_CERT_FILE}, {CA_KEY_FILE}, {ROOT_CERT_FILE} and {CERT_CHAIN_FILE})"
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A certificate file is not PEM certificates.
    #[error("{path} is not valid PEM")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file holds the wrong number of certificates.
    #[error("{path} holds {found} certificates, expected {expected}")]
    Count {
        /// The file.
        path: PathBuf,
        /// How many it holds.
        found: usize,
        /// How many are wanted (`one`, `at least one`).
        expected: &'static str,
    },
    /// A certificate does not parse as X.509.
    #[error("certificate {index} of {path} is not a valid X.509 certificate")]
    Der {
        /// The file.
        path: PathBuf,
        /// 1-based position in the file.
        index: usize,
        /// The cause.
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    /// The key file is not a private key that can sign.
    #[error("{path} is not a PEM private key that can sign")]
    Key {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// The key is not the certificate's.
    #[error("{key} is not the key of {cert}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A certificate that must issue certificates is not a CA.
    #[error("certificate {index} of {path} is not a CA certificate ({reason})")]
    NotCa {
        /// The file.
        path: PathBuf,
        /// 1-based position in the file.
        index: usize,
        /// What is missing.
        reason: &'static str,
    },
    /// A certificate is outside its validity period.
    #[error(
        "certificate {index} of {path} is not valid now (valid from {not_before} to {not_after})"
    )]
    Expired {
        /// The file.
        path: PathBuf,
        /// 1-based position in the file.
        index: usize,
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
    },
    /// `cert-chain.pem` does not start with the intermediate.
    #[error("the first certificate of {chain} is not the certificate of {cert}")]
    ChainStart {
        /// `cert-chain.pem`.
        chain: PathBuf,
        /// `ca-cert.pem`.
        cert: PathBuf,
    },
    /// The intermediate does not chain to a trusted root.
    #[error(
        "{cert} is not signed by a certificate of {roots}, directly or through the CA certificates of {chain} (issuer {issuer})"
    )]
    Unrooted {
        /// `ca-cert.pem`.
        cert: PathBuf,
        /// `root-cert.pem`.
        roots: PathBuf,
        /// `cert-chain.pem`.
        chain: PathBuf,
        /// The issuer the search stopped at.
        issuer: String,
    },
    /// `root-cert.pem` is not a usable set of roots.
    #[error("{path} is not a usable set of roots")]
    Roots {
        /// The file.
        path: PathBuf,
        /// What is wrong with the roots.
        #[source]
        source: bundle::Error,
    },
}

/// One certificate as read: its PEM text and its DER.
#[derive(Debug, Clone)]
pub(crate) struct PemCert {
    pub(crate) pem: String,
    pub(crate) der: CertificateDer<'static>,
}

/// A validated plug-in intermediate: its certificate and key, the chain served
/// after each leaf and the trusted roots.
pub struct Cacerts {
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    chain: Vec<PemCert>,
    roots: Vec<PemCert>,
}

impl std::fmt::Debug for Cacerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Cacerts")
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Cacerts {
    /// Reads and checks the four files of `dir` (see the module docs).
    pub fn load_dir(dir: &Path) -> Result<Self, Error> {
        let paths = Paths::new(dir);
        let cert_text = read(&paths.cert)?;
        let key_text = read(&paths.key)?;
        let roots_text = read(&paths.roots)?;
        let chain_text = read(&paths.chain)?;

        let cert = certs(&paths.cert, &cert_text)?;
        let [cert] = <[PemCert; 1]>::try_from(cert).map_err(|certs| Error::Count {
            path: paths.cert.clone(),
            found: certs.len(),
            expected: "exactly one",
        })?;
        let (_, parsed) = parse(&paths.cert, 1, &cert.der)?;
        check_issuer(&paths.cert, 1, &parsed)?;
        let key = KeyPair::from_pem(&key_text).map_err(|source| Error::Key {
            path: paths.key.clone(),
            source,
        })?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(Error::KeyMismatch {
                key: paths.key.clone(),
                cert: paths.cert.clone(),
            });
        }

        // The same checks a ztunnel makes of a trust bundle.
        TrustBundle::from_pem(roots_text.as_bytes(), &paths.roots.display().to_string()).map_err(
            |source| Error::Roots {
                path: paths.roots.clone(),
                source,
            },
        )?;
        let roots = certs(&paths.roots, &roots_text)?;
        let chain = certs(&paths.chain, &chain_text)?;
        if chain.first().map(|c| &c.der) != Some(&cert.der) {
            return Err(Error::ChainStart {
                chain: paths.chain.clone(),
                cert: paths.cert.clone(),
            });
        }
        check_rooted(&paths, &parsed, &chain, &roots)?;
        Ok(Self {
            cert_der: cert.der,
            key,
            chain,
            roots,
        })
    }

    /// The trusted roots, PEM, as in `root-cert.pem`.
    pub fn roots_pem(&self) -> Vec<String> {
        self.roots.iter().map(|c| c.pem.clone()).collect()
    }

    /// `(intermediate DER, its key, cert-chain.pem, root-cert.pem)`.
    pub(crate) fn into_parts(
        self,
    ) -> (CertificateDer<'static>, KeyPair, Vec<PemCert>, Vec<PemCert>) {
        (self.cert_der, self.key, self.chain, self.roots)
    }
}

struct Paths {
    cert: PathBuf,
    key: PathBuf,
    roots: PathBuf,
    chain: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        Self {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
            roots: dir.join(ROOT_CERT_FILE),
            chain: dir.join(CERT_CHAIN_FILE),
        }
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => Error::Missing {
            path: path.to_owned(),
        },
        _ => Error::Read {
            path: path.to_owned(),
            source,
        },
    })
}

/// The certificates of a PEM file, at least one, each with its own PEM text.
fn certs(path: &Path, text: &str) -> Result<Vec<PemCert>, Error> {
    let pem_err = |source| Error::Pem {
        path: path.to_owned(),
        source,
    };
    let certs = super::pem_certs(text).map_err(pem_err)?;
    if certs.is_empty() {
        return Err(Error::Count {
            path: path.to_owned(),
            found: 0,
            expected: "at least one, each a complete PEM CERTIFICATE block",
        });
    }
    Ok(certs
        .into_iter()
        .map(|(pem, der)| PemCert { pem, der })
        .collect())
}

fn parse<'a>(
    path: &Path,
    index: usize,
    der: &'a CertificateDer<'_>,
) -> Result<(&'a [u8], X509Certificate<'a>), Error> {
    X509Certificate::from_der(der).map_err(|source| Error::Der {
        path: path.to_owned(),
        index,
        source,
    })
}

/// A certificate that issues certificates: a CA, allowed to sign certificates,
/// valid now.
fn check_issuer(path: &Path, index: usize, cert: &X509Certificate<'_>) -> Result<(), Error> {
    let not_ca = |reason| Error::NotCa {
        path: path.to_owned(),
        index,
        reason,
    };
    if !cert.is_ca() {
        return Err(not_ca("basic constraints CA:true missing"));
    }
    if let Ok(Some(usage)) = cert.key_usage()
        && !usage.value.key_cert_sign()
    {
        return Err(not_ca("key usage keyCertSign missing"));
    }
    if !cert.validity().is_valid() {
        return Err(Error::Expired {
            path: path.to_owned(),
            index,
            not_before: cert.validity().not_before.to_string(),
            not_after: cert.validity().not_after.to_string(),
        });
    }
    Ok(())
}

/// Walks from the intermediate up through `chain` until a certificate of
/// `roots` verifies the signature of the current one.
fn check_rooted(
    paths: &Paths,
    intermediate: &X509Certificate<'_>,
    chain: &[PemCert],
    roots: &[PemCert],
) -> Result<(), Error> {
    let parsed_roots = roots
        .iter()
        .enumerate()
        .map(|(i, c)| parse(&paths.roots, i + 1, &c.der).map(|(_, p)| p))
        .collect::<Result<Vec<_>, _>>()?;
    let parsed_chain = chain
        .iter()
        .enumerate()
        .map(|(i, c)| parse(&paths.chain, i + 1, &c.der).map(|(_, p)| p))
        .collect::<Result<Vec<_>, _>>()?;
    let signs = |issuer: &X509Certificate<'_>, cert: &X509Certificate<'_>| {
        issuer.subject() == cert.issuer()
            && cert.verify_signature(Some(issuer.public_key())).is_ok()
    };
    let mut current = intermediate.clone();
    // Each step climbs one certificate of the chain, so the walk ends.
    for _ in 0..=parsed_chain.len() {
        if let Some((i, root)) = parsed_roots
            .iter()
            .enumerate()
            .find(|(_, root)| signs(root, &current))
        {
            return check_issuer(&paths.roots, i + 1, root);
        }
        // The chain's first certificate is the intermediate itself: skip it.
        let Some((i, next)) = parsed_chain
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, next)| next.subject() != current.subject() && signs(next, &current))
        else {
            break;
        };
        check_issuer(&paths.chain, i + 1, next)?;
        current = next.clone();
    }
    Err(Error::Unrooted {
        cert: paths.cert.clone(),
        roots: paths.roots.clone(),
        chain: paths.chain.clone(),
        issuer: current.issuer().to_string(),
    })
}

#[cfg(test)]
mod tests;
