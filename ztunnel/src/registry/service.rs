//! Services and their endpoints (EndpointSlices).

use std::{net::IpAddr, sync::Arc};

use serde::Serialize;

use super::{Labels, Name, ObjectKey};

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum Protocol {
    /// TCP (the Kubernetes default).
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

/// A Service's `targetPort`: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name, resolved per endpoint from its EndpointSlice.
    Name(Box<str>),
}

/// One entry of a Service's `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ServicePort {
    /// `name` (required when the Service has more than one port).
    pub name: Option<Box<str>>,
    /// `port`: the port on the VIP.
    pub port: u16,
    /// `targetPort` (defaults to `port`).
    pub target_port: TargetPort,
    /// `protocol`.
    pub protocol: Protocol,
    /// `appProtocol` (`http`, `http2`, `grpc`, `kubernetes.io/h2c`, ...): what
    /// a waypoint parses the port's traffic as, before the port's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<Box<str>>,
}

/// A Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `spec.clusterIPs` (empty for headless Services).
    pub vips: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `spec.selector` (`None`: endpoints are managed by hand).
    pub selector: Option<Labels>,
    /// `metadata.labels` (e.g. `istio.io/use-waypoint`).
    pub labels: Arc<Labels>,
}

impl Service {
    /// The port definition for `port` on a VIP.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// One port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct EndpointPort {
    /// `name` (matches the Service port's name; empty for unnamed).
    pub name: Option<Box<str>>,
    /// `port`: the resolved target port.
    pub port: u16,
    /// `protocol`.
    pub protocol: Protocol,
}

/// One endpoint of an EndpointSlice, in 40 bytes: a million of them are
/// part of the registry's budget (`docs/configuration.md`, "The registry").
///
/// Only the first of `addresses` is kept: the API says the addresses are
/// fungible and that consumers may use the first alone, which is all that
/// routing ever did. `targetRef` is not kept either: nothing decides on it, and
/// the pod behind an endpoint is the workload with its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The first of `addresses`.
    pub address: IpAddr,
    /// `conditions.ready` (`None` in Kubernetes counts as ready).
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// `nodeName`.
    pub node: Option<Name>,
    /// `zone` (`None`: not given; the zone of `node`, if known, stands in, see
    /// [`Snapshot::endpoint_zone`](super::Snapshot::endpoint_zone)).
    pub zone: Option<Name>,
}

/// An EndpointSlice: endpoints of one Service and the ports they listen on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointSet {
    /// Namespace and name of the slice.
    pub key: ObjectKey,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: Arc<str>,
    /// `ports`.
    pub ports: Vec<EndpointPort>,
    /// `endpoints`.
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSet {
    /// The key of the Service it belongs to.
    pub fn service_key(&self) -> ObjectKey {
        ObjectKey {
            namespace: self.key.namespace.clone(),
            name: Arc::clone(&self.service),
        }
    }

    /// The port on these endpoints that serves `port` of the Service: the slice
    /// port of the same name (both unnamed for a single-port Service).
    pub fn target_port(&self, port: &ServicePort) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
            .map(|p| p.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_port_matches_by_name() {
        let set = EndpointSet {
            key: ObjectKey::new("ns", "web-abc"),
            service: "web".into(),
            ports: vec![
                EndpointPort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: Protocol::Tcp,
                },
                EndpointPort {
                    name: Some("grpc".into()),
                    port: 9090,
                    protocol: Protocol::Tcp,
                },
            ],
            endpoints: vec![],
        };
        let port = |name: &str| ServicePort {
            name: Some(name.into()),
            port: 80,
            target_port: TargetPort::Name(name.into()),
            protocol: Protocol::Tcp,
            app_protocol: None,
        };
        assert_eq!(set.target_port(&port("grpc")), Some(9090));
        assert_eq!(set.target_port(&port("admin")), None);
        assert_eq!(set.service_key(), ObjectKey::new("ns", "web"));
    }

    #[test]
    fn an_endpoint_fits_its_budget() {
        assert!(size_of::<Endpoint>() <= 40, "{}", size_of::<Endpoint>());
    }
}
