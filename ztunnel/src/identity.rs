//! Workload identity and the mesh CA (DESIGN.md section 5).
//!
//! - [`spiffe`]: the pure [`Identity`] type (`spiffe://<td>/ns/<ns>/sa/<sa>`).
//! - [`csr`]: creating CSRs (ztunnel side) and validating them strictly (CA side).
//! - [`ca`]: the CA: signing core, root material (directory or Kubernetes Secret),
//!   the gRPC server of `ztunnel ca`, and [`ca::LocalCa`] for local mode.
//! - [`auth`]: node authentication (bearer tokens) and authorization (does a
//!   service account have a pod on the caller's node).
//! - [`client`]: the CA client; [`manager`]: the certificate manager that
//!   requests, caches and rotates certificates per identity.
//! - [`bundle`]: the trust bundle (several roots at once, reloaded on change).
//! - [`remote`]: the identity of a client of a remote CA (ztunnel in a
//!   cluster, the waypoint).
//!
//! Keys: the CA's root key lives in its file or Secret; workload keys are created
//! by the manager and never leave the ztunnel process. No `Debug` prints a key.

pub mod auth;
pub mod bundle;
pub mod ca;
pub mod client;
pub mod csr;
pub mod manager;
mod proto;
pub mod remote;
pub mod spiffe;

pub use bundle::{BundleWatcher, TrustBundle};
pub use manager::{CertManager, CertSnapshot, ManagerConfig, WorkloadCert};
pub use spiffe::{DEFAULT_TRUST_DOMAIN, Identity, TrustDomain};

/// `err` and its sources joined by `: `, for log fields and gRPC status messages
/// (which carry one string, not a chain).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Test helpers shared by the identity and HBONE tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{
        Identity, TrustBundle, TrustDomain, WorkloadCert,
        ca::{CertificateAuthority, RootCa, SigningPolicy},
        csr,
    };

    /// A CA signing with `root` for the default trust domain.
    pub(crate) fn ca(root: RootCa) -> CertificateAuthority {
        CertificateAuthority::new(
            root,
            TrustDomain::default(),
            SigningPolicy::default(),
            Vec::new(),
        )
        .unwrap()
    }

    /// A leaf for `identity` from `ca`, through the real CSR path.
    pub(crate) fn leaf(
        ca: &CertificateAuthority,
        identity: &Identity,
        bundle: &TrustBundle,
    ) -> WorkloadCert {
        let (key, csr_pem) = csr::create(identity).unwrap();
        let issued = ca.sign(&csr_pem, 3600).unwrap();
        WorkloadCert::from_response(identity, &key, &issued.chain_pem, bundle).unwrap()
    }
}
