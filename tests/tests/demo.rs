//! `cargo xtask demo` end to end: `ambit-demo` runs every step of the walk
//! through the mesh and passes, and writes its configuration where it says.

use std::time::Duration;

use ambit_tests::{mesh::binary_dir, privileged};

#[test]
fn the_demo_runs_every_step() {
    if !privileged("the_demo_runs_every_step") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ambit-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a work directory");
    let mut demo = std::process::Command::new(binary_dir().join("ambit-demo"));
    demo.current_dir(&dir);
    let out = ambit_tests::testbed::run_command(&mut demo, Duration::from_secs(180));
    let config = std::fs::read_to_string(dir.join("demo/mesh.yaml")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.unwrap_or_else(|e| panic!("ambit-demo failed: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for step in 1..=7 {
        assert!(
            stdout.contains(&format!("\n{step}. ")),
            "step {step} missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("All steps passed"), "{stdout}");
    for kind in [
        "PeerAuthentication",
        "AuthorizationPolicy",
        "RequestAuthentication",
        "Gateway",
    ] {
        assert!(
            config.contains(&format!("kind: {kind}")),
            "{kind} in:\n{config}"
        );
    }
}
