//! The client side: TLS 1.3 to a server whose certificate chains to the mesh CA
//! and names the service meant (`<role>.rankmesh`, whatever address was dialled),
//! presenting this workload's certificate. [`Connector`] is what a tonic channel
//! dials through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::error::TlsError;
use crate::files::{Loaded, TlsFiles};
use crate::identity::Identity;
use crate::reload::{POLL, Reloading};

/// The rustls config of a client: TLS 1.3 only, h2, the mesh CA as the only root,
/// this workload's certificate for client authentication.
pub fn client_config(loaded: Loaded) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(crate::VERSIONS)?
        .with_root_certificates(loaded.roots)
        .with_client_auth_cert(loaded.chain, loaded.key)?;
    config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
    Ok(config)
}

/// This workload's client TLS, shared by all its channels; re-read when its files
/// change (new connections use the new certificate).
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<Reloading<rustls::ClientConfig>>,
    identity: Identity,
}

impl ClientTls {
    pub fn new(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::with_poll(files, POLL)
    }

    /// As [`ClientTls::new`], looking at the files every `poll`.
    pub fn with_poll(files: &TlsFiles, poll: Duration) -> Result<Self, TlsError> {
        let identity = files.load()?.identity;
        let config = Reloading::start(files.clone(), "client", poll, |f| client_config(f.load()?))?;
        Ok(Self {
            config: Arc::new(config),
            identity,
        })
    }

    /// Who this client is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A connector to servers of `role` (`ranking`, `registry`, ...).
    pub fn connector(&self, role: &str) -> Result<Connector, TlsError> {
        let server_name = ServerName::try_from(Identity::server_name(role))
            .map_err(|e| TlsError::Identity(format!("role {role:?}: {e}")))?;
        Ok(Connector {
            config: self.config.clone(),
            server_name,
        })
    }
}

/// Dials TCP to the URI's host and port, then TLS to the service it was made for.
#[derive(Debug, Clone)]
pub struct Connector {
    config: Arc<Reloading<rustls::ClientConfig>>,
    server_name: ServerName<'static>,
}

impl Connector {
    /// TLS over a connection already made to the server.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(self.config.current());
        connector.connect(self.server_name.clone(), tcp).await
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: no host"))
                })?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            Ok(TokioIo::new(this.handshake(tcp).await?))
        })
    }
}
