//! `CNI_ARGS`: the `K=V;K=V` string the runtime passes, and the pod it names.
//!
//! Kubernetes runtimes (containerd, CRI-O) put the pod's namespace, name and UID
//! there as `K8S_POD_NAMESPACE`, `K8S_POD_NAME` and `K8S_POD_UID`, next to keys
//! such as `IgnoreUnknown=1` or `K8S_POD_INFRA_CONTAINER_ID` that this plugin
//! ignores.

use std::{collections::HashMap, fmt};

use serde::Serialize;

/// The key of the pod's Kubernetes namespace.
pub const POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
/// The key of the pod's name.
pub const POD_NAME: &str = "K8S_POD_NAME";
/// The key of the pod's UID.
pub const POD_UID: &str = "K8S_POD_UID";

/// Errors reading the pod out of `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// An entry between two `;` has no `=`.
    InvalidPair {
        /// The entry as written.
        pair: String,
    },
    /// Keys the plugin needs are absent or empty (all of them when `CNI_ARGS`
    /// itself is unset).
    Missing {
        /// The missing keys, in the order namespace, name, UID.
        keys: Vec<&'static str>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidPair { pair } => write!(f, "CNI_ARGS entry {pair:?} is not KEY=VALUE"),
            Error::Missing { keys } => write!(f, "CNI_ARGS lacks {}", keys.join(", ")),
        }
    }
}

impl std::error::Error for Error {}

/// The Kubernetes pod a CNI invocation is for, as sent to ztunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodRef {
    /// The pod's Kubernetes namespace: what the enrolled-namespaces file lists.
    pub namespace: String,
    /// The pod's name within its namespace.
    pub name: String,
    /// The pod's UID, which tells apart two pods that reused one name.
    pub uid: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Splits `K=V;K=V` into its pairs. Empty entries (a trailing `;`) are skipped;
/// a value may itself contain `=`; a repeated key keeps its last value.
pub fn parse(args: &str) -> Result<HashMap<&str, &str>, Error> {
    let mut pairs = HashMap::new();
    for entry in args.split(';').filter(|entry| !entry.is_empty()) {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(Error::InvalidPair {
                pair: entry.to_owned(),
            });
        };
        pairs.insert(key, value);
    }
    Ok(pairs)
}

/// The pod named by `CNI_ARGS` (`None` when the variable is unset). Every
/// missing key is named in the error, not only the first.
pub fn pod(args: Option<&str>) -> Result<PodRef, Error> {
    let pairs = parse(args.unwrap_or_default())?;
    let get = |key| {
        pairs
            .get(key)
            .filter(|value| !value.is_empty())
            .map(|value| (*value).to_owned())
    };
    match (get(POD_NAMESPACE), get(POD_NAME), get(POD_UID)) {
        (Some(namespace), Some(name), Some(uid)) => Ok(PodRef {
            namespace,
            name,
            uid,
        }),
        (namespace, name, uid) => {
            let keys = [(namespace, POD_NAMESPACE), (name, POD_NAME), (uid, POD_UID)]
                .into_iter()
                .filter(|(value, _)| value.is_none())
                .map(|(_, key)| key)
                .collect();
            Err(Error::Missing { keys })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINERD: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;\
        K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=7f3c-11";

    #[test]
    fn reads_the_pod_from_containerd_args() {
        let pod = pod(Some(CONTAINERD)).unwrap();
        assert_eq!(
            pod,
            PodRef {
                namespace: "demo".into(),
                name: "web-1".into(),
                uid: "7f3c-11".into()
            }
        );
        assert_eq!(pod.to_string(), "demo/web-1");
    }

    #[test]
    fn values_may_contain_equals_and_entries_may_be_empty() {
        let pairs = parse("A=b=c;;B=;").unwrap();
        assert_eq!(pairs.get("A"), Some(&"b=c"));
        assert_eq!(pairs.get("B"), Some(&""));
        assert_eq!(pairs.len(), 2);
    }

    #[test]
    fn last_value_of_a_repeated_key_wins() {
        assert_eq!(parse("A=1;A=2").unwrap().get("A"), Some(&"2"));
    }

    #[test]
    fn entry_without_equals_is_rejected() {
        assert_eq!(
            parse("A=1;oops"),
            Err(Error::InvalidPair {
                pair: "oops".into()
            })
        );
    }

    #[test]
    fn missing_uid_is_named() {
        let error = pod(Some("K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1")).unwrap_err();
        assert_eq!(
            error,
            Error::Missing {
                keys: vec![POD_UID]
            }
        );
        assert_eq!(error.to_string(), "CNI_ARGS lacks K8S_POD_UID");
    }

    #[test]
    fn empty_value_counts_as_missing() {
        let error = pod(Some("K8S_POD_NAMESPACE=;K8S_POD_NAME=web-1;K8S_POD_UID=u")).unwrap_err();
        assert_eq!(
            error,
            Error::Missing {
                keys: vec![POD_NAMESPACE]
            }
        );
    }

    #[test]
    fn unset_args_lack_every_key() {
        assert_eq!(
            pod(None).unwrap_err().to_string(),
            "CNI_ARGS lacks K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID"
        );
    }
}
