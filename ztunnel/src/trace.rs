//! W3C trace context: the `traceparent` a client ztunnel sends in each HBONE
//! CONNECT (a new trace per connection), that the destination's ztunnel and
//! the waypoint log, and that the waypoint continues for requests that arrive
//! without one, so every line of one connection, on every node, and the HTTP
//! requests it carried share a trace id. A CONNECT may carry the trace's
//! `tracestate` and `baggage` too ([`TraceContext`]): the waypoint passes them
//! on to the next hop of a TCP stream and to requests that come without them.

use std::fmt;

use hyper::http::{HeaderMap, HeaderValue};

/// The header, in CONNECT requests as in HTTP.
pub const HEADER: &str = "traceparent";
/// Vendor trace state (W3C Trace Context), carried with `traceparent`.
pub const STATE_HEADER: &str = "tracestate";
/// Application key-values that travel with the trace (W3C Baggage).
pub const BAGGAGE_HEADER: &str = "baggage";

/// Longest `tracestate` carried: the W3C limit of 32 members of at most 256
/// bytes is more than proxies must keep; 512 bytes is what the specification
/// asks every hop to propagate.
pub const MAX_STATE: usize = 512;
/// Longest `baggage` carried (the W3C Baggage limit).
pub const MAX_BAGGAGE: usize = 8192;
/// Most `baggage` members carried (the W3C Baggage limit).
pub const MAX_BAGGAGE_MEMBERS: usize = 180;

/// A trace's context as a hop carries it: the parent, and the `tracestate`
/// and `baggage` that go with it. A state or baggage that is malformed or
/// too large is dropped (the trace goes on without it), never passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The `traceparent`.
    pub parent: TraceParent,
    /// The `tracestate`, as received.
    pub state: Option<HeaderValue>,
    /// The `baggage`, as received.
    pub baggage: Option<HeaderValue>,
}

impl TraceContext {
    /// A new trace, without state or baggage.
    pub fn new_root() -> Self {
        Self::from(TraceParent::new_root())
    }

    /// The context of `headers`, when they carry a valid `traceparent`.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let parent = headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse)?;
        Some(Self {
            parent,
            state: headers
                .get(STATE_HEADER)
                .filter(|v| valid_state(v))
                .cloned(),
            baggage: headers
                .get(BAGGAGE_HEADER)
                .filter(|v| valid_baggage(v))
                .cloned(),
        })
    }

    /// The next hop of the same trace: a new span id, the same state and
    /// baggage.
    pub fn child(&self) -> Self {
        Self {
            parent: self.parent.child(),
            ..self.clone()
        }
    }

    /// Writes the context into `headers`, replacing what they had.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        if let Ok(value) = HeaderValue::from_str(&self.parent.to_string()) {
            headers.insert(HEADER, value);
        }
        for (name, value) in [(STATE_HEADER, &self.state), (BAGGAGE_HEADER, &self.baggage)] {
            match value {
                Some(value) => headers.insert(name, value.clone()),
                None => headers.remove(name),
            };
        }
    }
}

impl From<TraceParent> for TraceContext {
    fn from(parent: TraceParent) -> Self {
        Self {
            parent,
            state: None,
            baggage: None,
        }
    }
}

/// A `tracestate` worth passing on: at most [`MAX_STATE`] bytes of
/// comma-separated `key=value` members, printable ASCII.
pub fn valid_state(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_STATE
        && bytes.iter().all(|b| (0x20..0x7f).contains(b))
        && bytes
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .all(|member| member.is_empty() || member.contains(&b'='))
}

/// A `baggage` worth passing on: at most [`MAX_BAGGAGE`] bytes and
/// [`MAX_BAGGAGE_MEMBERS`] comma-separated `key=value` members, printable
/// ASCII.
pub fn valid_baggage(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_BAGGAGE
        && bytes.iter().all(|b| (0x20..0x7f).contains(b))
        && bytes.split(|b| *b == b',').count() <= MAX_BAGGAGE_MEMBERS
        && bytes
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .all(|member| member.is_empty() || member.contains(&b'='))
}

/// A `traceparent` of version `00`: trace id, parent (span) id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>` with ids not all zero, lowercase
    /// as the specification requires; anything else is `None`.
    pub fn parse(value: &str) -> Option<Self> {
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let mut parts = value.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || version != "00"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        let parsed = Self {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.span_id != 0).then_some(parsed)
    }

    /// A new trace (sampled), with random ids.
    pub fn new_root() -> Self {
        Self {
            trace_id: fastrand::u128(1..),
            span_id: fastrand::u64(1..),
            flags: 1,
        }
    }

    /// The next hop of the same trace: a new span id.
    pub fn child(&self) -> Self {
        Self {
            span_id: fastrand::u64(1..),
            ..*self
        }
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The trace id, parent id and flags as numbers.
    pub fn ids(&self) -> (u128, u64, u8) {
        (self.trace_id, self.span_id, self.flags)
    }

    /// The same trace and flags with `span_id` as the parent (the span a
    /// process exports for this hop; 0 keeps the current one).
    pub fn with_span_id(&self, span_id: u64) -> Self {
        Self {
            span_id: if span_id == 0 { self.span_id } else { span_id },
            ..*self
        }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            TraceParent::parse(t).map(|p| p.to_string()).as_deref(),
            Some(t)
        );
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let root = TraceParent::new_root();
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child, root);
    }

    #[test]
    fn context_from_and_into_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(TraceContext::from_headers(&headers), None);
        headers.insert(STATE_HEADER, HeaderValue::from_static("vendor=1"));
        assert_eq!(
            TraceContext::from_headers(&headers),
            None,
            "a state without a parent is no context"
        );
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert(HEADER, HeaderValue::from_static(parent));
        headers.insert(
            BAGGAGE_HEADER,
            HeaderValue::from_static("user=alice, tier=gold;ttl=3"),
        );
        let context = TraceContext::from_headers(&headers).unwrap();
        assert_eq!(context.parent.to_string(), parent);
        assert_eq!(context.state.as_ref().unwrap(), "vendor=1");
        assert_eq!(
            context.baggage.as_ref().unwrap(),
            "user=alice, tier=gold;ttl=3"
        );
        // The next hop: a new span, the same trace, state and baggage.
        let child = context.child();
        let mut out = HeaderMap::new();
        out.insert(STATE_HEADER, HeaderValue::from_static("stale=1"));
        child.insert_into(&mut out);
        let again = TraceContext::from_headers(&out).unwrap();
        assert_eq!(again.parent.trace_id(), context.parent.trace_id());
        assert_ne!(again.parent, context.parent);
        assert_eq!(again.state, context.state);
        assert_eq!(again.baggage, context.baggage);
        // Without state, the copy's stale one is removed.
        TraceContext::from(child.parent).insert_into(&mut out);
        assert!(out.get(STATE_HEADER).is_none() && out.get(BAGGAGE_HEADER).is_none());
    }

    #[test]
    fn malformed_or_oversized_state_and_baggage_are_dropped() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for (name, bad) in [
            (STATE_HEADER, "no-equals-sign".to_owned()),
            (STATE_HEADER, format!("k={}", "v".repeat(MAX_STATE))),
            (STATE_HEADER, "k=v\tw".to_owned()),
            (BAGGAGE_HEADER, "justakey".to_owned()),
            (BAGGAGE_HEADER, format!("k={}", "v".repeat(MAX_BAGGAGE))),
            (
                BAGGAGE_HEADER,
                (0..=MAX_BAGGAGE_MEMBERS)
                    .map(|i| format!("k{i}=v"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER, HeaderValue::from_static(parent));
            headers.insert(name, HeaderValue::from_str(&bad).unwrap());
            let context = TraceContext::from_headers(&headers).expect("the parent is valid");
            assert!(
                context.state.is_none() && context.baggage.is_none(),
                "{name}: {bad:.40} kept"
            );
        }
    }
}
