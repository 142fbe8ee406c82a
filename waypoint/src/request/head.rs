//! Request-head checks against request smuggling and malformed heads; the
//! list is in the parent module's header.

use hyper::{
    HeaderMap, Method, Request, Uri, Version,
    header::{CONTENT_LENGTH, HOST, HeaderName, HeaderValue, TE, TRANSFER_ENCODING},
};

/// Why a request head is refused. Every variant means a 400, and for HTTP/1.x
/// closing the connection: after a framing error the next request's start is
/// unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// Neither HTTP/1.0, HTTP/1.1 nor HTTP/2.
    #[error("request has unsupported version {version:?}")]
    UnsupportedVersion {
        /// The version hyper reported.
        version: Version,
    },
    /// The target `*` with a method other than OPTIONS.
    #[error("request target '*' is only allowed with OPTIONS")]
    AsteriskNotOptions,
    /// An absolute-form target whose scheme is neither `http` nor `https`.
    #[error("request target scheme is neither http nor https")]
    UnsupportedScheme,
    /// A header value with CR, LF, NUL or another control character but HTAB.
    #[error("request header {name} has a control character in its value")]
    ControlInHeaderValue {
        /// The header's name (its value may be a secret).
        name: HeaderName,
    },
    /// Both `Content-Length` and `Transfer-Encoding` (HTTP/1.x).
    #[error("request has both content-length and transfer-encoding")]
    ContentLengthWithTransferEncoding,
    /// More than one `Content-Length` field line.
    #[error("request has more than one content-length")]
    MultipleContentLength,
    /// A `Content-Length` that is a list, such as `5, 5`.
    #[error("request content-length is a list")]
    ContentLengthList,
    /// A `Content-Length` that is not a plain decimal fitting in `u64`.
    #[error("request content-length is not a decimal number")]
    InvalidContentLength,
    /// `Transfer-Encoding` in an HTTP/1.0 request (RFC 9112 section 6.1).
    #[error("HTTP/1.0 request has a transfer-encoding")]
    TransferEncodingInHttp10,
    /// A `Transfer-Encoding` other than exactly one `chunked`.
    #[error("request transfer-encoding is not exactly chunked")]
    UnsupportedTransferEncoding,
    /// `chunked` followed by another coding, so the body has no known end.
    #[error("request transfer-encoding has a coding after chunked")]
    ChunkedNotLast,
    /// No `Host` in HTTP/1.1, or neither `Host` nor `:authority` in HTTP/2.
    #[error("request has no host")]
    MissingHost,
    /// More than one `Host` field line.
    #[error("request has more than one host header")]
    MultipleHost,
    /// A `Host` that is not a `host[:port]` without userinfo.
    #[error("request host header is not a valid host and port")]
    InvalidHost,
    /// A target authority (absolute form, authority form or `:authority`)
    /// that is not a `host[:port]` without userinfo.
    #[error("request target authority is not a valid host and port")]
    InvalidAuthority,
    /// `Host` names another host or port than the target authority.
    #[error("request host header disagrees with the target authority")]
    HostMismatch,
    /// A connection-specific header in an HTTP/2 request.
    #[error("HTTP/2 request has connection-specific header {name}")]
    ConnectionSpecificHeader {
        /// The header's name.
        name: HeaderName,
    },
    /// A `te` other than `trailers` in an HTTP/2 request.
    #[error("HTTP/2 request has a te header other than trailers")]
    TeNotTrailers,
}

/// Checks a request head for the shapes used in request smuggling and for
/// malformed framing and host fields, as listed in the
/// [module documentation](super). The same checks serve HTTP/1.x and HTTP/2.
///
/// # Errors
///
/// The first [`HeadError`] found: version and target first, then header
/// values, framing, and the host.
pub fn check_head(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<(), HeadError> {
    let http2 = match version {
        Version::HTTP_10 | Version::HTTP_11 => false,
        Version::HTTP_2 => true,
        version => return Err(HeadError::UnsupportedVersion { version }),
    };
    check_target(method, uri)?;
    for (name, value) in headers {
        if !is_clean_value(value.as_bytes()) {
            return Err(HeadError::ControlInHeaderValue { name: name.clone() });
        }
    }
    if http2 {
        check_http2_fields(headers)?;
    } else {
        check_http1_framing(version, headers)?;
    }
    check_content_length(headers)?;
    check_host(version, uri, headers)
}

/// [`check_head`] on the head of a request.
///
/// # Errors
///
/// As [`check_head`].
pub fn check_request<B>(request: &Request<B>) -> Result<(), HeadError> {
    check_head(
        request.method(),
        request.uri(),
        request.version(),
        request.headers(),
    )
}

fn check_target(method: &Method, uri: &Uri) -> Result<(), HeadError> {
    let asterisk = uri.path_and_query().is_some_and(|p| p.as_str() == "*");
    if asterisk && method != Method::OPTIONS {
        return Err(HeadError::AsteriskNotOptions);
    }
    if let Some(scheme) = uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(HeadError::UnsupportedScheme);
    }
    Ok(())
}

/// No control character but HTAB (RFC 9110 section 5.5). `HeaderValue`'s
/// checked constructors already refuse these; this guards the unchecked ones.
fn is_clean_value(value: &[u8]) -> bool {
    !value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7F)
}

fn check_http1_framing(version: Version, headers: &HeaderMap) -> Result<(), HeadError> {
    if !headers.contains_key(TRANSFER_ENCODING) {
        return Ok(());
    }
    if version == Version::HTTP_10 {
        return Err(HeadError::TransferEncodingInHttp10);
    }
    if headers.contains_key(CONTENT_LENGTH) {
        return Err(HeadError::ContentLengthWithTransferEncoding);
    }
    check_chunked(headers.get_all(TRANSFER_ENCODING))
}

/// Accepts exactly one coding, `chunked`, across all field lines.
fn check_chunked<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Result<(), HeadError> {
    let mut codings = 0_usize;
    let mut seen_chunked = false;
    let mut last_chunked = false;
    for value in values {
        let Ok(value) = value.to_str() else {
            return Err(HeadError::UnsupportedTransferEncoding);
        };
        for coding in value.split(',') {
            codings += 1;
            last_chunked = trim_ows(coding).eq_ignore_ascii_case("chunked");
            seen_chunked |= last_chunked;
        }
    }
    if codings == 1 && last_chunked {
        Ok(())
    } else if seen_chunked && !last_chunked {
        Err(HeadError::ChunkedNotLast)
    } else {
        Err(HeadError::UnsupportedTransferEncoding)
    }
}

fn check_content_length(headers: &HeaderMap) -> Result<(), HeadError> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let Some(value) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(HeadError::MultipleContentLength);
    }
    let value = value.as_bytes();
    if value.contains(&b',') {
        return Err(HeadError::ContentLengthList);
    }
    // `u64::from_str` alone would take a leading `+`.
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::InvalidContentLength);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|_| ())
        .ok_or(HeadError::InvalidContentLength)
}

fn check_http2_fields(headers: &HeaderMap) -> Result<(), HeadError> {
    // RFC 9113 section 8.2.2; h2 refuses these too, while decoding.
    for name in headers.keys() {
        if matches!(
            name.as_str(),
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
        ) {
            return Err(HeadError::ConnectionSpecificHeader { name: name.clone() });
        }
    }
    let trailers_only = headers.get_all(TE).iter().all(|v| {
        v.to_str()
            .is_ok_and(|v| trim_ows(v).eq_ignore_ascii_case("trailers"))
    });
    if trailers_only {
        Ok(())
    } else {
        Err(HeadError::TeNotTrailers)
    }
}

fn check_host(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), HeadError> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::MultipleHost);
    }
    let host = host
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(HostPort::parse)
                .ok_or(HeadError::InvalidHost)
        })
        .transpose()?;
    let target = uri
        .authority()
        .map(|a| HostPort::parse(a.as_str()).ok_or(HeadError::InvalidAuthority))
        .transpose()?;
    let (host, target) = match (host, target) {
        (Some(host), Some(target)) => (host, target),
        // RFC 9112 section 3.2: HTTP/1.1 needs Host even with an absolute-form
        // target; HTTP/2 may carry it in `:authority` alone.
        (None, Some(_)) if version == Version::HTTP_11 => return Err(HeadError::MissingHost),
        (None, None) if version != Version::HTTP_10 => return Err(HeadError::MissingHost),
        _ => return Ok(()),
    };
    let default_port = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => Some(80),
        Some(s) if s.eq_ignore_ascii_case("https") => Some(443),
        _ => None,
    };
    if host.same(&target, default_port) {
        Ok(())
    } else {
        Err(HeadError::HostMismatch)
    }
}

/// A `host[:port]` without userinfo.
struct HostPort<'a> {
    host: &'a str,
    port: Option<u16>,
}

impl<'a> HostPort<'a> {
    fn parse(authority: &'a str) -> Option<Self> {
        // `Authority` checks the characters and brackets; it takes userinfo and
        // leaves the port unparsed, which is ours to refuse.
        hyper::http::uri::Authority::try_from(authority).ok()?;
        if authority.contains('@') {
            return None;
        }
        let (host, port) = if authority.starts_with('[') {
            let end = authority.find(']')? + 1;
            let rest = &authority[end..];
            let port = if rest.is_empty() {
                None
            } else {
                Some(rest.strip_prefix(':')?)
            };
            (&authority[..end], port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return None;
        }
        let port = match port {
            None => None,
            Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                Some(port.parse::<u16>().ok()?)
            }
            Some(_) => return None,
        };
        Some(HostPort { host, port })
    }

    /// Same host (ASCII case-insensitive) and port, a missing port being
    /// `default_port`.
    fn same(&self, other: &HostPort<'_>, default_port: Option<u16>) -> bool {
        self.host.eq_ignore_ascii_case(other.host)
            && self.port.or(default_port) == other.port.or(default_port)
    }
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

#[cfg(test)]
mod tests;
