//! The CA's CSR validation: any PEM text is refused or yields one SPIFFE
//! identity of the trust domain; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ztunnel::identity::{TrustDomain, csr};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = csr::validate(text, &TrustDomain::default());
    }
});
