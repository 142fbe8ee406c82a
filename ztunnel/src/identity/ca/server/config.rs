//! The configuration of `ztunnel ca` and [`run`], which builds everything from it.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use serde::Serialize;

use super::{CaInputs, CaServer, Error};
use crate::{
    controller::{self, ControllerConfig, MeshFacts},
    identity::{
        auth::{
            NodeAuthorizer, TokenAuthenticator, TokenFile, token_review::TokenReviewAuthenticator,
        },
        bundle::TrustBundle,
        ca::{Cacerts, CertificateAuthority, SigningPolicy, root, secret},
        spiffe::TrustDomain,
    },
    settings,
};

/// Where the CA's root key and certificate live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RootSource {
    /// A directory with `ca.key` and `ca.crt`; both are created when absent.
    Directory(PathBuf),
    /// A Kubernetes Secret with keys `ca.key` and `ca.crt`; created when absent.
    KubernetesSecret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// An operator's intermediate in Istio's `cacerts` layout (`ca-cert.pem`,
    /// `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`); never created, checked
    /// at start (see [`crate::identity::ca::cacerts`]).
    Cacerts(PathBuf),
}

/// How callers (ztunnels) prove which node they run on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeAuthConfig {
    /// Local mode: a file of `<token> <node-name>` lines.
    TokenFile(PathBuf),
    /// Kubernetes: the caller's projected service-account token, checked with a
    /// `TokenReview`; the node comes from the token's pod binding.
    TokenReview {
        /// Audiences the token must carry (empty: the API server's default).
        audiences: Vec<String>,
        /// Service accounts (`namespace/name`) whose tokens are accepted, i.e.
        /// the ztunnel DaemonSet's.
        allowed_service_accounts: Vec<String>,
    },
}

/// Everything `ztunnel ca` needs. Plain data: log it and serve it as is (it holds
/// no secret, only where secrets are).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaServerConfig {
    /// Listening address; default `[::]:15012`.
    pub listen: SocketAddr,
    /// The trust domain signed for.
    pub trust_domain: String,
    /// The root key material.
    pub root: RootSource,
    /// A PEM file of other roots to hand out beside the signing root (rotation).
    pub extra_roots_file: Option<PathBuf>,
    /// Lifetime when a caller asks for none.
    pub default_validity: Duration,
    /// Longest lifetime issued.
    pub max_validity: Duration,
    /// DNS names (or IPs) in the CA's serving certificate; ztunnels verify one.
    pub server_names: Vec<String>,
    /// Node authentication.
    pub node_auth: NodeAuthConfig,
    /// The root ConfigMap and the waypoint controller (Kubernetes only).
    pub controller: ControllerConfig,
}

impl CaServerConfig {
    /// Local-mode defaults: keys in `dir`, tokens in `dir/tokens`.
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], settings::CA_PORT)),
            trust_domain: crate::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            node_auth: NodeAuthConfig::TokenFile(dir.join(settings::CA_TOKEN_FILE)),
            root: RootSource::Directory(dir),
            extra_roots_file: None,
            default_validity: settings::CERT_DEFAULT_VALIDITY,
            max_validity: settings::CERT_MAX_VALIDITY,
            server_names: settings::CA_SERVER_NAMES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            controller: ControllerConfig {
                namespace: settings::SYSTEM_NAMESPACE.to_owned(),
                root_config_map: None,
                waypoint_template: None,
                resync: controller::RESYNC_DEFAULT,
            },
        }
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<TrustDomain, Error> {
        let trust_domain = TrustDomain::new(&self.trust_domain).map_err(|err| Error::Config {
            reason: err.to_string(),
        })?;
        self.policy().validate()?;
        if self.server_names.is_empty() {
            return Err(Error::Config {
                reason: "at least one server name is needed for the serving certificate".to_owned(),
            });
        }
        if let NodeAuthConfig::TokenReview { audiences, .. } = &self.node_auth
            && audiences.iter().all(String::is_empty)
        {
            // Without one, the API server checks tokens for its own audience:
            // any token a pod holds for talking to the API server would do.
            return Err(Error::Config {
                reason: "TokenReview needs a dedicated token audience (--token-review-audience)"
                    .to_owned(),
            });
        }
        Ok(trust_domain)
    }

    fn policy(&self) -> SigningPolicy {
        SigningPolicy {
            default_validity: self.default_validity,
            max_validity: self.max_validity,
        }
    }
}

/// Runs the CA described by `config` until `shutdown` completes. `authorizer`
/// answers which service accounts have pods on which node (the registry in a
/// cluster). A Kubernetes client is created from the environment when the root
/// source or node authentication needs one.
pub async fn run(
    config: CaServerConfig,
    authorizer: Arc<dyn NodeAuthorizer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let needs_kube = matches!(config.root, RootSource::KubernetesSecret { .. })
        || matches!(config.node_auth, NodeAuthConfig::TokenReview { .. })
        || config.controller.enabled();
    let kube = if needs_kube {
        Some(
            kube::Client::try_default()
                .await
                .map_err(|e| Error::Kube(Box::new(e)))?,
        )
    } else {
        None
    };
    let server = build(&config, authorizer, kube.clone()).await?;
    // Stops with the process: it holds no state worth a graceful end.
    let _controller = match kube {
        Some(client) if config.controller.enabled() => {
            let facts = MeshFacts {
                trust_domain: config.trust_domain.clone(),
                roots_pem: server
                    .roots_pem()
                    .iter()
                    .map(|pem| format!("{}\n", pem.trim_end()))
                    .collect(),
            };
            Some(AbortOnDrop(tokio::spawn(controller::run(
                client,
                config.controller.clone(),
                facts,
            ))))
        }
        _ => None,
    };
    server.serve(shutdown).await
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Builds and binds the server; `kube` must be given when the config needs it.
pub async fn build(
    config: &CaServerConfig,
    authorizer: Arc<dyn NodeAuthorizer>,
    kube: Option<kube::Client>,
) -> Result<CaServer, Error> {
    let trust_domain = config.validate()?;
    let need_kube = || Error::Config {
        reason: "a Kubernetes client is needed for this configuration".to_owned(),
    };
    let extra_roots = match &config.extra_roots_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            // Refuse a file that is not a usable set of roots.
            TrustBundle::from_pem(text.as_bytes(), &path.display().to_string())?;
            crate::identity::ca::pem_certs(&text)
                .map_err(|e| Error::Config {
                    reason: format!("{}: {e}", path.display()),
                })?
                .into_iter()
                .map(|(pem, _)| pem)
                .collect()
        }
        None => Vec::new(),
    };
    let policy = config.policy();
    let ca = match &config.root {
        RootSource::Directory(dir) => {
            let root = root::load_or_create_dir(dir, &trust_domain)?;
            CertificateAuthority::new(root, trust_domain, policy, extra_roots)?
        }
        RootSource::KubernetesSecret { namespace, name } => {
            let client = kube.clone().ok_or_else(need_kube)?;
            let root = secret::load_or_create(client, namespace, name, &trust_domain).await?;
            CertificateAuthority::new(root, trust_domain, policy, extra_roots)?
        }
        RootSource::Cacerts(dir) => {
            let cacerts = Cacerts::load_dir(dir)?;
            tracing::info!(dir = %dir.display(), "signing with the plug-in CA intermediate");
            CertificateAuthority::from_cacerts(cacerts, trust_domain, policy, extra_roots)?
        }
    };
    let authenticator: Arc<dyn TokenAuthenticator> = match &config.node_auth {
        NodeAuthConfig::TokenFile(path) => Arc::new(TokenFile::open(path)?),
        NodeAuthConfig::TokenReview {
            audiences,
            allowed_service_accounts,
        } => Arc::new(TokenReviewAuthenticator::new(
            kube.ok_or_else(need_kube)?,
            audiences.clone(),
            allowed_service_accounts.clone(),
        )),
    };
    let inputs = CaInputs {
        ca: Arc::new(ca),
        authenticator,
        authorizer,
    };
    CaServer::bind(config.listen, config.server_names.clone(), inputs).await
}
