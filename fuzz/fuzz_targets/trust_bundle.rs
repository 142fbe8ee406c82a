//! PEM bundles: the trust bundle loader and the CA's certificate splitter
//! refuse or accept any bytes without panicking, and agree on the count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ztunnel::identity::{TrustBundle, ca::pem_certs};

fuzz_target!(|data: &[u8]| {
    let _ = TrustBundle::from_pem(data, "fuzz");
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(certs) = pem_certs(text)
    {
        for (pem, der) in certs {
            let again = pem_certs(&pem).expect("an encoded certificate parses");
            assert_eq!(again.len(), 1);
            assert_eq!(again[0].1, der);
        }
    }
});
