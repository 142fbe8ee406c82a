//! What an HBONE server reads of a CONNECT: the authority (the target) and
//! the trace context headers. Input: the authority on the first line, then
//! `name: value` header lines.
#![no_main]

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use ztunnel::trace::TraceContext;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    if let Some(target) = lines.next()
        && let Ok(uri) = Uri::try_from(target)
    {
        let _ = uri
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
    }
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }
    if let Some(context) = TraceContext::from_headers(&headers) {
        // What is carried on is what was read, and reads back the same.
        let mut out = HeaderMap::new();
        context.child().insert_into(&mut out);
        let again = TraceContext::from_headers(&out).expect("a written context reads back");
        assert_eq!(again.parent.trace_id(), context.parent.trace_id());
        assert_eq!(
            (again.state, again.baggage),
            (context.state, context.baggage)
        );
    }
});
