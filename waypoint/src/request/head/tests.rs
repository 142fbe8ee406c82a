//! One row per refusal and a few normal requests, for HTTP/1.0, HTTP/1.1 and
//! HTTP/2 heads.

use hyper::{
    HeaderMap, Method, Request, Uri, Version,
    header::{HeaderName, HeaderValue},
};

use super::{HeadError, check_head, check_request, is_clean_value};

const V10: Version = Version::HTTP_10;
const V11: Version = Version::HTTP_11;
const V2: Version = Version::HTTP_2;

struct Row {
    name: &'static str,
    method: &'static str,
    uri: &'static str,
    version: Version,
    headers: &'static [(&'static str, &'static str)],
    want: Result<(), HeadError>,
}

const fn row(
    name: &'static str,
    method: &'static str,
    uri: &'static str,
    version: Version,
    headers: &'static [(&'static str, &'static str)],
    want: Result<(), HeadError>,
) -> Row {
    Row {
        name,
        method,
        uri,
        version,
        headers,
        want,
    }
}

fn header(name: &str) -> HeaderName {
    HeaderName::from_bytes(name.as_bytes()).expect("a valid header name")
}

#[rustfmt::skip]
fn rows() -> Vec<Row> {
    use HeadError as E;
    let host = &[("host", "svc.ns")][..];
    vec![
        // Normal requests.
        row("GET with Host", "GET", "/", V11, host, Ok(())),
        row("POST with Content-Length", "POST", "/a", V11, &[("host", "svc"), ("content-length", "5")], Ok(())),
        row("POST with zero length", "POST", "/a", V11, &[("host", "svc"), ("content-length", "0")], Ok(())),
        row("POST with leading zeros", "POST", "/a", V11, &[("host", "svc"), ("content-length", "007")], Ok(())),
        row("POST with u64::MAX", "POST", "/a", V11, &[("host", "svc"), ("content-length", "18446744073709551615")], Ok(())),
        row("POST chunked", "POST", "/a", V11, &[("host", "svc"), ("transfer-encoding", "chunked")], Ok(())),
        row("POST Chunked in any case", "POST", "/a", V11, &[("host", "svc"), ("transfer-encoding", "ChUnKeD")], Ok(())),
        row("HTTP/2 POST without TE or CL", "POST", "http://svc.ns/a", V2, &[], Ok(())),
        row("HTTP/2 POST with CL", "POST", "http://svc.ns/a", V2, &[("content-length", "3")], Ok(())),
        row("HTTP/2 te trailers", "POST", "http://svc/a", V2, &[("te", "trailers")], Ok(())),
        row("HTTP/2 te Trailers", "POST", "http://svc/a", V2, &[("te", "Trailers")], Ok(())),
        row("HTTP/2 Host same as authority", "GET", "https://svc:443/", V2, &[("host", "SVC")], Ok(())),
        row("HTTP/2 Host without authority", "GET", "/", V2, &[("host", "svc")], Ok(())),
        row("HTTP/1.0 without Host", "GET", "/", V10, &[], Ok(())),
        row("HTTP/1.0 with Content-Length", "POST", "/", V10, &[("content-length", "2")], Ok(())),
        row("absolute form, same host", "GET", "http://svc.ns/a", V11, host, Ok(())),
        row("absolute form, default port", "GET", "http://svc.ns:80/a", V11, host, Ok(())),
        row("absolute form, host case", "GET", "http://SVC.ns/a", V11, host, Ok(())),
        row("Host with port", "GET", "/", V11, &[("host", "svc:8080")], Ok(())),
        row("Host IPv6", "GET", "/", V11, &[("host", "[::1]:8080")], Ok(())),
        row("Host IPv6 no port", "GET", "/", V11, &[("host", "[fd00::1]")], Ok(())),
        row("OPTIONS *", "OPTIONS", "*", V11, host, Ok(())),
        row("CONNECT with matching Host", "CONNECT", "svc:443", V11, &[("host", "svc:443")], Ok(())),
        row("tab in a value", "GET", "/", V11, &[("host", "svc"), ("x-a", "a\tb")], Ok(())),
        row("HTTP/1.1 upgrade is not ours", "GET", "/", V11, &[ ("host", "svc"), ("connection", "upgrade"), ("upgrade", "websocket"), ], Ok(())),
        // Version and target.
        row("HTTP/0.9", "GET", "/", Version::HTTP_09, host, Err(E::UnsupportedVersion { version: Version::HTTP_09, })),
        row("HTTP/3", "GET", "/", Version::HTTP_3, host, Err(E::UnsupportedVersion { version: Version::HTTP_3, })),
        row("GET *", "GET", "*", V11, host, Err(E::AsteriskNotOptions)),
        row("HTTP/2 GET *", "GET", "*", V2, host, Err(E::AsteriskNotOptions)),
        row("ftp scheme", "GET", "ftp://svc/a", V11, &[("host", "svc")], Err(E::UnsupportedScheme)),
        // Framing, HTTP/1.x.
        row("CL and TE", "POST", "/", V11, &[ ("host", "svc"), ("content-length", "5"), ("transfer-encoding", "chunked"), ], Err(E::ContentLengthWithTransferEncoding)),
        row("two CL lines", "POST", "/", V11, &[ ("host", "svc"), ("content-length", "5"), ("content-length", "5"), ], Err(E::MultipleContentLength)),
        row("CL list", "POST", "/", V11, &[("host", "svc"), ("content-length", "5, 5")], Err(E::ContentLengthList)),
        row("CL list without space", "POST", "/", V11, &[("host", "svc"), ("content-length", "5,6")], Err(E::ContentLengthList)),
        row("CL plus sign", "POST", "/", V11, &[("host", "svc"), ("content-length", "+5")], Err(E::InvalidContentLength)),
        row("CL negative", "POST", "/", V11, &[("host", "svc"), ("content-length", "-1")], Err(E::InvalidContentLength)),
        row("CL hex", "POST", "/", V11, &[("host", "svc"), ("content-length", "0x5")], Err(E::InvalidContentLength)),
        row("CL empty", "POST", "/", V11, &[("host", "svc"), ("content-length", "")], Err(E::InvalidContentLength)),
        row("CL space inside", "POST", "/", V11, &[("host", "svc"), ("content-length", "5 5")], Err(E::InvalidContentLength)),
        row("CL overflow", "POST", "/", V11, &[("host", "svc"), ("content-length", "18446744073709551616")], Err(E::InvalidContentLength)),
        row("CL fraction", "POST", "/", V11, &[("host", "svc"), ("content-length", "5.0")], Err(E::InvalidContentLength)),
        row("TE in HTTP/1.0", "POST", "/", V10, &[("transfer-encoding", "chunked")], Err(E::TransferEncodingInHttp10)),
        row("TE gzip", "POST", "/", V11, &[("host", "svc"), ("transfer-encoding", "gzip")], Err(E::UnsupportedTransferEncoding)),
        row("TE gzip, chunked", "POST", "/", V11, &[("host", "svc"), ("transfer-encoding", "gzip, chunked")], Err(E::UnsupportedTransferEncoding)),
        row("TE chunked twice", "POST", "/", V11, &[("host", "svc"), ("transfer-encoding", "chunked, chunked")], Err(E::UnsupportedTransferEncoding)),
        row("TE two lines", "POST", "/", V11, &[ ("host", "svc"), ("transfer-encoding", "chunked"), ("transfer-encoding", "chunked"), ], Err(E::UnsupportedTransferEncoding)),
        row("TE empty element", "POST", "/", V11, &[("host", "svc"), ("transfer-encoding", "chunked,")], Err(E::ChunkedNotLast)),
        row("TE empty", "POST", "/", V11, &[("host", "svc"), ("transfer-encoding", "")], Err(E::UnsupportedTransferEncoding)),
        row("TE identity", "POST", "/", V11, &[("host", "svc"), ("transfer-encoding", "identity")], Err(E::UnsupportedTransferEncoding)),
        row("TE with a parameter", "POST", "/", V11, &[("host", "svc"), ("transfer-encoding", "chunked;q=1")], Err(E::UnsupportedTransferEncoding)),
        row("TE lookalike", "POST", "/", V11, &[("host", "svc"), ("transfer-encoding", "xchunked")], Err(E::UnsupportedTransferEncoding)),
        row("TE chunked, gzip", "POST", "/", V11, &[("host", "svc"), ("transfer-encoding", "chunked, gzip")], Err(E::ChunkedNotLast)),
        row("TE chunked then gzip line", "POST", "/", V11, &[ ("host", "svc"), ("transfer-encoding", "chunked"), ("transfer-encoding", "gzip"), ], Err(E::ChunkedNotLast)),
        // Host.
        row("HTTP/1.1 without Host", "GET", "/", V11, &[], Err(E::MissingHost)),
        row("HTTP/1.1 absolute form without Host", "GET", "http://svc/", V11, &[], Err(E::MissingHost)),
        row("HTTP/2 without authority or Host", "GET", "/", V2, &[], Err(E::MissingHost)),
        row("two Host lines", "GET", "/", V11, &[("host", "a"), ("host", "b")], Err(E::MultipleHost)),
        row("two Host lines, HTTP/1.0", "GET", "/", V10, &[("host", "a"), ("host", "a")], Err(E::MultipleHost)),
        row("two Host lines, HTTP/2", "GET", "http://a/", V2, &[("host", "a"), ("host", "a")], Err(E::MultipleHost)),
        row("empty Host", "GET", "/", V11, &[("host", "")], Err(E::InvalidHost)),
        row("Host list", "GET", "/", V11, &[("host", "a, b")], Err(E::InvalidHost)),
        row("Host with userinfo", "GET", "/", V11, &[("host", "user@svc")], Err(E::InvalidHost)),
        row("Host with a path", "GET", "/", V11, &[("host", "svc/x")], Err(E::InvalidHost)),
        row("Host bad port", "GET", "/", V11, &[("host", "svc:http")], Err(E::InvalidHost)),
        row("Host empty port", "GET", "/", V11, &[("host", "svc:")], Err(E::InvalidHost)),
        row("Host port too big", "GET", "/", V11, &[("host", "svc:65536")], Err(E::InvalidHost)),
        row("Host only a port", "GET", "/", V11, &[("host", ":80")], Err(E::InvalidHost)),
        row("Host IPv6 junk after", "GET", "/", V11, &[("host", "[::1]x")], Err(E::InvalidHost)),
        row("Host non-ASCII", "GET", "/", V11, &[("host", "caf\u{e9}")], Err(E::InvalidHost)),
        row("authority with userinfo", "GET", "http://user@svc/", V11, &[("host", "svc")], Err(E::InvalidAuthority)),
        row("absolute form, other host", "GET", "http://admin.ns/a", V11, host, Err(E::HostMismatch)),
        row("absolute form, other port", "GET", "http://svc.ns:8080/a", V11, host, Err(E::HostMismatch)),
        row("absolute form, https default is not 80", "GET", "https://svc.ns/a", V11, &[("host", "svc.ns:80")], Err(E::HostMismatch)),
        row("absolute form, trailing dot", "GET", "http://svc.ns./a", V11, host, Err(E::HostMismatch)),
        row("HTTP/2 Host differs from authority", "GET", "http://svc/", V2, &[("host", "admin")], Err(E::HostMismatch)),
        row("CONNECT with other Host", "CONNECT", "svc:443", V11, &[("host", "admin:443")], Err(E::HostMismatch)),
        // HTTP/2 fields.
        row("HTTP/2 connection", "GET", "http://svc/", V2, &[("connection", "close")], Err(E::ConnectionSpecificHeader { name: header("connection") })),
        row("HTTP/2 keep-alive", "GET", "http://svc/", V2, &[("keep-alive", "timeout=5")], Err(E::ConnectionSpecificHeader { name: header("keep-alive") })),
        row("HTTP/2 proxy-connection", "GET", "http://svc/", V2, &[("proxy-connection", "keep-alive")], Err(E::ConnectionSpecificHeader { name: header("proxy-connection") })),
        row("HTTP/2 transfer-encoding", "POST", "http://svc/", V2, &[("transfer-encoding", "chunked")], Err(E::ConnectionSpecificHeader { name: header("transfer-encoding") })),
        row("HTTP/2 upgrade", "GET", "http://svc/", V2, &[("upgrade", "h2c")], Err(E::ConnectionSpecificHeader { name: header("upgrade") })),
        row("HTTP/2 te gzip", "GET", "http://svc/", V2, &[("te", "gzip")], Err(E::TeNotTrailers)),
        row("HTTP/2 te list", "GET", "http://svc/", V2, &[("te", "trailers, gzip")], Err(E::TeNotTrailers)),
        row("HTTP/2 te second line", "GET", "http://svc/", V2, &[("te", "trailers"), ("te", "deflate")], Err(E::TeNotTrailers)),
        row("HTTP/2 CL list", "POST", "http://svc/", V2, &[("content-length", "1,1")], Err(E::ContentLengthList)),
        row("HTTP/2 two CL", "POST", "http://svc/", V2, &[("content-length", "1"), ("content-length", "1")], Err(E::MultipleContentLength)),
        row("HTTP/2 CL not decimal", "POST", "http://svc/", V2, &[("content-length", "one")], Err(E::InvalidContentLength)),
    ]
}

fn head(row: &Row) -> (Method, Uri, HeaderMap) {
    let method = Method::from_bytes(row.method.as_bytes()).expect("a method");
    let uri = row
        .uri
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", row.name));
    let mut headers = HeaderMap::new();
    for (name, value) in row.headers {
        let value = HeaderValue::from_bytes(value.as_bytes()).expect("a header value");
        headers.append(header(name), value);
    }
    (method, uri, headers)
}

#[test]
fn table() {
    for row in rows() {
        let (method, uri, headers) = head(&row);
        let got = check_head(&method, &uri, row.version, &headers);
        assert_eq!(got, row.want, "{}", row.name);
    }
}

#[test]
fn check_request_is_check_head() {
    for row in rows() {
        let (method, uri, headers) = head(&row);
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .version(row.version)
            .body(())
            .expect("a request");
        *request.headers_mut() = headers;
        assert_eq!(check_request(&request), row.want, "{}", row.name);
    }
}

#[test]
fn control_characters_in_values() {
    // `HeaderValue` cannot be built with these without `unsafe`, which this
    // crate forbids, so the byte check is tested on its own.
    for bad in [
        &b"a\rb"[..],
        b"a\nb",
        b"a\0b",
        b"\r\n",
        b"a\x01",
        b"\x7f",
        b"a\x1bb",
    ] {
        assert!(!is_clean_value(bad), "{bad:?}");
    }
    for good in [&b""[..], b"a b", b"a\tb", b"\xe9t\xe9", b"~!\"#"] {
        assert!(is_clean_value(good), "{good:?}");
    }
}

#[test]
fn errors_say_what_was_wrong() {
    let error = HeadError::ConnectionSpecificHeader {
        name: header("upgrade"),
    };
    assert_eq!(
        error.to_string(),
        "HTTP/2 request has connection-specific header upgrade"
    );
    assert_eq!(
        HeadError::ContentLengthWithTransferEncoding.to_string(),
        "request has both content-length and transfer-encoding"
    );
}
