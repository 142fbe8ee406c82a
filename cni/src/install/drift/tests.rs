//! check and reconcile on a node laid out by install's `Node` helper, with the
//! primary plugin's rewrites played by hand.

use std::fs;

use serde_json::json;

use super::*;
use crate::install::tests::{Node, SOCKET, ambit_entries, bridge_conflist};

/// A node with bridge's conflist, installed.
fn installed_node() -> Node {
    let node = Node::new();
    node.write("10-bridge.conflist", &bridge_conflist());
    node.install().expect("install");
    node
}

fn reconcile_node(node: &Node) -> Result<Option<String>, Error> {
    reconcile(&node.options(SOCKET))
}

fn installed_binary(node: &Node) -> PathBuf {
    node.bin().join(BINARY_NAME)
}

#[test]
fn nothing_to_do_when_everything_is_in_place() {
    let node = installed_node();
    let before = fs::metadata(node.conf("10-bridge.conflist"))
        .and_then(|metadata| metadata.modified())
        .expect("mtime");
    assert_eq!(reconcile_node(&node).expect("reconcile"), None);
    assert_eq!(reconcile_node(&node).expect("reconcile"), None);
    let after = fs::metadata(node.conf("10-bridge.conflist"))
        .and_then(|metadata| metadata.modified())
        .expect("mtime");
    assert_eq!(before, after, "nothing was written");
    assert_eq!(node.conf_names(), ["10-bridge.conflist"]);
}

#[test]
fn a_rewritten_conflist_is_chained_again() {
    let node = installed_node();
    // The primary plugin restarts and writes its own conflist again.
    node.write("10-bridge.conflist", &bridge_conflist());
    let line = reconcile_node(&node).expect("reconcile").expect("a repair");
    let config = node.conf("10-bridge.conflist").display().to_string();
    assert_eq!(
        line,
        format!("{config} no longer chained ambit-cni: chained it again")
    );
    assert_eq!(ambit_entries(&node.read("10-bridge.conflist")).len(), 1);
    assert_eq!(reconcile_node(&node).expect("reconcile"), None);
}

#[test]
fn a_changed_socket_is_set_again() {
    let node = installed_node();
    let mut config = node.read("10-bridge.conflist");
    config["plugins"][2]["ztunnelSocket"] = json!("/elsewhere.sock");
    config["plugins"][2]["timeoutSeconds"] = json!(5);
    node.write("10-bridge.conflist", &config);
    let line = reconcile_node(&node).expect("reconcile").expect("a repair");
    assert!(
        line.ends_with(&format!(
            "chained ambit-cni with ztunnelSocket \"/elsewhere.sock\": set it to \"{SOCKET}\" again"
        )),
        "{line}"
    );
    assert_eq!(
        ambit_entries(&node.read("10-bridge.conflist")),
        [&json!({"type": "ambit-cni", "ztunnelSocket": SOCKET, "timeoutSeconds": 5})]
    );
    assert_eq!(reconcile_node(&node).expect("reconcile"), None);
}

#[test]
fn a_deleted_binary_is_installed_again() {
    let node = installed_node();
    fs::remove_file(installed_binary(&node)).expect("remove the binary");
    let line = reconcile_node(&node).expect("reconcile").expect("a repair");
    assert_eq!(
        line,
        format!(
            "{} was missing: installed it again",
            installed_binary(&node).display()
        )
    );
    assert_eq!(
        fs::read(installed_binary(&node)).expect("installed binary"),
        b"\x7fELF pretend"
    );
    assert_eq!(reconcile_node(&node).expect("reconcile"), None);
}

#[test]
fn a_replaced_binary_is_copied_again() {
    // Same length, other contents; then another length.
    for replacement in [&b"\x7fELF pretenD"[..], b"#!/bin/sh\nexit 0\n"] {
        let node = installed_node();
        fs::write(installed_binary(&node), replacement).expect("replace the binary");
        let line = reconcile_node(&node).expect("reconcile").expect("a repair");
        assert!(line.contains("was no longer a copy of"), "{line}");
        assert_eq!(
            fs::read(installed_binary(&node)).expect("installed binary"),
            b"\x7fELF pretend"
        );
        assert_eq!(reconcile_node(&node).expect("reconcile"), None);
    }
}

#[test]
fn several_drifts_make_one_line() {
    let node = installed_node();
    node.write("10-bridge.conflist", &bridge_conflist());
    fs::remove_file(installed_binary(&node)).expect("remove the binary");
    let line = reconcile_node(&node).expect("reconcile").expect("a repair");
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.contains("no longer chained") && line.contains("; ") && line.contains("was missing"),
        "{line}"
    );
    assert_eq!(reconcile_node(&node).expect("reconcile"), None);
}

#[test]
fn a_rewritten_conf_is_converted_again() {
    let node = Node::new();
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"});
    node.write("10-bridge.conf", &conf);
    node.install().expect("install");
    node.write("10-bridge.conf", &conf);
    let line = reconcile_node(&node).expect("reconcile").expect("a repair");
    assert!(line.contains("was a single-plugin config"), "{line}");
    assert_eq!(node.conf_names(), ["10-bridge.conflist"]);
    assert_eq!(ambit_entries(&node.read("10-bridge.conflist")).len(), 1);
}

#[test]
fn a_bad_config_is_an_error_and_the_next_pass_repairs() {
    let node = installed_node();
    let config = node.conf("10-bridge.conflist");
    // The primary plugin caught halfway through a non-atomic write.
    fs::write(&config, "{\"cniVersion\": \"1.0.0\", \"plu").expect("write");
    let error = reconcile_node(&node).expect_err("bad JSON");
    assert!(matches!(error, Error::NotJson { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&config.display().to_string()),
        "{error}"
    );
    // It finishes the write; the next pass chains the plugin again.
    node.write("10-bridge.conflist", &bridge_conflist());
    let line = reconcile_node(&node).expect("reconcile").expect("a repair");
    assert!(line.contains("no longer chained"), "{line}");
    assert_eq!(ambit_entries(&node.read("10-bridge.conflist")).len(), 1);
}

#[test]
fn an_unreadable_source_binary_is_an_error_naming_it() {
    let node = installed_node();
    let mut options = node.options(SOCKET);
    options.binary = node.conf_dir().join("gone");
    let error = reconcile(&options).expect_err("no source binary");
    assert!(
        error
            .to_string()
            .contains(&options.binary.display().to_string()),
        "{error}"
    );
}

#[test]
fn check_without_a_binary_asks_only_for_presence() {
    let node = installed_node();
    let check_node = || check(&node.bin(), &node.conf_dir(), SOCKET, None);
    assert_eq!(check_node().expect("check"), []);
    fs::write(installed_binary(&node), b"other").expect("replace the binary");
    assert_eq!(check_node().expect("check"), [], "present is enough");

    fs::remove_file(installed_binary(&node)).expect("remove the binary");
    node.write("10-bridge.conflist", &bridge_conflist());
    let drifts = check_node().expect("check");
    assert_eq!(
        drifts,
        [
            Drift::NotChained {
                config: node.conf("10-bridge.conflist"),
            },
            Drift::BinaryMissing {
                path: installed_binary(&node),
            },
        ]
    );
    assert!(drifts[0].to_string().ends_with("does not chain ambit-cni"));

    let other = check(&node.bin(), &node.conf_dir(), "/other.sock", None).expect("check");
    assert!(
        other
            .iter()
            .all(|drift| !matches!(drift, Drift::OtherSocket { .. })),
        "an unchained config has no socket to compare: {other:?}"
    );
}

#[test]
fn check_reports_another_socket() {
    let node = installed_node();
    let drifts = check(&node.bin(), &node.conf_dir(), "/run/new.sock", None).expect("check");
    assert_eq!(
        drifts,
        [Drift::OtherSocket {
            config: node.conf("10-bridge.conflist"),
            found: Some(format!("{SOCKET:?}")),
            wanted: "/run/new.sock".to_owned(),
        }]
    );
    assert!(
        drifts[0].to_string().ends_with(&format!(
            "with ztunnelSocket \"{SOCKET}\", not \"/run/new.sock\""
        )),
        "{}",
        drifts[0]
    );
}

#[test]
fn check_fails_on_an_empty_config_directory() {
    let node = Node::new();
    let error = check(&node.bin(), &node.conf_dir(), SOCKET, None).expect_err("no config");
    assert!(matches!(error, Error::NoConfig { .. }), "{error:?}");
}
