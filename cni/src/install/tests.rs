//! install and uninstall on a node's CNI directories laid out in a temporary
//! directory. The `Node` helper is shared with the tests of [`super::drift`].

use std::fs;

use serde_json::json;

use super::*;

pub(super) const SOCKET: &str = "/var/run/ambit/cni.sock";

/// `bin/`, `net.d/` and a binary to install.
pub(super) struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        fs::create_dir(dir.path().join("bin")).expect("mkdir bin");
        fs::create_dir(dir.path().join("net.d")).expect("mkdir net.d");
        fs::write(dir.path().join("ambit-cni-build"), b"\x7fELF pretend").expect("binary");
        Self { dir }
    }

    pub(super) fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    pub(super) fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    pub(super) fn conf(&self, name: &str) -> PathBuf {
        self.conf_dir().join(name)
    }

    pub(super) fn write(&self, name: &str, config: &Value) {
        fs::write(self.conf(name), config.to_string()).expect("write config");
    }

    pub(super) fn read(&self, name: &str) -> Value {
        let text = fs::read(self.conf(name)).expect("read config");
        serde_json::from_slice(&text).expect("config is JSON")
    }

    pub(super) fn options(&self, socket: &str) -> InstallOptions {
        InstallOptions {
            cni_bin_dir: self.bin(),
            cni_conf_dir: self.conf_dir(),
            socket: socket.to_owned(),
            binary: self.dir.path().join("ambit-cni-build"),
        }
    }

    pub(super) fn install(&self) -> Result<Vec<String>, Error> {
        install(&self.options(SOCKET))
    }

    pub(super) fn uninstall(&self) -> Result<Vec<String>, Error> {
        uninstall(&self.bin(), &self.conf_dir())
    }

    /// The names in net.d, sorted; temporary files would show up here.
    pub(super) fn conf_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.conf_dir())
            .expect("list net.d")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

pub(super) fn bridge_conflist() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "disableCheck": false,
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "198.18.1.0/24"}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

pub(super) fn ambit_entries(config: &Value) -> Vec<&Value> {
    config["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter(|plugin| plugin["type"] == PLUGIN_TYPE)
        .collect()
}

#[test]
fn install_appends_the_entry_once_and_copies_the_binary() {
    let node = Node::new();
    node.write("10-bridge.conflist", &bridge_conflist());
    let report = node.install().expect("first install");
    assert!(
        report.iter().any(|line| line.contains("chained")),
        "{report:?}"
    );
    let second = node.install().expect("second install");
    assert!(
        second.iter().any(|line| line.contains("already chains")),
        "{second:?}"
    );

    let config = node.read("10-bridge.conflist");
    let mut expected = bridge_conflist();
    expected["plugins"]
        .as_array_mut()
        .expect("plugins")
        .push(json!({"type": "ambit-cni", "ztunnelSocket": SOCKET}));
    assert_eq!(config, expected);
    assert_eq!(node.conf_names(), ["10-bridge.conflist"]);

    let binary = node.bin().join("ambit-cni");
    assert_eq!(
        fs::read(&binary).expect("installed binary"),
        b"\x7fELF pretend"
    );
    let mode = fs::metadata(&binary)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755);
    assert_eq!(fs::read_dir(node.bin()).expect("list bin").count(), 1);
}

#[test]
fn install_with_another_socket_updates_the_entry() {
    let node = Node::new();
    let mut config = bridge_conflist();
    config["plugins"]
        .as_array_mut()
        .expect("plugins")
        .push(json!({"type": "ambit-cni", "ztunnelSocket": "/old.sock", "timeoutSeconds": 5}));
    node.write("10-bridge.conflist", &config);
    let report = install(&node.options("/run/new.sock")).expect("install");
    assert!(
        report
            .iter()
            .any(|line| line.contains("set the ztunnelSocket")),
        "{report:?}"
    );
    let config = node.read("10-bridge.conflist");
    assert_eq!(
        ambit_entries(&config),
        [&json!({"type": "ambit-cni", "ztunnelSocket": "/run/new.sock", "timeoutSeconds": 5})]
    );
}

#[test]
fn install_converts_a_conf_into_a_conflist() {
    let node = Node::new();
    let conf = json!({
        "cniVersion": "0.4.0",
        "name": "mynet",
        "type": "bridge",
        "bridge": "cni0",
        "ipam": {"type": "host-local", "subnet": "198.18.1.0/24"},
    });
    node.write("10-bridge.conf", &conf);
    fs::set_permissions(
        node.conf("10-bridge.conf"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let report = node.install().expect("install");
    assert!(
        report.iter().any(|line| line.contains("converted")),
        "{report:?}"
    );

    assert_eq!(node.conf_names(), ["10-bridge.conflist"]);
    assert_eq!(
        node.read("10-bridge.conflist"),
        json!({
            "cniVersion": "0.4.0",
            "name": "mynet",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "198.18.1.0/24"}},
                {"type": "ambit-cni", "ztunnelSocket": SOCKET},
            ],
        })
    );
    let mode = fs::metadata(node.conf("10-bridge.conflist"))
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    node.install().expect("second install");
    assert_eq!(ambit_entries(&node.read("10-bridge.conflist")).len(), 1);
}

#[test]
fn install_chains_into_the_first_config_only() {
    let node = Node::new();
    node.write("05-first.conflist", &bridge_conflist());
    node.write("10-second.conflist", &bridge_conflist());
    node.write(
        "20-later.conf",
        &json!({"cniVersion": "1.0.0", "name": "x", "type": "bridge"}),
    );
    fs::write(node.conf("00-notes.txt"), "not a config").expect("write");
    node.install().expect("install");
    assert_eq!(ambit_entries(&node.read("05-first.conflist")).len(), 1);
    assert!(ambit_entries(&node.read("10-second.conflist")).is_empty());
    assert!(node.conf("20-later.conf").exists());
}

#[test]
fn install_refuses_bad_json_naming_the_file() {
    let node = Node::new();
    fs::write(node.conf("10-bridge.conflist"), "{\"cniVersion\": ").expect("write");
    let error = node.install().expect_err("bad JSON must be refused");
    assert!(matches!(error, Error::NotJson { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains(&node.conf("10-bridge.conflist").display().to_string()),
        "{text}"
    );
    assert!(text.contains("not valid JSON"), "{text}");
    // Nothing was written: no binary, no temporary file.
    assert_eq!(fs::read_dir(node.bin()).expect("list bin").count(), 0);
    assert_eq!(node.conf_names(), ["10-bridge.conflist"]);
}

#[test]
fn install_refuses_plugins_that_are_not_an_array() {
    let node = Node::new();
    node.write(
        "10-bridge.conflist",
        &json!({"cniVersion": "1.0.0", "name": "n", "plugins": {}}),
    );
    let error = node.install().expect_err("must be refused");
    assert!(
        error.to_string().contains("plugins is not an array"),
        "{error}"
    );
}

#[test]
fn install_refuses_an_empty_directory_and_old_versions() {
    let node = Node::new();
    let error = node.install().expect_err("no config");
    assert!(matches!(error, Error::NoConfig { .. }), "{error:?}");
    node.write(
        "10-old.conflist",
        &json!({"cniVersion": "0.2.0", "name": "n", "plugins": []}),
    );
    let error = node.install().expect_err("old version");
    assert!(error.to_string().contains("0.2.0"), "{error}");
}

#[test]
fn install_refuses_to_overwrite_a_conflist_when_converting() {
    let node = Node::new();
    node.write(
        "10-bridge.conf",
        &json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"}),
    );
    node.write("10-bridge.conflist", &bridge_conflist());
    let error = node.install().expect_err("must not overwrite");
    assert!(matches!(error, Error::ConflistExists { .. }), "{error:?}");
    assert!(ambit_entries(&node.read("10-bridge.conflist")).is_empty());
}

#[test]
fn an_interrupted_conversion_is_finished_by_the_next_install() {
    let node = Node::new();
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"});
    node.write("10-bridge.conf", &conf);
    node.install().expect("install");
    // As if the first install had died between its rename and its removal.
    node.write("10-bridge.conf", &conf);
    node.install()
        .expect("the next install finishes the conversion");
    assert!(!node.conf("10-bridge.conf").exists(), "the .conf is gone");
    assert_eq!(ambit_entries(&node.read("10-bridge.conflist")).len(), 1);
}

#[test]
fn a_conf_rewritten_by_the_primary_plugin_replaces_the_old_conflist() {
    let node = Node::new();
    node.write(
        "10-bridge.conf",
        &json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "mtu": 1500}),
    );
    node.install().expect("install");
    let mut conflist = node.read("10-bridge.conflist");
    conflist["plugins"][1]["timeoutSeconds"] = json!(5);
    node.write("10-bridge.conflist", &conflist);
    // The primary plugin restarts with a new setting and writes its .conf.
    node.write(
        "10-bridge.conf",
        &json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "mtu": 9000}),
    );
    node.install().expect("install again");
    assert_eq!(node.conf_names(), ["10-bridge.conflist"]);
    assert_eq!(
        node.read("10-bridge.conflist"),
        json!({
            "cniVersion": "1.0.0",
            "name": "n",
            "plugins": [
                {"type": "bridge", "mtu": 9000},
                {"type": "ambit-cni", "ztunnelSocket": SOCKET, "timeoutSeconds": 5},
            ],
        })
    );
}

#[test]
fn uninstall_removes_the_entries_and_the_binary() {
    let node = Node::new();
    node.write("10-bridge.conflist", &bridge_conflist());
    node.write("20-other.conflist", &bridge_conflist());
    fs::write(node.conf("30-broken.conflist"), "{oops").expect("write");
    node.install().expect("install");
    let untouched = fs::metadata(node.conf("20-other.conflist"))
        .expect("metadata")
        .modified()
        .expect("mtime");

    let report = node.uninstall().expect("uninstall");
    assert!(
        report
            .iter()
            .any(|line| line.contains("30-broken.conflist")),
        "{report:?}"
    );
    assert_eq!(node.read("10-bridge.conflist"), bridge_conflist());
    assert!(!node.bin().join("ambit-cni").exists());
    let modified = fs::metadata(node.conf("20-other.conflist"))
        .expect("metadata")
        .modified()
        .expect("mtime");
    assert_eq!(modified, untouched);

    let again = node.uninstall().expect("second uninstall");
    assert!(
        again.iter().any(|line| line.contains("was not installed")),
        "{again:?}"
    );
    assert_eq!(node.read("10-bridge.conflist"), bridge_conflist());
}

#[test]
fn uninstall_removes_every_entry_of_every_conflist() {
    let node = Node::new();
    let mut config = bridge_conflist();
    let plugins = config["plugins"].as_array_mut().expect("plugins");
    plugins.insert(0, json!({"type": "ambit-cni"}));
    plugins.push(json!({"type": "ambit-cni", "ztunnelSocket": SOCKET}));
    node.write("50-two.conflist", &config);
    node.uninstall().expect("uninstall");
    assert_eq!(node.read("50-two.conflist"), bridge_conflist());
}
