//! Path normalization: one spelling per path, the one policy matches and the
//! backend gets. The rules are in the parent module's header.

use std::fmt;

use hyper::Uri;

/// The longest path-and-query `http::uri::PathAndQuery` accepts.
const MAX_LEN: usize = u16::MAX as usize - 1;

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Why a request target cannot be normalized. Every variant means the request
/// is malformed or ambiguous (a 400). Offsets count bytes from the start of the
/// target given to [`normalize`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The target is empty.
    #[error("request target is empty")]
    Empty,
    /// The target is neither `*` nor a path starting with `/`.
    #[error("request target is not an origin-form path")]
    NotOriginForm,
    /// The normalized target does not fit in a `PathAndQuery`.
    #[error("normalized request target is longer than {max} bytes")]
    TooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// A `%` is not followed by two hex digits.
    #[error("malformed percent-escape at byte {offset} of the request target")]
    MalformedEscape {
        /// Where the `%` is.
        offset: usize,
    },
    /// `%2F`: backends disagree on whether it separates segments.
    #[error("percent-encoded slash at byte {offset} of the request path")]
    EncodedSlash {
        /// Where the `%` is.
        offset: usize,
    },
    /// `%5C`: backends disagree on whether it separates segments.
    #[error("percent-encoded backslash at byte {offset} of the request path")]
    EncodedBackslash {
        /// Where the `%` is.
        offset: usize,
    },
    /// `%00`-`%1F` or `%7F`.
    #[error("percent-encoded control character {byte:#04x} at byte {offset} of the request path")]
    EncodedControl {
        /// The decoded byte.
        byte: u8,
        /// Where the `%` is.
        offset: usize,
    },
    /// A run of escapes of non-ASCII bytes is not UTF-8 (overlong `%C0%AF`,
    /// a stray continuation byte, a truncated sequence).
    #[error("percent-encoded bytes at byte {offset} of the request path are not UTF-8")]
    EncodedNotUtf8 {
        /// Where the run of escapes starts.
        offset: usize,
    },
    /// A dot segment with parameters (`..;x`, `.;`): Tomcat and Spring drop
    /// the parameters and climb, other servers keep the segment, so what the
    /// backend serves is not what policy would match.
    #[error("dot segment with parameters (`..;`, `.;`) in the request path")]
    DotSegmentParameter,
    /// A raw `\`.
    #[error("backslash at byte {offset} of the request path")]
    Backslash {
        /// Where the backslash is.
        offset: usize,
    },
    /// A raw `#`: fragments are not sent to servers.
    #[error("fragment at byte {offset} of the request target")]
    Fragment {
        /// Where the `#` is.
        offset: usize,
    },
    /// A space, a control character, a non-ASCII byte or (in the query) one of
    /// `"<>`.
    #[error("byte {byte:#04x} at byte {offset} of the request target is not allowed")]
    InvalidByte {
        /// The offending byte.
        byte: u8,
        /// Where it is.
        offset: usize,
    },
}

/// A request target after [`normalize`]: the path policy matches and the
/// target the waypoint forwards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NormalizedPath {
    /// The path, then `?` and the query if there is one.
    target: String,
    /// The length of the path within `target`.
    path_len: usize,
}

// === impl NormalizedPath ===

impl NormalizedPath {
    /// The normalized path, without the query: what `paths` and `notPaths`
    /// match. `*` for the asterisk form.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.target[..self.path_len]
    }

    /// The query as received, without the `?`; `Some("")` for a target that
    /// ends in `?`.
    #[must_use]
    pub fn query(&self) -> Option<&str> {
        self.target.get(self.path_len + 1..)
    }

    /// The path and query to forward, as one origin-form target.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.target
    }

    /// The path and query to forward, as an owned string.
    #[must_use]
    pub fn into_string(self) -> String {
        self.target
    }

    /// Whether this is the asterisk form `*` (`OPTIONS *`).
    #[must_use]
    pub fn is_asterisk(&self) -> bool {
        self.target == "*"
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.target)
    }
}

impl AsRef<str> for NormalizedPath {
    fn as_ref(&self) -> &str {
        &self.target
    }
}

/// Normalizes an origin-form request target (`/path?query`) or `*`, following
/// the rules in the [module documentation](super).
///
/// # Errors
///
/// A [`PathError`] when the target is not an origin-form path, has a byte or
/// escape that is refused, or is too long once normalized.
pub fn normalize(target: &str) -> Result<NormalizedPath, PathError> {
    if target == "*" {
        return Ok(NormalizedPath {
            target: String::from("*"),
            path_len: 1,
        });
    }
    match target.as_bytes().first() {
        None => return Err(PathError::Empty),
        Some(b'/') => {}
        Some(_) => return Err(PathError::NotOriginForm),
    }
    let (raw_path, raw_query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let canonical = canonical_escapes(raw_path)?;
    if let Some(query) = raw_query {
        check_query(query, raw_path.len() + 1)?;
    }

    let mut out = String::with_capacity(target.len());
    remove_dot_segments(&canonical, &mut out)?;
    let path_len = out.len();
    if let Some(query) = raw_query {
        out.push('?');
        out.push_str(query);
    }
    if out.len() > MAX_LEN {
        return Err(PathError::TooLong { max: MAX_LEN });
    }
    Ok(NormalizedPath {
        target: out,
        path_len,
    })
}

/// Normalizes the target of a request `Uri` as hyper parsed it: the path and
/// query of an origin-form or absolute-form target (an empty absolute-form
/// path is `/`, RFC 9110 section 4.2.3), or `*`.
///
/// # Errors
///
/// [`PathError::NotOriginForm`] for an authority-form target (CONNECT), and
/// otherwise as [`normalize`].
pub fn normalize_uri(uri: &Uri) -> Result<NormalizedPath, PathError> {
    let Some(path_and_query) = uri.path_and_query() else {
        return Err(if uri.authority().is_some() {
            PathError::NotOriginForm
        } else {
            PathError::Empty
        });
    };
    let target = path_and_query.as_str();
    let empty_path = target.is_empty() || target.starts_with('?');
    if uri.scheme().is_some() && empty_path {
        normalize(&format!("/{target}"))
    } else {
        normalize(target)
    }
}

/// Applies the byte and escape rules to a path: decodes escaped unreserved
/// characters, uppercases the other escapes, encodes the printable characters
/// RFC 3986 does not allow raw, and refuses the rest.
fn canonical_escapes(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    // The escapes of non-ASCII bytes seen since the last ASCII byte, with the
    // offset of the first; they must decode to UTF-8 on their own, since any
    // ASCII byte ends a UTF-8 sequence.
    let mut high = HighRun::default();
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let decoded = decode_escape(bytes, i)?;
            match decoded {
                b'/' => return Err(PathError::EncodedSlash { offset: i }),
                b'\\' => return Err(PathError::EncodedBackslash { offset: i }),
                0x00..=0x1F | 0x7F => {
                    return Err(PathError::EncodedControl {
                        byte: decoded,
                        offset: i,
                    });
                }
                0x80..=0xFF => high.push(decoded, i),
                _ => high.finish()?,
            }
            if is_unreserved(decoded) {
                out.push(char::from(decoded));
            } else {
                push_escape(&mut out, decoded);
            }
            i += 3;
            continue;
        }
        high.finish()?;
        match byte {
            b'#' => return Err(PathError::Fragment { offset: i }),
            b'\\' => return Err(PathError::Backslash { offset: i }),
            b'"' | b'<' | b'>' | b'[' | b']' | b'^' | b'`' | b'{' | b'|' | b'}' => {
                push_escape(&mut out, byte);
            }
            _ if is_pchar(byte) || byte == b'/' => out.push(char::from(byte)),
            _ => return Err(PathError::InvalidByte { byte, offset: i }),
        }
        i += 1;
    }
    high.finish()?;
    Ok(out)
}

/// The escapes of non-ASCII bytes in a row, checked for UTF-8 once the row
/// ends.
#[derive(Default)]
struct HighRun {
    bytes: Vec<u8>,
    offset: usize,
}

impl HighRun {
    fn push(&mut self, byte: u8, offset: usize) {
        if self.bytes.is_empty() {
            self.offset = offset;
        }
        self.bytes.push(byte);
    }

    fn finish(&mut self) -> Result<(), PathError> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        if std::str::from_utf8(&self.bytes).is_err() {
            return Err(PathError::EncodedNotUtf8 {
                offset: self.offset,
            });
        }
        self.bytes.clear();
        Ok(())
    }
}

/// The octet of the escape whose `%` is at `at`.
fn decode_escape(bytes: &[u8], at: usize) -> Result<u8, PathError> {
    let digit = |i: usize| bytes.get(i).copied().and_then(hex_digit);
    match (digit(at + 1), digit(at + 2)) {
        (Some(hi), Some(lo)) => Ok((hi << 4) | lo),
        _ => Err(PathError::MalformedEscape { offset: at }),
    }
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, byte: u8) {
    out.push('%');
    out.push(char::from(UPPER_HEX[usize::from(byte >> 4)]));
    out.push(char::from(UPPER_HEX[usize::from(byte & 0x0F)]));
}

/// RFC 3986 `unreserved`.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar`, less `pct-encoded`: unreserved, sub-delims, `:` and `@`.
fn is_pchar(byte: u8) -> bool {
    is_unreserved(byte)
        || matches!(
            byte,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// Checks a query without changing it: the bytes `PathAndQuery` accepts in a
/// query, less non-ASCII, with well-formed escapes. `base` is the query's
/// offset in the target.
fn check_query(query: &str, base: usize) -> Result<(), PathError> {
    let bytes = query.as_bytes();
    for (i, &byte) in bytes.iter().enumerate() {
        match byte {
            b'%' => {
                decode_escape(bytes, i)
                    .map_err(|_| PathError::MalformedEscape { offset: base + i })?;
            }
            b'#' => return Err(PathError::Fragment { offset: base + i }),
            // http's query map: 0x21, 0x24-0x3B, 0x3D, 0x3F-0x7E.
            b'!' | b'$'..=b';' | b'=' | b'?'..=b'~' => {}
            _ => {
                return Err(PathError::InvalidByte {
                    byte,
                    offset: base + i,
                });
            }
        }
    }
    Ok(())
}

/// Merges slashes and removes dot segments (RFC 3986 section 5.2.4) from a
/// path that starts with `/` and has no escaped dot or slash left, appending
/// the result to `out`; refuses a dot segment with parameters.
fn remove_dot_segments(path: &str, out: &mut String) -> Result<(), PathError> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in rest.split('/') {
        if let Some((name, _)) = segment.split_once(';')
            && matches!(name, "." | "..")
        {
            return Err(PathError::DotSegmentParameter);
        }
        // Only the last segment's kind decides: `/a/` and `/a/..` end in a
        // slash, `/a` does not.
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            _ => kept.push(segment),
        }
    }
    out.push('/');
    for (i, segment) in kept.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment);
    }
    if trailing_slash && !kept.is_empty() {
        out.push('/');
    }
    Ok(())
}

#[cfg(test)]
mod tests;
