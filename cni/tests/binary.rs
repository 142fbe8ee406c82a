//! The built binary, run the way a container runtime runs a chained plugin:
//! `CNI_*` variables, the config on stdin, no arguments. A fake ztunnel listens
//! on a unix socket in a temporary directory.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixListener,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::{Value, json};

#[test]
fn add_against_a_fake_ztunnel() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("cni.sock");
    let listener = UnixListener::bind(&socket).expect("bind the fake ztunnel");
    let (sender, requests) = mpsc::channel();
    thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut line = Vec::new();
        BufReader::new(&stream)
            .read_until(b'\n', &mut line)
            .expect("read the request");
        (&stream)
            .write_all(b"{\"enrolled\":true}\n")
            .expect("write the reply");
        let request = serde_json::from_slice::<Value>(&line).expect("the request is JSON");
        let _ = sender.send(request);
    });

    let prev_result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-e2e"}],
        "ips": [{"address": "198.18.1.10/24", "gateway": "198.18.1.1", "interface": 0}],
    });
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ambit-cni",
        "ztunnelSocket": socket,
        "timeoutSeconds": 5,
        "prevResult": prev_result,
    });

    let mut child = Command::new(env!("CARGO_BIN_EXE_ambit-cni"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "e2e-container")
        .env("CNI_NETNS", "/var/run/netns/cni-e2e")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_UID=uid-1",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ambit-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write the config");
    let output = child.wait_with_output().expect("wait for ambit-cni");

    // Bounded, so a binary that never connects fails the test instead of
    // leaving it stuck with the server in accept.
    let request = requests
        .recv_timeout(Duration::from_secs(10))
        .expect("the fake ztunnel got no request");
    assert_eq!(
        request,
        json!({
            "command": "add",
            "pod": {"namespace": "demo", "name": "web-1", "uid": "uid-1"},
            "netns": "/var/run/netns/cni-e2e",
            "containerId": "e2e-container",
            "ips": ["198.18.1.10"],
        })
    );
    assert!(
        output.status.success(),
        "status {:?}, stderr {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(result, prev_result);
}

#[test]
fn add_with_ztunnel_unreachable_fails_closed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("enrolled-namespaces"), "demo\n").expect("write");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ambit-cni",
        "ztunnelSocket": dir.path().join("cni.sock"),
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_ambit-cni"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c")
        .env("CNI_NETNS", "/var/run/netns/x")
        .env(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_UID=u",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ambit-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write the config");
    let output = child.wait_with_output().expect("wait for ambit-cni");
    assert!(!output.status.success());
    let error: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(error["code"], 11, "{error}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
