//! The identity of a process that is a client of a remote mesh CA: a node's
//! ztunnel in a cluster, or a waypoint. It holds no CA key: it reads the trust
//! bundle from a file (a ConfigMap mount; watched, so root rotation needs no
//! restart), authenticates with a token from a file (a projected service-account
//! token, re-read at every request since it rotates) and asks the CA's gRPC API
//! for its certificates, which the [`CertManager`] caches and renews; while the
//! CA is unreachable the current certificates stay in use until they expire.

use std::{net::IpAddr, path::PathBuf, sync::Arc};

use super::{
    BundleWatcher, CertManager, ManagerConfig, TrustBundle,
    client::{self, CaClient, CaClientConfig, TokenSource},
};
use crate::settings;

/// How to reach the CA.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RemoteCa {
    /// `host:port` of the CA's API.
    pub address: String,
    /// The name the CA's serving certificate must carry; `None`: the host of
    /// `address` when it is a name, else the CA's default name (`ambit-ca`).
    pub server_name: Option<String>,
    /// The caller's token (re-read for every request).
    pub token_file: PathBuf,
    /// The trust bundle (PEM roots; watched for changes).
    pub root_file: PathBuf,
}

/// The CA cannot be used as configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The trust bundle file cannot be read or is not a set of roots.
    #[error("cannot load the mesh trust bundle")]
    Bundle(#[from] super::bundle::Error),
    /// The client cannot be configured.
    #[error("cannot configure the CA client")]
    Client(#[from] client::Error),
}

impl RemoteCa {
    /// The name checked in the CA's certificate.
    pub fn server_name(&self) -> String {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.parse::<IpAddr>().is_ok() {
            settings::CA_SERVER_NAMES[0].to_owned()
        } else {
            host.to_owned()
        }
    }

    /// Loads the trust bundle, starts watching it, and returns the certificate
    /// manager asking this CA. Must run inside a tokio runtime.
    pub fn start(&self) -> Result<(CertManager, TrustBundle), Error> {
        let bundle = TrustBundle::from_file(&self.root_file)?;
        tokio::spawn(
            BundleWatcher::new(
                bundle.clone(),
                &self.root_file,
                settings::TRUST_BUNDLE_POLL_INTERVAL,
            )
            .run(),
        );
        let client = CaClient::new(
            CaClientConfig {
                address: self.address.clone(),
                server_name: self.server_name(),
                token: TokenSource::File(self.token_file.clone()),
                timeout: settings::CA_REQUEST_TIMEOUT,
            },
            bundle.clone(),
        )?;
        let certs = CertManager::new(Arc::new(client), bundle.clone(), ManagerConfig::default());
        Ok((certs, bundle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(address: &str) -> RemoteCa {
        RemoteCa {
            address: address.to_owned(),
            server_name: None,
            token_file: "/t".into(),
            root_file: "/r".into(),
        }
    }

    #[test]
    fn the_server_name_follows_the_address() {
        assert_eq!(
            ca("ambit-ca.ambit-system.svc:15012").server_name(),
            "ambit-ca.ambit-system.svc"
        );
        assert_eq!(ca("198.18.0.2:15012").server_name(), "ambit-ca");
        assert_eq!(ca("[fd00:a::2]:15012").server_name(), "ambit-ca");
        let mut named = ca("198.18.0.2:15012");
        named.server_name = Some("ca.example".into());
        assert_eq!(named.server_name(), "ca.example");
    }
}
