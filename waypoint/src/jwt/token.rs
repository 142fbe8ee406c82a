//! A verified token: its claims as the policy engine reads them, and the cache
//! of verified tokens.
//!
//! # Cache
//!
//! Verified tokens are kept by the SHA-256 of the token, so a repeat request
//! skips decoding and signature verification. An entry is used until the
//! token's `exp` (plus the leeway), and only while the provider's keys are
//! those that verified it: new keys from the issuer (a rotation, a revoked key)
//! mean verifying again. The cache holds at most its capacity in two
//! generations: when the current one is half full it becomes the previous one
//! and the older is dropped; a hit in the previous generation moves the entry
//! back. Lookups and inserts are O(1) under one mutex.

use std::{
    collections::HashMap,
    fmt, mem,
    sync::{Arc, Mutex, PoisonError},
};

use jsonwebtoken::{crypto::CryptoProvider, jwk::ThumbprintHash};
use serde_json::{Map, Value};
use ztunnel::policy::{Claims, RequestAuth};

use super::{LEEWAY_SECS, RejectReason};

/// Top-level claims whose string value is a space-separated list, as Istio
/// has them (`scope: "read write"` matches `read` and `write`).
const SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];

/// What a verified token says.
pub(crate) struct TokenInfo {
    pub(crate) issuer: String,
    pub(crate) subject: String,
    pub(crate) principal: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) presenter: Option<String>,
    pub(crate) claims: Value,
    /// The token's second segment, base64url as received.
    pub(crate) payload: Box<str>,
    /// `exp`, when present.
    pub(crate) expires: Option<u64>,
}

impl TokenInfo {
    /// Reads the registered claims of a verified payload.
    pub(crate) fn new(claims: Value, payload: &str) -> Result<Self, RejectReason> {
        let object = claims.as_object().ok_or(RejectReason::Claim("payload"))?;
        let issuer = string(object, "iss")?.ok_or(RejectReason::Claim("iss"))?;
        let subject = string(object, "sub")?.unwrap_or_default();
        let audiences = match object.get("aud") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(aud)) => vec![aud.clone()],
            Some(Value::Array(auds)) => auds
                .iter()
                .map(|aud| aud.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or(RejectReason::Claim("aud"))?,
            Some(_) => return Err(RejectReason::Claim("aud")),
        };
        let presenter = string(object, "azp")?;
        let expires = match object.get("exp") {
            None | Some(Value::Null) => None,
            Some(exp) => Some(seconds(exp).ok_or(RejectReason::Claim("exp"))?),
        };
        Ok(Self {
            principal: format!("{issuer}/{subject}"),
            issuer,
            subject,
            audiences,
            presenter,
            payload: payload.into(),
            expires,
            claims,
        })
    }
}

fn string(object: &Map<String, Value>, name: &'static str) -> Result<Option<String>, RejectReason> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(RejectReason::Claim(name)),
    }
}

/// A NumericDate in whole seconds (fractions rounded down, negative as 0).
pub(crate) fn seconds(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite())
            // Saturating float-to-int conversion: far-future dates stay far.
            .map(|f| f.max(0.0) as u64)
    })
}

/// Rejects an `iat` more than the leeway in the future (jsonwebtoken does not
/// look at `iat`).
pub(crate) fn check_issued_at(claims: &Value, now: u64) -> Result<(), RejectReason> {
    match claims.get("iat") {
        None | Some(Value::Null) => Ok(()),
        Some(iat) => match seconds(iat) {
            Some(iat) if iat > now.saturating_add(LEEWAY_SECS) => Err(RejectReason::IssuedInFuture),
            Some(_) => Ok(()),
            None => Err(RejectReason::Claim("iat")),
        },
    }
}

/// A token that passed verification.
///
/// Its [`Claims`] implementation reads string claims and lists of strings,
/// nested objects through the path; the top-level `scope` and `permission`
/// claims are space-separated lists. `Debug` shows only the principal.
#[derive(Clone)]
pub struct VerifiedToken {
    pub(crate) info: Arc<TokenInfo>,
    /// The id of the authenticator that verified it.
    pub(crate) authenticator: u64,
    /// Index of the provider that verified it, in its authenticator.
    pub(crate) provider: usize,
    /// Index of the location it was found in, in its authenticator.
    pub(crate) location: usize,
}

impl VerifiedToken {
    /// `iss`.
    pub fn issuer(&self) -> &str {
        &self.info.issuer
    }

    /// `sub`, empty when the token has none.
    pub fn subject(&self) -> &str {
        &self.info.subject
    }

    /// `<iss>/<sub>`: what `requestPrincipals` match.
    pub fn principal(&self) -> &str {
        &self.info.principal
    }

    /// `aud`, a string or a list in the token; empty when absent.
    pub fn audiences(&self) -> &[String] {
        &self.info.audiences
    }

    /// `azp`, when present.
    pub fn presenter(&self) -> Option<&str> {
        self.info.presenter.as_deref()
    }

    /// `exp` in seconds since the epoch, when present.
    pub fn expires_at(&self) -> Option<u64> {
        self.info.expires
    }

    /// All claims (a JSON object).
    pub fn claims(&self) -> &Value {
        &self.info.claims
    }

    /// The payload segment, base64url as received (`outputPayloadToHeader`).
    pub fn payload(&self) -> &str {
        &self.info.payload
    }

    /// A view that lends the token to the policy engine:
    /// `token.auth_view().request_auth()`.
    pub fn auth_view(&self) -> AuthView<'_> {
        AuthView {
            token: self,
            audiences: self.info.audiences.iter().map(String::as_str).collect(),
        }
    }

    /// The string values of the claim at `path`; see [`Claims`].
    fn claim_strings<'a>(&'a self, path: &[Box<str>]) -> Box<dyn Iterator<Item = &'a str> + 'a> {
        let Some((first, rest)) = path.split_first() else {
            return Box::new(std::iter::empty());
        };
        let mut value = self.info.claims.get(&**first);
        for key in rest {
            value = value.and_then(|v| v.get(&**key));
        }
        let split = rest.is_empty() && SPACE_DELIMITED_CLAIMS.contains(&&**first);
        match value {
            Some(Value::String(s)) if split => {
                Box::new(s.split(' ').filter(|part| !part.is_empty()))
            }
            Some(Value::String(s)) => Box::new(std::iter::once(s.as_str())),
            Some(Value::Array(items)) => Box::new(items.iter().filter_map(Value::as_str)),
            _ => Box::new(std::iter::empty()),
        }
    }
}

impl Claims for VerifiedToken {
    fn any(&self, path: &[Box<str>], matches: &mut dyn FnMut(&str) -> bool) -> bool {
        self.claim_strings(path).any(matches)
    }
}

impl fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Claims may hold personal data; the principal names the token enough.
        f.debug_struct("VerifiedToken")
            .field("principal", &self.info.principal)
            .finish_non_exhaustive()
    }
}

/// A [`VerifiedToken`] borrowed as the policy engine's [`RequestAuth`].
pub struct AuthView<'a> {
    token: &'a VerifiedToken,
    audiences: Vec<&'a str>,
}

impl AuthView<'_> {
    /// The token as `request.auth`.
    pub fn request_auth(&self) -> RequestAuth<'_> {
        RequestAuth {
            principal: self.token.principal(),
            audiences: &self.audiences,
            presenter: self.token.presenter(),
            claims: self.token,
        }
    }
}

impl fmt::Debug for AuthView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AuthView").field(self.token).finish()
    }
}

// === impl TokenCache ===

/// The SHA-256 of a token.
pub(crate) type Digest = [u8; 32];

/// The SHA-256 of `token`, from jsonwebtoken's crypto provider (aws-lc-rs);
/// `None` (no caching) if it has none.
pub(crate) fn digest(token: &str) -> Option<Digest> {
    let provider = CryptoProvider::try_get_default()?;
    (provider.key_utils.compute_digest)(token.as_bytes(), ThumbprintHash::SHA256)
        .ok()?
        .try_into()
        .ok()
}

/// A cached verification.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) info: Arc<TokenInfo>,
    pub(crate) provider: usize,
    /// The generation of the provider's keys that verified it.
    pub(crate) generation: u64,
}

impl Entry {
    fn valid_at(&self, now: u64) -> bool {
        self.info
            .expires
            .is_none_or(|exp| exp.saturating_add(LEEWAY_SECS) >= now)
    }
}

/// Verified tokens by digest; see the module docs.
pub(crate) struct TokenCache {
    /// Entries per generation: half the capacity.
    half: usize,
    maps: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<Digest, Entry>,
    previous: HashMap<Digest, Entry>,
}

impl Generations {
    fn insert(&mut self, key: Digest, entry: Entry, half: usize) {
        if self.current.len() >= half && !self.current.contains_key(&key) {
            self.previous = mem::take(&mut self.current);
        }
        self.current.insert(key, entry);
    }
}

impl TokenCache {
    /// A cache of at most `capacity` entries.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            half: (capacity / 2).max(1),
            maps: Mutex::default(),
        }
    }

    /// The entry for `key` if it is still valid at `now`.
    pub(crate) fn get(&self, key: &Digest, now: u64) -> Option<Entry> {
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = match maps.current.get(key) {
            Some(entry) => entry.clone(),
            None => {
                let entry = maps.previous.remove(key)?;
                maps.insert(*key, entry.clone(), self.half);
                entry
            }
        };
        if !entry.valid_at(now) {
            maps.current.remove(key);
            return None;
        }
        Some(entry)
    }

    /// Caches a verification.
    pub(crate) fn insert(&self, key: Digest, entry: Entry) {
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        maps.insert(key, entry, self.half);
    }

    /// Drops the entry for `key` (its keys changed).
    pub(crate) fn remove(&self, key: &Digest) {
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        maps.current.remove(key);
        maps.previous.remove(key);
    }

    /// The number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        maps.current.len() + maps.previous.len()
    }
}
