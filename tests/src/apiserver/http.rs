//! The HTTP side: routing, list responses and chunked watch streams.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{Request, Response, StatusCode, body::Frame};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::{
    Shared,
    store::{EventType, ResourceType, StoredEvent},
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
    let method = req.method().clone();
    if method != hyper::Method::GET {
        shared.lock().writes.push(format!("{method} {path}"));
    }
    let Some(target) = route(&path) else {
        return Ok(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route for {path}"),
        ));
    };
    if query.get("fieldSelector").is_some_and(|s| !s.is_empty()) {
        return Ok(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "fieldSelector is not supported by the fake",
        ));
    }
    let selector = match query.get("labelSelector").map(|s| parse_selector(s)) {
        None => Vec::new(),
        Some(Ok(selector)) => selector,
        Some(Err(message)) => return Ok(status(StatusCode::BAD_REQUEST, "BadRequest", &message)),
    };
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // kube asks for `PartialObjectMetadata` when it watches metadata only.
    let metadata_only = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("as=PartialObjectMetadata"));
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Ok(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &e.to_string(),
            ));
        }
    };
    let Target {
        resource,
        namespace,
        name,
    } = target;
    match (method, name) {
        (hyper::Method::GET, Some(name)) => Ok(get(&shared, &resource, namespace, &name)),
        (hyper::Method::GET, None) => {
            if metadata_only {
                *shared
                    .lock()
                    .metadata_only
                    .entry(resource.plural.clone())
                    .or_default() += 1;
            }
            let filter = Filter {
                namespace,
                selector,
            };
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                Ok(watch(&shared, resource, filter, &query, metadata_only))
            } else {
                Ok(list(&shared, &resource, &filter, metadata_only))
            }
        }
        (hyper::Method::POST, None) if resource.plural == "tokenreviews" => {
            Ok(token_review(&shared, &body))
        }
        (hyper::Method::POST, None) => Ok(write(
            &shared,
            &resource,
            namespace,
            None,
            &body,
            Write::Create,
        )),
        (hyper::Method::PATCH, Some(name))
            if content_type.starts_with("application/apply-patch") =>
        {
            Ok(write(
                &shared,
                &resource,
                namespace,
                Some(name),
                &body,
                Write::Apply,
            ))
        }
        (hyper::Method::PATCH, Some(_)) => Ok(status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("the fake supports server-side apply patches only, not {content_type:?}"),
        )),
        (hyper::Method::DELETE, Some(name)) => Ok(delete(&shared, &resource, namespace, &name)),
        (method, _) => Ok(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the fake does not serve {method} {path}"),
        )),
    }
}

/// What a request addresses.
struct Target {
    resource: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
}

/// Which objects a list or watch covers.
#[derive(Debug, Clone)]
struct Filter {
    namespace: Option<String>,
    /// `key=value` pairs that must all be labels of the object.
    selector: Vec<(String, String)>,
}

impl Filter {
    fn covers(&self, namespace: &str, object: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.selector.iter().all(|(k, v)| {
                object
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(k))
                    .and_then(Value::as_str)
                    == Some(v.as_str())
            })
    }
}

/// `400 Bad Request` saying `message`.
fn bad_request(message: &str) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// The request body as JSON, or why it is not.
fn json_body(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))
}

/// Equality-based label selectors only (`a=b,c==d`).
fn parse_selector(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .filter(|term| !term.is_empty())
        .map(|term| {
            let (k, v) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .filter(|(k, _)| !k.ends_with('!'))
                .ok_or_else(|| {
                    format!("label selector term {term:?}: the fake supports key=value only")
                })?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn get(
    shared: &Shared,
    resource: &ResourceType,
    namespace: Option<String>,
    name: &str,
) -> Response<Body> {
    let key = (namespace.unwrap_or_default(), name.to_owned());
    let store = shared.lock();
    match store.objects.get(resource).and_then(|o| o.get(&key)) {
        Some(object) => json_response(StatusCode::OK, object),
        None => not_found(resource, &key),
    }
}

fn not_found(resource: &ResourceType, key: &(String, String)) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{}\" not found", resource.plural, key.1),
    )
}

/// How a write treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// POST: refused when it exists.
    Create,
    /// Server-side apply: creates or replaces (the fake does not merge
    /// fields of several managers: the last apply is the object).
    Apply,
}

fn write(
    shared: &Shared,
    resource: &ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    body: &[u8],
    mode: Write,
) -> Response<Body> {
    let mut object = match json_body(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad_request("the body is not a JSON object"),
        Err(message) => return bad_request(&message),
    };
    let body_name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(name) = name.or(body_name.clone()) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "metadata.name is required",
        );
    };
    if body_name.as_deref().is_some_and(|n| n != name) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "metadata.name does not match the URL",
        );
    }
    let namespace = namespace.unwrap_or_default();
    let key = (namespace.clone(), name.clone());
    let mut store = shared.lock();
    let old = store
        .objects
        .get(resource)
        .and_then(|o| o.get(&key))
        .cloned();
    if mode == Write::Create && old.is_some() {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", resource.plural),
        );
    }
    let uid = match old.as_ref().and_then(|o| o.pointer("/metadata/uid")) {
        Some(uid) => uid.clone(),
        None => Value::String(store.next_uid()),
    };
    let Some(meta) = object
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "metadata is not an object",
        );
    };
    meta.insert("name".into(), Value::String(name));
    if !namespace.is_empty() {
        meta.insert("namespace".into(), Value::String(namespace));
    }
    meta.insert("uid".into(), uid);
    let (kind, code) = if old.is_some() {
        (EventType::Modified, StatusCode::OK)
    } else {
        (EventType::Added, StatusCode::CREATED)
    };
    store.record(resource, key.clone(), kind, object);
    match store.objects.get(resource).and_then(|o| o.get(&key)) {
        Some(object) => json_response(code, object),
        None => not_found(resource, &key),
    }
}

fn delete(
    shared: &Shared,
    resource: &ResourceType,
    namespace: Option<String>,
    name: &str,
) -> Response<Body> {
    let key = (namespace.unwrap_or_default(), name.to_owned());
    let mut store = shared.lock();
    let Some(old) = store
        .objects
        .get(resource)
        .and_then(|o| o.get(&key))
        .cloned()
    else {
        return not_found(resource, &key);
    };
    store.record(resource, key, EventType::Deleted, old.clone());
    json_response(StatusCode::OK, &old)
}

/// A `TokenReview`, answered from the tokens file (`<token> <holder>` lines,
/// as `ztunnel ca --token-file` reads them): a node's token is the ztunnel
/// DaemonSet's service account bound to a pod on that node, a
/// `<namespace>/<service account>` holder's is that service account's.
fn token_review(shared: &Shared, body: &[u8]) -> Response<Body> {
    let review = match json_body(body) {
        Ok(v) => v,
        Err(message) => return bad_request(&message),
    };
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("");
    let tokens_file = shared.lock().tokens_file.clone();
    let holder = tokens_file.as_ref().and_then(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().find_map(|line| {
            let (t, holder) = line.split_once(' ')?;
            (!token.is_empty() && t == token).then(|| holder.trim().to_owned())
        })
    });
    let answer = match holder {
        Some(holder) => {
            let (username, extra) = match holder.split_once('/') {
                Some((ns, sa)) => (format!("system:serviceaccount:{ns}:{sa}"), json!({})),
                None => (
                    "system:serviceaccount:ambit-system:ztunnel".to_owned(),
                    json!({"authentication.kubernetes.io/node-name": [holder]}),
                ),
            };
            // As the API server does: the requested audiences the token is valid for.
            json!({"authenticated": true, "audiences": review.pointer("/spec/audiences").cloned().unwrap_or(json!([])),
                   "user": {"username": username, "extra": extra}})
        }
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    shared.lock().reviews += 1;
    json_response(
        StatusCode::CREATED,
        &json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {}, "spec": review.get("spec").cloned().unwrap_or(json!({})), "status": answer}),
    )
}

/// `object` as a metadata-only request sees it: `PartialObjectMetadata`.
fn partial(object: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// `/api/v1[/namespaces/{ns}]/{plural}[/{name}]` or
/// `/apis/{g}/{v}[/namespaces/{ns}]/{plural}[/{name}]`.
fn route(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        [plural] => (None, *plural, None),
        _ => return None,
    };
    Some(Target {
        resource: ResourceType {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural.to_owned(),
        },
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

fn list(
    shared: &Shared,
    resource: &ResourceType,
    filter: &Filter,
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
                .filter(|((ns, _), o)| filter.covers(ns, o))
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
    filter: Filter,
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
        .filter(|e| e.rv > from && matches(e, &resource, &filter))
        .cloned()
        .collect();
    let current = store.rv;
    drop(store);
    let stream = WatchStream {
        tx,
        resource,
        filter,
        bookmarks,
        metadata_only,
        last_rv: from,
    };
    tokio::spawn(stream.run(replay, current, live, drops, timeout, Arc::clone(shared)));
    stream_response(rx)
}

/// A watch with a label selector sees the changes of objects that carry the
/// labels after the change (the fake sends no DELETED for an object whose
/// labels stop matching).
fn matches(event: &StoredEvent, resource: &ResourceType, filter: &Filter) -> bool {
    event.resource == *resource && filter.covers(&event.namespace, &event.object)
}

/// One open watch: replays the history, then forwards live events, with
/// bookmarks, until the client goes, the timeout passes or the test drops it.
struct WatchStream {
    tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    resource: ResourceType,
    filter: Filter,
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
                    Ok(event) if event.rv > self.last_rv && matches(&event, &self.resource, &self.filter) => {
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
