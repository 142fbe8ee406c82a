//! The CA's gRPC server (`istio.v1.auth.IstioCertificateService/CreateCertificate`)
//! over TLS 1.3 on its own port ([`crate::settings::CA_PORT`]).
//!
//! Each request goes through phases: authenticate the bearer token to a caller,
//! validate the CSR, authorize (a node must host a pod of the requested service
//! account; a workload may ask only for its own), sign. Refusals map to `Unauthenticated`, `InvalidArgument` or
//! `PermissionDenied`, and every decision is an audit log line (target `audit`).

mod args;
mod config;
mod tls;

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tonic::{Request, Response, Status, metadata::MetadataMap};

pub use args::{CaArgs, parse_duration};
pub use config::{CaServerConfig, NodeAuthConfig, RootSource, build, run};

use super::CertificateAuthority;
use crate::identity::{
    auth::{Caller, NodeAuthorizer, TokenAuthenticator},
    csr,
    proto::{
        IstioCertificateRequest, IstioCertificateResponse,
        istio_certificate_service_server::{
            IstioCertificateService, IstioCertificateServiceServer,
        },
    },
};
use crate::{identity::error_chain, settings};

/// Largest request accepted (a CSR is under 1 KiB).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Errors of running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid CA server configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The root key material cannot be loaded or created.
    #[error("cannot load the CA root")]
    Root(#[from] super::root::Error),
    /// The root in a Kubernetes Secret cannot be loaded or created.
    #[error("cannot load the CA root from its Kubernetes Secret")]
    Secret(#[from] super::secret::Error),
    /// The plug-in intermediate (`--cacerts-dir`) is unusable.
    #[error("cannot load the plug-in CA from its cacerts directory")]
    Cacerts(#[from] super::cacerts::Error),
    /// The signing core cannot be built.
    #[error("cannot set up certificate signing")]
    Ca(#[from] super::Error),
    /// The extra roots file is not a usable set of roots.
    #[error("the extra roots are unusable")]
    ExtraRoots(#[from] crate::identity::bundle::Error),
    /// The node token source cannot be set up.
    #[error("cannot set up node authentication")]
    Auth(#[from] crate::identity::auth::Error),
    /// The Kubernetes client cannot be created.
    #[error("cannot create a Kubernetes client")]
    Kube(#[source] Box<kube::Error>),
    /// The TLS configuration cannot be built.
    #[error("cannot set up the CA's TLS endpoint")]
    Tls(#[source] rustls::Error),
    /// Reading a file of the configuration failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The listening socket cannot be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address it could not use.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("the CA gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// Everything a request handler needs.
#[derive(Clone)]
pub struct CaInputs {
    /// The signing core.
    pub ca: Arc<CertificateAuthority>,
    /// Maps bearer tokens to callers.
    pub authenticator: Arc<dyn TokenAuthenticator>,
    /// Decides which node may ask for which service account.
    pub authorizer: Arc<dyn NodeAuthorizer>,
}

/// A bound CA server, ready to serve.
pub struct CaServer {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    inputs: CaInputs,
}

impl CaServer {
    /// Binds `addr` and prepares a TLS endpoint whose certificate (signed by the
    /// CA's root) names `server_names`.
    pub async fn bind(
        addr: SocketAddr,
        server_names: Vec<String>,
        inputs: CaInputs,
    ) -> Result<Self, Error> {
        let tls = tls::server_config(inputs.ca.clone(), server_names)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(Self {
            listener,
            tls,
            inputs,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.listener.local_addr().map_err(|source| Error::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })
    }

    /// The roots the CA hands out (PEM), its signing root first.
    pub fn roots_pem(&self) -> &[String] {
        self.inputs.ca.roots_pem()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let addr = self.local_addr()?;
        tracing::info!(%addr, trust_domain = %self.inputs.ca.trust_domain(), "CA serving");
        let incoming = tls::incoming(self.listener, self.tls);
        let service = IstioCertificateServiceServer::new(Handler(self.inputs))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        tonic::transport::Server::builder()
            // Bounds a request whose TokenReview hangs; the caller gets DeadlineExceeded.
            .timeout(settings::CA_REQUEST_TIMEOUT)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(Error::Serve)
    }
}

struct Handler(CaInputs);

#[tonic::async_trait]
impl IstioCertificateService for Handler {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = self.authenticate(request.metadata()).await?;
        let request = request.into_inner();
        let csr = match csr::validate(&request.csr, self.0.ca.trust_domain()) {
            Ok(csr) => csr,
            Err(err) => {
                let reason = error_chain(&err);
                audit_deny(Some(&caller), None, "invalid", &reason);
                return Err(Status::invalid_argument(reason));
            }
        };
        let identity = csr.identity();
        let (namespace, service_account) = (identity.namespace(), identity.service_account());
        let refused = match &caller {
            Caller::Node(node) => (!self
                .0
                .authorizer
                .has_pod_on_node(namespace, service_account, node))
            .then(|| {
                format!(
                    "no pod of service account {namespace}/{service_account} is scheduled on node {node}"
                )
            }),
            Caller::Workload {
                namespace: own_ns,
                service_account: own_sa,
            } => (own_ns != namespace || own_sa != service_account).then(|| {
                format!("a workload may only obtain its own identity ({own_ns}/{own_sa})")
            }),
        };
        if let Some(reason) = refused {
            audit_deny(Some(&caller), Some(&identity.to_string()), "deny", &reason);
            return Err(Status::permission_denied(format!(
                "{caller} may not obtain a certificate for {identity}: {reason}"
            )));
        }
        let issued = self
            .0
            .ca
            .sign_valid(&csr, request.validity_duration, time::OffsetDateTime::now_utc())
            .map_err(|err| {
                let reason = error_chain(&err);
                tracing::error!(target: "audit", node = %caller.node(), workload = %caller.workload(), identity = %identity, decision = "error", reason, "certificate signing failed");
                Status::internal("the CA could not sign the certificate")
            })?;
        let reason = match caller {
            Caller::Node(_) => "the service account has a pod on the node",
            Caller::Workload { .. } => "the workload's own identity",
        };
        tracing::info!(
            target: "audit",
            node = %caller.node(),
            workload = %caller.workload(),
            identity = %identity,
            decision = "allow",
            serial = issued.serial_hex,
            reason,
            "certificate issued"
        );
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: issued.chain_pem,
        }))
    }
}

impl Handler {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let token = match bearer_token(metadata) {
            Ok(token) => token,
            Err(reason) => {
                audit_deny(None, None, "unauthenticated", reason);
                return Err(Status::unauthenticated(reason));
            }
        };
        match self.0.authenticator.authenticate(token).await {
            Ok(caller) => Ok(caller),
            Err(err) => {
                let reason = error_chain(&err);
                audit_deny(None, None, "unauthenticated", &reason);
                Err(Status::unauthenticated(format!(
                    "the caller is not authenticated: {reason}"
                )))
            }
        }
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer_token(metadata: &MetadataMap) -> Result<&str, &'static str> {
    let value = metadata
        .get("authorization")
        .ok_or("no authorization metadata: send `authorization: Bearer <token>`")?;
    let value = value
        .to_str()
        .map_err(|_| "the authorization metadata is not ASCII")?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or("the authorization metadata is not `Bearer <token>`")?
        .trim();
    if token.is_empty() {
        return Err("the bearer token is empty");
    }
    Ok(token)
}

fn audit_deny(caller: Option<&Caller>, identity: Option<&str>, decision: &str, reason: &str) {
    tracing::warn!(
        target: "audit",
        node = %caller.map(Caller::node).unwrap_or_default(),
        workload = %caller.map(Caller::workload).unwrap_or_default(),
        identity = identity.unwrap_or(""),
        decision,
        reason,
        "certificate request refused"
    );
}
