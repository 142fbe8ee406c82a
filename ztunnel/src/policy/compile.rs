//! From the registry's validated AuthorizationPolicies to the compiled form:
//! value lists become matchers, `not` fields negated checks, `when` keys typed
//! tests, and each rule notes whether it needs HTTP attributes.

use std::collections::BTreeSet;

use super::{
    compiled::{CompiledPolicies, FailSafe, PolicyInfo},
    matcher::{HostSet, IpSet, PathSet, PortSet, ServiceAccountSet, StrSet},
    rule::{Check, Clause, Rule, Test, required_principals},
};
use crate::registry::{
    Action, AuthorizationPolicy, Cidr,
    policy::{Condition, Operation, Rule as RuleSpec, Source},
};

/// Compiles `policies`, the AuthorizationPolicies that apply to one workload
/// (or, at a waypoint, to one destination), into a [`CompiledPolicies`].
///
/// Selection is the caller's: every policy given is used. Policies are ordered
/// by namespace and name so that the deciding policy is the same on every
/// node.
pub fn compile<'a>(
    policies: impl IntoIterator<Item = &'a AuthorizationPolicy>,
) -> CompiledPolicies {
    let mut policies: Vec<&AuthorizationPolicy> = policies.into_iter().collect();
    policies.sort_by(|a, b| a.key.cmp(&b.key));
    policies.dedup_by(|a, b| a.key == b.key);
    let mut out = CompiledPolicies::default();
    for (i, policy) in policies.into_iter().enumerate() {
        let index = u32::try_from(i).expect("fewer than 2^32 policies apply to one workload");
        let mut found = Found::default();
        let rules = policy
            .rules
            .iter()
            .enumerate()
            .map(|(r, spec)| {
                let r = u32::try_from(r).expect("fewer than 2^32 rules in one policy");
                rule(index, r, spec, &mut found)
            })
            .collect::<Vec<_>>();
        if !found.http.is_empty() || !found.unsupported.is_empty() {
            out.fail_safe.push(FailSafe {
                policy: policy.key.clone(),
                action: policy.action,
                http: found.http.into_iter().collect(),
                unsupported: found.unsupported.into_iter().collect(),
            });
        }
        match policy.action {
            Action::Allow => {
                out.has_allow = true;
                out.allow.extend(rules);
            }
            Action::Deny => out.deny.extend(rules),
            Action::Audit => out.audit.extend(rules),
            Action::Custom => out.custom.extend(rules),
        }
        out.policies.push(PolicyInfo {
            key: policy.key.clone(),
            action: policy.action,
            provider: policy.provider.clone(),
        });
    }
    out
}

/// The fields of one policy that need HTTP or cannot be evaluated at all.
#[derive(Default)]
struct Found {
    http: BTreeSet<Box<str>>,
    unsupported: BTreeSet<Box<str>>,
}

fn rule(policy: u32, index: u32, spec: &RuleSpec, found: &mut Found) -> Rule {
    let from: Box<[Clause]> = spec.from.iter().map(|s| source(s, found)).collect();
    let to: Box<[Clause]> = spec.to.iter().map(|o| operation(o, found)).collect();
    let mut when = Vec::new();
    for c in &spec.when {
        condition(c, &mut when, found);
    }
    let all = || from.iter().chain(&to).flat_map(|c| c.iter()).chain(&when);
    Rule {
        policy,
        index,
        http: all().any(|c| c.test.is_l7()),
        unsupported: all().any(|c| c.test == Test::Unsupported),
        principals: required_principals(&from, &when),
        when: when.into(),
        from,
        to,
    }
}

/// Adds a check for `values` and a negated one for `not_values`, if present.
fn pair<T>(out: &mut Vec<Check>, values: &[T], not_values: &[T], test: impl Fn(&[T]) -> Test) {
    if !values.is_empty() {
        out.push(Check {
            test: test(values),
            negate: false,
        });
    }
    if !not_values.is_empty() {
        out.push(Check {
            test: test(not_values),
            negate: true,
        });
    }
}

/// The clause of an entry that failed validation: it cannot be evaluated, so
/// an ALLOW rule with it matches nothing and a DENY rule is enforced without
/// it (fail closed either way).
fn invalid(what: &str, found: &mut Found) -> Clause {
    found
        .unsupported
        .insert(format!("an invalid {what} (see the policy's problems)").into());
    [Check {
        test: Test::Unsupported,
        negate: false,
    }]
    .into()
}

fn source(s: &Source, found: &mut Found) -> Clause {
    if s.invalid {
        return invalid("source", found);
    }
    let mut out = Vec::new();
    pair(&mut out, &s.principals, &s.not_principals, |v| {
        Test::Principal(StrSet::new(v))
    });
    pair(&mut out, &s.namespaces, &s.not_namespaces, |v| {
        Test::Namespace(StrSet::new(v))
    });
    pair(
        &mut out,
        &s.service_accounts,
        &s.not_service_accounts,
        |v| Test::ServiceAccount(ServiceAccountSet::new(v)),
    );
    pair(&mut out, &s.ip_blocks, &s.not_ip_blocks, |v| {
        Test::SourceIp(IpSet::new(v))
    });
    pair(
        &mut out,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        |v| Test::RemoteIp(IpSet::new(v)),
    );
    pair(
        &mut out,
        &s.request_principals,
        &s.not_request_principals,
        |v| Test::RequestPrincipal(StrSet::new(v)),
    );
    note_http(
        found,
        &[
            ("requestPrincipals", s.request_principals.is_empty()),
            ("notRequestPrincipals", s.not_request_principals.is_empty()),
            ("remoteIpBlocks", s.remote_ip_blocks.is_empty()),
            ("notRemoteIpBlocks", s.not_remote_ip_blocks.is_empty()),
        ],
    );
    out.into()
}

fn operation(o: &Operation, found: &mut Found) -> Clause {
    if o.invalid {
        return invalid("operation", found);
    }
    let mut out = Vec::new();
    pair(&mut out, &o.ports, &o.not_ports, |v| {
        Test::DestinationPort(PortSet::new(v))
    });
    pair(&mut out, &o.hosts, &o.not_hosts, |v| {
        Test::Host(HostSet::new(v))
    });
    pair(&mut out, &o.methods, &o.not_methods, |v| {
        Test::Method(StrSet::new(v))
    });
    pair(&mut out, &o.paths, &o.not_paths, |v| {
        Test::Path(PathSet::new(v))
    });
    note_http(
        found,
        &[
            ("hosts", o.hosts.is_empty()),
            ("notHosts", o.not_hosts.is_empty()),
            ("methods", o.methods.is_empty()),
            ("notMethods", o.not_methods.is_empty()),
            ("paths", o.paths.is_empty()),
            ("notPaths", o.not_paths.is_empty()),
        ],
    );
    out.into()
}

fn note_http(found: &mut Found, fields: &[(&str, bool)]) {
    for &(name, empty) in fields {
        if !empty {
            found.http.insert(name.into());
        }
    }
}

/// One `when` entry: `values` (any) and `notValues` (none) of one key.
fn condition(c: &Condition, out: &mut Vec<Check>, found: &mut Found) {
    if c.invalid {
        out.extend(invalid(&format!("condition on {}", c.key), found));
        return;
    }
    let mut checks = Vec::with_capacity(2);
    for (values, negate) in [(&c.values, false), (&c.not_values, true)] {
        if values.is_empty() {
            continue;
        }
        match condition_test(&c.key, values) {
            Ok(test) => checks.push(Check { test, negate }),
            Err(reason) => {
                found
                    .unsupported
                    .insert(format!("when {}: {reason}", c.key).into());
                // The condition is unknown as a whole, never narrower.
                out.push(Check {
                    test: Test::Unsupported,
                    negate: false,
                });
                return;
            }
        }
    }
    if checks.iter().any(|c| c.test.is_l7()) {
        found.http.insert(c.key.clone());
    }
    out.extend(checks);
}

/// The test for `when` key `key` with `values`, or why it cannot be evaluated.
fn condition_test(key: &str, values: &[Box<str>]) -> Result<Test, &'static str> {
    let strings = || StrSet::new(values);
    Ok(match key {
        "source.ip" => Test::SourceIp(ips(values)?),
        "remote.ip" => Test::RemoteIp(ips(values)?),
        "destination.ip" => Test::DestinationIp(ips(values)?),
        "destination.port" => Test::DestinationPort(ports(values)?),
        "source.namespace" => Test::Namespace(strings()),
        "source.principal" => Test::Principal(strings()),
        "connection.sni" => Test::Sni(strings()),
        "request.auth.principal" => Test::RequestPrincipal(strings()),
        "request.auth.audiences" => Test::Audience(strings()),
        "request.auth.presenter" => Test::Presenter(strings()),
        _ => {
            if let Some(name) = bracketed(key, "request.headers") {
                Test::Header {
                    // Header names are case-insensitive; the waypoint looks them
                    // up in lowercase.
                    name: name.to_ascii_lowercase().into(),
                    set: strings(),
                }
            } else if let Some(path) = bracketed(key, "request.auth.claims") {
                // Nested claims: `request.auth.claims[a][b]`.
                let path = path.split("][").map(Box::from).collect();
                Test::Claim {
                    path,
                    set: strings(),
                }
            } else {
                return Err("not supported by ambit");
            }
        }
    })
}

/// `inner` of `<prefix>[inner]`, when not empty.
fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    key.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')
        .filter(|inner| !inner.is_empty() && !inner.starts_with(']') && !inner.ends_with('['))
}

fn ips(values: &[Box<str>]) -> Result<IpSet, &'static str> {
    let cidrs = values
        .iter()
        .map(|v| v.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "a value is not an IP address or CIDR")?;
    Ok(IpSet::new(&cidrs))
}

fn ports(values: &[Box<str>]) -> Result<PortSet, &'static str> {
    let ports = values
        .iter()
        .map(|v| v.parse::<u16>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "a value is not a port number")?;
    Ok(PortSet::new(&ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_keys_become_typed_tests() {
        let v = |s: &[&str]| s.iter().map(|s| Box::<str>::from(*s)).collect::<Vec<_>>();
        assert!(matches!(
            condition_test("source.ip", &v(&["10.0.0.0/8"])),
            Ok(Test::SourceIp(_))
        ));
        assert!(condition_test("source.ip", &v(&["10.0.0.0/33"])).is_err());
        assert!(condition_test("destination.port", &v(&["http"])).is_err());
        assert_eq!(
            condition_test("request.headers[X-User]", &v(&["a"])),
            Ok(Test::Header {
                name: "x-user".into(),
                set: StrSet::new(&["a"])
            })
        );
        assert_eq!(
            condition_test("request.auth.claims[a][b]", &v(&["x"])),
            Ok(Test::Claim {
                path: vec![Box::from("a"), Box::from("b")].into(),
                set: StrSet::new(&["x"])
            })
        );
        assert!(condition_test("request.auth.claims[]", &v(&["x"])).is_err());
        assert!(condition_test("experimental.envoy.filters.a.b[c]", &v(&["x"])).is_err());
    }

    #[test]
    fn an_unusable_value_makes_the_condition_unsupported() {
        let mut found = Found::default();
        let mut out = Vec::new();
        let c = Condition {
            key: "destination.ip".into(),
            values: vec!["10.0.0.1".into()],
            not_values: vec!["not-an-ip".into()],
            invalid: false,
        };
        condition(&c, &mut out, &mut found);
        assert_eq!(
            out,
            vec![Check {
                test: Test::Unsupported,
                negate: false
            }]
        );
        assert_eq!(found.unsupported.len(), 1);
    }
}
