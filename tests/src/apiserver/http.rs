//! The HTTP side: routing, list responses and chunked watch streams.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{Request, Response, StatusCode, body::Frame};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::{
    Shared,
    store::{ResourceType, StoredEvent},
};

/// The body type of every response.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Handles one request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), percent_decode(v)))
                .collect()
        })
        .unwrap_or_default();
    if req.method() != hyper::Method::GET {
        return Ok(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake serves list and watch only",
        ));
    }
    let Some((resource, namespace)) = route(&path) else {
        return Ok(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route for {path}"),
        ));
    };
    for selector in ["labelSelector", "fieldSelector"] {
        if query.get(selector).is_some_and(|s| !s.is_empty()) {
            return Ok(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("{selector} is not supported by the fake"),
            ));
        }
    }
    // kube asks for `PartialObjectMetadata` when it watches metadata only.
    let metadata_only = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("as=PartialObjectMetadata"));
    if metadata_only {
        *shared
            .lock()
            .metadata_only
            .entry(resource.plural.clone())
            .or_default() += 1;
    }
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        Ok(watch(&shared, resource, namespace, &query, metadata_only))
    } else {
        Ok(list(
            &shared,
            &resource,
            namespace.as_deref(),
            metadata_only,
        ))
    }
}

/// `object` as a metadata-only request sees it: `PartialObjectMetadata`.
fn partial(object: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// `/api/v1[/namespaces/{ns}]/{plural}` or `/apis/{g}/{v}[/namespaces/{ns}]/{plural}`.
fn route(path: &str) -> Option<(ResourceType, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some((*ns).to_owned()), *plural),
        _ => return None,
    };
    let resource = ResourceType {
        group: group.to_owned(),
        version: version.to_owned(),
        plural: plural.to_owned(),
    };
    Some((resource, namespace))
}

fn list(
    shared: &Shared,
    resource: &ResourceType,
    namespace: Option<&str>,
    metadata_only: bool,
) -> Response<Body> {
    let mut store = shared.lock();
    *store.lists.entry(resource.plural.clone()).or_default() += 1;
    let items: Vec<Value> = store
        .objects
        .get(resource)
        .map(|objects| {
            objects
                .iter()
                .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
                .map(|(_, o)| if metadata_only { partial(o) } else { o.clone() })
                .collect()
        })
        .unwrap_or_default();
    let (api_version, kind) = if metadata_only {
        ("meta.k8s.io/v1".to_owned(), "PartialObjectMetadataList")
    } else if resource.group.is_empty() {
        (resource.version.clone(), "List")
    } else {
        (format!("{}/{}", resource.group, resource.version), "List")
    };
    let body = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, &body)
}

fn watch(
    shared: &Arc<Shared>,
    resource: ResourceType,
    namespace: Option<String>,
    query: &HashMap<String, String>,
    metadata_only: bool,
) -> Response<Body> {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(64);
    let mut store = shared.lock();
    *store.watches.entry(resource.plural.clone()).or_default() += 1;
    if store.paused {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "watches are paused by the test",
        );
    }
    if from < store.oldest_rv {
        let gone = json!({
            "type": "ERROR",
            "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({})", store.oldest_rv),
                "reason": "Expired", "code": 410,
            }
        });
        let _ = tx.try_send(Ok(Frame::data(line(&gone))));
        drop(tx);
        return stream_response(rx);
    }
    // Subscribe before reading the history so nothing falls in between.
    let live = store.live.subscribe();
    let drops = store.drops.subscribe();
    let replay: Vec<StoredEvent> = store
        .history
        .iter()
        .filter(|e| e.rv > from && matches(e, &resource, namespace.as_deref()))
        .cloned()
        .collect();
    let current = store.rv;
    drop(store);
    let stream = WatchStream {
        tx,
        resource,
        namespace,
        bookmarks,
        metadata_only,
        last_rv: from,
    };
    tokio::spawn(stream.run(replay, current, live, drops, timeout, Arc::clone(shared)));
    stream_response(rx)
}

fn matches(event: &StoredEvent, resource: &ResourceType, namespace: Option<&str>) -> bool {
    event.resource == *resource && namespace.is_none_or(|n| n == event.namespace)
}

/// One open watch: replays the history, then forwards live events, with
/// bookmarks, until the client goes, the timeout passes or the test drops it.
struct WatchStream {
    tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    resource: ResourceType,
    namespace: Option<String>,
    bookmarks: bool,
    metadata_only: bool,
    last_rv: u64,
}

impl WatchStream {
    async fn run(
        mut self,
        replay: Vec<StoredEvent>,
        current: u64,
        mut live: broadcast::Receiver<StoredEvent>,
        mut drops: tokio::sync::watch::Receiver<u64>,
        timeout: Duration,
        shared: Arc<Shared>,
    ) {
        for event in replay {
            if !self.send_event(&event).await {
                return;
            }
        }
        if self.bookmarks && !self.bookmark(current.max(self.last_rv)).await {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(shared.bookmark_interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                () = &mut deadline => return,
                _ = drops.changed() => {
                    // Cut the connection mid-stream, as a failing network would.
                    let _ = self.tx.send(Err(std::io::Error::other("watch dropped by the test"))).await;
                    return;
                }
                _ = ticker.tick(), if self.bookmarks => {
                    let rv = shared.lock().rv;
                    if !self.bookmark(rv).await { return; }
                }
                event = live.recv() => match event {
                    Ok(event) if event.rv > self.last_rv && matches(&event, &self.resource, self.namespace.as_deref()) => {
                        if !self.send_event(&event).await { return; }
                    }
                    Ok(_) => {}
                    // Too slow a reader: end the stream; the client resumes.
                    Err(_) => return,
                },
            }
        }
    }

    async fn send_event(&mut self, event: &StoredEvent) -> bool {
        self.last_rv = event.rv;
        let object = if self.metadata_only {
            partial(&event.object)
        } else {
            event.object.clone()
        };
        let value = json!({"type": event.kind.as_str(), "object": object});
        self.tx.send(Ok(Frame::data(line(&value)))).await.is_ok()
    }

    async fn bookmark(&mut self, rv: u64) -> bool {
        self.last_rv = self.last_rv.max(rv);
        let api_version = if self.resource.group.is_empty() {
            self.resource.version.clone()
        } else {
            format!("{}/{}", self.resource.group, self.resource.version)
        };
        let value = json!({
            "type": "BOOKMARK",
            "object": {"apiVersion": api_version, "kind": "Bookmark", "metadata": {"resourceVersion": self.last_rv.to_string()}},
        });
        self.tx.send(Ok(Frame::data(line(&value)))).await.is_ok()
    }
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).expect("JSON values always serialize");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn stream_response(rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>) -> Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let body = StreamBody::new(stream).boxed_unsync();
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(body)
        .expect("static parts are valid")
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(
        serde_json::to_vec(value).expect("JSON values always serialize"),
    ))
    .map_err(|never| match never {})
    .boxed_unsync();
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(body)
        .expect("static parts are valid")
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// Decodes `%XX` escapes and `+` (query strings of kube's requests).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
