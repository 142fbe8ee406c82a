//! The compiled policies of one workload and their evaluation: CUSTOM, then
//! DENY, then ALLOW, with AUDIT alongside. A decision borrows the compiled set
//! for the names it reports, and is made without allocating.

use std::fmt;

use super::{
    attributes::Attributes,
    rule::{Prepared, Rule},
};
use crate::registry::{Action, ObjectKey};

/// Most AUDIT policies one decision lists; more are counted
/// ([`Audits::omitted`]) so that a decision never allocates.
pub const AUDITS_LISTED: usize = 8;

/// The AuthorizationPolicies that apply to one workload, compiled for cheap
/// evaluation: one flat list of rules per action, in policy order.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicies {
    pub(super) policies: Vec<PolicyInfo>,
    pub(super) custom: Vec<Rule>,
    pub(super) deny: Vec<Rule>,
    pub(super) allow: Vec<Rule>,
    pub(super) audit: Vec<Rule>,
    /// At least one ALLOW policy applies (even one whose rules can never match).
    pub(super) has_allow: bool,
    pub(super) fail_safe: Vec<FailSafe>,
}

/// What a decision reports about a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PolicyInfo {
    pub(super) key: ObjectKey,
    pub(super) action: Action,
    pub(super) provider: Option<Box<str>>,
}

/// A policy that uses attributes ztunnel cannot see, and so is enforced
/// fail-safe at L4; the data path logs a warning naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailSafe {
    /// The policy.
    pub policy: ObjectKey,
    /// Its action.
    pub action: Action,
    /// The HTTP fields and `when` keys it uses (`methods`, `request.headers[x]`):
    /// only a waypoint evaluates them.
    pub http: Box<[Box<str>]>,
    /// Conditions that cannot be evaluated anywhere, with the reason.
    pub unsupported: Box<[Box<str>]>,
}

impl fmt::Display for FailSafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorizationPolicy {} ", self.policy)?;
        if !self.http.is_empty() {
            write!(
                f,
                "uses L7 attributes ({}) that ztunnel cannot evaluate (a waypoint can)",
                self.http.join(", ")
            )?;
        }
        if !self.unsupported.is_empty() {
            let sep = if self.http.is_empty() { "" } else { " and " };
            write!(
                f,
                "{sep}has conditions that cannot be evaluated ({})",
                self.unsupported.join("; ")
            )?;
        }
        match self.action {
            Action::Allow => f.write_str(": its rules that use them match nothing"),
            _ => f.write_str(
                ": its rules are enforced without them, matching more connections than written",
            ),
        }
    }
}

impl CompiledPolicies {
    /// Whether no policy applies (everything is allowed).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Number of policies compiled.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// The policies with attributes that cannot be evaluated at L4 (or at all):
    /// at ztunnel, ALLOW rules with them match nothing and DENY, CUSTOM and
    /// AUDIT rules are enforced without them. Log a warning for each.
    pub fn l7_ignored(&self) -> &[FailSafe] {
        &self.fail_safe
    }

    /// The decision for a connection or request with attributes `a`.
    pub fn evaluate(&self, a: &Attributes<'_>) -> Decision<'_> {
        let prepared = Prepared::new(a);
        let (verdict, reason) = self.decide(&prepared);
        Decision {
            verdict,
            reason,
            audits: self.audits(&prepared),
        }
    }

    /// The same policies without the principal prefilter, to check that it
    /// never changes a decision.
    #[cfg(test)]
    pub(super) fn without_prefilter(mut self) -> Self {
        for rules in [
            &mut self.custom,
            &mut self.deny,
            &mut self.allow,
            &mut self.audit,
        ] {
            for rule in rules {
                rule.principals = None;
            }
        }
        self
    }

    /// Istio's order: "If there are any CUSTOM policies that match the request,
    /// evaluate and deny the request if the evaluation result is deny. If there
    /// are any DENY policies that match the request, deny the request. If there
    /// are no ALLOW policies for the workload, allow the request. If any of the
    /// ALLOW policies match the request, allow the request. Deny the request."
    fn decide(&self, a: &Prepared<'_, '_>) -> (Verdict, Reason<'_>) {
        if let Some(rule) = self.first(&self.custom, a, false) {
            // There is no ext_authz provider to ask: fail closed.
            return (Verdict::Deny, Reason::Custom(rule));
        }
        if let Some(rule) = self.first(&self.deny, a, false) {
            return (Verdict::Deny, Reason::Denied(rule));
        }
        if !self.has_allow {
            return (Verdict::Allow, Reason::NoAllowPolicy);
        }
        match self.first(&self.allow, a, true) {
            Some(rule) => (Verdict::Allow, Reason::Allowed(rule)),
            None => (Verdict::Deny, Reason::NoAllowMatched),
        }
    }

    fn first(&self, rules: &[Rule], a: &Prepared<'_, '_>, strict: bool) -> Option<PolicyRule<'_>> {
        let rule = rules.iter().find(|r| r.matches(a, strict))?;
        Some(self.policy_rule(rule))
    }

    fn policy_rule(&self, rule: &Rule) -> PolicyRule<'_> {
        PolicyRule {
            info: &self.policies[rule.policy as usize],
            rule: rule.index,
        }
    }

    /// Every AUDIT policy with a matching rule (the first such rule of each).
    fn audits(&self, a: &Prepared<'_, '_>) -> Audits<'_> {
        let mut out = Audits {
            compiled: self,
            rules: [0; AUDITS_LISTED],
            len: 0,
            omitted: 0,
        };
        let mut last_policy = None;
        for (i, rule) in self.audit.iter().enumerate() {
            if last_policy == Some(rule.policy) || !rule.matches(a, false) {
                continue;
            }
            last_policy = Some(rule.policy);
            if out.len < AUDITS_LISTED {
                out.rules[out.len] = u32::try_from(i).expect("rule count fits in u32");
                out.len += 1;
            } else {
                out.omitted += 1;
            }
        }
        out
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let the connection (or request) through.
    Allow,
    /// Close it before any byte reaches the application.
    Deny,
}

/// A policy and the index (from 0) of one of its `rules`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PolicyRule<'p> {
    info: &'p PolicyInfo,
    rule: u32,
}

impl<'p> PolicyRule<'p> {
    /// The policy's namespace and name.
    pub fn policy(&self) -> &'p ObjectKey {
        &self.info.key
    }

    /// The rule's index in the policy's `rules`, from 0.
    pub fn rule(&self) -> usize {
        self.rule as usize
    }

    /// The policy's action.
    pub fn action(&self) -> Action {
        self.info.action
    }

    /// `provider.name` of a CUSTOM policy.
    pub fn provider(&self) -> Option<&'p str> {
        self.info.provider.as_deref()
    }
}

impl fmt::Debug for PolicyRule<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for PolicyRule<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule {}", self.info.key, self.rule)
    }
}

/// Why a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason<'p> {
    /// A CUSTOM policy matched. Its verdict would come from an ext_authz
    /// provider; ambit has none, so the connection is denied (fail closed).
    Custom(PolicyRule<'p>),
    /// A DENY policy matched.
    Denied(PolicyRule<'p>),
    /// An ALLOW policy matched.
    Allowed(PolicyRule<'p>),
    /// No ALLOW policy applies to the workload: allowed by default.
    NoAllowPolicy,
    /// ALLOW policies apply, and none matched.
    NoAllowMatched,
}

impl<'p> Reason<'p> {
    /// The policy and rule that decided, if one did.
    pub fn policy_rule(&self) -> Option<PolicyRule<'p>> {
        match *self {
            Self::Custom(r) | Self::Denied(r) | Self::Allowed(r) => Some(r),
            Self::NoAllowPolicy | Self::NoAllowMatched => None,
        }
    }
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Custom(r) => write!(
                f,
                "CUSTOM policy {r} matched and there is no ext_authz provider ({:?})",
                r.provider().unwrap_or_default()
            ),
            Self::Denied(r) => write!(f, "DENY policy {r} matched"),
            Self::Allowed(r) => write!(f, "ALLOW policy {r} matched"),
            Self::NoAllowPolicy => f.write_str("no ALLOW policy: allowed by default"),
            Self::NoAllowMatched => f.write_str("no ALLOW rule matched"),
        }
    }
}

/// The AUDIT policies that matched (AUDIT only logs; it never changes the
/// verdict).
#[derive(Clone, Copy)]
pub struct Audits<'p> {
    compiled: &'p CompiledPolicies,
    rules: [u32; AUDITS_LISTED],
    len: usize,
    omitted: usize,
}

impl<'p> Audits<'p> {
    /// The matched AUDIT policies, each with its first matching rule, in policy
    /// order (at most [`AUDITS_LISTED`]).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = PolicyRule<'p>> + use<'p> {
        let compiled = self.compiled;
        let rules = self.rules;
        (0..self.len).map(move |i| compiled.policy_rule(&compiled.audit[rules[i] as usize]))
    }

    /// Whether no AUDIT policy matched.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many more matched than are listed.
    pub fn omitted(&self) -> usize {
        self.omitted
    }
}

impl fmt::Debug for Audits<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()?;
        if self.omitted > 0 {
            write!(f, " and {} more", self.omitted)?;
        }
        Ok(())
    }
}

/// The outcome of evaluating one connection or request.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'p> {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Which policy and rule decided, or the default that did.
    pub reason: Reason<'p>,
    /// The AUDIT policies that matched.
    pub audits: Audits<'p>,
}

impl Decision<'_> {
    /// Whether the connection may proceed.
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Allow => "allowed",
            Verdict::Deny => "denied",
        };
        write!(f, "{verdict}: {}", self.reason)
    }
}
