//! The CA process's controller: it publishes the mesh's trust roots as a
//! ConfigMap, and deploys a waypoint for each Gateway of class
//! `istio-waypoint` (a ServiceAccount, a ClusterRoleBinding to the
//! `ambit-waypoint` role and a Deployment from a PodTemplate), as istiod does
//! for Istio's waypoints.
//!
//! It watches Gateways and applies what [`objects::desired`] computes with
//! server-side apply, only what changed since its last successful apply, and
//! everything again every resync period (so a deleted Deployment comes back).
//! Namespaced objects are owned by their Gateway, so Kubernetes deletes them
//! with it; the ClusterRoleBinding cannot be (a cluster-scoped object has no
//! namespaced owner), so the controller deletes it, with the rest, when its
//! Gateway goes or changes class, also for Gateways deleted while it was not
//! running (it finds them by label at start). Failures are logged with the
//! object and retried with backoff; a template that cannot be read or is wrong
//! changes nothing that runs. Several CA replicas may run it: every write is
//! an idempotent apply or a delete.

pub mod objects;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{Hash, Hasher},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, PodTemplate, ServiceAccount},
    rbac::v1::ClusterRoleBinding,
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::config::{ErrorChain, crd::gateway::Gateway};
use objects::{Desired, Inputs, WaypointGateway};

/// The field manager of every apply.
const FIELD_MANAGER: &str = objects::MANAGED_BY;
/// Everything is applied again this often, whatever changed.
pub const RESYNC_DEFAULT: Duration = Duration::from_secs(300);
/// First retry after a failed pass; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What the controller does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllerConfig {
    /// The CA's namespace: the root ConfigMap and the PodTemplate live there.
    pub namespace: String,
    /// Publish the roots as this ConfigMap (key `root-cert.pem`).
    pub root_config_map: Option<String>,
    /// Deploy waypoints from this PodTemplate.
    pub waypoint_template: Option<String>,
    /// How often everything is applied again.
    pub resync: Duration,
}

impl ControllerConfig {
    /// Whether it has anything to do.
    pub fn enabled(&self) -> bool {
        self.root_config_map.is_some() || self.waypoint_template.is_some()
    }
}

/// What the controller knows of the mesh: set by the CA.
#[derive(Debug, Clone)]
pub struct MeshFacts {
    /// The trust domain, set in every waypoint.
    pub trust_domain: String,
    /// The roots (PEM) the CA hands out, published in the ConfigMap.
    pub roots_pem: String,
}

/// Runs until the task is dropped.
pub async fn run(client: Client, config: ControllerConfig, facts: MeshFacts) {
    let mut controller = Controller::new(client, config, facts);
    controller.run().await;
}

struct Controller {
    client: Client,
    config: ControllerConfig,
    facts: MeshFacts,
    /// Gateways of class `istio-waypoint`, by `<ns>/<name>`, from the watch.
    gateways: BTreeMap<String, Result<WaypointGateway, String>>,
    /// A list of Gateways in progress.
    listing: Option<BTreeMap<String, Result<WaypointGateway, String>>>,
    /// Hash of what was last applied, by object.
    applied: HashMap<String, u64>,
    /// Gateways with objects made for them (to delete when they go).
    managed: BTreeSet<(String, String)>,
    /// Namespaces with a root ConfigMap published (other than the CA's).
    root_namespaces: BTreeSet<String>,
    /// The last problem logged, not repeated until it changes.
    last_problem: Option<String>,
}

impl Controller {
    fn new(client: Client, config: ControllerConfig, facts: MeshFacts) -> Self {
        Self {
            client,
            config,
            facts,
            gateways: BTreeMap::new(),
            listing: None,
            applied: HashMap::new(),
            managed: BTreeSet::new(),
            root_namespaces: BTreeSet::new(),
            last_problem: None,
        }
    }

    async fn run(&mut self) {
        tracing::info!(config = ?self.config, "controller starting");
        let waypoints = self.config.waypoint_template.is_some();
        let mut gateways = if waypoints {
            watcher(
                Api::<Gateway>::all(self.client.clone()),
                watcher::Config::default(),
            )
            .default_backoff()
            .boxed()
        } else {
            futures::stream::pending().boxed()
        };
        // Until the first list of Gateways, a pass would take "none" for the
        // truth and delete every waypoint.
        let mut synced = !waypoints;
        let mut found_orphans = !waypoints;
        let mut dirty = true;
        let mut backoff = RETRY_MIN;
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut resync = tokio::time::interval(self.config.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        loop {
            if dirty && synced && retry_at.is_none() {
                if !found_orphans {
                    found_orphans = self.find_managed().await;
                }
                dirty = false;
                if self.pass().await && found_orphans {
                    backoff = RETRY_MIN;
                } else {
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = gateways.next() => match event {
                    Some(Ok(event)) => {
                        if self.on_event(event) {
                            synced = true;
                            dirty = true;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(error = %ErrorChain(&error), "watching Gateways failed; retrying");
                    }
                    None => return,
                },
                _ = resync.tick() => {
                    self.applied.clear();
                    dirty = true;
                }
                () = retry => {
                    retry_at = None;
                    dirty = true;
                }
            }
        }
    }

    /// Takes in one watch event; true when the set of Gateways is complete and
    /// may have changed.
    fn on_event(&mut self, event: watcher::Event<Gateway>) -> bool {
        let entry = |gw: &Gateway| {
            let key = format!(
                "{}/{}",
                gw.metadata.namespace.as_deref().unwrap_or(""),
                gw.metadata.name.as_deref().unwrap_or("")
            );
            (key, WaypointGateway::from_gateway(gw))
        };
        match event {
            watcher::Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(gw) => {
                if let (key, Some(waypoint)) = entry(&gw) {
                    self.listing
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key, waypoint);
                }
                false
            }
            watcher::Event::InitDone => {
                self.gateways = self.listing.take().unwrap_or_default();
                true
            }
            watcher::Event::Apply(gw) => {
                match entry(&gw) {
                    (key, Some(waypoint)) => self.gateways.insert(key, waypoint),
                    // Class changed away from istio-waypoint, or being deleted.
                    (key, None) => self.gateways.remove(&key),
                };
                true
            }
            watcher::Event::Delete(gw) => {
                self.gateways.remove(&entry(&gw).0);
                true
            }
        }
    }

    /// Finds the waypoints made before this process started (by their
    /// ClusterRoleBindings' labels), so those whose Gateway is gone get
    /// deleted. False when the list failed.
    async fn find_managed(&mut self) -> bool {
        let api = Api::<ClusterRoleBinding>::all(self.client.clone());
        let params = ListParams::default().labels(&format!(
            "{}={}",
            objects::MANAGED_BY_LABEL,
            objects::MANAGED_BY
        ));
        match api.list(&params).await {
            Ok(list) => {
                for binding in list.items {
                    let labels = binding.metadata.labels.unwrap_or_default();
                    if let (Some(ns), Some(name)) = (
                        labels.get(objects::GATEWAY_NAMESPACE_LABEL),
                        labels.get(objects::GATEWAY_LABEL),
                    ) {
                        self.managed.insert((ns.clone(), name.clone()));
                    }
                }
                true
            }
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "cannot list the waypoints' ClusterRoleBindings; retrying");
                false
            }
        }
    }

    /// Reads the PodTemplate: `Ok(None)` when waypoints are off.
    async fn template(&self) -> Result<Option<PodTemplate>, String> {
        let Some(name) = &self.config.waypoint_template else {
            return Ok(None);
        };
        let api = Api::<PodTemplate>::namespaced(self.client.clone(), &self.config.namespace);
        match api.get_opt(name).await {
            Ok(Some(template)) => Ok(Some(template)),
            Ok(None) => Err(format!(
                "the waypoint template PodTemplate {}/{name} does not exist (deploy/waypoint-template.yaml)",
                self.config.namespace
            )),
            Err(error) => Err(format!(
                "cannot read the waypoint template PodTemplate {}/{name}: {}",
                self.config.namespace,
                ErrorChain(&error)
            )),
        }
    }

    /// One reconciliation; true when everything was applied.
    async fn pass(&mut self) -> bool {
        let mut ok = true;
        let mut problems = Vec::new();
        let valid: Vec<WaypointGateway> = self
            .gateways
            .values()
            .filter_map(|g| match g {
                Ok(g) => Some(g.clone()),
                Err(reason) => {
                    problems.push(reason.clone());
                    None
                }
            })
            .collect();
        let template = match self.template().await {
            Ok(t) => t,
            Err(reason) => {
                problems.push(reason);
                ok = false;
                None
            }
        };
        let template_ok = template.is_some();
        let roots = self
            .config
            .root_config_map
            .as_deref()
            .map(|name| (name, self.facts.roots_pem.as_str()));
        let (desired, problem) = objects::desired(Inputs {
            gateways: &valid,
            template: template.as_ref(),
            trust_domain: &self.facts.trust_domain,
            roots,
            system_namespace: &self.config.namespace,
        });
        let template_ok = template_ok && problem.is_none();
        if let Some(problem) = problem {
            problems.push(problem);
            ok = false;
        }
        let problems = problems.join("; ");
        if problems.is_empty() {
            self.last_problem = None;
        } else if self.last_problem.as_deref() != Some(&problems) {
            // Each reason names the object; logged once until it changes.
            tracing::error!(problems, "cannot deploy every waypoint");
            self.last_problem = Some(problems);
        }
        ok &= self.apply_all(&desired).await;
        ok &= self.delete_gone(&valid, &desired, template_ok).await;
        ok
    }

    async fn apply_all(&mut self, desired: &Desired) -> bool {
        let mut ok = true;
        let client = self.client.clone();
        let ns = |meta: &kube::core::ObjectMeta| meta.namespace.clone().unwrap_or_default();
        for cm in &desired.config_maps {
            let api = Api::namespaced(client.clone(), &ns(&cm.metadata));
            ok &= self.apply(api, cm).await;
        }
        for sa in &desired.service_accounts {
            let api = Api::namespaced(client.clone(), &ns(&sa.metadata));
            ok &= self.apply(api, sa).await;
        }
        for binding in &desired.bindings {
            ok &= self.apply(Api::all(client.clone()), binding).await;
        }
        for deployment in &desired.deployments {
            let api = Api::namespaced(client.clone(), &ns(&deployment.metadata));
            ok &= self.apply(api, deployment).await;
        }
        for sa in &desired.service_accounts {
            if let (Some(ns), Some(name)) = (&sa.metadata.namespace, &sa.metadata.name) {
                self.managed.insert((ns.clone(), name.clone()));
            }
        }
        for cm in &desired.config_maps {
            if let Some(ns) = &cm.metadata.namespace
                && *ns != self.config.namespace
            {
                self.root_namespaces.insert(ns.clone());
            }
        }
        ok
    }

    /// Applies `object` unless the same was applied last time.
    async fn apply<K>(&mut self, api: Api<K>, object: &K) -> bool
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let label = object_label::<K>(object.meta().namespace.as_deref().unwrap_or(""), &name);
        let hash = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            serde_json::to_string(object)
                .unwrap_or_default()
                .hash(&mut h);
            h.finish()
        };
        if self.applied.get(&label) == Some(&hash) {
            return true;
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&name, &params, &Patch::Apply(object)).await {
            Ok(_) => {
                tracing::info!(object = %label, "applied");
                self.applied.insert(label, hash);
                true
            }
            Err(error) => {
                tracing::warn!(object = %label, error = %ErrorChain(&error), "apply failed; retrying");
                self.applied.remove(&label);
                false
            }
        }
    }

    /// Deletes the objects of waypoints whose Gateway is gone (or no longer a
    /// waypoint), and, with a good template in hand (without one, the
    /// namespaces with waypoints are not known), root ConfigMaps of
    /// namespaces without a waypoint.
    async fn delete_gone(
        &mut self,
        valid: &[WaypointGateway],
        desired: &Desired,
        template_ok: bool,
    ) -> bool {
        let wanted: BTreeSet<(String, String)> = valid
            .iter()
            .map(|g| (g.namespace.clone(), g.name.clone()))
            .collect();
        let gone: Vec<(String, String)> = self.managed.difference(&wanted).cloned().collect();
        let mut ok = true;
        for (ns, name) in gone {
            let mut done = true;
            done &= self
                .delete(
                    Api::<Deployment>::namespaced(self.client.clone(), &ns),
                    &ns,
                    &name,
                )
                .await;
            done &= self
                .delete(
                    Api::<ServiceAccount>::namespaced(self.client.clone(), &ns),
                    &ns,
                    &name,
                )
                .await;
            let binding = objects::binding_name(&ns, &name);
            done &= self
                .delete(
                    Api::<ClusterRoleBinding>::all(self.client.clone()),
                    "",
                    &binding,
                )
                .await;
            if done {
                tracing::info!(gateway = %format!("{ns}/{name}"), "waypoint removed: its Gateway is gone or no longer of class istio-waypoint");
                self.managed.remove(&(ns, name));
            }
            ok &= done;
        }
        if let Some(cm_name) = self.config.root_config_map.clone()
            && template_ok
        {
            let keep: BTreeSet<String> = desired
                .config_maps
                .iter()
                .filter_map(|cm| cm.metadata.namespace.clone())
                .collect();
            let stale: Vec<String> = self.root_namespaces.difference(&keep).cloned().collect();
            for ns in stale {
                if self
                    .delete(
                        Api::<ConfigMap>::namespaced(self.client.clone(), &ns),
                        &ns,
                        &cm_name,
                    )
                    .await
                {
                    self.root_namespaces.remove(&ns);
                } else {
                    ok = false;
                }
            }
        }
        ok
    }

    /// Deletes one object; gone already is success.
    async fn delete<K>(&mut self, api: Api<K>, namespace: &str, name: &str) -> bool
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug,
    {
        let label = object_label::<K>(namespace, name);
        self.applied.remove(&label);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(object = %label, "deleted");
                true
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => true,
            Err(error) => {
                tracing::warn!(object = %label, error = %ErrorChain(&error), "delete failed; retrying");
                false
            }
        }
    }
}

fn object_label<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("{}/{name}", K::kind(&()))
    } else {
        format!("{}/{namespace}/{name}", K::kind(&()))
    }
}
