//! The waypoint's HTTP/1 framing scanner (request smuggling checks) on any
//! byte stream, fed in pieces of any size: never a panic.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use waypoint::request::{Verdicts, framing::Scanner};

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let mut scanner = Scanner::new(Arc::new(Verdicts::default()));
    for piece in stream.chunks(usize::from(split).max(1)) {
        scanner.feed(piece);
    }
    let _ = scanner.is_following();
});
