//! The built binary, run the way a container runtime runs a chained plugin:
//! `CNI_*` variables, the config on stdin, no arguments. A fake ztunnel listens
//! on a unix socket in a temporary directory.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixListener,
    process::{Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::{Value, json};

/// Runs the built plugin as a runtime does: only the `CNI_*` variables of
/// `env`, `conf` on stdin, no arguments.
fn run_plugin(env: &[(&str, &str)], conf: &Value) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ambit-cni"))
        .env_clear()
        .envs(env.iter().copied())
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
    child.wait_with_output().expect("wait for ambit-cni")
}

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

    let output = run_plugin(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "e2e-container"),
            ("CNI_NETNS", "/var/run/netns/cni-e2e"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_UID=uid-1",
            ),
        ],
        &conf,
    );

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
    let output = run_plugin(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/var/run/netns/x"),
            (
                "CNI_ARGS",
                "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_UID=u",
            ),
        ],
        &conf,
    );
    assert!(!output.status.success());
    let error: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(error["code"], 11, "{error}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Kills the child when the test ends, passed or not.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn install_watch_chains_the_plugin_again_after_the_primary_rewrites_its_config() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (bin, conf_dir) = (dir.path().join("bin"), dir.path().join("net.d"));
    std::fs::create_dir(&bin).expect("mkdir bin");
    std::fs::create_dir(&conf_dir).expect("mkdir net.d");
    let binary = dir.path().join("ambit-cni-build");
    std::fs::write(&binary, b"\x7fELF pretend").expect("binary");
    let conflist = conf_dir.join("10-bridge.conflist");
    let bridge = json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]});
    std::fs::write(&conflist, bridge.to_string()).expect("write config");

    let dirs = [
        "--cni-bin-dir".into(),
        bin.clone().into_os_string(),
        "--cni-conf-dir".into(),
        conf_dir.into_os_string(),
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_ambit-cni"))
        .arg("install")
        .args(&dirs)
        .arg("--binary")
        .arg(&binary)
        .args(["--watch", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run ambit-cni install --watch");
    let stdout = child.stdout.take().expect("stdout");
    let _running = Running(child);
    let (sender, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    // Each wait is bounded, so a loop that never prints fails the test.
    let wait_for = |wanted: &str| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|error| panic!("no line containing {wanted:?}: {error}"));
        if line.contains(wanted) {
            return line;
        }
    };
    wait_for("checking every 1s");
    let installed = || {
        Command::new(env!("CARGO_BIN_EXE_ambit-cni"))
            .arg("installed")
            .args(&dirs)
            .output()
            .expect("run ambit-cni installed")
    };
    assert!(installed().status.success(), "{:?}", installed());

    std::fs::write(&conflist, bridge.to_string()).expect("rewrite config");
    let line = wait_for("no longer chained ambit-cni");
    assert!(line.ends_with("chained it again"), "{line}");
    assert!(installed().status.success(), "{:?}", installed());
}
