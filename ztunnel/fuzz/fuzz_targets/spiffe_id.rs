//! SPIFFE ID parsing: never panics, and whatever is accepted prints back
//! byte for byte (no normalization an attacker could exploit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ztunnel::identity::Identity;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(id) = text.parse::<Identity>()
    {
        assert_eq!(id.to_string(), text);
    }
});
