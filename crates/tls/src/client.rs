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
use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use crate::error::TlsError;
use crate::files::{Loaded, TlsFiles};
use crate::identity::{Identity, TRUST_DOMAIN};
use crate::reload::{POLL, Reloading};

/// The server name a connector sends when it may reach a server of any role
/// (`meshctl health ADDR`): the server's certificate is then checked against the
/// name of its own role.
const ANY_ROLE: &str = TRUST_DOMAIN;

/// The rustls config of a client: TLS 1.3 only, h2, the mesh CA as the only root,
/// this workload's certificate for client authentication.
pub fn client_config(loaded: Loaded) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = verifying(loaded.roots)?.with_client_auth_cert(loaded.chain, loaded.key)?;
    config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
    Ok(config)
}

/// The config builder up to the server check: TLS 1.3, servers of the mesh CA.
fn verifying(
    roots: Arc<rustls::RootCertStore>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError>
{
    let provider = crate::provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Identity(format!("server verifier: {e}")))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(crate::VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier { webpki })))
}

/// The web PKI check (chain to the mesh CA, validity, usage, name), where the name
/// is the role the client meant (`ranking.rankmesh`); for a connector to any role,
/// the name of the role the certificate itself names.
#[derive(Debug)]
struct MeshServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let any = matches!(server_name, ServerName::DnsName(n) if n.as_ref() == ANY_ROLE);
        if !any {
            return self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        let identity = Identity::from_cert(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        let own = ServerName::try_from(Identity::server_name(&identity.role)).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        self.webpki
            .verify_server_cert(end_entity, intermediates, &own, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// This process's client identity, for the SDK's channels that were given none.
static INSTALLED: std::sync::RwLock<Option<ClientTls>> = std::sync::RwLock::new(None);

/// Makes `tls` this process's client identity (a service's own, at start; an
/// operator's, in meshctl): the SDK dials through it wherever a resolver carries
/// none. Replaces an earlier one.
pub fn install(tls: ClientTls) {
    *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = Some(tls);
}

/// Forgets the installed identity: channels made from now on dial plaintext
/// unless their resolver carries one.
pub fn uninstall() {
    *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The identity [`install`] set, if any.
pub fn installed() -> Option<ClientTls> {
    INSTALLED.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// This workload's client TLS, shared by all its channels; re-read when its files
/// change (new connections use the new certificate).
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<Reloading<rustls::ClientConfig>>,
    /// None for a client without a certificate ([`ClientTls::server_only`]).
    identity: Option<Identity>,
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
            identity: Some(identity),
        })
    }

    /// TLS 1.3 to servers of the mesh CA in `ca`, without a client certificate:
    /// for a storefront that authenticates each call with a bearer token
    /// (`with_token` on the SDK's clients) where it cannot hold a certificate.
    pub fn server_only(ca: &std::path::Path) -> Result<Self, TlsError> {
        let roots = Arc::new(crate::files::roots(ca)?);
        let mut config = verifying(roots)?.with_no_client_auth();
        config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
        Ok(Self {
            config: Arc::new(Reloading::fixed(config)),
            identity: None,
        })
    }

    /// Who this client is; None for a client without a certificate.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// A connector to a server of whatever role its certificate names (for probes
    /// of a bare address): still a server of this mesh CA.
    pub fn connector_any(&self) -> Connector {
        Connector {
            config: self.config.clone(),
            server_name: ServerName::try_from(ANY_ROLE).expect("a valid DNS name"),
        }
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
