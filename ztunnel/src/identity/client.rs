//! The ztunnel side of the CA API: sends a CSR with the node's bearer token over
//! TLS 1.3 (the CA's certificate verified against the trust bundle) and returns
//! the PEM chain.
//!
//! [`CertificateSigner`] is the seam the certificate manager uses; [`CaClient`] is
//! its gRPC implementation.

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::{metadata::MetadataValue, transport::Channel};

use super::{
    auth::BoxFuture,
    bundle::TrustBundle,
    proto::{
        IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
    },
};
use crate::settings;

/// A failed certificate request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client configuration is unusable.
    #[error("invalid CA client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The bearer token cannot be read.
    #[error("cannot read the node token {path}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The token cannot be sent as gRPC metadata.
    #[error("the node token contains characters that cannot be sent in a header")]
    TokenValue,
    /// The call failed: refused by the CA, or the CA is unreachable.
    #[error("the CA call failed with {code:?}: {message}")]
    Rpc {
        /// gRPC status code.
        code: tonic::Code,
        /// The CA's (or transport's) message.
        message: String,
    },
    /// The CA did not answer in time.
    #[error("the CA did not answer within {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// True when retrying later may help (the CA is down or overloaded), false
    /// when the CA refused this request.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Rpc { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Aborted
            ),
            Self::Timeout(_) | Self::Token { .. } => true,
            _ => false,
        }
    }
}

/// Something that turns a PEM CSR into a PEM chain (leaf first, roots last).
pub trait CertificateSigner: Send + Sync {
    /// Asks for a certificate of `validity` for `csr_pem`.
    fn sign<'a>(
        &'a self,
        csr_pem: &'a str,
        validity: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, Error>>;
}

/// Where the node's bearer token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file read at every request (projected service-account tokens rotate).
    File(PathBuf),
    /// A fixed token (tests, local mode).
    Static(String),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Static(_) => f.write_str("Static(<redacted>)"),
        }
    }
}

impl TokenSource {
    async fn read(&self) -> Result<String, Error> {
        match self {
            Self::Static(token) => Ok(token.clone()),
            Self::File(path) => tokio::fs::read_to_string(path)
                .await
                .map(|t| t.trim().to_owned())
                .map_err(|source| Error::Token {
                    path: path.clone(),
                    source,
                }),
        }
    }
}

/// How to reach the CA.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// `host:port` of the CA.
    pub address: String,
    /// The name the CA's certificate must carry (one of its server names).
    pub server_name: String,
    /// The node's token.
    pub token: TokenSource,
    /// Deadline of one request, connection included.
    pub timeout: Duration,
}

/// A gRPC client of the mesh CA.
#[derive(Debug, Clone)]
pub struct CaClient {
    grpc: IstioCertificateServiceClient<Channel>,
    token: TokenSource,
    timeout: Duration,
}

impl CaClient {
    /// A client connecting lazily (on first use, and again after failures); the
    /// CA's certificate is checked against `bundle` as it is at each connection.
    pub fn new(config: CaClientConfig, bundle: TrustBundle) -> Result<Self, Error> {
        let server_name =
            ServerName::try_from(config.server_name.clone()).map_err(|_| Error::Config {
                reason: format!("{:?} is not a valid server name", config.server_name),
            })?;
        let address = Arc::<str>::from(config.address.as_str());
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let (address, bundle, server_name) =
                (address.clone(), bundle.clone(), server_name.clone());
            async move { connect(&address, &bundle, server_name).await }
        });
        // The scheme only labels HTTP/2 requests; TLS is done by the connector.
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", config.server_name))
                .map_err(|err| Error::Config {
                    reason: format!("bad endpoint: {err}"),
                })?
                .connect_timeout(settings::CA_CONNECT_TIMEOUT);
        let channel = endpoint.connect_with_connector_lazy(connector);
        Ok(Self {
            grpc: IstioCertificateServiceClient::new(channel),
            token: config.token,
            timeout: config.timeout,
        })
    }

    async fn call(&self, csr_pem: &str, validity: Duration) -> Result<Vec<String>, Error> {
        let token = self.token.read().await?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem.to_owned(),
            validity_duration: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
            metadata: None,
        });
        let value =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| Error::TokenValue)?;
        request.metadata_mut().insert("authorization", value);
        request.set_timeout(self.timeout);
        let mut grpc = self.grpc.clone();
        let response = tokio::time::timeout(self.timeout, grpc.create_certificate(request))
            .await
            .map_err(|_| Error::Timeout(self.timeout))?
            .map_err(|status| Error::Rpc {
                code: status.code(),
                message: status.message().to_owned(),
            })?;
        Ok(response.into_inner().cert_chain)
    }
}

impl CertificateSigner for CaClient {
    fn sign<'a>(
        &'a self,
        csr_pem: &'a str,
        validity: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, Error>> {
        Box::pin(self.call(csr_pem, validity))
    }
}

/// TCP + TLS 1.3 to the CA, verified against the bundle's current roots.
async fn connect(
    address: &str,
    bundle: &TrustBundle,
    server_name: ServerName<'static>,
) -> io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(io::Error::other)?
    .with_root_certificates(bundle.root_store())
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await?;
    Ok(TokioIo::new(tls))
}
