//! Gateway API `gateway.networking.k8s.io/v1` Gateway: the fields a waypoint
//! needs (class, listeners, addresses).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `spec.listeners[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Listener {
    /// Unique name within the Gateway.
    pub name: String,
    /// Port the listener serves.
    pub port: u16,
    /// `HTTP`, `HTTPS`, `TCP`, `TLS` or `HBONE`.
    pub protocol: String,
    /// Host name to match, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// `spec.addresses[]` and `status.addresses[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GatewayAddress {
    /// `IPAddress` (default) or `Hostname`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The address itself (an IP address for `IPAddress`).
    pub value: String,
}

/// The observed state of a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GatewayStatus {
    /// Addresses bound to the Gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
}

/// A Gateway; class `istio-waypoint` declares a waypoint.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    plural = "gateways",
    shortname = "gtw",
    category = "gateway-api",
    status = "GatewayStatus",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The GatewayClass (`istio-waypoint` for waypoints).
    pub gateway_class_name: String,
    /// Listeners (at least one).
    pub listeners: Vec<Listener>,
    /// Requested addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
}
