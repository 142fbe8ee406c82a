//! [`JwksCache`]: the key sets of remote issuers, fetched from a `jwksUri` (or
//! the `jwks_uri` of an issuer's OpenID discovery document) once for all the
//! providers that name it, and kept fresh.
//!
//! # Fetching and refreshing (one [`RemoteJwks`] per URI)
//!
//! - First use: the request that needs the keys waits for the fetch (at most
//!   [`JwksSettings::fetch_timeout`], 5 s by default). Until one succeeds,
//!   tokens of the issuer are rejected (`JWKS not available`).
//! - Refresh: once the keys are older than [`JwksSettings::refresh_interval`]
//!   (20 min), the next request that uses them starts a fetch in the background
//!   and is verified with the keys at hand. There is no timer: a URI that no
//!   token needs costs nothing, and the entry goes away with its last provider.
//! - Unknown `kid`: a token naming a key the set lacks makes the request wait
//!   for an immediate refetch, at most one per URI per
//!   [`JwksSettings::min_refetch_interval`] (10 s), so tokens with made-up kids
//!   cost the issuer one request per interval, whatever their rate.
//! - Failure (error, timeout, unusable body): logged at warn; the last good set
//!   stays in use, and the next first-use or refresh attempt waits
//!   `min_refetch_interval`.
//! - Fetches of one URI never overlap; a request that finds one under way waits
//!   for it instead of starting another (or of being rejected: a cold start
//!   under concurrent traffic verifies every request once the keys arrive). A fetch runs in a task of its own, so a
//!   request that goes away does not cancel it.
//!
//! # Cost
//!
//! Getting the keys takes one uncontended mutex and clones an `Arc`; fetches
//! happen at most as described above.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{Instrument, debug, warn};
use ztunnel::config::ErrorChain;

use super::{
    fetch::{Fetch, FetchError, HttpsFetcher, TrustRoots},
    keys::{KeySet, KeySetError},
};

/// How often key sets are fetched; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksSettings {
    /// Age after which a request starts a background refresh (20 min).
    pub refresh_interval: Duration,
    /// At most one refetch for an unknown `kid` per URI per this long, and the
    /// wait after a failed attempt (10 s).
    pub min_refetch_interval: Duration,
    /// How long one fetch (discovery included) may take (5 s).
    pub fetch_timeout: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(20 * 60),
            min_refetch_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// Where a key set comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Endpoint {
    /// A `jwksUri`.
    Uri(Box<str>),
    /// The `jwks_uri` of `<issuer>/.well-known/openid-configuration`.
    Discovery(Box<str>),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uri(uri) => f.write_str(uri),
            Self::Discovery(issuer) => write!(f, "{issuer} (OpenID discovery)"),
        }
    }
}

/// The key sets of remote issuers, one per URI, shared by every provider
/// (of every destination) that names the URI. Cloning shares the cache.
///
/// A set is fetched when a token first needs it (the request waits, at most
/// [`JwksSettings::fetch_timeout`]); until a fetch succeeds its issuer's tokens
/// are rejected. Past [`JwksSettings::refresh_interval`] a request starts a
/// background refresh. A token with an unknown `kid` waits for a refetch, at
/// most one per URI per [`JwksSettings::min_refetch_interval`], which is also
/// the wait after a failed attempt. The last good set is kept through
/// failures, which are logged at warn.
///
/// An entry lives as long as a provider uses it: build a new
/// [`Authenticator`](super::Authenticator) before dropping the one it replaces
/// and the keys carry over.
#[derive(Clone)]
pub struct JwksCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    fetcher: Arc<dyn Fetch>,
    settings: JwksSettings,
    remotes: Mutex<HashMap<Endpoint, Weak<RemoteJwks>>>,
}

impl JwksCache {
    /// A cache that fetches with `fetcher`.
    pub fn new(fetcher: Arc<dyn Fetch>, settings: JwksSettings) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                fetcher,
                settings,
                remotes: Mutex::default(),
            }),
        }
    }

    /// A cache that fetches with an [`HttpsFetcher`] trusting `roots`.
    pub fn https(roots: &TrustRoots, settings: JwksSettings) -> Result<Self, FetchError> {
        Ok(Self::new(Arc::new(HttpsFetcher::new(roots)?), settings))
    }

    /// Whether the fetcher would ever fetch `uri` (see [`Fetch::check`]).
    pub(crate) fn check(&self, uri: &str) -> Result<(), FetchError> {
        self.inner.fetcher.check(uri)
    }

    /// The shared key set of `endpoint`.
    pub(crate) fn get(&self, endpoint: Endpoint) -> Arc<RemoteJwks> {
        let mut remotes = self
            .inner
            .remotes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(remote) = remotes.get(&endpoint).and_then(Weak::upgrade) {
            return remote;
        }
        remotes.retain(|_, remote| remote.strong_count() > 0);
        let remote = Arc::new(RemoteJwks {
            endpoint: endpoint.clone(),
            fetcher: Arc::clone(&self.inner.fetcher),
            settings: self.inner.settings,
            state: Mutex::default(),
            fetch_lock: tokio::sync::Mutex::new(()),
        });
        remotes.insert(endpoint, Arc::downgrade(&remote));
        remote
    }
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksCache")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// The key set of one endpoint, fetched and refreshed as the module docs say.
pub(crate) struct RemoteJwks {
    endpoint: Endpoint,
    fetcher: Arc<dyn Fetch>,
    settings: JwksSettings,
    state: Mutex<State>,
    /// Held for the whole of a fetch, so fetches never overlap.
    fetch_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    /// The body `keys` came from, to tell a changed set from the same one.
    body: Bytes,
    /// Bumped when `keys` changes (0 until the first set).
    generation: u64,
    /// Fetch attempts started, so that a waiting fetch can tell that another
    /// ran meanwhile.
    attempts: u64,
    last_success: Option<Instant>,
    last_attempt: Option<Instant>,
    last_kid_refetch: Option<Instant>,
    refreshing: bool,
    /// A fetch holds `fetch_lock` and is downloading.
    fetching: bool,
}

impl State {
    fn current(&self) -> Option<(Arc<KeySet>, u64)> {
        self.keys.as_ref().map(|k| (Arc::clone(k), self.generation))
    }
}

/// Why a fetch brought no usable key set.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error("fetch failed")]
    Fetch(#[source] FetchError),
    #[error("fetch timed out after {0:?}")]
    Timeout(Duration),
    #[error("the key set is unusable")]
    KeySet(#[source] KeySetError),
}

#[derive(serde::Deserialize)]
struct Discovery {
    /// Must be the issuer asked (OpenID Connect Discovery 1.0, section 4.3).
    issuer: Option<String>,
    jwks_uri: String,
}

impl RemoteJwks {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The generation of the current keys (0 before any), starting a
    /// background refresh when they are due for one: a token served from the
    /// verified-token cache keeps its issuer's keys fresh as well, so a key
    /// the issuer dropped stops verifying anything within the refresh
    /// interval.
    pub(crate) fn generation(self: &Arc<Self>) -> u64 {
        let mut state = self.state();
        let generation = state.generation;
        if state.keys.is_some() {
            self.refresh_if_due(&mut state, Instant::now());
        }
        generation
    }

    /// Starts a background refresh when the keys are past the refresh
    /// interval, no attempt failed recently and none is running. Called with
    /// the state locked (`spawn_fetch` never waits, and the fetch takes the
    /// lock only later).
    fn refresh_if_due(self: &Arc<Self>, state: &mut MutexGuard<'_, State>, now: Instant) {
        let may_try = state
            .last_attempt
            .is_none_or(|t| now.duration_since(t) >= self.settings.min_refetch_interval);
        let stale = state
            .last_success
            .is_none_or(|t| now.duration_since(t) >= self.settings.refresh_interval);
        if stale && may_try && !state.refreshing {
            state.refreshing = true;
            let seen = state.attempts;
            if self.spawn_fetch(seen).is_none() {
                state.refreshing = false;
            }
        }
    }

    /// The keys and their generation, fetching them first if there are none
    /// yet (and no recent attempt failed).
    pub(crate) async fn current(self: &Arc<Self>) -> Option<(Arc<KeySet>, u64)> {
        let now = Instant::now();
        let seen = {
            let mut state = self.state();
            let may_try = state
                .last_attempt
                .is_none_or(|t| now.duration_since(t) >= self.settings.min_refetch_interval);
            if let Some(current) = state.current() {
                self.refresh_if_due(&mut state, now);
                return Some(current);
            }
            if !may_try {
                if !state.fetching {
                    return None;
                }
                // The first fetch is under way: wait for it rather than
                // reject the token.
                None
            } else {
                Some(state.attempts)
            }
        };
        match seen {
            Some(seen) => {
                self.fetch_and_wait(seen).await;
                self.state().current()
            }
            None => self.after_fetch_under_way().await,
        }
    }

    /// Waits for the fetch under way (it holds `fetch_lock` throughout, and
    /// is bounded by the fetch timeout), then gives the keys it left.
    async fn after_fetch_under_way(&self) -> Option<(Arc<KeySet>, u64)> {
        drop(self.fetch_lock.lock().await);
        self.state().current()
    }

    /// Refetches because a token names a `kid` that the keys of generation
    /// `seen` lack; returns the new keys if they changed, `None` if they did
    /// not or the refetch is rate-limited.
    pub(crate) async fn refetch_for_kid(
        self: &Arc<Self>,
        seen_generation: u64,
    ) -> Option<(Arc<KeySet>, u64)> {
        let now = Instant::now();
        let seen = {
            let mut state = self.state();
            if state.generation != seen_generation {
                return state.current();
            }
            if state
                .last_kid_refetch
                .is_some_and(|t| now.duration_since(t) < self.settings.min_refetch_interval)
            {
                if !state.fetching {
                    return None;
                }
                // A refetch is under way: its keys may have the kid.
                None
            } else {
                state.last_kid_refetch = Some(now);
                Some(state.attempts)
            }
        };
        let Some(seen) = seen else {
            return self
                .after_fetch_under_way()
                .await
                .filter(|(_, generation)| *generation != seen_generation);
        };
        self.fetch_and_wait(seen).await;
        let state = self.state();
        if state.generation == seen_generation {
            return None;
        }
        state.current()
    }

    fn spawn_fetch(self: &Arc<Self>, seen: u64) -> Option<tokio::task::JoinHandle<()>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let this = Arc::clone(self);
        let span = tracing::debug_span!("jwks", uri = %self.endpoint);
        Some(runtime.spawn(async move { this.fetch(seen).await }.instrument(span)))
    }

    async fn fetch_and_wait(self: &Arc<Self>, seen: u64) {
        match self.spawn_fetch(seen) {
            Some(task) => {
                if let Err(error) = task.await {
                    warn!(uri = %self.endpoint, error = %error, "jwks fetch task failed");
                }
            }
            None => self.fetch(seen).await,
        }
    }

    /// One fetch, unless another started since the caller saw `seen`
    /// attempts.
    async fn fetch(&self, seen: u64) {
        let _serial = self.fetch_lock.lock().await;
        {
            let mut state = self.state();
            if state.attempts != seen {
                state.refreshing = false;
                return;
            }
            state.attempts += 1;
            state.last_attempt = Some(Instant::now());
            state.fetching = true;
        }
        let timeout = self.settings.fetch_timeout;
        let result = match tokio::time::timeout(timeout, self.download()).await {
            Ok(Ok(body)) => KeySet::parse(&body)
                .map(|keys| (body, keys))
                .map_err(RefreshError::KeySet),
            Ok(Err(error)) => Err(RefreshError::Fetch(error)),
            Err(_elapsed) => Err(RefreshError::Timeout(timeout)),
        };
        let mut state = self.state();
        state.refreshing = false;
        state.fetching = false;
        match result {
            Ok((body, keys)) => {
                state.last_success = Some(Instant::now());
                if state.body != body {
                    debug!(uri = %self.endpoint, keys = keys.len(), "jwks updated");
                    state.generation += 1;
                    state.body = body;
                    state.keys = Some(Arc::new(keys));
                }
            }
            Err(error) => warn!(
                uri = %self.endpoint,
                error = %ErrorChain(&error),
                have_keys = state.keys.is_some(),
                "jwks fetch failed; keeping the last good keys"
            ),
        }
    }

    async fn download(&self) -> Result<Bytes, FetchError> {
        match &self.endpoint {
            Endpoint::Uri(uri) => self.fetcher.fetch(uri).await,
            Endpoint::Discovery(issuer) => {
                let uri = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let document = self.fetcher.fetch(&uri).await?;
                let discovery: Discovery =
                    serde_json::from_slice(&document).map_err(|source| FetchError::Discovery {
                        uri: uri.as_str().into(),
                        source,
                    })?;
                if let Some(found) = &discovery.issuer
                    && found.trim_end_matches('/') != issuer.trim_end_matches('/')
                {
                    return Err(FetchError::DiscoveryIssuer {
                        uri: uri.into(),
                        found: found.as_str().into(),
                    });
                }
                self.fetcher.fetch(&discovery.jwks_uri).await
            }
        }
    }
}
