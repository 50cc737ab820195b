//! The mesh's identities and its TLS. Every workload (a service instance, a
//! storefront, an operator's `meshctl`) holds a certificate from the mesh's CA that
//! names it, `spiffe://rankmesh/<role>/<name>`; every gRPC hop is TLS 1.3 with both
//! sides authenticated by it, so a server knows who calls and a client knows it
//! reached the service it meant (the certificate's DNS name is `<role>.rankmesh`,
//! whatever address discovery gave).
//!
//! # Layout
//! - [`identity`]: who a workload is, and reading it from a certificate.
//! - [`ca`]: making the CA, issuing certificates, writing key files (0600).
//! - [`files`]: the three files a workload is configured with, loaded.
//! - [`reload`]: a value rebuilt when its files change (polled and debounced),
//!   the old one kept when the new files are refused.
//! - [`server`]: the acceptor and the connections a tonic server takes
//!   ([`server::MeshIo`], with the caller's [`server::PeerInfo`]).
//! - [`client`]: the connector the SDK's channels dial through.
//!
//! Knows nothing of services or RPCs: authorization by identity is the callers'.
//! Must not import any other rankmesh crate.

pub mod ca;
pub mod client;
pub mod error;
pub mod files;
pub mod identity;
pub mod reload;
pub mod server;

pub use ca::{Ca, Issued, Validity};
pub use client::Connector;
pub use error::TlsError;
pub use files::TlsFiles;
pub use identity::Identity;
pub use server::{Acceptor, ClientCerts, MeshIo, PeerInfo};

/// The crypto every config here is built with (aws-lc-rs, TLS 1.3 suites).
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The only protocol version offered or accepted.
pub(crate) static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// gRPC runs over HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";
