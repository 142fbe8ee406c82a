//! The scenarios: who talks to whom, through what, measured how. Adding one
//! is an entry in [`SCENARIOS`].

/// No mesh: plain TCP pod to pod across nodes.
pub const BASELINE: &str = "baseline";
/// Capture + HBONE mTLS through both nodes' ztunnels, sk_msg shortcut on.
pub const MESH: &str = "mesh";
/// The same with the sk_msg shortcut off.
pub const MESH_NO_SOCKMAP: &str = "mesh_no_sockmap";
/// As [`MESH_NO_SOCKMAP`], with ztunnel's environment extended by
/// `--variant`: an A/B of two behaviours of one build inside every round.
pub const MESH_VARIANT: &str = "mesh_variant";
/// HTTP straight to the api pod through both ztunnels: what
/// [`MESH_WAYPOINT`] is compared with.
pub const MESH_HTTP: &str = "mesh_http";
/// HTTP to the api Service, through its waypoint (JWT validation and one L7
/// ALLOW policy) and both ztunnels.
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
        /// Whether the waypoint `demo/wp` runs too (in pod `wp`, one worker
        /// thread).
        waypoint: bool,
        /// Whether the ztunnels get the `--variant` environment.
        variant: bool,
    },
}

/// Where the HTTP requests of a scenario go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the api pod's own address: ztunnel sends pod-IP traffic straight to
    /// the pod, never to a waypoint (the Gateway serves Service traffic).
    PodIp,
    /// To the Service `demo/api`, which uses the waypoint.
    Service,
}

/// What is measured in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Single-stream iperf3 (and, with ztunnels, their CPU per GiB).
    Bulk,
    /// iperf3 with 4 and then 16 parallel streams (and the ztunnels' CPU per
    /// GiB): how the cost grows with concurrent bulk transfers.
    ParallelBulk,
    /// Open-loop request/response at a fixed rate, 1 KiB and 1 B.
    Latency,
    /// Open-loop 1 KiB request/response over 16 connections at 1,000, 5,000
    /// and 20,000 requests/s, each rate until one saturates: how latency
    /// grows with load.
    LoadLatency,
    /// Connect, one request, close, as fast as it goes.
    ConnectionRate,
    /// Bulk transfer into a reader that sleeps (first round only): no error,
    /// and the node's TCP memory stays bounded (the sk_msg shortcut's
    /// backpressure).
    SlowReceiver,
    /// ztunnel RSS idle and per idle proxied connection.
    Memory,
    /// HTTP/1.1 keep-alive and HTTP/2 requests (h2load) to the api pod's
    /// httpbin: latency at a fixed rate, then requests/s as fast as it goes;
    /// the waypoint's and ztunnels' CPU and the waypoint's memory.
    Http(Route),
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
    Workload::SlowReceiver,
];

/// Every workload of the shipped dataplane (sk_msg off): [`ALL`], the
/// parallel streams and latency under load.
const ALL_AND_PARALLEL: &[Workload] = &[
    Workload::Memory,
    Workload::Bulk,
    Workload::ParallelBulk,
    Workload::Latency,
    Workload::LoadLatency,
    Workload::ConnectionRate,
    Workload::SlowReceiver,
];

/// The dataplane of the HTTP scenarios: sk_msg off (the shipped default), and
/// the waypoint running for both, so the two differ only in the route.
const HTTP_DATAPLANE: Dataplane = Dataplane::Mesh {
    sockmap: false,
    waypoint: true,
    variant: false,
};

/// What [`MESH_VARIANT`] measures: what an A/B of a data-path change needs,
/// in about the time [`MESH_NO_SOCKMAP`]'s own share of a round takes.
const VARIANT: &[Workload] = &[
    Workload::Memory,
    Workload::Bulk,
    Workload::Latency,
    Workload::ConnectionRate,
];

/// The scenarios, in the order each round runs them. Consecutive scenarios on
/// the same dataplane share its ztunnels (and waypoint).
pub const SCENARIOS: [Scenario; 8] = [
    Scenario {
        name: BASELINE,
        description: "no mesh: plain TCP from a pod on node a to a pod on node b",
        dataplane: Dataplane::Plain,
        client: "plainclient",
        server: "plainserver",
        workloads: &[
            Workload::Bulk,
            Workload::ParallelBulk,
            Workload::Latency,
            Workload::LoadLatency,
            Workload::ConnectionRate,
        ],
        unavailable: None,
    },
    Scenario {
        name: MESH,
        description: "the same pods enrolled: eBPF capture, HBONE (mTLS 1.3 + HTTP/2 CONNECT) \
                      through the ztunnels of both nodes, sk_msg shortcut on",
        dataplane: Dataplane::Mesh {
            sockmap: true,
            waypoint: false,
            variant: false,
        },
        client: "client",
        server: "server",
        workloads: ALL,
        unavailable: None,
    },
    Scenario {
        name: LOOPBACK_ON,
        description: "an enrolled client to a non-enrolled server on its own node \
                      (the app -> ztunnel loopback hop, then plain TCP), sk_msg on",
        dataplane: Dataplane::Mesh {
            sockmap: true,
            waypoint: false,
            variant: false,
        },
        client: "client",
        server: "localserver",
        workloads: &[Workload::Bulk],
        unavailable: None,
    },
    Scenario {
        name: MESH_NO_SOCKMAP,
        description: "as mesh, with the sk_msg shortcut off",
        dataplane: Dataplane::Mesh {
            sockmap: false,
            waypoint: false,
            variant: false,
        },
        client: "client",
        server: "server",
        workloads: ALL_AND_PARALLEL,
        unavailable: None,
    },
    Scenario {
        name: LOOPBACK_OFF,
        description: "as loopback_on, with the sk_msg shortcut off",
        dataplane: Dataplane::Mesh {
            sockmap: false,
            waypoint: false,
            variant: false,
        },
        client: "client",
        server: "localserver",
        workloads: &[Workload::Bulk],
        unavailable: None,
    },
    Scenario {
        name: MESH_VARIANT,
        description: "as mesh_no_sockmap, with the ztunnels' environment extended by --variant \
                      (runs only with it); the report compares the two round by round",
        dataplane: Dataplane::Mesh {
            sockmap: false,
            waypoint: false,
            variant: true,
        },
        client: "client",
        server: "server",
        workloads: VARIANT,
        unavailable: None,
    },
    Scenario {
        name: MESH_HTTP,
        description: "HTTP/1.1 keep-alive and HTTP/2 (h2c) requests with a bearer token from an \
                      enrolled pod on a to httpbin in an enrolled pod on b, addressed to the pod's \
                      IP: both ztunnels, no waypoint (sk_msg off)",
        dataplane: HTTP_DATAPLANE,
        client: "client",
        server: "api",
        workloads: &[Workload::Http(Route::PodIp)],
        unavailable: None,
    },
    Scenario {
        name: MESH_WAYPOINT,
        description: "the same requests addressed to the Service demo/api, which uses the waypoint \
                      demo/wp (pod on a, one worker thread): client ztunnel -> waypoint (JWT \
                      validation, one L7 ALLOW policy, HTTP/1.1 or HTTP/2 to the endpoint as the \
                      Service port says) -> server ztunnel",
        dataplane: HTTP_DATAPLANE,
        client: "client",
        server: "api",
        workloads: &[Workload::Http(Route::Service)],
        unavailable: None,
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
        let find = |name: &str| SCENARIOS.iter().find(|s| s.name == name).expect(name);
        for name in [BASELINE, MESH, MESH_NO_SOCKMAP, LOOPBACK_ON, LOOPBACK_OFF] {
            let scenario = find(name);
            assert!(scenario.unavailable.is_none(), "{name}");
            assert!(scenario.workloads.contains(&Workload::Bulk), "{name}");
        }
        for name in [BASELINE, MESH_NO_SOCKMAP] {
            for workload in [Workload::ParallelBulk, Workload::LoadLatency] {
                assert!(find(name).workloads.contains(&workload), "{name}");
            }
        }
        let (direct, waypoint) = (find(MESH_HTTP), find(MESH_WAYPOINT));
        assert_eq!(direct.workloads, [Workload::Http(Route::PodIp)]);
        assert_eq!(waypoint.workloads, [Workload::Http(Route::Service)]);
        // The comparison holds only on the same processes and pods.
        assert_eq!(direct.dataplane, waypoint.dataplane);
        assert_eq!(
            (direct.client, direct.server),
            (waypoint.client, waypoint.server)
        );
        assert!(direct.unavailable.is_none() && waypoint.unavailable.is_none());
    }
}
