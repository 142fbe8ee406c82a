//! The recent flows of a process (ztunnel's connections, the waypoint's
//! requests), for the traffic view (`/ui`) and its JSON endpoints
//! (`/api/flows`, `/api/graph`, `/api/workloads/...`).
//!
//! A bounded ring: the last [`CAPACITY`] flows, whatever their outcome (the
//! access log's sampling does not apply). Recording one is a lock and a push;
//! the graph and the lists are computed when a page asks, at most once a
//! second per open page.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::registry::Workload;

/// Flows kept.
pub const CAPACITY: usize = 2048;
/// Flows one `/api/flows` answer lists at most.
pub const PAGE: usize = 200;
/// The graph's default window.
pub const GRAPH_WINDOW: Duration = Duration::from_secs(5 * 60);

/// One end of a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The workload's namespace; empty when the address is no known workload.
    pub namespace: String,
    /// The workload's canonical name (as in the metrics' `*_workload`
    /// labels), else the address.
    pub workload: String,
    /// Its SPIFFE identity, when it was authenticated (or, for a local pod,
    /// its own).
    pub identity: String,
    /// The address and port.
    pub addr: String,
}

impl Endpoint {
    /// The workload `(namespace, name)` at `addr`, or, when it is not known,
    /// the bare address (no namespace, the IP as the workload).
    pub fn new(named: Option<(String, String)>, addr: Option<SocketAddr>, identity: &str) -> Self {
        let (namespace, workload) = named.unwrap_or_else(|| {
            let ip = addr.map(|a| a.ip().to_canonical().to_string());
            (String::new(), ip.unwrap_or_default())
        });
        Self {
            namespace,
            workload,
            identity: identity.to_owned(),
            addr: addr.map(|a| a.to_string()).unwrap_or_default(),
        }
    }

    /// `workload` at `addr`, named as the metrics' `*_workload` labels name
    /// it; the bare address when there is none.
    pub fn of(workload: Option<&Workload>, addr: SocketAddr, identity: &str) -> Self {
        let named =
            workload.map(|w| (w.namespace.to_string(), crate::metrics::workload_names(w).0));
        Self::new(named, Some(addr), identity)
    }

    /// The graph node's id: `namespace/workload`, or the address alone.
    pub fn id(&self) -> String {
        if self.namespace.is_empty() {
            self.workload.clone()
        } else {
            format!("{}/{}", self.namespace, self.workload)
        }
    }
}

/// A finished connection or request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// Increasing in the process: `/api/flows?since=` pages on it.
    pub seq: u64,
    /// When it ended, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `outbound`, `inbound` (ztunnel), `request` or `stream` (waypoint: an
    /// HTTP request, a TCP stream relayed at L4).
    pub direction: &'static str,
    /// The client.
    pub src: Endpoint,
    /// The destination.
    pub dst: Endpoint,
    /// How it went: `hbone`, `passthrough`, `plaintext`, or `waypoint` (via
    /// a waypoint, named in `waypoint`); at a waypoint, the HTTP protocol.
    pub route: String,
    /// The waypoint it went through, if any.
    pub waypoint: String,
    /// `mtls` or `plaintext`.
    pub security: &'static str,
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// What decided: the policy (for a denial, always), or the error.
    pub policy: String,
    /// Bytes from the client.
    pub bytes_sent: u64,
    /// Bytes to the client.
    pub bytes_received: u64,
    /// How long it lasted.
    pub duration_ms: u64,
    /// Why it failed, when it did.
    pub error: String,
    /// Its trace id, over HBONE (the two ends of one connection share it).
    pub trace_id: String,
}

/// The recent flows; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct FlowLog(Arc<Mutex<Ring>>);

#[derive(Debug, Default)]
struct Ring {
    flows: VecDeque<Flow>,
    next_seq: u64,
}

impl FlowLog {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a flow that ended now; its `seq` and `time_ms` are set here.
    pub fn record(&self, mut flow: Flow) {
        flow.time_ms = now_ms();
        let mut ring = self.ring();
        ring.next_seq += 1;
        flow.seq = ring.next_seq;
        if ring.flows.len() == CAPACITY {
            ring.flows.pop_front();
        }
        ring.flows.push_back(flow);
    }

    /// The flows after `since` (a `seq`), newest first, at most [`PAGE`], and
    /// the `seq` to ask from next time.
    pub fn since(&self, since: u64) -> FlowPage {
        let ring = self.ring();
        let flows: Vec<Flow> = ring
            .flows
            .iter()
            .rev()
            .take_while(|f| f.seq > since)
            .take(PAGE)
            .cloned()
            .collect();
        FlowPage {
            next: ring.next_seq,
            flows,
        }
    }

    /// The last `limit` denied flows to `namespace/workload`, newest first.
    pub fn denials_to(&self, namespace: &str, workload: &str, limit: usize) -> Vec<Flow> {
        self.ring()
            .flows
            .iter()
            .rev()
            .filter(|f| {
                f.decision == "deny" && f.dst.namespace == namespace && f.dst.workload == workload
            })
            .take(limit)
            .cloned()
            .collect()
    }

    /// The service graph of the flows that ended in the last `window`.
    ///
    /// An HBONE connection between two pods of this node is recorded at both
    /// ends, with one trace id: the graph counts it once, from the
    /// destination's record (which holds the policy decision).
    pub fn graph(&self, window: Duration) -> Graph {
        let since = now_ms().saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        let ring = self.ring();
        let recent: Vec<&Flow> = ring.flows.iter().filter(|f| f.time_ms >= since).collect();
        let inbound_traces: HashSet<&str> = recent
            .iter()
            .filter(|f| f.direction == "inbound" && !f.trace_id.is_empty())
            .map(|f| f.trace_id.as_str())
            .collect();
        let mut nodes: BTreeMap<String, GraphNode> = BTreeMap::new();
        let mut edges: BTreeMap<(String, String, &'static str), GraphEdge> = BTreeMap::new();
        for flow in recent {
            if flow.direction == "outbound" && inbound_traces.contains(flow.trace_id.as_str()) {
                continue;
            }
            for end in [&flow.src, &flow.dst] {
                let node = nodes.entry(end.id()).or_insert_with(|| GraphNode {
                    id: end.id(),
                    namespace: end.namespace.clone(),
                    workload: end.workload.clone(),
                    identity: String::new(),
                });
                if node.identity.is_empty() {
                    node.identity.clone_from(&end.identity);
                }
            }
            let class = if flow.decision == "deny" {
                "denied"
            } else {
                flow.security
            };
            let key = (flow.src.id(), flow.dst.id(), class);
            let edge = edges.entry(key).or_insert_with(|| GraphEdge {
                source: flow.src.id(),
                target: flow.dst.id(),
                security: class,
                ..GraphEdge::default()
            });
            edge.flows += 1;
            edge.errors += u64::from(flow.decision == "error");
            edge.bytes += flow.bytes_sent + flow.bytes_received;
        }
        let seconds = window.as_secs_f64().max(1.0);
        let mut edges: Vec<GraphEdge> = edges.into_values().collect();
        for edge in &mut edges {
            edge.rate = edge.flows as f64 / seconds;
        }
        Graph {
            window_s: window.as_secs(),
            nodes: nodes.into_values().collect(),
            edges,
        }
    }
}

/// An answer of `/api/flows`.
#[derive(Debug, Clone, Serialize)]
pub struct FlowPage {
    /// Ask with `since=<next>` for what comes after.
    pub next: u64,
    /// Newest first.
    pub flows: Vec<Flow>,
}

/// The answer of `/api/graph`.
#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    /// The window, in seconds.
    pub window_s: u64,
    /// The workloads seen, by id.
    pub nodes: Vec<GraphNode>,
    /// One edge per source, destination and security class.
    pub edges: Vec<GraphEdge>,
}

/// A workload of the graph.
#[derive(Debug, Clone, Serialize)]
pub struct GraphNode {
    /// `namespace/workload` (or the address of an unknown peer).
    pub id: String,
    /// Empty for an unknown peer.
    pub namespace: String,
    /// The workload's name (or the address).
    pub workload: String,
    /// Its identity, when a flow showed one.
    pub identity: String,
}

/// Flows from one workload to another, of one security class.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GraphEdge {
    /// The client's node id.
    pub source: String,
    /// The destination's node id.
    pub target: String,
    /// `mtls`, `plaintext` or `denied`.
    pub security: &'static str,
    /// Flows in the window.
    pub flows: u64,
    /// Of them, those that failed (not denied: refused, reset, timed out).
    pub errors: u64,
    /// Bytes both ways.
    pub bytes: u64,
    /// Flows per second over the window.
    pub rate: f64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(namespace: &str, workload: &str) -> Endpoint {
        Endpoint {
            namespace: namespace.into(),
            workload: workload.into(),
            identity: format!("spiffe://cluster.local/ns/{namespace}/sa/{workload}"),
            addr: "198.18.16.10:7000".into(),
        }
    }

    fn flow(direction: &'static str, decision: &'static str, trace: &str) -> Flow {
        Flow {
            direction,
            src: end("demo", "client"),
            dst: end("demo", "server"),
            route: "hbone".into(),
            security: "mtls",
            decision,
            policy: if decision == "deny" {
                "DENY policy demo/no-7001 rule 0 matched".into()
            } else {
                String::new()
            },
            bytes_sent: 10,
            bytes_received: 20,
            trace_id: trace.into(),
            ..Flow::default()
        }
    }

    #[test]
    fn pages_newest_first_from_a_sequence_number() {
        let log = FlowLog::default();
        for _ in 0..3 {
            log.record(flow("outbound", "allow", ""));
        }
        let page = log.since(0);
        assert_eq!(page.next, 3);
        let seqs: Vec<u64> = page.flows.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [3, 2, 1]);
        assert!(page.flows.iter().all(|f| f.time_ms > 0));
        assert!(log.since(3).flows.is_empty());
        log.record(flow("outbound", "allow", ""));
        assert_eq!(log.since(3).flows.len(), 1);
        // The shape the page reads.
        let json = serde_json::to_value(log.since(3)).unwrap();
        assert_eq!(json["next"], 4);
        let first = &json["flows"][0];
        for key in [
            "seq",
            "time_ms",
            "direction",
            "route",
            "security",
            "decision",
            "policy",
            "bytes_sent",
            "bytes_received",
            "duration_ms",
            "error",
            "trace_id",
        ] {
            assert!(first.get(key).is_some(), "{key} missing: {first}");
        }
        assert_eq!(first["src"]["workload"], "client");
        assert_eq!(first["dst"]["namespace"], "demo");
    }

    #[test]
    fn the_ring_keeps_the_last_flows_and_a_page_is_bounded() {
        let log = FlowLog::default();
        for _ in 0..CAPACITY + 10 {
            log.record(flow("outbound", "allow", ""));
        }
        let page = log.since(0);
        assert_eq!(page.flows.len(), PAGE);
        assert_eq!(page.flows[0].seq, (CAPACITY + 10) as u64);
        assert_eq!(log.ring().flows.len(), CAPACITY);
        assert_eq!(log.ring().flows[0].seq, 11, "the oldest went first");
    }

    #[test]
    fn the_graph_counts_each_connection_once_by_class() {
        let log = FlowLog::default();
        // A connection between two local pods: both ends, one trace.
        log.record(flow("outbound", "allow", "t1"));
        log.record(flow("inbound", "allow", "t1"));
        // One seen only at the source (the destination is on another node).
        log.record(flow("outbound", "allow", "t2"));
        // A denied one, both ends.
        log.record(flow("outbound", "deny", "t3"));
        log.record(flow("inbound", "deny", "t3"));
        // Plaintext from outside the mesh.
        let mut plain = flow("inbound", "allow", "");
        plain.security = "plaintext";
        plain.src = Endpoint {
            addr: "198.18.99.1:4000".into(),
            workload: "198.18.99.1".into(),
            ..Endpoint::default()
        };
        log.record(plain);
        let graph = log.graph(GRAPH_WINDOW);
        let ids: Vec<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["198.18.99.1", "demo/client", "demo/server"]);
        let edges: Vec<(&str, &str, &str, u64)> = graph
            .edges
            .iter()
            .map(|e| (e.source.as_str(), e.target.as_str(), e.security, e.flows))
            .collect();
        assert_eq!(
            edges,
            [
                ("198.18.99.1", "demo/server", "plaintext", 1),
                ("demo/client", "demo/server", "denied", 1),
                ("demo/client", "demo/server", "mtls", 2),
            ]
        );
        let mtls = &graph.edges[2];
        assert_eq!(mtls.bytes, 60);
        assert!((mtls.rate - 2.0 / 300.0).abs() < 1e-9);
        assert_eq!(graph.window_s, 300);
        // Denials, with their policy, by destination.
        let denials = log.denials_to("demo", "server", 10);
        assert_eq!(denials.len(), 2);
        assert!(denials[0].policy.contains("demo/no-7001"));
        assert!(log.denials_to("demo", "client", 10).is_empty());
    }
}
