//! ambit-cni: the CNI plugin (spec 1.0.0) that has the node's ztunnel enroll a
//! new pod's network namespace into the mesh before the pod's containers start,
//! so that none of the pod's connections leaves uncaptured.
//!
//! The runtime runs it chained after the cluster's primary plugin (bridge +
//! host-local, say), with the `CNI_*` variables set and the network config,
//! including the primary plugin's `prevResult`, on stdin. For each ADD, DEL or
//! CHECK it makes one request to ztunnel over ztunnel's unix socket
//! (`ztunnelSocket`, default `/var/run/ambit/cni.sock`; see [`protocol`]) and
//! waits for the reply at most `timeoutSeconds` (default 30).
//!
//! # When a pod may start
//!
//! A pod that should be in the mesh must never start uncaptured, so when in
//! doubt the plugin fails closed: ADD fails with code 11 ("try again later"),
//! the runtime tears the sandbox down and the kubelet retries, until ztunnel
//! answers. When ztunnel cannot be asked, the plugin falls back on the
//! enrolled-namespaces file that ztunnel keeps beside its socket ([`enrolled`]).
//!
//! | ztunnel's answer | enrolled-namespaces file | ADD | CHECK |
//! |---|---|---|---|
//! | `enrolled: true` | (not read) | pass `prevResult` on | pass |
//! | `enrolled: false` | lists the namespace | pass `prevResult` on | fail, 100 |
//! | `enrolled: false` | does not list it, or unreadable | pass `prevResult` on | pass |
//! | `error`, or a malformed reply | (not read) | fail, 100 | fail, 100 |
//! | unreachable or timed out | lists the namespace | fail, 11 | fail, 11 |
//! | unreachable or timed out | missing or unreadable | fail, 11 | pass |
//! | unreachable or timed out | does not list the namespace | pass `prevResult` on | pass |
//!
//! When ztunnel answers `enrolled: false`, ADD trusts it: ztunnel knows the mesh
//! configuration better than its last-written file does. A missing file means
//! ztunnel has not started on this node yet (it writes the file at start-up),
//! so any namespace may be enrolled; ADD refuses, and a node's first pods wait
//! for ztunnel. "Unreachable" covers a missing socket, a refused or broken
//! connection, and no complete reply within the timeout. DEL always succeeds
//! and prints nothing: the spec wants DEL to be idempotent, and ztunnel also
//! releases pods that leave its registry.
//!
//! # Layout
//!
//! [`plugin::run`] is one CNI invocation, from an environment and stdin to an
//! [`Outcome`] (stdout, stderr, exit code), so every path is tested in-process;
//! `main.rs` only wires it to the process. [`cni_args`] reads the pod from
//! `CNI_ARGS`, [`config`] the network config, [`client`] talks to ztunnel, and
//! [`install`] with [`cli`] is the node's command line: `install`, `uninstall`,
//! `installed` (exit 0 when the primary config chains the plugin and the binary
//! is in place: the install container's readiness probe) and `install --watch`,
//! which stays running and installs again whenever the primary plugin's rewrite
//! of its config drops the entry or the binary goes missing or changes
//! ([`install::drift`]; [`install::reconcile`] is one pass, [`cli::Watch`] the
//! loop).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod cni_args;
pub mod config;
pub mod enrolled;
pub mod install;
pub mod outcome;
pub mod plugin;
pub mod protocol;

pub use outcome::Outcome;
pub use plugin::run;

/// The plugin's `type` in a conflist, and its binary's name.
pub const PLUGIN_TYPE: &str = "ambit-cni";
