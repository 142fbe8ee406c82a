//! Local mode: the CA in-process, from a directory of key material, so the demo and
//! the tests need nothing else.
//!
//! The directory holds `ca.key`/`ca.crt` (created when absent), `tokens` (caller
//! tokens, `<token> <node-name>` or `<token> <namespace>/<service-account>`
//! lines; created empty, see [`LocalCa::add_node`] and [`LocalCa::add_workload`])
//! and `bundle.pem`, the trust bundle ztunnels load (written at start: the root
//! plus any extra roots).

use std::{
    fs,
    io::Write,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{sync::oneshot, task::JoinHandle};

use super::server::{self, CaServerConfig, NodeAuthConfig, RootSource};
use crate::{
    identity::{
        auth::{NodeAuthorizer, NodeName},
        bundle::{self, TrustBundle},
        client::{CaClientConfig, TokenSource},
    },
    settings,
};

/// File name of the trust bundle written by the local CA.
pub const BUNDLE_FILE: &str = "bundle.pem";

/// The local CA cannot start or be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is not a local one.
    #[error("the local CA needs a key directory and a token file: {reason}")]
    Config {
        /// What is wrong.
        reason: &'static str,
    },
    /// The server cannot be built.
    #[error("cannot start the local CA")]
    Server(#[from] server::Error),
    /// A file of the directory cannot be written.
    #[error("cannot write {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The written bundle cannot be read back.
    #[error("the local CA's trust bundle is unusable")]
    Bundle(#[from] bundle::Error),
}

/// A running in-process CA. Stops when [`LocalCa::shutdown`] is called or it is
/// dropped.
#[derive(Debug)]
pub struct LocalCa {
    addr: SocketAddr,
    dir: PathBuf,
    token_file: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), server::Error>>,
}

impl LocalCa {
    /// Starts a CA from `config` (its root must be a directory and its node
    /// authentication a token file, as [`CaServerConfig::local`] makes them).
    pub async fn start(
        config: CaServerConfig,
        authorizer: Arc<dyn NodeAuthorizer>,
    ) -> Result<Self, Error> {
        let RootSource::Directory(dir) = config.root.clone() else {
            return Err(Error::Config {
                reason: "the root source is not a directory",
            });
        };
        let NodeAuthConfig::TokenFile(token_file) = config.node_auth.clone() else {
            return Err(Error::Config {
                reason: "node authentication is not a token file",
            });
        };
        if let Some(parent) = token_file.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        append(&token_file, "")?;
        let server = server::build(&config, authorizer, None).await?;
        let addr = server.local_addr()?;
        write_bundle(&dir, server.roots_pem())?;
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            dir,
            token_file,
            shutdown: Some(tx),
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The trust bundle file it wrote.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir.join(BUNDLE_FILE)
    }

    /// Its trust bundle, read from [`LocalCa::bundle_path`].
    pub fn trust_bundle(&self) -> Result<TrustBundle, Error> {
        Ok(TrustBundle::from_file(&self.bundle_path())?)
    }

    /// Registers a new random token for `node`'s ztunnel and returns it.
    pub fn add_node(&self, node: &NodeName) -> Result<String, Error> {
        self.add_token(node.as_str())
    }

    /// Registers a new random token for a workload running as
    /// `namespace/service_account` (a waypoint) and returns it: it may obtain
    /// that identity only.
    pub fn add_workload(&self, namespace: &str, service_account: &str) -> Result<String, Error> {
        self.add_token(&format!("{namespace}/{service_account}"))
    }

    fn add_token(&self, holder: &str) -> Result<String, Error> {
        let token = new_token().map_err(|source| Error::Io {
            path: self.token_file.clone(),
            source,
        })?;
        append(&self.token_file, &format!("{token} {holder}\n"))?;
        Ok(token)
    }

    /// A client configuration for a ztunnel on the node that owns `token`.
    pub fn client_config(&self, token: String) -> CaClientConfig {
        CaClientConfig {
            address: self.addr.to_string(),
            server_name: settings::CA_SERVER_NAMES[0].to_owned(),
            token: TokenSource::Static(token),
            timeout: settings::CA_REQUEST_TIMEOUT,
        }
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(result) => Ok(result?),
            // Aborted or panicked: nothing left to stop.
            Err(_) => Ok(()),
        }
    }
}

impl Drop for LocalCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A random CA token (48 hex digits) for the local token file.
pub fn new_token() -> std::io::Result<String> {
    let mut raw = [0u8; 24];
    aws_lc_rs::rand::fill(&mut raw)
        .map_err(|_| std::io::Error::other("no randomness for a token"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Appends `text` to `path`, creating it with mode 0600.
fn append(path: &Path, text: &str) -> Result<(), Error> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(text.as_bytes()).map_err(io_err(path))
}

fn write_bundle(dir: &Path, roots: &[String]) -> Result<(), Error> {
    let path = dir.join(BUNDLE_FILE);
    let tmp = dir.join(format!("{BUNDLE_FILE}.tmp"));
    fs::write(&tmp, roots.concat()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))
}
