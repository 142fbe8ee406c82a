//! The CA's root key and certificate: generated (self-signed), read from PEM, or
//! kept in a directory as `ca.key` (mode 0600) and `ca.crt`.
//!
//! Loaded material is checked: the certificate must be a valid CA certificate that
//! is in its validity period, and the key must be the certificate's key. The key is
//! never printed (no `Debug` of it) and never logged.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData, SerialNumber,
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::spiffe::TrustDomain;

/// File name of the root key (PKCS#8 PEM) in a key directory.
pub const KEY_FILE: &str = "ca.key";
/// File name of the root certificate (PEM) in a key directory.
pub const CERT_FILE: &str = "ca.crt";
/// Lifetime of a generated root.
pub const GENERATED_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Root material that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The certificate is not PEM.
    #[error("the root certificate is not a PEM CERTIFICATE")]
    CertPem(#[source] rustls_pki_types::pem::Error),
    /// The certificate's DER is invalid.
    #[error("the root certificate is not a valid X.509 certificate")]
    CertDer(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// The certificate is not a CA certificate.
    #[error("the root certificate is not a CA certificate (basic constraints CA:true missing)")]
    NotCa,
    /// The certificate is outside its validity period.
    #[error("the root certificate is not valid now (valid from {not_before} to {not_after})")]
    Expired {
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
    },
    /// The key is not PEM PKCS#8 of a supported algorithm.
    #[error("the root key is not a PEM private key that can sign")]
    Key(#[source] rcgen::Error),
    /// Key and certificate do not belong together.
    #[error("the root key is not the key of the root certificate")]
    KeyMismatch,
    /// Generating a root failed.
    #[error("cannot generate a root certificate")]
    Generate(#[source] rcgen::Error),
    /// A file of the key directory cannot be read or written.
    #[error("cannot {action} {path}")]
    Io {
        /// `read`, `create` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// One of the two files exists without the other: refuse to guess.
    #[error(
        "{present} exists but {missing} does not; restore it or remove both to create a new root"
    )]
    HalfPresent {
        /// The file found.
        present: PathBuf,
        /// The file missing.
        missing: PathBuf,
    },
    /// Material loaded from `source` is invalid.
    #[error("the CA root in {source_name} is invalid")]
    In {
        /// Where it came from (a path or a Secret).
        source_name: String,
        /// What is wrong with the key material.
        #[source]
        source: Box<Error>,
    },
}

/// A root CA certificate and its signing key.
pub struct RootCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// A new self-signed ECDSA P-256 root for `trust_domain`, valid for `validity`.
    pub fn generate(trust_domain: &TrustDomain, validity: Duration) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(Error::Generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain.as_str());
        dn.push(DnType::CommonName, "ambit mesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        // A little slack for clocks that lag behind the CA's.
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + validity;
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::fill(&mut serial)
            .map_err(|_| Error::Generate(rcgen::Error::RingUnspecified))?;
        serial[0] = (serial[0] & 0x7f) | 0x40;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.self_signed(&key).map_err(Error::Generate)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Root material from PEM, checked (see the module docs).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(Error::CertPem)?;
        let (_, cert) = X509Certificate::from_der(&cert_der).map_err(Error::CertDer)?;
        if !cert.is_ca() {
            return Err(Error::NotCa);
        }
        if !cert.validity().is_valid() {
            return Err(Error::Expired {
                not_before: cert.validity().not_before.to_string(),
                not_after: cert.validity().not_after.to_string(),
            });
        }
        let key = KeyPair::from_pem(key_pem).map_err(Error::Key)?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(Error::KeyMismatch);
        }
        Ok(Self {
            cert_der: cert_der.clone(),
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The key as PKCS#8 PEM, to persist it (file or Secret). Handle with care.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub(crate) fn into_parts(self) -> (CertificateDer<'static>, String, KeyPair) {
        (self.cert_der, self.cert_pem, self.key)
    }
}

/// Reads `ca.key` and `ca.crt` from `dir`; when neither exists, generates a root,
/// writes them (the key with mode 0600, the directory 0700 if created) and logs it.
pub fn load_or_create_dir(dir: &Path, trust_domain: &TrustDomain) -> Result<RootCa, Error> {
    let key_path = dir.join(KEY_FILE);
    let cert_path = dir.join(CERT_FILE);
    match (key_path.exists(), cert_path.exists()) {
        (true, true) => {
            let key_pem = read(&key_path)?;
            let cert_pem = read(&cert_path)?;
            RootCa::from_pem(&cert_pem, &key_pem).map_err(|source| Error::In {
                source_name: dir.display().to_string(),
                source: Box::new(source),
            })
        }
        (false, false) => {
            let root = RootCa::generate(trust_domain, GENERATED_ROOT_VALIDITY)?;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| Error::Io {
                    action: "create",
                    path: dir.to_owned(),
                    source,
                })?;
            write_new(&key_path, root.key_pem().as_bytes(), 0o600)?;
            write_new(&cert_path, root.cert_pem().as_bytes(), 0o644)?;
            tracing::info!(
                dir = %dir.display(),
                trust_domain = %trust_domain,
                "no CA root found: created a new self-signed root (ca.key, ca.crt)"
            );
            Ok(root)
        }
        (true, false) => Err(Error::HalfPresent {
            present: key_path,
            missing: cert_path,
        }),
        (false, true) => Err(Error::HalfPresent {
            present: cert_path,
            missing: key_path,
        }),
    }
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Creates `path` (never overwriting) with `mode` and writes `data`.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    let io_err = |action| {
        move |source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("create"))?;
    file.write_all(data).map_err(io_err("write"))?;
    file.sync_all().map_err(io_err("write"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ambit-root-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn creates_then_loads_the_same_root() {
        let dir = tempdir("create");
        let td = TrustDomain::default();
        let created = load_or_create_dir(&dir, &td).unwrap();
        let mode = fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = load_or_create_dir(&dir, &td).unwrap();
        assert_eq!(loaded.cert_der(), created.cert_der());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn half_present_material_is_refused() {
        let dir = tempdir("half");
        let td = TrustDomain::default();
        load_or_create_dir(&dir, &td).unwrap();
        fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let err = load_or_create_dir(&dir, &td).unwrap_err();
        assert!(err.to_string().contains("ca.crt exists but"), "{err}");
        assert!(err.to_string().contains("ca.key does not"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mismatched_key_and_garbage_are_refused() {
        let td = TrustDomain::default();
        let a = RootCa::generate(&td, Duration::from_secs(3600)).unwrap();
        let b = RootCa::generate(&td, Duration::from_secs(3600)).unwrap();
        let err = RootCa::from_pem(a.cert_pem(), &b.key_pem()).unwrap_err();
        assert!(matches!(err, Error::KeyMismatch), "{err:?}");
        let err = RootCa::from_pem("junk", &a.key_pem()).unwrap_err();
        assert!(matches!(err, Error::CertPem(_)), "{err:?}");
        let err = RootCa::from_pem(a.cert_pem(), "junk").unwrap_err();
        assert!(matches!(err, Error::Key(_)), "{err:?}");
        RootCa::from_pem(a.cert_pem(), &a.key_pem()).unwrap();
    }

    #[test]
    fn a_leaf_is_not_accepted_as_root() {
        let td = TrustDomain::default();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let err = RootCa::from_pem(&leaf.pem(), &key.serialize_pem()).unwrap_err();
        assert!(matches!(err, Error::NotCa), "{err:?}");
        let _ = td;
    }

    #[test]
    fn debug_never_prints_the_key() {
        let root = RootCa::generate(&TrustDomain::default(), Duration::from_secs(60)).unwrap();
        let debug = format!("{root:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }
}
