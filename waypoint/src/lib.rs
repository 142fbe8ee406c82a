//! waypoint: ambit's optional per-namespace L7 proxy.
//!
//! A waypoint terminates HBONE tunnels addressed to the services of its namespace,
//! validates JWTs (RequestAuthentication) and enforces L7 AuthorizationPolicy. It
//! reuses ztunnel's library (identity, HBONE, policy, registry, config) with the
//! eBPF capture compiled out. So far it serves its readiness endpoint; the proxy
//! itself lands with the waypoint issue.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod jwt;
pub mod readiness;
pub mod request;
