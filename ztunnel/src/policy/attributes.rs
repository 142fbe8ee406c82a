//! What a policy is evaluated against: the attributes of one connection (L4,
//! ztunnel) or one request (L7, the waypoint). Everything is borrowed, so
//! building the attributes costs nothing on the hot path; L7 attributes are
//! absent at L4.

use std::net::{IpAddr, SocketAddr};

use super::Error;

/// The authenticated peer of an mTLS connection: its SPIFFE identity
/// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
///
/// Policies name peers by *principal*, the identity without `spiffe://`
/// (`cluster.local/ns/shop/sa/web`), and by namespace; both are slices of the
/// identity, so a peer borrows it and never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer<'a> {
    principal: &'a str,
    namespace: &'a str,
    service_account: &'a str,
}

impl<'a> Peer<'a> {
    /// The peer with SPIFFE identity `uri` (`spiffe://td/ns/<ns>/sa/<sa>`).
    pub fn from_uri(uri: &'a str) -> Result<Self, Error> {
        let bad = || Error::Identity(uri.to_owned());
        let principal = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = principal.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                if !td.is_empty() && !ns.is_empty() && !sa.is_empty() =>
            {
                Ok(Self {
                    principal,
                    namespace: ns,
                    service_account: sa,
                })
            }
            _ => Err(bad()),
        }
    }

    /// The principal, `<trust domain>/ns/<namespace>/sa/<service account>`: what
    /// `principals` and `source.principal` match.
    pub fn principal(&self) -> &'a str {
        self.principal
    }

    /// The namespace: what `namespaces` and `source.namespace` match.
    pub fn namespace(&self) -> &'a str {
        self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &'a str {
        self.service_account
    }
}

/// HTTP request headers, as the waypoint has them.
pub trait Headers {
    /// The value of header `name` (given in lowercase), several values joined
    /// with `,` as HTTP allows; `None` when absent.
    fn get(&self, name: &str) -> Option<&str>;
}

/// The claims of a verified JWT.
pub trait Claims {
    /// Calls `matches` on each string value of the claim at `path` (`["groups"]`
    /// for `request.auth.claims[groups]`, `["a", "b"]` for
    /// `request.auth.claims[a][b]`; each element of a list of strings is a
    /// value) until it returns true. Returns whether one did; `false` when the
    /// claim is absent.
    fn any(&self, path: &[Box<str>], matches: &mut dyn FnMut(&str) -> bool) -> bool;
}

/// The result of `RequestAuthentication` for one request: a verified JWT.
#[derive(Clone, Copy)]
pub struct RequestAuth<'a> {
    /// `<iss>/<sub>`: what `requestPrincipals` and `request.auth.principal` match.
    pub principal: &'a str,
    /// `aud` values (`request.auth.audiences`).
    pub audiences: &'a [&'a str],
    /// `azp` (`request.auth.presenter`), if any.
    pub presenter: Option<&'a str>,
    /// All claims (`request.auth.claims[...]`).
    pub claims: &'a dyn Claims,
}

impl std::fmt::Debug for RequestAuth<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Claims may hold personal data; the principal names the token enough.
        f.debug_struct("RequestAuth")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

/// The L7 attributes of one HTTP request (waypoint only).
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// `:method`.
    pub method: &'a str,
    /// The path without the query string, normalized as the proxy routes it.
    pub path: &'a str,
    /// `:authority` (or `Host`), possibly with a port.
    pub host: &'a str,
    /// The headers (`request.headers[...]`).
    pub headers: &'a dyn Headers,
    /// The verified JWT, `None` when the request carries none.
    pub auth: Option<RequestAuth<'a>>,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("host", &self.host)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// Everything a decision may look at.
///
/// At L4 (ztunnel) `request` is `None`: rules that need HTTP attributes are
/// then enforced fail-safe (see the module docs). At the destination's ztunnel
/// `destination` is the original destination (the workload's address and the
/// application's port), not the HBONE port.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The connection's source address (`ipBlocks`, `source.ip`).
    pub source_ip: IpAddr,
    /// The original client behind proxies (`remoteIpBlocks`, `remote.ip`), from
    /// `X-Forwarded-For` or the PROXY protocol at L7; `None` means the source
    /// address, which is always the case at L4 (no proxies in between).
    pub remote_ip: Option<IpAddr>,
    /// The destination address and port (`destination.ip`, `ports`,
    /// `destination.port`).
    pub destination: SocketAddr,
    /// The authenticated peer; `None` for plaintext (15006).
    pub peer: Option<Peer<'a>>,
    /// The TLS server name the client sent (`connection.sni`), if any.
    pub sni: Option<&'a str>,
    /// The HTTP request, at L7 only.
    pub request: Option<Request<'a>>,
}

impl<'a> Attributes<'a> {
    /// The attributes of an L4 connection from `source_ip` to `destination`.
    pub fn connection(source_ip: IpAddr, destination: SocketAddr, peer: Option<Peer<'a>>) -> Self {
        Self {
            source_ip,
            remote_ip: None,
            destination,
            peer,
            sni: None,
            request: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_from_spiffe_identities() {
        let peer = Peer::from_uri("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert_eq!(peer.principal(), "cluster.local/ns/shop/sa/web");
        assert_eq!(peer.namespace(), "shop");
        assert_eq!(peer.service_account(), "web");
        for bad in [
            "cluster.local/ns/shop/sa/web",
            "spiffe://cluster.local/ns/shop/sa/web/extra",
            "spiffe://cluster.local/ns//sa/web",
            "spiffe://cluster.local/sa/web/ns/shop",
            "spiffe:///ns/shop/sa/web",
            "spiffe://cluster.local/ns/shop/sa/",
        ] {
            let err = Peer::from_uri(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
