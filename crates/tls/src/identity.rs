//! Who a workload is: a role (`ranking`, `registry`, ..., or a caller's role:
//! `storefront`, `operator`, `admin`) and a name (`ranking-1`, `checkout-web`),
//! written `spiffe://rankmesh/<role>/<name>` in its certificate's URI SAN.

use std::fmt;

use rustls::pki_types::CertificateDer;

use crate::error::TlsError;

/// The trust domain of every identity the mesh CA issues.
pub const TRUST_DOMAIN: &str = "rankmesh";

/// A workload's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub role: String,
    pub name: String,
}

impl Identity {
    /// `role` and `name`: lower-case letters, digits, `-`, `_` and `.`, 1..=63 each.
    pub fn new(role: &str, name: &str) -> Result<Self, TlsError> {
        for (what, v) in [("role", role), ("name", name)] {
            let ok = !v.is_empty()
                && v.len() <= 63
                && v.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
                });
            if !ok {
                return Err(TlsError::Identity(format!(
                    "{what} {v:?}: 1 to 63 of a-z, 0-9, '-', '_', '.'"
                )));
            }
        }
        Ok(Self {
            role: role.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `spiffe://rankmesh/<role>/<name>`.
    pub fn uri(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/{}/{}", self.role, self.name)
    }

    /// The identity a URI names, if it is one of this trust domain.
    pub fn parse_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?.strip_prefix(TRUST_DOMAIN)?;
        let (role, name) = rest.strip_prefix('/')?.split_once('/')?;
        Self::new(role, name).ok()
    }

    /// The DNS name in the certificates of role `role`, which a client checks
    /// instead of the address it dialled: `<role>.rankmesh`.
    pub fn server_name(role: &str) -> String {
        format!("{role}.{TRUST_DOMAIN}")
    }

    /// The identity in a certificate's URI SAN.
    pub fn from_cert(der: &CertificateDer<'_>) -> Result<Self, TlsError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::Identity(format!("not an X.509 certificate: {e}")))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| TlsError::Identity(format!("subject alternative names: {e}")))?
            .ok_or_else(|| TlsError::Identity("no subject alternative names".into()))?;
        san.value
            .general_names
            .iter()
            .find_map(|n| match n {
                GeneralName::URI(uri) => Self::parse_uri(uri),
                _ => None,
            })
            .ok_or_else(|| {
                TlsError::Identity(format!("no spiffe://{TRUST_DOMAIN}/<role>/<name> URI"))
            })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_foreign_ones_are_refused() {
        let id = Identity::new("ranking", "ranking-1").expect("valid");
        assert_eq!(id.uri(), "spiffe://rankmesh/ranking/ranking-1");
        assert_eq!(Identity::parse_uri(&id.uri()), Some(id));
        for bad in [
            "spiffe://other/ranking/ranking-1",
            "spiffe://rankmesh/ranking",
            "spiffe://rankmesh/Ranking/x",
            "spiffe://rankmesh/ranking/a/b",
            "https://rankmesh/ranking/x",
            "spiffe://rankmesh//x",
        ] {
            assert_eq!(Identity::parse_uri(bad), None, "{bad}");
        }
        assert!(Identity::new("admin", &"x".repeat(64)).is_err());
    }
}
