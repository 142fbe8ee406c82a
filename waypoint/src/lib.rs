//! waypoint: ambit's optional per-namespace L7 proxy.
//!
//! A waypoint terminates HBONE tunnels addressed to the services of its namespace,
//! validates JWTs (RequestAuthentication) and enforces L7 AuthorizationPolicy. It
//! reuses ztunnel's library (identity, HBONE, policy, registry, config) with the
//! eBPF capture compiled out: [`proxy`] is the data path, [`jwt`] the token
//! validation, [`request`] the checks and path normalization every request
//! goes through before policy sees it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod jwt;
pub mod proxy;
/// The readiness endpoint, shared with ztunnel.
pub use ztunnel::readiness;
pub mod request;
