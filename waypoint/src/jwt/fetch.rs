//! Fetching key sets: the [`Fetch`] seam and the real [`HttpsFetcher`].

use std::{fmt, sync::Arc};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::{
    StatusCode, Uri,
    header::{self, HeaderValue},
};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tracing::{debug, warn};
use ztunnel::config::ErrorChain;

/// The largest response body [`HttpsFetcher`] reads, by default.
pub const MAX_JWKS_BODY: usize = 1024 * 1024;

/// Fetches a URI's body: the seam between the JWKS cache and the network.
pub trait Fetch: Send + Sync {
    /// The body of a successful GET of `uri`.
    fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Bytes, FetchError>>;

    /// Whether `uri` is one this fetcher would ever fetch (checked when a
    /// jwtRule compiles, so that a rule that can never get keys is a
    /// problem of its policy rather than a warning per token).
    fn check(&self, uri: &str) -> Result<(), FetchError> {
        let _ = uri;
        Ok(())
    }
}

/// A failed fetch, or a fetcher that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Not a URI.
    #[error("{uri:?} is not a valid URI")]
    Uri {
        /// The string given.
        uri: Box<str>,
        /// Why it does not parse.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// An `http://` URI, and the fetcher does not allow plain HTTP.
    #[error("refusing to fetch {uri} over plain http: keys are fetched over https only")]
    PlainHttp {
        /// The URI.
        uri: Box<str>,
    },
    /// Neither `https://` nor `http://`.
    #[error("{uri:?} is not an https URI")]
    NotHttps {
        /// The URI.
        uri: Box<str>,
    },
    /// Connecting or sending the request failed.
    #[error("request to {uri} failed")]
    Request {
        /// The URI.
        uri: Box<str>,
        /// What hyper reported.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The server answered with something else than 2xx.
    #[error("{uri} answered {status}")]
    Status {
        /// The URI.
        uri: Box<str>,
        /// The status.
        status: StatusCode,
    },
    /// Reading the response body failed.
    #[error("reading the response from {uri} failed")]
    Body {
        /// The URI.
        uri: Box<str>,
        /// What the body reported (off the data path, hence boxed).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The response body is larger than the fetcher accepts.
    #[error("the response from {uri} is larger than {limit} bytes")]
    TooLarge {
        /// The URI.
        uri: Box<str>,
        /// The limit.
        limit: usize,
    },
    /// An OpenID discovery document without a usable `jwks_uri`.
    #[error("the discovery document {uri} has no jwks_uri")]
    Discovery {
        /// The document's URI.
        uri: Box<str>,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A discovery document for another issuer: its keys are not this
    /// issuer's.
    #[error("the discovery document {uri} is for issuer {found:?}, not the one asked")]
    DiscoveryIssuer {
        /// The document's URI.
        uri: Box<str>,
        /// The `issuer` it names.
        found: Box<str>,
    },
    /// No root certificate to verify servers with.
    #[error("no usable root certificate")]
    NoRoots,
    /// The PEM trust bundle does not parse.
    #[error("the PEM trust bundle is invalid")]
    Pem(#[source] rustls::pki_types::pem::Error),
    /// rustls refused the configuration or a root certificate.
    #[error("TLS configuration failed")]
    Tls(#[source] rustls::Error),
}

/// Where [`HttpsFetcher`] finds the roots it trusts.
#[derive(Debug, Clone)]
pub enum TrustRoots {
    /// The system's (rustls-native-certs; `SSL_CERT_FILE`/`SSL_CERT_DIR` apply).
    Native,
    /// The certificates of a PEM bundle (e.g. a test CA).
    Pem(Vec<u8>),
}

/// The real fetcher: HTTPS GETs with hyper and rustls (aws-lc-rs), reading at
/// most [`MAX_JWKS_BODY`] bytes. It does not follow redirects. Plain `http://`
/// is refused unless [`HttpsFetcher::allow_plain_http`] was called (tests).
pub struct HttpsFetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    allow_plain_http: bool,
    max_body: usize,
}

impl HttpsFetcher {
    /// A fetcher that trusts `roots`.
    pub fn new(roots: &TrustRoots) -> Result<Self, FetchError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(FetchError::Tls)?
            .with_root_certificates(root_store(roots)?)
            .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            allow_plain_http: false,
            max_body: MAX_JWKS_BODY,
        })
    }

    /// Also fetches `http://` URIs: for tests against a local server only.
    #[must_use]
    pub fn allow_plain_http(mut self) -> Self {
        self.allow_plain_http = true;
        self
    }

    /// Reads at most `limit` bytes of a body instead of [`MAX_JWKS_BODY`].
    #[must_use]
    pub fn with_max_body(mut self, limit: usize) -> Self {
        self.max_body = limit;
        self
    }

    fn parse(&self, uri: &str) -> Result<Uri, FetchError> {
        let parsed: Uri = uri.parse().map_err(|source| FetchError::Uri {
            uri: uri.into(),
            source,
        })?;
        match parsed.scheme_str() {
            Some("https") => Ok(parsed),
            Some("http") if self.allow_plain_http => Ok(parsed),
            Some("http") => Err(FetchError::PlainHttp { uri: uri.into() }),
            _ => Err(FetchError::NotHttps { uri: uri.into() }),
        }
    }

    async fn get(&self, uri: &str) -> Result<Bytes, FetchError> {
        let parsed = self.parse(uri)?;
        let mut request = hyper::Request::new(Empty::new());
        *request.uri_mut() = parsed;
        request
            .headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let response =
            self.client
                .request(request)
                .await
                .map_err(|source| FetchError::Request {
                    uri: uri.into(),
                    source,
                })?;
        if !response.status().is_success() {
            return Err(FetchError::Status {
                uri: uri.into(),
                status: response.status(),
            });
        }
        let body = Limited::new(response.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|source| {
                if source.downcast_ref::<LengthLimitError>().is_some() {
                    FetchError::TooLarge {
                        uri: uri.into(),
                        limit: self.max_body,
                    }
                } else {
                    FetchError::Body {
                        uri: uri.into(),
                        source,
                    }
                }
            })?;
        Ok(body.to_bytes())
    }
}

impl Fetch for HttpsFetcher {
    fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Bytes, FetchError>> {
        Box::pin(self.get(uri))
    }

    fn check(&self, uri: &str) -> Result<(), FetchError> {
        self.parse(uri).map(drop)
    }
}

impl fmt::Debug for HttpsFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsFetcher")
            .field("allow_plain_http", &self.allow_plain_http)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

fn root_store(roots: &TrustRoots) -> Result<rustls::RootCertStore, FetchError> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        TrustRoots::Native => {
            let loaded = rustls_native_certs::load_native_certs();
            for error in &loaded.errors {
                warn!(error = %ErrorChain(error), "some system root certificates were not loaded");
            }
            let (_added, ignored) = store.add_parsable_certificates(loaded.certs);
            if ignored > 0 {
                debug!(
                    ignored,
                    "system root certificates rustls cannot use were skipped"
                );
            }
        }
        TrustRoots::Pem(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                store
                    .add(cert.map_err(FetchError::Pem)?)
                    .map_err(FetchError::Tls)?;
            }
        }
    }
    if store.is_empty() {
        return Err(FetchError::NoRoots);
    }
    Ok(store)
}
