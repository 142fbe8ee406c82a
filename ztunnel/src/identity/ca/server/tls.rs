//! The CA's TLS 1.3 endpoint: a serving certificate signed by the CA's own root
//! (re-issued at half life), and the accept loop feeding tonic.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Instant,
};

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::Error;
use crate::{identity::ca::CertificateAuthority, settings};

/// rustls configuration of the CA endpoint: TLS 1.3 only, aws-lc-rs, ALPN h2.
pub(super) fn server_config(
    ca: Arc<CertificateAuthority>,
    names: Vec<String>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resolver = ServingCert::new(ca, names, provider.clone())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The CA's serving certificate, re-issued from the root once half its life is over.
struct ServingCert {
    ca: Arc<CertificateAuthority>,
    names: Vec<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: Mutex<(Arc<CertifiedKey>, Instant)>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    fn new(
        ca: Arc<CertificateAuthority>,
        names: Vec<String>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, Error> {
        let first = issue(&ca, &names, &provider)?;
        Ok(Self {
            ca,
            names,
            provider,
            current: Mutex::new(first),
        })
    }
}

fn issue(
    ca: &CertificateAuthority,
    names: &[String],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Instant), Error> {
    let validity = settings::CA_SERVING_CERT_VALIDITY;
    let (chain, key) = ca.serving_cert(names, validity)?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(Error::Tls)?;
    let renew_at = Instant::now() + validity / 2;
    Ok((Arc::new(CertifiedKey::new(chain, key)), renew_at))
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if Instant::now() >= current.1 {
            match issue(&self.ca, &self.names, &self.provider) {
                Ok(fresh) => *current = fresh,
                Err(err) => tracing::error!(
                    error = %crate::identity::error_chain(&err),
                    "cannot renew the CA's serving certificate; keeping the current one"
                ),
            }
        }
        Some(current.0.clone())
    }
}

/// Accepts TCP connections, completes TLS handshakes concurrently (each bounded
/// by [`settings::CA_HANDSHAKE_TIMEOUT`]) and yields the established streams.
pub(super) fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "CA accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            // Small gRPC frames: without this, Nagle and delayed ACKs add ~40 ms per call.
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(settings::CA_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                match handshake.await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(TlsConn(stream))).await;
                    }
                    Ok(Err(err)) => tracing::debug!(%peer, error = %err, "CA TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "CA TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// An accepted TLS connection to the CA.
#[derive(Debug)]
pub struct TlsConn(TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
