//! The commands in-process, against a fake ztunnel on a unix socket in a
//! temporary directory.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::*;

const CNI_ARGS_VALUE: &str =
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_UID=7f3c-11";

/// The node's directory of ztunnel's socket and enrolled-namespaces file.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("cni.sock")
    }

    fn enroll(&self, namespaces: &str) {
        fs::write(self.dir.path().join("enrolled-namespaces"), namespaces)
            .expect("write enrolled-namespaces");
    }

    /// A ztunnel that answers one connection with `reply` and a newline.
    fn ztunnel(&self, reply: &str) -> FakeZtunnel {
        let listener = UnixListener::bind(self.socket()).expect("bind the fake ztunnel");
        let reply = format!("{reply}\n");
        FakeZtunnel::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let request = read_request(&stream);
            (&stream)
                .write_all(reply.as_bytes())
                .expect("write the reply");
            request
        })
    }

    /// A ztunnel that reads the request and never answers; it holds the
    /// connection until the plugin gives up and closes it.
    fn silent_ztunnel(&self) -> FakeZtunnel {
        let listener = UnixListener::bind(self.socket()).expect("bind the fake ztunnel");
        FakeZtunnel::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let request = read_request(&stream);
            // The plugin must close the connection when it gives up; a bound
            // here turns a plugin that never does into a failure, not a hang.
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("set the read timeout");
            let rest = (&stream).read_to_end(&mut Vec::new());
            assert!(matches!(rest, Ok(0)), "the plugin did not close: {rest:?}");
            request
        })
    }

    /// The network config, chained after a bridge plugin whose result had
    /// `cniVersion` 0.4.0 (so a test can tell that ADD rewrote it).
    fn conf(&self, timeout_seconds: u64) -> Vec<u8> {
        json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "ambit-cni",
            "ztunnelSocket": self.socket(),
            "timeoutSeconds": timeout_seconds,
            "somethingElse": {"ignored": true},
            "prevResult": prev_result(),
        })
        .to_string()
        .into_bytes()
    }
}

/// A fake ztunnel serving one connection on its own thread.
struct FakeZtunnel {
    request: mpsc::Receiver<Value>,
}

impl FakeZtunnel {
    fn spawn(serve: impl FnOnce() -> Value + Send + 'static) -> Self {
        let (sender, request) = mpsc::channel();
        thread::spawn(move || {
            let _ = sender.send(serve());
        });
        Self { request }
    }

    /// The request line the plugin sent. Waits a bounded time, so a plugin
    /// that never connects fails the test instead of hanging it (the server
    /// thread, stuck in accept, ends with the test process).
    fn request(&self) -> Value {
        self.request
            .recv_timeout(Duration::from_secs(10))
            .expect("the fake ztunnel got no request (or failed: see its panic)")
    }
}

fn read_request(stream: &std::os::unix::net::UnixStream) -> Value {
    let mut line = Vec::new();
    BufReader::new(stream)
        .read_until(b'\n', &mut line)
        .expect("read the request");
    assert_eq!(
        line.last(),
        Some(&b'\n'),
        "request line must end in a newline"
    );
    serde_json::from_slice(&line).expect("the request is JSON")
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:c6:12:01:0a", "sandbox": "/var/run/netns/cni-1234"}],
        "ips": [
            {"address": "198.18.1.10/24", "gateway": "198.18.1.1", "interface": 0},
            {"address": "fd00:1::10/64", "interface": 0},
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    })
}

fn expected_result() -> Value {
    let mut result = prev_result();
    result["cniVersion"] = json!("1.0.0");
    result
}

/// The environment of a containerd invocation of `command`, with `changes`
/// applied (an empty value removes the variable).
fn env(command: &str, changes: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let mut vars: HashMap<String, String> = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "ctr-1"),
        ("CNI_NETNS", "/var/run/netns/cni-1234"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", CNI_ARGS_VALUE),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (key, value) in changes {
        if value.is_empty() {
            vars.remove(*key);
        } else {
            vars.insert((*key).to_owned(), (*value).to_owned());
        }
    }
    move |key| vars.get(key).cloned()
}

fn stdout_json(outcome: &Outcome) -> Value {
    serde_json::from_str(&outcome.stdout).unwrap_or_else(|error| {
        panic!("stdout is not JSON ({error}): {:?}", outcome.stdout);
    })
}

/// Asserts a CNI error with `code` and returns its JSON.
fn assert_error(outcome: &Outcome, code: u32) -> Value {
    assert_ne!(outcome.exit_code, 0, "{outcome:?}");
    let error = stdout_json(outcome);
    assert_eq!(error["code"], code, "{error}");
    assert_eq!(error["cniVersion"], "1.0.0", "{error}");
    assert!(
        error["msg"].as_str().is_some_and(|msg| !msg.is_empty()),
        "{error}"
    );
    assert_eq!(outcome.stderr.lines().count(), 1, "{:?}", outcome.stderr);
    error
}

fn assert_success(outcome: &Outcome) {
    assert_eq!(outcome.exit_code, 0, "{outcome:?}");
}

// === ADD ===

#[test]
fn add_enrolled_sends_the_pod_and_prints_prev_result() {
    let node = Node::new();
    let ztunnel = node.ztunnel(r#"{"enrolled":true}"#);
    let outcome = run(&env("ADD", &[]), &node.conf(5));
    let request = ztunnel.request();
    assert_eq!(
        request,
        json!({
            "command": "add",
            "pod": {"namespace": "demo", "name": "web-1", "uid": "7f3c-11"},
            "netns": "/var/run/netns/cni-1234",
            "containerId": "ctr-1",
            "ips": ["198.18.1.10", "fd00:1::10"],
        })
    );
    assert_success(&outcome);
    assert_eq!(stdout_json(&outcome), expected_result());
    assert_eq!(outcome.stderr, "");
}

#[test]
fn add_not_enrolled_prints_prev_result() {
    let node = Node::new();
    let ztunnel = node.ztunnel(r#"{"enrolled":false,"reason":"namespace demo is not enrolled"}"#);
    let outcome = run(&env("ADD", &[]), &node.conf(5));
    assert_eq!(ztunnel.request()["command"], "add");
    assert_success(&outcome);
    assert_eq!(stdout_json(&outcome), expected_result());
}

#[test]
fn add_without_prev_result_prints_the_version_and_sends_no_ips() {
    let node = Node::new();
    let ztunnel = node.ztunnel(r#"{"enrolled":true}"#);
    let conf = json!({"cniVersion": "0.4.0", "name": "n", "type": "ambit-cni", "ztunnelSocket": node.socket()});
    let outcome = run(&env("ADD", &[]), conf.to_string().as_bytes());
    assert_eq!(ztunnel.request()["ips"], json!([]));
    assert_success(&outcome);
    assert_eq!(stdout_json(&outcome), json!({"cniVersion": "0.4.0"}));
}

#[test]
fn add_refused_is_error_100_with_ztunnel_text() {
    let node = Node::new();
    let ztunnel = node.ztunnel(r#"{"error":"cannot enter netns: no such file"}"#);
    let outcome = run(&env("ADD", &[]), &node.conf(5));
    ztunnel.request();
    let error = assert_error(&outcome, 100);
    assert_eq!(error["msg"], "ztunnel refused to enroll pod demo/web-1");
    assert_eq!(error["details"], "cannot enter netns: no such file");
}

#[test]
fn add_malformed_reply_is_error_100() {
    let node = Node::new();
    node.enroll("other\n");
    let ztunnel = node.ztunnel(r#"{"enrolled":"maybe"}"#);
    let outcome = run(&env("ADD", &[]), &node.conf(5));
    ztunnel.request();
    let error = assert_error(&outcome, 100);
    assert_eq!(error["msg"], "ztunnel refused to enroll pod demo/web-1");
    assert!(
        error["details"]
            .as_str()
            .is_some_and(|d| d.contains("malformed")),
        "{error}"
    );
}

#[test]
fn add_unreachable_and_namespace_listed_is_try_again() {
    let node = Node::new();
    node.enroll("# ztunnel\nshop\ndemo\n");
    let outcome = run(&env("ADD", &[]), &node.conf(5));
    let error = assert_error(&outcome, 11);
    let msg = error["msg"].as_str().expect("msg");
    assert!(msg.contains(&node.socket().display().to_string()), "{msg}");
    assert!(msg.contains("unreachable"), "{msg}");
    assert!(msg.contains("namespace demo is enrolled"), "{msg}");
    assert!(msg.contains("uncaptured"), "{msg}");
}

#[test]
fn add_unreachable_and_no_file_is_try_again() {
    let node = Node::new();
    let outcome = run(&env("ADD", &[]), &node.conf(5));
    let error = assert_error(&outcome, 11);
    let msg = error["msg"].as_str().expect("msg");
    assert!(msg.contains("namespace demo may be enrolled"), "{msg}");
    assert!(msg.contains(&node.socket().display().to_string()), "{msg}");
    let details = error["details"].as_str().expect("details");
    assert!(details.contains("enrolled-namespaces"), "{details}");
}

#[test]
fn add_unreachable_and_namespace_not_listed_succeeds() {
    let node = Node::new();
    node.enroll("shop\n");
    let outcome = run(&env("ADD", &[]), &node.conf(5));
    assert_success(&outcome);
    assert_eq!(stdout_json(&outcome), expected_result());
    assert!(
        outcome.stderr.contains("not in the mesh"),
        "{:?}",
        outcome.stderr
    );
}

#[test]
fn add_silent_ztunnel_times_out_as_unreachable() {
    let node = Node::new();
    node.enroll("demo\n");
    let ztunnel = node.silent_ztunnel();
    let started = Instant::now();
    let outcome = run(&env("ADD", &[]), &node.conf(1));
    let elapsed = started.elapsed();
    assert_eq!(ztunnel.request()["command"], "add");
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let error = assert_error(&outcome, 11);
    assert!(
        error["details"]
            .as_str()
            .is_some_and(|d| d.contains("no reply within 1s")),
        "{error}"
    );
}

#[test]
fn add_silent_ztunnel_and_namespace_not_listed_succeeds() {
    let node = Node::new();
    node.enroll("shop\n");
    let ztunnel = node.silent_ztunnel();
    let outcome = run(&env("ADD", &[]), &node.conf(1));
    ztunnel.request();
    assert_success(&outcome);
    assert_eq!(stdout_json(&outcome), expected_result());
}

#[test]
fn add_missing_pod_uid_is_error_4() {
    let node = Node::new();
    let outcome = run(
        &env(
            "ADD",
            &[("CNI_ARGS", "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1")],
        ),
        &node.conf(5),
    );
    let error = assert_error(&outcome, 4);
    assert_eq!(error["msg"], "CNI_ARGS lacks K8S_POD_UID");
}

#[test]
fn add_missing_netns_is_error_4() {
    let node = Node::new();
    let outcome = run(&env("ADD", &[("CNI_NETNS", "")]), &node.conf(5));
    let error = assert_error(&outcome, 4);
    assert_eq!(error["msg"], "CNI_NETNS is not set");
}

#[test]
fn bad_json_stdin_is_error_6() {
    let outcome = run(&env("ADD", &[]), b"{\"cniVersion\": \"1.0.0\",");
    let error = assert_error(&outcome, 6);
    assert!(
        error["details"].as_str().is_some_and(|d| !d.is_empty()),
        "{error}"
    );
}

#[test]
fn unsupported_version_is_error_1() {
    let outcome = run(
        &env("ADD", &[]),
        br#"{"cniVersion":"0.2.0","name":"n","type":"ambit-cni"}"#,
    );
    let error = assert_error(&outcome, 1);
    assert!(
        error["msg"].as_str().is_some_and(|m| m.contains("0.2.0")),
        "{error}"
    );
}

#[test]
fn bad_prev_result_address_is_error_7() {
    let conf = json!({"cniVersion": "1.0.0", "prevResult": {"ips": [{"address": "x/24"}]}});
    let outcome = run(&env("ADD", &[]), conf.to_string().as_bytes());
    assert_error(&outcome, 7);
}

#[test]
fn errors_use_the_config_version() {
    let conf = json!({"cniVersion": "0.4.0", "name": "n", "type": "ambit-cni"});
    let outcome = run(
        &env("ADD", &[("CNI_ARGS", "")]),
        conf.to_string().as_bytes(),
    );
    assert_eq!(stdout_json(&outcome)["cniVersion"], "0.4.0");
    assert_eq!(stdout_json(&outcome)["code"], 4);
}

// === DEL ===

#[test]
fn del_sends_del_and_prints_nothing() {
    let node = Node::new();
    let ztunnel = node.ztunnel(r#"{"enrolled":false}"#);
    let outcome = run(&env("DEL", &[]), &node.conf(5));
    let request = ztunnel.request();
    assert_eq!(request["command"], "del");
    assert_eq!(request["pod"]["uid"], "7f3c-11");
    assert_eq!(outcome, Outcome::success(String::new()));
}

#[test]
fn del_with_socket_missing_succeeds_silently() {
    let node = Node::new();
    node.enroll("demo\n");
    let outcome = run(&env("DEL", &[]), &node.conf(5));
    assert_success(&outcome);
    assert_eq!(outcome.stdout, "");
}

#[test]
fn del_refused_still_succeeds() {
    let node = Node::new();
    let ztunnel = node.ztunnel(r#"{"error":"boom"}"#);
    let outcome = run(&env("DEL", &[("CNI_NETNS", "")]), &node.conf(5));
    assert_eq!(ztunnel.request()["netns"], "");
    assert_success(&outcome);
    assert_eq!(outcome.stdout, "");
    assert!(outcome.stderr.contains("boom"), "{:?}", outcome.stderr);
}

#[test]
fn del_without_pod_args_or_with_bad_config_succeeds() {
    let node = Node::new();
    let outcome = run(&env("DEL", &[("CNI_ARGS", "")]), &node.conf(5));
    assert_success(&outcome);
    assert_eq!(outcome.stdout, "");
    let outcome = run(&env("DEL", &[]), b"not json");
    assert_success(&outcome);
    assert_eq!(outcome.stdout, "");
}

// === CHECK ===

#[test]
fn check_enrolled_succeeds_silently() {
    let node = Node::new();
    node.enroll("demo\n");
    let ztunnel = node.ztunnel(r#"{"enrolled":true}"#);
    let outcome = run(&env("CHECK", &[]), &node.conf(5));
    assert_eq!(ztunnel.request()["command"], "check");
    assert_eq!(outcome, Outcome::success(String::new()));
}

#[test]
fn check_not_enrolled_but_listed_is_error_100() {
    let node = Node::new();
    node.enroll("demo\n");
    let ztunnel = node.ztunnel(r#"{"enrolled":false,"reason":"no such pod"}"#);
    let outcome = run(&env("CHECK", &[]), &node.conf(5));
    ztunnel.request();
    let error = assert_error(&outcome, 100);
    assert!(
        error["msg"]
            .as_str()
            .is_some_and(|m| m.contains("should be captured")),
        "{error}"
    );
    assert_eq!(error["details"], "no such pod");
}

#[test]
fn check_not_enrolled_and_not_listed_succeeds() {
    let node = Node::new();
    node.enroll("shop\n");
    let ztunnel = node.ztunnel(r#"{"enrolled":false}"#);
    let outcome = run(&env("CHECK", &[]), &node.conf(5));
    ztunnel.request();
    assert_eq!(outcome, Outcome::success(String::new()));
}

#[test]
fn check_error_reply_is_error_100() {
    let node = Node::new();
    let ztunnel = node.ztunnel(r#"{"error":"links detached"}"#);
    let outcome = run(&env("CHECK", &[]), &node.conf(5));
    ztunnel.request();
    assert_eq!(assert_error(&outcome, 100)["details"], "links detached");
}

#[test]
fn check_unreachable_and_listed_is_try_again() {
    let node = Node::new();
    node.enroll("demo\n");
    let outcome = run(&env("CHECK", &[]), &node.conf(5));
    let error = assert_error(&outcome, 11);
    assert!(
        error["msg"]
            .as_str()
            .is_some_and(|m| m.contains("cannot confirm")),
        "{error}"
    );
}

#[test]
fn check_unreachable_and_not_listed_succeeds() {
    let node = Node::new();
    let outcome = run(&env("CHECK", &[]), &node.conf(5));
    assert_success(&outcome);
    assert_eq!(outcome.stdout, "");
}

// === VERSION and the rest ===

#[test]
fn version_prints_the_supported_versions() {
    let outcome = run(&env("VERSION", &[]), b"");
    assert_eq!(
        outcome,
        Outcome::success(
            "{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\"]}\n"
                .to_owned()
        )
    );
}

#[test]
fn unknown_or_missing_command_is_error_4() {
    assert_error(&run(&env("STATUS", &[]), b"{}"), 4);
    assert_error(&run(&env("", &[]), b"{}"), 4);
}

#[test]
fn socket_path_is_used_as_configured() {
    // The socket lives in a sub-directory, and the file is looked up beside it,
    // not in the node directory.
    let node = Node::new();
    node.enroll("demo\n");
    let sub: &Path = &node.dir.path().join("sub");
    fs::create_dir(sub).expect("mkdir");
    fs::write(sub.join("enrolled-namespaces"), "shop\n").expect("write");
    let conf =
        json!({"cniVersion": "1.0.0", "ztunnelSocket": sub.join("cni.sock"), "timeoutSeconds": 5});
    let outcome = run(&env("ADD", &[]), conf.to_string().as_bytes());
    assert_success(&outcome);
}
