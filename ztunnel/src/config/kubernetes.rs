//! The Kubernetes source: one kube-rs watcher per kind, with backoff and a
//! relist when a watch cannot resume (`410 Gone`), feeding the registry in
//! batches. Pods are reduced at conversion: the registry keeps the full pod only
//! for its own node (a field selector cannot say "every other node"). Nodes are
//! watched metadata-only (their status is large and changes often; only the
//! zone label is used).

use std::{collections::HashSet, fmt::Debug, sync::Arc};

use futures::{StreamExt, pin_mut};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use super::{ErrorChain, Resource, crd};
use crate::{
    registry::{Change, Kind, Object, ObjectKey, Registry},
    settings::KUBE_BATCH_MAX,
};

/// The Kubernetes source cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No usable in-cluster configuration or kubeconfig.
    #[error("cannot configure a Kubernetes client")]
    Client(#[source] kube::Error),
}

/// Events from one watcher, tagged with its slot.
enum Update {
    Event(usize, Box<watcher::Event<Resource>>),
    Error(usize, watcher::Error),
}

/// What the source knows about one watched kind.
#[derive(Debug)]
struct Slot {
    /// The registry kind of its objects.
    kind: Kind,
    /// Keys currently upserted in the registry by this watcher.
    applied: HashSet<ObjectKey>,
    /// A list in progress (`Init` .. `InitDone`): each object's key and its
    /// change, converted as it arrives (`None`: invalid), so a large list never
    /// holds the full Kubernetes objects.
    listing: Option<Vec<(ObjectKey, Option<Change>)>>,
    /// A first list has completed.
    synced: bool,
}

/// Watches the Kubernetes API and keeps a registry up to date.
pub struct KubeSource {
    client: Client,
    synced: watch::Sender<bool>,
}

impl Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("synced", &*self.synced.borrow())
            .finish_non_exhaustive()
    }
}

/// The registry kind of each watcher, by slot.
const SLOTS: [Kind; 10] = [
    Kind::Namespace,
    Kind::Workload,
    Kind::Service,
    Kind::EndpointSet,
    Kind::ServiceAccount,
    Kind::PeerAuthentication,
    Kind::RequestAuthentication,
    Kind::AuthorizationPolicy,
    Kind::Waypoint,
    Kind::Node,
];

impl KubeSource {
    /// A source using `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            synced: watch::Sender::new(false),
        }
    }

    /// A source using the in-cluster configuration or the local kubeconfig.
    pub async fn from_environment() -> Result<Self, Error> {
        Ok(Self::new(
            Client::try_default().await.map_err(Error::Client)?,
        ))
    }

    /// Becomes `true` once every kind has been listed once.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// Watches until the task is dropped. Errors of a watcher are logged and
    /// retried with backoff; invalid objects are logged and skipped, keeping
    /// their previous version, except invalid security policies, which are
    /// enforced fail-closed.
    pub async fn run(self, registry: Arc<Registry>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let mut watchers = JoinSet::new();
        let c = &self.client;
        watchers.spawn(watch::<Namespace>(
            c.clone(),
            0,
            Resource::Namespace,
            tx.clone(),
        ));
        watchers.spawn(watch::<Pod>(c.clone(), 1, Resource::Pod, tx.clone()));
        watchers.spawn(watch::<Service>(
            c.clone(),
            2,
            Resource::Service,
            tx.clone(),
        ));
        watchers.spawn(watch::<EndpointSlice>(
            c.clone(),
            3,
            Resource::EndpointSlice,
            tx.clone(),
        ));
        watchers.spawn(watch::<ServiceAccount>(
            c.clone(),
            4,
            Resource::ServiceAccount,
            tx.clone(),
        ));
        watchers.spawn(watch::<crd::PeerAuthentication>(
            c.clone(),
            5,
            Resource::PeerAuthentication,
            tx.clone(),
        ));
        watchers.spawn(watch::<crd::RequestAuthentication>(
            c.clone(),
            6,
            Resource::RequestAuthentication,
            tx.clone(),
        ));
        watchers.spawn(watch::<crd::AuthorizationPolicy>(
            c.clone(),
            7,
            Resource::AuthorizationPolicy,
            tx.clone(),
        ));
        watchers.spawn(watch::<crd::Gateway>(
            c.clone(),
            8,
            Resource::Gateway,
            tx.clone(),
        ));
        // `PartialObjectMeta` makes kube ask for metadata only.
        watchers.spawn(watch::<PartialObjectMeta<Node>>(
            c.clone(),
            9,
            Resource::Node,
            tx,
        ));
        let mut slots: Vec<Slot> = SLOTS
            .iter()
            .map(|&kind| Slot {
                kind,
                applied: HashSet::new(),
                listing: None,
                synced: false,
            })
            .collect();
        while let Some(first) = rx.recv().await {
            let mut changes = Vec::new();
            handle(first, &mut slots, &mut changes);
            // Take whatever else is ready: one snapshot per burst, not per event.
            while changes.len() < KUBE_BATCH_MAX {
                let Ok(next) = rx.try_recv() else { break };
                handle(next, &mut slots, &mut changes);
            }
            drop_unchanged_nodes(&registry, &mut changes);
            if !changes.is_empty() {
                let count = changes.len();
                let generation = registry.apply(changes);
                tracing::debug!(count, generation, "applied kubernetes changes");
            }
            if !*self.synced.borrow() && slots.iter().all(|s| s.synced) {
                tracing::info!("kubernetes source synced");
                self.synced.send_replace(true);
            }
        }
    }
}

/// Drops upserts of Nodes the registry already holds as they are: the kubelet
/// updates its Node's status every few minutes and each update is an event,
/// but the name and zone the registry keeps rarely change. No new snapshot for
/// those. A node that an earlier change of the batch deletes or changes is
/// kept: the snapshot no longer says what it will be.
fn drop_unchanged_nodes(registry: &Registry, changes: &mut Vec<Change>) {
    if !(changes.iter()).any(|c| matches!(c, Change::Upsert(Object::Node(_)))) {
        return;
    }
    let current = registry.load();
    let mut touched: HashSet<Arc<str>> = HashSet::new();
    changes.retain(|c| match c {
        Change::Upsert(Object::Node(node)) => {
            let unchanged = !touched.contains(node.name.as_str())
                && current.node_object(&node.name) == Some(node);
            if !unchanged {
                touched.insert(node.name.as_str().into());
            }
            !unchanged
        }
        Change::Delete(Kind::Node, key) => {
            touched.insert(Arc::clone(&key.name));
            true
        }
        _ => true,
    });
}

/// Runs the watcher of kind `K` and forwards its events.
async fn watch<K>(client: Client, slot: usize, wrap: fn(K) -> Resource, tx: mpsc::Sender<Update>)
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let stream = watcher(Api::<K>::all(client), watcher::Config::default()).default_backoff();
    pin_mut!(stream);
    while let Some(item) = stream.next().await {
        let update = match item {
            Ok(event) => Update::Event(slot, Box::new(map_event(event, wrap))),
            Err(error) => Update::Error(slot, error),
        };
        if tx.send(update).await.is_err() {
            return;
        }
    }
}

fn map_event<K>(event: watcher::Event<K>, wrap: fn(K) -> Resource) -> watcher::Event<Resource> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(wrap(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(wrap(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(wrap(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Turns one watcher update into registry changes.
fn handle(update: Update, slots: &mut [Slot], changes: &mut Vec<Change>) {
    let (index, event) = match update {
        Update::Event(index, event) => (index, event),
        Update::Error(index, error) => {
            tracing::warn!(watcher = index, error = %ErrorChain(&error), "kubernetes watch failed; retrying");
            return;
        }
    };
    let slot = &mut slots[index];
    match *event {
        watcher::Event::Apply(resource) => {
            if let Some(change) = convert(&resource) {
                record(slot, &change);
                changes.push(change);
            }
        }
        watcher::Event::Delete(resource) => {
            let key = resource.key();
            slot.applied.remove(&key);
            changes.push(Change::Delete(resource.kind(), key));
        }
        watcher::Event::Init => slot.listing = Some(Vec::new()),
        watcher::Event::InitApply(resource) => {
            let entry = (resource.key(), convert(&resource));
            slot.listing.get_or_insert_with(Vec::new).push(entry);
        }
        watcher::Event::InitDone => relisted(slot, changes),
    }
}

/// A (re)list is complete: apply it whole and delete what it no longer has.
fn relisted(slot: &mut Slot, changes: &mut Vec<Change>) {
    let listed = slot.listing.take().unwrap_or_default();
    let mut present = HashSet::with_capacity(listed.len());
    for (key, change) in listed {
        match change {
            Some(change) => {
                if matches!(change, Change::Upsert(_)) {
                    present.insert(key);
                }
                changes.push(change);
            }
            // Invalid now: its last good version (if any) stays.
            None if slot.applied.contains(&key) => {
                present.insert(key);
            }
            None => {}
        }
    }
    changes.extend(
        (slot.applied.iter())
            .filter(|k| !present.contains(*k))
            .map(|k| Change::Delete(slot.kind, k.clone())),
    );
    slot.applied = present;
    slot.synced = true;
}

fn record(slot: &mut Slot, change: &Change) {
    match change {
        Change::Upsert(object) => {
            slot.applied.insert(object.key());
        }
        Change::Delete(_, key) => {
            slot.applied.remove(key);
        }
    }
}

/// The change for `resource`, or `None` (logged) when it is invalid. An
/// invalid security policy is not skipped: it is applied in its fail-closed
/// form (skipping it would drop an ALLOW policy's restriction or a DENY), and
/// logged with what is wrong.
fn convert(resource: &Resource) -> Option<Change> {
    match resource.to_change() {
        Ok(change) => {
            if let Change::Upsert(object) = &change
                && !object.problems().is_empty()
            {
                tracing::error!(kind = %resource.kind(), key = %resource.key(), problems = object.problems().join("; "), "invalid policy enforced fail-closed");
            }
            Some(change)
        }
        Err(error) => {
            super::rejected_updates().inc();
            tracing::error!(kind = %resource.kind(), key = %resource.key(), error = %ErrorChain(&error), "invalid object ignored; its previous version stays");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Name, Node, Options};

    fn node(name: &str, zone: &str) -> Change {
        Change::Upsert(Object::Node(Node {
            name: name.into(),
            zone: Some(Name::new(zone)),
        }))
    }

    fn zones(changes: &[Change]) -> Vec<String> {
        (changes.iter())
            .map(|c| match c {
                Change::Upsert(Object::Node(n)) => format!("{}={:?}", n.name, n.zone),
                Change::Delete(kind, key) => format!("delete {kind:?} {key}"),
                Change::Upsert(other) => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn only_node_upserts_that_change_nothing_in_the_batch_are_dropped() {
        let registry = Registry::new(Options::default());
        registry.apply([node("a", "z1"), node("b", "z1"), node("c", "z1")]);
        let mut changes = vec![
            node("a", "z1"), // unchanged: dropped
            node("b", "z2"), // changed
            node("b", "z1"), // back to what the snapshot has: must stay
            Change::Delete(Kind::Node, ObjectKey::new("", "c")),
            node("c", "z1"), // re-created after the delete: must stay
            node("d", "z1"), // new
        ];
        drop_unchanged_nodes(&registry, &mut changes);
        assert_eq!(
            zones(&changes),
            [
                r#"b=Some("z2")"#,
                r#"b=Some("z1")"#,
                "delete Node c",
                r#"c=Some("z1")"#,
                r#"d=Some("z1")"#,
            ]
        );
        registry.apply(changes);
        let snap = registry.snapshot();
        for name in ["a", "b", "c", "d"] {
            assert_eq!(
                snap.node_zone(name).map(Name::as_str),
                Some("z1"),
                "node {name}"
            );
        }
    }
}
