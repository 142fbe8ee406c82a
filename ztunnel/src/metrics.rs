//! Prometheus metrics, served as OpenMetrics text on `settings::STATS_PORT`
//! (`GET /metrics`).
//!
//! Metrics are created once, in [`Metrics::new`], and updated where things
//! happen; label values come from small fixed sets (no per-connection or
//! per-client labels), so the cardinality is bounded.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `ambit_config_generation` | gauge | | the registry generation in force |
//! | `ambit_config_invalid_policies` | gauge | `kind` | policies that failed validation and are enforced fail-closed |

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{accept::reply, registry::Snapshot};

/// The `kind` label: a Kubernetes kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `AuthorizationPolicy`, `PeerAuthentication`, ...
    pub kind: &'static str,
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    config_generation: Gauge,
    invalid_policies: Family<KindLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let config_generation = Gauge::default();
        registry.register(
            "ambit_config_generation",
            "The configuration (registry) generation in force",
            config_generation.clone(),
        );
        let invalid_policies = Family::<KindLabel, Gauge>::default();
        registry.register(
            "ambit_config_invalid_policies",
            "Security policies that failed validation and are enforced fail-closed",
            invalid_policies.clone(),
        );
        Self {
            registry,
            config_generation,
            invalid_policies,
        }
    }

    /// Records what a new registry snapshot holds.
    pub fn observe_snapshot(&self, snapshot: &Snapshot) {
        self.config_generation
            .set(i64::try_from(snapshot.generation()).unwrap_or(i64::MAX));
        for (kind, count) in snapshot.invalid_policies() {
            self.invalid_policies
                .get_or_create(&KindLabel {
                    kind: kind.kubernetes_kind(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The registry, for a process that adds metrics of its own (the
    /// waypoint's request metrics) before it shares this.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    crate::accept::serve_http1(listener, "metrics", move |request| {
        respond(request, &metrics)
    })
    .await;
}

fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: GET /metrics\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_policies_are_counted_by_kind() {
        let yaml = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: shop}
spec: {rules: [{to: [{operation: {ports: [http]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: good, namespace: shop}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bad, namespace: shop}
spec: {portLevelMtls: {\"8080\": {mode: DISABLE}}}
";
        let mesh = crate::config::file::test_registry(yaml).unwrap();
        let metrics = Metrics::new();
        metrics.observe_snapshot(&mesh.snapshot());
        let text = metrics.encode();
        for line in [
            "ambit_config_invalid_policies{kind=\"AuthorizationPolicy\"} 1",
            "ambit_config_invalid_policies{kind=\"PeerAuthentication\"} 1",
            "ambit_config_invalid_policies{kind=\"RequestAuthentication\"} 0",
            "ambit_config_generation 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }
}
