//! The CA's waypoint controller and root publication, end to end: the real
//! `ztunnel ca` process in Kubernetes mode against the fake API server, with
//! deploy/'s PodTemplate and example Gateway. No root needed: the CA serves
//! on loopback.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ambit_tests::{apiserver::ApiServer, mesh::ztunnel_binary};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace, PodTemplate, ServiceAccount},
    rbac::v1::ClusterRoleBinding,
};
use serde_json::json;
use ztunnel::config::crd::gateway::Gateway;

const TRUST_DOMAIN: &str = "mesh.test";
const BINDING: &str = "ambit-waypoint:demo:waypoint";
const WAIT: Duration = Duration::from_secs(20);

/// A `ztunnel ca` process; killed when dropped.
struct Ca {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Ca {
    fn start(kubeconfig: &Path, dir: &Path) -> Self {
        let mut child = Command::new(ztunnel_binary())
            .args(["ca", "--listen", "127.0.0.1:0"])
            .arg("--root-dir")
            .arg(dir)
            .args([
                "--allowed-service-account=ambit-system/ztunnel",
                "--token-review-audience=ambit-ca",
                "--root-configmap=ambit-ca-root-cert",
                "--waypoint-template=ambit-waypoint",
                "--namespace=ambit-system",
                "--controller-resync=3s",
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("TRUST_DOMAIN", TRUST_DOMAIN)
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ztunnel ca starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory of this test's own; removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("ambit-waypoint-controller-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        Self(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// The one document of `path` (deploy/'s own manifests).
fn manifest<T: serde::de::DeserializeOwned>(path: &str) -> T {
    let text = std::fs::read_to_string(deploy(path)).expect("readable");
    serde::Deserialize::deserialize(serde_yaml_ng::Deserializer::from_str(&text))
        .expect("one document of its kind")
}

/// Polls `check` until it holds or [`WAIT`] passes.
async fn eventually(what: &str, ca: &Ca, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}\nCA log:\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn waypoint_objects(api: &ApiServer) -> [bool; 4] {
    [
        api.get::<ServiceAccount>(Some("demo"), "waypoint")
            .is_some(),
        api.get::<ClusterRoleBinding>(None, BINDING).is_some(),
        api.get::<Deployment>(Some("demo"), "waypoint").is_some(),
        api.get::<ConfigMap>(Some("demo"), "ambit-ca-root-cert")
            .is_some(),
    ]
}

fn env(deployment: &Deployment, name: &str) -> Option<String> {
    let pod = deployment.spec.template.spec.as_ref()?;
    let container = pod.containers.iter().find(|c| c.name == "waypoint")?;
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn with_class(gateway: &Gateway, class: &str) -> Gateway {
    let mut gateway = gateway.clone();
    gateway.spec.gateway_class_name = class.to_owned();
    gateway
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_gateway_is_deployed_kept_and_removed_by_the_ca() {
    let api = ApiServer::start().await.expect("API server");
    let work = WorkDir::new();
    let kubeconfig = work.0.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("writable");
    let ca_dir = work.0.join("ca");
    std::fs::create_dir_all(&ca_dir).expect("writable");

    let demo: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"},
    }))
    .unwrap();
    api.create(&demo).unwrap();
    let template: PodTemplate = manifest("waypoint-template.yaml");
    api.create(&template).unwrap();
    let gateway: Gateway = manifest("waypoint/waypoint.yaml");
    api.create(&gateway).unwrap();
    // Not a waypoint: nothing is made for it.
    let mut ingress = with_class(&gateway, "istio");
    ingress.metadata.name = Some("ingress".into());
    api.create(&ingress).unwrap();

    let mut ca = Ca::start(&kubeconfig, &ca_dir);
    eventually("the waypoint's objects", &ca, || {
        waypoint_objects(&api) == [true; 4]
    })
    .await;
    let root = std::fs::read_to_string(ca_dir.join("ca.crt")).expect("the CA wrote its root");
    for ns in ["ambit-system", "demo"] {
        let cm: ConfigMap = api
            .get(Some(ns), "ambit-ca-root-cert")
            .expect("the root is published");
        let published = cm.data.unwrap_or_default()["root-cert.pem"].clone();
        assert_eq!(published.trim(), root.trim(), "the root in {ns}");
    }
    let deployment: Deployment = api.get(Some("demo"), "waypoint").unwrap();
    assert_eq!(
        env(&deployment, "TRUST_DOMAIN").as_deref(),
        Some(TRUST_DOMAIN)
    );
    assert_eq!(
        env(&deployment, "AMBIT_WAYPOINT_GATEWAY").as_deref(),
        Some("demo/waypoint")
    );
    let gateway_uid = api
        .get::<Gateway>(Some("demo"), "waypoint")
        .and_then(|g| g.metadata.uid)
        .unwrap();
    let owners = deployment.metadata.owner_references.unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("Gateway", gateway_uid.as_str())
    );
    assert!(api.get::<Deployment>(Some("demo"), "ingress").is_none());
    assert!(api.get::<ServiceAccount>(Some("demo"), "ingress").is_none());

    // Settled, it writes only what changed: the resync every 3 s applies
    // everything again, no more (4 objects + the CA namespace's root).
    let before = api.writes().len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes = api.writes()[before..].to_vec();
    assert!(
        writes.len() <= 2 * 5,
        "a settled controller wrote {writes:#?}"
    );

    // Deleted by hand: back within a resync.
    api.delete::<Deployment>(Some("demo"), "waypoint").unwrap();
    eventually("the Deployment comes back", &ca, || {
        api.get::<Deployment>(Some("demo"), "waypoint").is_some()
    })
    .await;

    // A template the controller cannot use changes nothing that runs.
    let mut broken = template.clone();
    if let Some(spec) = broken.template.as_mut().and_then(|t| t.spec.as_mut()) {
        spec.containers[0].name = "proxy".into();
    }
    api.update(&broken).unwrap();
    api.delete::<Deployment>(Some("demo"), "waypoint").unwrap();
    eventually("the template's problem logged", &ca, || {
        ca.log().contains(r#"PodTemplate ambit-system/ambit-waypoint: template.spec.containers has no container named \"waypoint\""#)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        waypoint_objects(&api),
        [true, true, false, true],
        "a broken template deletes nothing and deploys nothing"
    );
    api.update(&template).unwrap();
    eventually("deployed again once the template is fixed", &ca, || {
        waypoint_objects(&api) == [true; 4]
    })
    .await;

    // The Gateway stops being a waypoint: everything of it goes, the CA
    // namespace's root stays.
    api.update(&with_class(&gateway, "istio")).unwrap();
    eventually("the waypoint removed", &ca, || {
        waypoint_objects(&api) == [false; 4]
    })
    .await;
    assert!(
        api.get::<ConfigMap>(Some("ambit-system"), "ambit-ca-root-cert")
            .is_some()
    );

    // Deleted while the CA is down: found by its binding's labels at start.
    api.update(&gateway).unwrap();
    eventually("the waypoint back", &ca, || {
        waypoint_objects(&api) == [true; 4]
    })
    .await;
    drop(ca);
    api.delete::<Gateway>(Some("demo"), "waypoint").unwrap();
    ca = Ca::start(&kubeconfig, &ca_dir);
    eventually("the orphaned binding deleted", &ca, || {
        api.get::<ClusterRoleBinding>(None, BINDING).is_none()
    })
    .await;
    let [sa, _, deployment, root] = waypoint_objects(&api);
    assert!(!sa && !deployment, "{}", ca.log());
    // The root ConfigMap of `demo` is left to Kubernetes' garbage collector
    // (the fake has none): it is owned by the Gateway that is gone.
    assert!(root);
    let cm: ConfigMap = api.get(Some("demo"), "ambit-ca-root-cert").unwrap();
    let owners: Vec<String> = cm
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.uid)
        .collect();
    assert_eq!(owners, [gateway_uid]);
}
