//! SPIFFE workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! A pure type (no I/O, no async), shared by the ztunnel, the CA and the waypoint.
//! Parsing is strict: the trust domain follows the SPIFFE ID spec (lowercase
//! letters, digits, `.`, `-`, `_`), the namespace is a Kubernetes DNS-1123 label
//! and the service account a DNS-1123 subdomain, as Kubernetes requires of those
//! names. Anything else is refused with an error naming the part that is wrong.
//! [`Identity`]'s `Display` and `FromStr` round-trip.

use std::{fmt, str::FromStr};

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The URI scheme of SPIFFE IDs.
const SCHEME: &str = "spiffe://";
/// SPIFFE spec: a trust domain is at most 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// SPIFFE spec: an ID is at most 2048 bytes.
const MAX_ID_LEN: usize = 2048;
/// Kubernetes: a namespace is a DNS-1123 label.
const MAX_NAMESPACE_LEN: usize = 63;
/// Kubernetes: a service account name is a DNS-1123 subdomain.
const MAX_SERVICE_ACCOUNT_LEN: usize = 253;

/// One part of an identity (trust domain, namespace, service account) that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part} {value:?} is invalid: {reason}")]
pub struct NameError {
    /// Which part: `trust domain`, `namespace` or `service account`.
    pub part: &'static str,
    /// The value given.
    pub value: String,
    /// What rule it breaks.
    pub reason: &'static str,
}

/// A string that is not a valid SPIFFE ID of this mesh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The overall shape is wrong (scheme, path layout, length).
    #[error(
        "{id:?} is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>: {reason}"
    )]
    Malformed {
        /// The input.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The shape is right but one of its parts is not a valid name.
    #[error("SPIFFE ID {id:?} is invalid")]
    Part {
        /// The input.
        id: String,
        /// The part that is wrong.
        #[source]
        source: NameError,
    },
    /// A part given on its own (see [`Identity::new`]) is not a valid name.
    #[error("cannot build a SPIFFE identity")]
    Name(#[from] NameError),
}

/// A SPIFFE trust domain, such as `cluster.local`. Serializes as its string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates `name` as a SPIFFE trust domain.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let err = |reason| NameError {
            part: "trust domain",
            value: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(err("it is empty"));
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(err("it is longer than 255 bytes"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(err(
                "only lowercase letters, digits, '.', '-' and '_' are allowed",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The trust domain as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self(DEFAULT_TRUST_DOMAIN.to_owned())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A workload identity: a Kubernetes service account in a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

impl Identity {
    /// Builds an identity from its parts, validating each.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, Error> {
        let trust_domain = TrustDomain::new(trust_domain)?;
        Ok(Self::from_parts(trust_domain, namespace, service_account)?)
    }

    /// Builds an identity in an already validated trust domain.
    pub fn from_parts(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, NameError> {
        check_dns_name("namespace", namespace, MAX_NAMESPACE_LEN, DnsRule::Label)?;
        check_dns_name(
            "service account",
            service_account,
            MAX_SERVICE_ACCOUNT_LEN,
            DnsRule::Subdomain,
        )?;
        Ok(Self {
            trust_domain,
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account name.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = Error;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let malformed = |reason| Error::Malformed {
            id: id.to_owned(),
            reason,
        };
        if id.len() > MAX_ID_LEN {
            return Err(malformed("it is longer than 2048 bytes"));
        }
        let rest = id
            .strip_prefix(SCHEME)
            .ok_or_else(|| malformed("it does not start with spiffe://"))?;
        if rest.contains(['?', '#']) {
            return Err(malformed("a query or fragment is not allowed"));
        }
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| malformed("it has no path"))?;
        if trust_domain.contains([':', '@']) {
            return Err(malformed("a port or user info is not allowed"));
        }
        let segments: Vec<&str> = path.split('/').collect();
        let [ns_key, namespace, sa_key, service_account] = segments[..] else {
            return Err(malformed(
                "the path must be /ns/<namespace>/sa/<service-account>",
            ));
        };
        if ns_key != "ns" || sa_key != "sa" {
            return Err(malformed(
                "the path must be /ns/<namespace>/sa/<service-account>",
            ));
        }
        let part = |source| Error::Part {
            id: id.to_owned(),
            source,
        };
        let trust_domain = TrustDomain::new(trust_domain).map_err(part)?;
        Self::from_parts(trust_domain, namespace, service_account).map_err(part)
    }
}

/// Which Kubernetes naming rule applies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DnsRule {
    /// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
    Label,
    /// RFC 1123 subdomain: labels joined by `.`.
    Subdomain,
}

fn check_dns_name(
    part: &'static str,
    value: &str,
    max_len: usize,
    rule: DnsRule,
) -> Result<(), NameError> {
    let err = |reason| NameError {
        part,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(err("it is empty"));
    }
    if value.len() > max_len {
        return Err(err(if rule == DnsRule::Label {
            "it is longer than 63 characters"
        } else {
            "it is longer than 253 characters"
        }));
    }
    let labels: Vec<&str> = match rule {
        DnsRule::Label => vec![value],
        DnsRule::Subdomain => value.split('.').collect(),
    };
    for label in labels {
        if label.is_empty() {
            return Err(err("it has an empty label between dots"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(err(if rule == DnsRule::Label {
                "only lowercase letters, digits and '-' are allowed"
            } else {
                "only lowercase letters, digits, '-' and '.' are allowed"
            }));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err("it must start and end with a letter or digit"));
        }
        if label.len() > MAX_NAMESPACE_LEN {
            return Err(err("a label is longer than 63 characters"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    #[test_case("spiffe://cluster.local/ns/default/sa/default" ; "default")]
    #[test_case("spiffe://example.org/ns/bookinfo/sa/bookinfo-productpage" ; "dashes")]
    #[test_case("spiffe://td_1-x.y/ns/a/sa/b" ; "underscore in trust domain")]
    #[test_case("spiffe://cluster.local/ns/kube-system/sa/system.node.v1" ; "dots in sa")]
    #[test_case("spiffe://cluster.local/ns/0/sa/9" ; "digits only")]
    fn good_ids_round_trip(id: &str) {
        let parsed: Identity = id.parse().unwrap();
        assert_eq!(parsed.to_string(), id);
        let again: Identity = parsed.to_string().parse().unwrap();
        assert_eq!(again, parsed);
    }

    #[test]
    fn accessors_return_the_parts() {
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "cart");
        assert_eq!(Identity::new("cluster.local", "shop", "cart").unwrap(), id);
    }

    #[test_case("", "does not start with spiffe://" ; "empty")]
    #[test_case("http://cluster.local/ns/a/sa/b", "does not start with spiffe://" ; "wrong scheme")]
    #[test_case("SPIFFE://cluster.local/ns/a/sa/b", "does not start with spiffe://" ; "uppercase scheme")]
    #[test_case("spiffe://cluster.local", "it has no path" ; "no path")]
    #[test_case("spiffe://cluster.local/", "/ns/<namespace>/sa/<service-account>" ; "root path")]
    #[test_case("spiffe://cluster.local/ns/a/sa/b/", "/ns/<namespace>/sa/<service-account>" ; "trailing slash")]
    #[test_case("spiffe://cluster.local/ns/a/sa/b/c", "/ns/<namespace>/sa/<service-account>" ; "extra segment")]
    #[test_case("spiffe://cluster.local/sa/b/ns/a", "/ns/<namespace>/sa/<service-account>" ; "swapped keys")]
    #[test_case("spiffe://cluster.local//ns/a/sa/b", "/ns/<namespace>/sa/<service-account>" ; "double slash")]
    #[test_case("spiffe://cluster.local/ns/a/sa/b?x=1", "query or fragment" ; "query")]
    #[test_case("spiffe://cluster.local/ns/a/sa/b#frag", "query or fragment" ; "fragment")]
    #[test_case("spiffe://cluster.local:443/ns/a/sa/b", "port or user info" ; "port")]
    #[test_case("spiffe://user@cluster.local/ns/a/sa/b", "port or user info" ; "userinfo")]
    #[test_case("spiffe:///ns/a/sa/b", "trust domain \"\" is invalid: it is empty" ; "empty trust domain")]
    #[test_case("spiffe://Cluster.Local/ns/a/sa/b", "trust domain \"Cluster.Local\" is invalid" ; "uppercase trust domain")]
    #[test_case("spiffe://clu ster/ns/a/sa/b", "trust domain \"clu ster\" is invalid" ; "space in trust domain")]
    #[test_case("spiffe://cluster.local/ns//sa/b", "namespace \"\" is invalid: it is empty" ; "empty namespace")]
    #[test_case("spiffe://cluster.local/ns/Default/sa/b", "namespace \"Default\" is invalid" ; "uppercase namespace")]
    #[test_case("spiffe://cluster.local/ns/a.b/sa/c", "namespace \"a.b\" is invalid" ; "dot in namespace")]
    #[test_case("spiffe://cluster.local/ns/-a/sa/b", "must start and end with a letter or digit" ; "leading dash")]
    #[test_case("spiffe://cluster.local/ns/a/sa/b-", "must start and end with a letter or digit" ; "trailing dash")]
    #[test_case("spiffe://cluster.local/ns/a/sa/", "service account \"\" is invalid: it is empty" ; "empty sa")]
    #[test_case("spiffe://cluster.local/ns/a/sa/x..y", "empty label between dots" ; "empty label in sa")]
    #[test_case("spiffe://cluster.local/ns/a/sa/b_c", "service account \"b_c\" is invalid" ; "underscore in sa")]
    #[test_case("spiffe://cluster.local/ns/a/sa/%41", "service account \"%41\" is invalid" ; "percent encoding")]
    #[test_case("spiffe://cluster.local/ns/a/sa/ü", "service account \"ü\" is invalid" ; "non ascii")]
    fn bad_ids_are_refused_with_the_reason(id: &str, expected: &str) {
        let err = id.parse::<Identity>().unwrap_err();
        let chain = error_chain(&err);
        assert!(chain.contains(expected), "{chain}");
        assert!(
            chain.contains(&format!("{id:?}")) || id.is_empty(),
            "{chain}"
        );
    }

    #[test]
    fn length_limits() {
        let ns = "a".repeat(64);
        let err = format!("spiffe://cluster.local/ns/{ns}/sa/b")
            .parse::<Identity>()
            .unwrap_err();
        assert!(error_chain(&err).contains("longer than 63"), "{err}");
        let sa = "a".repeat(254);
        let err = Identity::new("cluster.local", "a", &sa).unwrap_err();
        assert!(error_chain(&err).contains("longer than 253"), "{err}");
        let td = "a".repeat(256);
        let err = Identity::new(&td, "a", "b").unwrap_err();
        assert!(error_chain(&err).contains("longer than 255"), "{err}");
        let long = format!("spiffe://cluster.local/ns/a/sa/{}", "b".repeat(2100));
        let err = long.parse::<Identity>().unwrap_err();
        assert!(error_chain(&err).contains("longer than 2048"), "{err}");
        // At the limits, still fine.
        let sa = format!("{}b", "b.".repeat(126));
        assert_eq!(sa.len(), 253);
        Identity::new("cluster.local", &"a".repeat(63), &sa).unwrap();
    }

    #[test]
    fn new_validates_each_part() {
        let err = Identity::new("cluster.local", "ns", "Bad").unwrap_err();
        assert_eq!(
            error_chain(&err),
            "cannot build a SPIFFE identity: service account \"Bad\" is invalid: only lowercase \
             letters, digits, '-' and '.' are allowed"
        );
    }

    /// Every generated mix of valid parts round-trips; every single-byte change to a
    /// separator breaks parsing or yields a different identity.
    #[test]
    fn generated_identities_round_trip() {
        let parts = ["a", "z9", "a-b", "x1-y2-z3", "0"];
        let sas = ["a", "a.b", "a-b.c-d", "9.9"];
        for td in ["cluster.local", "td", "a_b.c-d"] {
            for ns in parts {
                for sa in sas {
                    let id = Identity::new(td, ns, sa).unwrap();
                    let text = id.to_string();
                    assert_eq!(text.parse::<Identity>().unwrap(), id);
                    let broken = text.replacen("/sa/", "/sb/", 1);
                    assert!(broken.parse::<Identity>().is_err(), "{broken}");
                }
            }
        }
    }

    proptest::proptest! {
        /// Any valid parts make an identity whose text parses back to it.
        #[test]
        fn valid_parts_round_trip(
            td in "[a-z0-9._-]{1,40}",
            ns in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            sa in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?){0,3}",
        ) {
            let id = Identity::new(&td, &ns, &sa).unwrap();
            proptest::prop_assert_eq!(id.to_string().parse::<Identity>().unwrap(), id);
        }

        /// Parsing never normalizes: whatever is accepted prints back byte for byte.
        #[test]
        fn accepted_text_is_canonical(s in "spiffe://[a-zA-Z0-9._:@/%?#-]{0,60}") {
            if let Ok(id) = s.parse::<Identity>() {
                proptest::prop_assert_eq!(id.to_string(), s);
            }
        }

        /// Arbitrary input never panics and, when accepted, is canonical.
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
            if let Ok(id) = s.parse::<Identity>() {
                proptest::prop_assert_eq!(id.to_string(), s);
            }
        }
    }

    fn error_chain(err: &dyn std::error::Error) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}
