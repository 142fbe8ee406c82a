//! The CNI path end to end: `ambit-cni` chained after Debian's reference
//! plugins (`bridge` + `host-local`, from containernetworking-plugins),
//! driven as a container runtime drives a conflist (each plugin with
//! `CNI_COMMAND`, `CNI_NETNS`, `CNI_ARGS`, its config on stdin and the
//! previous plugin's result as `prevResult`), for a pod whose network
//! namespace only the CNI names to ztunnel.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use ambit_tests::{
    Testbed,
    mesh::{MeshConfig, Ztunnel, ZtunnelOptions, binary_dir, send, start_server},
    privileged,
    testbed::Pod,
};
use serde_json::{Value, json};

/// Where Debian's containernetworking-plugins puts the plugins
/// (`cargo xtask test` installs them).
const CNI_PLUGINS: &str = "/usr/lib/cni";
const WAIT: Duration = Duration::from_secs(10);

/// What one plugin invocation gave.
#[derive(Debug)]
struct Invocation {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Invocation {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("plugin output is not JSON ({e}): {self:?}"))
    }
}

/// A container runtime on one node of the testbed, with one conflist.
struct Runtime<'a> {
    bed: &'a Testbed,
    node: &'a str,
    conflist: Value,
}

impl Runtime<'_> {
    /// `bridge` on the node's pod bridge with the pod's own addresses (one
    /// address per family, so host-local hands out exactly what the mesh
    /// configuration says), then `ambit-cni` asking the ztunnel at `socket`.
    fn new<'a>(bed: &'a Testbed, node: &'a str, pod: &Pod, socket: &Path) -> Runtime<'a> {
        let spec = bed.node(node);
        let (v4, v6) = (pod.ipv4(), pod.ipv6());
        let [a, b, c, _] = v4.octets();
        let s = v6.segments();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "ambit-test",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cbr0",
                    "isGateway": false,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": bed.workdir().join("ipam"),
                        "ranges": [
                            [{"subnet": format!("{a}.{b}.{c}.0/24"), "rangeStart": v4, "rangeEnd": v4,
                              "gateway": spec.pod_gateway_v4()}],
                            [{"subnet": format!("{:x}:{:x}:{:x}::/64", s[0], s[1], s[2]),
                              "rangeStart": v6, "rangeEnd": v6, "gateway": spec.pod_gateway_v6()}]
                        ],
                        "routes": [
                            {"dst": "0.0.0.0/0", "gw": spec.pod_gateway_v4()},
                            {"dst": "::/0", "gw": spec.pod_gateway_v6()}
                        ]
                    }
                },
                {"type": "ambit-cni", "ztunnelSocket": socket, "timeoutSeconds": 10}
            ]
        });
        Runtime {
            bed,
            node,
            conflist,
        }
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .expect("plugins is a list")
            .clone()
    }

    /// Runs one plugin of the list for `pod` in `namespace`.
    fn invoke(
        &self,
        plugin: &Value,
        command: &str,
        pod: &Pod,
        namespace: &str,
        prev: Option<&Value>,
    ) -> Invocation {
        let kind = plugin["type"].as_str().expect("a plugin type");
        let binary = match kind {
            "ambit-cni" => binary_dir().join("ambit-cni"),
            other => Path::new(CNI_PLUGINS).join(other),
        };
        assert!(
            binary.is_file(),
            "{} is missing (cargo xtask test builds ambit-cni and installs the reference plugins)",
            binary.display()
        );
        let mut config = plugin.clone();
        config["cniVersion"] = self.conflist["cniVersion"].clone();
        config["name"] = self.conflist["name"].clone();
        if let Some(prev) = prev {
            config["prevResult"] = prev.clone();
        }
        let mut cmd = self.bed.node_command(self.node, &binary);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("sandbox-{}", pod.name()))
            .env("CNI_NETNS", pod.netns_path())
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={};K8S_POD_UID={}",
                    pod.name(),
                    pod.uid()
                ),
            )
            .env(
                "CNI_PATH",
                format!("{CNI_PLUGINS}:{}", binary_dir().display()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the plugin runs");
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(config.to_string().as_bytes())
            .expect("the config is written");
        let output = child.wait_with_output().expect("the plugin ends");
        Invocation {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// ADD through the list; the last result, or the failing plugin's
    /// output after the runtime's clean-up (DEL of the whole list, as a
    /// runtime does when an ADD fails).
    fn add(&self, pod: &Pod, namespace: &str) -> Result<Value, Invocation> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let out = self.invoke(&plugin, "ADD", pod, namespace, prev.as_ref());
            if !out.success {
                self.del(pod, namespace, prev.as_ref());
                return Err(out);
            }
            prev = Some(out.json());
        }
        Ok(prev.expect("the list has plugins"))
    }

    /// CHECK through the list with the cached result.
    fn check(&self, pod: &Pod, namespace: &str, result: &Value) -> Vec<Invocation> {
        (self.plugins().iter())
            .map(|plugin| self.invoke(plugin, "CHECK", pod, namespace, Some(result)))
            .collect()
    }

    /// DEL through the list in reverse order; every plugin must succeed.
    fn del(&self, pod: &Pod, namespace: &str, result: Option<&Value>) {
        for plugin in self.plugins().iter().rev() {
            let out = self.invoke(plugin, "DEL", pod, namespace, result);
            assert!(
                out.success,
                "DEL must not fail: {}\n{}",
                out.stdout, out.stderr
            );
        }
    }
}

/// The addresses on the pod's `eth0` (none when it has no such link).
fn pod_addresses(bed: &Testbed, pod: &str) -> String {
    let mut cmd = bed.pod_command(pod, "ip");
    cmd.args(["-brief", "address", "show"]);
    let out = bed.run(cmd, WAIT).expect("ip runs in the pod");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `web` sends `message` to `server`'s echo on port 7000; it must come back,
/// and node b's ztunnel must have taken it over HBONE with web's identity.
fn arrives_over_hbone_as_web(
    bed: &Testbed,
    (zt_a, zt_b): (&Ztunnel, &Ztunnel),
    server: &Pod,
    message: &str,
) {
    let dst = SocketAddr::from((server.ipv4(), 7000));
    let reply = send(bed, "web", dst, message)
        .unwrap_or_else(|e| panic!("web reaches server: {e}\nztunnel a:\n{}", zt_a.stderr()));
    assert!(reply.contains(message), "{reply}");
    let inbound = zt_b
        .wait_for_log(WAIT, |l| {
            l["target"] == "access" && l["dst.addr"] == dst.to_string()
        })
        .unwrap_or_else(|e| panic!("node b logged the connection: {e}"));
    assert_eq!(inbound["mode"], "hbone", "{inbound}");
    assert_eq!(
        inbound["src.identity"], "spiffe://cluster.local/ns/demo/sa/web",
        "{inbound}"
    );
}

#[test]
fn a_pod_created_through_cni_is_captured_from_its_first_connection() {
    if !privileged("a_pod_created_through_cni_is_captured_from_its_first_connection") {
        return;
    }
    let bed = Testbed::builder("cni")
        .node("a")
        .node("b")
        .bare_pod("web", "a")
        .bare_pod("legacy", "a")
        .pod("server", "b")
        .build()
        .expect("testbed builds");
    // Only the CNI plugin names web's namespace: the configuration does not.
    let mesh = MeshConfig::default()
        .namespace("demo", true)
        .namespace("plain", false)
        .pod("web", "demo")
        .without_netns("web")
        .pod("legacy", "plain")
        .without_netns("legacy")
        .pod("server", "demo");
    let config = bed.workdir().join("mesh.yaml");
    mesh.write(&bed, &config).expect("config written");
    let socket: PathBuf = bed.workdir().join("cni-a").join("cni.sock");
    let options_a = ZtunnelOptions {
        cni_socket: Some(socket.clone()),
        ..ZtunnelOptions::default()
    };
    let mut zt_a = Ztunnel::start(&bed, "a", &config, &options_a).expect("ztunnel a starts");
    let zt_b =
        Ztunnel::start(&bed, "b", &config, &ZtunnelOptions::default()).expect("ztunnel b starts");
    let _server = start_server(&bed, "server", "echo", "[::]:7000");
    let (web, legacy, server) = (bed.pod("web"), bed.pod("legacy"), bed.pod("server"));
    // The kubelet's readiness probe: ztunnel is ready (its pods enrolled).
    let probe = || {
        let mut curl = bed.node_command("a", "curl");
        curl.args(["-s", "--max-time", "3"]).arg(format!(
            "http://{}:15021/healthz/ready",
            bed.node("a").ipv4()
        ));
        bed.run(curl, WAIT)
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(probe().expect("the probe is answered").trim(), "ready");
    let runtime = Runtime::new(&bed, "a", web, &socket);

    // ADD: the pod gets its network from bridge + host-local, and ztunnel
    // enrolls it before ambit-cni returns.
    let result = runtime
        .add(web, "demo")
        .unwrap_or_else(|out| panic!("ADD failed: {out:?}\nztunnel a:\n{}", zt_a.stderr()));
    assert!(
        result["ips"].to_string().contains(&web.ipv4().to_string()),
        "the chain's result is bridge's, passed on: {result}"
    );
    zt_a.wait_for_log(WAIT, |l| {
        l["message"] == "CNI request: enrolled" && l["pod"] == "demo/web"
    })
    .unwrap_or_else(|e| panic!("ztunnel a enrolled web: {e}\n{}", zt_a.stderr()));

    // The very first connection of the pod is captured: it arrives over
    // HBONE with web's identity.
    arrives_over_hbone_as_web(&bed, (&zt_a, &zt_b), server, "first");

    // CHECK: every plugin agrees the pod is as it should be.
    for out in runtime.check(web, "demo", &result) {
        assert!(out.success, "CHECK: {out:?}");
    }

    // DEL: unenrolled (its namespace leaves the pinned enrollment map), and
    // the link is gone.
    let cookie = ztunnel::capture::netns_cookie(&web.netns_path()).expect("web's cookie");
    let pinned = || ztunnel::capture::pinned_enrollment(bed.node("a").pin_dir()).expect("map");
    assert!(pinned().contains(&cookie), "web is enrolled before DEL");
    runtime.del(web, "demo", Some(&result));
    let deadline = std::time::Instant::now() + WAIT;
    while pinned().contains(&cookie) {
        assert!(
            std::time::Instant::now() < deadline,
            "web is still enrolled after DEL\n{}",
            zt_a.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    zt_a.wait_for_log(WAIT, |l| {
        l["message"] == "CNI request: not enrolled"
            && l["pod"] == "demo/web"
            && l["reason"] == "unenrolled"
    })
    .unwrap_or_else(|e| panic!("ztunnel a unenrolled web: {e}\n{}", zt_a.stderr()));
    assert!(!pod_addresses(&bed, "web").contains("eth0"));

    // ztunnel down: a pod of the mesh is refused (code 11, try again later)
    // and keeps no network; a pod outside the mesh starts as usual.
    zt_a.kill();
    assert!(
        probe().is_err(),
        "nothing answers the probe once ztunnel is gone"
    );
    let refused = runtime
        .add(web, "demo")
        .expect_err("no pod of the mesh starts uncaptured");
    let error = refused.json();
    assert_eq!(error["code"], 11, "{refused:?}");
    assert!(
        error["msg"]
            .as_str()
            .is_some_and(|m| m.contains("unreachable")),
        "the error says why: {refused:?}"
    );
    assert!(
        !pod_addresses(&bed, "web").contains("eth0"),
        "the runtime's clean-up left web without a network"
    );
    let plain = Runtime::new(&bed, "a", legacy, &socket);
    let result = plain
        .add(legacy, "plain")
        .unwrap_or_else(|out| panic!("a pod outside the mesh starts: {out:?}"));
    assert!(
        result["ips"]
            .to_string()
            .contains(&legacy.ipv4().to_string()),
        "{result}"
    );
    plain.del(legacy, "plain", Some(&result));
}

/// The pod object as the API server has it when the runtime runs the CNI
/// chain: scheduled on its node, no address yet (the kubelet reports the
/// addresses only after ADD returns).
fn pending_pod(bed: &Testbed, name: &str) -> k8s_openapi::api::core::v1::Pod {
    let p = bed.pod(name);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "uid": p.uid()},
        "spec": {"nodeName": p.node(), "serviceAccountName": name,
                 "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Pending"},
    }))
    .expect("a pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_kubernetes_mode_a_new_pod_is_captured_before_the_api_knows_its_address() {
    if !privileged("in_kubernetes_mode_a_new_pod_is_captured_before_the_api_knows_its_address") {
        return;
    }
    let bed = Testbed::builder("cni_kube")
        .node("a")
        .node("b")
        .bare_pod("web", "a")
        .pod("server", "b")
        .build()
        .expect("testbed builds");
    let (api, kubeconfig) =
        ambit_tests::apiserver::ApiServer::start_in_node(&bed, "a").expect("API server");
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}},
    }))
    .expect("a namespace");
    api.create(&ns).expect("namespace created");
    let server = bed.pod("server");
    let running: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "server", "namespace": "demo", "uid": server.uid()},
        "spec": {"nodeName": server.node(), "serviceAccountName": "server",
                 "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": server.ipv4().to_string(),
                   "podIPs": [{"ip": server.ipv4().to_string()}, {"ip": server.ipv6().to_string()}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .expect("a pod");
    api.create(&running).expect("server created");
    api.create(&pending_pod(&bed, "web")).expect("web created");

    let options = ZtunnelOptions::default();
    let (bed_ref, kube_ref) = (&bed, &kubeconfig);
    let (zt_a, zt_b) = tokio::task::block_in_place(|| {
        let a = Ztunnel::start_kubernetes(bed_ref, "a", kube_ref, &options).expect("ztunnel a");
        let b = Ztunnel::start_kubernetes(bed_ref, "b", kube_ref, &options).expect("ztunnel b");
        (a, b)
    });
    // Kubernetes mode listens for the plugin without being told to; the
    // testbed gives each node a socket of its own.
    let socket = bed.workdir().join("cni-a").join("cni.sock");
    let enrolled = std::fs::read_to_string(socket.with_file_name("enrolled-namespaces"))
        .expect("ztunnel lists the enrolled namespaces beside its socket");
    assert!(enrolled.lines().any(|l| l == "demo"), "{enrolled}");

    tokio::task::block_in_place(|| {
        let web = bed.pod("web");
        let runtime = Runtime::new(&bed, "a", web, &socket);
        let result = runtime
            .add(web, "demo")
            .unwrap_or_else(|out| panic!("ADD failed: {out:?}\nztunnel a:\n{}", zt_a.stderr()));
        let _echo = start_server(&bed, "server", "echo", "[::]:7000");
        arrives_over_hbone_as_web(&bed, (&zt_a, &zt_b), server, "early");
        runtime.del(web, "demo", Some(&result));
    });
    // The ztunnels' certificates came from the CA, which authenticated them
    // with TokenReviews, as in a cluster.
    assert!(
        api.token_reviews() >= 2,
        "{} TokenReviews",
        api.token_reviews()
    );
    drop(api);
}
