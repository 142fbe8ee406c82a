//! The waypoint's JWT verification (RequestAuthentication) on any bearer
//! token: never a panic, and never a token accepted without a signature of
//! the rule's keys (the keys' private halves exist nowhere: no input can be
//! signed by them).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use waypoint::jwt::{Authenticator, JwksCache, JwksSettings, Outcome, Provider, TrustRoots};
use ztunnel::registry::policy::JwtRule;

/// An ES256 and an EdDSA public key, inline (no fetch).
const JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "8blK92uSNF-7LijdiLRntfa3Eb1WoPGbzDmFlNvwZjE", "y": "_SK7io4spFY4ON0i74B_2LD2aZ7RGhcKdk-N935E3UE", "kid": "ec", "alg": "ES256", "use": "sig"}, {"kty": "OKP", "crv": "Ed25519", "x": "LhiaPy3RQ95QKZKEhgrmHuH3WrR0QBdBj11Lbe-9kbo", "kid": "ed", "alg": "EdDSA", "use": "sig"}]}"#;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
});

static AUTHENTICATOR: LazyLock<Authenticator> = LazyLock::new(|| {
    let cache = JwksCache::https(&TrustRoots::Native, JwksSettings::default())
        .expect("the fetcher (never used: the keys are inline)");
    let rule = JwtRule {
        issuer: "https://issuer.example".into(),
        audiences: vec!["api".into()],
        jwks_uri: None,
        jwks: Some(JWKS.into()),
        from_headers: Vec::new(),
        from_params: vec!["access_token".into()],
        from_cookies: Vec::new(),
        forward_original_token: false,
        output_payload_to_header: None,
        output_claim_to_headers: Vec::new(),
    };
    let provider = Provider::compile(&rule, &cache).expect("the rule compiles");
    Authenticator::from_providers(vec![provider])
});

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) else {
        return;
    };
    headers.insert(http::header::AUTHORIZATION, value);
    let uri = http::Uri::from_static("/api/items");
    let outcome = RUNTIME.block_on(AUTHENTICATOR.authenticate(&headers, &uri));
    assert!(
        !matches!(outcome, Outcome::Verified(_)),
        "a token no key signed was accepted: {token:?}"
    );
});
