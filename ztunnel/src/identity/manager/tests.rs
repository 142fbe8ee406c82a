//! Renewal timing and the snapshot's states; the request/rotation/outage paths
//! are tested over the real gRPC CA in `ztunnel/tests/identity_ca.rs`.

use super::*;
use crate::identity::{
    TrustDomain,
    ca::{CertificateAuthority, RootCa},
};

fn cert(lifetime_secs: i64) -> WorkloadCert {
    let td = TrustDomain::default();
    let root = RootCa::generate(&td, Duration::from_secs(3600)).unwrap();
    let bundle = TrustBundle::from_pem(root.cert_pem().as_bytes(), "test").unwrap();
    let ca = CertificateAuthority::new(
        root,
        td,
        super::super::ca::SigningPolicy::default(),
        Vec::new(),
    )
    .unwrap();
    let identity: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
    let (key, csr_pem) = csr::create(&identity).unwrap();
    let issued = ca.sign(&csr_pem, lifetime_secs).unwrap();
    WorkloadCert::from_response(&identity, &key, &issued.chain_pem, &bundle).unwrap()
}

#[test]
fn renewal_is_at_half_life_give_or_take_five_percent() {
    let cert = cert(1000);
    let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
    // 1000 s from issuance, valid from 60 s before it.
    assert_eq!(lifetime, Duration::from_secs(1060));
    let (low, high) = (lifetime.mul_f64(0.45), lifetime.mul_f64(0.55));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        // Measured from not_before, so the elapsed time since issuance does not matter.
        let delay = renewal_delay(&cert, cert.not_before());
        assert!(delay >= low && delay <= high, "{delay:?}");
        seen.insert(delay.as_secs());
    }
    assert!(seen.len() > 10, "jitter spreads renewals: {seen:?}");
    // Past the renewal time: renew now.
    assert_eq!(renewal_delay(&cert, cert.not_after()), Duration::ZERO);
}

#[test]
fn backoff_jitter_stays_within_its_spread() {
    for _ in 0..200 {
        let d = jitter(Duration::from_secs(10), 0.2);
        assert!(
            d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
            "{d:?}"
        );
    }
}

#[test]
fn snapshot_states() {
    let identity: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
    let now = SystemTime::now();
    let snap = snapshot_of(&identity, &CertState::Initializing, now);
    assert_eq!((snap.state, snap.serial), ("initializing", None));
    let snap = snapshot_of(
        &identity,
        &CertState::Unavailable {
            error: "down".to_owned(),
        },
        now,
    );
    assert_eq!(
        (snap.state, snap.last_error.as_deref()),
        ("unavailable", Some("down"))
    );

    let cert = Arc::new(cert(3600));
    let available = CertState::Available {
        cert: cert.clone(),
        last_error: None,
    };
    let snap = snapshot_of(&identity, &available, now);
    assert_eq!(snap.state, "available");
    assert_eq!(snap.serial.as_deref(), Some(cert.serial()));
    assert!(
        snap.not_after.as_deref().unwrap().ends_with('Z'),
        "{snap:?}"
    );
    let failing = CertState::Available {
        cert: cert.clone(),
        last_error: Some("down".to_owned()),
    };
    assert_eq!(
        snapshot_of(&identity, &failing, now).state,
        "renewal_failing"
    );
    assert_eq!(
        snapshot_of(&identity, &failing, cert.not_after()).state,
        "expired"
    );
    let json = serde_json::to_value(snapshot_of(&identity, &available, now)).unwrap();
    assert_eq!(json["identity"], "spiffe://cluster.local/ns/a/sa/b");
}

#[test]
fn debug_of_a_certificate_has_no_key() {
    let cert = cert(60);
    let text = format!("{cert:?}");
    assert!(text.contains("serial"), "{text}");
    let key = cert.private_key();
    let key_bytes = key.secret_der();
    // No run of the key's bytes shows up, in any usual rendering.
    assert!(!text.contains(&format!("{:?}", &key_bytes[..8])), "{text}");
    assert!(!text.contains("PRIVATE"), "{text}");
}
