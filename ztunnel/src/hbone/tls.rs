//! TLS for HBONE: TLS 1.3 only, ECDSA P-256 leaves from the mesh CA, ALPN `h2`,
//! both sides authenticated against the trust bundle. The client checks that the
//! server's URI SAN is the identity the registry expects for the destination
//! (secure naming); WebPKI name checks do not apply to URI-only leaves.

use std::sync::Arc;

use rustls::{
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        ParsedCertificate,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use super::Error;
use crate::identity::{Identity, TrustBundle, WorkloadCert};

/// ALPN protocol of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server side of a workload: presents `cert`, requires a client
/// certificate that chains to `bundle`.
pub fn server_config(
    cert: &WorkloadCert,
    bundle: &TrustBundle,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let chains = bundle
        .client_verifier()
        .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?;
    let verifier = Arc::new(SpiffeClientVerifier {
        chains,
        trust_domain: cert.identity().trust_domain().to_string(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain().to_vec(), cert.private_key())
        .map_err(Error::Tls)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The client side of a workload: presents `cert`, accepts only a server whose
/// certificate chains to `bundle` and names `expected`.
pub fn client_config(
    cert: &WorkloadCert,
    bundle: &TrustBundle,
    expected: &Identity,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let verifier = Arc::new(SpiffeServerVerifier {
        bundle: bundle.clone(),
        expected: expected.to_string(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert.chain().to_vec(), cert.private_key())
        .map_err(Error::Tls)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The SPIFFE identity in a leaf certificate: its single URI SAN.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<Identity> {
    spiffe_id_of(cert).ok()
}

/// The SPIFFE identity in a leaf certificate, or what is wrong with it: no
/// subjectAltName, no URI SAN, several, or one that is no SPIFFE ID.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<Identity, String> {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| format!("its subjectAltName does not parse: {e}"))?
        .ok_or("it has no subjectAltName, so no SPIFFE ID")?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err("it has no URI SAN, so no SPIFFE ID".to_owned()),
        [uri] => uri
            .parse()
            .map_err(|e| format!("its URI SAN {uri:?} is not a SPIFFE ID: {e}")),
        more => Err(format!(
            "it has {} URI SANs ({}); a SPIFFE certificate has exactly one",
            more.len(),
            more.join(", ")
        )),
    }
}

/// The identity the peer of a TLS connection authenticated with.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<Identity, Error> {
    certs
        .and_then(|c| c.first())
        .and_then(identity_of)
        .ok_or(Error::NoPeerIdentity)
}

/// Verifies a client's chain against the bundle (rustls' WebPKI verifier:
/// TLS 1.3 signatures, validity dates, an unknown issuer), then its SPIFFE
/// identity: exactly one URI SAN, a SPIFFE ID of the mesh's trust domain.
/// Each refusal names what was wrong, for the server's log line.
#[derive(Debug)]
struct SpiffeClientVerifier {
    chains: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chains.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chains
            .verify_client_cert(end_entity, intermediates, now)?;
        let identity = spiffe_id_of(end_entity).map_err(|reason| {
            rustls::Error::General(format!("client certificate refused: {reason}"))
        })?;
        if identity.trust_domain().as_str() != self.trust_domain {
            return Err(rustls::Error::General(format!(
                "client certificate refused: {identity} is of trust domain {}, not this mesh's {}",
                identity.trust_domain().as_str(),
                self.trust_domain
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chains.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chains.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chains.supported_verify_schemes()
    }
}

/// Verifies the server chain against the bundle and its SPIFFE identity
/// against the one expected for the destination.
#[derive(Debug)]
struct SpiffeServerVerifier {
    bundle: TrustBundle,
    expected: String,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.bundle.root_store(),
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        let found = identity_of(end_entity).map(|i| i.to_string());
        if found.as_deref() != Some(self.expected.as_str()) {
            return Err(rustls::Error::General(format!(
                "secure naming: expected {}, the server presented {}",
                self.expected,
                found.as_deref().unwrap_or("no SPIFFE identity")
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("HBONE uses TLS 1.3 only".to_owned()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
