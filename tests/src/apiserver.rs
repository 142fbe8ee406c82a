//! A fake Kubernetes API server for tests: real HTTP/1.1 and JSON, lists with a
//! resourceVersion, `?watch=true` chunked streams of ADDED/MODIFIED/DELETED and
//! BOOKMARK events, `410 Gone` (an ERROR event with a `Status` of code 410) for
//! watches that resume from a resourceVersion older than the kept history, and
//! hooks to drop every watch stream mid-way. Metadata-only requests (kube's
//! `PartialObjectMeta`) get `PartialObjectMetadata` objects. kube-rs runs
//! against it unmodified.
//!
//! It serves list and watch (equality label selectors, no field selectors,
//! no paging: a list returns every item), GET of one object, create (POST),
//! server-side apply (PATCH, which replaces the whole object: one field
//! manager), DELETE (no garbage collection of owned objects) and
//! `TokenReview`s, answered from a tokens file in `ztunnel ca --token-file`'s
//! format (see [`ApiServer::answer_token_reviews_from`]). Tests change objects
//! through the typed helpers ([`ApiServer::create`], [`ApiServer::update`],
//! [`ApiServer::delete`]) and read them with [`ApiServer::get`].

mod http;
mod store;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use kube::Resource;
use serde::Serialize;
use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};

use store::Store;
pub use store::{EventType, ResourceType};

/// What a helper refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Listening failed.
    #[error("cannot listen on 127.0.0.1")]
    Listen(#[source] std::io::Error),
    /// The object does not serialize to a JSON object with a name.
    #[error("the object has no metadata.name")]
    NoName,
    /// Serialization failed.
    #[error("the object does not serialize")]
    Serialize(#[source] serde_json::Error),
    /// `create` of an object that exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// `update` or `delete` of an object that does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The kube client cannot be configured.
    #[error("cannot build a kube client")]
    Client(#[source] kube::Error),
}

/// State shared by the server tasks and the test's handle.
#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    bookmark_interval: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panicking test thread cannot leave the store half-changed: every
        // change is made in one call under the lock.
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running fake API server on 127.0.0.1; stops when dropped.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// Starts a server on an ephemeral port of 127.0.0.1 (inside a tokio
    /// runtime), sending bookmarks every second on watches that ask for them.
    pub async fn start() -> Result<Self, Error> {
        Self::with_bookmark_interval(Duration::from_secs(1)).await
    }

    /// Like [`start`](Self::start), with another bookmark interval.
    pub async fn with_bookmark_interval(bookmark_interval: Duration) -> Result<Self, Error> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::Listen)?;
        Self::serve_on(listener, bookmark_interval)
    }

    /// Serves on `listener`, bound by the caller (for example inside a
    /// testbed node's network namespace, for a ztunnel process to reach).
    pub fn start_on(listener: std::net::TcpListener) -> Result<Self, Error> {
        listener.set_nonblocking(true).map_err(Error::Listen)?;
        let listener = TcpListener::from_std(listener).map_err(Error::Listen)?;
        Self::serve_on(listener, Duration::from_secs(1))
    }

    /// A server inside node `node`'s network namespace, on its fabric
    /// address (where every node's ztunnel and the mesh CA reach it), and
    /// the path of a kubeconfig for it written in the testbed's workdir.
    pub fn start_in_node(
        bed: &crate::Testbed,
        node: &str,
    ) -> Result<(Self, std::path::PathBuf), Error> {
        let address = bed.node(node).ipv4();
        let listener = ztunnel::capture::in_netns(&bed.node(node).netns_path(), move || {
            std::net::TcpListener::bind((address, 0))
        })
        .map_err(|e| Error::Listen(std::io::Error::other(e)))?
        .map_err(Error::Listen)?;
        let server = Self::start_on(listener)?;
        server.answer_token_reviews_from(crate::mesh::MeshCa::tokens_path(bed));
        let kubeconfig = bed.workdir().join("kubeconfig");
        std::fs::write(&kubeconfig, server.kubeconfig()).map_err(Error::Listen)?;
        Ok((server, kubeconfig))
    }

    fn serve_on(listener: TcpListener, bookmark_interval: Duration) -> Result<Self, Error> {
        let addr = listener.local_addr().map_err(Error::Listen)?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            bookmark_interval,
        });
        let task = tokio::spawn(serve(listener, Arc::clone(&shared)));
        Ok(Self { addr, shared, task })
    }

    /// `http://<address>:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file's text for this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\n\
             current-context: fake\n",
            self.url()
        )
    }

    /// A kube client for this server (plain HTTP, no credentials).
    pub fn client(&self) -> Result<kube::Client, Error> {
        let uri = self.url().parse().expect("a host:port URL is a valid URI");
        let config = kube::Config::new(uri);
        kube::Client::try_from(config).map_err(Error::Client)
    }

    /// Creates `object`; a missing `metadata.uid` gets one. Returns the new
    /// resourceVersion.
    pub fn create<K: Resource<DynamicType = ()> + Serialize>(
        &self,
        object: &K,
    ) -> Result<u64, Error> {
        self.write(object, Some(false))
    }

    /// Replaces the existing `object` (keeping its uid when the new one has none).
    pub fn update<K: Resource<DynamicType = ()> + Serialize>(
        &self,
        object: &K,
    ) -> Result<u64, Error> {
        self.write(object, Some(true))
    }

    /// Creates or replaces `object`.
    pub fn apply<K: Resource<DynamicType = ()> + Serialize>(
        &self,
        object: &K,
    ) -> Result<u64, Error> {
        self.write(object, None)
    }

    /// Deletes object `name` of kind `K` in `namespace` (`None` for
    /// cluster-scoped kinds).
    pub fn delete<K: Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<u64, Error> {
        let resource = resource_type::<K>();
        let key = (namespace.unwrap_or("").to_owned(), name.to_owned());
        let mut store = self.shared.lock();
        let old = store
            .objects
            .get(&resource)
            .and_then(|o| o.get(&key))
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("{}/{}/{}", resource.plural, key.0, key.1)))?;
        Ok(store.record(&resource, key, EventType::Deleted, old))
    }

    /// Answers TokenReviews from `path`: lines `<token> <holder>`, a holder
    /// being a node name (the token is then the ztunnel DaemonSet's, bound to
    /// a pod on that node) or `<namespace>/<service account>`. Read at each
    /// review; other tokens are not authenticated.
    pub fn answer_token_reviews_from(&self, path: std::path::PathBuf) {
        self.shared.lock().tokens_file = Some(path);
    }

    /// The object `name` of kind `K` in `namespace` (`None` for cluster-scoped
    /// kinds), as stored.
    pub fn get<K: Resource<DynamicType = ()> + serde::de::DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        let key = (namespace.unwrap_or("").to_owned(), name.to_owned());
        let store = self.shared.lock();
        let value = store.objects.get(&resource_type::<K>())?.get(&key)?.clone();
        serde_json::from_value(value).ok()
    }

    /// The names (`namespace/name`, or `name` for cluster-scoped kinds) of
    /// every object of kind `K`.
    pub fn names<K: Resource<DynamicType = ()>>(&self) -> Vec<String> {
        let store = self.shared.lock();
        store
            .objects
            .get(&resource_type::<K>())
            .map(|objects| {
                objects
                    .keys()
                    .map(|(ns, name)| {
                        if ns.is_empty() {
                            name.clone()
                        } else {
                            format!("{ns}/{name}")
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `METHOD path` of every request other than a GET, in order.
    pub fn writes(&self) -> Vec<String> {
        self.shared.lock().writes.clone()
    }

    /// How many TokenReviews were answered.
    pub fn token_reviews(&self) -> usize {
        self.shared.lock().reviews
    }

    /// Forgets the history: every watch resuming from a resourceVersion older
    /// than the current one gets `410 Gone`, so clients must relist.
    pub fn expire_history(&self) {
        let mut store = self.shared.lock();
        store.oldest_rv = store.rv + 1;
        store.history.clear();
    }

    /// Cuts every open watch stream mid-way (the connection fails).
    pub fn drop_watches(&self) {
        self.shared.lock().drops.send_modify(|n| *n += 1);
    }

    /// While paused, watch requests fail with `503 Service Unavailable` (lists
    /// still work), so a test can change objects behind a client's back.
    pub fn pause_watches(&self, paused: bool) {
        self.shared.lock().paused = paused;
    }

    /// How many list requests were served for `plural`.
    pub fn list_count(&self, plural: &str) -> usize {
        self.shared.lock().lists.get(plural).copied().unwrap_or(0)
    }

    /// How many watch requests were served for `plural`.
    pub fn watch_count(&self, plural: &str) -> usize {
        self.shared.lock().watches.get(plural).copied().unwrap_or(0)
    }

    /// How many list and watch requests for `plural` asked for metadata only
    /// (`PartialObjectMetadata`, which the fake then serves).
    pub fn metadata_only_count(&self, plural: &str) -> usize {
        self.shared
            .lock()
            .metadata_only
            .get(plural)
            .copied()
            .unwrap_or(0)
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    fn write<K: Resource<DynamicType = ()> + Serialize>(
        &self,
        object: &K,
        exists: Option<bool>,
    ) -> Result<u64, Error> {
        let resource = resource_type::<K>();
        let mut value = serde_json::to_value(object).map_err(Error::Serialize)?;
        let meta = value
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or(Error::NoName)?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .ok_or(Error::NoName)?
            .to_owned();
        let namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let key = (namespace, name);
        let mut store = self.shared.lock();
        let old = store
            .objects
            .get(&resource)
            .and_then(|o| o.get(&key))
            .cloned();
        let label = || format!("{}/{}/{}", resource.plural, key.0, key.1);
        match (exists, &old) {
            (Some(false), Some(_)) => return Err(Error::AlreadyExists(label())),
            (Some(true), None) => return Err(Error::NotFound(label())),
            _ => {}
        }
        let meta = value
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or(Error::NoName)?;
        if !meta.contains_key("uid") {
            let uid = match old.as_ref().and_then(|o| o.pointer("/metadata/uid")) {
                Some(uid) => uid.clone(),
                None => Value::String(store.next_uid()),
            };
            let meta = value
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
                .ok_or(Error::NoName)?;
            meta.insert("uid".into(), uid);
        }
        let kind = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        Ok(store.record(&resource, key, kind, value))
    }
}

fn resource_type<K: Resource<DynamicType = ()>>() -> ResourceType {
    ResourceType {
        group: K::group(&()).into_owned(),
        version: K::version(&()).into_owned(),
        plural: K::plural(&()).into_owned(),
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |req| http::handle(Arc::clone(&shared), req));
            // A client going away mid-stream is normal for watches.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
