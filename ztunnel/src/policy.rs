//! AuthorizationPolicy evaluation, with Istio's semantics, for ztunnel (L4
//! connections) and the waypoint (L7 requests). Pure: no I/O, no tokio.
//!
//! [`compile`] turns the policies that apply to a workload (the registry selects
//! them: [`Snapshot::policies_for`](crate::registry::Snapshot::policies_for)) into
//! [`CompiledPolicies`]; [`PolicyIndex`] does so for every enrolled pod of the
//! node from each registry snapshot. [`CompiledPolicies::evaluate`] decides one
//! connection or request from its [`Attributes`] without allocating.
//!
//! # Semantics (Istio's AuthorizationPolicy reference)
//!
//! - Order: a matching CUSTOM policy denies (see below); else a matching DENY
//!   policy denies; else, when no ALLOW policy applies, allow; else allow when an
//!   ALLOW policy matches, and deny otherwise. AUDIT policies are evaluated
//!   alongside and only reported ([`Decision::audits`]).
//! - A policy matches when one of its `rules` matches; no `rules` matches
//!   nothing (an ALLOW policy without rules denies everything), and the rule
//!   `{}` matches everything.
//! - In a rule, `from`, `to` and `when` are ANDed; the entries of `from` are
//!   ORed, as are those of `to`; `when` conditions are ANDed. An absent part
//!   matches anything.
//! - In a `source` or `operation`, fields are ANDed and the values of one field
//!   ORed; a `notX` field holds when no value matches. A `when` condition holds
//!   when a value matches (if `values` is set) and no `notValues` entry does.
//! - Strings match exactly, by prefix (`abc*`), by suffix (`*abc`) or for
//!   presence (`*`, any non-empty value). Principals are SPIFFE identities
//!   without `spiffe://` (`cluster.local/ns/shop/sa/web`); principals and
//!   namespaces come from the peer certificate, so a plaintext connection has
//!   neither: `principals: ["*"]` does not match it and `notPrincipals: ["*"]`
//!   does. Hosts compare case-insensitively, and an exact host also matches
//!   with a port.
//! - `serviceAccounts` and `notServiceAccounts` name peers exactly as
//!   `<namespace>/<name>` (a bare `<name>` is in the policy's namespace),
//!   whatever their trust domain; like principals they need mTLS.
//! - `ipBlocks` and `source.ip` match the connection's source address;
//!   `remoteIpBlocks` and `remote.ip` the original client, which at L4 is the
//!   source address (there are no proxies in between). Single addresses and
//!   CIDRs; IPv4-mapped IPv6 addresses count as IPv4.
//! - `ports`, `notPorts` and `destination.port` match the original destination
//!   port (the application's, not 15008).
//!
//! # HTTP attributes at L4 (fail-safe)
//!
//! `hosts`, `methods`, `paths`, `requestPrincipals` (and their `not` forms) and
//! the `when` keys `request.*` need the HTTP request, which ztunnel never sees.
//! As Istio's ztunnel documents it, an ALLOW rule that uses any of them matches
//! nothing ("rules matching HTTP attributes are omitted"), and in DENY rules the
//! HTTP attributes are dropped and the rest of the rule decides ("enforced
//! without the HTTP rules; more restrictive than requested"), so a DENY rule made
//! only of HTTP attributes denies every connection. CUSTOM and AUDIT rules are
//! treated like DENY. Conditions that can never be evaluated
//! (`experimental.envoy.filters.*`) are handled the same way at L7 too.
//! [`CompiledPolicies::l7_ignored`] lists the affected policies, for a warning.
//! With a [`Request`] in the attributes (the waypoint), HTTP attributes are
//! evaluated normally.
//!
//! # CUSTOM
//!
//! A CUSTOM policy delegates the decision to an ext_authz provider, which ambit
//! does not have. A CUSTOM policy that does not match changes nothing; one that
//! matches denies ([`Reason::Custom`], fail closed).
//!
//! # Deciding policy
//!
//! Policies are ordered by namespace and name, rules by their index (from 0).
//! The first matching CUSTOM, DENY or ALLOW rule in that order is the one a
//! decision names.

mod attributes;
mod compile;
mod compiled;
mod index;
pub(crate) mod matcher;
pub mod peer_authn;
mod rule;

pub use attributes::{Attributes, Claims, Headers, Peer, Request, RequestAuth};
pub use compile::compile;
pub use compiled::{
    AUDITS_LISTED, Audits, CompiledPolicies, Decision, FailSafe, PolicyRule, Reason, Verdict,
};
pub use index::{PolicyIndex, compile_for_workload};

/// Errors of the policy module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A peer identity that is not a SPIFFE workload identity.
    #[error(
        "{0:?} is not a SPIFFE workload identity (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)"
    )]
    Identity(String),
}

/// Decides one connection or request: `policies.evaluate(attributes)`.
pub fn evaluate<'p>(policies: &'p CompiledPolicies, attributes: &Attributes<'_>) -> Decision<'p> {
    policies.evaluate(attributes)
}

#[cfg(test)]
mod tests;
