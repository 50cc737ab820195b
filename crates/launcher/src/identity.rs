//! The local mesh's TLS identities (`rankmesh-tls`): its CA, made once under
//! `<state dir>/tls/ca`; a certificate per instance (`spiffe://rankmesh/<service>/
//! <instance>`), issued afresh each time the instance starts; and the operator's
//! (`admin/meshctl`), which meshctl, the provisioning hook and drills call with.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rankmesh_tls::{Ca, Identity, TlsFiles, Validity};

use crate::error::LaunchError;

/// How long an issued certificate is valid; a restart issues a new one.
const LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where a mesh's certificates and keys are.
pub fn tls_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tls")
}

/// The mesh's CA, made on first use.
pub fn mesh_ca(state_dir: &Path) -> Result<Ca, LaunchError> {
    Ok(Ca::init(&tls_dir(state_dir).join("ca"))?)
}

/// A fresh certificate for `role`/`name` from the mesh's CA.
pub fn issue(state_dir: &Path, role: &str, name: &str) -> Result<TlsFiles, LaunchError> {
    issue_for_hosts(state_dir, role, name, &[])
}

/// [`issue`], naming `hosts` too (etcd members check the address they dial).
pub fn issue_for_hosts(
    state_dir: &Path,
    role: &str,
    name: &str,
    hosts: &[String],
) -> Result<TlsFiles, LaunchError> {
    let identity = Identity::new(role, name)?;
    Ok(mesh_ca(state_dir)?.issue_to(
        &identity,
        Validity::from_now(LIFETIME),
        hosts,
        &tls_dir(state_dir),
    )?)
}

/// The operator's identity for this mesh (`admin/meshctl`): the files, issued when
/// missing.
pub fn operator_files(state_dir: &Path) -> Result<TlsFiles, LaunchError> {
    let operator = Identity::new("admin", "meshctl")?;
    let files = TlsFiles::in_dir(&tls_dir(state_dir), &operator);
    if files.load().is_ok() {
        return Ok(files);
    }
    issue(state_dir, &operator.role, &operator.name)
}
