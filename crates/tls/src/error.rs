//! Why certificates could not be made, read or used.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file does not hold what it must (no certificate, no key, bad PEM).
    #[error("{}: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    /// A certificate names no mesh identity, or a malformed one.
    #[error("identity: {0}")]
    Identity(String),
    /// rustls refused the certificates or the key.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A certificate could not be made.
    #[error("issuing a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

impl TlsError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }

    pub(crate) fn pem(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Pem {
            path: path.into(),
            message: message.into(),
        }
    }
}
