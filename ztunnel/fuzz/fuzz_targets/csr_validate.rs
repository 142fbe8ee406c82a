//! CSR validation on arbitrary DER (wrapped in a PEM block) and arbitrary text:
//! never panics; anything accepted names a SPIFFE ID of the CA's trust domain.
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use ztunnel::identity::{TrustDomain, csr};

fuzz_target!(|data: &[u8]| {
    let trust_domain = TrustDomain::default();
    let body = base64::engine::general_purpose::STANDARD.encode(data);
    let pem =
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n");
    for input in [pem, String::from_utf8_lossy(data).into_owned()] {
        if let Ok(valid) = csr::validate(&input, &trust_domain) {
            assert_eq!(valid.identity().trust_domain(), &trust_domain);
        }
    }
});
