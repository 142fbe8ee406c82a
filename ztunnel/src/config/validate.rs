//! Istio's validation of `security.istio.io/v1` policies, and their conversion
//! to the registry's plain data. What Istio's admission webhook would reject is
//! rejected here, naming the field.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::{Invalid, Problem, convert::labels, crd::security as crd};
use crate::registry::{
    Action, AuthorizationPolicy, Cidr, MtlsMode, Object, ObjectKey, PeerAuthentication,
    RequestAuthentication, WorkloadSelector,
    policy::{ClaimToHeader, Condition, JwtHeader, JwtRule, Operation, Rule, Source, TargetRef},
};

/// The problems found in one policy: each one makes the part it is in fail
/// closed instead of refusing the whole policy.
#[derive(Debug, Default)]
struct Problems(Vec<Invalid>);

impl Problems {
    /// The value, or `None` with the problem noted.
    fn check<T>(&mut self, result: Result<T, Invalid>) -> Option<T> {
        result.map_err(|problem| self.0.push(problem)).ok()
    }

    fn push(&mut self, problem: Invalid) {
        self.0.push(problem);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn into_strings(self) -> Vec<Box<str>> {
        self.0.iter().map(|p| p.to_string().into()).collect()
    }
}

/// An AuthorizationPolicy; when parts of it are invalid they are kept in a
/// fail-closed form and named in its `problems` (Istio's rule that a policy
/// which cannot be applied must not widen access):
/// - an invalid `source`, `operation` or `when` entry is enforced as one that
///   cannot be evaluated: an ALLOW rule with it matches nothing, a DENY rule is
///   enforced without it (matching more);
/// - a selector or targetRef that cannot be read makes the policy apply to its
///   whole namespace (the scope cannot be narrowed);
/// - a `provider` on an ALLOW policy makes it an ALLOW policy without rules
///   (it allows nothing); CUSTOM without a provider stays CUSTOM (a match denies).
pub(super) fn authorization_policy(spec: &crd::AuthorizationPolicySpec, key: ObjectKey) -> Object {
    let mut problems = Problems::default();
    let (selector, target_refs) = selection(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
        &mut problems,
    );
    let action = match spec.action.unwrap_or_default() {
        crd::Action::Allow => Action::Allow,
        crd::Action::Deny => Action::Deny,
        crd::Action::Audit => Action::Audit,
        crd::Action::Custom => Action::Custom,
    };
    let provider = spec
        .provider
        .as_ref()
        .map(|p| p.name.as_str())
        .filter(|p| !p.is_empty());
    let mut allow_nothing = false;
    match (action, provider) {
        (Action::Custom, None) => problems.push(Invalid::new(
            "spec.provider.name",
            Problem::CustomWithoutProvider,
        )),
        (Action::Custom, Some(_)) | (_, None) => {}
        (other, Some(_)) => {
            problems.push(Invalid::new(
                "spec.provider",
                Problem::ProviderWithoutCustom,
            ));
            allow_nothing = other == Action::Allow;
        }
    }
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, r) in spec.rules.iter().enumerate() {
        rules.push(rule(
            &format!("spec.rules[{i}]"),
            r,
            &key.namespace,
            &mut problems,
        ));
    }
    if allow_nothing {
        rules.clear();
    }
    Object::AuthorizationPolicy(AuthorizationPolicy {
        key,
        selector,
        target_refs,
        action,
        provider: if action == Action::Custom {
            provider.map(Into::into)
        } else {
            None
        },
        rules,
        problems: problems.into_strings(),
    })
}

fn rule(field: &str, rule: &crd::Rule, namespace: &str, problems: &mut Problems) -> Rule {
    let mut out = Rule::default();
    for (i, from) in rule.from.iter().enumerate() {
        let field = format!("{field}.from[{i}].source");
        let s = from
            .source
            .as_ref()
            .ok_or_else(|| Invalid::new(&field, Problem::Required))
            .and_then(|s| source(&field, s, namespace));
        out.from.push(problems.check(s).unwrap_or_else(|| Source {
            invalid: true,
            ..Source::default()
        }));
    }
    for (i, to) in rule.to.iter().enumerate() {
        let field = format!("{field}.to[{i}].operation");
        let o = to
            .operation
            .as_ref()
            .ok_or_else(|| Invalid::new(&field, Problem::Required))
            .and_then(|o| operation(&field, o));
        out.to.push(problems.check(o).unwrap_or_else(|| Operation {
            invalid: true,
            ..Operation::default()
        }));
    }
    for (i, c) in rule.when.iter().enumerate() {
        let checked = condition(&format!("{field}.when[{i}]"), c);
        out.when
            .push(problems.check(checked).unwrap_or_else(|| Condition {
                key: c.key.as_str().into(),
                values: Vec::new(),
                not_values: Vec::new(),
                invalid: true,
            }));
    }
    out
}

/// `namespace`: the policy's, for `serviceAccounts` given without one.
fn source(field: &str, s: &crd::Source, namespace: &str) -> Result<Source, Invalid> {
    let out = Source {
        invalid: false,
        principals: matchers(field, "principals", &s.principals)?,
        not_principals: matchers(field, "notPrincipals", &s.not_principals)?,
        request_principals: matchers(field, "requestPrincipals", &s.request_principals)?,
        not_request_principals: matchers(field, "notRequestPrincipals", &s.not_request_principals)?,
        namespaces: matchers(field, "namespaces", &s.namespaces)?,
        not_namespaces: matchers(field, "notNamespaces", &s.not_namespaces)?,
        service_accounts: service_accounts(
            field,
            "serviceAccounts",
            &s.service_accounts,
            namespace,
        )?,
        not_service_accounts: service_accounts(
            field,
            "notServiceAccounts",
            &s.not_service_accounts,
            namespace,
        )?,
        ip_blocks: cidrs(field, "ipBlocks", &s.ip_blocks)?,
        not_ip_blocks: cidrs(field, "notIpBlocks", &s.not_ip_blocks)?,
        remote_ip_blocks: cidrs(field, "remoteIpBlocks", &s.remote_ip_blocks)?,
        not_remote_ip_blocks: cidrs(field, "notRemoteIpBlocks", &s.not_remote_ip_blocks)?,
    };
    if out == Source::default() {
        // Istio: "From.Source must not be empty".
        return Err(Invalid::new(field, Problem::Empty));
    }
    let identities = [
        &out.principals,
        &out.not_principals,
        &out.namespaces,
        &out.not_namespaces,
    ];
    for (name, list) in [
        ("serviceAccounts", &out.service_accounts),
        ("notServiceAccounts", &out.not_service_accounts),
    ] {
        if !list.is_empty() && identities.iter().any(|l| !l.is_empty()) {
            return Err(Invalid::new(
                format!("{field}.{name}"),
                Problem::ServiceAccountsExclusive,
            ));
        }
    }
    Ok(out)
}

/// Istio's limits on `serviceAccounts`: entries and characters per entry.
const SERVICE_ACCOUNTS_MAX: usize = 16;
const SERVICE_ACCOUNT_LEN_MAX: usize = 320;

/// `serviceAccounts`: `<name>` (in the policy's namespace) or
/// `<namespace>/<name>`, exact only; stored as `<namespace>/<name>`.
fn service_accounts(
    field: &str,
    name: &str,
    list: &[String],
    namespace: &str,
) -> Result<Vec<Box<str>>, Invalid> {
    if list.len() > SERVICE_ACCOUNTS_MAX {
        return Err(Invalid::new(
            format!("{field}.{name}"),
            Problem::TooMany(SERVICE_ACCOUNTS_MAX),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let f = || format!("{field}.{name}[{i}]");
            let (ns, sa) = v.split_once('/').unwrap_or((namespace, v));
            if ns.is_empty()
                || sa.is_empty()
                || sa.contains('/')
                || v.contains('*')
                || v.len() > SERVICE_ACCOUNT_LEN_MAX
            {
                return Err(Invalid::new(f(), Problem::ServiceAccount(v.clone())));
            }
            Ok(format!("{ns}/{sa}").into())
        })
        .collect()
}

fn operation(field: &str, o: &crd::Operation) -> Result<Operation, Invalid> {
    let out = Operation {
        invalid: false,
        hosts: matchers(field, "hosts", &o.hosts)?,
        not_hosts: matchers(field, "notHosts", &o.not_hosts)?,
        ports: ports(field, "ports", &o.ports)?,
        not_ports: ports(field, "notPorts", &o.not_ports)?,
        methods: matchers(field, "methods", &o.methods)?,
        not_methods: matchers(field, "notMethods", &o.not_methods)?,
        paths: paths(field, "paths", &o.paths)?,
        not_paths: paths(field, "notPaths", &o.not_paths)?,
    };
    if out == Operation::default() {
        return Err(Invalid::new(field, Problem::Empty));
    }
    Ok(out)
}

/// `when` keys Istio accepts; `[...]` keys need a non-empty name inside.
fn condition(field: &str, c: &crd::Condition) -> Result<Condition, Invalid> {
    const PLAIN: &[&str] = &[
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    ];
    const INDEXED: &[&str] = &["request.headers[", "request.auth.claims["];
    let key = c.key.as_str();
    let known = PLAIN.contains(&key)
        || INDEXED.iter().any(|p| {
            key.strip_prefix(p)
                .and_then(|rest| rest.strip_suffix(']'))
                .is_some_and(|inner| !inner.is_empty())
        })
        || key.starts_with("experimental.envoy.filters.");
    if !known {
        return Err(Invalid::new(
            format!("{field}.key"),
            Problem::ConditionKey(c.key.clone()),
        ));
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(Invalid::new(field, Problem::NoValues));
    }
    for (name, list) in [("values", &c.values), ("notValues", &c.not_values)] {
        for (i, v) in list.iter().enumerate() {
            let vf = format!("{field}.{name}[{i}]");
            match key {
                "source.ip" | "remote.ip" | "destination.ip" => {
                    v.parse::<Cidr>()
                        .map_err(|_| Invalid::new(&vf, Problem::Cidr(v.clone())))?;
                }
                "destination.port" => {
                    port(&vf, v)?;
                }
                _ => {}
            }
        }
    }
    Ok(Condition {
        key: key.into(),
        values: c.values.iter().map(|v| v.as_str().into()).collect(),
        not_values: c.not_values.iter().map(|v| v.as_str().into()).collect(),
        invalid: false,
    })
}

/// `paths`: Istio's string matches, or path templates (`{*}` one segment,
/// `{**}` one or more, the last operator) whose operators are whole segments of a path
/// starting with `/`.
fn paths(field: &str, name: &str, list: &[String]) -> Result<Vec<Box<str>>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            if !crate::policy::matcher::is_path_template(v) {
                return matchers(field, name, std::slice::from_ref(v))
                    .map(|mut one| one.remove(0))
                    .map_err(|mut e| {
                        e.field = format!("{field}.{name}[{i}]");
                        e
                    });
            }
            let bad = || {
                Invalid::new(
                    format!("{field}.{name}[{i}]"),
                    Problem::PathTemplate(v.clone()),
                )
            };
            let rest = v.strip_prefix('/').ok_or_else(bad)?;
            let segments: Vec<&str> = rest.split('/').collect();
            let mut after_rest = false;
            for segment in &segments {
                let operator = matches!(*segment, "{*}" | "{**}");
                if (!operator && segment.contains(['{', '}', '*'])) || (operator && after_rest) {
                    return Err(bad());
                }
                after_rest |= *segment == "{**}";
            }
            Ok(v.as_str().into())
        })
        .collect()
}

/// Strings matched exactly, by prefix (`abc*`), by suffix (`*abc`) or for
/// presence (`*`).
fn matchers(field: &str, name: &str, list: &[String]) -> Result<Vec<Box<str>>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let f = || format!("{field}.{name}[{i}]");
            if v.is_empty() {
                return Err(Invalid::new(f(), Problem::Empty));
            }
            let inner = &v[usize::from(v.starts_with('*'))..];
            let inner = inner.strip_suffix('*').unwrap_or(inner);
            if inner.contains('*') {
                return Err(Invalid::new(f(), Problem::Wildcard(v.clone())));
            }
            Ok(v.as_str().into())
        })
        .collect()
}

fn cidrs(field: &str, name: &str, list: &[String]) -> Result<Vec<Cidr>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            v.parse()
                .map_err(|_| Invalid::new(format!("{field}.{name}[{i}]"), Problem::Cidr(v.clone())))
        })
        .collect()
}

fn ports(field: &str, name: &str, list: &[String]) -> Result<Vec<u16>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, v)| port(&format!("{field}.{name}[{i}]"), v))
        .collect()
}

fn port(field: &str, v: &str) -> Result<u16, Invalid> {
    v.parse::<u16>()
        .ok()
        .filter(|&p| p != 0 && v.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| Invalid::new(field, Problem::Port(v.to_owned())))
}

/// `selector` and `targetRef(s)`: at most one of them. When the scope cannot
/// be read (a bad label, a bad target), the policy applies to its whole
/// namespace; when both are set, the selector is kept (ztunnel enforces it).
fn selection(
    selector: Option<&crd::WorkloadSelector>,
    target_ref: Option<&crd::PolicyTargetReference>,
    target_refs: &[crd::PolicyTargetReference],
    problems: &mut Problems,
) -> (Option<WorkloadSelector>, Vec<TargetRef>) {
    let before = problems.0.len();
    let selector = selector.and_then(|s| {
        let labels = labels("spec.selector.matchLabels", &s.match_labels);
        problems
            .check(labels)
            .map(|match_labels| WorkloadSelector { match_labels })
    });
    let refs: Vec<_> = target_ref.into_iter().chain(target_refs).collect();
    let mut out = Vec::with_capacity(refs.len());
    for (i, r) in refs.iter().enumerate() {
        if let Some(target) = problems.check(target(i, r)) {
            out.push(target);
        }
    }
    if problems.0.len() > before {
        return (None, Vec::new());
    }
    if selector.is_some() && !out.is_empty() {
        problems.push(Invalid::new(
            "spec.selector",
            Problem::SelectorAndTargetRefs,
        ));
        return (selector, Vec::new());
    }
    (selector, out)
}

fn target(i: usize, r: &crd::PolicyTargetReference) -> Result<TargetRef, Invalid> {
    let field = format!("spec.targetRefs[{i}]");
    if !matches!(
        r.kind.as_str(),
        "Gateway" | "GatewayClass" | "Service" | "ServiceEntry"
    ) {
        return Err(Invalid::new(
            format!("{field}.kind"),
            Problem::TargetKind(r.kind.clone()),
        ));
    }
    if r.name.is_empty() {
        return Err(Invalid::new(format!("{field}.name"), Problem::Required));
    }
    Ok(TargetRef {
        group: r.group.as_str().into(),
        kind: r.kind.as_str().into(),
        name: r.name.as_str().into(),
    })
}

/// A PeerAuthentication; an invalid one (a bad selector, a bad port, port
/// levels without a selector) is kept as STRICT for every port of its scope,
/// so a mistake never lets plaintext in.
pub(super) fn peer_authentication(pa: &crd::PeerAuthentication, key: ObjectKey) -> Object {
    let spec = &pa.spec;
    let mut problems = Problems::default();
    let (selector, _) = selection(spec.selector.as_ref(), None, &[], &mut problems);
    let has_labels = selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !has_labels {
        problems.push(Invalid::new(
            "spec.portLevelMtls",
            Problem::PortLevelWithoutSelector,
        ));
    }
    let mut port_level_mtls = BTreeMap::new();
    for (p, m) in &spec.port_level_mtls {
        if let Some(port) = problems.check(port(&format!("spec.portLevelMtls[{p}]"), p)) {
            port_level_mtls.insert(port, mtls_mode(m.mode));
        }
    }
    let mut mtls = spec.mtls.as_ref().map(|m| mtls_mode(m.mode));
    if !problems.is_empty() {
        mtls = Some(MtlsMode::Strict);
        port_level_mtls.clear();
    }
    Object::PeerAuthentication(PeerAuthentication {
        key,
        created: pa.creation_timestamp().map(|t| t.0.to_string().into()),
        selector,
        mtls,
        port_level_mtls,
        problems: problems.into_strings(),
    })
}

fn mtls_mode(mode: Option<crd::MtlsMode>) -> MtlsMode {
    match mode {
        None | Some(crd::MtlsMode::Unset) => MtlsMode::Unset,
        Some(crd::MtlsMode::Disable) => MtlsMode::Disable,
        Some(crd::MtlsMode::Permissive) => MtlsMode::Permissive,
        Some(crd::MtlsMode::Strict) => MtlsMode::Strict,
    }
}

/// A RequestAuthentication; a `jwtRules` entry that fails validation is left
/// out and named in `problems` (a waypoint then refuses tokens for the
/// workloads the policy selects).
pub(super) fn request_authentication(
    spec: &crd::RequestAuthenticationSpec,
    key: ObjectKey,
) -> Object {
    let mut problems = Problems::default();
    let (selector, target_refs) = selection(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
        &mut problems,
    );
    let mut jwt_rules = Vec::with_capacity(spec.jwt_rules.len());
    for (i, r) in spec.jwt_rules.iter().enumerate() {
        if let Some(rule) = problems.check(jwt_rule(&format!("spec.jwtRules[{i}]"), r)) {
            jwt_rules.push(rule);
        }
    }
    Object::RequestAuthentication(RequestAuthentication {
        key,
        selector,
        target_refs,
        jwt_rules,
        problems: problems.into_strings(),
    })
}

fn jwt_rule(field: &str, r: &crd::JwtRule) -> Result<JwtRule, Invalid> {
    if r.issuer.is_empty() {
        return Err(Invalid::new(format!("{field}.issuer"), Problem::Required));
    }
    if !(r.jwks_uri.is_empty()
        || r.jwks_uri.starts_with("https://")
        || r.jwks_uri.starts_with("http://"))
    {
        return Err(Invalid::new(
            format!("{field}.jwksUri"),
            Problem::Uri(r.jwks_uri.clone()),
        ));
    }
    let non_empty = |s: &str| (!s.is_empty()).then(|| Box::<str>::from(s));
    let mut from_headers = Vec::new();
    for (i, h) in r.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            return Err(Invalid::new(
                format!("{field}.fromHeaders[{i}].name"),
                Problem::Required,
            ));
        }
        from_headers.push(JwtHeader {
            name: h.name.as_str().into(),
            prefix: non_empty(&h.prefix),
        });
    }
    let mut output_claim_to_headers = Vec::new();
    for (i, c) in r.output_claim_to_headers.iter().enumerate() {
        let f = format!("{field}.outputClaimToHeaders[{i}]");
        if c.header.is_empty() || c.claim.is_empty() {
            return Err(Invalid::new(f, Problem::Required));
        }
        output_claim_to_headers.push(ClaimToHeader {
            header: c.header.as_str().into(),
            claim: c.claim.as_str().into(),
        });
    }
    let strings = |v: &[String]| v.iter().map(|s| Box::<str>::from(s.as_str())).collect();
    Ok(JwtRule {
        issuer: r.issuer.as_str().into(),
        audiences: strings(&r.audiences),
        jwks_uri: non_empty(&r.jwks_uri),
        jwks: non_empty(&r.jwks),
        from_headers,
        from_params: strings(&r.from_params),
        from_cookies: strings(&r.from_cookies),
        forward_original_token: r.forward_original_token,
        output_payload_to_header: non_empty(&r.output_payload_to_header),
        output_claim_to_headers,
    })
}
