use k8s_openapi::api::core::v1::PodTemplate;
use serde_json::json;

use super::*;

fn template(container: &str) -> PodTemplate {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PodTemplate",
        "metadata": {"name": "ambit-waypoint", "namespace": "ambit-system"},
        "template": {
            "metadata": {"labels": {"team": "mesh"}},
            "spec": {
                "serviceAccountName": "someone-else",
                "containers": [{
                    "name": container, "image": "registry.example/waypoint:1.2",
                    "env": [
                        {"name": "TRUST_DOMAIN", "value": "stale.example"},
                        {"name": "CA_ADDRESS", "value": "ambit-ca.ambit-system.svc:15012"},
                    ],
                }],
            },
        },
    }))
    .expect("a PodTemplate")
}

fn gateway(namespace: &str, name: &str, uid: &str) -> WaypointGateway {
    WaypointGateway {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
    }
}

fn inputs<'a>(gateways: &'a [WaypointGateway], template: Option<&'a PodTemplate>) -> Inputs<'a> {
    Inputs {
        gateways,
        template,
        trust_domain: "mesh.example",
        roots: Some(("ambit-ca-root-cert", "-----BEGIN CERTIFICATE-----\n...")),
        system_namespace: "ambit-system",
    }
}

fn env(deployment: &Deployment, name: &str) -> Vec<String> {
    let spec = &deployment.spec;
    let pod = spec.template.spec.as_ref().expect("pod spec");
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == name)
        .filter_map(|e| e.value.clone())
        .collect()
}

#[test]
fn each_waypoint_gets_an_account_a_binding_and_a_deployment_from_the_template() {
    let gateways = [
        gateway("demo", "waypoint", "uid-1"),
        gateway("shop", "wp", "uid-2"),
    ];
    let template = template("waypoint");
    let (desired, problem) = desired(inputs(&gateways, Some(&template)));
    assert_eq!(problem, None);
    assert_eq!(desired.service_accounts.len(), 2);
    assert_eq!(desired.bindings.len(), 2);
    assert_eq!(desired.deployments.len(), 2);

    let sa = &desired.service_accounts[1];
    assert_eq!(sa.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(sa.metadata.name.as_deref(), Some("wp"));
    let owners = sa.metadata.owner_references.as_ref().expect("owned");
    assert_eq!(owners[0].uid, "uid-2");
    assert_eq!(owners[0].kind, "Gateway");

    let binding = &desired.bindings[0];
    assert_eq!(
        binding.metadata.name.as_deref(),
        Some("ambit-waypoint:demo:waypoint")
    );
    assert_eq!(binding.role_ref.name, "ambit-waypoint");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.namespace.as_deref(),
            subject.name.as_str()
        ),
        ("ServiceAccount", Some("demo"), "waypoint")
    );
    // Cluster-scoped: no owner, found again by its labels.
    assert!(binding.metadata.owner_references.is_none());
    let labels = binding.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels[GATEWAY_NAMESPACE_LABEL], "demo");
    assert_eq!(labels[GATEWAY_LABEL], "waypoint");
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);

    let deployment = &desired.deployments[0];
    assert_eq!(deployment.metadata.name.as_deref(), Some("waypoint"));
    assert_eq!(deployment.metadata.namespace.as_deref(), Some("demo"));
    let spec = &deployment.spec;
    assert_eq!(spec.replicas, None, "scaling is left to the user");
    let selector = spec.selector.match_labels.as_ref().expect("selector");
    assert_eq!(selector[GATEWAY_NAME_LABEL], "waypoint");
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .expect("pod labels");
    assert_eq!(pod_labels[GATEWAY_NAME_LABEL], "waypoint");
    assert_eq!(pod_labels["team"], "mesh", "the template's labels stay");
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("waypoint"));
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/waypoint:1.2")
    );
    assert_eq!(env(deployment, GATEWAY_ENV), ["demo/waypoint"]);
    assert_eq!(
        env(deployment, "TRUST_DOMAIN"),
        ["mesh.example"],
        "the CA's trust domain replaces the template's"
    );
    assert_eq!(
        env(deployment, "CA_ADDRESS"),
        ["ambit-ca.ambit-system.svc:15012"]
    );
    let owners = deployment
        .metadata
        .owner_references
        .as_ref()
        .expect("owned");
    assert_eq!(
        (owners[0].uid.as_str(), owners[0].controller),
        ("uid-1", Some(true))
    );
}

#[test]
fn the_roots_are_published_to_the_ca_namespace_and_each_waypoint_namespace() {
    let gateways = [
        gateway("demo", "a", "uid-a"),
        gateway("demo", "b", "uid-b"),
        gateway("shop", "wp", "uid-c"),
    ];
    let template = template("waypoint");
    let (with, _) = desired(inputs(&gateways, Some(&template)));
    let by_ns: BTreeMap<&str, &ConfigMap> = with
        .config_maps
        .iter()
        .map(|cm| (cm.metadata.namespace.as_deref().unwrap_or(""), cm))
        .collect();
    assert_eq!(
        by_ns.keys().copied().collect::<Vec<_>>(),
        ["ambit-system", "demo", "shop"]
    );
    for cm in by_ns.values() {
        assert_eq!(cm.metadata.name.as_deref(), Some("ambit-ca-root-cert"));
        let data = cm.data.as_ref().expect("data");
        assert!(data[ROOT_CERT_KEY].starts_with("-----BEGIN CERTIFICATE-----"));
    }
    assert!(by_ns["ambit-system"].metadata.owner_references.is_none());
    // Kept while any waypoint of the namespace is.
    let owners: Vec<&str> = by_ns["demo"]
        .metadata
        .owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.as_str())
        .collect();
    assert_eq!(owners, ["uid-a", "uid-b"]);

    // Without waypoints (or with the controller off): the CA's namespace only.
    let (without, _) = desired(inputs(&gateways, None));
    assert_eq!(without.config_maps.len(), 1);
    assert!(without.deployments.is_empty() && without.bindings.is_empty());
}

#[test]
fn a_template_without_the_waypoint_container_deploys_nothing_and_says_why() {
    let gateways = [gateway("demo", "waypoint", "uid-1")];
    let template = template("proxy");
    let (desired, problem) = desired(inputs(&gateways, Some(&template)));
    let problem = problem.expect("a problem");
    assert!(
        problem.contains("PodTemplate ambit-system/ambit-waypoint")
            && problem.contains("\"waypoint\""),
        "{problem}"
    );
    assert!(desired.deployments.is_empty() && desired.service_accounts.is_empty());
    assert!(!desired.config_maps.is_empty(), "the roots still go out");
}

fn crd_gateway(class: &str, name: &str, uid: Option<&str>) -> Gateway {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": "demo", "uid": uid},
        "spec": {"gatewayClassName": class, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    }))
    .expect("a Gateway")
}

#[test]
fn only_valid_waypoint_gateways_are_deployed() {
    assert_eq!(
        WaypointGateway::from_gateway(&crd_gateway("istio", "ingress", Some("u"))),
        None
    );
    assert_eq!(
        WaypointGateway::from_gateway(&crd_gateway(WAYPOINT_CLASS, "waypoint", Some("u"))),
        Some(Ok(gateway("demo", "waypoint", "u")))
    );
    let long = "w".repeat(64);
    let err = WaypointGateway::from_gateway(&crd_gateway(WAYPOINT_CLASS, &long, Some("u")))
        .expect("a waypoint")
        .expect_err("too long");
    assert!(
        err.contains("at most 63") && err.contains("demo/www"),
        "{err}"
    );
    let err = WaypointGateway::from_gateway(&crd_gateway(WAYPOINT_CLASS, "waypoint", None))
        .expect("a waypoint")
        .expect_err("no uid");
    assert!(err.contains("uid"), "{err}");
    let mut deleting = serde_json::to_value(crd_gateway(WAYPOINT_CLASS, "waypoint", Some("u")))
        .expect("serializes");
    deleting["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
    let deleting: Gateway = serde_json::from_value(deleting).expect("a Gateway");
    assert_eq!(WaypointGateway::from_gateway(&deleting), None);
}

#[test]
fn binding_names_never_collide() {
    assert_ne!(binding_name("a-b", "c"), binding_name("a", "b-c"));
    assert_eq!(
        binding_name("demo", "waypoint"),
        "ambit-waypoint:demo:waypoint"
    );
}
