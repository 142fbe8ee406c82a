//! One jwtRule, compiled: where its tokens are, the keys and checks that
//! verify them, and what is written to the request afterwards.

use std::sync::Arc;

use hyper::header::{HeaderName, InvalidHeaderName};
use jsonwebtoken::{Algorithm, Header, Validation, errors::ErrorKind};
use serde_json::Value;
use ztunnel::registry::policy::JwtRule;

use super::{
    ALGORITHMS, LEEWAY_SECS, RejectReason,
    jwks::{Endpoint, JwksCache, RemoteJwks},
    keys::{KeySet, KeySetError, Selection},
    location::Source,
    token::{self, TokenInfo},
};

/// A jwtRule that cannot be compiled. The rule is named by its issuer;
/// [`Authenticator::new`](super::Authenticator::new) adds the policy and index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The inline `jwks` is not a usable key set.
    #[error("jwtRule of issuer {issuer:?}: inline jwks is not usable")]
    Jwks {
        /// `issuer`.
        issuer: Box<str>,
        /// What is wrong with the key set.
        #[source]
        source: KeySetError,
    },
    /// A header name of `fromHeaders`, `outputPayloadToHeader` or
    /// `outputClaimToHeaders` is not a valid HTTP header name.
    #[error("jwtRule of issuer {issuer:?}: {field} {name:?} is not a valid header name")]
    HeaderName {
        /// `issuer`.
        issuer: Box<str>,
        /// The field, e.g. `outputClaimToHeaders`.
        field: &'static str,
        /// The name given.
        name: Box<str>,
        /// Why it is invalid.
        #[source]
        source: InvalidHeaderName,
    },
    /// The keys would come from a URI the fetcher never fetches (plain
    /// `http://`, say).
    #[error("jwtRule of issuer {issuer:?}: {field} cannot be fetched")]
    Fetch {
        /// `issuer`.
        issuer: Box<str>,
        /// `jwksUri`, or the issuer for discovery.
        field: &'static str,
        /// Why the URI cannot be fetched.
        #[source]
        source: super::fetch::FetchError,
    },
    /// Neither `jwks` nor `jwksUri`, and the issuer is not a URL to discover
    /// the keys from.
    #[error(
        "jwtRule of issuer {issuer:?}: no jwks or jwksUri, and the issuer is no URL to discover them from"
    )]
    NoKeys {
        /// `issuer`.
        issuer: Box<str>,
    },
}

/// Where a provider's keys come from.
enum Keys {
    Inline(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
}

/// One compiled jwtRule. Keys come from the inline `jwks` if set, else from
/// `jwksUri`, else from the OpenID discovery document of an `https://` (or
/// `http://`) issuer.
pub struct Provider {
    issuer: Box<str>,
    keys: Keys,
    pub(crate) sources: Vec<Source>,
    pub(crate) forward_original_token: bool,
    pub(crate) payload_header: Option<HeaderName>,
    /// `outputClaimToHeaders`: header and claim.
    pub(crate) claim_headers: Vec<(HeaderName, Box<str>)>,
    /// One per entry of [`ALGORITHMS`], in that order.
    validations: Vec<Validation>,
}

impl Provider {
    /// Compiles `rule`; remote key sets come from `jwks`.
    pub fn compile(rule: &JwtRule, jwks: &JwksCache) -> Result<Self, ProviderError> {
        let issuer = rule.issuer.clone();
        let keys = match (&rule.jwks, &rule.jwks_uri) {
            (Some(inline), _) => Keys::Inline(Arc::new(KeySet::parse(inline.as_bytes()).map_err(
                |source| ProviderError::Jwks {
                    issuer: issuer.clone(),
                    source,
                },
            )?)),
            (None, Some(uri)) => {
                jwks.check(uri).map_err(|source| ProviderError::Fetch {
                    issuer: issuer.clone(),
                    field: "jwksUri",
                    source,
                })?;
                Keys::Remote(jwks.get(Endpoint::Uri(uri.clone())))
            }
            (None, None) if issuer.starts_with("https://") || issuer.starts_with("http://") => {
                jwks.check(&issuer).map_err(|source| ProviderError::Fetch {
                    issuer: issuer.clone(),
                    field: "issuer (OpenID discovery)",
                    source,
                })?;
                Keys::Remote(jwks.get(Endpoint::Discovery(issuer.clone())))
            }
            (None, None) => return Err(ProviderError::NoKeys { issuer }),
        };
        let payload_header = rule
            .output_payload_to_header
            .as_deref()
            .map(|name| header_name(&issuer, "outputPayloadToHeader", name))
            .transpose()?;
        let claim_headers = rule
            .output_claim_to_headers
            .iter()
            .map(|c| {
                let name = header_name(&issuer, "outputClaimToHeaders", &c.header)?;
                Ok((name, c.claim.clone()))
            })
            .collect::<Result<_, ProviderError>>()?;
        Ok(Self {
            sources: sources(rule)?,
            validations: validations(&issuer, &rule.audiences),
            issuer,
            keys,
            forward_original_token: rule.forward_original_token,
            payload_header,
            claim_headers,
        })
    }

    /// `issuer`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The headers this provider writes after verifying a token.
    pub(crate) fn output_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.payload_header
            .iter()
            .chain(self.claim_headers.iter().map(|(name, _)| name))
    }

    /// The generation of the keys now in use.
    pub(crate) fn keys_generation(&self) -> u64 {
        match &self.keys {
            Keys::Inline(_) => 0,
            Keys::Remote(remote) => remote.generation(),
        }
    }

    /// Verifies `token`, whose header is `header` and whose `alg` is one of
    /// [`ALGORITHMS`]; returns what it says and the generation of the keys
    /// that verified it.
    pub(crate) async fn verify(
        &self,
        token: &str,
        header: &Header,
        now: u64,
    ) -> Result<(TokenInfo, u64), RejectReason> {
        let (mut keys, mut generation) = match &self.keys {
            Keys::Inline(keys) => (Arc::clone(keys), 0),
            Keys::Remote(remote) => remote
                .current()
                .await
                .ok_or(RejectReason::JwksUnavailable)?,
        };
        if let (Err(Selection::UnknownKid), Keys::Remote(remote)) =
            (keys.select(header), &self.keys)
            && let Some(refetched) = remote.refetch_for_kid(generation).await
        {
            (keys, generation) = refetched;
        }
        let key = keys.select(header).map_err(|selection| match selection {
            Selection::UnknownKid => RejectReason::UnknownKid,
            Selection::KidMismatch => RejectReason::KeyMismatch,
            Selection::NoKey => RejectReason::NoKey,
            Selection::Ambiguous => RejectReason::AmbiguousKey,
        })?;
        let validation = ALGORITHMS
            .iter()
            .position(|alg| *alg == header.alg)
            .and_then(|i| self.validations.get(i))
            .ok_or(RejectReason::Algorithm(header.alg))?;
        let data = jsonwebtoken::decode::<Value>(token, key, validation)
            .map_err(|error| classify(error, header.alg))?;
        token::check_issued_at(&data.claims, now)?;
        let payload = token.split('.').nth(1).unwrap_or_default();
        Ok((TokenInfo::new(data.claims, payload)?, generation))
    }
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

/// The locations of `rule`: `Authorization: Bearer` when it names none.
pub(crate) fn sources(rule: &JwtRule) -> Result<Vec<Source>, ProviderError> {
    if rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty() {
        return Ok(vec![Source::default_header()]);
    }
    let mut sources = Vec::new();
    for h in &rule.from_headers {
        sources.push(Source::Header {
            name: header_name(&rule.issuer, "fromHeaders", &h.name)?,
            prefix: h.prefix.clone().unwrap_or_default(),
        });
    }
    sources.extend(rule.from_params.iter().cloned().map(Source::Param));
    sources.extend(rule.from_cookies.iter().cloned().map(Source::Cookie));
    Ok(sources)
}

fn header_name(issuer: &str, field: &'static str, name: &str) -> Result<HeaderName, ProviderError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|source| ProviderError::HeaderName {
        issuer: issuer.into(),
        field,
        name: name.into(),
        source,
    })
}

/// The checks for each algorithm: `exp` and `nbf` when present, with the
/// leeway; `iss` required and equal to the issuer; with audiences, `aud`
/// required and sharing one; without, `aud` not checked.
fn validations(issuer: &str, audiences: &[Box<str>]) -> Vec<Validation> {
    ALGORITHMS
        .iter()
        .map(|&alg| {
            let mut v = Validation::new(alg);
            v.leeway = LEEWAY_SECS;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_issuer(&[issuer]);
            if audiences.is_empty() {
                v.validate_aud = false;
                v.set_required_spec_claims(&["iss"]);
            } else {
                v.set_audience(audiences);
                v.set_required_spec_claims(&["iss", "aud"]);
            }
            v
        })
        .collect()
}

/// Why jsonwebtoken refused a token.
fn classify(error: jsonwebtoken::errors::Error, alg: Algorithm) -> RejectReason {
    match error.kind() {
        ErrorKind::InvalidSignature => RejectReason::Signature,
        ErrorKind::ExpiredSignature => RejectReason::Expired,
        ErrorKind::ImmatureSignature => RejectReason::NotYetValid,
        ErrorKind::InvalidAudience => RejectReason::Audience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => RejectReason::Audience,
        ErrorKind::InvalidIssuer => RejectReason::UnknownIssuer,
        ErrorKind::InvalidAlgorithm => RejectReason::Algorithm(alg),
        ErrorKind::InvalidClaimFormat(claim) => match claim.as_str() {
            "exp" => RejectReason::Claim("exp"),
            "nbf" => RejectReason::Claim("nbf"),
            "aud" => RejectReason::Claim("aud"),
            "iss" => RejectReason::Claim("iss"),
            "sub" => RejectReason::Claim("sub"),
            _ => RejectReason::Verification(error),
        },
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => RejectReason::Malformed(error),
        _ => RejectReason::Verification(error),
    }
}
