//! The trust bundle: the set of root certificates a ztunnel trusts. Several roots
//! can be trusted at once, so the CA root can be rotated without breaking
//! connections (add the new root, move the CA to it, wait for old leaves to
//! expire, drop the old root).
//!
//! A bundle is read from a PEM file and reloaded when the file changes
//! ([`BundleWatcher`]); a bad file is reported and the last good roots stay in
//! force. Consumers take a snapshot per handshake ([`TrustBundle::root_store`],
//! [`TrustBundle::client_verifier`], [`TrustBundle::server_verifier`]), so a reload
//! applies to new connections only.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    RootCertStore,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A set of roots that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The PEM text cannot be read.
    #[error("the trust bundle {source_name} is not valid PEM")]
    Pem {
        /// Where it came from.
        source_name: String,
        /// The cause.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// It holds no certificate.
    #[error("the trust bundle {source_name} holds no certificate")]
    Empty {
        /// Where it came from.
        source_name: String,
    },
    /// A certificate cannot be parsed, or is not a CA certificate.
    #[error(
        "certificate {index} of the trust bundle {source_name} is unusable as a root: {reason}"
    )]
    Certificate {
        /// Where it came from.
        source_name: String,
        /// 1-based position in the bundle.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// No root in it is currently valid.
    #[error("every root of the trust bundle {source_name} has expired or is not yet valid")]
    NoneValid {
        /// Where it came from.
        source_name: String,
    },
    /// The file cannot be read.
    #[error("cannot read the trust bundle {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// rustls cannot build a verifier from the roots.
    #[error("cannot build a certificate verifier from the trust bundle")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
}

#[derive(Debug)]
struct Roots {
    certs: Vec<CertificateDer<'static>>,
    store: Arc<RootCertStore>,
}

/// A shared, reloadable set of trusted roots. Cloning shares it.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    roots: Arc<RwLock<Arc<Roots>>>,
}

impl TrustBundle {
    /// A bundle of the certificates in `pem`; `source_name` names it in errors.
    pub fn from_pem(pem: &[u8], source_name: &str) -> Result<Self, Error> {
        let roots = parse(pem, source_name)?;
        Ok(Self {
            roots: Arc::new(RwLock::new(Arc::new(roots))),
        })
    }

    /// A bundle read from a PEM file.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        Self::from_pem(&read(path)?, &path.display().to_string())
    }

    /// Replaces the roots with those in `pem`. On error the current roots stay.
    pub fn replace_pem(&self, pem: &[u8], source_name: &str) -> Result<(), Error> {
        let roots = parse(pem, source_name)?;
        *self
            .roots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(roots);
        Ok(())
    }

    fn current(&self) -> Arc<Roots> {
        self.roots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The trusted root certificates, DER.
    pub fn certificates(&self) -> Vec<CertificateDer<'static>> {
        self.current().certs.clone()
    }

    /// How many roots are trusted.
    pub fn len(&self) -> usize {
        self.current().certs.len()
    }

    /// Never true: a bundle always holds at least one root.
    pub fn is_empty(&self) -> bool {
        self.current().certs.is_empty()
    }

    /// The roots as a rustls store (a snapshot).
    pub fn root_store(&self) -> Arc<RootCertStore> {
        self.current().store.clone()
    }

    /// A verifier of client certificates chaining to any of the roots (a
    /// snapshot). Client certificates are required.
    pub fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, Error> {
        WebPkiClientVerifier::builder_with_provider(self.root_store(), provider())
            .build()
            .map_err(Error::Verifier)
    }

    /// A verifier of server certificates chaining to any of the roots, checking
    /// the server name against DNS/IP SANs (a snapshot). For SPIFFE peers, whose
    /// leaves carry only a URI SAN, check chains with
    /// [`rustls::client::verify_server_cert_signed_by_trust_anchor`] and the SAN
    /// separately.
    pub fn server_verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, Error> {
        let verifier: Arc<dyn ServerCertVerifier> =
            WebPkiServerVerifier::builder_with_provider(self.root_store(), provider())
                .build()
                .map_err(Error::Verifier)?;
        Ok(verifier)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses and checks a PEM bundle: every certificate must parse and be a CA; at
/// least one must be valid now (expired ones are kept but logged: they verify
/// nothing and do no harm).
fn parse(pem: &[u8], source_name: &str) -> Result<Roots, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            source_name: source_name.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(Error::Empty {
            source_name: source_name.to_owned(),
        });
    }
    let mut valid = 0;
    let mut store = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        let err = |reason: String| Error::Certificate {
            source_name: source_name.to_owned(),
            index: i + 1,
            reason,
        };
        let (_, parsed) =
            X509Certificate::from_der(cert).map_err(|e| err(format!("not X.509 ({e})")))?;
        if !parsed.is_ca() {
            return Err(err("it is not a CA certificate".to_owned()));
        }
        if parsed.validity().is_valid() {
            valid += 1;
        } else {
            tracing::warn!(source = source_name, index = i + 1, subject = %parsed.subject(), "trust bundle root is outside its validity period");
        }
        store
            .add(cert.clone())
            .map_err(|e| err(format!("rejected by the verifier ({e})")))?;
    }
    if valid == 0 {
        return Err(Error::NoneValid {
            source_name: source_name.to_owned(),
        });
    }
    Ok(Roots {
        certs,
        store: Arc::new(store),
    })
}

/// Reloads a [`TrustBundle`] from its file whenever the file's content changes
/// (polled, which also follows Kubernetes' symlink swaps of mounted ConfigMaps).
#[derive(Debug)]
pub struct BundleWatcher {
    bundle: TrustBundle,
    path: PathBuf,
    interval: Duration,
}

impl BundleWatcher {
    /// Watches `path` every `interval` for `bundle`.
    pub fn new(bundle: TrustBundle, path: impl Into<PathBuf>, interval: Duration) -> Self {
        Self {
            bundle,
            path: path.into(),
            interval,
        }
    }

    /// Polls until the task is dropped.
    pub async fn run(self) {
        // The first poll loads the file as it is then, whatever the bundle held.
        let mut last: Option<Vec<u8>> = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let current = match read(&self.path) {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the trust bundle; keeping the current roots");
                    continue;
                }
            };
            if last.as_ref() == Some(&current) {
                continue;
            }
            let name = self.path.display().to_string();
            match self.bundle.replace_pem(&current, &name) {
                Ok(()) => {
                    tracing::info!(path = %name, roots = self.bundle.len(), "trust bundle reloaded");
                }
                Err(err) => tracing::error!(
                    error = %super::error_chain(&err),
                    "trust bundle changed but is invalid; keeping the current roots"
                ),
            }
            last = Some(current);
        }
    }
}

#[cfg(test)]
mod tests;
