//! SPIFFE IDs: a string that parses prints back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ztunnel::identity::Identity;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(identity) = text.parse::<Identity>() {
        let again: Identity = identity
            .to_string()
            .parse()
            .expect("a printed identity parses");
        assert_eq!(again, identity);
    }
});
