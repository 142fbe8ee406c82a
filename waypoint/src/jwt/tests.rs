//! Tests of RequestAuthentication: keys are fixed test keys (testdata/, made
//! with openssl: the waypoint has no direct dependency able to generate them),
//! JWKs are derived from them with jsonwebtoken, and remote key sets come
//! from an in-memory IdP that counts its fetches.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::{HeaderMap, Response, StatusCode, Uri, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, jwk::Jwk, jwk::JwkSet};
use serde_json::{Value, json};
use tokio::sync::watch;
use ztunnel::{
    policy::Claims,
    registry::{
        ObjectKey,
        policy::{ClaimToHeader, JwtHeader, JwtRule, RequestAuthentication},
    },
};

use super::{
    Authenticator, Error, Fetch, FetchError, HttpsFetcher, JwksCache, JwksSettings, MAX_TOKEN_LEN,
    Outcome, Provider, ProviderError, RejectReason, TrustRoots, VerifiedToken, location, token,
};

const RSA_A: &[u8] = include_bytes!("testdata/rsa-a.der");
const RSA_B: &[u8] = include_bytes!("testdata/rsa-b.der");
const RSA_A_PUBLIC_PEM: &[u8] = include_bytes!("testdata/rsa-a.pub.pem");
const EC_P256: &[u8] = include_bytes!("testdata/ec-p256.der");
const ED25519: &[u8] = include_bytes!("testdata/ed25519.der");
const TEST_CA: &[u8] = include_bytes!("testdata/ca.pem");

const ISSUER: &str = "https://idp.example";
const JWKS_URI: &str = "https://idp.example/keys";

// === helpers ===

fn rsa_a() -> EncodingKey {
    EncodingKey::from_rsa_der(RSA_A)
}

fn rsa_b() -> EncodingKey {
    EncodingKey::from_rsa_der(RSA_B)
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_der(EC_P256)
}

fn ed() -> EncodingKey {
    EncodingKey::from_ed_der(ED25519)
}

/// The public JWK of `key`, with `kid`; `alg` set unless `None`.
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

/// The usual key set: RSA A (`rsa`, any RSA alg), EC (`ec`), Ed25519 (`ed`).
fn standard_jwks() -> String {
    jwks(vec![
        jwk(&rsa_a(), Algorithm::RS256, Some("rsa"), false),
        jwk(&ec(), Algorithm::ES256, Some("ec"), true),
        jwk(&ed(), Algorithm::EdDSA, Some("ed"), true),
    ])
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "alice", "exp": now() + 600})
}

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
    sign(Algorithm::RS256, Some("rsa"), &rsa_a(), claims)
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

#[track_caller]
fn verified(outcome: Outcome) -> VerifiedToken {
    match outcome {
        Outcome::Verified(token) => token,
        other => panic!("expected a verified token, got {other:?}"),
    }
}

/// An IdP in memory: serves `routes`, 503 for others; counts fetches.
#[derive(Default)]
struct FakeIdp {
    routes: Mutex<HashMap<String, String>>,
    log: Mutex<Vec<String>>,
    count: watch::Sender<usize>,
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

fn settings(refresh: Duration, min_refetch: Duration) -> JwksSettings {
    JwksSettings {
        refresh_interval: refresh,
        min_refetch_interval: min_refetch,
        fetch_timeout: Duration::from_secs(5),
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn remote(idp: &Arc<FakeIdp>, settings: JwksSettings) -> Authenticator {
    let cache = JwksCache::new(Arc::clone(idp) as Arc<dyn Fetch>, settings);
    let rule = JwtRule {
        jwks_uri: Some(JWKS_URI.into()),
        ..rule()
    };
    Authenticator::from_providers(vec![
        Provider::compile(&rule, &cache).expect("remote rule compiles"),
    ])
}

// === verification ===

#[tokio::test]
async fn valid_tokens_verify_with_each_algorithm() {
    let auth = standard();
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa", rsa_a()),
        (Algorithm::PS384, "rsa", rsa_a()),
        (Algorithm::ES256, "ec", ec()),
        (Algorithm::EdDSA, "ed", ed()),
    ] {
        let claims = with(
            claims(),
            &json!({"azp": "cli", "alg_used": format!("{alg:?}")}),
        );
        let token = verified(check(&auth, &bearer(&sign(alg, Some(kid), &key, &claims))).await);
        assert_eq!(token.issuer(), ISSUER, "{alg:?}");
        assert_eq!(token.subject(), "alice");
        assert_eq!(token.principal(), "https://idp.example/alice");
        assert_eq!(token.presenter(), Some("cli"));
        assert!(token.audiences().is_empty());
        assert_eq!(token.claims()["alg_used"], format!("{alg:?}"));
    }
}

#[tokio::test]
async fn time_claims_are_checked_with_leeway() {
    let auth = standard();
    let n = now();
    let cases = [
        (json!({"exp": n - 120}), "Expired"),
        (json!({"exp": n - 30}), "Verified"),
        (json!({"exp": null}), "Verified"),
        (json!({"exp": "soon"}), "Claim"),
        (json!({"nbf": "later"}), "Claim"),
        (json!({"nbf": n + 300}), "NotYetValid"),
        (json!({"nbf": n + 30}), "Verified"),
        (json!({"iat": n + 300}), "IssuedInFuture"),
        (json!({"iat": n + 30}), "Verified"),
        (json!({"iat": n - 3000}), "Verified"),
        (json!({"iat": "yesterday"}), "Claim"),
    ];
    for (extra, expected) in cases {
        let token = rsa_token(&with(claims(), &extra));
        assert_eq!(
            kind(&check(&auth, &bearer(&token)).await),
            expected,
            "{extra}"
        );
    }
}

#[tokio::test]
async fn issuer_and_audiences_are_checked() {
    let with_audiences = authenticator(&[JwtRule {
        audiences: vec!["api".into(), "web".into()],
        ..inline_rule(standard_jwks())
    }]);
    let cases = [
        (json!({"aud": "api"}), "Verified"),
        (json!({"aud": ["other", "web"]}), "Verified"),
        (json!({"aud": "other"}), "Audience"),
        (json!({"aud": []}), "Audience"),
        (json!({}), "Audience"),
        (
            json!({"aud": "api", "iss": "https://evil.example"}),
            "UnknownIssuer",
        ),
        (json!({"aud": "api", "iss": null}), "Claim"),
        (json!({"aud": 5}), "Audience"),
    ];
    for (extra, expected) in cases {
        let token = rsa_token(&with(claims(), &extra));
        let outcome = check(&with_audiences, &bearer(&token)).await;
        assert_eq!(kind(&outcome), expected, "{extra}");
    }
    let token = rsa_token(&with(claims(), &json!({"aud": ["other", "web"]})));
    let token = verified(check(&with_audiences, &bearer(&token)).await);
    assert_eq!(token.audiences(), ["other", "web"]);

    // Without audiences in the rule, `aud` is not checked, but must be a
    // string or a list of strings.
    let token = rsa_token(&with(claims(), &json!({"aud": "anything"})));
    assert_eq!(kind(&check(&standard(), &bearer(&token)).await), "Verified");
    let token = rsa_token(&with(claims(), &json!({"aud": [5]})));
    assert_eq!(kind(&check(&standard(), &bearer(&token)).await), "Claim");
}

#[tokio::test]
async fn wrong_signatures_are_rejected() {
    let auth = standard();
    // Signed by key B, naming key A.
    let forged = sign(Algorithm::RS256, Some("rsa"), &rsa_b(), &claims());
    assert_eq!(kind(&check(&auth, &bearer(&forged)).await), "Signature");
    // A's signature over another payload.
    let good = rsa_token(&claims());
    let other = rsa_token(&with(claims(), &json!({"sub": "root"})));
    let (g, o): (Vec<&str>, Vec<&str>) = (good.split('.').collect(), other.split('.').collect());
    let spliced = format!("{}.{}.{}", g[0], o[1], g[2]);
    assert_eq!(kind(&check(&auth, &bearer(&spliced)).await), "Signature");
    // An ES256 token naming the RSA key.
    let confused = sign(Algorithm::ES256, Some("rsa"), &ec(), &claims());
    assert_eq!(kind(&check(&auth, &bearer(&confused)).await), "KeyMismatch");
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
    assert_eq!(kind(&check(&auth, &bearer(&none)).await), "Malformed");

    // The classic confusion: HS256 with the RSA public key as the secret.
    let public = EncodingKey::from_secret(RSA_A_PUBLIC_PEM).unwrap();
    for kid in ["rsa", "hmac"] {
        let hs = sign(Algorithm::HS256, Some(kid), &public, &claims());
        assert_eq!(
            kind(&check(&auth, &bearer(&hs)).await),
            "Algorithm",
            "{kid}"
        );
    }
    let hs = sign(
        Algorithm::HS512,
        Some("hmac"),
        &EncodingKey::from_secret(secret).unwrap(),
        &claims(),
    );
    let outcome = check(&auth, &bearer(&hs)).await;
    assert_eq!(kind(&outcome), "Algorithm");
    let Outcome::Rejected(rejection) = outcome else {
        unreachable!()
    };
    assert!(matches!(
        rejection.reason(),
        RejectReason::Algorithm(Algorithm::HS512)
    ));
    assert_eq!(rejection.issuer(), Some(ISSUER));
    assert_eq!(rejection.subject(), Some("alice"));
}

#[tokio::test]
async fn malformed_tokens_are_rejected() {
    let auth = standard();
    let header = b64(br#"{"alg":"RS256","kid":"rsa"}"#);
    let payload = b64(claims().to_string().as_bytes());
    let cases = [
        ("not-a-jwt".to_owned(), "NotCompact"),
        ("a.b".to_owned(), "NotCompact"),
        ("a.b.c.d".to_owned(), "NotCompact"),
        ("ab$.cd.ef".to_owned(), "NotCompact"),
        ("a+b.cd.ef".to_owned(), "NotCompact"),
        ("a.b.c".to_owned(), "Malformed"),
        (format!("{}.{payload}.c2ln", b64(b"not json")), "Malformed"),
        (format!("{header}.{}.c2ln", b64(b"not json")), "Malformed"),
        (
            format!("{header}.{}.c2ln", b64(br#"[null,null,null,"x"]"#)),
            "Malformed",
        ),
    ];
    for (token, expected) in cases {
        assert_eq!(
            kind(&check(&auth, &bearer(&token)).await),
            expected,
            "{token}"
        );
    }
}

#[tokio::test]
async fn oversized_tokens_are_rejected_without_decoding() {
    let auth = standard();
    let padded = |len: usize| format!("{}.b.c", "a".repeat(len - 4));
    let at_limit = padded(MAX_TOKEN_LEN);
    assert_eq!(at_limit.len(), MAX_TOKEN_LEN);
    assert_eq!(kind(&check(&auth, &bearer(&at_limit)).await), "Malformed");
    let over = padded(MAX_TOKEN_LEN + 1);
    assert_eq!(kind(&check(&auth, &bearer(&over)).await), "Oversized");
}

#[tokio::test]
async fn keys_are_chosen_by_kid_or_uniquely_without() {
    let rsa_only = authenticator(&[inline_rule(jwks(vec![jwk(
        &rsa_a(),
        Algorithm::RS256,
        None,
        true,
    )]))]);
    let kidless = sign(Algorithm::RS256, None, &rsa_a(), &claims());
    assert_eq!(kind(&check(&rsa_only, &bearer(&kidless)).await), "Verified");
    let es_kidless = sign(Algorithm::ES256, None, &ec(), &claims());
    assert_eq!(kind(&check(&rsa_only, &bearer(&es_kidless)).await), "NoKey");
    // A token with a kid never uses a key without one.
    assert_eq!(
        kind(&check(&rsa_only, &bearer(&rsa_token(&claims()))).await),
        "UnknownKid"
    );
    // The JWK says RS256: not for PS256.
    let ps = sign(Algorithm::PS256, None, &rsa_a(), &claims());
    assert_eq!(kind(&check(&rsa_only, &bearer(&ps)).await), "NoKey");

    let two = authenticator(&[inline_rule(jwks(vec![
        jwk(&rsa_a(), Algorithm::RS256, Some("a"), true),
        jwk(&rsa_b(), Algorithm::RS256, Some("b"), true),
    ]))]);
    assert_eq!(kind(&check(&two, &bearer(&kidless)).await), "AmbiguousKey");
    let b = sign(Algorithm::RS256, Some("b"), &rsa_b(), &claims());
    assert_eq!(kind(&check(&two, &bearer(&b)).await), "Verified");
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

#[tokio::test]
async fn unknown_kid_refetches_once_then_is_rate_limited() {
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    let auth = remote(&idp, settings(HOUR, HOUR));
    assert_eq!(
        kind(&check(&auth, &bearer(&rsa_token(&claims()))).await),
        "Verified"
    );
    assert_eq!(idp.fetches(), 1);

    let unknown = sign(Algorithm::RS256, Some("new"), &rsa_b(), &claims());
    assert_eq!(kind(&check(&auth, &bearer(&unknown)).await), "UnknownKid");
    assert_eq!(idp.fetches(), 2, "one refetch for the unknown kid");
    assert_eq!(kind(&check(&auth, &bearer(&unknown)).await), "UnknownKid");
    assert_eq!(idp.fetches(), 2, "no second refetch within the interval");
}

#[tokio::test]
async fn unknown_kid_refetch_picks_up_rotated_keys() {
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    let auth = remote(&idp, settings(HOUR, Duration::ZERO));
    assert_eq!(
        kind(&check(&auth, &bearer(&rsa_token(&claims()))).await),
        "Verified"
    );
    idp.serve(
        JWKS_URI,
        jwks(vec![jwk(&rsa_b(), Algorithm::RS256, Some("new"), true)]),
    );
    let rotated = sign(Algorithm::RS256, Some("new"), &rsa_b(), &claims());
    assert_eq!(kind(&check(&auth, &bearer(&rotated)).await), "Verified");
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test]
async fn outage_keeps_the_last_good_keys() {
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    let auth = remote(&idp, settings(HOUR, Duration::ZERO));
    assert_eq!(
        kind(&check(&auth, &bearer(&rsa_token(&claims()))).await),
        "Verified"
    );
    idp.down();
    let unknown = sign(Algorithm::RS256, Some("new"), &rsa_b(), &claims());
    assert_eq!(kind(&check(&auth, &bearer(&unknown)).await), "UnknownKid");
    assert_eq!(idp.fetches(), 2, "the refetch was tried and failed");
    let fresh = rsa_token(&with(claims(), &json!({"sub": "bob"})));
    let token = verified(check(&auth, &bearer(&fresh)).await);
    assert_eq!(token.subject(), "bob");
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test]
async fn keys_are_unavailable_until_a_fetch_succeeds() {
    let idp = Arc::new(FakeIdp::default());
    let auth = remote(&idp, settings(HOUR, HOUR));
    let token = rsa_token(&claims());
    assert_eq!(
        kind(&check(&auth, &bearer(&token)).await),
        "JwksUnavailable"
    );
    assert_eq!(
        kind(&check(&auth, &bearer(&token)).await),
        "JwksUnavailable"
    );
    assert_eq!(
        idp.fetches(),
        1,
        "a failed attempt waits min_refetch_interval"
    );

    let idp = Arc::new(FakeIdp::default());
    let auth = remote(&idp, settings(HOUR, Duration::ZERO));
    assert_eq!(
        kind(&check(&auth, &bearer(&token)).await),
        "JwksUnavailable"
    );
    idp.serve(JWKS_URI, standard_jwks());
    assert_eq!(kind(&check(&auth, &bearer(&token)).await), "Verified");
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test]
async fn stale_keys_are_refreshed_in_the_background() {
    let idp = FakeIdp::serving(JWKS_URI, standard_jwks());
    let auth = remote(&idp, settings(Duration::ZERO, Duration::ZERO));
    let first = rsa_token(&claims());
    assert_eq!(kind(&check(&auth, &bearer(&first)).await), "Verified");
    assert_eq!(idp.fetches(), 1);

    // The issuer drops key A. The next request is verified with the keys at
    // hand and starts a refresh.
    idp.serve(
        JWKS_URI,
        jwks(vec![jwk(&rsa_b(), Algorithm::RS256, Some("new"), true)]),
    );
    let second = rsa_token(&with(claims(), &json!({"sub": "bob"})));
    assert_eq!(kind(&check(&auth, &bearer(&second)).await), "Verified");
    idp.wait_for_fetches(2).await;
    let provider = &auth.providers[0];
    tokio::time::timeout(Duration::from_secs(5), async {
        while provider.keys_generation() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the refreshed keys are in use");

    // Key A is gone now, also for tokens verified (and cached) before.
    let outcome = check(&auth, &bearer(&first)).await;
    assert_eq!(kind(&outcome), "UnknownKid");
    let rotated = sign(Algorithm::RS256, Some("new"), &rsa_b(), &claims());
    assert_eq!(kind(&check(&auth, &bearer(&rotated)).await), "Verified");
}

#[tokio::test]
async fn a_slow_issuer_times_out() {
    struct Hang;
    impl Fetch for Hang {
        fn fetch<'a>(&'a self, _uri: &'a str) -> BoxFuture<'a, Result<Bytes, FetchError>> {
            Box::pin(futures::future::pending())
        }
    }
    let cache = JwksCache::new(
        Arc::new(Hang),
        JwksSettings {
            fetch_timeout: Duration::from_millis(50),
            ..JwksSettings::default()
        },
    );
    let rule = JwtRule {
        jwks_uri: Some(JWKS_URI.into()),
        ..rule()
    };
    let auth = Authenticator::from_providers(vec![Provider::compile(&rule, &cache).unwrap()]);
    let outcome = tokio::time::timeout(
        Duration::from_secs(5),
        check(&auth, &bearer(&rsa_token(&claims()))),
    )
    .await
    .expect("the fetch timeout applies");
    assert_eq!(kind(&outcome), "JwksUnavailable");
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
    assert_eq!(
        kind(&check(&auth, &bearer(&rsa_token(&claims()))).await),
        "Verified"
    );
    assert_eq!(
        *idp.log.lock().unwrap(),
        [
            "https://idp.example/.well-known/openid-configuration",
            "https://idp.example/discovered"
        ]
    );
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
    assert_eq!(kind(&check(&one, &bearer(&token)).await), "Verified");
    assert_eq!(kind(&check(&two, &bearer(&token)).await), "Verified");
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
    assert!(cache.get(&[20; 32], 1000 + super::LEEWAY_SECS).is_some());
    assert!(cache.get(&[20; 32], 1001 + super::LEEWAY_SECS).is_none());
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

/// A plain-HTTP server on loopback answering every request with `status`
/// and `body`.
async fn serve(status: StatusCode, body: Vec<u8>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Bytes::from(body);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            let service = hyper::service::service_fn(move |_req| {
                let response = Response::builder()
                    .status(status)
                    .body(Full::new(body.clone()))
                    .unwrap();
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

fn test_fetcher() -> HttpsFetcher {
    HttpsFetcher::new(&TrustRoots::Pem(TEST_CA.to_vec())).expect("test CA loads")
}

#[tokio::test]
async fn the_https_fetcher_refuses_plain_http_and_limits_bodies() {
    let addr = serve(StatusCode::OK, standard_jwks().into_bytes()).await;
    let uri = format!("http://{addr}/keys");
    let err = test_fetcher().fetch(&uri).await.err();
    assert!(matches!(err, Some(FetchError::PlainHttp { .. })), "{err:?}");
    let err = test_fetcher().fetch("ftp://idp.example/keys").await.err();
    assert!(matches!(err, Some(FetchError::NotHttps { .. })), "{err:?}");

    let allowed = test_fetcher().allow_plain_http();
    let body = allowed
        .fetch(&uri)
        .await
        .expect("fetch over http when allowed");
    assert_eq!(body, standard_jwks().as_bytes());
    let small = test_fetcher().allow_plain_http().with_max_body(64);
    let err = small.fetch(&uri).await.err();
    assert!(
        matches!(err, Some(FetchError::TooLarge { limit: 64, .. })),
        "{err:?}"
    );

    let missing = serve(StatusCode::NOT_FOUND, Vec::new()).await;
    let err = allowed.fetch(&format!("http://{missing}/keys")).await.err();
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
}

#[test]
fn trust_roots_must_hold_a_certificate() {
    let err = HttpsFetcher::new(&TrustRoots::Pem(Vec::new())).err();
    assert!(matches!(err, Some(FetchError::NoRoots)), "{err:?}");
    let garbage = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".to_vec();
    let err = HttpsFetcher::new(&TrustRoots::Pem(garbage)).err();
    assert!(matches!(err, Some(FetchError::Pem(_))), "{err:?}");
}
