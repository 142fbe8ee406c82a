//! Authorization for the CA: who is calling ([`TokenAuthenticator`]: a bearer
//! token to a [`Caller`], a node's ztunnel or one workload) and what it may ask
//! for: a node, the service accounts with a pod on it ([`NodeAuthorizer`]); a
//! workload (a waypoint), its own service account only.
//!
//! Implementations here: a token file for local mode ([`TokenFile`]), Kubernetes
//! `TokenReview` ([`token_review::TokenReviewAuthenticator`]), and an in-memory authorizer
//! for tests and local mode ([`StaticNodeAuthorizer`]). The workload registry
//! implements [`NodeAuthorizer`] in a cluster. Every failure is a refusal.

pub mod token_review;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Mutex, RwLock},
    time::SystemTime,
};

/// A boxed future, for the object-safe async trait methods of this module.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The name of a Kubernetes node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

impl NodeName {
    /// Wraps a node name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The node name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who a CA caller is, as its token proves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// A node's ztunnel: it may obtain certificates for the service accounts
    /// that have a pod on its node.
    Node(NodeName),
    /// A workload running as one service account (a waypoint): it may obtain
    /// a certificate for that service account only.
    Workload {
        /// The service account's namespace.
        namespace: String,
        /// The service account.
        service_account: String,
    },
}

impl Caller {
    /// The node, for a node's caller (empty otherwise): audit log field.
    pub fn node(&self) -> &str {
        match self {
            Self::Node(node) => node.as_str(),
            Self::Workload { .. } => "",
        }
    }

    /// `namespace/service-account` for a workload caller (empty otherwise):
    /// audit log field.
    pub fn workload(&self) -> String {
        match self {
            Self::Node(_) => String::new(),
            Self::Workload {
                namespace,
                service_account,
            } => format!("{namespace}/{service_account}"),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Node(node) => write!(f, "node {node}"),
            Self::Workload {
                namespace,
                service_account,
            } => write!(f, "workload {namespace}/{service_account}"),
        }
    }
}

/// A token that does not authenticate a caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The token is not one of a node (unknown, expired, wrong audience, wrong
    /// service account, no node binding).
    #[error("the token is not valid: {reason}")]
    Invalid {
        /// Why, without the token itself.
        reason: String,
    },
    /// The token source could not be consulted; the request is refused all the same.
    #[error("cannot check the token")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The token file cannot be read or parsed.
    #[error("token file {path} is invalid at line {line}: {reason}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// 1-based line, 0 when the file cannot be read at all.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Maps a bearer token to its holder.
pub trait TokenAuthenticator: Send + Sync {
    /// Who `token` belongs to, or why it is refused.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, Error>>;
}

/// Answers whether a service account has a pod scheduled on a node.
pub trait NodeAuthorizer: Send + Sync {
    /// True when a pod of `namespace`/`service_account` is scheduled on `node`.
    fn has_pod_on_node(&self, namespace: &str, service_account: &str, node: &NodeName) -> bool;
}

/// An in-memory [`NodeAuthorizer`]: the set of (node, namespace, service account)
/// triples with a pod. For tests and local mode.
#[derive(Debug, Default)]
pub struct StaticNodeAuthorizer {
    pods: RwLock<HashSet<(NodeName, String, String)>>,
}

impl StaticNodeAuthorizer {
    /// An authorizer that allows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a pod of `namespace`/`service_account` on `node`.
    pub fn add(&self, node: &NodeName, namespace: &str, service_account: &str) {
        self.pods
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((
                node.clone(),
                namespace.to_owned(),
                service_account.to_owned(),
            ));
    }

    /// Forgets it.
    pub fn remove(&self, node: &NodeName, namespace: &str, service_account: &str) {
        self.pods
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(
                node.clone(),
                namespace.to_owned(),
                service_account.to_owned(),
            ));
    }
}

impl NodeAuthorizer for StaticNodeAuthorizer {
    fn has_pod_on_node(&self, namespace: &str, service_account: &str, node: &NodeName) -> bool {
        self.pods
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&(
                node.clone(),
                namespace.to_owned(),
                service_account.to_owned(),
            ))
    }
}

/// Local-mode [`TokenAuthenticator`]: a file of `<token> <node-name>` lines (a
/// node's ztunnel) and `<token> <namespace>/<service-account>` lines (a
/// workload, such as a waypoint; node names never contain `/`). Blank lines and
/// `#` comments are allowed. Re-read when its modification time or size
/// changes; a file that becomes invalid is reported and the last good tokens
/// stay. Tokens are kept only as SHA-256 digests.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    state: Mutex<TokenFileState>,
}

#[derive(Debug, Default)]
struct TokenFileState {
    stamp: Option<(SystemTime, u64)>,
    tokens: HashMap<[u8; 32], Caller>,
}

impl TokenFile {
    /// Reads `path`; fails if it cannot be read or parsed.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let file = Self {
            path: path.into(),
            state: Mutex::new(TokenFileState::default()),
        };
        file.reload_if_changed()?;
        Ok(file)
    }

    fn reload_if_changed(&self) -> Result<(), Error> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stamp = std::fs::metadata(&self.path)
            .and_then(|m| Ok((m.modified()?, m.len())))
            .map_err(|err| self.error(0, err.to_string()))?;
        if state.stamp == Some(stamp) {
            return Ok(());
        }
        let text =
            std::fs::read_to_string(&self.path).map_err(|err| self.error(0, err.to_string()))?;
        state.tokens = parse_token_file(&self.path, &text)?;
        state.stamp = Some(stamp);
        tracing::info!(path = %self.path.display(), callers = state.tokens.len(), "loaded CA tokens");
        Ok(())
    }

    fn error(&self, line: usize, reason: String) -> Error {
        Error::TokenFile {
            path: self.path.clone(),
            line,
            reason,
        }
    }
}

fn parse_token_file(path: &Path, text: &str) -> Result<HashMap<[u8; 32], Caller>, Error> {
    let mut tokens = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: &str| Error::TokenFile {
            path: path.to_owned(),
            line: index + 1,
            reason: reason.to_owned(),
        };
        let mut fields = line.split_whitespace();
        let (Some(token), Some(holder), None) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(err(
                "expected `<token> <node-name>` or `<token> <namespace>/<service-account>`",
            ));
        };
        if token.len() < 16 {
            return Err(err("the token is shorter than 16 characters"));
        }
        let caller = match holder.split_once('/') {
            None => Caller::Node(NodeName::new(holder)),
            Some((namespace, service_account))
                if !namespace.is_empty()
                    && !service_account.is_empty()
                    && !service_account.contains('/') =>
            {
                Caller::Workload {
                    namespace: namespace.to_owned(),
                    service_account: service_account.to_owned(),
                }
            }
            Some(_) => return Err(err("expected `<namespace>/<service-account>`")),
        };
        if tokens.insert(digest(token), caller).is_some() {
            return Err(err("the token appears twice"));
        }
    }
    Ok(tokens)
}

fn digest(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

impl TokenAuthenticator for TokenFile {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, Error>> {
        Box::pin(async move {
            if let Err(err) = self.reload_if_changed() {
                // Keep serving with the last good tokens.
                tracing::error!(error = %err, "cannot reload the node token file; keeping the last good one");
            }
            let state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state
                .tokens
                .get(&digest(token))
                .cloned()
                .ok_or_else(|| Error::Invalid {
                    reason: "unknown token".to_owned(),
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ambit-tokens-{name}-{}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test]
    async fn token_file_maps_tokens_to_nodes_and_reloads() {
        let path = temp_file(
            "reload",
            "# nodes\naaaaaaaaaaaaaaaa node-a\n\nbbbbbbbbbbbbbbbb node-b\nwwwwwwwwwwwwwwww shop/waypoint\n",
        );
        let file = TokenFile::open(&path).unwrap();
        assert_eq!(
            file.authenticate("aaaaaaaaaaaaaaaa").await.unwrap(),
            Caller::Node(NodeName::new("node-a"))
        );
        assert_eq!(
            file.authenticate("wwwwwwwwwwwwwwww").await.unwrap(),
            Caller::Workload {
                namespace: "shop".into(),
                service_account: "waypoint".into()
            }
        );
        assert!(matches!(
            file.authenticate("nope").await,
            Err(Error::Invalid { .. })
        ));
        // A new file (different size) replaces the tokens.
        std::fs::write(&path, "cccccccccccccccccc node-c\n").unwrap();
        assert_eq!(
            file.authenticate("cccccccccccccccccc").await.unwrap(),
            Caller::Node(NodeName::new("node-c"))
        );
        assert!(file.authenticate("aaaaaaaaaaaaaaaa").await.is_err());
        // A broken file keeps the last good tokens.
        std::fs::write(&path, "only-one-field\n").unwrap();
        assert_eq!(
            file.authenticate("cccccccccccccccccc").await.unwrap(),
            Caller::Node(NodeName::new("node-c"))
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn bad_token_files_name_the_line() {
        for (text, reason) in [
            ("aaaaaaaaaaaaaaaa\n", "expected `<token> <node-name>`"),
            (
                "aaaaaaaaaaaaaaaa n extra\n",
                "expected `<token> <node-name>`",
            ),
            (
                "aaaaaaaaaaaaaaaa shop/\n",
                "expected `<namespace>/<service-account>`",
            ),
            (
                "aaaaaaaaaaaaaaaa a/b/c\n",
                "expected `<namespace>/<service-account>`",
            ),
            ("short n\n", "shorter than 16"),
            ("aaaaaaaaaaaaaaaa n\naaaaaaaaaaaaaaaa m\n", "appears twice"),
        ] {
            let err = parse_token_file(Path::new("t"), text).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(reason), "{text}");
            assert!(text.contains("token file t is invalid at line"), "{text}");
        }
        let err = TokenFile::open("/nonexistent/ambit-tokens").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/ambit-tokens"),
            "{err}"
        );
    }

    #[test]
    fn static_authorizer_answers_per_node() {
        let authz = StaticNodeAuthorizer::new();
        let a = NodeName::new("a");
        authz.add(&a, "shop", "cart");
        assert!(authz.has_pod_on_node("shop", "cart", &a));
        assert!(!authz.has_pod_on_node("shop", "cart", &NodeName::new("b")));
        assert!(!authz.has_pod_on_node("shop", "admin", &a));
        authz.remove(&a, "shop", "cart");
        assert!(!authz.has_pod_on_node("shop", "cart", &a));
    }
}
