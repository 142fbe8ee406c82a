//! A compiled rule: `from` clauses (any), `to` clauses (any) and `when` checks
//! (all), each check one attribute against one precompiled value set, and how a
//! rule matches when some of its attributes cannot be seen here.

use super::{
    attributes::{Attributes, Request},
    matcher::{HostSet, IpSet, PathSet, PortSet, ServiceAccountSet, StrSet, fingerprint},
};

/// One attribute tested against one set of values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Test {
    // L4: known for every connection.
    SourceIp(IpSet),
    DestinationIp(IpSet),
    DestinationPort(PortSet),
    Principal(StrSet),
    Namespace(StrSet),
    ServiceAccount(ServiceAccountSet),
    // L7: known only to a proxy that terminates the request (a waypoint).
    // The original client (`remoteIpBlocks`, `remote.ip`) comes from
    // X-Forwarded-For or the PROXY protocol and the SNI from a TLS handshake
    // the proxy terminates; Istio's ztunnel treats both as L7 attributes.
    RemoteIp(IpSet),
    Sni(StrSet),
    Host(HostSet),
    Method(StrSet),
    Path(PathSet),
    RequestPrincipal(StrSet),
    Audience(StrSet),
    Presenter(StrSet),
    Claim {
        path: Box<[Box<str>]>,
        set: StrSet,
    },
    Header {
        name: Box<str>,
        set: StrSet,
    },
    /// Known nowhere: an `experimental.envoy.filters.*` key or a value that
    /// cannot be used.
    Unsupported,
}

impl Test {
    /// Whether the test needs the L7 request (see [`Request`]).
    pub(super) fn is_l7(&self) -> bool {
        matches!(
            self,
            Self::RemoteIp(_)
                | Self::Sni(_)
                | Self::Host(_)
                | Self::Method(_)
                | Self::Path(_)
                | Self::RequestPrincipal(_)
                | Self::Audience(_)
                | Self::Presenter(_)
                | Self::Claim { .. }
                | Self::Header { .. }
        )
    }

    /// The result, or `None` when the attribute cannot be seen here.
    fn eval(&self, a: &Attributes<'_>) -> Option<bool> {
        Some(match self {
            Self::SourceIp(set) => set.contains(a.source_ip),
            Self::DestinationIp(set) => set.contains(a.destination.ip()),
            Self::DestinationPort(set) => set.contains(a.destination.port()),
            // No peer (plaintext): no principal or namespace, so nothing
            // matches, not even presence (`*`).
            Self::Principal(set) => a.peer.is_some_and(|p| set.matches(p.principal())),
            Self::Namespace(set) => a.peer.is_some_and(|p| set.matches(p.namespace())),
            Self::ServiceAccount(set) => a
                .peer
                .is_some_and(|p| set.contains(p.namespace(), p.service_account())),
            Self::Unsupported => return None,
            l7 => return a.request.as_ref().map(|r| l7.eval_l7(a, r)),
        })
    }

    fn eval_l7(&self, a: &Attributes<'_>, r: &Request<'_>) -> bool {
        // No verified JWT: the request is unauthenticated, so JWT attributes
        // match nothing (and their `not` forms hold).
        let auth = r.auth.as_ref();
        match self {
            Self::RemoteIp(set) => set.contains(a.remote_ip.unwrap_or(a.source_ip)),
            Self::Sni(set) => a.sni.is_some_and(|s| set.matches(s)),
            Self::Host(set) => set.matches(r.host),
            Self::Method(set) => set.matches(r.method),
            Self::Path(set) => set.matches(r.path),
            Self::RequestPrincipal(set) => auth.is_some_and(|t| set.matches(t.principal)),
            Self::Audience(set) => auth.is_some_and(|t| t.audiences.iter().any(|a| set.matches(a))),
            Self::Presenter(set) => {
                auth.is_some_and(|t| t.presenter.is_some_and(|p| set.matches(p)))
            }
            Self::Claim { path, set } => {
                auth.is_some_and(|t| t.claims.any(path, &mut |v| set.matches(v)))
            }
            Self::Header { name, set } => r.headers.get(name).is_some_and(|v| set.matches(v)),
            _ => false,
        }
    }
}

/// A test and whether it is negated (`notPrincipals`, `notValues`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Check {
    pub(super) test: Test,
    pub(super) negate: bool,
}

impl Check {
    /// Whether the check holds. A check that cannot be evaluated here holds:
    /// only rules of non-ALLOW policies get this far with one (see
    /// [`Rule::matches`]), and for them dropping the check is the fail-safe,
    /// broader match.
    fn holds(&self, a: &Attributes<'_>) -> bool {
        self.test.eval(a).is_none_or(|m| m != self.negate)
    }
}

/// A clause: one `source` or `operation`, whose fields must all match.
pub(super) type Clause = Box<[Check]>;

/// The attributes of one evaluation, with what is worth computing once.
pub(super) struct Prepared<'b, 'a> {
    a: &'b Attributes<'a>,
    /// The [`fingerprint`] of the peer's principal.
    principal: Option<u64>,
}

impl<'b, 'a> Prepared<'b, 'a> {
    pub(super) fn new(a: &'b Attributes<'a>) -> Self {
        Self {
            a,
            principal: a.peer.map(|p| fingerprint(p.principal())),
        }
    }
}

/// One compiled entry of a policy's `rules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rule {
    /// Index of the policy in the compiled set.
    pub(super) policy: u32,
    /// Index of the rule in the policy's `rules`.
    pub(super) index: u32,
    /// Some check needs the L7 request.
    pub(super) http: bool,
    /// Some check can never be evaluated.
    pub(super) unsupported: bool,
    /// When the rule can only match peers with one of a few exact principals
    /// (the usual ALLOW by principal): their fingerprints, sorted, so that the
    /// other peers skip the rule with a few integer compares.
    pub(super) principals: Option<Box<[u64]>>,
    pub(super) from: Box<[Clause]>,
    pub(super) to: Box<[Clause]>,
    pub(super) when: Box<[Check]>,
}

impl Rule {
    /// Whether the rule matches. `strict` is for ALLOW policies: a rule with
    /// attributes that cannot be seen here matches nothing, as Istio's ztunnel
    /// omits such rules. Otherwise (DENY, CUSTOM, AUDIT) those attributes are
    /// dropped and the rest of the rule decides, which matches more.
    pub(super) fn matches(&self, p: &Prepared<'_, '_>, strict: bool) -> bool {
        let a = p.a;
        if strict && (self.unsupported || (self.http && a.request.is_none())) {
            return false;
        }
        if let Some(required) = &self.principals {
            match p.principal {
                Some(fp) if required.contains(&fp) => {}
                _ => return false,
            }
        }
        // from, to and when are ANDed; `to` first as ports are the cheapest.
        any_clause(&self.to, a) && self.when.iter().all(|c| c.holds(a)) && any_clause(&self.from, a)
    }
}

/// The fingerprints of the exact principals a rule requires, if it requires
/// some: a `when` condition on `source.principal` with exact values only, or
/// such `principals` in every `from` clause. (The principal is an L4 attribute,
/// so the requirement holds whatever else is dropped at L4.)
pub(super) fn required_principals(from: &[Clause], when: &[Check]) -> Option<Box<[u64]>> {
    let exact = |c: &Check| match (&c.test, c.negate) {
        (Test::Principal(set), false) => set.exact_fingerprints(),
        _ => None,
    };
    let mut required = match when.iter().find_map(exact) {
        Some(fps) => fps,
        None if from.is_empty() => return None,
        None => {
            let mut all = Vec::new();
            for clause in from {
                all.extend(clause.iter().find_map(exact)?);
            }
            all
        }
    };
    required.sort_unstable();
    required.dedup();
    Some(required.into())
}

/// Clauses are ORed; no clause at all means "any".
fn any_clause(clauses: &[Clause], a: &Attributes<'_>) -> bool {
    clauses.is_empty() || clauses.iter().any(|c| c.iter().all(|k| k.holds(a)))
}
