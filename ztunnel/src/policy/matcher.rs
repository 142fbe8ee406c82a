//! The value matchers a compiled policy is made of: Istio's string matches
//! (exact, prefix `abc*`, suffix `*abc`, presence `*`), case-insensitive host
//! matches, address ranges with precomputed masks, and port sets. Each is built
//! once at compile time and matched without allocating.

use std::net::IpAddr;

use crate::registry::Cidr;

/// One of Istio's string matches. From the AuthorizationPolicy reference:
/// "Exact match: `abc` will match on value exactly `abc`. Prefix match: `abc*`
/// will match on value `abc` and `abcd`. Suffix match: `*abc` will match on value
/// `abc` and `xabc`. Presence match: `*` will match when value is not empty."
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StrMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Presence,
}

impl StrMatch {
    /// Parses one policy value (validated upstream: `*` only alone or at an end).
    pub(super) fn new(pattern: &str) -> Self {
        if pattern == "*" {
            Self::Presence
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            Self::Suffix(suffix.into())
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            Self::Prefix(prefix.into())
        } else {
            Self::Exact(pattern.into())
        }
    }

    /// Whether `value` matches.
    pub(super) fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => **s == *value,
            Self::Prefix(s) => value.starts_with(&**s),
            Self::Suffix(s) => value.ends_with(&**s),
            Self::Presence => !value.is_empty(),
        }
    }
}

/// A list of [`StrMatch`]es: matches when any does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StrSet(Box<[StrMatch]>);

impl StrSet {
    /// The matchers of `patterns`.
    pub(super) fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        Self(patterns.iter().map(|p| StrMatch::new(p.as_ref())).collect())
    }

    /// Whether any matcher matches `value`.
    pub(super) fn matches(&self, value: &str) -> bool {
        self.0.iter().any(|m| m.matches(value))
    }

    /// The [`fingerprint`]s of the values, when every matcher is exact.
    pub(super) fn exact_fingerprints(&self) -> Option<Vec<u64>> {
        (self.0.iter())
            .map(|m| match m {
                StrMatch::Exact(s) => Some(fingerprint(s)),
                _ => None,
            })
            .collect()
    }
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TemplateSegment {
    /// A segment matched exactly.
    Literal(Box<str>),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: one or more segments (the last operator; only literal
    /// segments may follow it).
    Rest,
}

/// A `paths` entry: one of Istio's string matches, or a path template with
/// `{*}` (one segment) and `{**}` (one or more, the last operator) as whole
/// segments, as Envoy's URI templates (`/api/{*}/users`, `/files/{**}`,
/// `/files/{**}/raw`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PathMatch {
    Str(StrMatch),
    Template(Box<[TemplateSegment]>),
}

impl PathMatch {
    /// Parses one policy value (validated upstream: a template has `{*}` or
    /// `{**}` as whole segments, nothing but literals after `{**}`).
    pub(super) fn new(pattern: &str) -> Self {
        if !is_path_template(pattern) {
            return Self::Str(StrMatch::new(pattern));
        }
        let segments = (pattern.trim_start_matches('/').split('/'))
            .map(|s| match s {
                "{*}" => TemplateSegment::One,
                "{**}" => TemplateSegment::Rest,
                literal => TemplateSegment::Literal(literal.into()),
            })
            .collect();
        Self::Template(segments)
    }

    /// Whether `path` (normalized, without its query) matches.
    pub(super) fn matches(&self, path: &str) -> bool {
        match self {
            Self::Str(m) => m.matches(path),
            Self::Template(template) => path.strip_prefix('/').is_some_and(|rest| {
                template_matches(template, &rest.split('/').collect::<Vec<_>>())
            }),
        }
    }
}

/// Matches whole segments: literals exactly, `{*}` one non-empty segment,
/// `{**}` one or more segments (the first non-empty) followed by the
/// template's literal suffix.
fn template_matches(template: &[TemplateSegment], segments: &[&str]) -> bool {
    let Some((expected, template_rest)) = template.split_first() else {
        return segments.is_empty();
    };
    match expected {
        TemplateSegment::Rest => {
            // Only literals follow (validated): they match the end.
            let Some(taken) = segments.len().checked_sub(template_rest.len()) else {
                return false;
            };
            taken >= 1
                && !segments[0].is_empty()
                && template_matches(template_rest, &segments[taken..])
        }
        TemplateSegment::One => segments
            .split_first()
            .is_some_and(|(s, rest)| !s.is_empty() && template_matches(template_rest, rest)),
        TemplateSegment::Literal(literal) => segments
            .split_first()
            .is_some_and(|(s, rest)| *s == &**literal && template_matches(template_rest, rest)),
    }
}

/// Whether a `paths` value is a path template (has `{*}` or `{**}`).
pub(crate) fn is_path_template(pattern: &str) -> bool {
    pattern.contains("{*}") || pattern.contains("{**}")
}

/// A list of [`PathMatch`]es: matches when any does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PathSet(Box<[PathMatch]>);

impl PathSet {
    pub(super) fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        Self(
            patterns
                .iter()
                .map(|p| PathMatch::new(p.as_ref()))
                .collect(),
        )
    }

    pub(super) fn matches(&self, path: &str) -> bool {
        self.0.iter().any(|m| m.matches(path))
    }
}

/// A 64-bit fingerprint of `s`, hashed eight bytes at a time. Equal strings
/// have equal fingerprints, so different fingerprints rule out an exact match
/// without comparing the strings.
pub(super) fn fingerprint(s: &str) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, word: u64| (h.rotate_left(5) ^ word).wrapping_mul(K);
    let mut chunks = s.as_bytes().chunks_exact(8);
    let mut h = s.len() as u64;
    for chunk in &mut chunks {
        h = mix(
            h,
            u64::from_le_bytes(chunk.try_into().expect("chunks of 8")),
        );
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    mix(h, u64::from_le_bytes(tail))
}

/// `serviceAccounts` entries: exact (namespace, name) pairs of the peer's
/// identity, whatever its trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServiceAccountSet(Box<[(Box<str>, Box<str>)]>);

impl ServiceAccountSet {
    /// From `<namespace>/<name>` entries (as the registry stores them).
    pub(super) fn new(entries: &[Box<str>]) -> Self {
        Self(
            (entries.iter())
                .map(|e| {
                    // Validated upstream; an entry without `/` matches nothing.
                    let (ns, sa) = e.split_once('/').unwrap_or(("", ""));
                    (ns.into(), sa.into())
                })
                .collect(),
        )
    }

    /// Whether `namespace`/`name` is listed.
    pub(super) fn contains(&self, namespace: &str, name: &str) -> bool {
        (self.0.iter()).any(|(ns, sa)| !sa.is_empty() && **ns == *namespace && **sa == *name)
    }
}

/// A `hosts` entry. Hosts compare case-insensitively ("The match is
/// case-insensitive"), and, as Istio's generated matcher does, an exact host
/// also matches the same host with a port (`example.com` matches
/// `example.com:8080`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Presence,
}

impl HostMatch {
    pub(super) fn new(pattern: &str) -> Self {
        let lower = pattern.to_ascii_lowercase();
        match StrMatch::new(&lower) {
            StrMatch::Exact(s) => Self::Exact(s),
            StrMatch::Prefix(s) => Self::Prefix(s),
            StrMatch::Suffix(s) => Self::Suffix(s),
            StrMatch::Presence => Self::Presence,
        }
    }

    /// Whether `host` (any case) matches.
    pub(super) fn matches(&self, host: &str) -> bool {
        let h = host.as_bytes();
        let starts_with = |s: &[u8]| h.len() >= s.len() && h[..s.len()].eq_ignore_ascii_case(s);
        match self {
            Self::Exact(s) => {
                // The rest is empty or `:` and digits (Istio's `(?::[0-9]*)?`).
                starts_with(s.as_bytes())
                    && match &h[s.len()..] {
                        [] => true,
                        [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
                        _ => false,
                    }
            }
            Self::Prefix(s) => starts_with(s.as_bytes()),
            Self::Suffix(s) => {
                let s = s.as_bytes();
                h.len() >= s.len() && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
            }
            Self::Presence => !h.is_empty(),
        }
    }
}

/// A list of [`HostMatch`]es: matches when any does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HostSet(Box<[HostMatch]>);

impl HostSet {
    pub(super) fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        Self(
            patterns
                .iter()
                .map(|p| HostMatch::new(p.as_ref()))
                .collect(),
        )
    }

    pub(super) fn matches(&self, host: &str) -> bool {
        self.0.iter().any(|m| m.matches(host))
    }
}

/// An address range with its mask precomputed: one AND and one compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IpRange {
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

impl IpRange {
    pub(super) fn new(cidr: Cidr) -> Self {
        let prefix = u32::from(cidr.prefix_len());
        match cidr.addr() {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                Self::V4 {
                    net: a.to_bits() & mask,
                    mask,
                }
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                Self::V6 {
                    net: a.to_bits() & mask,
                    mask,
                }
            }
        }
    }

    /// Whether `ip` is in the range. IPv4-mapped IPv6 addresses
    /// (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers) count as
    /// their IPv4 address.
    pub(super) fn contains(self, ip: IpAddr) -> bool {
        match (self, ip.to_canonical()) {
            (Self::V4 { net, mask }, IpAddr::V4(ip)) => ip.to_bits() & mask == net,
            (Self::V6 { net, mask }, IpAddr::V6(ip)) => ip.to_bits() & mask == net,
            _ => false,
        }
    }
}

/// A list of [`IpRange`]s: matches when any contains the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IpSet(Box<[IpRange]>);

impl IpSet {
    pub(super) fn new(cidrs: &[Cidr]) -> Self {
        Self(cidrs.iter().map(|&c| IpRange::new(c)).collect())
    }

    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|r| r.contains(ip))
    }
}

/// A set of ports, sorted and deduplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PortSet(Box<[u16]>);

impl PortSet {
    pub(super) fn new(ports: &[u16]) -> Self {
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        Self(ports.into())
    }

    pub(super) fn contains(&self, port: u16) -> bool {
        // Policies list a handful of ports: a scan beats a search until ~16.
        if self.0.len() <= 16 {
            self.0.contains(&port)
        } else {
            self.0.binary_search(&port).is_ok()
        }
    }
}

#[cfg(test)]
mod template_tests {
    use super::*;

    #[test]
    fn path_templates_match_whole_segments() {
        let one = PathMatch::new("/api/{*}/users");
        assert!(one.matches("/api/v1/users"));
        assert!(!one.matches("/api/v1/v2/users"));
        assert!(!one.matches("/api//users"));
        assert!(!one.matches("/api/users"));
        assert!(!one.matches("/api/v1/users/1"));
        let rest = PathMatch::new("/files/{**}");
        assert!(rest.matches("/files/a"));
        assert!(rest.matches("/files/a/b/c"));
        assert!(rest.matches("/files/a/"));
        assert!(!rest.matches("/files/"));
        assert!(!rest.matches("/files"));
        assert!(!rest.matches("/filesx/a"));
        let both = PathMatch::new("/{*}/admin/{**}");
        assert!(both.matches("/v1/admin/x/y"));
        assert!(!both.matches("/v1/admin"));
        let suffix = PathMatch::new("/files/{**}/raw");
        assert!(suffix.matches("/files/a/raw"));
        assert!(suffix.matches("/files/a/b/raw"));
        assert!(!suffix.matches("/files/raw"));
        assert!(!suffix.matches("/files/a/raw/x"));
        let slash = PathMatch::new("/foo/{**}/");
        assert!(slash.matches("/foo/bar/"));
        assert!(!slash.matches("/foo/bar"));
        // Not a template: Istio's prefix match.
        assert_eq!(
            PathMatch::new("/api/*"),
            PathMatch::Str(StrMatch::Prefix("/api/".into()))
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    /// A reference for Istio's string matches: `*` as a glob for any run of
    /// characters, except that `*` alone needs a non-empty value (presence).
    fn glob(pattern: &[u8], value: &[u8]) -> bool {
        match pattern.split_first() {
            None => value.is_empty(),
            Some((b'*', rest)) => (0..=value.len()).any(|i| glob(rest, &value[i..])),
            Some((c, rest)) => value
                .split_first()
                .is_some_and(|(v, vs)| v == c && glob(rest, vs)),
        }
    }

    fn reference(pattern: &str, value: &str) -> bool {
        if pattern == "*" {
            return !value.is_empty();
        }
        glob(pattern.as_bytes(), value.as_bytes())
    }

    /// The `prefix` leading bits of `a` and `b`, compared one bit at a time.
    fn same_prefix(a: &[u8], b: &[u8], prefix: u8) -> bool {
        a.len() == b.len()
            && (0..usize::from(prefix)).all(|i| {
                let bit = |x: &[u8]| (x[i / 8] >> (7 - i % 8)) & 1;
                bit(a) == bit(b)
            })
    }

    fn octets(ip: IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// Principals: `*` only at an end, over a small alphabet so that matches
    /// are frequent.
    fn pattern() -> impl Strategy<Value = String> {
        let body = prop::collection::vec(prop::sample::select(vec!['a', 'b', '/', '.']), 0..6)
            .prop_map(|c| c.into_iter().collect::<String>());
        (body, 0..4u8).prop_map(|(body, star)| match star {
            0 => body,
            1 => format!("*{body}"),
            2 => format!("{body}*"),
            _ => "*".to_owned(),
        })
    }

    fn value() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!['a', 'b', '/', '.', 'A']), 0..8)
            .prop_map(|c| c.into_iter().collect())
    }

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|b| IpAddr::V4(Ipv4Addr::from_bits(b))),
            any::<u128>().prop_map(|b| IpAddr::V6(Ipv6Addr::from_bits(b))),
        ]
    }

    proptest! {
        #[test]
        fn string_match_agrees_with_the_glob_reference(p in pattern(), v in value()) {
            prop_assert_eq!(StrMatch::new(&p).matches(&v), reference(&p, &v), "{:?} ~ {:?}", p, v);
        }

        #[test]
        fn principal_match_agrees_with_the_reference(
            ns in value(), sa in value(), p in pattern()
        ) {
            let principal = format!("cluster.local/ns/{ns}/sa/{sa}");
            prop_assert_eq!(StrMatch::new(&p).matches(&principal), reference(&p, &principal));
            let exact = StrSet::new(&[principal.as_str()]);
            prop_assert!(exact.matches(&principal));
            let ns_prefix = format!("cluster.local/ns/{ns}/*");
            prop_assert!(StrSet::new(&[ns_prefix]).matches(&principal));
            let sa_suffix = format!("*/sa/{sa}");
            prop_assert!(StrSet::new(&[sa_suffix]).matches(&principal));
        }

        #[test]
        fn host_match_is_case_insensitive_and_ignores_a_port(
            p in pattern(), v in value(), port in proptest::option::of(0..70000u32)
        ) {
            let host = match port {
                Some(port) => format!("{v}:{port}"),
                None => v.clone(),
            };
            let (pl, hl) = (p.to_ascii_lowercase(), host.to_ascii_lowercase());
            let expected = reference(&pl, &hl)
                || (!pl.starts_with('*') && !pl.ends_with('*') && port.is_some()
                    && reference(&pl, &v.to_ascii_lowercase()));
            prop_assert_eq!(HostMatch::new(&p).matches(&host), expected, "{:?} ~ {:?}", p, host);
        }

        #[test]
        fn cidr_match_agrees_with_the_bitwise_reference(net in ip(), probe in ip(), prefix in 0..=128u8) {
            let width = if net.is_ipv4() { 32 } else { 128 };
            let prefix = prefix % (width + 1);
            let cidr: Cidr = format!("{net}/{prefix}").parse().expect("valid by construction");
            let expected = same_prefix(&octets(net), &octets(probe), prefix);
            prop_assert_eq!(IpRange::new(cidr).contains(probe), expected, "{} in {}", probe, cidr);
            prop_assert_eq!(cidr.contains(probe), expected, "registry Cidr agrees");
        }

        #[test]
        fn cidr_contains_its_own_network(net in ip(), prefix in 0..=128u8) {
            let width = if net.is_ipv4() { 32 } else { 128 };
            let cidr: Cidr = format!("{net}/{}", prefix % (width + 1)).parse().expect("valid");
            prop_assert!(IpRange::new(cidr).contains(net));
            prop_assert!(IpSet::new(&[cidr]).contains(cidr.addr()));
        }
    }

    #[test]
    fn fingerprints_tell_strings_apart() {
        let a = fingerprint("cluster.local/ns/shop/sa/frontend");
        assert_eq!(a, fingerprint("cluster.local/ns/shop/sa/frontend"));
        assert_ne!(a, fingerprint("cluster.local/ns/shop/sa/frontenD"));
        // The length counts: trailing zero bytes do not collide with padding.
        assert_ne!(fingerprint("ab"), fingerprint("ab\0"));
        assert_eq!(
            StrSet::new(&["a", "b"]).exact_fingerprints(),
            Some(vec![fingerprint("a"), fingerprint("b")])
        );
        assert_eq!(StrSet::new(&["a", "b*"]).exact_fingerprints(), None);
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_ranges() {
        let range = IpRange::new("10.0.0.0/8".parse().unwrap());
        assert!(range.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!range.contains("::ffff:11.1.2.3".parse().unwrap()));
        let v6 = IpRange::new("::/0".parse().unwrap());
        assert!(!v6.contains("10.1.2.3".parse().unwrap()), "families differ");
    }

    #[test]
    fn port_sets_scan_and_search() {
        let few = PortSet::new(&[443, 80, 80]);
        assert!(few.contains(80) && few.contains(443) && !few.contains(8080));
        let many: Vec<u16> = (1000..1100).step_by(3).collect();
        let set = PortSet::new(&many);
        assert!(set.contains(1003) && !set.contains(1004));
    }
}
