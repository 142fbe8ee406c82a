//! `cargo xtask demo` end to end: `ambit-demo` passes every step, twice in a
//! row (nothing is left behind), writes its configuration where it says, and
//! reports a step it cannot prove as FAIL with a non-zero exit.

use std::{path::PathBuf, process::Output, time::Duration};

use ambit_tests::{mesh::binary_dir, privileged};

/// Runs `ambit-demo` in a directory of its own; its output and configuration.
fn run_demo(env: &[(&str, &str)]) -> (Output, String) {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "ambit-demo-test-{}-{}",
        std::process::id(),
        env.len()
    ));
    std::fs::create_dir_all(&dir).expect("a work directory");
    let mut demo = std::process::Command::new(binary_dir().join("ambit-demo"));
    demo.current_dir(&dir)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    let out = demo
        .output_with_timeout(Duration::from_secs(180))
        .expect("ambit-demo runs");
    let config = std::fs::read_to_string(dir.join("demo/mesh.yaml")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (out, config)
}

trait OutputWithTimeout {
    fn output_with_timeout(&mut self, timeout: Duration) -> std::io::Result<Output>;
}

impl OutputWithTimeout for std::process::Command {
    fn output_with_timeout(&mut self, timeout: Duration) -> std::io::Result<Output> {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        ambit_tests::testbed::wait_with_timeout(child, timeout)?
            .ok_or_else(|| std::io::Error::other(format!("no exit within {timeout:?}")))
    }
}

/// The summary table's verdict of each step, by number.
fn verdicts(stdout: &str) -> Vec<(u32, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let number = cells.first()?.parse().ok()?;
            Some((number, (*cells.last()?).to_owned()))
        })
        .collect()
}

#[test]
fn the_demo_passes_every_step_twice_in_a_row() {
    if !privileged("the_demo_passes_every_step_twice_in_a_row") {
        return;
    }
    for run in 1..=2 {
        let (out, config) = run_demo(&[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "run {run}: ambit-demo failed:\n{stdout}\n{stderr}"
        );
        let verdicts = verdicts(&stdout);
        let numbers: Vec<u32> = verdicts.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, (1..=7).collect::<Vec<_>>(), "run {run}:\n{stdout}");
        assert!(
            verdicts.iter().all(|(_, v)| v == "PASS"),
            "run {run}:\n{stdout}"
        );
        for kind in [
            "Namespace",
            "Pod",
            "Service",
            "PeerAuthentication",
            "AuthorizationPolicy",
            "RequestAuthentication",
            "Gateway",
        ] {
            assert!(
                config.contains(&format!("kind: {kind}")),
                "run {run}: {kind} in:\n{config}"
            );
        }
    }
}

#[test]
fn a_step_the_demo_cannot_prove_fails_the_run() {
    if !privileged("a_step_the_demo_cannot_prove_fails_the_run") {
        return;
    }
    // Step 4 writes no policy: web -> db is then served, and must not pass.
    let (out, _) = run_demo(&[("AMBIT_DEMO_BREAK", "l4-policy")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the broken demo exited 0:\n{stdout}");
    let verdicts = verdicts(&stdout);
    let four = verdicts.iter().find(|(n, _)| *n == 4);
    assert_eq!(
        four.map(|(_, v)| v.as_str()),
        Some("FAIL"),
        "step 4 in:\n{stdout}"
    );
    assert!(
        verdicts
            .iter()
            .filter(|(n, _)| *n != 4)
            .all(|(_, v)| v == "PASS"),
        "only step 4 fails:\n{stdout}"
    );
}
