//! RequestAuthentication for the waypoint: finding the JWT of a request,
//! verifying it against the jwtRules that apply to the destination, and
//! rewriting the request afterwards, with the semantics of Istio's
//! `RequestAuthentication` as Envoy's `jwt_authn` filter enforces it. All JOSE
//! work (base64url, JSON, signatures, JWKs) is jsonwebtoken's, on aws-lc-rs.
//!
//! Build one [`Authenticator`] per destination and configuration (it holds the
//! cache of verified tokens), then per request: [`Authenticator::authenticate`],
//! and for a request that goes on, [`Authenticator::rewrite`].
//!
//! # Semantics
//!
//! - Tokens are looked for in every location of every provider (`fromHeaders`,
//!   `fromParams`, `fromCookies`; a rule with none reads `Authorization:
//!   Bearer <token>`). No token: [`Outcome::NoToken`], and policy decides. More
//!   than one (two headers, a header and a parameter, a header twice): rejected,
//!   even if they are equal. Without any jwtRule nothing is looked at.
//! - The token's `iss`, read without verification, picks the providers with
//!   that issuer that read the location the token was in; the first that
//!   verifies it wins. An issuer no provider has is rejected, and so is a
//!   token in a location only other issuers read.
//! - Algorithms: [`ALGORITHMS`] only. `none` and HMAC (`HS*`) are refused
//!   before any key is looked at, whatever keys the set holds.
//! - Key choice: a token with a `kid` is verified with the first key of that
//!   `kid` fit for its `alg` (an unknown `kid` triggers a rate-limited refetch
//!   of a remote set, see [`JwksCache`]); a token without `kid`
//!   with the only key fit for its `alg` (type, curve, and `alg` if the key
//!   has one), and rejected if there are several.
//! - Claims: `iss` must be the provider's issuer. `exp` and `nbf` are checked
//!   when present, with [`LEEWAY_SECS`] of leeway; a token without `exp`
//!   does not expire (Istio does not require it). An `iat` more than the
//!   leeway in the future is rejected. With `audiences`, `aud` (a string or a
//!   list) must hold one of them; without, `aud` is not checked.
//! - Tokens longer than [`MAX_TOKEN_LEN`] are rejected without decoding, and
//!   so is anything that is not three base64url segments.
//! - A RequestAuthentication that failed validation (`problems`) rejects every
//!   request with a token (also in `Authorization: Bearer`); a jwtRule that
//!   does not compile (see [`Authenticator::problems`]) rejects the tokens of
//!   its issuer. Both fail closed without affecting requests without token.
//! - A [`Rejection`] tells why for the log, with the unverified `iss` and
//!   `sub`, never the token; the HTTP layer answers 401 with
//!   [`REJECTED_BODY`].
//!
//! # Rewriting (after [`Authenticator::authenticate`])
//!
//! Every header some provider writes (`outputPayloadToHeader`,
//! `outputClaimToHeaders`) is first removed from the request, with or without a
//! token, so that a client cannot pass its own values off as verified claims.
//! Then, for a verified token: the token is removed from where it was (the
//! header value, the query parameter or the cookie) unless the provider has
//! `forwardOriginalToken`; `outputClaimToHeaders` headers get string claims
//! (a top-level name, else a `.`-separated path; other types and absent
//! claims set nothing, nor does a value that is no valid header value), and
//! `outputPayloadToHeader` the base64url payload as received.
//!
//! # Cost
//!
//! Finding tokens walks the configured locations once. A token verified
//! before costs a SHA-256 and a map lookup: verified tokens are cached by
//! their SHA-256 (at most [`TOKEN_CACHE_CAPACITY`]) until their `exp` plus the
//! leeway, and verified again once the issuer's keys change. Otherwise a token
//! costs three JSON parses of its payload and one signature verification.
//! Keys are fetched as [`JwksCache`] describes, never per request.

mod fetch;
mod jwks;
mod keys;
mod location;
mod provider;
mod token;

#[cfg(test)]
mod tests;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use hyper::{
    HeaderMap, Uri,
    header::{HeaderName, HeaderValue},
};
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Map, Value};
use tracing::{debug, trace};
use ztunnel::{config::ErrorChain, registry::policy::RequestAuthentication};

pub use fetch::{Fetch, FetchError, HttpsFetcher, MAX_JWKS_BODY, TrustRoots};
pub use jwks::{JwksCache, JwksSettings};
pub use keys::KeySetError;
pub use provider::{Provider, ProviderError};
pub use token::{AuthView, VerifiedToken};

use location::{Found, Locations, Scan, Source};
use token::{Entry, TokenCache};

/// The longest token looked at, in bytes; longer ones are rejected undecoded.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// The only signature algorithms accepted.
pub const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The body of the 401 answering a rejected token, as Envoy words it.
pub const REJECTED_BODY: &str = "Jwt verification fails";

/// Verified tokens cached per authenticator.
pub const TOKEN_CACHE_CAPACITY: usize = 4096;

/// A problem with the configuration of an [`Authenticator`], or a request it
/// cannot rewrite.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A jwtRule that does not compile: tokens of its issuer are rejected.
    #[error(
        "RequestAuthentication {policy} jwtRules[{index}] cannot be enforced; its tokens are rejected"
    )]
    Rule {
        /// Namespace and name of the policy.
        policy: String,
        /// Index of the rule in `jwtRules`.
        index: usize,
        /// What in the rule cannot be compiled (boxed: errors are off the
        /// data path).
        #[source]
        source: Box<ProviderError>,
    },
    /// Removing the token left a request that does not parse.
    #[error("removing the token from the request failed")]
    Rewrite(#[source] hyper::http::Error),
    /// The token was verified by another authenticator.
    #[error("bug: rewriting with a token of another authenticator")]
    ForeignToken,
}

/// What [`Authenticator::authenticate`] decided for one request.
#[derive(Debug)]
pub enum Outcome {
    /// No token: the request is unauthenticated, and policy decides.
    NoToken,
    /// One token, verified.
    Verified(VerifiedToken),
    /// Answer 401 [`REJECTED_BODY`].
    Rejected(Rejection),
}

/// A rejected request: why, and the token's unverified `iss` and `sub`, when
/// they could be read, for the log.
#[derive(Debug, thiserror::Error)]
#[error("JWT verification failed")]
pub struct Rejection {
    issuer: Option<Box<str>>,
    subject: Option<Box<str>>,
    #[source]
    reason: RejectReason,
}

impl Rejection {
    fn new(reason: RejectReason) -> Self {
        Self {
            issuer: None,
            subject: None,
            reason,
        }
    }

    /// Why the token was rejected.
    pub fn reason(&self) -> &RejectReason {
        &self.reason
    }

    /// `iss` as the token claims it (unverified).
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// `sub` as the token claims it (unverified).
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
}

/// Why a token was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// More than one token in the request.
    #[error("more than one JWT in the request")]
    MultipleTokens,
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token longer than {MAX_TOKEN_LEN} bytes")]
    Oversized,
    /// Not three base64url segments.
    #[error("token is not three base64url segments")]
    NotCompact,
    /// A segment does not decode to what a JWT holds.
    #[error("malformed token")]
    Malformed(#[source] jsonwebtoken::errors::Error),
    /// `alg` is not one of [`ALGORITHMS`].
    #[error("algorithm {0:?} is not allowed")]
    Algorithm(Algorithm),
    /// No provider has the token's issuer.
    #[error("no jwtRule for the token's issuer")]
    UnknownIssuer,
    /// The providers of the token's issuer do not read where it was.
    #[error("the token's issuer does not read tokens where this one was")]
    Location,
    /// The jwtRule of the token's issuer does not compile.
    #[error("the jwtRule of the token's issuer cannot be enforced")]
    InvalidRule,
    /// A RequestAuthentication of the destination failed validation.
    #[error("a RequestAuthentication of the destination is invalid")]
    InvalidPolicy,
    /// The issuer's key set has not been fetched yet.
    #[error("JWKS not available")]
    JwksUnavailable,
    /// No key has the token's `kid`.
    #[error("no key with the token's kid")]
    UnknownKid,
    /// The keys with the token's `kid` are not for its `alg`.
    #[error("the key with the token's kid is not for its algorithm")]
    KeyMismatch,
    /// The token has no `kid` and no key is for its `alg`.
    #[error("no key for the token's algorithm")]
    NoKey,
    /// The token has no `kid` and several keys are for its `alg`.
    #[error("the token has no kid and several keys fit its algorithm")]
    AmbiguousKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    Signature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` has not come.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `aud` holds none of the rule's audiences.
    #[error("audience not allowed")]
    Audience,
    /// A registered claim has the wrong type.
    #[error("claim {0} has an invalid value")]
    Claim(&'static str),
    /// Another verification failure.
    #[error("verification failed")]
    Verification(#[source] jsonwebtoken::errors::Error),
}

/// The JWT authentication of one destination: its providers and their
/// locations, and the cache of verified tokens.
pub struct Authenticator {
    /// Tells this authenticator's tokens from others'.
    id: u64,
    providers: Vec<Provider>,
    locations: Locations,
    /// Issuers of jwtRules that did not compile.
    broken_issuers: Vec<Box<str>>,
    /// A RequestAuthentication failed validation.
    invalid_policy: bool,
    problems: Vec<Error>,
    cache: TokenCache,
}

impl Authenticator {
    /// The authentication of a destination that `policies` apply to. A jwtRule
    /// that does not compile is kept fail-closed and reported by
    /// [`problems`](Self::problems).
    pub fn new(policies: &[Arc<RequestAuthentication>], jwks: &JwksCache) -> Self {
        let mut providers = Vec::new();
        let mut reject_only = Vec::new();
        let mut broken_issuers = Vec::new();
        let mut problems = Vec::new();
        let mut invalid_policy = false;
        for policy in policies {
            if !policy.problems.is_empty() {
                invalid_policy = true;
                reject_only.push(Source::default_header());
            }
            for (index, rule) in policy.jwt_rules.iter().enumerate() {
                match Provider::compile(rule, jwks) {
                    Ok(provider) => providers.push(provider),
                    Err(source) => {
                        reject_only.extend(
                            provider::sources(rule)
                                .unwrap_or_else(|_| vec![Source::default_header()]),
                        );
                        broken_issuers.push(rule.issuer.clone());
                        problems.push(Error::Rule {
                            policy: policy.key.to_string(),
                            index,
                            source: Box::new(source),
                        });
                    }
                }
            }
        }
        let mut this = Self::from_providers(providers);
        for source in reject_only {
            this.locations.add(source, None);
        }
        this.broken_issuers = broken_issuers;
        this.problems = problems;
        this.invalid_policy = invalid_policy;
        this
    }

    /// The authentication with `providers`.
    pub fn from_providers(providers: Vec<Provider>) -> Self {
        let mut locations = Locations::default();
        for (index, provider) in providers.iter().enumerate() {
            for source in &provider.sources {
                locations.add(source.clone(), Some(index));
            }
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            providers,
            locations,
            broken_issuers: Vec::new(),
            invalid_policy: false,
            problems: Vec::new(),
            cache: TokenCache::new(TOKEN_CACHE_CAPACITY),
        }
    }

    /// The jwtRules that did not compile, for the log and metrics.
    pub fn problems(&self) -> &[Error] {
        &self.problems
    }

    /// Whether no token is ever looked for (no jwtRule, no invalid policy).
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }

    /// Finds and verifies the request's token.
    pub async fn authenticate(&self, headers: &HeaderMap, uri: &Uri) -> Outcome {
        let found = match self.locations.scan(headers, uri) {
            Scan::None => return Outcome::NoToken,
            Scan::One(found) => found,
            Scan::Many => return rejected(Rejection::new(RejectReason::MultipleTokens)),
        };
        match self.verify(&found).await {
            Ok(token) => {
                trace!(iss = token.issuer(), sub = token.subject(), "jwt verified");
                Outcome::Verified(token)
            }
            Err(rejection) => rejected(rejection),
        }
    }

    async fn verify(&self, found: &Found<'_>) -> Result<VerifiedToken, Rejection> {
        if self.invalid_policy {
            return Err(Rejection::new(RejectReason::InvalidPolicy));
        }
        let token = compact(&found.token).map_err(Rejection::new)?;
        let now = jsonwebtoken::get_current_timestamp();
        let digest = token::digest(token);
        if let Some(digest) = &digest
            && let Some(entry) = self.cache.get(digest, now)
        {
            if self.locations.allows(found.location, entry.provider)
                && self
                    .providers
                    .get(entry.provider)
                    .is_some_and(|p| p.keys_generation() == entry.generation)
            {
                return Ok(VerifiedToken {
                    info: entry.info,
                    authenticator: self.id,
                    provider: entry.provider,
                    location: found.location,
                });
            }
            self.cache.remove(digest);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Rejection::new(RejectReason::Malformed(e)))?;
        let peek = Peek::of(token).map_err(Rejection::new)?;
        let reject = |reason| Rejection {
            issuer: peek.issuer.as_deref().map(Into::into),
            subject: peek.subject.as_deref().map(Into::into),
            reason,
        };
        if !ALGORITHMS.contains(&header.alg) {
            return Err(reject(RejectReason::Algorithm(header.alg)));
        }
        let issuer = peek
            .issuer
            .as_deref()
            .ok_or_else(|| reject(RejectReason::Claim("iss")))?;
        if self.broken_issuers.iter().any(|b| **b == *issuer) {
            return Err(reject(RejectReason::InvalidRule));
        }
        self.verify_with_providers(token, &header, issuer, found.location, now)
            .await
            .map(|(info, provider, generation)| {
                let info = Arc::new(info);
                if let Some(digest) = digest {
                    let entry = Entry {
                        info: Arc::clone(&info),
                        provider,
                        generation,
                    };
                    self.cache.insert(digest, entry);
                }
                VerifiedToken {
                    info,
                    authenticator: self.id,
                    provider,
                    location: found.location,
                }
            })
            .map_err(reject)
    }

    /// Tries the providers of `issuer` that read `location`, in order.
    async fn verify_with_providers(
        &self,
        token: &str,
        header: &Header,
        issuer: &str,
        location: usize,
        now: u64,
    ) -> Result<(token::TokenInfo, usize, u64), RejectReason> {
        let mut last = None;
        for (index, provider) in self.providers.iter().enumerate() {
            if provider.issuer() != issuer {
                continue;
            }
            if !self.locations.allows(location, index) {
                last.get_or_insert(RejectReason::Location);
                continue;
            }
            match provider.verify(token, header, now).await {
                Ok((info, generation)) => return Ok((info, index, generation)),
                Err(reason) => last = Some(reason),
            }
        }
        Err(last.unwrap_or(RejectReason::UnknownIssuer))
    }

    /// Rewrites a request that goes on: see the module docs. Call it with the
    /// token of [`Outcome::Verified`], or `None` after [`Outcome::NoToken`].
    pub fn rewrite(
        &self,
        token: Option<&VerifiedToken>,
        headers: &mut HeaderMap,
        uri: &mut Uri,
    ) -> Result<(), Error> {
        for provider in &self.providers {
            for name in provider.output_headers() {
                headers.remove(name);
            }
        }
        let Some(token) = token else {
            return Ok(());
        };
        let provider = self
            .providers
            .get(token.provider)
            .filter(|_| token.authenticator == self.id)
            .ok_or(Error::ForeignToken)?;
        if !provider.forward_original_token {
            self.locations
                .remove(token.location, headers, uri)
                .map_err(Error::Rewrite)?;
        }
        if let Some(name) = &provider.payload_header {
            set_header(headers, name, token.payload());
        }
        for (name, claim) in &provider.claim_headers {
            if let Some(Value::String(value)) = claim_value(token.claims(), claim) {
                set_header(headers, name, value);
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self.providers.iter().map(Provider::issuer).collect();
        f.debug_struct("Authenticator")
            .field("issuers", &issuers)
            .field("broken_issuers", &self.broken_issuers)
            .field("invalid_policy", &self.invalid_policy)
            .finish_non_exhaustive()
    }
}

fn rejected(rejection: Rejection) -> Outcome {
    debug!(
        iss = rejection.issuer().unwrap_or_default(),
        sub = rejection.subject().unwrap_or_default(),
        reason = %ErrorChain(&rejection),
        "jwt rejected"
    );
    Outcome::Rejected(rejection)
}

/// The token as text, if it can be a compact JWS of at most
/// [`MAX_TOKEN_LEN`] bytes.
fn compact(token: &[u8]) -> Result<&str, RejectReason> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(RejectReason::Oversized);
    }
    let base64url = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_');
    let mut segments = token.split(|b| *b == b'.');
    let three = segments
        .by_ref()
        .take(3)
        .filter(|s| s.iter().all(base64url))
        .count()
        == 3;
    if !three || segments.next().is_some() {
        return Err(RejectReason::NotCompact);
    }
    std::str::from_utf8(token).map_err(|_| RejectReason::NotCompact)
}

/// The issuer and subject of a token, read before verification to pick the
/// provider and for the log.
struct Peek {
    issuer: Option<String>,
    subject: Option<String>,
}

impl Peek {
    fn of(token: &str) -> Result<Self, RejectReason> {
        // A map, not a struct: serde would read a struct from a JSON array too.
        let claims: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(RejectReason::Malformed)?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            issuer: text("iss"),
            subject: text("sub"),
        })
    }
}

/// The claim `name` of `claims`: the top-level claim of that name, else the
/// one at the `.`-separated path.
fn claim_value<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    claims.get(name).or_else(|| {
        name.split('.')
            .try_fold(claims, |value, key| value.get(key))
    })
}

fn set_header(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.insert(name.clone(), value);
        }
        Err(_) => debug!(header = %name, "claim is no valid header value; header not set"),
    }
}
