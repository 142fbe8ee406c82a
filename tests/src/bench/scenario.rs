//! The scenarios: who talks to whom, through what, measured how. Adding one
//! (the waypoint, say) is an entry in [`SCENARIOS`].

/// No mesh: plain TCP pod to pod across nodes.
pub const BASELINE: &str = "baseline";
/// Capture + HBONE mTLS through both nodes' ztunnels, sk_msg shortcut on.
pub const MESH: &str = "mesh";
/// The same with the sk_msg shortcut off.
pub const MESH_NO_SOCKMAP: &str = "mesh_no_sockmap";
/// HTTP through the destination's waypoint with JWT validation on.
pub const MESH_WAYPOINT: &str = "mesh_waypoint";
/// An enrolled client to a non-enrolled server on its own node, sk_msg on:
/// the app -> ztunnel loopback hop, then plain TCP.
pub const LOOPBACK_ON: &str = "loopback_on";
/// The same with the sk_msg shortcut off.
pub const LOOPBACK_OFF: &str = "loopback_off";

/// What carries the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataplane {
    /// No ztunnel runs.
    Plain,
    /// A ztunnel on each node, with or without the sk_msg shortcut.
    Mesh {
        /// `--sockmap`.
        sockmap: bool,
    },
}

/// What is measured in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Single-stream iperf3 (and, with ztunnels, their CPU per GiB).
    Bulk,
    /// Open-loop request/response at a fixed rate, 1 KiB and 1 B.
    Latency,
    /// Connect, one request, close, as fast as it goes.
    ConnectionRate,
    /// ztunnel RSS idle and per idle proxied connection.
    Memory,
}

/// One scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Its key in the report.
    pub name: &'static str,
    /// What it measures, for the report.
    pub description: &'static str,
    /// What carries the traffic.
    pub dataplane: Dataplane,
    /// The client pod.
    pub client: &'static str,
    /// The server pod.
    pub server: &'static str,
    /// What is measured.
    pub workloads: &'static [Workload],
    /// Why it cannot run yet, if it cannot.
    pub unavailable: Option<&'static str>,
}

/// Every workload of a cross-node scenario.
const ALL: &[Workload] = &[
    Workload::Memory,
    Workload::Bulk,
    Workload::Latency,
    Workload::ConnectionRate,
];

/// The scenarios, in the order each round runs them. Consecutive scenarios on
/// the same dataplane share its ztunnels.
pub const SCENARIOS: [Scenario; 6] = [
    Scenario {
        name: BASELINE,
        description: "no mesh: plain TCP from a pod on node a to a pod on node b",
        dataplane: Dataplane::Plain,
        client: "plainclient",
        server: "plainserver",
        workloads: &[Workload::Bulk, Workload::Latency, Workload::ConnectionRate],
        unavailable: None,
    },
    Scenario {
        name: MESH,
        description: "the same pods enrolled: eBPF capture, HBONE (mTLS 1.3 + HTTP/2 CONNECT) \
                      through the ztunnels of both nodes, sk_msg shortcut on",
        dataplane: Dataplane::Mesh { sockmap: true },
        client: "client",
        server: "server",
        workloads: ALL,
        unavailable: None,
    },
    Scenario {
        name: LOOPBACK_ON,
        description: "an enrolled client to a non-enrolled server on its own node \
                      (the app -> ztunnel loopback hop, then plain TCP), sk_msg on",
        dataplane: Dataplane::Mesh { sockmap: true },
        client: "client",
        server: "localserver",
        workloads: &[Workload::Bulk],
        unavailable: None,
    },
    Scenario {
        name: MESH_NO_SOCKMAP,
        description: "as mesh, with the sk_msg shortcut off",
        dataplane: Dataplane::Mesh { sockmap: false },
        client: "client",
        server: "server",
        workloads: ALL,
        unavailable: None,
    },
    Scenario {
        name: LOOPBACK_OFF,
        description: "as loopback_on, with the sk_msg shortcut off",
        dataplane: Dataplane::Mesh { sockmap: false },
        client: "client",
        server: "localserver",
        workloads: &[Workload::Bulk],
        unavailable: None,
    },
    Scenario {
        name: MESH_WAYPOINT,
        description: "HTTP through the destination's waypoint with JWT validation on",
        dataplane: Dataplane::Mesh { sockmap: true },
        client: "client",
        server: "server",
        workloads: ALL,
        unavailable: Some(
            "the waypoint only serves its readiness endpoint so far (no L7 proxying, no JWT \
             validation); HTTP requests/s is measured in no scenario until it does",
        ),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_the_ratios_inputs_exist() {
        let mut names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
        for name in [BASELINE, MESH, MESH_NO_SOCKMAP, LOOPBACK_ON, LOOPBACK_OFF] {
            let scenario = SCENARIOS.iter().find(|s| s.name == name).expect(name);
            assert!(scenario.unavailable.is_none(), "{name}");
            assert!(scenario.workloads.contains(&Workload::Bulk), "{name}");
        }
        assert!(SCENARIOS.iter().any(|s| s.name == MESH_WAYPOINT));
    }
}
