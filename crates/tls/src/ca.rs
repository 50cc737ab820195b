//! The mesh CA: made once per mesh (`ca.pem`, and `ca.key` readable by its owner
//! only), and the leaf certificates it issues, each naming one [`Identity`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::TlsError;
use crate::files::TlsFiles;
use crate::identity::Identity;

pub use crate::files::CA_CERT;
/// The CA key's file name (0600).
pub const CA_KEY: &str = "ca.key";

/// How long a CA made by [`Ca::init`] is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a minute ago (clocks differ a little) for `lifetime`.
    pub fn from_now(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(60),
            not_after: now + lifetime,
        }
    }
}

/// A CA that can issue certificates.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

impl Ca {
    /// The CA in `dir`, made there first if it has none.
    pub fn init(dir: &Path) -> Result<Self, TlsError> {
        if dir.join(CA_KEY).exists() {
            return Self::load(dir);
        }
        std::fs::create_dir_all(dir).map_err(TlsError::io("create", dir))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "rankmesh mesh CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let validity = Validity::from_now(CA_LIFETIME);
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
        write_public(&dir.join(CA_CERT), cert.pem().as_bytes())?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA in `dir` (`ca.pem`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(TlsError::io("read", path))
        };
        let cert_pem = read(CA_CERT)?;
        let key = KeyPair::from_pem(&read(CA_KEY)?)
            .map_err(|e| TlsError::pem(dir.join(CA_KEY), e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| TlsError::pem(dir.join(CA_CERT), e.to_string()))?;
        Ok(Self { cert_pem, issuer })
    }

    /// The CA certificate, in PEM: what every workload trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `identity`, with a new key: its URI SAN is the identity,
    /// its DNS SAN `<role>.rankmesh` (the name clients check), usable to serve and
    /// to call. `hosts` (IP addresses or DNS names) are added as SANs for peers
    /// that check the address they dialled, as etcd members do of each other.
    pub fn issue(
        &self,
        identity: &Identity,
        validity: Validity,
        hosts: &[String],
    ) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, identity.name.as_str());
        params.subject_alt_names = vec![
            SanType::URI(
                identity
                    .uri()
                    .try_into()
                    .map_err(|e: rcgen::Error| TlsError::Identity(e.to_string()))?,
            ),
            SanType::DnsName(
                Identity::server_name(&identity.role)
                    .try_into()
                    .map_err(|e: rcgen::Error| TlsError::Identity(e.to_string()))?,
            ),
        ];
        for host in hosts {
            params.subject_alt_names.push(match host.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    host.as_str()
                        .try_into()
                        .map_err(|e: rcgen::Error| TlsError::Identity(format!("{host}: {e}")))?,
                ),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `identity` and writes it to `dir` as
    /// `<role>-<name>.pem` and `.key` (0600), beside a copy of the CA certificate
    /// (`hosts` as in [`Ca::issue`]);
    /// returns the files a workload is configured with. Rewrites them in place (each
    /// file replaced whole), so a running workload picks them up.
    pub fn issue_to(
        &self,
        identity: &Identity,
        validity: Validity,
        hosts: &[String],
        dir: &Path,
    ) -> Result<TlsFiles, TlsError> {
        let issued = self.issue(identity, validity, hosts)?;
        std::fs::create_dir_all(dir).map_err(TlsError::io("create", dir))?;
        let files = TlsFiles::in_dir(dir, identity);
        if !files.ca.exists()
            || std::fs::read_to_string(&files.ca).ok().as_deref() != Some(self.cert_pem())
        {
            write_public(&files.ca, self.cert_pem.as_bytes())?;
        }
        // The key first: a reload that sees the new certificate finds its key.
        write_private(&files.key, issued.key_pem.as_bytes())?;
        write_public(&files.cert, issued.cert_pem.as_bytes())?;
        Ok(files)
    }
}

/// Writes `bytes` to `path` readable by its owner only (0600), replacing it whole:
/// written to a temporary file beside it, then renamed over it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write_atomic(path, bytes, 0o600)
}

/// Writes `bytes` to `path` readable by all (0644: a certificate), replacing it
/// whole.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write_atomic(path, bytes, 0o644)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp: PathBuf = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(TlsError::io("create", &tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(TlsError::io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(TlsError::io("rename into", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_ca_is_made_once_and_issues_named_certificates_with_private_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::init(dir.path()).expect("init");
        let again = Ca::init(dir.path()).expect("init again loads");
        assert_eq!(
            ca.cert_pem(),
            again.cert_pem(),
            "init must not replace a CA"
        );
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(CA_KEY)), 0o600);

        let id = Identity::new("ranking", "ranking-1").expect("id");
        let out = dir.path().join("issued");
        let files = again
            .issue_to(
                &id,
                Validity::from_now(Duration::from_secs(3600)),
                &[],
                &out,
            )
            .expect("issue");
        assert_eq!(mode(&files.key), 0o600);
        let loaded = files.load().expect("load");
        assert_eq!(loaded.identity, id);
    }
}
