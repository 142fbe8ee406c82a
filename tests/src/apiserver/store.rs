//! The fake API server's state: objects by resource type, a global
//! resourceVersion, the event history watches replay, and the live feed.

use std::collections::BTreeMap;

use serde_json::Value;
use tokio::sync::{broadcast, watch};

/// A resource type: `(group, version, plural)`; the group is empty for core.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType {
    /// API group (empty for core `v1`).
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural name, as in the URL.
    pub plural: String,
}

/// `ADDED`, `MODIFIED` or `DELETED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted (the object as it was).
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Type of the object.
    pub resource: ResourceType,
    /// Namespace of the object (empty for cluster-scoped).
    pub namespace: String,
    /// What happened.
    pub kind: EventType,
    /// The object after (or, for DELETED, before) the change.
    pub object: Value,
}

/// Everything the server holds.
#[derive(Debug)]
pub struct Store {
    /// The latest resourceVersion handed out.
    pub rv: u64,
    /// Watches from a resourceVersion below this get `410 Gone`.
    pub oldest_rv: u64,
    /// Objects by type, then (namespace, name).
    pub objects: BTreeMap<ResourceType, BTreeMap<(String, String), Value>>,
    /// Every change since `oldest_rv`.
    pub history: Vec<StoredEvent>,
    /// Live changes for open watches.
    pub live: broadcast::Sender<StoredEvent>,
    /// Bumped to end every open watch stream.
    pub drops: watch::Sender<u64>,
    /// Counters of list and watch requests, by plural.
    pub lists: BTreeMap<String, usize>,
    /// See `lists`.
    pub watches: BTreeMap<String, usize>,
    /// Requests (lists and watches) for metadata only, by plural.
    pub metadata_only: BTreeMap<String, usize>,
    /// uids handed out so far.
    pub uids: u64,
    /// While set, watch requests fail with 503 (the client backs off).
    pub paused: bool,
    /// `METHOD path` of every request that is not a GET.
    pub writes: Vec<String>,
    /// TokenReviews answered.
    pub reviews: usize,
    /// Where TokenReviews are answered from.
    pub tokens_file: Option<std::path::PathBuf>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            rv: 1,
            oldest_rv: 0,
            objects: BTreeMap::new(),
            history: Vec::new(),
            live: broadcast::Sender::new(65536),
            drops: watch::Sender::new(0),
            lists: BTreeMap::new(),
            watches: BTreeMap::new(),
            metadata_only: BTreeMap::new(),
            uids: 0,
            paused: false,
            writes: Vec::new(),
            reviews: 0,
            tokens_file: None,
        }
    }
}

impl Store {
    /// Records a change: bumps the resourceVersion, stamps it on the object,
    /// keeps it in the history and sends it to live watches.
    pub fn record(
        &mut self,
        resource: &ResourceType,
        key: (String, String),
        kind: EventType,
        mut object: Value,
    ) -> u64 {
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let objects = self.objects.entry(resource.clone()).or_default();
        if kind == EventType::Deleted {
            objects.remove(&key);
        } else {
            objects.insert(key.clone(), object.clone());
        }
        let event = StoredEvent {
            rv,
            resource: resource.clone(),
            namespace: key.0,
            kind,
            object,
        };
        self.history.push(event.clone());
        // No receiver is fine: nobody watches.
        let _ = self.live.send(event);
        rv
    }

    /// A fresh uid in UUID form.
    pub fn next_uid(&mut self) -> String {
        self.uids += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uids)
    }
}
