//! The certificate manager: one certificate per workload identity (service
//! account) on this node, requested when first needed, cached, and renewed in the
//! background at half its lifetime (with jitter). While the CA is unreachable it
//! retries with exponential backoff and the current certificate stays in use until
//! it expires.
//!
//! Private keys are generated here (ECDSA P-256), never leave the process and are
//! never printed: [`WorkloadCert`]'s `Debug` leaves the key out.

mod cert;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::{sync::watch, task::AbortHandle};

pub use cert::WorkloadCert;

use super::{
    bundle::TrustBundle,
    client::{self, CertificateSigner},
    csr, error_chain,
    spiffe::Identity,
};
use crate::settings;

/// A certificate that cannot be had.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No valid certificate, and the last request for one failed.
    #[error("no certificate is available for {identity}: {reason}")]
    Unavailable {
        /// The identity.
        identity: String,
        /// The last failure, with its causes.
        reason: String,
    },
    /// The manager was shut down while waiting.
    #[error("the certificate manager stopped")]
    Stopped,
}

/// Lifetimes and retry timing.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Lifetime asked of the CA (it may clamp it).
    pub validity: Duration,
    /// First retry delay after a failure.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            validity: settings::CERT_DEFAULT_VALIDITY,
            initial_backoff: settings::CERT_RETRY_INITIAL_BACKOFF,
            max_backoff: settings::CERT_RETRY_MAX_BACKOFF,
        }
    }
}

/// The state of one identity.
#[derive(Clone)]
enum CertState {
    /// The first request is in flight.
    Initializing,
    /// A certificate is cached; `last_error` is set while renewals fail.
    Available {
        cert: Arc<WorkloadCert>,
        last_error: Option<String>,
    },
    /// No usable certificate; the last request failed.
    Unavailable { error: String },
}

struct Entry {
    state: watch::Receiver<CertState>,
    task: AbortHandle,
}

struct Inner {
    signer: Arc<dyn CertificateSigner>,
    bundle: TrustBundle,
    config: ManagerConfig,
    entries: Mutex<HashMap<Identity, Entry>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let entries = self
            .entries
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for entry in entries.values() {
            entry.task.abort();
        }
    }
}

/// Owns the workload certificates of this node and their renewal tasks. Cheap to
/// clone; the tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// One identity's state, for the admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSnapshot {
    /// The SPIFFE ID.
    pub identity: String,
    /// `initializing`, `available`, `renewal_failing`, `expired` or `unavailable`.
    pub state: &'static str,
    /// Serial number of the current certificate, lowercase hex.
    pub serial: Option<String>,
    /// RFC 3339 start of validity.
    pub not_before: Option<String>,
    /// RFC 3339 end of validity.
    pub not_after: Option<String>,
    /// The last failure, if the last request failed.
    pub last_error: Option<String>,
}

impl CertManager {
    /// A manager asking `signer` for certificates that must chain to `bundle`.
    /// Must be created inside a tokio runtime (it spawns renewal tasks).
    pub fn new(
        signer: Arc<dyn CertificateSigner>,
        bundle: TrustBundle,
        config: ManagerConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                signer,
                bundle,
                config,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The certificate of `identity`: the cached one, or, on first use, the one
    /// requested now (waiting for it). Fails when no valid certificate exists and
    /// the last request failed; renewal continues in the background.
    pub async fn fetch(&self, identity: &Identity) -> Result<Arc<WorkloadCert>, Error> {
        let mut state = self.subscribe(identity);
        loop {
            {
                let current = state.borrow_and_update();
                match &*current {
                    CertState::Available { cert, .. } if !cert.is_expired_at(SystemTime::now()) => {
                        return Ok(cert.clone());
                    }
                    CertState::Available { last_error, .. } => {
                        return Err(Error::Unavailable {
                            identity: identity.to_string(),
                            reason: format!(
                                "the certificate expired and renewal fails: {}",
                                last_error.as_deref().unwrap_or("renewal pending")
                            ),
                        });
                    }
                    CertState::Unavailable { error } => {
                        return Err(Error::Unavailable {
                            identity: identity.to_string(),
                            reason: error.clone(),
                        });
                    }
                    CertState::Initializing => {}
                }
            }
            state.changed().await.map_err(|_| Error::Stopped)?;
        }
    }

    /// Stops renewing `identity` and drops its certificate (no pod of it is left).
    pub fn forget(&self, identity: &Identity) {
        let removed = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(identity);
        if let Some(entry) = removed {
            entry.task.abort();
            tracing::info!(target: "audit", identity = %identity, "certificate dropped");
        }
    }

    /// How many identities are cached.
    pub fn len(&self) -> usize {
        self.lock_entries().len()
    }

    /// True when no identity is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state of every identity, sorted by identity.
    pub fn snapshot(&self) -> Vec<CertSnapshot> {
        let now = SystemTime::now();
        let mut out: Vec<CertSnapshot> = self
            .lock_entries()
            .iter()
            .map(|(identity, entry)| snapshot_of(identity, &entry.state.borrow(), now))
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    /// The end of validity of each identity's current certificate.
    pub fn expiries(&self) -> Vec<(String, SystemTime)> {
        self.lock_entries()
            .iter()
            .filter_map(|(identity, entry)| match &*entry.state.borrow() {
                CertState::Available { cert, .. } => Some((identity.to_string(), cert.not_after())),
                _ => None,
            })
            .collect()
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Entry>> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn subscribe(&self, identity: &Identity) -> watch::Receiver<CertState> {
        let mut entries = self.lock_entries();
        if let Some(entry) = entries.get(identity) {
            return entry.state.clone();
        }
        let (tx, rx) = watch::channel(CertState::Initializing);
        let worker = Worker {
            identity: identity.clone(),
            signer: self.inner.signer.clone(),
            bundle: self.inner.bundle.clone(),
            config: self.inner.config.clone(),
            state: tx,
        };
        let task = tokio::spawn(worker.run()).abort_handle();
        entries.insert(
            identity.clone(),
            Entry {
                state: rx.clone(),
                task,
            },
        );
        rx
    }
}

fn snapshot_of(identity: &Identity, state: &CertState, now: SystemTime) -> CertSnapshot {
    let mut snap = CertSnapshot {
        identity: identity.to_string(),
        state: "initializing",
        serial: None,
        not_before: None,
        not_after: None,
        last_error: None,
    };
    match state {
        CertState::Initializing => {}
        CertState::Unavailable { error } => {
            snap.state = "unavailable";
            snap.last_error = Some(error.clone());
        }
        CertState::Available { cert, last_error } => {
            snap.state = match (cert.is_expired_at(now), last_error) {
                (true, _) => "expired",
                (false, Some(_)) => "renewal_failing",
                (false, None) => "available",
            };
            snap.serial = Some(cert.serial().to_owned());
            snap.not_before = Some(cert::rfc3339(cert.not_before()));
            snap.not_after = Some(cert::rfc3339(cert.not_after()));
            snap.last_error.clone_from(last_error);
        }
    }
    snap
}

/// The renewal loop of one identity.
struct Worker {
    identity: Identity,
    signer: Arc<dyn CertificateSigner>,
    bundle: TrustBundle,
    config: ManagerConfig,
    state: watch::Sender<CertState>,
}

impl Worker {
    async fn run(self) {
        let mut backoff = self.config.initial_backoff;
        let mut current: Option<Arc<WorkloadCert>> = None;
        loop {
            // The request runs in its own task so this long-lived future stays small.
            let attempt = tokio::spawn(request(
                self.identity.clone(),
                self.signer.clone(),
                self.bundle.clone(),
                self.config.validity,
            ));
            let result = attempt.await.unwrap_or_else(|err| {
                Err(format!("Bug: the certificate request task failed: {err}"))
            });
            let delay = match result {
                Ok(cert) => {
                    tracing::info!(target: "audit", identity = %self.identity, serial = cert.serial(), not_after = %cert::rfc3339(cert.not_after()), "certificate issued");
                    let cert = Arc::new(cert);
                    let delay = renewal_delay(&cert, SystemTime::now());
                    current = Some(cert.clone());
                    self.state.send_replace(CertState::Available {
                        cert,
                        last_error: None,
                    });
                    backoff = self.config.initial_backoff;
                    delay
                }
                Err(error) => {
                    self.publish_failure(current.as_ref(), error);
                    let delay = jitter(backoff, 0.2);
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    delay
                }
            };
            tokio::time::sleep(delay).await;
        }
    }

    fn publish_failure(&self, current: Option<&Arc<WorkloadCert>>, error: String) {
        match current {
            Some(cert) if !cert.is_expired_at(SystemTime::now()) => {
                tracing::warn!(target: "audit", identity = %self.identity, serial = cert.serial(), error, "certificate renewal failed; the current certificate stays in use until it expires");
                self.state.send_replace(CertState::Available {
                    cert: cert.clone(),
                    last_error: Some(error),
                });
            }
            _ => {
                tracing::warn!(target: "audit", identity = %self.identity, error, "cannot obtain a certificate");
                self.state.send_replace(CertState::Unavailable { error });
            }
        }
    }
}

/// One request: a fresh key, a CSR, the CA call and checks of the answer.
async fn request(
    identity: Identity,
    signer: Arc<dyn CertificateSigner>,
    bundle: TrustBundle,
    validity: Duration,
) -> Result<WorkloadCert, String> {
    let (key, csr_pem) = csr::create(&identity).map_err(|e| error_chain(&e))?;
    let chain = signer
        .sign(&csr_pem, validity)
        .await
        .map_err(|e: client::Error| error_chain(&e))?;
    WorkloadCert::from_response(&identity, &key, &chain, &bundle).map_err(|e| error_chain(&e))
}

/// When to renew: half the lifetime after `not_before`, give or take 5% of the
/// lifetime, so the certificates of many nodes are not renewed all at once.
fn renewal_delay(cert: &WorkloadCert, now: SystemTime) -> Duration {
    let lifetime = cert
        .not_after()
        .duration_since(cert.not_before())
        .unwrap_or_default();
    let renew_at = cert.not_before() + jitter(lifetime / 2, 0.2);
    renew_at.duration_since(now).unwrap_or(Duration::ZERO)
}

/// `base` scaled by a random factor in `[1 - spread/2, 1 + spread/2]`.
fn jitter(base: Duration, spread: f64) -> Duration {
    let mut bytes = [0u8; 4];
    // Without randomness, no jitter: still correct, just synchronized.
    let unit = match aws_lc_rs::rand::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    };
    base.mul_f64((1.0 - spread / 2.0 + spread * unit).max(0.0))
}

#[cfg(test)]
mod tests;
