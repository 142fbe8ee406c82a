//! ztunnel: ambit's node data plane.
//!
//! One ztunnel runs on every node. It captures the TCP traffic of the enrolled pods
//! of its node with eBPF (`capture`), and, as later modules land, carries it over
//! mutual TLS in HBONE tunnels with a SPIFFE identity per workload, enforcing L4
//! policy at the destination. The waypoint links this library without the
//! `capture` feature, so the modules it shares never depend on aya.
//!
//! Module map (DESIGN.md section 2): `capture` (eBPF, the only `unsafe`),
//! `settings` (process flags and environment), `telemetry` (logging),
//! `identity` (SPIFFE identities, the mesh CA, certificates and trust bundle),
//! `config` (Kubernetes watchers and the local file) feeds `registry` (workloads,
//! services, policies), and `proxy` (per-pod listeners) serves the captured pods;
//! `hbone` carries them between nodes, and `policy` evaluates AuthorizationPolicy
//! (Istio's semantics) for ztunnel and the waypoint; `accept` is the one accept
//! loop (with backoff) of every listener; `route` decides where a connection
//! goes and `relay` moves its bytes, for ztunnel and the waypoint alike;
//! `readiness` answers the kubelet's probe on 15021 for both.
#![warn(missing_docs)]
// `unsafe` only in `capture` (eBPF maps, netns and socket options) and `heap`
// (glibc's malloc_trim and mallinfo2); the library without capture (the
// waypoint's) forbids it outright.
#![cfg_attr(feature = "capture", deny(unsafe_code))]
#![cfg_attr(not(feature = "capture"), forbid(unsafe_code))]

pub mod accept;
pub mod admin;
#[cfg(feature = "capture")]
#[allow(unsafe_code)]
pub mod capture;
pub mod config;
pub mod controller;
pub mod flows;
pub mod hbone;
#[cfg(all(feature = "capture", target_env = "gnu"))]
#[allow(unsafe_code)]
pub mod heap;
pub mod identity;
pub mod metrics;
pub mod policy;
#[cfg(feature = "capture")]
pub mod proxy;
pub mod readiness;
pub mod registry;
pub mod relay;
pub mod route;
pub mod settings;
pub mod telemetry;
pub mod trace;
