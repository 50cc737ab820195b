//! Secrets (master keys, admin and storefront tokens, the signing seed) read
//! from files that the configuration names.
//!
//! A secret never travels as a config value: config values can be set from the
//! environment, and a long-lived process's environment and command line are
//! readable by anyone who can read `/proc/PID/environ` or run `ps` as that user,
//! and land in crash reports. A file is read once at start, must belong to the
//! process's owner alone (no group or other permission bits, like ssh keys), and
//! its contents are never logged: errors name the path, not the value. Writers
//! use `rankmesh_tls::ca::write_private` (0600 from creation, replaced whole).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Largest secret file read; a key or token is far smaller, so anything larger
/// is the wrong file.
const MAX_BYTES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "secret file {path} is readable by others (mode {mode:03o}); make it owner-only: chmod 600"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("secret file {path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// The contents of the secret file at `path`, trimmed of surrounding whitespace
/// (a trailing newline from `echo` is not part of the secret).
pub fn read(path: &Path) -> Result<String, SecretError> {
    let invalid = |why: &str| SecretError::Invalid {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let meta = std::fs::metadata(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(invalid("not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_BYTES {
        return Err(invalid("larger than 4 KiB: not a key or token"));
    }
    let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text"))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(invalid("empty"));
    }
    Ok(secret.to_owned())
}

/// The secret at `path`, or an empty string when no path is configured (the
/// feature it enables stays off).
pub fn read_optional(path: &Path) -> Result<String, SecretError> {
    if path.as_os_str().is_empty() {
        Ok(String::new())
    } else {
        read(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What launchers do (`rankmesh_tls::ca::write_private`): an owner-only file.
    fn write(path: &Path, secret: &str) -> std::io::Result<()> {
        std::fs::write(path, secret)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
    }

    #[test]
    fn owner_only_files_are_read_and_trimmed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        write(&path, "s3cret\n").expect("write");
        assert_eq!(read(&path).expect("read"), "s3cret");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn exposed_empty_missing_and_oversize_files_are_refused_without_their_contents() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        write(&path, "hunter2").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = read(&path).expect_err("group-readable").to_string();
        assert!(e.contains("mode 640") && !e.contains("hunter2"), "{e}");

        write(&path, " \n").expect("write");
        assert!(
            read(&path)
                .expect_err("empty")
                .to_string()
                .contains("empty")
        );
        write(&path, &"x".repeat(5000)).expect("write");
        assert!(read(&path).is_err());
        assert!(read(&dir.path().join("missing")).is_err());
        assert!(read(dir.path()).is_err(), "a directory");
        assert_eq!(read_optional(Path::new("")).expect("none"), "");
    }
}
