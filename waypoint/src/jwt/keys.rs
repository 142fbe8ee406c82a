//! JSON Web Key Sets: turning one (an inline `jwks`, or a fetched body) into
//! the keys the verifier may use, and choosing the key for a token.
//!
//! A JWK is kept when it is for signatures (`use` absent or `sig`, `key_ops`
//! absent or with `verify`), its type is RSA, EC on P-256 or P-384, or OKP on
//! Ed25519, and its `alg`, if any, is one of [`ALGORITHMS`] and fits its type.
//! Others are skipped (`oct` keys always: HMAC is never accepted). A kept key
//! whose material does not decode makes the whole set unusable, and so does a
//! set with no key kept.

use jsonwebtoken::{
    Algorithm, DecodingKey, Header,
    errors::ErrorKind,
    jwk::{
        AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse,
    },
};
use tracing::debug;

use super::ALGORITHMS;

/// What a key is, as far as choosing it for an algorithm goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// The kind of key that verifies `alg`; `None` for HMAC, never accepted.
    pub(crate) fn for_algorithm(alg: Algorithm) -> Option<Self> {
        match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Some(Self::Rsa),
            Algorithm::ES256 => Some(Self::P256),
            Algorithm::ES384 => Some(Self::P384),
            Algorithm::EdDSA => Some(Self::Ed25519),
            _ => None,
        }
    }
}

struct Key {
    kid: Option<String>,
    /// The JWK's `alg`, when it has one.
    alg: Option<Algorithm>,
    kind: KeyKind,
    decoding: DecodingKey,
}

/// The usable keys of one JSON Web Key Set.
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

/// Why no key of a set verifies a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection {
    /// No key has the token's `kid`.
    UnknownKid,
    /// Keys have the token's `kid`, but none is for its `alg`.
    KidMismatch,
    /// The token has no `kid` and no key is for its `alg`.
    NoKey,
    /// The token has no `kid` and several keys are for its `alg`.
    Ambiguous,
}

/// A JSON Web Key Set that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeySetError {
    /// Not the JSON of a key set.
    #[error("not a JSON Web Key Set")]
    Json(#[source] serde_json::Error),
    /// A key that would be used has material that does not decode.
    #[error("key {index} (kid {kid:?}) has invalid key material")]
    Key {
        /// Position of the key in `keys`.
        index: usize,
        /// Its `kid`.
        kid: Option<String>,
        /// What jsonwebtoken found.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// No key is an RSA, EC (P-256, P-384) or Ed25519 signature key.
    #[error("no RSA, EC P-256/P-384 or Ed25519 key for signatures")]
    NoUsableKey,
}

impl KeySet {
    /// Parses the JSON of a key set and keeps the keys described in the module
    /// docs.
    pub(crate) fn parse(json: &[u8]) -> Result<Self, KeySetError> {
        let set: JwkSet = serde_json::from_slice(json).map_err(KeySetError::Json)?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for (index, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone();
            let Some((kind, alg)) = usable(jwk) else {
                debug!(
                    index,
                    kid, "jwk skipped: not a signature key of a supported type"
                );
                continue;
            };
            let decoding = DecodingKey::from_jwk(jwk)
                .and_then(|key| check_length(key, kind))
                .map_err(|source| KeySetError::Key {
                    index,
                    kid: kid.clone(),
                    source,
                })?;
            keys.push(Key {
                kid,
                alg,
                kind,
                decoding,
            });
        }
        if keys.is_empty() {
            return Err(KeySetError::NoUsableKey);
        }
        Ok(Self { keys })
    }

    /// The number of usable keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key that verifies a token with `header`: with a `kid`, the first
    /// key with that `kid` fit for the `alg`; without, the only key fit for
    /// the `alg`, whatever its `kid`.
    pub(crate) fn select(&self, header: &Header) -> Result<&DecodingKey, Selection> {
        let kind = KeyKind::for_algorithm(header.alg).ok_or(Selection::NoKey)?;
        let fits = |key: &&Key| key.kind == kind && key.alg.is_none_or(|alg| alg == header.alg);
        if let Some(kid) = &header.kid {
            let mut named = self
                .keys
                .iter()
                .filter(|key| key.kid.as_deref() == Some(kid.as_str()))
                .peekable();
            if named.peek().is_none() {
                return Err(Selection::UnknownKid);
            }
            return named
                .find(fits)
                .map(|key| &key.decoding)
                .ok_or(Selection::KidMismatch);
        }
        let mut fitting = self.keys.iter().filter(fits);
        match (fitting.next(), fitting.next()) {
            (Some(key), None) => Ok(&key.decoding),
            (None, _) => Err(Selection::NoKey),
            (Some(_), Some(_)) => Err(Selection::Ambiguous),
        }
    }
}

/// The kind and `alg` of a JWK the verifier may use; `None` for others.
fn usable(jwk: &Jwk) -> Option<(KeyKind, Option<Algorithm>)> {
    let common = &jwk.common;
    if common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
        || common
            .key_operations
            .as_ref()
            .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        // `oct` (HMAC secrets), other curves, unknown key types.
        _ => return None,
    };
    let alg = match common.key_algorithm {
        None => None,
        Some(alg) => {
            let alg = algorithm(alg)?;
            if KeyKind::for_algorithm(alg) != Some(kind) {
                return None;
            }
            Some(alg)
        }
    };
    Some((kind, alg))
}

/// A JWK `alg` as an accepted signature algorithm.
fn algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    let alg = match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    };
    ALGORITHMS.contains(&alg).then_some(alg)
}

/// Rejects EC points and Ed25519 keys of the wrong size now rather than at
/// every verification (jsonwebtoken only decodes their base64).
fn check_length(key: DecodingKey, kind: KeyKind) -> jsonwebtoken::errors::Result<DecodingKey> {
    let (expected, error) = match kind {
        KeyKind::Rsa => return Ok(key),
        // 0x04, then x and y.
        KeyKind::P256 => (65, ErrorKind::InvalidEcdsaKey),
        KeyKind::P384 => (97, ErrorKind::InvalidEcdsaKey),
        KeyKind::Ed25519 => (32, ErrorKind::InvalidEddsaKey),
    };
    if key.try_get_as_bytes()?.len() == expected {
        Ok(key)
    } else {
        Err(error.into())
    }
}
