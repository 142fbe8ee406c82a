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

pub(super) fn authorization_policy(
    spec: &crd::AuthorizationPolicySpec,
    key: ObjectKey,
) -> Result<Object, Invalid> {
    let (selector, target_refs) = selection(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    )?;
    let action = match spec.action.unwrap_or_default() {
        crd::Action::Allow => Action::Allow,
        crd::Action::Deny => Action::Deny,
        crd::Action::Audit => Action::Audit,
        crd::Action::Custom => Action::Custom,
    };
    let provider = spec.provider.as_ref().map(|p| p.name.as_str());
    match (action, provider) {
        (Action::Custom, None | Some("")) => {
            return Err(Invalid::new(
                "spec.provider.name",
                Problem::CustomWithoutProvider,
            ));
        }
        (Action::Custom, Some(_)) | (_, None) => {}
        (_, Some(_)) => {
            return Err(Invalid::new(
                "spec.provider",
                Problem::ProviderWithoutCustom,
            ));
        }
    }
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, rule) in spec.rules.iter().enumerate() {
        rules.push(self::rule(
            &format!("spec.rules[{i}]"),
            rule,
            &key.namespace,
        )?);
    }
    Ok(Object::AuthorizationPolicy(AuthorizationPolicy {
        key,
        selector,
        target_refs,
        action,
        provider: provider.map(Into::into),
        rules,
    }))
}

fn rule(field: &str, rule: &crd::Rule, namespace: &str) -> Result<Rule, Invalid> {
    let mut out = Rule::default();
    for (i, from) in rule.from.iter().enumerate() {
        let field = format!("{field}.from[{i}].source");
        let s = from
            .source
            .as_ref()
            .ok_or_else(|| Invalid::new(&field, Problem::Required))?;
        out.from.push(source(&field, s, namespace)?);
    }
    for (i, to) in rule.to.iter().enumerate() {
        let field = format!("{field}.to[{i}].operation");
        let o = to
            .operation
            .as_ref()
            .ok_or_else(|| Invalid::new(&field, Problem::Required))?;
        out.to.push(operation(&field, o)?);
    }
    for (i, c) in rule.when.iter().enumerate() {
        out.when.push(condition(&format!("{field}.when[{i}]"), c)?);
    }
    Ok(out)
}

/// `namespace`: the policy's, for `serviceAccounts` given without one.
fn source(field: &str, s: &crd::Source, namespace: &str) -> Result<Source, Invalid> {
    let out = Source {
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
        hosts: matchers(field, "hosts", &o.hosts)?,
        not_hosts: matchers(field, "notHosts", &o.not_hosts)?,
        ports: ports(field, "ports", &o.ports)?,
        not_ports: ports(field, "notPorts", &o.not_ports)?,
        methods: matchers(field, "methods", &o.methods)?,
        not_methods: matchers(field, "notMethods", &o.not_methods)?,
        paths: matchers(field, "paths", &o.paths)?,
        not_paths: matchers(field, "notPaths", &o.not_paths)?,
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
    })
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

/// `selector` and `targetRef(s)`: at most one of them.
fn selection(
    selector: Option<&crd::WorkloadSelector>,
    target_ref: Option<&crd::PolicyTargetReference>,
    target_refs: &[crd::PolicyTargetReference],
) -> Result<(Option<WorkloadSelector>, Vec<TargetRef>), Invalid> {
    let refs: Vec<_> = target_ref.into_iter().chain(target_refs).collect();
    if selector.is_some() && !refs.is_empty() {
        return Err(Invalid::new(
            "spec.selector",
            Problem::SelectorAndTargetRefs,
        ));
    }
    let mut out = Vec::with_capacity(refs.len());
    for (i, r) in refs.iter().enumerate() {
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
        out.push(TargetRef {
            group: r.group.as_str().into(),
            kind: r.kind.as_str().into(),
            name: r.name.as_str().into(),
        });
    }
    let selector = selector
        .map(|s| {
            Ok::<_, Invalid>(WorkloadSelector {
                match_labels: labels("spec.selector.matchLabels", &s.match_labels)?,
            })
        })
        .transpose()?;
    Ok((selector, out))
}

pub(super) fn peer_authentication(
    pa: &crd::PeerAuthentication,
    key: ObjectKey,
) -> Result<Object, Invalid> {
    let spec = &pa.spec;
    let (selector, _) = selection(spec.selector.as_ref(), None, &[])?;
    let has_labels = selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !has_labels {
        return Err(Invalid::new(
            "spec.portLevelMtls",
            Problem::PortLevelWithoutSelector,
        ));
    }
    let mut port_level_mtls = BTreeMap::new();
    for (p, m) in &spec.port_level_mtls {
        let port = port(&format!("spec.portLevelMtls[{p}]"), p)?;
        port_level_mtls.insert(port, mtls_mode(m.mode));
    }
    Ok(Object::PeerAuthentication(PeerAuthentication {
        key,
        created: pa.creation_timestamp().map(|t| t.0.to_string().into()),
        selector,
        mtls: spec.mtls.as_ref().map(|m| mtls_mode(m.mode)),
        port_level_mtls,
    }))
}

fn mtls_mode(mode: Option<crd::MtlsMode>) -> MtlsMode {
    match mode {
        None | Some(crd::MtlsMode::Unset) => MtlsMode::Unset,
        Some(crd::MtlsMode::Disable) => MtlsMode::Disable,
        Some(crd::MtlsMode::Permissive) => MtlsMode::Permissive,
        Some(crd::MtlsMode::Strict) => MtlsMode::Strict,
    }
}

pub(super) fn request_authentication(
    spec: &crd::RequestAuthenticationSpec,
    key: ObjectKey,
) -> Result<Object, Invalid> {
    let (selector, target_refs) = selection(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    )?;
    let mut jwt_rules = Vec::with_capacity(spec.jwt_rules.len());
    for (i, r) in spec.jwt_rules.iter().enumerate() {
        jwt_rules.push(jwt_rule(&format!("spec.jwtRules[{i}]"), r)?);
    }
    Ok(Object::RequestAuthentication(RequestAuthentication {
        key,
        selector,
        target_refs,
        jwt_rules,
    }))
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
