//! The development secrets of a local mesh's registry (admin token, master key,
//! signing key), created once per state directory, readable by the owner only, so
//! a restarted mesh still decrypts and verifies what was published.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::LaunchError;

const FILE: &str = "registry-secrets.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistrySecrets {
    /// What writes to the registry (publish, stage changes) present.
    pub admin_token: String,
    /// The AES-256 master key that wraps each artifact's data key, hex.
    pub master_key: String,
    /// The registry's ed25519 signing seed, hex.
    pub signing_key: String,
}

/// 32 random bytes, hex: a fresh token or key.
pub fn hex32() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The registry admin token a write uses: the one given, else the local mesh's
/// (its secrets file under `state_dir`, created when missing).
pub fn admin_token(given: Option<&str>, state_dir: &Path) -> Result<String, LaunchError> {
    match given {
        Some(t) => Ok(t.to_owned()),
        None => Ok(registry_secrets(state_dir)?.admin_token),
    }
}

/// The local mesh's registry secrets, if `state_dir` has them (read only).
pub fn existing_secrets(state_dir: &Path) -> Result<Option<RegistrySecrets>, LaunchError> {
    let path = state_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| LaunchError::Parse { path, source }),
        Err(_) => Ok(None),
    }
}

/// The local mesh's registry secrets, created on first use.
pub fn registry_secrets(state_dir: &Path) -> Result<RegistrySecrets, LaunchError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(s) = existing_secrets(state_dir)? {
        return Ok(s);
    }
    let path = state_dir.join(FILE);
    let secrets = RegistrySecrets {
        admin_token: hex32(),
        master_key: hex32(),
        signing_key: hex32(),
    };
    std::fs::create_dir_all(state_dir).map_err(LaunchError::io("create", state_dir))?;
    let bytes = serde_json::to_vec_pretty(&secrets).map_err(|source| LaunchError::Parse {
        path: path.clone(),
        source,
    })?;
    // Owner-only from its creation, so the secrets are never readable by others;
    // create_new, so two starters cannot each write different secrets.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(LaunchError::io("create", &path))?;
    std::io::Write::write_all(&mut file, &bytes).map_err(LaunchError::io("write", &path))?;
    Ok(secrets)
}

/// Where a local mesh's services read the registry secrets: one owner-only file
/// each under `<state>/secrets/`, named by path in their config, so no secret is
/// on a command line or in a service's environment.
#[derive(Debug, Clone)]
pub struct SecretFiles {
    pub admin_token: PathBuf,
    pub master_key: PathBuf,
    pub signing_key: PathBuf,
}

impl RegistrySecrets {
    /// Writes each secret to its own file under `state_dir` (0600, replaced
    /// whole) and returns their paths.
    pub fn files(&self, state_dir: &Path) -> Result<SecretFiles, LaunchError> {
        let dir = state_dir.join("secrets");
        std::fs::create_dir_all(&dir).map_err(LaunchError::io("create", &dir))?;
        let files = SecretFiles {
            admin_token: dir.join("admin-token"),
            master_key: dir.join("master-key-local1"),
            signing_key: dir.join("signing-key"),
        };
        for (path, value) in [
            (&files.admin_token, &self.admin_token),
            (&files.master_key, &self.master_key),
            (&files.signing_key, &self.signing_key),
        ] {
            rankmesh_tls::ca::write_private(path, value.as_bytes())?;
        }
        Ok(files)
    }
}

/// The registry's public key (hex) for a signing seed (hex): what replicas verify
/// manifests with.
pub fn verify_key_hex(signing_seed: &str) -> Result<String, LaunchError> {
    let bad = |why: &str| LaunchError::Invalid(format!("the signing key {why}"));
    if !signing_seed.is_ascii() || signing_seed.len() != 64 {
        return Err(bad("must be 64 hex characters (32 bytes)"));
    }
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&signing_seed[2 * i..2 * i + 2], 16)
            .map_err(|_| bad("must be hex"))?;
    }
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn secrets_are_made_once_owner_only_and_kept() {
        let dir = tempfile::tempdir().expect("dir");
        assert!(existing_secrets(dir.path()).expect("read").is_none());
        let made = registry_secrets(dir.path()).expect("made");
        let mode = std::fs::metadata(dir.path().join(FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = registry_secrets(dir.path()).expect("kept");
        assert_eq!(made.master_key, again.master_key);
        assert_eq!(
            admin_token(None, dir.path()).expect("token"),
            made.admin_token
        );
        assert_eq!(admin_token(Some("t"), dir.path()).expect("given"), "t");
        let files = made.files(dir.path()).expect("files");
        for (path, value) in [
            (&files.admin_token, &made.admin_token),
            (&files.master_key, &made.master_key),
            (&files.signing_key, &made.signing_key),
        ] {
            assert_eq!(&std::fs::read_to_string(path).expect("read"), value);
            let mode = std::fs::metadata(path).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }

    #[test]
    fn verify_keys_come_from_hex_seeds_only() {
        let key = verify_key_hex(&"01".repeat(32)).expect("valid seed");
        assert_eq!(key.len(), 64);
        assert!(verify_key_hex("0g".repeat(32).as_str()).is_err());
        assert!(verify_key_hex("01").is_err());
        assert!(verify_key_hex(&"é".repeat(32)).is_err());
    }
}
