//! The waypoint's request target normalization (what L7 policy matches):
//! never a panic, and a normalized path normalizes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint::request::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normalized) = normalize(target) {
        let again = normalize(normalized.as_str()).expect("a normalized target normalizes");
        assert_eq!(again.path(), normalized.path(), "{target:?}");
    }
});
