//! Parsing the command line, and running it against a temporary node.

use std::fs;

use serde_json::{Value, json};

use super::*;

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// The outcome of a command that is not `install --watch`.
fn exit(line: &str) -> Outcome {
    match run(&args(line)) {
        Run::Exit(outcome) => outcome,
        Run::Watch { report, .. } => panic!("{line} started a watch after: {report}"),
    }
}

/// `bin/`, `net.d/` with bridge's conflist, and a binary to install.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        fs::create_dir(dir.path().join("bin")).expect("mkdir bin");
        fs::create_dir(dir.path().join("net.d")).expect("mkdir net.d");
        fs::write(dir.path().join("ambit-cni-build"), b"\x7fELF pretend").expect("binary");
        let node = Self { dir };
        node.write_config(&Self::bridge());
        node
    }

    fn bridge() -> Value {
        json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]})
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("net.d/10-bridge.conflist")
    }

    fn write_config(&self, config: &Value) {
        fs::write(self.config(), config.to_string()).expect("write config");
    }

    fn dirs(&self) -> String {
        format!(
            "--cni-bin-dir {} --cni-conf-dir {}",
            self.dir.path().join("bin").display(),
            self.dir.path().join("net.d").display()
        )
    }

    fn install(&self, extra: &str) -> Run {
        let binary = self.dir.path().join("ambit-cni-build");
        run(&args(&format!(
            "install {} --binary {} {extra}",
            self.dirs(),
            binary.display()
        )))
    }

    fn installed(&self, extra: &str) -> Outcome {
        exit(&format!("installed {} {extra}", self.dirs()))
    }
}

/// Runs one tick; returns what it wrote to stdout and stderr.
fn tick(watch: &mut Watch) -> (String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    watch.tick(&mut out, &mut err);
    let text = |bytes| String::from_utf8(bytes).expect("UTF-8 output");
    (text(out), text(err))
}

#[test]
fn install_with_all_flags() {
    assert_eq!(
        parse(&args(
            "install --cni-bin-dir /opt/cni/bin --cni-conf-dir=/etc/cni/net.d --socket /run/a.sock --binary /b"
        )),
        Ok(Invocation::Install {
            cni_bin_dir: "/opt/cni/bin".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            socket: "/run/a.sock".into(),
            binary: Some("/b".into()),
            watch: None,
        })
    );
}

#[test]
fn install_defaults_the_socket_and_binary() {
    assert_eq!(
        parse(&args("install --cni-conf-dir /c --cni-bin-dir /b")),
        Ok(Invocation::Install {
            cni_bin_dir: "/b".into(),
            cni_conf_dir: "/c".into(),
            socket: DEFAULT_ZTUNNEL_SOCKET.into(),
            binary: None,
            watch: None,
        })
    );
}

#[test]
fn uninstall_takes_the_two_directories() {
    assert_eq!(
        parse(&args("uninstall --cni-bin-dir /b --cni-conf-dir /c")),
        Ok(Invocation::Uninstall {
            cni_bin_dir: "/b".into(),
            cni_conf_dir: "/c".into(),
        })
    );
}

#[test]
fn help_in_any_position() {
    for line in [
        "--help",
        "-h",
        "help",
        "install --help",
        "uninstall -h",
        "installed --help",
    ] {
        assert_eq!(parse(&args(line)), Ok(Invocation::Help), "{line}");
    }
}

#[test]
fn bad_command_lines_are_refused() {
    let cases = [
        ("frobnicate", Error::UnknownCommand("frobnicate".into())),
        (
            "uninstall --cni-bin-dir /b --cni-conf-dir /c --socket /s",
            Error::UnknownFlag {
                command: "uninstall",
                flag: "--socket".into(),
            },
        ),
        ("install --cni-bin-dir", Error::MissingValue(BIN_DIR)),
        (
            "install --cni-bin-dir= --cni-conf-dir /c",
            Error::MissingValue(BIN_DIR),
        ),
        (
            "install --cni-bin-dir /a --cni-bin-dir /b",
            Error::Repeated(BIN_DIR),
        ),
        (
            "install --cni-bin-dir /b",
            Error::MissingFlag {
                command: "install",
                flag: CONF_DIR,
            },
        ),
        (
            "install --cni-bin-dir /b --cni-conf-dir /c --socket run/a.sock",
            Error::RelativeSocket("run/a.sock".into()),
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(parse(&args(line)), Err(expected), "{line}");
    }
}

#[test]
fn usage_errors_exit_2_with_the_usage() {
    let outcome = exit("frobnicate");
    assert_eq!(outcome.exit_code, 2);
    assert!(
        outcome.stderr.contains("unknown command"),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains("ambit-cni install"),
        "{}",
        outcome.stderr
    );
    assert_eq!(exit("--help"), Outcome::success(USAGE.to_owned()));
}

#[test]
fn install_failure_exits_1_naming_the_directory() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("net.d");
    let line = format!(
        "install --cni-bin-dir {} --cni-conf-dir {} --binary /nonexistent",
        dir.path().display(),
        missing.display()
    );
    let outcome = exit(&line);
    assert_eq!(outcome.exit_code, 1, "{outcome:?}");
    assert!(
        outcome.stderr.contains(&missing.display().to_string()),
        "{}",
        outcome.stderr
    );
}

#[test]
fn install_takes_watch_seconds() {
    for line in [
        "install --cni-bin-dir /b --cni-conf-dir /c --watch 5",
        "install --watch=5 --cni-bin-dir /b --cni-conf-dir /c",
    ] {
        assert_eq!(
            parse(&args(line)),
            Ok(Invocation::Install {
                cni_bin_dir: "/b".into(),
                cni_conf_dir: "/c".into(),
                socket: DEFAULT_ZTUNNEL_SOCKET.into(),
                binary: None,
                watch: Some(Duration::from_secs(5)),
            }),
            "{line}"
        );
    }
}

#[test]
fn bad_watch_intervals_are_refused() {
    let install = "install --cni-bin-dir /b --cni-conf-dir /c";
    let cases = [
        ("--watch", Error::MissingValue(WATCH)),
        ("--watch=", Error::MissingValue(WATCH)),
        ("--watch 0", Error::BadInterval("0".into())),
        ("--watch x", Error::BadInterval("x".into())),
        ("--watch -1", Error::BadInterval("-1".into())),
        ("--watch 1.5", Error::BadInterval("1.5".into())),
        ("--watch 5 --watch 6", Error::Repeated(WATCH)),
    ];
    for (flags, expected) in cases {
        let line = format!("{install} {flags}");
        assert_eq!(parse(&args(&line)), Err(expected), "{line}");
    }
    let outcome = exit(&format!("{install} --watch 0"));
    assert_eq!(outcome.exit_code, 2, "{outcome:?}");
    assert!(
        outcome.stderr.starts_with(
            "ambit-cni: --watch takes a whole number of seconds, at least 1, not \"0\""
        ),
        "{}",
        outcome.stderr
    );
    assert_eq!(
        parse(&args(
            "uninstall --cni-bin-dir /b --cni-conf-dir /c --watch 5"
        )),
        Err(Error::UnknownFlag {
            command: "uninstall",
            flag: "--watch".into(),
        })
    );
}

#[test]
fn installed_takes_the_directories_and_the_socket() {
    assert_eq!(
        parse(&args("installed --cni-bin-dir /b --cni-conf-dir /c")),
        Ok(Invocation::Installed {
            cni_bin_dir: "/b".into(),
            cni_conf_dir: "/c".into(),
            socket: DEFAULT_ZTUNNEL_SOCKET.into(),
        })
    );
    let refused = [
        (
            "installed --cni-bin-dir /b --cni-conf-dir /c --binary /x",
            Error::UnknownFlag {
                command: "installed",
                flag: "--binary".into(),
            },
        ),
        (
            "installed --cni-bin-dir /b --cni-conf-dir /c --socket a.sock",
            Error::RelativeSocket("a.sock".into()),
        ),
        (
            "installed --cni-conf-dir /c",
            Error::MissingFlag {
                command: "installed",
                flag: BIN_DIR,
            },
        ),
    ];
    for (line, expected) in refused {
        assert_eq!(parse(&args(line)), Err(expected), "{line}");
    }
}

#[test]
fn installed_exits_0_only_when_installed() {
    let node = Node::new();
    let before = node.installed("");
    assert_eq!(before.exit_code, 1, "{before:?}");
    assert!(
        before.stderr.contains("does not chain ambit-cni") && before.stderr.contains("is missing"),
        "{}",
        before.stderr
    );

    let Run::Exit(outcome) = node.install("") else {
        panic!("install without --watch must exit");
    };
    assert_eq!(outcome.exit_code, 0, "{outcome:?}");
    let after = node.installed("");
    assert_eq!(after.exit_code, 0, "{after:?}");
    assert!(after.stdout.contains("is installed"), "{}", after.stdout);

    let other = node.installed("--socket /run/other.sock");
    assert_eq!(other.exit_code, 1, "{other:?}");
    assert!(other.stderr.contains("/run/other.sock"), "{}", other.stderr);

    fs::write(node.config(), "{oops").expect("write");
    let broken = node.installed("");
    assert_eq!(broken.exit_code, 1, "{broken:?}");
    assert!(
        broken.stderr.contains("not valid JSON")
            && broken.stderr.contains(&node.config().display().to_string()),
        "{}",
        broken.stderr
    );
}

#[test]
fn install_watch_reports_then_each_tick_repairs_or_prints_nothing() {
    let node = Node::new();
    let Run::Watch { report, mut watch } = node.install("--watch 3") else {
        panic!("install --watch must start a watch");
    };
    assert!(report.contains("chained ambit-cni into"), "{report}");
    assert!(
        report.ends_with("checking every 3s that ambit-cni stays installed\n"),
        "{report}"
    );
    assert_eq!(tick(&mut watch), (String::new(), String::new()));

    node.write_config(&Node::bridge());
    let (out, err) = tick(&mut watch);
    assert_eq!(
        out,
        format!(
            "{} no longer chained ambit-cni: chained it again\n",
            node.config().display()
        )
    );
    assert_eq!(err, "");
    assert_eq!(tick(&mut watch), (String::new(), String::new()));
}

#[test]
fn install_watch_prints_an_error_once_and_keeps_going() {
    let node = Node::new();
    let Run::Watch { mut watch, .. } = node.install("--watch 1") else {
        panic!("install --watch must start a watch");
    };
    fs::write(node.config(), "{\"cniVersion\": ").expect("write");
    let (out, err) = tick(&mut watch);
    assert_eq!(out, "");
    assert!(
        err.starts_with("ambit-cni: ")
            && err.contains("not valid JSON")
            && err.ends_with("(trying again in 1s)\n"),
        "{err}"
    );
    assert_eq!(
        tick(&mut watch),
        (String::new(), String::new()),
        "printed once"
    );

    node.write_config(&Node::bridge());
    let (out, err) = tick(&mut watch);
    assert!(out.contains("no longer chained ambit-cni"), "{out}");
    assert_eq!(err, "");
}

#[test]
fn install_watch_exits_when_the_first_install_fails() {
    let node = Node::new();
    fs::write(node.config(), "{oops").expect("write");
    let Run::Exit(outcome) = node.install("--watch 1") else {
        panic!("a failed first install must exit");
    };
    assert_eq!(outcome.exit_code, 1, "{outcome:?}");
    assert!(
        outcome.stderr.contains("not valid JSON"),
        "{}",
        outcome.stderr
    );
}
