//! The local configuration file: parse and validate any text; what passes
//! goes into a registry, and every workload's AuthorizationPolicies are
//! compiled and evaluated for a connection. Nothing may panic.
#![no_main]

use std::{net::SocketAddr, path::Path};

use libfuzzer_sys::fuzz_target;
use ztunnel::{
    policy::{Attributes, compile},
    registry::{Change, Options, Registry},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = ztunnel::config::file::parse(text, Path::new("fuzz.yaml")) else {
        return;
    };
    let registry = Registry::new(Options {
        node: Some("a".into()),
        ..Options::default()
    });
    registry.apply(parsed.objects.into_iter().map(Change::Upsert));
    let snapshot = registry.snapshot();
    let dst: SocketAddr = ([198, 18, 0, 10], 8080).into();
    for workload in snapshot.workloads() {
        let policies = snapshot.policies_for(workload);
        let compiled = compile(policies.authorization.iter().map(|p| &**p));
        let _ = compiled.evaluate(&Attributes::connection(dst.ip(), dst, None));
    }
});
