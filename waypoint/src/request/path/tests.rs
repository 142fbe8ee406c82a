//! The normalization corpus, the error corpus, and the invariants (idempotent,
//! always a valid `PathAndQuery`) over the corpus and over generated targets.

use hyper::{Uri, http::uri::PathAndQuery};

use super::{PathError, normalize, normalize_uri};

/// Targets that normalize: input, path, query.
const OK: &[(&str, &str, Option<&str>)] = &[
    // Unchanged.
    ("/", "/", None),
    ("/admin", "/admin", None),
    ("/a/b/", "/a/b/", None),
    ("/ADMIN", "/ADMIN", None),
    ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=", None),
    ("/-._~", "/-._~", None),
    // Dot segments (RFC 3986 section 5.2.4).
    ("/api/../admin", "/admin", None),
    ("/a/./b/../c", "/a/c", None),
    ("/../../etc", "/etc", None),
    ("/..", "/", None),
    ("/.", "/", None),
    ("/a/..", "/", None),
    ("/a/b/..", "/a/", None),
    ("/a/b/.", "/a/b/", None),
    ("/a/.../b", "/a/.../b", None),
    ("/a/..b/c", "/a/..b/c", None),
    ("/a/.b", "/a/.b", None),
    // Merged slashes, before dots.
    ("//admin", "/admin", None),
    ("///a//b//", "/a/b/", None),
    ("/a//../b", "/b", None),
    ("//../admin", "/admin", None),
    // Unreserved escapes decoded, then dot segments.
    ("/%61dmin", "/admin", None),
    ("/%41%5a%30%39%2D%5F%7e", "/AZ09-_~", None),
    ("/%7Euser", "/~user", None),
    ("/api/%2e%2e/admin", "/admin", None),
    ("/api/%2E%2e/admin", "/admin", None),
    ("/api/.%2E/admin", "/admin", None),
    ("/api/%2e/admin", "/api/admin", None),
    ("/%2e%2e/%2e%2e/etc", "/etc", None),
    // Other escapes kept, hex uppercased.
    ("/caf%C3%A9", "/caf%C3%A9", None),
    ("/caf%c3%a9", "/caf%C3%A9", None),
    ("/%e2%82%ac", "/%E2%82%AC", None),
    ("/a%20b", "/a%20b", None),
    ("/a%3fb", "/a%3Fb", None),
    ("/a%23b", "/a%23b", None),
    ("/a%25", "/a%25", None),
    ("/a%2a", "/a%2A", None),
    // A double escape is a literal, not a dot.
    ("/%252e%252e/admin", "/%252e%252e/admin", None),
    // Printable characters RFC 3986 wants encoded.
    ("/x{y}", "/x%7By%7D", None),
    ("/x%7by%7d", "/x%7By%7D", None),
    ("/\"<>[]^`|", "/%22%3C%3E%5B%5D%5E%60%7C", None),
    // Path parameters are part of their segment.
    ("/admin;x", "/admin;x", None),
    ("/admin;", "/admin;", None),
    ("/api;/../admin", "/admin", None),
    ("/a;b=c/d", "/a;b=c/d", None),
    ("/;/admin", "/;/admin", None),
    ("/admin%3Bx", "/admin%3Bx", None),
    ("/admin%3bx", "/admin%3Bx", None),
    // The query is kept byte for byte.
    ("/a?x=%2F&y=..", "/a", Some("x=%2F&y=..")),
    ("/a/../b?../c", "/b", Some("../c")),
    ("/a?", "/a", Some("")),
    ("/a??", "/a", Some("?")),
    ("/a?x=%2f%2e", "/a", Some("x=%2f%2e")),
    ("/a?k[]=1&j={}|^`\\", "/a", Some("k[]=1&j={}|^`\\")),
    ("/%61?%61", "/a", Some("%61")),
    ("//a?/b//c", "/a", Some("/b//c")),
    // The asterisk form.
    ("*", "*", None),
];

/// Targets that are refused, with the error.
#[rustfmt::skip]
const REFUSED: &[(&str, PathError)] = &[
    ("", PathError::Empty),
    ("a/b", PathError::NotOriginForm),
    ("?x", PathError::NotOriginForm),
    ("**", PathError::NotOriginForm),
    ("*?x", PathError::NotOriginForm),
    ("http://h/a", PathError::NotOriginForm),
    // Encoded separators.
    ("/a%2Fb", PathError::EncodedSlash { offset: 2 }),
    ("/a%2fb", PathError::EncodedSlash { offset: 2 }),
    ("/public%2F..%2Fadmin", PathError::EncodedSlash { offset: 7 }),
    ("/a%5cb", PathError::EncodedBackslash { offset: 2 }),
    ("/a%5Cb", PathError::EncodedBackslash { offset: 2 }),
    // Encoded control characters.
    ("/a%00", PathError::EncodedControl { byte: 0, offset: 2 }),
    ("/a%0d%0a", PathError::EncodedControl { byte: 0x0D, offset: 2 }),
    ("/a%1F", PathError::EncodedControl { byte: 0x1F, offset: 2 }),
    ("/a%7f", PathError::EncodedControl { byte: 0x7F, offset: 2 }),
    // Malformed escapes.
    ("/a%zz", PathError::MalformedEscape { offset: 2 }),
    ("/a%4", PathError::MalformedEscape { offset: 2 }),
    ("/a%", PathError::MalformedEscape { offset: 2 }),
    ("/a%%41", PathError::MalformedEscape { offset: 2 }),
    ("/a%4g", PathError::MalformedEscape { offset: 2 }),
    ("/a%+1", PathError::MalformedEscape { offset: 2 }),
    // Escapes that are not UTF-8.
    ("/%C0%AF", PathError::EncodedNotUtf8 { offset: 1 }),
    ("/%c0%ae%c0%ae/admin", PathError::EncodedNotUtf8 { offset: 1 }),
    ("/a%E9", PathError::EncodedNotUtf8 { offset: 2 }),
    ("/a%C3", PathError::EncodedNotUtf8 { offset: 2 }),
    ("/a%C3b%A9", PathError::EncodedNotUtf8 { offset: 2 }),
    ("/a%A9", PathError::EncodedNotUtf8 { offset: 2 }),
    ("/ok%C3%A9/%FF", PathError::EncodedNotUtf8 { offset: 10 }),
    // Raw bytes.
    ("/a\\b", PathError::Backslash { offset: 2 }),
    ("\\a", PathError::NotOriginForm),
    ("/a b", PathError::InvalidByte { byte: b' ', offset: 2 }),
    ("/a\tb", PathError::InvalidByte { byte: b'\t', offset: 2 }),
    ("/a\0", PathError::InvalidByte { byte: 0, offset: 2 }),
    ("/a\r\nHost: x", PathError::InvalidByte { byte: b'\r', offset: 2 }),
    ("/a\x7f", PathError::InvalidByte { byte: 0x7F, offset: 2 }),
    ("/café", PathError::InvalidByte { byte: 0xC3, offset: 4 }),
    ("/a#b", PathError::Fragment { offset: 2 }),
    ("/a#b?c", PathError::Fragment { offset: 2 }),
    // The query's bytes and escapes.
    ("/a?x#y", PathError::Fragment { offset: 4 }),
    ("/a?x y", PathError::InvalidByte { byte: b' ', offset: 4 }),
    ("/a?x\"", PathError::InvalidByte { byte: b'"', offset: 4 }),
    ("/a?<", PathError::InvalidByte { byte: b'<', offset: 3 }),
    ("/a?>", PathError::InvalidByte { byte: b'>', offset: 3 }),
    ("/a?\x01", PathError::InvalidByte { byte: 1, offset: 3 }),
    ("/a?é", PathError::InvalidByte { byte: 0xC3, offset: 3 }),
    ("/a?x=100%", PathError::MalformedEscape { offset: 8 }),
    ("/a?x=%zz", PathError::MalformedEscape { offset: 5 }),
    // Dot segments with parameters: Tomcat and Spring climb, others do not.
    ("/public/..;/admin", PathError::DotSegmentParameter),
    ("/public/.;/admin", PathError::DotSegmentParameter),
    ("/public/..;x/admin", PathError::DotSegmentParameter),
    ("/public/%2e%2e;/admin", PathError::DotSegmentParameter),
    // A bad path is reported before a bad query.
    ("/a%2F?%zz", PathError::EncodedSlash { offset: 2 }),
];

#[test]
fn corpus_normalizes() {
    for (input, path, query) in OK.iter().copied() {
        let got = normalize(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(got.path(), path, "path of {input:?}");
        assert_eq!(got.query(), query, "query of {input:?}");
        let target = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        assert_eq!(got.as_str(), target, "target of {input:?}");
        assert_eq!(got.to_string(), target, "display of {input:?}");
        assert_eq!(got.is_asterisk(), input == "*", "asterisk of {input:?}");
    }
}

#[test]
fn corpus_refuses() {
    for (input, want) in REFUSED {
        assert_eq!(normalize(input).as_ref(), Err(want), "{input:?}");
    }
}

#[test]
fn errors_name_the_offset() {
    let err = normalize("/a%2Fb").expect_err("encoded slash");
    assert_eq!(
        err.to_string(),
        "percent-encoded slash at byte 2 of the request path"
    );
    let err = normalize("/a b").expect_err("space");
    assert_eq!(
        err.to_string(),
        "byte 0x20 at byte 2 of the request target is not allowed"
    );
}

/// The properties every normalized target has.
fn check_invariants(input: &str) {
    let Ok(once) = normalize(input) else {
        return;
    };
    let twice = normalize(once.as_str()).unwrap_or_else(|e| panic!("{input:?} -> {once}: {e}"));
    assert_eq!(once, twice, "not idempotent for {input:?}");

    // What the backend is sent parses as the same path and query.
    let parsed = PathAndQuery::try_from(once.as_str())
        .unwrap_or_else(|e| panic!("{input:?} -> {once}: {e}"));
    assert_eq!(parsed.path(), once.path(), "{input:?}");
    assert_eq!(parsed.query(), once.query(), "{input:?}");

    // The query is the input's, byte for byte.
    assert_eq!(
        once.query(),
        input.split_once('?').map(|(_, q)| q),
        "{input:?}"
    );

    if once.is_asterisk() {
        return;
    }
    let path = once.path();
    assert!(path.starts_with('/'), "{input:?} -> {path}");
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        assert!(
            !matches!(*segment, "." | ".."),
            "dot segment in {path} from {input:?}"
        );
        assert!(
            !segment.is_empty() || i + 1 == segments.len(),
            "empty segment in {path} from {input:?}"
        );
    }
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let escape = &path[i + 1..i + 3];
            assert!(
                escape
                    .bytes()
                    .all(|h| h.is_ascii_digit() || h.is_ascii_uppercase()),
                "lowercase escape in {path} from {input:?}"
            );
            let byte = u8::from_str_radix(escape, 16).expect("a hex escape");
            assert!(!super::is_unreserved(byte), "{path} from {input:?}");
            assert!(byte != b'/' && byte != b'\\', "{path} from {input:?}");
        } else {
            assert!(
                super::is_pchar(b) || b == b'/',
                "raw {b:#04x} in {path} from {input:?}"
            );
        }
    }
}

#[test]
fn corpus_is_idempotent_and_valid() {
    for (input, _, _) in OK.iter().copied() {
        check_invariants(input);
        assert!(normalize(input).is_ok(), "{input:?}");
    }
}

/// xorshift64*: deterministic, so a failure reproduces; no dev-dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        let len = u64::try_from(from.len()).expect("a short list");
        let i = usize::try_from(self.next() % len).expect("less than len");
        from[i]
    }
}

/// Pieces that make interesting targets: separators, dots in every spelling,
/// escapes of each class, parameters, the query and refused bytes.
const PIECES: &[&str] = &[
    "/",
    "/",
    "/",
    "//",
    ".",
    "..",
    "%2e",
    "%2E",
    ".%2e",
    "a",
    "B",
    "z9",
    "~",
    "-",
    "_",
    ";",
    ";x",
    "..;",
    "=",
    ":",
    "@",
    "!",
    "*",
    "%41",
    "%61",
    "%7e",
    "%7E",
    "%2d",
    "%3b",
    "%3B",
    "%25",
    "%252e",
    "%c3%a9",
    "%E2%82%AC",
    "%C3",
    "%A9",
    "%c0%af",
    "%20",
    "%2f",
    "%5c",
    "%00",
    "%zz",
    "%4",
    "%",
    "{",
    "}",
    "|",
    "\"",
    "[",
    "^",
    "`",
    "?",
    "?",
    "&",
    "#",
    "\\",
    " ",
    "é",
    "\t",
];

#[test]
fn generated_targets_are_idempotent_and_valid() {
    let mut rng = Rng(0x5EED_CAFE_F00D_0001);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut input = String::from("/");
        let pieces = rng.next() % 12;
        for _ in 0..pieces {
            input.push_str(rng.pick(PIECES));
        }
        if normalize(&input).is_ok() {
            accepted += 1;
        }
        check_invariants(&input);
    }
    // The generator must exercise the accepting paths, not only the refusals.
    assert!(
        accepted > 2_000,
        "only {accepted} generated targets accepted"
    );
}

#[test]
fn too_long_is_refused() {
    // `{` triples when encoded: fine on the way in, too long on the way out.
    let input = format!("/{}", "{".repeat(30_000));
    assert_eq!(
        normalize(&input),
        Err(PathError::TooLong {
            max: super::MAX_LEN
        })
    );
    let input = format!("/{}", "a".repeat(super::MAX_LEN - 1));
    assert!(normalize(&input).is_ok());
    let input = format!("/{}", "a".repeat(super::MAX_LEN));
    assert_eq!(
        normalize(&input),
        Err(PathError::TooLong {
            max: super::MAX_LEN
        })
    );
}

#[test]
fn normalize_uri_takes_every_target_form() {
    let rows: &[(&str, Result<&str, PathError>)] = &[
        ("/a/../b?q", Ok("/b?q")),
        ("http://example.com/a/%2e%2e/b?q", Ok("/b?q")),
        ("http://example.com", Ok("/")),
        ("http://example.com?q", Ok("/?q")),
        ("https://example.com:8443//x", Ok("/x")),
        ("*", Ok("*")),
        ("example.com:443", Err(PathError::NotOriginForm)),
        (
            "http://example.com/a%2Fb",
            Err(PathError::EncodedSlash { offset: 2 }),
        ),
    ];
    for (uri, want) in rows {
        let uri: Uri = uri.parse().unwrap_or_else(|e| panic!("{uri}: {e}"));
        let got = normalize_uri(&uri);
        assert_eq!(
            got.as_ref().map(super::NormalizedPath::as_str),
            want.as_ref().copied(),
            "{uri}"
        );
    }
}

#[test]
fn http_drops_fragments_before_we_see_them() {
    // Why the `#` refusal rarely fires behind hyper: `http` truncates it.
    let uri: Uri = "/public#/../admin".parse().expect("a uri");
    assert_eq!(uri.path(), "/public");
    assert_eq!(normalize_uri(&uri).expect("normalizes").as_str(), "/public");
}
