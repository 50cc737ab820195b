//! The three files a workload is configured with: the mesh CA it trusts, its own
//! certificate, and that certificate's key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TlsError;
use crate::identity::Identity;

/// The CA certificate's file name, in a CA folder and beside issued certificates.
pub const CA_CERT: &str = "ca.pem";

/// Where a workload's CA, certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsFiles {
    /// The mesh CA certificate (PEM): peers must chain to it.
    pub ca: PathBuf,
    /// This workload's certificate (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8 or SEC1), readable by the owner only.
    pub key: PathBuf,
}

/// The files, read and checked.
pub struct Loaded {
    pub roots: Arc<RootCertStore>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Who the certificate says this workload is.
    pub identity: Identity,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl TlsFiles {
    /// Where [`crate::Ca::issue_to`] writes `identity`'s files in `dir`: the CA
    /// as `ca.pem`, the certificate and key as `<role>-<name>.pem` and `.key`.
    pub fn in_dir(dir: &Path, identity: &Identity) -> Self {
        let stem = format!("{}-{}", identity.role, identity.name);
        Self {
            ca: dir.join(CA_CERT),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    /// Reads the three files: the CA as the only root, the certificate chain (its
    /// leaf must name a mesh identity), and the key.
    pub fn load(&self) -> Result<Loaded, TlsError> {
        let roots = roots(&self.ca)?;
        let chain = certs(&self.cert)?;
        let identity =
            Identity::from_cert(&chain[0]).map_err(|e| TlsError::pem(&self.cert, e.to_string()))?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| TlsError::pem(&self.key, format!("no private key: {e}")))?;
        Ok(Loaded {
            roots: Arc::new(roots),
            chain,
            key,
            identity,
        })
    }

    /// What changes when any of the files is rewritten: modification times and
    /// sizes. None while one cannot be read.
    pub(crate) fn stamp(&self) -> Option<Vec<(SystemTime, u64)>> {
        [&self.ca, &self.cert, &self.key]
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }
}

/// Every certificate in a PEM file; at least one.
/// The CA certificates in `ca`, as the roots to verify peers against.
pub(crate) fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::pem(ca, format!("not a usable CA: {e}")))?;
    }
    Ok(roots)
}

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::pem(path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::pem(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::pem(path, "no certificate"));
    }
    Ok(certs)
}
