//! What a request must look like before policy sees it: the path it is
//! matched and forwarded with ([`normalize`]) and the request-head checks
//! against request smuggling ([`check_head`]).
//!
//! An `AuthorizationPolicy` on `paths` is only as good as the agreement between
//! the path the waypoint matches and the path the backend serves. The waypoint
//! therefore normalizes the path once, matches the normalized path, and
//! forwards exactly that path (with the query as received). A path that could
//! mean different things to different backends is refused with 400 rather
//! than guessed at. Both functions are pure (no I/O, no state) and give the
//! same answer for HTTP/1.1 and HTTP/2 requests. [`normalize`] is one pass
//! over the path plus one over its segments; it allocates the result and two
//! scratch buffers of the path's size.
//!
//! # Path normalization ([`normalize`])
//!
//! The input is the request target as hyper hands it over
//! (`PathAndQuery::as_str`, or use [`normalize_uri`] with the whole `Uri`).
//! It is split at the first `?` into path and query. The rules, in the order
//! they apply:
//!
//! 1. **Origin form.** The path must start with `/`. An empty target is
//!    [`PathError::Empty`]; anything else ([`PathError::NotOriginForm`]). The
//!    single exception is the asterisk form `*`, returned unchanged
//!    ([`NormalizedPath::is_asterisk`]); [`check_head`] refuses it with any
//!    method but OPTIONS (RFC 9112 section 3.2.4). Absolute-form and
//!    authority-form targets are the caller's: hyper already split them into
//!    scheme, authority and path, and [`normalize_uri`] takes the path of an
//!    absolute-form `Uri`, with an empty path read as `/` (RFC 9110 section
//!    4.2.3).
//! 2. **Raw bytes.** The path keeps, as they are, the RFC 3986 `pchar`s
//!    (ALPHA, DIGIT, `-._~`, the sub-delims `!$&'()*+,;=`, `:` and `@`) and
//!    `/`. Refused: a backslash ([`PathError::Backslash`]: some servers read
//!    it as `/`, Envoy's BASE rewrites it to `/`, others keep it), `#`
//!    ([`PathError::Fragment`]: a fragment never reaches a server, so a client
//!    that sends one is confused or probing), and spaces, control characters
//!    and non-ASCII bytes ([`PathError::InvalidByte`]). The other
//!    printable ASCII characters that RFC 3986 does not allow unencoded
//!    (`"<>[]^` and backquote, `{|}`) are percent-encoded, so that `{` and
//!    `%7B` are one path for policy as they are for any backend that decodes.
//!    Note that hyper (the `http` crate) truncates a `#fragment` before we see
//!    it, so rule 2's `#` refusal only fires for targets that did not come
//!    through `http::Uri`.
//! 3. **Percent-escapes.** `%` must be followed by two hex digits
//!    ([`PathError::MalformedEscape`]: `%4`, `%zz`). An escaped unreserved
//!    character (ALPHA, DIGIT, `-._~`) is decoded (`/%61dmin` is `/admin`, RFC
//!    3986 section 6.2.2.2); every other escape stays encoded, with uppercase
//!    hex digits (`%c3%a9` becomes `%C3%A9`, section 6.2.2.1). Refused: an
//!    encoded slash `%2F` ([`PathError::EncodedSlash`]) or backslash `%5C`
//!    ([`PathError::EncodedBackslash`]), because backends disagree on whether
//!    they separate segments: `/public%2F..%2Fadmin` is one segment under
//!    `/public` to a matcher that keeps it, and `/admin` to a backend that
//!    decodes before it routes. This is stricter
//!    than Envoy's default (`path_with_escaped_slashes_action:
//!    KEEP_UNCHANGED`), which leaves that disagreement in place, and than
//!    Istio's strictest option (`DECODE_AND_MERGE_SLASHES`), which settles it
//!    by rewriting the path the backend gets. Also refused: an encoded control
//!    character, NUL included ([`PathError::EncodedControl`]), and escaped
//!    bytes that do not decode to UTF-8 ([`PathError::EncodedNotUtf8`]):
//!    overlong forms such as `%C0%AF` are how `/` and `.` were smuggled past
//!    old decoders, and no modern client produces invalid UTF-8. A double
//!    escape (`%252e`) is a literal `%2e` to us, and stays so; a backend that
//!    decodes twice is out of scope.
//! 4. **Slashes merged.** Empty segments are dropped: `//admin` is `/admin`
//!    and `/a//b/` is `/a/b/` (Envoy's `merge_slashes`).
//! 5. **Dot segments removed** (RFC 3986 section 5.2.4), after decoding, so
//!    `/%2e%2e/` and `/.%2E/` are `..` too. `..` never climbs above the root:
//!    `/../admin` is `/admin`. A path that ends in `.` or `..` keeps a
//!    trailing slash (`/a/b/..` is `/a/`), as in the RFC. Slashes are merged
//!    before dots are resolved, so `/a//../b` is `/b` (how a file system reads
//!    it); Envoy resolves dots first and gets `/a/b`. Both are safe, because
//!    the path we match is the path we forward.
//! 6. **Path parameters.** `;` is an ordinary sub-delim and stays part of its
//!    segment: `/admin;x` is matched literally, as Istio does. A *dot* segment
//!    with parameters (`..;`, `..;x`, `.;`, also decoded from `%2e`) is
//!    refused ([`PathError::DotSegmentParameter`]): Tomcat and Spring strip
//!    `;...` before resolving dots, so for them `/public/..;/admin` is
//!    `/admin`, while other servers keep the segment; a `/public/*` ALLOW must
//!    not let it through. This is stricter than Envoy, which forwards it.
//! 7. **Query.** Kept byte for byte, never decoded or normalized (policy does
//!    not match it). It must contain only the bytes `http::uri::PathAndQuery`
//!    accepts in a query (visible ASCII except `"`, `#`, `<`, `>`) and
//!    well-formed escapes; a query of `/a?` stays an empty query.
//!
//! The result starts with `/`, has no dot segment and no empty segment (but
//! for the one after a trailing slash), only the characters of rule 2 plus
//! uppercase escapes of bytes that are not unreserved, and is at most
//! `u16::MAX - 1` bytes with its query ([`PathError::TooLong`]; the limit of
//! `PathAndQuery`). Normalizing it again returns it unchanged. Matching on it
//! is case-sensitive: `/ADMIN` is not `/admin`.
//!
//! # Request-head checks ([`check_head`])
//!
//! A pure function of method, target, version and headers, called for HTTP/1.x
//! and HTTP/2 requests alike. Each refusal is one [`HeadError`] variant, meant
//! to become a 400 that also closes an HTTP/1.x connection (the caller
//! decides). hyper and httparse already reject obs-fold, bad header-name bytes,
//! and CR/LF/NUL in values while parsing, and h2 rejects connection-specific
//! headers; these checks repeat what is cheap to repeat, so that a request
//! built any other way (an HTTP/2 request is a `HeaderMap` from HPACK, not
//! parsed text) gets the same treatment. They do not re-implement a parser.
//!
//! - The version is HTTP/1.0, HTTP/1.1 or HTTP/2.
//! - The target `*` only with OPTIONS; an absolute-form scheme is `http` or
//!   `https`.
//! - No header value has a control character other than HTAB (RFC 9110
//!   section 5.5: CR, LF and NUL are "invalid and dangerous").
//! - HTTP/1.x framing (RFC 9112 section 6): not both `Content-Length` and
//!   `Transfer-Encoding`; `Transfer-Encoding` never in HTTP/1.0, and otherwise
//!   exactly one coding, `chunked` (any case), across all its field lines; a
//!   `chunked` followed by another coding is reported as such.
//! - `Content-Length` (any version): one field line, a plain decimal that
//!   fits in `u64`; a list such as `5, 5` is refused, although RFC 9112
//!   section 6.3 would let a recipient accept identical members.
//! - HTTP/2 (RFC 9113 section 8.2.2): no `connection`, `keep-alive`,
//!   `proxy-connection`, `transfer-encoding` or `upgrade`; `te` only
//!   `trailers`.
//! - Host (RFC 9112 section 3.2): at most one `Host`, required in HTTP/1.1;
//!   in HTTP/2 a `Host` or the `:authority` is required. A `Host` or target
//!   authority must be a valid `host[:port]` with no userinfo (RFC 9110
//!   section 4.2.4) and, if both are present, name the same host (ASCII
//!   case-insensitive) and port (a missing port is the scheme's default).

pub mod framing;
mod head;
mod path;

pub use framing::{Guarded, Verdicts};
pub use head::{HeadError, check_head, check_request};
pub use path::{NormalizedPath, PathError, normalize, normalize_uri};
