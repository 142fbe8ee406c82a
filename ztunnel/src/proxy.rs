//! The per-pod listeners and what happens to each connection they accept.
//!
//! For every enrolled pod, ztunnel listens inside the pod's network namespace:
//! 15001 on loopback takes the pod's redirected outbound connections, 15006 on
//! the pod's addresses takes inbound plaintext (when PeerAuthentication allows
//! it), 15008 takes inbound HBONE.
//!
//! Outbound, the registry decides the route (`route`): HBONE to a destination in
//! the mesh, with secure naming; plain TCP to anything outside it. Inbound, the
//! HBONE server authenticates the client's SPIFFE identity and connects to the
//! application from the client's own address.
//!
//! Which pods are enrolled, and in which network namespace, is `discover`'s;
//! `cni` is the socket through which the CNI plugin names a new pod's
//! namespace before its app starts.

mod accept;
pub mod access;
pub mod cni;
mod discover;
mod hbone_inbound;
mod inbound;
mod outbound;
mod pods;
mod socket;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

pub use discover::{Desired, NetnsSource};
pub use pods::{LocalPod, PodManager, PodManagerConfig};
pub use socket::{PodSockets, SocketFactory, error_chain};

use crate::{
    identity::{CertManager, TrustBundle, TrustDomain},
    policy::PolicyIndex,
    registry::Registry,
};

/// What the data path needs besides sockets: the mesh's configuration, the
/// node's certificates and where connections go.
#[derive(Debug)]
pub struct Mesh {
    /// This node's name.
    pub node: String,
    /// The workloads, services and policies.
    pub registry: Arc<Registry>,
    /// Certificates of the local workloads' identities.
    pub certs: CertManager,
    /// Roots every peer must chain to.
    pub bundle: TrustBundle,
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
    /// Route decisions (round robin state).
    pub router: crate::route::Router,
    /// AuthorizationPolicies compiled for the node's pods; swapped whole when
    /// the registry changes, so a change applies to the next connection.
    pub policies: arc_swap::ArcSwap<PolicyIndex>,
    /// The connection metrics (`istio_tcp_*`).
    pub metrics: crate::metrics::ProxyMetrics,
    /// The connections being proxied now.
    pub open: access::OpenConnections,
    /// The recent flows, for the traffic view.
    pub flows: crate::flows::FlowLog,
    /// What each HBONE peer may cost the inbound listeners.
    pub hbone_guard: Arc<crate::hbone::Guard>,
}

impl Mesh {
    /// Rebuilds the compiled policies from `snapshot`, and warns about policies
    /// whose HTTP-only fields ztunnel cannot enforce (they fail safe).
    pub fn update_policies(&self, snapshot: &crate::registry::Snapshot) {
        let index = PolicyIndex::build(snapshot);
        for fail_safe in index.l7_ignored() {
            tracing::warn!(policy = %fail_safe, "policy has HTTP fields that need a waypoint: enforced fail-safe at L4");
        }
        self.policies.store(Arc::new(index));
    }

    /// Decides a connection to `dst` of the pod `pod` from `src` (with the
    /// client's SPIFFE identity, when it has one): `Ok` and `Err` say what
    /// decided (the policy and rule, or the default) for the access log. Every decision that a DENY, CUSTOM or AUDIT policy
    /// took part in, and every denial, is an `audit` log line.
    pub fn authorize(
        &self,
        pod: &crate::registry::ObjectKey,
        src: SocketAddr,
        dst: SocketAddr,
        identity: Option<&str>,
    ) -> Result<String, String> {
        let index = self.policies.load();
        let Some(policies) = index.get(pod) else {
            // Not an enrolled pod of the registry's latest view (gone, or not
            // known yet): its policies are unknown, so nothing is allowed.
            tracing::info!(
                target: "audit",
                decision = "denied: the destination workload is unknown to the policy index",
                src.addr = %src,
                src.identity = identity.unwrap_or(""),
                dst.addr = %dst,
                dst.workload = %pod,
                "authorization"
            );
            self.metrics.decided("none", false);
            return Err(format!(
                "denied: workload {pod} is not in the registry's current view, so its policies are unknown"
            ));
        };
        let peer = match identity.map(crate::policy::Peer::from_uri) {
            Some(Ok(peer)) => Some(peer),
            // An identity the engine cannot read is treated as none: fail closed
            // for rules that need one.
            Some(Err(_)) | None => None,
        };
        let decision =
            policies.evaluate(&crate::policy::Attributes::connection(src.ip(), dst, peer));
        let audited = decision.audits.iter().len() > 0;
        if !decision.is_allowed() || audited {
            // Only on audited or denied connections: the names cost an allocation.
            let audit: Vec<String> = decision
                .audits
                .iter()
                .map(|rule| rule.to_string())
                .collect();
            tracing::info!(
                target: "audit",
                decision = %decision,
                audit = audit.join(", "),
                src.addr = %src,
                src.identity = identity.unwrap_or(""),
                dst.addr = %dst,
                dst.workload = %pod,
                "authorization"
            );
        }
        let action = match decision.reason {
            crate::policy::Reason::Custom(_) => "CUSTOM",
            crate::policy::Reason::Denied(_) => "DENY",
            crate::policy::Reason::Allowed(_) | crate::policy::Reason::NoAllowMatched => "ALLOW",
            crate::policy::Reason::NoAllowPolicy => "none",
        };
        self.metrics.decided(action, decision.is_allowed());
        if decision.is_allowed() {
            Ok(decision.to_string())
        } else {
            Err(decision.to_string())
        }
    }
}

impl ConnectionError {
    /// A short fixed word for why the connection failed: the `reason` label of
    /// `ambit_connection_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoOriginalDestination | Self::Capture(_) => "no_original_destination",
            Self::Loop(_) => "loop",
            Self::Connect { .. } => "connect",
            Self::ConnectTimeout { .. } => "connect_timeout",
            Self::Idle(_) => "idle",
            Self::Relay(_) => "reset",
            Self::Hbone { .. } => "hbone",
            Self::Certificate { .. } => "certificate",
            Self::NoEndpoint(_) => "no_endpoint",
            Self::NoWaypoint { .. } => "no_waypoint",
            Self::Strict(_) => "strict",
            Self::Denied(_) => "denied",
        }
    }

    /// The `response_flags` of a connection refused with this error before
    /// it carried a byte, as Istio's ztunnel reports them: `DENY` for a
    /// policy refusal, `CONNECT` when the destination (or the tunnel to it)
    /// could not be reached; `None` for errors that are no refusal of a
    /// routed connection (a loop, a connection without destination) or that
    /// end one already counted.
    pub fn response_flag(&self) -> Option<&'static str> {
        match self {
            Self::Strict(_) | Self::Denied(_) => Some("DENY"),
            Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::Hbone { .. }
            | Self::Certificate { .. }
            | Self::NoEndpoint(_)
            | Self::NoWaypoint { .. } => Some("CONNECT"),
            Self::NoOriginalDestination
            | Self::Capture(_)
            | Self::Loop(_)
            | Self::Idle(_)
            | Self::Relay(_) => None,
        }
    }
}

/// Errors of the proxy layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The eBPF capture refused an operation.
    #[error("capture")]
    Capture(#[from] crate::capture::Error),
    /// A listener could not be opened in a pod.
    #[error("cannot listen on {addr} in pod {pod}")]
    Listen {
        /// The pod, as namespace/name.
        pod: String,
        /// The address it could not use.
        addr: SocketAddr,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// The pod's namespace or service account is not a valid identity.
    #[error("pod {pod} has no valid SPIFFE identity")]
    Identity {
        /// The pod, as namespace/name.
        pod: String,
        /// Which naming rule it breaks.
        #[source]
        source: crate::identity::spiffe::NameError,
    },
    /// The network namespace given for a pod is refused.
    #[error("pod {pod}: network namespace {path} refused: {reason}")]
    Netns {
        /// The pod, as namespace/name.
        pod: String,
        /// The namespace file.
        path: std::path::PathBuf,
        /// What went wrong, in words.
        reason: String,
    },
    /// The pod is not enrolled.
    #[error("pod {uid} is not enrolled")]
    NotEnrolled {
        /// The pod's uid.
        uid: String,
    },
}

/// Why a proxied connection ended badly; decides its access log line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The outbound connection has no original destination recorded.
    #[error("no original destination recorded for this connection")]
    NoOriginalDestination,
    /// The destination would loop back into ztunnel.
    #[error("destination {0} would loop back into ztunnel")]
    Loop(SocketAddr),
    /// Connecting to the destination failed.
    #[error("cannot connect to {dst}")]
    Connect {
        /// The destination.
        dst: SocketAddr,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error("connecting to {dst} timed out after {after:?}")]
    ConnectTimeout {
        /// The destination.
        dst: SocketAddr,
        /// The limit.
        after: Duration,
    },
    /// Neither side moved a byte for the idle timeout.
    #[error("closed after {0:?} without traffic (idle timeout)")]
    Idle(Duration),
    /// Moving bytes failed after the connection was set up.
    #[error("relaying bytes failed")]
    Relay(#[source] io::Error),
    /// The HBONE tunnel could not be opened.
    #[error("HBONE tunnel to {gateway} failed")]
    Hbone {
        /// The peer's HBONE address.
        gateway: SocketAddr,
        /// What failed in the HBONE connection or stream.
        #[source]
        source: crate::hbone::Error,
    },
    /// No certificate for the source workload.
    #[error("no certificate for {identity}")]
    Certificate {
        /// The identity.
        identity: String,
        /// Why the certificate manager has none.
        #[source]
        source: crate::identity::manager::Error,
    },
    /// A Service has no ready endpoint.
    #[error("service {0} has no ready endpoint")]
    NoEndpoint(SocketAddr),
    /// The destination uses a waypoint and none of its pods is ready.
    #[error(
        "{dst} uses waypoint {waypoint}, which has no ready pod: refused, never sent around it"
    )]
    NoWaypoint {
        /// The destination as addressed.
        dst: SocketAddr,
        /// The waypoint.
        waypoint: crate::registry::ObjectKey,
    },
    /// PeerAuthentication requires mTLS and the connection is plaintext.
    #[error("plaintext refused: PeerAuthentication is STRICT for {0}")]
    Strict(SocketAddr),
    /// An AuthorizationPolicy denied the connection.
    #[error("{0}")]
    Denied(String),
    /// Looking up the original destination failed.
    #[error("cannot look up the original destination")]
    Capture(#[source] crate::capture::Error),
}

impl From<crate::relay::RelayError> for ConnectionError {
    fn from(error: crate::relay::RelayError) -> Self {
        match error {
            crate::relay::RelayError::Idle(after) => Self::Idle(after),
            crate::relay::RelayError::Io(error) => Self::Relay(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        config::file,
        identity::{
            ManagerConfig,
            auth::BoxFuture,
            ca::RootCa,
            client::{CertificateSigner, Error as SignError},
        },
        registry::ObjectKey,
    };

    /// A CA that is never reached: these decisions need no certificate.
    struct NoSigner;

    impl CertificateSigner for NoSigner {
        fn sign<'a>(
            &'a self,
            _csr_pem: &'a str,
            _validity: Duration,
        ) -> BoxFuture<'a, Result<Vec<String>, SignError>> {
            Box::pin(async {
                Err(SignError::Config {
                    reason: "no CA in this test".into(),
                })
            })
        }
    }

    const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: shop, annotations: {ambit.dev/netns: /var/run/netns/backend}}
spec: {nodeName: node-a, containers: [{name: app, image: app}]}
status: {podIP: 198.18.1.20}
";

    fn mesh(yaml: &str) -> Mesh {
        let registry = Arc::new(file::test_registry(yaml).expect("the mesh parses"));
        let root = RootCa::generate(&TrustDomain::default(), Duration::from_secs(3600)).unwrap();
        let bundle = TrustBundle::from_pem(root.cert_pem().as_bytes(), "test").unwrap();
        let mesh = Mesh {
            node: "node-a".into(),
            registry: registry.clone(),
            certs: CertManager::new(Arc::new(NoSigner), bundle.clone(), ManagerConfig::default()),
            bundle,
            trust_domain: TrustDomain::default(),
            router: crate::route::Router::default(),
            policies: Default::default(),
            metrics: Default::default(),
            open: Default::default(),
            flows: Default::default(),
            hbone_guard: Arc::new(crate::hbone::Guard::new(
                Default::default(),
                Default::default(),
            )),
        };
        mesh.update_policies(&registry.snapshot());
        mesh
    }

    #[tokio::test]
    async fn connections_to_a_workload_the_registry_does_not_know_are_refused() {
        let mesh = mesh(MESH);
        let src: SocketAddr = "198.18.1.10:40000".parse().unwrap();
        let dst: SocketAddr = "198.18.1.20:8080".parse().unwrap();
        let known = ObjectKey::new("shop", "backend");
        let gone = ObjectKey::new("shop", "gone");
        let peer = Some("spiffe://cluster.local/ns/shop/sa/web");
        let allowed = mesh.authorize(&known, src, dst, peer).expect("allowed");
        assert!(allowed.starts_with("allowed"), "{allowed}");
        let denied = mesh.authorize(&gone, src, dst, peer).unwrap_err();
        assert!(denied.contains("shop/gone"), "{denied}");
        // Plaintext: the known pod is PERMISSIVE by default; the unknown one
        // has no PeerAuthentication that could be read, so none gets in.
        assert!(inbound::plaintext_allowed(&mesh, &known, src, dst));
        assert!(!inbound::plaintext_allowed(&mesh, &gone, src, dst));
    }
}
