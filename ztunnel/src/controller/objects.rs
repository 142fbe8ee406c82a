//! What the controller wants to exist, computed from what it watches: pure
//! functions of the waypoint Gateways, the PodTemplate and the CA's roots.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{ConfigMap, EnvVar, PodTemplate, PodTemplateSpec, ServiceAccount},
        rbac::v1::{ClusterRoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
};

use crate::{config::crd::gateway::Gateway, registry::GATEWAY_NAME_LABEL};

/// The Gateway class that declares a waypoint.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// `app.kubernetes.io/managed-by` on everything the controller makes.
pub const MANAGED_BY: &str = "ambit-waypoint-controller";
/// The label key of [`MANAGED_BY`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// On a ClusterRoleBinding: the namespace of the Gateway it is for (a
/// cluster-scoped object cannot be owned by a namespaced one, so the
/// controller finds and deletes it by these labels).
pub const GATEWAY_NAMESPACE_LABEL: &str = "ambit.dev/gateway-namespace";
/// On a ClusterRoleBinding: the name of the Gateway it is for.
pub const GATEWAY_LABEL: &str = "ambit.dev/gateway-name";
/// The ClusterRole bound to each waypoint's service account (deploy/waypoint-rbac.yaml).
pub const WAYPOINT_CLUSTER_ROLE: &str = "ambit-waypoint";
/// The container of the template that runs the waypoint.
pub const WAYPOINT_CONTAINER: &str = "waypoint";
/// The key of the published roots in the root ConfigMap.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// The waypoint's environment variable naming its Gateway (`<ns>/<name>`).
pub const GATEWAY_ENV: &str = "AMBIT_WAYPOINT_GATEWAY";

/// A Gateway the controller deploys a waypoint for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WaypointGateway {
    /// Its namespace.
    pub namespace: String,
    /// Its name; also the name of the Deployment and ServiceAccount.
    pub name: String,
    /// Its uid, for the owner references that let Kubernetes delete the
    /// namespaced objects with it.
    pub uid: String,
}

impl WaypointGateway {
    /// `Some` for a Gateway of class `istio-waypoint` that has what the
    /// controller needs; `Err` says why a waypoint Gateway cannot be deployed.
    pub fn from_gateway(gateway: &Gateway) -> Option<Result<Self, String>> {
        if gateway.spec.gateway_class_name != WAYPOINT_CLASS {
            return None;
        }
        let meta = &gateway.metadata;
        let (Some(namespace), Some(name), Some(uid)) = (&meta.namespace, &meta.name, &meta.uid)
        else {
            return Some(Err(
                "the Gateway has no namespace, name or uid in its metadata".to_owned(),
            ));
        };
        if meta.deletion_timestamp.is_some() {
            return None;
        }
        // The name labels the waypoint's pods (gateway-name), and a label
        // value has at most 63 characters.
        if name.len() > 63 {
            return Some(Err(format!(
                "Gateway {namespace}/{name}: a waypoint's name is a label value of its pods, at most 63 characters ({} here)",
                name.len()
            )));
        }
        Some(Ok(Self {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
        }))
    }

    /// `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn owner(&self, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "gateway.networking.k8s.io/v1".to_owned(),
            kind: "Gateway".to_owned(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }
}

/// The name of the ClusterRoleBinding of the waypoint of Gateway
/// `namespace/name`: `:` appears in neither a namespace nor a Gateway name, so
/// two Gateways never share one.
pub fn binding_name(namespace: &str, name: &str) -> String {
    format!("{WAYPOINT_CLUSTER_ROLE}:{namespace}:{name}")
}

/// Everything the controller applies.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// One per waypoint, named after its Gateway.
    pub service_accounts: Vec<ServiceAccount>,
    /// One per waypoint, binding its service account to the waypoint role.
    pub bindings: Vec<ClusterRoleBinding>,
    /// One per waypoint, from the PodTemplate.
    pub deployments: Vec<Deployment>,
    /// The roots, in the CA's namespace and in each namespace with a waypoint.
    pub config_maps: Vec<ConfigMap>,
}

/// What [`desired`] needs.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The waypoint Gateways (valid ones), sorted.
    pub gateways: &'a [WaypointGateway],
    /// The waypoint pod template; `None`: no waypoint objects (the controller
    /// is off, or the template cannot be read: nothing is created or changed).
    pub template: Option<&'a PodTemplate>,
    /// The trust domain of the mesh, set in every waypoint.
    pub trust_domain: &'a str,
    /// The root ConfigMap's name and contents (PEM), or `None` to publish none.
    pub roots: Option<(&'a str, &'a str)>,
    /// The CA's namespace: its own root ConfigMap lives there.
    pub system_namespace: &'a str,
}

fn labels(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = [
        (MANAGED_BY_LABEL, MANAGED_BY),
        ("app.kubernetes.io/part-of", "ambit"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    labels.retain(|_, v| !v.is_empty());
    labels
}

/// The objects for `inputs`, or an error naming what in the template is wrong
/// (then nothing of the waypoints is applied; the roots are).
pub fn desired(inputs: Inputs<'_>) -> (Desired, Option<String>) {
    let mut out = Desired::default();
    let mut problem = None;
    if let Some((name, pem)) = inputs.roots {
        // The CA's namespace, then each namespace with a waypoint (its pods
        // mount the roots; a ConfigMap cannot be mounted across namespaces).
        let mut namespaces: BTreeMap<&str, Vec<OwnerReference>> = BTreeMap::new();
        namespaces.insert(inputs.system_namespace, Vec::new());
        if inputs.template.is_some() {
            for gw in inputs.gateways {
                let owners = namespaces.entry(gw.namespace.as_str()).or_default();
                if gw.namespace != inputs.system_namespace {
                    owners.push(gw.owner(false));
                }
            }
        }
        for (namespace, owners) in namespaces {
            out.config_maps.push(ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    labels: Some(labels(&[])),
                    owner_references: (!owners.is_empty()).then_some(owners),
                    ..ObjectMeta::default()
                },
                data: Some([(ROOT_CERT_KEY.to_owned(), pem.to_owned())].into()),
                ..ConfigMap::default()
            });
        }
    }
    let Some(template) = inputs.template else {
        return (out, problem);
    };
    let pod = match checked_template(template) {
        Ok(pod) => pod,
        Err(reason) => {
            problem = Some(reason);
            return (out, problem);
        }
    };
    for gw in inputs.gateways {
        let meta = |name: String, namespace: Option<&str>, owned: bool, extra: &[(&str, &str)]| {
            ObjectMeta {
                name: Some(name),
                namespace: namespace.map(str::to_owned),
                labels: Some(labels(extra)),
                owner_references: owned.then(|| vec![gw.owner(true)]),
                ..ObjectMeta::default()
            }
        };
        let gateway_label = [(GATEWAY_NAME_LABEL, gw.name.as_str())];
        out.service_accounts.push(ServiceAccount {
            metadata: meta(gw.name.clone(), Some(&gw.namespace), true, &gateway_label),
            ..ServiceAccount::default()
        });
        out.bindings.push(ClusterRoleBinding {
            metadata: meta(
                binding_name(&gw.namespace, &gw.name),
                None,
                false,
                &[
                    (GATEWAY_NAMESPACE_LABEL, gw.namespace.as_str()),
                    (GATEWAY_LABEL, gw.name.as_str()),
                ],
            ),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "ClusterRole".to_owned(),
                name: WAYPOINT_CLUSTER_ROLE.to_owned(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_owned(),
                name: gw.name.clone(),
                namespace: Some(gw.namespace.clone()),
                api_group: None,
            }]),
        });
        out.deployments
            .push(deployment(gw, &pod, inputs.trust_domain));
    }
    (out, problem)
}

/// The template's pod, checked: it must run a container named `waypoint`.
fn checked_template(template: &PodTemplate) -> Result<PodTemplateSpec, String> {
    let name = format!(
        "PodTemplate {}/{}",
        template.metadata.namespace.as_deref().unwrap_or(""),
        template.metadata.name.as_deref().unwrap_or("")
    );
    let pod = template
        .template
        .clone()
        .ok_or_else(|| format!("{name} has no template"))?;
    let has_waypoint = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == WAYPOINT_CONTAINER));
    if !has_waypoint {
        return Err(format!(
            "{name}: template.spec.containers has no container named {WAYPOINT_CONTAINER:?}"
        ));
    }
    Ok(pod)
}

/// `pod` made the waypoint of `gw`: its labels, service account, and the
/// Gateway and trust domain in the waypoint container's environment.
fn deployment(gw: &WaypointGateway, pod: &PodTemplateSpec, trust_domain: &str) -> Deployment {
    let mut pod = pod.clone();
    let pod_meta = pod.metadata.get_or_insert_with(ObjectMeta::default);
    let pod_labels = pod_meta.labels.get_or_insert_with(BTreeMap::new);
    pod_labels.insert(GATEWAY_NAME_LABEL.to_owned(), gw.name.clone());
    pod_labels.insert("app.kubernetes.io/part-of".to_owned(), "ambit".to_owned());
    if let Some(spec) = pod.spec.as_mut() {
        spec.service_account_name = Some(gw.name.clone());
        for container in spec
            .containers
            .iter_mut()
            .filter(|c| c.name == WAYPOINT_CONTAINER)
        {
            let env = container.env.get_or_insert_with(Vec::new);
            let set: BTreeSet<&str> = [GATEWAY_ENV, crate::settings::TRUST_DOMAIN_ENV].into();
            env.retain(|e| !set.contains(e.name.as_str()));
            env.push(EnvVar {
                name: GATEWAY_ENV.to_owned(),
                value: Some(gw.key()),
                value_from: None,
            });
            env.push(EnvVar {
                name: crate::settings::TRUST_DOMAIN_ENV.to_owned(),
                value: Some(trust_domain.to_owned()),
                value_from: None,
            });
        }
    }
    Deployment {
        metadata: ObjectMeta {
            name: Some(gw.name.clone()),
            namespace: Some(gw.namespace.clone()),
            labels: Some(labels(&[(GATEWAY_NAME_LABEL, gw.name.as_str())])),
            owner_references: Some(vec![gw.owner(true)]),
            ..ObjectMeta::default()
        },
        // No `replicas`: the API server's default (1) until someone scales
        // it (kubectl scale, an HorizontalPodAutoscaler), which this
        // controller then leaves alone.
        spec: DeploymentSpec {
            selector: LabelSelector {
                match_labels: Some([(GATEWAY_NAME_LABEL.to_owned(), gw.name.clone())].into()),
                match_expressions: None,
            },
            template: pod,
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

#[cfg(test)]
mod tests;
