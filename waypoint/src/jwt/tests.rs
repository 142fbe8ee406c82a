//! Tests of RequestAuthentication.
//!
//! - Signing keys (two RSA 2048, EC P-256 and P-384, Ed25519) are generated
//!   with aws-lc-rs once per test process; JWKs are derived from them with
//!   jsonwebtoken.
//! - Remote key sets come from an in-memory IdP that counts its fetches, on
//!   tokio's paused clock wherever an interval matters, so that "not before
//!   10 s" is checked at 10 s less a millisecond and at 10 s.
//! - [`HttpsFetcher`] is tested end to end against an HTTPS server on
//!   loopback, with a CA that rcgen makes for the test.

use std::{
    collections::HashMap,
    convert::Infallible,
    error::Error as StdError,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use aws_lc_rs::{
    encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der},
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair as _,
    },
};
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::{HeaderMap, Response, StatusCode, Uri, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, jwk::Jwk, jwk::JwkSet};
use proptest::prelude::*;
use rustls::pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer, pem::PemObject};
use serde_json::{Value, json};
use test_case::test_case;
use tokio::{net::TcpListener, sync::watch, time::Instant};
use tokio_rustls::TlsAcceptor;
use ztunnel::{
    policy::Claims,
    registry::{
        ObjectKey,
        policy::{ClaimToHeader, JwtHeader, JwtRule, RequestAuthentication},
    },
};

use super::{
    Authenticator, Error, Fetch, FetchError, HttpsFetcher, JwksCache, JwksSettings, LEEWAY_SECS,
    MAX_TOKEN_LEN, Outcome, Provider, ProviderError, RejectReason, TrustRoots, VerifiedToken,
    location, token,
};

const ISSUER: &str = "https://idp.example";
const JWKS_URI: &str = "https://idp.example/keys";

// === keys ===

/// The signing keys of the tests, generated once per test process (RSA key
/// generation takes a while).
struct TestKeys {
    rsa_a: EncodingKey,
    rsa_b: EncodingKey,
    /// Key A's public key as an IdP publishes it: a SubjectPublicKeyInfo in
    /// PEM armour.
    rsa_a_public_pem: String,
    ec_p256: EncodingKey,
    ec_p384: EncodingKey,
    ed25519: EncodingKey,
}

fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (rsa_a, rsa_a_public_pem) = rsa_key();
        let (rsa_b, _) = rsa_key();
        TestKeys {
            rsa_a,
            rsa_b,
            rsa_a_public_pem,
            ec_p256: ec_key(&ECDSA_P256_SHA256_FIXED_SIGNING),
            ec_p384: ec_key(&ECDSA_P384_SHA384_FIXED_SIGNING),
            ed25519: ed_key(),
        }
    })
}

/// A new RSA 2048 key, and its public key in PEM.
fn rsa_key() -> (EncodingKey, String) {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = AsDer::<Pkcs8V1Der>::as_der(&pair).unwrap();
    let public_pem = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(pkcs8.as_ref()),
        &rcgen::PKCS_RSA_SHA256,
    )
    .unwrap()
    .public_key_pem();
    // The PEM must be this key's, or the HS256 confusion test proves nothing.
    let spki = AsDer::<PublicKeyX509Der>::as_der(pair.public_key()).unwrap();
    assert_eq!(
        SubjectPublicKeyInfoDer::from_pem_slice(public_pem.as_bytes())
            .unwrap()
            .as_ref(),
        spki.as_ref()
    );
    (EncodingKey::from_rsa_der(pkcs1(pkcs8.as_ref())), public_pem)
}

/// A new EC key on the curve of `alg`, PKCS#8 as `from_ec_der` takes it.
fn ec_key(alg: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm) -> EncodingKey {
    let pkcs8 = EcdsaKeyPair::generate(alg).unwrap().to_pkcs8v1().unwrap();
    EncodingKey::from_ec_der(pkcs8.as_ref())
}

/// A new Ed25519 key, PKCS#8 v1: `Jwk::from_encoding_key` reads the public
/// key of a v1 document only (v2 documents carry it too and are longer).
fn ed_key() -> EncodingKey {
    let pkcs8 = AsDer::<Pkcs8V1Der>::as_der(&Ed25519KeyPair::generate().unwrap()).unwrap();
    EncodingKey::from_ed_der(pkcs8.as_ref())
}

/// The PKCS#1 `RSAPrivateKey` in a PKCS#8 `PrivateKeyInfo` (RFC 5208):
/// `SEQUENCE { version INTEGER, privateKeyAlgorithm SEQUENCE, privateKey
/// OCTET STRING, .. }`. aws-lc-rs exports RSA keys as PKCS#8 only, and
/// jsonwebtoken signs with PKCS#1 only.
fn pkcs1(pkcs8: &[u8]) -> &[u8] {
    let (info, rest) = der_element(pkcs8, 0x30);
    assert!(rest.is_empty(), "trailing bytes after the PrivateKeyInfo");
    let (_version, info) = der_element(info, 0x02);
    let (_algorithm, info) = der_element(info, 0x30);
    der_element(info, 0x04).0
}

/// The contents of the DER element at the start of `der`, which must have
/// `tag`, and what follows it.
fn der_element(der: &[u8], tag: u8) -> (&[u8], &[u8]) {
    let [found, first, rest @ ..] = der else {
        panic!("truncated DER");
    };
    assert_eq!(*found, tag, "DER tag");
    let (len, rest) = if *first < 0x80 {
        (usize::from(*first), rest)
    } else {
        let (len, rest) = rest.split_at(usize::from(first & 0x7f));
        let len = len.iter().fold(0, |n, b| n << 8 | usize::from(*b));
        (len, rest)
    };
    rest.split_at(len)
}

fn rsa_a() -> &'static EncodingKey {
    &keys().rsa_a
}

fn rsa_b() -> &'static EncodingKey {
    &keys().rsa_b
}

fn ec() -> &'static EncodingKey {
    &keys().ec_p256
}

fn ed() -> &'static EncodingKey {
    &keys().ed25519
}

#[test]
fn generated_keys_are_in_the_formats_jsonwebtoken_takes() {
    // jsonwebtoken signs RSA with PKCS#1 only: hence `pkcs1` above.
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = AsDer::<Pkcs8V1Der>::as_der(&pair).unwrap();
    let as_pkcs8 = EncodingKey::from_rsa_der(pkcs8.as_ref());
    assert!(encode(&Header::new(Algorithm::RS256), &claims(), &as_pkcs8).is_err());
    let as_pkcs1 = EncodingKey::from_rsa_der(pkcs1(pkcs8.as_ref()));
    encode(&Header::new(Algorithm::RS256), &claims(), &as_pkcs1).unwrap();
    // The two keys of a test run differ.
    assert_ne!(
        jwk(rsa_a(), Algorithm::RS256, None, true),
        jwk(rsa_b(), Algorithm::RS256, None, true)
    );
}

// === helpers ===

/// The public JWK of `key`, with `kid`; `alg` set if `with_alg`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: Option<&str>, with_alg: bool) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).expect("public JWK of a test key");
    jwk.common.key_id = kid.map(Into::into);
    if !with_alg {
        jwk.common.key_algorithm = None;
    }
    jwk
}

fn jwks(keys: Vec<Jwk>) -> String {
    serde_json::to_string(&JwkSet { keys }).expect("JWKS serializes")
}

/// The usual key set: RSA A (`rsa`, any RSA alg), EC P-256 (`ec`), EC P-384
/// (`ec384`), Ed25519 (`ed`).
fn standard_jwks() -> String {
    jwks(vec![
        jwk(rsa_a(), Algorithm::RS256, Some("rsa"), false),
        jwk(ec(), Algorithm::ES256, Some("ec"), true),
        jwk(&keys().ec_p384, Algorithm::ES384, Some("ec384"), true),
        jwk(ed(), Algorithm::EdDSA, Some("ed"), true),
    ])
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// `secs` seconds from now.
fn from_now(secs: u64) -> u64 {
    now() + secs
}

/// `secs` seconds ago.
fn ago(secs: u64) -> u64 {
    now() - secs
}

fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "alice", "exp": from_now(600)})
}

/// `claims` with the members of `extra` set, or removed where `null`.
fn with(mut claims: Value, extra: &Value) -> Value {
    for (k, v) in extra.as_object().expect("an object") {
        if v.is_null() {
            claims.as_object_mut().expect("an object").remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    encode(&header, claims, key).expect("test token signs")
}

fn rsa_token(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("rsa"), rsa_a(), claims)
}

/// base64url without padding, for hand-made tokens only.
fn b64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn rule() -> JwtRule {
    JwtRule {
        issuer: ISSUER.into(),
        audiences: Vec::new(),
        jwks_uri: None,
        jwks: None,
        from_headers: Vec::new(),
        from_params: Vec::new(),
        from_cookies: Vec::new(),
        forward_original_token: false,
        output_payload_to_header: None,
        output_claim_to_headers: Vec::new(),
    }
}

fn inline_rule(jwks: String) -> JwtRule {
    JwtRule {
        jwks: Some(jwks.into()),
        ..rule()
    }
}

fn unused_cache() -> JwksCache {
    JwksCache::new(Arc::new(FakeIdp::default()), JwksSettings::default())
}

fn authenticator(rules: &[JwtRule]) -> Authenticator {
    let cache = unused_cache();
    let providers = rules
        .iter()
        .map(|r| Provider::compile(r, &cache).expect("test rule compiles"))
        .collect();
    Authenticator::from_providers(providers)
}

fn standard() -> Authenticator {
    authenticator(&[inline_rule(standard_jwks())])
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            header::HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            value.parse().expect("test header value"),
        );
    }
    map
}

fn bearer(token: &str) -> HeaderMap {
    headers(&[("authorization", &format!("Bearer {token}"))])
}

async fn check(auth: &Authenticator, headers: &HeaderMap) -> Outcome {
    auth.authenticate(headers, &Uri::from_static("/")).await
}

/// `Verified`, `NoToken`, or the name of the rejection's reason.
fn kind(outcome: &Outcome) -> String {
    match outcome {
        Outcome::NoToken => "NoToken".into(),
        Outcome::Verified(_) => "Verified".into(),
        Outcome::Rejected(r) => {
            let reason = format!("{:?}", r.reason);
            reason
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or_default()
                .to_owned()
        }
    }
}

/// What `auth` makes of `token` in `Authorization: Bearer`.
async fn outcome_of(auth: &Authenticator, token: &str) -> String {
    kind(&check(auth, &bearer(token)).await)
}

#[track_caller]
fn verified(outcome: Outcome) -> VerifiedToken {
    match outcome {
        Outcome::Verified(token) => token,
        other => panic!("expected a verified token, got {other:?}"),
    }
}

// === verification ===

#[test_case(Algorithm::RS256, "rsa", rsa_a() ; "rs256")]
#[test_case(Algorithm::RS384, "rsa", rsa_a() ; "rs384")]
#[test_case(Algorithm::RS512, "rsa", rsa_a() ; "rs512")]
#[test_case(Algorithm::PS256, "rsa", rsa_a() ; "ps256")]
#[test_case(Algorithm::PS384, "rsa", rsa_a() ; "ps384")]
#[test_case(Algorithm::PS512, "rsa", rsa_a() ; "ps512")]
#[test_case(Algorithm::ES256, "ec", ec() ; "es256")]
#[test_case(Algorithm::ES384, "ec384", &keys().ec_p384 ; "es384")]
#[test_case(Algorithm::EdDSA, "ed", ed() ; "eddsa")]
#[tokio::test]
async fn valid_tokens_verify(alg: Algorithm, kid: &str, key: &EncodingKey) {
    let claims = with(
        claims(),
        &json!({"azp": "cli", "alg_used": format!("{alg:?}")}),
    );
    let token = sign(alg, Some(kid), key, &claims);
    let token = verified(check(&standard(), &bearer(&token)).await);
    assert_eq!(token.issuer(), ISSUER);
    assert_eq!(token.subject(), "alice");
    assert_eq!(token.principal(), "https://idp.example/alice");
    assert_eq!(token.presenter(), Some("cli"));
    assert!(token.audiences().is_empty());
    assert_eq!(token.claims()["alg_used"], format!("{alg:?}"));
}

// The verifier reads the clock a moment after the test: 5 s of margin
// either side of the leeway.
#[test_case(json!({"exp": ago(LEEWAY_SECS + 5)}) => "Expired" ; "exp past the leeway")]
#[test_case(json!({"exp": ago(LEEWAY_SECS - 5)}) => "Verified" ; "exp within the leeway")]
#[test_case(json!({"exp": null}) => "Verified" ; "no exp")]
#[test_case(json!({"exp": "soon"}) => "Claim" ; "exp not a number")]
#[test_case(json!({"exp": from_now(600) as f64 + 0.5}) => "Verified" ; "exp with a fraction")]
#[test_case(json!({"nbf": from_now(LEEWAY_SECS + 5)}) => "NotYetValid" ; "nbf past the leeway")]
#[test_case(json!({"nbf": from_now(LEEWAY_SECS - 5)}) => "Verified" ; "nbf within the leeway")]
#[test_case(json!({"nbf": "later"}) => "Claim" ; "nbf not a number")]
#[test_case(json!({"iat": from_now(LEEWAY_SECS + 5)}) => "IssuedInFuture" ; "iat past the leeway")]
#[test_case(json!({"iat": from_now(LEEWAY_SECS - 5)}) => "Verified" ; "iat within the leeway")]
#[test_case(json!({"iat": ago(3000)}) => "Verified" ; "iat long ago")]
#[test_case(json!({"iat": "yesterday"}) => "Claim" ; "iat not a number")]
#[tokio::test]
async fn time_claims(extra: Value) -> String {
    outcome_of(&standard(), &rsa_token(&with(claims(), &extra))).await
}

fn with_audiences() -> Authenticator {
    authenticator(&[JwtRule {
        audiences: vec!["api".into(), "web".into()],
        ..inline_rule(standard_jwks())
    }])
}

#[test_case(&with_audiences(), json!({"aud": "api"}) => "Verified" ; "one of the audiences")]
#[test_case(&with_audiences(), json!({"aud": ["other", "web"]}) => "Verified" ; "a list holding one")]
#[test_case(&with_audiences(), json!({"aud": "other"}) => "Audience" ; "another audience")]
#[test_case(&with_audiences(), json!({"aud": []}) => "Audience" ; "an empty list")]
#[test_case(&with_audiences(), json!({}) => "Audience" ; "no aud")]
#[test_case(&with_audiences(), json!({"aud": 5}) => "Audience" ; "aud not a string")]
#[test_case(&with_audiences(), json!({"aud": "api", "iss": "https://evil.example"}) => "UnknownIssuer" ; "another issuer")]
#[test_case(&with_audiences(), json!({"aud": "api", "iss": null}) => "Claim" ; "no issuer")]
#[test_case(&with_audiences(), json!({"aud": "api", "iss": 7}) => "Claim" ; "issuer not a string")]
#[test_case(&standard(), json!({"aud": "anything"}) => "Verified" ; "any aud without audiences")]
#[test_case(&standard(), json!({"aud": ["a", "b"]}) => "Verified" ; "any list without audiences")]
#[test_case(&standard(), json!({"aud": [5]}) => "Claim" ; "a list of non-strings without audiences")]
#[test_case(&standard(), json!({"sub": 5}) => "Claim" ; "sub not a string")]
#[tokio::test]
async fn issuer_and_audiences(auth: &Authenticator, extra: Value) -> String {
    outcome_of(auth, &rsa_token(&with(claims(), &extra))).await
}

#[tokio::test]
async fn audiences_are_read_as_a_string_or_a_list() {
    let token = rsa_token(&with(claims(), &json!({"aud": ["other", "web"]})));
    let token = verified(check(&with_audiences(), &bearer(&token)).await);
    assert_eq!(token.audiences(), ["other", "web"]);
    let token = rsa_token(&with(claims(), &json!({"aud": "api"})));
    let token = verified(check(&with_audiences(), &bearer(&token)).await);
    assert_eq!(token.audiences(), ["api"]);
}

/// `good` with its payload replaced by `other`'s.
fn spliced(good: &str, other: &str) -> String {
    let (g, o): (Vec<&str>, Vec<&str>) = (good.split('.').collect(), other.split('.').collect());
    format!("{}.{}.{}", g[0], o[1], g[2])
}

#[test_case(sign(Algorithm::RS256, Some("rsa"), rsa_b(), &claims()) => "Signature" ; "signed by another key")]
#[test_case(spliced(&rsa_token(&claims()), &rsa_token(&with(claims(), &json!({"sub": "root"})))) => "Signature" ; "another payload")]
#[test_case(sign(Algorithm::ES256, Some("rsa"), ec(), &claims()) => "KeyMismatch" ; "es256 naming the rsa key")]
#[test_case(sign(Algorithm::RS256, Some("ec"), rsa_a(), &claims()) => "KeyMismatch" ; "rs256 naming the ec key")]
#[test_case(sign(Algorithm::ES384, Some("ec"), &keys().ec_p384, &claims()) => "KeyMismatch" ; "es384 naming the p256 key")]
#[test_case(sign(Algorithm::RS256, Some("nobody"), rsa_a(), &claims()) => "UnknownKid" ; "unknown kid")]
#[tokio::test]
async fn wrong_signatures_are_rejected(token: String) -> String {
    outcome_of(&standard(), &token).await
}

#[tokio::test]
async fn none_and_hmac_are_refused() {
    // An `oct` key in the set changes nothing: HMAC is never accepted.
    let secret = b"shared-secret-shared-secret-0123";
    let mut oct = serde_json::to_value(jwk(
        &EncodingKey::from_secret(secret).unwrap(),
        Algorithm::HS256,
        Some("hmac"),
        true,
    ))
    .unwrap();
    oct["use"] = json!("sig");
    let mut set: Value = serde_json::from_str(&standard_jwks()).unwrap();
    set["keys"].as_array_mut().unwrap().push(oct);
    let auth = authenticator(&[inline_rule(set.to_string())]);

    let header = b64(br#"{"alg":"none","kid":"rsa","typ":"JWT"}"#);
    let payload = b64(claims().to_string().as_bytes());
    let none = format!("{header}.{payload}.");
    assert_eq!(outcome_of(&auth, &none).await, "Malformed");

    // The classic confusion: HS256 with the RSA public key as the secret.
    let public = EncodingKey::from_secret(keys().rsa_a_public_pem.as_bytes()).unwrap();
    for kid in ["rsa", "hmac"] {
        let hs = sign(Algorithm::HS256, Some(kid), &public, &claims());
        assert_eq!(outcome_of(&auth, &hs).await, "Algorithm", "{kid}");
    }
    let hs = sign(
        Algorithm::HS512,
        Some("hmac"),
        &EncodingKey::from_secret(secret).unwrap(),
        &claims(),
    );
    let outcome = check(&auth, &bearer(&hs)).await;
    let Outcome::Rejected(rejection) = outcome else {
        panic!("HS512 accepted: {outcome:?}")
    };
    assert!(
        matches!(
            rejection.reason(),
            RejectReason::Algorithm(Algorithm::HS512)
        ),
        "{rejection:?}"
    );
    assert_eq!(rejection.issuer(), Some(ISSUER));
    assert_eq!(rejection.subject(), Some("alice"));
}

#[test_case("not-a-jwt".into() => "NotCompact" ; "one segment")]
#[test_case("a.b".into() => "NotCompact" ; "two segments")]
#[test_case("a.b.c.d".into() => "NotCompact" ; "four segments")]
#[test_case("ab$.cd.ef".into() => "NotCompact" ; "not base64url")]
#[test_case("a+b.cd.ef".into() => "NotCompact" ; "base64 not url")]
#[test_case("a.b.c".into() => "Malformed" ; "segments that do not decode")]
#[test_case(format!("{}.{}.c2ln", b64(b"not json"), b64(claims().to_string().as_bytes())) => "Malformed" ; "header not json")]
#[test_case(format!("{}.{}.c2ln", b64(br#"{"alg":"RS256","kid":"rsa"}"#), b64(b"not json")) => "Malformed" ; "payload not json")]
#[test_case(format!("{}.{}.c2ln", b64(br#"{"alg":"RS256","kid":"rsa"}"#), b64(br#"[null,null,null,"x"]"#)) => "Malformed" ; "payload an array")]
#[tokio::test]
async fn malformed_tokens_are_rejected(token: String) -> String {
    outcome_of(&standard(), &token).await
}

#[tokio::test]
async fn oversized_tokens_are_rejected_without_decoding() {
    let auth = standard();
    let padded = |len: usize| format!("{}.b.c", "a".repeat(len - 4));
    let at_limit = padded(MAX_TOKEN_LEN);
    assert_eq!(at_limit.len(), MAX_TOKEN_LEN);
    assert_eq!(outcome_of(&auth, &at_limit).await, "Malformed");
    let over = padded(MAX_TOKEN_LEN + 1);
    assert_eq!(outcome_of(&auth, &over).await, "Oversized");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Changing any one character of a valid token gets it rejected: every
    /// byte of the header, payload and signature is covered (base64url
    /// decoding rejects non-canonical trailing bits).
    #[test]
    fn altered_tokens_are_rejected(at in any::<prop::sample::Index>(), by in 1..64usize) {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        static TOKEN: OnceLock<String> = OnceLock::new();
        let token = TOKEN.get_or_init(|| sign(Algorithm::ES256, Some("ec"), ec(), &claims()));
        let mut altered = token.clone().into_bytes();
        let positions: Vec<usize> = (0..altered.len()).filter(|i| altered[*i] != b'.').collect();
        let i = positions[at.index(positions.len())];
        let digit = ALPHABET.iter().position(|c| *c == altered[i]).unwrap();
        altered[i] = ALPHABET[(digit + by) % 64];
        let altered = String::from_utf8(altered).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let outcome = runtime.block_on(outcome_of(&standard(), &altered));
        prop_assert_ne!(outcome, "Verified", "{}", altered);
    }
}

#[tokio::test]
async fn keys_are_chosen_by_kid_or_uniquely_without() {
    let rsa_only = authenticator(&[inline_rule(jwks(vec![jwk(
        rsa_a(),
        Algorithm::RS256,
        None,
        true,
    )]))]);
    let kidless = sign(Algorithm::RS256, None, rsa_a(), &claims());
    assert_eq!(outcome_of(&rsa_only, &kidless).await, "Verified");
    let es_kidless = sign(Algorithm::ES256, None, ec(), &claims());
    assert_eq!(outcome_of(&rsa_only, &es_kidless).await, "NoKey");
    // A token with a kid never uses a key without one.
    assert_eq!(
        outcome_of(&rsa_only, &rsa_token(&claims())).await,
        "UnknownKid"
    );
    // The JWK says RS256: not for PS256.
    let ps = sign(Algorithm::PS256, None, rsa_a(), &claims());
    assert_eq!(outcome_of(&rsa_only, &ps).await, "NoKey");

    let two = authenticator(&[inline_rule(jwks(vec![
        jwk(rsa_a(), Algorithm::RS256, Some("a"), true),
        jwk(rsa_b(), Algorithm::RS256, Some("b"), true),
    ]))]);
    assert_eq!(outcome_of(&two, &kidless).await, "AmbiguousKey");
    let b = sign(Algorithm::RS256, Some("b"), rsa_b(), &claims());
    assert_eq!(outcome_of(&two, &b).await, "Verified");
    // Without kid, the only key of the token's type is used whatever its kid.
    let ec_kidless = sign(Algorithm::ES256, None, ec(), &claims());
    assert_eq!(outcome_of(&standard(), &ec_kidless).await, "Verified");
}

// === locations ===

#[tokio::test]
async fn no_token_means_unauthenticated() {
    let auth = standard();
    assert_eq!(kind(&check(&auth, &HeaderMap::new()).await), "NoToken");
    let basic = headers(&[("authorization", "Basic YWxpY2U6c2VjcmV0")]);
    assert_eq!(kind(&check(&auth, &basic).await), "NoToken");
    assert_eq!(kind(&check(&auth, &bearer("")).await), "NoToken");

    // Without jwtRules no token is looked at, not even a bad one.
    let none = Authenticator::from_providers(Vec::new());
    assert!(none.is_empty());
    assert_eq!(kind(&check(&none, &bearer("garbage")).await), "NoToken");
}

#[tokio::test]
async fn prefixes_select_header_values() {
    let auth = authenticator(&[JwtRule {
        from_headers: vec![
            JwtHeader {
                name: "Authorization".into(),
                prefix: Some("Bearer ".into()),
            },
            JwtHeader {
                name: "x-token".into(),
                prefix: None,
            },
        ],
        ..inline_rule(standard_jwks())
    }]);
    let token = rsa_token(&claims());
    let cases = [
        (
            headers(&[("authorization", &format!("Bearer {token}"))]),
            "Verified",
        ),
        (
            headers(&[("authorization", &format!("bearer  {token}"))]),
            "Verified",
        ),
        (headers(&[("authorization", &token)]), "NoToken"),
        (headers(&[("authorization", "Bearer")]), "NoToken"),
        (headers(&[("x-token", &token)]), "Verified"),
        (
            headers(&[("x-token", &format!("Bearer {token}"))]),
            "NotCompact",
        ),
    ];
    for (map, expected) in cases {
        assert_eq!(kind(&check(&auth, &map).await), expected, "{map:?}");
    }
}

#[tokio::test]
async fn tokens_in_params_and_cookies() {
    let auth = authenticator(&[JwtRule {
        from_params: vec!["access_token".into()],
        from_cookies: vec!["session".into()],
        ..inline_rule(standard_jwks())
    }]);
    let token = rsa_token(&claims());
    let uri = |s: String| s.parse::<Uri>().expect("test uri");
    let cases = [
        (
            uri(format!("/p?x=1&access_token={token}")),
            HeaderMap::new(),
            "Verified",
        ),
        (
            uri(format!("/p?access%5Ftoken={token}")),
            HeaderMap::new(),
            "Verified",
        ),
        (uri("/p?access_token=".into()), HeaderMap::new(), "NoToken"),
        (
            uri("/p".into()),
            headers(&[("cookie", &format!("a=1; session={token}; b=2"))]),
            "Verified",
        ),
        (
            uri("/p".into()),
            headers(&[("cookie", &format!("session=\"{token}\""))]),
            "Verified",
        ),
        (
            uri("/p".into()),
            headers(&[("cookie", "a=1"), ("cookie", &format!("session={token}"))]),
            "Verified",
        ),
        // The rule names locations, so `Authorization` is not one of them.
        (uri("/p".into()), bearer(&token), "NoToken"),
    ];
    for (uri, map, expected) in cases {
        let outcome = auth.authenticate(&map, &uri).await;
        assert_eq!(kind(&outcome), expected, "{uri} {map:?}");
    }
}

#[tokio::test]
async fn more_than_one_token_is_rejected() {
    let auth = authenticator(&[JwtRule {
        from_headers: vec![
            JwtHeader {
                name: "x-a".into(),
                prefix: None,
            },
            JwtHeader {
                name: "x-b".into(),
                prefix: None,
            },
        ],
        from_params: vec!["token".into()],
        ..inline_rule(standard_jwks())
    }]);
    let t = rsa_token(&claims());
    let other = rsa_token(&with(claims(), &json!({"sub": "bob"})));
    let with_param: Uri = format!("/?token={t}").parse().unwrap();
    let root = Uri::from_static("/");
    let cases = [
        (headers(&[("x-a", &t)]), &root, "Verified"),
        (
            headers(&[("x-a", &t), ("x-b", &other)]),
            &root,
            "MultipleTokens",
        ),
        (
            headers(&[("x-a", &t), ("x-a", &t)]),
            &root,
            "MultipleTokens",
        ),
        (headers(&[("x-a", &t)]), &with_param, "MultipleTokens"),
        (HeaderMap::new(), &with_param, "Verified"),
    ];
    for (map, uri, expected) in cases {
        assert_eq!(
            kind(&auth.authenticate(&map, uri).await),
            expected,
            "{map:?} {uri}"
        );
    }
}

#[tokio::test]
async fn issuers_only_read_their_own_locations() {
    let other_issuer = "https://other.example";
    let header_rule = |issuer: &str, name: &str| JwtRule {
        issuer: issuer.into(),
        from_headers: vec![JwtHeader {
            name: name.into(),
            prefix: None,
        }],
        ..inline_rule(standard_jwks())
    };
    let auth = authenticator(&[header_rule(ISSUER, "x-a"), header_rule(other_issuer, "x-b")]);
    let token = rsa_token(&claims());
    assert_eq!(
        kind(&check(&auth, &headers(&[("x-a", &token)])).await),
        "Verified"
    );
    assert_eq!(
        kind(&check(&auth, &headers(&[("x-b", &token)])).await),
        "Location"
    );

    // Two rules with the same issuer: the second verifies what the first does not.
    let auth = authenticator(&[
        JwtRule {
            audiences: vec!["api".into()],
            ..inline_rule(standard_jwks())
        },
        JwtRule {
            audiences: vec!["web".into()],
            ..inline_rule(standard_jwks())
        },
    ]);
    for (aud, expected) in [("api", "Verified"), ("web", "Verified"), ("db", "Audience")] {
        let token = rsa_token(&with(claims(), &json!({"aud": aud})));
        assert_eq!(
            kind(&check(&auth, &bearer(&token)).await),
            expected,
            "{aud}"
        );
    }
}

// === remote key sets ===

/// An IdP in memory: serves `routes`, 503 for others; logs and counts
/// fetches (when they start) and answers after `delay`.
#[derive(Default)]
struct FakeIdp {
    routes: Mutex<HashMap<String, String>>,
    log: Mutex<Vec<String>>,
    count: watch::Sender<usize>,
    delay: Mutex<Duration>,
}

impl FakeIdp {
    fn serving(uri: &str, body: String) -> Arc<Self> {
        let idp = Arc::new(Self::default());
        idp.serve(uri, body);
        idp
    }

    fn serve(&self, uri: &str, body: String) {
        self.routes.lock().unwrap().insert(uri.into(), body);
    }

    fn down(&self) {
        self.routes.lock().unwrap().clear();
    }

    fn answer_after(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    fn fetches(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    async fn wait_for_fetches(&self, n: usize) {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|c| *c >= n))
            .await
            .expect("fetches in time")
            .expect("idp alive");
    }
}

impl Fetch for FakeIdp {
    fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Bytes, FetchError>> {
        Box::pin(async move {
            self.log.lock().unwrap().push(uri.to_owned());
            self.count.send_modify(|c| *c += 1);
            let delay = *self.delay.lock().unwrap();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match self.routes.lock().unwrap().get(uri) {
                Some(body) => Ok(Bytes::from(body.clone())),
                None => Err(FetchError::Status {
                    uri: uri.into(),
                    status: StatusCode::SERVICE_UNAVAILABLE,
                }),
            }
        })
    }
}

/// Lets background fetches run to their end: on the paused clock, a sleep
/// ends only once every other task waits.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn remote(idp: &Arc<FakeIdp>) -> Authenticator {
    let cache = JwksCache::new(Arc::clone(idp) as Arc<dyn Fetch>, JwksSettings::default());
    let rule = JwtRule {
        jwks_uri: Some(JWKS_URI.into()),
        ..rule()
    };
    Authenticator::from_providers(vec![
        Provider::compile(&rule, &cache).expect("remote rule compiles"),
    ])
}

/// A token for key B under a `kid` the standard set lacks.
fn new_kid_token() -> String {
    sign(Algorithm::RS256, Some("new"), rsa_b(), &claims())
}

fn rotated_jwks() -> String {
    jwks(vec![jwk(rsa_b(), Algorithm::RS256, Some("new"), true)])
}

const MILLI: Duration = Duration::from_millis(1);

/// Moves the paused clock on to `at`.
async fn advance_to(at: Instant) {
    tokio::time::advance(at.saturating_duration_since(Instant::now())).await;
}

#[tokio::test(start_paused = true)]
async fn unknown_kid_refetches_at_most_once_per_interval() {
    let interval = JwksSettings::default().min_refetch_interval;
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    let auth = remote(&idp);
    assert_eq!(outcome_of(&auth, &rsa_token(&claims())).await, "Verified");
    assert_eq!(idp.fetches(), 1);

    let unknown = new_kid_token();
    assert_eq!(outcome_of(&auth, &unknown).await, "UnknownKid");
    assert_eq!(idp.fetches(), 2, "one refetch for the unknown kid");
    assert_eq!(outcome_of(&auth, &unknown).await, "UnknownKid");
    assert_eq!(idp.fetches(), 2, "no second refetch within the interval");
    tokio::time::advance(interval - MILLI).await;
    assert_eq!(outcome_of(&auth, &unknown).await, "UnknownKid");
    assert_eq!(idp.fetches(), 2, "not a millisecond early");
    tokio::time::advance(MILLI).await;
    assert_eq!(outcome_of(&auth, &unknown).await, "UnknownKid");
    assert_eq!(idp.fetches(), 3, "one more once the interval passed");
}

#[tokio::test(start_paused = true)]
async fn unknown_kid_refetch_picks_up_rotated_keys() {
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    let auth = remote(&idp);
    let old = rsa_token(&claims());
    assert_eq!(outcome_of(&auth, &old).await, "Verified");
    idp.serve(JWKS_URI, rotated_jwks());
    assert_eq!(outcome_of(&auth, &new_kid_token()).await, "Verified");
    assert_eq!(idp.fetches(), 2);
    // Key A left the set: its token, verified and cached before, is not
    // accepted any more (and its kid refetch waits the interval).
    assert_eq!(outcome_of(&auth, &old).await, "UnknownKid");
    assert_eq!(idp.fetches(), 2);
}

/// A token answered from the verified-token cache still keeps the keys
/// fresh: once they are due, it starts the refresh, and a key the issuer
/// dropped stops verifying the cached token.
#[tokio::test(start_paused = true)]
async fn cached_tokens_keep_the_keys_fresh() {
    let settings = JwksSettings::default();
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    let auth = remote(&idp);
    let token = rsa_token(&claims());
    assert_eq!(outcome_of(&auth, &token).await, "Verified");
    assert_eq!(outcome_of(&auth, &token).await, "Verified");
    assert_eq!(idp.fetches(), 1);
    idp.serve(JWKS_URI, rotated_jwks());
    tokio::time::advance(settings.refresh_interval).await;
    // Served from the cache, and the refresh starts in the background.
    assert_eq!(outcome_of(&auth, &token).await, "Verified");
    settle().await;
    assert_eq!(idp.fetches(), 2, "the cached token started the refresh");
    assert_eq!(outcome_of(&auth, &token).await, "UnknownKid");
}

/// Two tokens of a rotated key at once: the second waits for the refetch the
/// first started (a refetch of its own would be rate-limited) and verifies.
#[tokio::test(start_paused = true)]
async fn a_token_during_a_kid_refetch_waits_for_it() {
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    let auth = Arc::new(remote(&idp));
    assert_eq!(outcome_of(&auth, &rsa_token(&claims())).await, "Verified");
    idp.serve(JWKS_URI, rotated_jwks());
    idp.answer_after(Duration::from_secs(1));
    let first = tokio::spawn({
        let auth = Arc::clone(&auth);
        async move { outcome_of(&auth, &new_kid_token()).await }
    });
    idp.wait_for_fetches(2).await;
    let second = sign(
        Algorithm::RS256,
        Some("new"),
        rsa_b(),
        &with(claims(), &json!({"sub": "bob"})),
    );
    assert_eq!(outcome_of(&auth, &second).await, "Verified");
    assert_eq!(first.await.unwrap(), "Verified");
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn outages_keep_the_last_good_keys() {
    let settings = JwksSettings::default();
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    let auth = remote(&idp);
    assert_eq!(outcome_of(&auth, &rsa_token(&claims())).await, "Verified");
    idp.down();
    assert_eq!(outcome_of(&auth, &new_kid_token()).await, "UnknownKid");
    assert_eq!(idp.fetches(), 2, "the refetch was tried and failed");
    let bob = rsa_token(&with(claims(), &json!({"sub": "bob"})));
    assert_eq!(outcome_of(&auth, &bob).await, "Verified");
    assert_eq!(idp.fetches(), 2);

    // Stale keys: each refresh fails, and the keys at hand still verify.
    tokio::time::advance(settings.refresh_interval).await;
    let carol = rsa_token(&with(claims(), &json!({"sub": "carol"})));
    assert_eq!(outcome_of(&auth, &carol).await, "Verified");
    idp.wait_for_fetches(3).await;
    settle().await;
    let dave = rsa_token(&with(claims(), &json!({"sub": "dave"})));
    assert_eq!(outcome_of(&auth, &dave).await, "Verified");
    settle().await;
    assert_eq!(
        idp.fetches(),
        3,
        "a failed refresh waits min_refetch_interval"
    );
    // A cached token does not use the keys; a new one does.
    tokio::time::advance(settings.min_refetch_interval).await;
    let erin = rsa_token(&with(claims(), &json!({"sub": "erin"})));
    assert_eq!(outcome_of(&auth, &erin).await, "Verified");
    idp.wait_for_fetches(4).await;
}

#[tokio::test(start_paused = true)]
async fn keys_are_unavailable_until_a_fetch_succeeds() {
    let interval = JwksSettings::default().min_refetch_interval;
    let idp = Arc::new(FakeIdp::default());
    let auth = remote(&idp);
    let token = rsa_token(&claims());
    assert_eq!(outcome_of(&auth, &token).await, "JwksUnavailable");
    assert_eq!(outcome_of(&auth, &token).await, "JwksUnavailable");
    assert_eq!(
        idp.fetches(),
        1,
        "a failed attempt waits min_refetch_interval"
    );

    idp.serve(JWKS_URI, standard_jwks());
    tokio::time::advance(interval - MILLI).await;
    assert_eq!(outcome_of(&auth, &token).await, "JwksUnavailable");
    assert_eq!(idp.fetches(), 1);
    tokio::time::advance(MILLI).await;
    assert_eq!(outcome_of(&auth, &token).await, "Verified");
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_keys_are_refreshed_in_the_background() {
    let refresh = JwksSettings::default().refresh_interval;
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    let auth = remote(&idp);
    let first = rsa_token(&claims());
    assert_eq!(outcome_of(&auth, &first).await, "Verified");
    let fetched = Instant::now();
    assert_eq!(idp.fetches(), 1);

    // The issuer drops key A.
    idp.serve(JWKS_URI, rotated_jwks());
    advance_to(fetched + refresh - MILLI).await;
    let bob = rsa_token(&with(claims(), &json!({"sub": "bob"})));
    assert_eq!(outcome_of(&auth, &bob).await, "Verified");
    settle().await;
    assert_eq!(idp.fetches(), 1, "not stale yet");

    // Once stale, the next request is verified with the keys at hand and
    // starts a refresh.
    advance_to(fetched + refresh).await;
    let carol = rsa_token(&with(claims(), &json!({"sub": "carol"})));
    assert_eq!(outcome_of(&auth, &carol).await, "Verified");
    idp.wait_for_fetches(2).await;
    settle().await;
    assert_eq!(auth.providers[0].keys_generation(), 2);

    // Key A is gone now, also for tokens verified (and cached) before.
    assert_eq!(outcome_of(&auth, &first).await, "UnknownKid");
    assert_eq!(outcome_of(&auth, &new_kid_token()).await, "Verified");
}

#[tokio::test(start_paused = true)]
async fn a_slow_issuer_times_out() {
    let timeout = JwksSettings::default().fetch_timeout;
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    idp.answer_after(Duration::from_secs(3600));
    let auth = remote(&idp);
    let start = Instant::now();
    assert_eq!(
        outcome_of(&auth, &rsa_token(&claims())).await,
        "JwksUnavailable"
    );
    let waited = start.elapsed();
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(1),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_uses_share_one_fetch() {
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    idp.answer_after(Duration::from_secs(1));
    let auth = remote(&idp);
    let (a, b) = (
        rsa_token(&claims()),
        rsa_token(&with(claims(), &json!({"sub": "bob"}))),
    );
    let (a, b) = tokio::join!(outcome_of(&auth, &a), outcome_of(&auth, &b));
    assert_eq!((a.as_str(), b.as_str()), ("Verified", "Verified"));
    assert_eq!(idp.fetches(), 1);
}

/// A cold start under concurrent traffic: the second request waits for the
/// fetch the first started, rather than being rejected.
#[tokio::test(start_paused = true)]
async fn a_request_during_the_first_fetch_waits_for_it() {
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    idp.answer_after(Duration::from_secs(1));
    let auth = Arc::new(remote(&idp));
    let first = tokio::spawn({
        let auth = Arc::clone(&auth);
        async move { outcome_of(&auth, &rsa_token(&claims())).await }
    });
    idp.wait_for_fetches(1).await;
    let bob = rsa_token(&with(claims(), &json!({"sub": "bob"})));
    assert_eq!(outcome_of(&auth, &bob).await, "Verified");
    assert_eq!(first.await.unwrap(), "Verified");
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_goes_away_does_not_cancel_the_fetch() {
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    idp.answer_after(Duration::from_secs(1));
    let auth = remote(&idp);
    let token = rsa_token(&claims());
    let gave_up = tokio::time::timeout(Duration::from_millis(100), outcome_of(&auth, &token)).await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(outcome_of(&auth, &token).await, "Verified");
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn keys_are_discovered_from_the_issuer() {
    let idp = FakeIdp::serving(
        "https://idp.example/.well-known/openid-configuration",
        json!({"issuer": ISSUER, "jwks_uri": "https://idp.example/discovered"}).to_string(),
    );
    idp.serve("https://idp.example/discovered", standard_jwks());
    let cache = JwksCache::new(Arc::clone(&idp) as Arc<dyn Fetch>, JwksSettings::default());
    let auth = Authenticator::from_providers(vec![Provider::compile(&rule(), &cache).unwrap()]);
    assert_eq!(outcome_of(&auth, &rsa_token(&claims())).await, "Verified");
    assert_eq!(
        *idp.log.lock().unwrap(),
        [
            "https://idp.example/.well-known/openid-configuration",
            "https://idp.example/discovered"
        ]
    );
}

#[tokio::test]
async fn a_discovery_document_of_another_issuer_gives_no_keys() {
    let idp = FakeIdp::serving(
        "https://idp.example/.well-known/openid-configuration",
        json!({"issuer": "https://evil.example", "jwks_uri": "https://idp.example/discovered"})
            .to_string(),
    );
    idp.serve("https://idp.example/discovered", standard_jwks());
    let cache = JwksCache::new(Arc::clone(&idp) as Arc<dyn Fetch>, JwksSettings::default());
    let auth = Authenticator::from_providers(vec![Provider::compile(&rule(), &cache).unwrap()]);
    assert_eq!(
        outcome_of(&auth, &rsa_token(&claims())).await,
        "JwksUnavailable"
    );
    assert_eq!(
        *idp.log.lock().unwrap(),
        ["https://idp.example/.well-known/openid-configuration"]
    );
}

#[tokio::test]
async fn a_discovery_document_without_jwks_uri_gives_no_keys() {
    let idp = FakeIdp::serving(
        "https://idp.example/.well-known/openid-configuration",
        json!({"issuer": ISSUER}).to_string(),
    );
    let cache = JwksCache::new(Arc::clone(&idp) as Arc<dyn Fetch>, JwksSettings::default());
    let auth = Authenticator::from_providers(vec![Provider::compile(&rule(), &cache).unwrap()]);
    assert_eq!(
        outcome_of(&auth, &rsa_token(&claims())).await,
        "JwksUnavailable"
    );
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn providers_share_the_key_set_of_a_uri() {
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    let cache = JwksCache::new(Arc::clone(&idp) as Arc<dyn Fetch>, JwksSettings::default());
    let rule = JwtRule {
        jwks_uri: Some(JWKS_URI.into()),
        ..rule()
    };
    let one = Authenticator::from_providers(vec![Provider::compile(&rule, &cache).unwrap()]);
    let two = Authenticator::from_providers(vec![Provider::compile(&rule, &cache).unwrap()]);
    let token = rsa_token(&claims());
    assert_eq!(outcome_of(&one, &token).await, "Verified");
    assert_eq!(outcome_of(&two, &token).await, "Verified");
    assert_eq!(idp.fetches(), 1);
}

// === configuration ===

#[test]
fn bad_rules_do_not_compile() {
    let cache = unused_cache();
    let err = Provider::compile(&inline_rule("{not json".into()), &cache).err();
    assert!(
        matches!(&err, Some(ProviderError::Jwks { issuer, .. }) if &**issuer == ISSUER),
        "{err:?}"
    );
    assert!(err.is_some_and(|e| e.to_string().contains(ISSUER)));

    let only_hmac = jwks(vec![jwk(
        &EncodingKey::from_secret(b"secret").unwrap(),
        Algorithm::HS256,
        Some("h"),
        true,
    )]);
    let err = Provider::compile(&inline_rule(only_hmac), &cache).err();
    assert!(matches!(err, Some(ProviderError::Jwks { .. })), "{err:?}");

    let bad_header = JwtRule {
        output_claim_to_headers: vec![ClaimToHeader {
            header: "bad header".into(),
            claim: "sub".into(),
        }],
        ..inline_rule(standard_jwks())
    };
    let err = Provider::compile(&bad_header, &cache).err();
    assert!(
        matches!(
            &err,
            Some(ProviderError::HeaderName {
                field: "outputClaimToHeaders",
                ..
            })
        ),
        "{err:?}"
    );

    let no_keys = JwtRule {
        issuer: "testing@secure.istio.io".into(),
        ..rule()
    };
    let err = Provider::compile(&no_keys, &cache).err();
    assert!(matches!(err, Some(ProviderError::NoKeys { .. })), "{err:?}");
}

fn policy(rules: Vec<JwtRule>, problems: Vec<Box<str>>) -> Arc<RequestAuthentication> {
    Arc::new(RequestAuthentication {
        key: ObjectKey::new("shop", "jwt"),
        selector: None,
        target_refs: Vec::new(),
        jwt_rules: rules,
        problems,
    })
}

#[tokio::test]
async fn broken_rules_reject_their_issuer_only() {
    let broken_issuer = "https://broken.example";
    let policies = [policy(
        vec![
            JwtRule {
                issuer: broken_issuer.into(),
                ..inline_rule("{not json".into())
            },
            inline_rule(standard_jwks()),
        ],
        Vec::new(),
    )];
    let auth = Authenticator::new(&policies, &unused_cache());
    assert_eq!(auth.problems().len(), 1);
    let problem = ztunnel::config::ErrorChain(&auth.problems()[0]).to_string();
    assert!(problem.contains("shop/jwt jwtRules[0]"), "{problem}");
    assert!(problem.contains(broken_issuer), "{problem}");
    assert!(matches!(auth.problems()[0], Error::Rule { index: 0, .. }));

    let broken = rsa_token(&with(claims(), &json!({"iss": broken_issuer})));
    assert_eq!(kind(&check(&auth, &bearer(&broken)).await), "InvalidRule");
    assert_eq!(
        kind(&check(&auth, &bearer(&rsa_token(&claims()))).await),
        "Verified"
    );
}

#[tokio::test]
async fn invalid_policies_reject_every_token() {
    let policies = [
        policy(vec![inline_rule(standard_jwks())], Vec::new()),
        policy(Vec::new(), vec!["spec.jwtRules[0].issuer: required".into()]),
    ];
    let auth = Authenticator::new(&policies, &unused_cache());
    assert!(auth.problems().is_empty());
    assert_eq!(
        kind(&check(&auth, &bearer(&rsa_token(&claims()))).await),
        "InvalidPolicy"
    );
    assert_eq!(kind(&check(&auth, &HeaderMap::new()).await), "NoToken");
}

// === claims and rewriting ===

#[tokio::test]
async fn claims_are_readable_by_policy() {
    let claims = with(
        claims(),
        &json!({
            "groups": ["dev", "admin", 7],
            "org": {"team": "core", "tags": ["a", "b"]},
            "scope": "read  write",
            "roles": "editor admin",
            "level": 5,
            "aud": ["x", "y"],
            "azp": "cli",
        }),
    );
    let token = verified(check(&standard(), &bearer(&rsa_token(&claims))).await);
    let path = |p: &[&str]| p.iter().map(|s| Box::<str>::from(*s)).collect::<Vec<_>>();
    let has = |p: &[&str], v: &str| token.any(&path(p), &mut |c| c == v);
    assert!(has(&["groups"], "admin"));
    assert!(!has(&["groups"], "ops"));
    assert!(!has(&["groups"], "7"));
    assert!(has(&["org", "team"], "core"));
    assert!(has(&["org", "tags"], "b"));
    assert!(!has(&["org", "team", "x"], "core"));
    assert!(has(&["scope"], "write"));
    assert!(!has(&["scope"], "read  write"));
    assert!(has(&["roles"], "editor admin"));
    assert!(!has(&["roles"], "admin"));
    assert!(!has(&["level"], "5"));
    assert!(!has(&["missing"], "x"));
    assert!(!has(&[], "x"));
    assert!(has(&["sub"], "alice"));

    let view = token.auth_view();
    let auth = view.request_auth();
    assert_eq!(auth.principal, "https://idp.example/alice");
    assert_eq!(auth.audiences, ["x", "y"]);
    assert_eq!(auth.presenter, Some("cli"));
    assert!(auth.claims.any(&path(&["groups"]), &mut |c| c == "dev"));
    let shown = format!("{token:?} {auth:?}");
    assert!(
        !shown.contains("admin") && shown.contains("alice"),
        "{shown}"
    );
}

fn rewrite_rule() -> JwtRule {
    JwtRule {
        from_headers: vec![JwtHeader {
            name: "authorization".into(),
            prefix: Some("Bearer ".into()),
        }],
        from_params: vec!["access_token".into()],
        from_cookies: vec!["session".into()],
        output_payload_to_header: Some("x-jwt-payload".into()),
        output_claim_to_headers: vec![
            ClaimToHeader {
                header: "x-sub".into(),
                claim: "sub".into(),
            },
            ClaimToHeader {
                header: "x-team".into(),
                claim: "org.team".into(),
            },
            ClaimToHeader {
                header: "x-level".into(),
                claim: "level".into(),
            },
            ClaimToHeader {
                header: "x-missing".into(),
                claim: "missing".into(),
            },
            ClaimToHeader {
                header: "x-note".into(),
                claim: "note".into(),
            },
        ],
        ..inline_rule(standard_jwks())
    }
}

async fn rewritten(auth: &Authenticator, mut map: HeaderMap, uri: &str) -> (HeaderMap, Uri) {
    let mut uri: Uri = uri.parse().unwrap();
    let token = match auth.authenticate(&map, &uri).await {
        Outcome::Verified(token) => Some(token),
        Outcome::NoToken => None,
        Outcome::Rejected(r) => panic!("rejected: {r:?}"),
    };
    auth.rewrite(token.as_ref(), &mut map, &mut uri).unwrap();
    (map, uri)
}

#[tokio::test]
async fn rewriting_strips_the_token_and_adds_claims() {
    let auth = authenticator(&[rewrite_rule()]);
    let claims = with(
        claims(),
        &json!({"org": {"team": "core"}, "level": 5, "note": "a\nb"}),
    );
    let token = rsa_token(&claims);
    let mut map = headers(&[
        ("authorization", "Basic YWxpY2U6c2VjcmV0"),
        ("x-sub", "root"),
        ("x-missing", "spoofed"),
        ("x-other", "kept"),
    ]);
    map.append(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let (map, uri) = rewritten(&auth, map, "/p?a=1").await;
    let values = |name: &str| -> Vec<&str> {
        map.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(values("authorization"), ["Basic YWxpY2U6c2VjcmV0"]);
    assert_eq!(values("x-sub"), ["alice"]);
    assert_eq!(values("x-team"), ["core"]);
    assert_eq!(values("x-other"), ["kept"]);
    assert!(values("x-missing").is_empty(), "spoofed header removed");
    assert!(values("x-level").is_empty(), "non-string claim skipped");
    assert!(values("x-note").is_empty(), "invalid header value skipped");
    assert_eq!(values("x-jwt-payload"), [token.split('.').nth(1).unwrap()]);
    assert_eq!(uri, "/p?a=1");

    // Params and cookies.
    let (_, uri) = rewritten(
        &auth,
        HeaderMap::new(),
        &format!("/p?a=1&access_token={token}&b=2"),
    )
    .await;
    assert_eq!(uri, "/p?a=1&b=2");
    let (_, uri) = rewritten(&auth, HeaderMap::new(), &format!("/p?access_token={token}")).await;
    assert_eq!(uri, "/p");
    let cookies = headers(&[("cookie", &format!("a=1; session={token}; b=2"))]);
    let (map, _) = rewritten(&auth, cookies, "/").await;
    assert_eq!(
        map.get_all("cookie").iter().collect::<Vec<_>>(),
        ["a=1; b=2"]
    );

    // Without a token, only the spoofed headers go.
    let (map, _) = rewritten(
        &auth,
        headers(&[("x-sub", "root"), ("x-other", "kept")]),
        "/",
    )
    .await;
    assert!(map.get("x-sub").is_none());
    assert_eq!(map.get("x-other").unwrap(), "kept");
}

#[tokio::test]
async fn forward_original_token_keeps_it() {
    let auth = authenticator(&[JwtRule {
        forward_original_token: true,
        ..rewrite_rule()
    }]);
    let token = rsa_token(&claims());
    let (map, _) = rewritten(&auth, bearer(&token), "/").await;
    assert_eq!(
        map.get("authorization").unwrap(),
        &format!("Bearer {token}")
    );
    assert_eq!(map.get("x-sub").unwrap(), "alice");
    let (_, uri) = rewritten(&auth, HeaderMap::new(), &format!("/p?access_token={token}")).await;
    assert_eq!(uri.query(), Some(format!("access_token={token}").as_str()));
}

#[tokio::test]
async fn tokens_of_another_authenticator_are_refused() {
    let one = standard();
    let token = verified(check(&one, &bearer(&rsa_token(&claims()))).await);
    for other in [Authenticator::from_providers(Vec::new()), standard()] {
        let (mut map, mut uri) = (bearer("kept"), Uri::from_static("/"));
        let err = other.rewrite(Some(&token), &mut map, &mut uri).err();
        assert!(matches!(err, Some(Error::ForeignToken)), "{err:?}");
        assert_eq!(map.get("authorization").unwrap(), "Bearer kept");
    }
}

// === cache ===

#[tokio::test]
async fn verified_tokens_are_cached() {
    let auth = standard();
    let token = rsa_token(&claims());
    let first = verified(check(&auth, &bearer(&token)).await);
    let second = verified(check(&auth, &bearer(&token)).await);
    assert!(
        Arc::ptr_eq(&first.info, &second.info),
        "second came from the cache"
    );
    assert_eq!(auth.cache.len(), 1);
}

#[test]
fn the_token_cache_is_bounded_and_expires() {
    let cache = token::TokenCache::new(4);
    let info = |exp: Option<u64>| {
        let mut claims = json!({"iss": ISSUER, "sub": "s"});
        if let Some(exp) = exp {
            claims["exp"] = json!(exp);
        }
        Arc::new(token::TokenInfo::new(claims, "p").unwrap())
    };
    let entry = |exp| token::Entry {
        info: info(exp),
        provider: 0,
        generation: 0,
    };
    for i in 0..10u8 {
        cache.insert([i; 32], entry(None));
        assert!(cache.len() <= 4, "{}", cache.len());
    }
    assert!(cache.get(&[9; 32], 0).is_some());
    assert!(cache.get(&[0; 32], 0).is_none(), "evicted");
    cache.insert([20; 32], entry(Some(1000)));
    assert!(cache.get(&[20; 32], 1000 + LEEWAY_SECS).is_some());
    assert!(cache.get(&[20; 32], 1001 + LEEWAY_SECS).is_none());
}

#[test]
fn authenticators_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let auth = standard();
    send_sync(&auth);
    let (map, uri) = (HeaderMap::new(), Uri::from_static("/"));
    send(&auth.authenticate(&map, &uri));
}

#[test]
fn percent_decoding() {
    let decode = |s: &str| location::percent_decode(s.as_bytes()).into_owned();
    assert_eq!(decode("a%5Fb"), b"a_b");
    assert_eq!(decode("plain"), b"plain");
    assert_eq!(decode("bad%zz%4"), b"bad%zz%4");
    assert_eq!(decode("%+f"), b"%+f");
}

// === HTTPS fetcher ===

const CA_NAME: &str = "ambit JWKS test CA";

/// A CA made for one test.
struct TestCa(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl TestCa {
    /// A CA whose name is `name`.
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        Self(rcgen::CertifiedIssuer::self_signed(params, key).unwrap())
    }

    /// Roots that trust this CA only.
    fn roots(&self) -> TrustRoots {
        TrustRoots::Pem(self.0.pem().into_bytes())
    }

    /// A server configuration with a certificate for `name` (a DNS name or
    /// an IP address) that this CA signed.
    fn server(&self, name: &str) -> rustls::ServerConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.0)
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap()
    }
}

/// An IdP on 127.0.0.1, over HTTPS when given a TLS configuration: serves
/// its key set at `/keys` and its OpenID discovery document (naming
/// `/keys`), 404 for other paths, and logs the paths it was asked for.
struct TestIdp {
    /// `https://127.0.0.1:<port>` (or `http://`): its issuer.
    base: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TestIdp {
    async fn https(tls: rustls::ServerConfig, jwks: String) -> Self {
        Self::start(Some(TlsAcceptor::from(Arc::new(tls))), jwks).await
    }

    async fn http(jwks: String) -> Self {
        Self::start(None, jwks).await
    }

    async fn start(tls: Option<TlsAcceptor>, jwks: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        let discovery = json!({"issuer": base, "jwks_uri": format!("{base}/keys")});
        let routes = Arc::new(HashMap::from([
            ("/keys", Bytes::from(jwks)),
            (
                "/.well-known/openid-configuration",
                Bytes::from(discovery.to_string()),
            ),
        ]));
        let requests = Arc::default();
        tokio::spawn(accept(listener, tls, routes, Arc::clone(&requests)));
        Self { base, requests }
    }

    fn jwks_uri(&self) -> String {
        format!("{}/keys", self.base)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    routes: Arc<HashMap<&'static str, Bytes>>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let (routes, requests, tls) = (Arc::clone(&routes), Arc::clone(&requests), tls.clone());
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let path = request.uri().path().to_owned();
            let response = match routes.get(path.as_str()) {
                Some(body) => Response::new(Full::new(body.clone())),
                None => Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Full::default())
                    .unwrap(),
            };
            requests.lock().unwrap().push(path);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let http = hyper::server::conn::http1::Builder::new();
            // Failed handshakes and connections are the client's to report.
            match tls {
                None => {
                    let _ = http
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                }
                Some(tls) => {
                    if let Ok(stream) = tls.accept(tcp).await {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
        });
    }
}

/// A cache fetching over HTTPS, trusting `roots`, and an authenticator
/// whose one rule has `issuer` and, if given, `jwks_uri`.
fn https_authenticator(
    roots: &TrustRoots,
    issuer: &str,
    jwks_uri: Option<String>,
) -> Authenticator {
    let cache = JwksCache::https(roots, JwksSettings::default()).expect("test CA loads");
    let rule = JwtRule {
        issuer: issuer.into(),
        jwks_uri: jwks_uri.map(Into::into),
        ..rule()
    };
    Authenticator::from_providers(vec![Provider::compile(&rule, &cache).unwrap()])
}

/// The rustls error somewhere in the causes of `error`.
fn tls_error(error: &(dyn StdError + 'static)) -> Option<rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        // `io::Error::source` skips the error it wraps: look at that one.
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => error.source(),
        };
    }
    None
}

#[tokio::test]
async fn keys_are_fetched_over_tls() {
    let ca = TestCa::new(CA_NAME);
    let idp = TestIdp::https(ca.server("127.0.0.1"), standard_jwks()).await;
    let auth = https_authenticator(&ca.roots(), ISSUER, Some(idp.jwks_uri()));
    assert_eq!(outcome_of(&auth, &rsa_token(&claims())).await, "Verified");
    assert_eq!(idp.requests(), ["/keys"]);
}

#[tokio::test]
async fn keys_are_discovered_over_tls() {
    let ca = TestCa::new(CA_NAME);
    let idp = TestIdp::https(ca.server("127.0.0.1"), standard_jwks()).await;
    let auth = https_authenticator(&ca.roots(), &idp.base, None);
    let token = sign(
        Algorithm::EdDSA,
        Some("ed"),
        ed(),
        &with(claims(), &json!({"iss": idp.base})),
    );
    assert_eq!(outcome_of(&auth, &token).await, "Verified");
    assert_eq!(
        idp.requests(),
        ["/.well-known/openid-configuration", "/keys"]
    );
}

// Another CA, and one that only takes the configured CA's name.
#[test_case("another CA", rustls::CertificateError::UnknownIssuer ; "another CA")]
#[test_case(CA_NAME, rustls::CertificateError::BadSignature ; "an impostor CA")]
#[tokio::test]
async fn servers_the_ca_did_not_sign_are_refused(other: &str, expected: rustls::CertificateError) {
    let (ca, other) = (TestCa::new(CA_NAME), TestCa::new(other));
    let idp = TestIdp::https(other.server("127.0.0.1"), standard_jwks()).await;
    let auth = https_authenticator(&ca.roots(), ISSUER, Some(idp.jwks_uri()));
    assert_eq!(
        outcome_of(&auth, &rsa_token(&claims())).await,
        "JwksUnavailable"
    );

    let fetcher = HttpsFetcher::new(&ca.roots()).unwrap();
    let err = fetcher.fetch(&idp.jwks_uri()).await.unwrap_err();
    assert!(matches!(err, FetchError::Request { .. }), "{err:?}");
    assert_eq!(
        tls_error(&err),
        Some(rustls::Error::InvalidCertificate(expected)),
        "{err:?}"
    );
    assert!(idp.requests().is_empty(), "nothing was asked over TLS");
}

#[tokio::test]
async fn certificates_for_another_name_are_refused() {
    let ca = TestCa::new(CA_NAME);
    let idp = TestIdp::https(ca.server("idp.example"), standard_jwks()).await;
    let auth = https_authenticator(&ca.roots(), ISSUER, Some(idp.jwks_uri()));
    assert_eq!(
        outcome_of(&auth, &rsa_token(&claims())).await,
        "JwksUnavailable"
    );
    let err = HttpsFetcher::new(&ca.roots())
        .unwrap()
        .fetch(&idp.jwks_uri())
        .await
        .unwrap_err();
    assert!(
        matches!(
            tls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{err:?}"
    );
    assert!(idp.requests().is_empty());
}

#[tokio::test]
async fn plain_http_is_refused_by_default() {
    let ca = TestCa::new(CA_NAME);
    let idp = TestIdp::http(standard_jwks()).await;
    // A rule whose keys could never be fetched is a problem of its policy
    // when it compiles, not a warning per token.
    let cache = JwksCache::https(&ca.roots(), JwksSettings::default()).unwrap();
    let by_uri = JwtRule {
        jwks_uri: Some(idp.jwks_uri().into()),
        ..rule()
    };
    let err = Provider::compile(&by_uri, &cache).err().unwrap();
    let message = ztunnel::config::ErrorChain(&err).to_string();
    assert!(message.contains("jwksUri cannot be fetched"), "{message}");
    assert!(message.contains("over plain http"), "{message}");
    // Nor is discovery from an `http://` issuer.
    let by_discovery = JwtRule {
        issuer: idp.base.clone().into(),
        ..rule()
    };
    let err = Provider::compile(&by_discovery, &cache).err().unwrap();
    let message = ztunnel::config::ErrorChain(&err).to_string();
    assert!(
        message.contains("issuer (OpenID discovery) cannot be fetched"),
        "{message}"
    );
    assert!(idp.requests().is_empty(), "{:?}", idp.requests());

    let fetcher = HttpsFetcher::new(&ca.roots()).unwrap();
    let err = fetcher.fetch(&idp.jwks_uri()).await.err();
    assert!(matches!(err, Some(FetchError::PlainHttp { .. })), "{err:?}");
    let err = fetcher.fetch("ftp://idp.example/keys").await.err();
    assert!(matches!(err, Some(FetchError::NotHttps { .. })), "{err:?}");
    let err = fetcher.fetch("not a uri").await.err();
    assert!(matches!(err, Some(FetchError::Uri { .. })), "{err:?}");
}

#[tokio::test]
async fn the_https_fetcher_checks_status_and_limits_bodies() {
    let ca = TestCa::new(CA_NAME);
    let idp = TestIdp::https(ca.server("127.0.0.1"), standard_jwks()).await;
    let fetcher = HttpsFetcher::new(&ca.roots()).unwrap();
    let body = fetcher.fetch(&idp.jwks_uri()).await.unwrap();
    assert_eq!(body, standard_jwks().as_bytes());

    let missing = format!("{}/missing", idp.base);
    let err = fetcher.fetch(&missing).await.err();
    assert!(
        matches!(
            err,
            Some(FetchError::Status {
                status: StatusCode::NOT_FOUND,
                ..
            })
        ),
        "{err:?}"
    );

    let len = standard_jwks().len();
    let exact = HttpsFetcher::new(&ca.roots()).unwrap().with_max_body(len);
    assert_eq!(exact.fetch(&idp.jwks_uri()).await.unwrap().len(), len);
    let small = HttpsFetcher::new(&ca.roots())
        .unwrap()
        .with_max_body(len - 1);
    let err = small.fetch(&idp.jwks_uri()).await.err();
    assert!(
        matches!(err, Some(FetchError::TooLarge { limit, .. }) if limit == len - 1),
        "{err:?}"
    );
}

#[tokio::test]
async fn plain_http_is_fetched_when_allowed() {
    let idp = TestIdp::http(standard_jwks()).await;
    let fetcher = HttpsFetcher::new(&TestCa::new(CA_NAME).roots())
        .unwrap()
        .allow_plain_http();
    let body = fetcher.fetch(&idp.jwks_uri()).await.unwrap();
    assert_eq!(body, standard_jwks().as_bytes());
    assert_eq!(idp.requests(), ["/keys"]);
}

#[test]
fn trust_roots_must_hold_a_certificate() {
    let err = HttpsFetcher::new(&TrustRoots::Pem(Vec::new())).err();
    assert!(matches!(err, Some(FetchError::NoRoots)), "{err:?}");
    let garbage = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".to_vec();
    let err = HttpsFetcher::new(&TrustRoots::Pem(garbage)).err();
    assert!(matches!(err, Some(FetchError::Pem(_))), "{err:?}");
    let not_a_certificate = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let err = HttpsFetcher::new(&TrustRoots::Pem(not_a_certificate.to_vec())).err();
    assert!(matches!(err, Some(FetchError::Tls(_))), "{err:?}");
}
