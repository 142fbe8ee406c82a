//! The CA's Kubernetes pieces against a small fake API server that speaks real
//! HTTP on loopback, so kube-rs runs unmodified: the root kept in a Secret
//! (created when absent, reused after), and node authentication with TokenReview.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use ztunnel::identity::{
    Identity, TrustBundle, TrustDomain,
    auth::{NodeName, StaticNodeAuthorizer},
    ca::{
        secret,
        server::{self, CaServerConfig, NodeAuthConfig, RootSource},
    },
    client::{self, CaClient, CaClientConfig, CertificateSigner, TokenSource},
    csr,
};

const NS: &str = "ambit-system";
const SECRET: &str = "ambit-ca-root";

/// What the fake API server holds and saw.
#[derive(Default)]
struct State {
    secrets: HashMap<String, Value>,
    /// `METHOD path` of every request.
    requests: Vec<String>,
    /// Bodies of TokenReview requests.
    reviews: Vec<Value>,
    /// Answer the next GET of a Secret with 404 even if it exists (another CA
    /// replica creating it between our read and our create).
    hide_next_get: bool,
}

type Shared = Arc<Mutex<State>>;

async fn fake_api_server() -> (SocketAddr, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Shared::default();
    let shared = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let state = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, state.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, state)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

async fn handle(
    req: Request<Incoming>,
    state: Shared,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut state = state.lock().unwrap();
    state.requests.push(format!("{method} {path}"));
    let secrets = format!("/api/v1/namespaces/{NS}/secrets");
    let response = match (method, path.as_str()) {
        (Method::GET, p) if p.starts_with(&format!("{secrets}/")) => {
            let name = &p[secrets.len() + 1..];
            let hidden = std::mem::take(&mut state.hide_next_get);
            match state.secrets.get(name) {
                Some(secret) if !hidden => json_response(StatusCode::OK, secret),
                _ => status(404, "NotFound", &format!("secrets \"{name}\" not found")),
            }
        }
        (Method::POST, p) if p == secrets => {
            let secret: Value = serde_json::from_slice(&body).unwrap();
            let name = secret["metadata"]["name"].as_str().unwrap().to_owned();
            match state.secrets.entry(name) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    status(409, "AlreadyExists", "already exists")
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(secret.clone());
                    json_response(StatusCode::CREATED, &secret)
                }
            }
        }
        (Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews") => {
            let review: Value = serde_json::from_slice(&body).unwrap();
            state.reviews.push(review.clone());
            json_response(StatusCode::CREATED, &review_answer(&review))
        }
        _ => status(404, "NotFound", "no such path in the fake"),
    };
    Ok(response)
}

/// The fake's idea of each token.
fn review_answer(review: &Value) -> Value {
    let token = review["spec"]["token"].as_str().unwrap_or("");
    let ztunnel = "system:serviceaccount:ambit-system:ztunnel";
    // As the API server does: the requested audiences the token is valid for.
    let audiences = review["spec"]["audiences"].clone();
    let status = match token {
        "token-node-a" => json!({"authenticated": true, "audiences": audiences,
            "user": {"username": ztunnel,
            "extra": {"authentication.kubernetes.io/node-name": ["node-a"]}}}),
        "token-other-sa" => {
            json!({"authenticated": true, "audiences": audiences,
            "user": {"username": "system:serviceaccount:default:default",
            "extra": {"authentication.kubernetes.io/node-name": ["node-a"]}}})
        }
        "token-unbound" => {
            json!({"authenticated": true, "audiences": audiences, "user": {"username": ztunnel}})
        }
        // A token minted for the API server, from a server that does not
        // narrow the answer to the requested audiences.
        "token-api-audience" => json!({"authenticated": true,
            "audiences": ["https://kubernetes.default.svc.cluster.local"],
            "user": {"username": ztunnel,
            "extra": {"authentication.kubernetes.io/node-name": ["node-a"]}}}),
        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
           "metadata": {}, "spec": review["spec"], "status": status})
}

fn kube_client(addr: SocketAddr) -> kube::Client {
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

#[tokio::test]
async fn the_root_secret_is_created_once_and_reused() {
    let (addr, state) = fake_api_server().await;
    let td = TrustDomain::default();
    let created = secret::load_or_create(kube_client(addr), NS, SECRET, &td)
        .await
        .unwrap();
    let loaded = secret::load_or_create(kube_client(addr), NS, SECRET, &td)
        .await
        .unwrap();
    assert_eq!(created.cert_der(), loaded.cert_der());
    let state = state.lock().unwrap();
    let posts = state
        .requests
        .iter()
        .filter(|r| r.starts_with("POST"))
        .count();
    assert_eq!(posts, 1, "{:?}", state.requests);
    let stored = &state.secrets[SECRET];
    assert!(stored["data"]["ca.key"].is_string() && stored["data"]["ca.crt"].is_string());
}

#[tokio::test]
async fn losing_the_creation_race_uses_the_winners_root() {
    let (addr, state) = fake_api_server().await;
    let td = TrustDomain::default();
    let winner = secret::load_or_create(kube_client(addr), NS, SECRET, &td)
        .await
        .unwrap();
    state.lock().unwrap().hide_next_get = true;
    let loser = secret::load_or_create(kube_client(addr), NS, SECRET, &td)
        .await
        .unwrap();
    assert_eq!(loser.cert_der(), winner.cert_der());
    let state = state.lock().unwrap();
    let posts = state
        .requests
        .iter()
        .filter(|r| r.starts_with("POST"))
        .count();
    assert_eq!(
        posts, 2,
        "the loser tried to create and got 409: {:?}",
        state.requests
    );
}

#[tokio::test]
async fn a_secret_without_usable_material_is_refused() {
    let (addr, state) = fake_api_server().await;
    state.lock().unwrap().secrets.insert(
        SECRET.to_owned(),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NS},
               "data": {"ca.crt": "bm90IGEgY2VydA=="}}),
    );
    let err = secret::load_or_create(kube_client(addr), NS, SECRET, &TrustDomain::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Secret ambit-system/ambit-ca-root has no usable ca.key (expected PEM under data.ca.key)"
    );
}

fn cart() -> Identity {
    "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()
}

#[tokio::test]
async fn the_ca_authenticates_nodes_with_token_review() {
    let (addr, state) = fake_api_server().await;
    let authz = Arc::new(StaticNodeAuthorizer::new());
    authz.add(&NodeName::new("node-a"), "shop", "cart");
    let config = CaServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        root: RootSource::KubernetesSecret {
            namespace: NS.to_owned(),
            name: SECRET.to_owned(),
        },
        node_auth: NodeAuthConfig::TokenReview {
            audiences: vec!["ambit-ca".to_owned()],
            allowed_service_accounts: vec!["ambit-system/ztunnel".to_owned()],
        },
        ..CaServerConfig::local("/nonexistent")
    };
    let server = server::build(&config, authz, Some(kube_client(addr)))
        .await
        .unwrap();
    let ca_addr = server.local_addr().unwrap();
    let bundle = TrustBundle::from_pem(server.roots_pem().concat().as_bytes(), "ca").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let client = |token: &str| {
        CaClient::new(
            CaClientConfig {
                address: ca_addr.to_string(),
                server_name: "ambit-ca".to_owned(),
                token: TokenSource::Static(token.to_owned()),
                timeout: Duration::from_secs(10),
            },
            bundle.clone(),
        )
        .unwrap()
    };
    let (_, csr_pem) = csr::create(&cart()).unwrap();
    let chain = client("token-node-a")
        .sign(&csr_pem, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(chain.len(), 2);

    for (token, code_wanted, expected) in [
        // Another service account's token is a workload's: only its own
        // identity.
        (
            "token-other-sa",
            tonic::Code::PermissionDenied,
            "workload default/default may not obtain a certificate for spiffe://cluster.local/ns/shop/sa/cart",
        ),
        (
            "token-unbound",
            tonic::Code::Unauthenticated,
            "not bound to a pod on a node",
        ),
        (
            "token-api-audience",
            tonic::Code::Unauthenticated,
            "not for the CA's audience (ambit-ca)",
        ),
        (
            "token-garbage",
            tonic::Code::Unauthenticated,
            "did not authenticate it (invalid bearer token)",
        ),
    ] {
        let err = client(token)
            .sign(&csr_pem, Duration::from_secs(60))
            .await
            .unwrap_err();
        let client::Error::Rpc { code, message } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*code, code_wanted, "{token}");
        assert!(message.contains(expected), "{token}: {message}");
    }
    // ... which it gets.
    let own: Identity = "spiffe://cluster.local/ns/default/sa/default"
        .parse()
        .unwrap();
    let (_, own_csr) = csr::create(&own).unwrap();
    let chain = client("token-other-sa")
        .sign(&own_csr, Duration::from_secs(60))
        .await
        .expect("a workload gets its own identity");
    assert_eq!(chain.len(), 2);
    {
        let state = state.lock().unwrap();
        assert_eq!(state.reviews.len(), 6);
        assert_eq!(state.reviews[0]["spec"]["audiences"], json!(["ambit-ca"]));
    }
    // With the API server gone, nobody is authenticated (fail closed).
    let down_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ambit-kube-down");
    let unreachable = server::build(
        &CaServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            root: RootSource::Directory(down_dir.clone()),
            ..config.clone()
        },
        Arc::new(StaticNodeAuthorizer::new()),
        Some(kube_client("127.0.0.1:1".parse().unwrap())),
    )
    .await
    .unwrap();
    let down_addr = unreachable.local_addr().unwrap();
    let down_bundle =
        TrustBundle::from_pem(unreachable.roots_pem().concat().as_bytes(), "down").unwrap();
    tokio::spawn(unreachable.serve(std::future::pending()));
    let err = CaClient::new(
        CaClientConfig {
            address: down_addr.to_string(),
            server_name: "ambit-ca".to_owned(),
            token: TokenSource::Static("token-node-a".to_owned()),
            timeout: Duration::from_secs(10),
        },
        down_bundle,
    )
    .unwrap()
    .sign(&csr_pem, Duration::from_secs(60))
    .await
    .unwrap_err();
    assert!(
        matches!(&err, client::Error::Rpc { code: tonic::Code::Unauthenticated, message } if message.contains("cannot check the token")),
        "{err:?}"
    );
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    std::fs::remove_dir_all(&down_dir).unwrap();
}
