//! Where tokens are: the `fromHeaders`, `fromParams` and `fromCookies` of all
//! the jwtRules of a destination, merged, and finding, counting and removing
//! tokens there.
//!
//! - A header location matches a value that starts with its prefix (ASCII
//!   case-insensitively, as auth schemes compare); the token is the rest,
//!   trimmed. One header value holds at most one token: of several locations
//!   on the same header, the longest matching prefix wins.
//! - A query parameter matches by its percent-decoded name; the token is the
//!   percent-decoded value.
//! - A cookie matches by name in any `cookie` header; the token is the value,
//!   without surrounding double quotes.
//! - Empty values are no token.

use std::borrow::Cow;

use hyper::{
    HeaderMap, Uri,
    header::{self, HeaderName, HeaderValue},
    http::uri::PathAndQuery,
};

/// One place a token may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A header, with a prefix before the token (empty for none).
    Header { name: HeaderName, prefix: Box<str> },
    /// A query parameter.
    Param(Box<str>),
    /// A cookie.
    Cookie(Box<str>),
}

impl Source {
    /// Where a jwtRule without any location looks: `Authorization: Bearer`.
    pub(crate) fn default_header() -> Self {
        Self::Header {
            name: header::AUTHORIZATION,
            prefix: "Bearer ".into(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    source: Source,
    /// The providers (indices) that read tokens here; empty for the locations
    /// of broken rules and invalid policies, which only reject.
    providers: Vec<usize>,
}

/// A token as found, before any check.
#[derive(Debug)]
pub(crate) struct Found<'r> {
    /// The index of its location.
    pub(crate) location: usize,
    pub(crate) token: Cow<'r, [u8]>,
}

/// The tokens of a request.
#[derive(Debug)]
pub(crate) enum Scan<'r> {
    None,
    One(Found<'r>),
    Many,
}

impl<'r> Scan<'r> {
    fn push(&mut self, found: Found<'r>) {
        *self = match self {
            Self::None => Self::One(found),
            Self::One(_) | Self::Many => Self::Many,
        };
    }
}

/// The distinct locations of a destination's providers.
#[derive(Debug, Default)]
pub(crate) struct Locations {
    entries: Vec<Entry>,
}

impl Locations {
    /// Adds `source`, read by `provider` if any.
    pub(crate) fn add(&mut self, source: Source, provider: Option<usize>) {
        let index = match self.entries.iter().position(|e| e.source == source) {
            Some(index) => index,
            None => {
                self.entries.push(Entry {
                    source,
                    providers: Vec::new(),
                });
                self.entries.len() - 1
            }
        };
        if let Some(provider) = provider
            && let Some(entry) = self.entries.get_mut(index)
            && !entry.providers.contains(&provider)
        {
            entry.providers.push(provider);
        }
    }

    /// Whether there is no location at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `provider` reads tokens at `location`.
    pub(crate) fn allows(&self, location: usize, provider: usize) -> bool {
        self.entries
            .get(location)
            .is_some_and(|e| e.providers.contains(&provider))
    }

    /// The tokens of a request.
    pub(crate) fn scan<'r>(&self, headers: &'r HeaderMap, uri: &'r Uri) -> Scan<'r> {
        let mut scan = Scan::None;
        for (index, entry) in self.entries.iter().enumerate() {
            if let Source::Header { name, .. } = &entry.source
                && !self.entries[..index].iter().any(|e| is_header(e, name))
            {
                for value in headers.get_all(name) {
                    if let Some((location, token)) = self.header_token(name, value.as_bytes()) {
                        scan.push(Found {
                            location,
                            token: Cow::Borrowed(token),
                        });
                    }
                }
            }
        }
        if let Some(query) = uri.query()
            && self
                .entries
                .iter()
                .any(|e| matches!(e.source, Source::Param(_)))
        {
            for (name, value) in query.split('&').map(split_pair) {
                if let Some(location) = self.param_location(&percent_decode(name.as_bytes())) {
                    let token = percent_decode(value.as_bytes());
                    if !token.is_empty() {
                        scan.push(Found { location, token });
                    }
                }
            }
        }
        let has_cookies = self
            .entries
            .iter()
            .any(|e| matches!(e.source, Source::Cookie(_)));
        for value in headers
            .get_all(header::COOKIE)
            .iter()
            .filter(|_| has_cookies)
        {
            for (name, value) in cookies(value.as_bytes()) {
                if let Some(location) = self.cookie_location(name)
                    && !value.is_empty()
                {
                    scan.push(Found {
                        location,
                        token: Cow::Borrowed(value),
                    });
                }
            }
        }
        scan
    }

    /// Removes the token at `location` from the request.
    pub(crate) fn remove(
        &self,
        location: usize,
        headers: &mut HeaderMap,
        uri: &mut Uri,
    ) -> Result<(), hyper::http::Error> {
        match self.entries.get(location).map(|e| &e.source) {
            Some(Source::Header { name, .. }) => {
                let kept: Vec<HeaderValue> = headers
                    .get_all(name)
                    .iter()
                    .filter(|v| {
                        self.header_token(name, v.as_bytes())
                            .is_none_or(|(l, _)| l != location)
                    })
                    .cloned()
                    .collect();
                headers.remove(name);
                for value in kept {
                    headers.append(name.clone(), value);
                }
                Ok(())
            }
            Some(Source::Param(param)) => remove_param(uri, param),
            Some(Source::Cookie(cookie)) => remove_cookie(headers, cookie),
            None => Ok(()),
        }
    }

    /// The location and token of one value of header `name`.
    fn header_token<'v>(&self, name: &HeaderName, value: &'v [u8]) -> Option<(usize, &'v [u8])> {
        let mut best: Option<(usize, usize)> = None;
        for (index, entry) in self.entries.iter().enumerate() {
            if let Source::Header { name: n, prefix } = &entry.source
                && n == name
                && value
                    .get(..prefix.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
                && best.is_none_or(|(_, len)| prefix.len() > len)
            {
                best = Some((index, prefix.len()));
            }
        }
        let (location, len) = best?;
        let token = value.get(len..)?.trim_ascii();
        (!token.is_empty()).then_some((location, token))
    }

    fn param_location(&self, name: &[u8]) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| matches!(&e.source, Source::Param(p) if p.as_bytes() == name))
    }

    fn cookie_location(&self, name: &[u8]) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| matches!(&e.source, Source::Cookie(c) if c.as_bytes() == name))
    }
}

fn is_header(entry: &Entry, name: &HeaderName) -> bool {
    matches!(&entry.source, Source::Header { name: n, .. } if n == name)
}

/// `name=value` (or `name`) of a query string.
fn split_pair(pair: &str) -> (&str, &str) {
    pair.split_once('=').unwrap_or((pair, ""))
}

/// The `name=value` pairs of a `cookie` header value, values unquoted.
fn cookies(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    value.split(|b| *b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (name, value) = (pair.get(..eq)?, pair.get(eq + 1..)?.trim_ascii());
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        Some((name.trim_ascii(), value))
    })
}

/// Decodes `%XX` escapes; other bytes, and malformed escapes, stay as they are.
pub(crate) fn percent_decode(input: &[u8]) -> Cow<'_, [u8]> {
    if !input.contains(&b'%') {
        return Cow::Borrowed(input);
    }
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%'
            && let [hi, lo, after @ ..] = tail
            && let (Some(hi), Some(lo)) = (hex(*hi), hex(*lo))
        {
            out.push(hi << 4 | lo);
            rest = after;
        } else {
            out.push(byte);
            rest = tail;
        }
    }
    Cow::Owned(out)
}

fn remove_param(uri: &mut Uri, param: &str) -> Result<(), hyper::http::Error> {
    let Some(query) = uri.query() else {
        return Ok(());
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| *percent_decode(split_pair(pair).0.as_bytes()) != *param.as_bytes())
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query)?);
    *uri = Uri::from_parts(parts)?;
    Ok(())
}

fn remove_cookie(headers: &mut HeaderMap, cookie: &str) -> Result<(), hyper::http::Error> {
    let mut kept = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        let pairs: Vec<&[u8]> = value
            .as_bytes()
            .split(|b| *b == b';')
            .map(<[u8]>::trim_ascii)
            .filter(|pair| {
                !pair.is_empty()
                    && cookies(pair)
                        .next()
                        .is_none_or(|(name, _)| name != cookie.as_bytes())
            })
            .collect();
        if !pairs.is_empty() {
            kept.push(HeaderValue::from_bytes(&pairs.join(&b"; "[..]))?);
        }
    }
    headers.remove(header::COOKIE);
    for value in kept {
        headers.append(header::COOKIE, value);
    }
    Ok(())
}
