//! ambit's end-to-end test support: a Kubernetes-like cluster built from Linux
//! primitives (DESIGN.md section 10), on which every end-to-end suite runs.
//!
//! A [`Testbed`] is a set of simulated nodes (a network namespace plus a cgroup v2
//! subtree each) hanging off a bridge in a fabric namespace, with pods (network
//! namespaces with a veth to their node). Addresses come from 198.18.0.0/15 and
//! fd00::/8; nothing touches the host namespace's routes or interfaces; everything
//! is torn down on drop, on panic, and, for a run that crashed, by the next run.
//!
//! [`apiserver`] is a fake Kubernetes list/watch API server for the Kubernetes
//! configuration source; [`bench`] is the benchmark driver of `cargo xtask bench`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apiserver;
pub mod bench;
pub mod jwt;
pub mod load;
pub mod mesh;
pub mod testbed;
pub mod waypoint;

pub use testbed::{Error, Node, Pod, Testbed, TestbedBuilder, privileged};
