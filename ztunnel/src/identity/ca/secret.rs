//! The CA root kept in a Kubernetes Secret (keys `ca.key` and `ca.crt`), created
//! with a fresh self-signed root when absent. When two CA replicas race to create
//! it, the loser reads the winner's.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, api::PostParams};

use super::root::{self, CERT_FILE, GENERATED_ROOT_VALIDITY, KEY_FILE, RootCa};
use crate::identity::spiffe::TrustDomain;

/// The Secret cannot provide a root.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("cannot {action} Secret {namespace}/{name}")]
    Api {
        /// `read` or `create`.
        action: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// A key is missing or is not UTF-8 PEM.
    #[error("Secret {namespace}/{name} has no usable {key} (expected PEM under data.{key})")]
    MissingKey {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// `ca.key` or `ca.crt`.
        key: &'static str,
    },
    /// The material in it is invalid, or a new root cannot be generated.
    #[error("Secret {namespace}/{name} does not hold a usable CA root")]
    Root {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong with the key material in the Secret.
        #[source]
        source: root::Error,
    },
}

/// Reads the root from Secret `namespace/name`, creating it when it does not exist.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &TrustDomain,
) -> Result<RootCa, Error> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_err = |action| {
        move |source| Error::Api {
            action,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        }
    };
    if let Some(secret) = api.get_opt(name).await.map_err(api_err("read"))? {
        return from_secret(&secret, namespace, name);
    }
    let root =
        RootCa::generate(trust_domain, GENERATED_ROOT_VALIDITY).map_err(|source| Error::Root {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (KEY_FILE.to_owned(), ByteString(root.key_pem().into_bytes())),
            (
                CERT_FILE.to_owned(),
                ByteString(root.cert_pem().as_bytes().to_vec()),
            ),
        ])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(
                namespace,
                name,
                trust_domain = %trust_domain,
                "no CA root Secret found: created one with a new self-signed root"
            );
            Ok(root)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Another replica created it first: use theirs.
            let secret = api.get(name).await.map_err(api_err("read"))?;
            from_secret(&secret, namespace, name)
        }
        Err(err) => Err(api_err("create")(err)),
    }
}

fn from_secret(secret: &Secret, namespace: &str, name: &str) -> Result<RootCa, Error> {
    let field = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .and_then(|value| std::str::from_utf8(&value.0).ok())
            .ok_or_else(|| Error::MissingKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                key,
            })
    };
    RootCa::from_pem(field(CERT_FILE)?, field(KEY_FILE)?).map_err(|source| Error::Root {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })
}
