//! The server side: TLS 1.3 that requires a client certificate from the mesh CA,
//! the connections a tonic server takes (plain or TLS, one type), and who is on
//! the other end of each ([`PeerInfo`], in every request's extensions).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::error::TlsError;
use crate::files::{Loaded, TlsFiles};
use crate::identity::Identity;
use crate::reload::{POLL, Reloading};

/// Longest a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a client must present a certificate of the mesh CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Every client: a connection without one fails its handshake.
    Required,
    /// Checked when presented, else the connection is made without an identity
    /// (a storefront that authenticates each call with a bearer token instead);
    /// a certificate that does not chain to the mesh CA still fails.
    Optional,
}

/// The rustls config of a server: TLS 1.3 only, h2, client certificates that
/// chain to the mesh CA, required or optional.
pub fn server_config(
    loaded: Loaded,
    client_certs: ClientCerts,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = crate::provider();
    let builder =
        WebPkiClientVerifier::builder_with_provider(loaded.roots.clone(), provider.clone());
    let verifier = match client_certs {
        ClientCerts::Required => builder.build()?,
        ClientCerts::Optional => builder.allow_unauthenticated().build()?,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(crate::VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(loaded.chain, loaded.key)?;
    config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
    Ok(config)
}

/// Accepts TLS connections with the server config of the moment: a rotated
/// certificate is used from the next connection on; open ones keep theirs.
#[derive(Debug)]
pub struct Acceptor {
    config: Reloading<rustls::ServerConfig>,
    identity: Identity,
}

impl Acceptor {
    /// An acceptor for `files` that requires client certificates, re-read when
    /// the files change.
    pub fn new(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::with_poll(files, ClientCerts::Required, POLL)
    }

    /// As [`Acceptor::new`], with `client_certs`, looking at the files every
    /// `poll`.
    pub fn with_poll(
        files: &TlsFiles,
        client_certs: ClientCerts,
        poll: Duration,
    ) -> Result<Self, TlsError> {
        let identity = files.load()?.identity;
        let config = Reloading::start(files.clone(), "server", poll, move |f| {
            server_config(f.load()?, client_certs)
        })?;
        Ok(Self { config, identity })
    }

    /// Who this server is (as of its first certificate).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The TLS handshake on an accepted connection, bounded in time.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<MeshIo> {
        let remote_addr = tcp.peer_addr().ok();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.current());
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| Identity::from_cert(c).ok());
        Ok(MeshIo::Tls {
            stream: Box::new(tls),
            peer: PeerInfo {
                remote_addr,
                secure: true,
                identity,
            },
        })
    }
}

/// Who is on the other end of a connection: in every request's extensions
/// (`request.extensions().get::<PeerInfo>()`).
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// Whether the connection is TLS (with a verified client certificate).
    pub secure: bool,
    /// The identity in the client's certificate; None on a plaintext connection.
    pub identity: Option<Identity>,
}

/// A connection a server took: plaintext (only where the operator said
/// `--insecure`) or TLS.
pub enum MeshIo {
    Plain {
        stream: TcpStream,
        peer: PeerInfo,
    },
    Tls {
        stream: Box<tokio_rustls::server::TlsStream<TcpStream>>,
        peer: PeerInfo,
    },
}

impl std::fmt::Debug for MeshIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Plain { .. } => "plain",
            Self::Tls { .. } => "tls",
        };
        f.debug_struct("MeshIo")
            .field("kind", &kind)
            .field("peer", self.peer())
            .finish()
    }
}

impl MeshIo {
    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        match self {
            Self::Plain { peer, .. } | Self::Tls { peer, .. } => peer,
        }
    }
}

impl tonic::transport::server::Connected for MeshIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer().clone()
    }
}

impl AsyncRead for MeshIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain { stream, .. } => Pin::new(stream).poll_read(cx, buf),
            Self::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MeshIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain { stream, .. } => Pin::new(stream).poll_write(cx, buf),
            Self::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain { stream, .. } => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain { stream, .. } => stream.is_write_vectored(),
            Self::Tls { stream, .. } => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain { stream, .. } => Pin::new(stream).poll_flush(cx),
            Self::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain { stream, .. } => Pin::new(stream).poll_shutdown(cx),
            Self::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections `listener` takes, for `serve_with_incoming`: with an acceptor,
/// each after its TLS handshake (done off the accept loop, so a slow client holds
/// up no one; a failed handshake is logged, counted and dropped), else as they are.
/// Ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: Option<Arc<Acceptor>>,
) -> impl Stream<Item = io::Result<MeshIo>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<MeshIo>>(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: say so, and go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            // Small request/response messages: do not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                let peer = PeerInfo {
                    remote_addr: Some(remote),
                    secure: false,
                    identity: None,
                };
                if tx
                    .send(Ok(MeshIo::Plain { stream: tcp, peer }))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(io) => {
                        let _ = tx.send(Ok(io)).await;
                    }
                    Err(e) => {
                        metrics::counter!("rankmesh_tls_handshake_failures_total").increment(1);
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
