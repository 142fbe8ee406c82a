//! The pods this node should capture, read from a local-mode YAML file of
//! Kubernetes objects. A minimal reader until the configuration sources and the
//! registry (`config`, `registry`) are wired in: it understands Namespaces (for
//! the `istio.io/dataplane-mode=ambient` label) and Pods (node, IPs, opt-out
//! label, and the `ambit.dev/netns` annotation naming the pod's namespace file).

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use anyhow::Context;
use serde::Deserialize;
use ztunnel::proxy::LocalPod;

const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
const NETNS_ANNOTATION: &str = "ambit.dev/netns";

#[derive(Debug, Deserialize)]
struct Object {
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: Option<PodSpec>,
    #[serde(default)]
    status: Option<PodStatus>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    host_network: bool,
}

#[derive(Debug, Deserialize)]
struct PodStatus {
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<PodIp>,
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PodIp {
    ip: String,
}

/// The file and the last good pod set read from it.
#[derive(Debug)]
pub struct LocalPods {
    path: PathBuf,
    node: String,
    last_text: Option<String>,
}

impl LocalPods {
    pub fn new(path: PathBuf, node: String) -> Self {
        Self {
            path,
            node,
            last_text: None,
        }
    }

    /// Reads the file; fails on a bad file.
    pub fn load(&mut self) -> anyhow::Result<Vec<LocalPod>> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let pods = self.parse(&text)?;
        self.last_text = Some(text);
        Ok(pods)
    }

    /// The new pod set when the file changed and is valid; a bad file is logged
    /// and the last good configuration stays in force.
    pub fn reload_if_changed(&mut self) -> Option<Vec<LocalPod>> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        if self.last_text.as_deref() == Some(text.as_str()) {
            return None;
        }
        match self.parse(&text) {
            Ok(pods) => {
                self.last_text = Some(text);
                tracing::info!(file = %self.path.display(), pods = pods.len(), "configuration reloaded");
                Some(pods)
            }
            Err(error) => {
                tracing::error!(file = %self.path.display(), error = format!("{error:#}"), "configuration rejected; keeping the last good one");
                self.last_text = Some(text);
                None
            }
        }
    }

    fn parse(&self, text: &str) -> anyhow::Result<Vec<LocalPod>> {
        let mut objects = Vec::new();
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml_ng::Value::deserialize(document)
                .with_context(|| format!("{}: document {index}", self.path.display()))?;
            if value.is_null() {
                continue;
            }
            let object: Object = serde_yaml_ng::from_value(value)
                .with_context(|| format!("{}: document {index}", self.path.display()))?;
            objects.push(object);
        }
        let ambient: Vec<&str> = objects
            .iter()
            .filter(|o| {
                o.kind == "Namespace"
                    && o.metadata.labels.get(DATAPLANE_MODE).map(String::as_str) == Some("ambient")
            })
            .map(|o| o.metadata.name.as_str())
            .collect();
        let mut pods = Vec::new();
        for object in objects.iter().filter(|o| o.kind == "Pod") {
            let namespace = object
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned());
            let spec = object.spec.as_ref();
            let on_node = spec.and_then(|s| s.node_name.as_deref()) == Some(self.node.as_str());
            let opted_out = object
                .metadata
                .labels
                .get(DATAPLANE_MODE)
                .map(String::as_str)
                == Some("none");
            if !on_node
                || opted_out
                || spec.is_some_and(|s| s.host_network)
                || !ambient.contains(&namespace.as_str())
            {
                continue;
            }
            let name = &object.metadata.name;
            let netns = object
                .metadata
                .annotations
                .get(NETNS_ANNOTATION)
                .with_context(|| format!("pod {namespace}/{name}: annotation {NETNS_ANNOTATION} is required in local mode"))?;
            let status = object.status.as_ref();
            let mut ips: Vec<String> = status
                .map(|s| s.pod_ips.iter().map(|p| p.ip.clone()).collect())
                .unwrap_or_default();
            if let Some(ip) = status
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ips.contains(ip))
            {
                ips.push(ip);
            }
            let ips = ips
                .iter()
                .map(|ip| {
                    ip.parse::<IpAddr>()
                        .with_context(|| format!("pod {namespace}/{name}: bad pod IP {ip:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            pods.push(LocalPod {
                uid: object
                    .metadata
                    .uid
                    .clone()
                    .unwrap_or_else(|| format!("{namespace}/{name}")),
                namespace,
                name: name.clone(),
                netns: PathBuf::from(netns),
                ips,
            });
        }
        Ok(pods)
    }
}
