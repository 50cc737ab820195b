//! Development secrets of a registry outside `meshctl up` (which keeps its own
//! under the state dir): `meshctl dev-secrets` prints fresh ones as environment
//! lines (scripts/images keeps them in the compose stack's owner-only `.env`),
//! and `meshctl write-secrets` turns those variables into the owner-only files
//! the services read, with the stack's certificates and keys beside them (the
//! compose stack's one-shot `secrets` job). Services
//! never take a secret from their environment; only these short-lived commands
//! do.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rankmesh_launcher::RegistrySecrets;

/// Where `write-secrets` puts the files.
#[derive(Debug, clap::Args)]
pub(crate) struct WriteSecretsArgs {
    /// Folder; the files go to its `secrets/` (admin-token, master-key-local1,
    /// signing-key), mode 0600.
    #[arg(long)]
    dir: PathBuf,
    /// Read the three secrets from files `admin-token`, `master-key` and
    /// `signing-key` in this folder (a Kubernetes Secret volume, whose files are
    /// group-readable) instead of RANKMESH_ADMIN_TOKEN, RANKMESH_MASTER_KEY and
    /// RANKMESH_SIGNING_KEY.
    #[arg(long, value_name = "DIR")]
    secrets_from: Option<PathBuf>,
    /// Also copy the certificates (`*.pem`, 0644) and keys (`*.key`, 0600) in
    /// this folder to `DIR/tls/`; its subfolders (the CA's own key) are not
    /// copied.
    #[arg(long)]
    tls_from: Option<PathBuf>,
    /// UID:GID to give every file written (run as root), so a service running
    /// as that user can read its keys while nobody else can.
    #[arg(long, value_parser = parse_owner)]
    owner: Option<(u32, u32)>,
}

fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').ok_or("UID:GID")?;
    let n = |v: &str| v.parse::<u32>().map_err(|e| format!("{v}: {e}"));
    Ok((n(u)?, n(g)?))
}

/// `meshctl dev-secrets`.
pub(crate) fn print() -> anyhow::Result<ExitCode> {
    let signing = rankmesh_launcher::hex32();
    print!(
        "RANKMESH_ADMIN_TOKEN={}\nRANKMESH_MASTER_KEY={}\nRANKMESH_SIGNING_KEY={signing}\nRANKMESH_VERIFY_KEY={}\n",
        rankmesh_launcher::hex32(),
        rankmesh_launcher::hex32(),
        rankmesh_launcher::verify_key_hex(&signing)?,
    );
    Ok(ExitCode::SUCCESS)
}

/// `meshctl write-secrets`: RANKMESH_ADMIN_TOKEN, RANKMESH_MASTER_KEY and
/// RANKMESH_SIGNING_KEY from the environment (or `--secrets-from`) into files.
pub(crate) fn write(a: WriteSecretsArgs) -> anyhow::Result<ExitCode> {
    let secrets = match &a.secrets_from {
        Some(dir) => {
            let file = |name: &str| -> anyhow::Result<String> {
                let path = dir.join(name);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("read {}", path.display()))?;
                Ok(text.trim().to_owned())
            };
            RegistrySecrets {
                admin_token: file("admin-token")?,
                master_key: file("master-key")?,
                signing_key: file("signing-key")?,
            }
        }
        None => {
            let var =
                |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
            RegistrySecrets {
                admin_token: var("RANKMESH_ADMIN_TOKEN")?,
                master_key: var("RANKMESH_MASTER_KEY")?,
                signing_key: var("RANKMESH_SIGNING_KEY")?,
            }
        }
    };
    // The signing seed is checked here, so a bad .env fails this job with a clear
    // message rather than every registry at start.
    rankmesh_launcher::verify_key_hex(&secrets.signing_key)?;
    secrets.files(&a.dir)?;
    let mut written = vec![a.dir.join("secrets")];
    if let Some(from) = &a.tls_from {
        written.push(copy_tls(from, &a.dir.join("tls"))?);
    }
    if let Some((uid, gid)) = a.owner {
        for dir in &written {
            for path in std::iter::once(dir.clone()).chain(files_in(dir)?) {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", path.display()))?;
            }
        }
    }
    for dir in &written {
        println!("wrote {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The plain files directly in `dir`, links to them included (a Kubernetes Secret
/// volume's files are links into a hidden folder, which is not listed).
fn files_in(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Copies the certificates and keys directly in `from` into `to` (keys 0600,
/// written whole); returns `to`.
fn copy_tls(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))?;
    let mut copied = 0;
    for path in files_in(from)? {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        let Some(name) = path.file_name() else {
            continue;
        };
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let dest = to.join(name);
        match ext {
            "key" => rankmesh_tls::ca::write_private(&dest, &bytes)?,
            "pem" => rankmesh_tls::ca::write_public(&dest, &bytes)?,
            _ => continue,
        }
        copied += 1;
    }
    anyhow::ensure!(
        copied > 0,
        "no certificate in {}: run scripts/images",
        from.display()
    );
    Ok(to.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    /// Lays `files` out as a Kubernetes Secret volume does: the files in a hidden
    /// folder, group-readable, reached through links of their names.
    fn secret_volume(dir: &Path, files: &[(&str, &str)]) {
        let data = dir.join("..2026_12_07_00_00_00.1");
        std::fs::create_dir_all(&data).expect("mkdir");
        for (name, text) in files {
            let path = data.join(name);
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).expect("chmod");
            std::os::unix::fs::symlink(&path, dir.join(name)).expect("link");
        }
    }

    #[test]
    fn secrets_and_certificates_come_from_a_kubernetes_secret_volume() {
        let root = tempfile::tempdir().expect("tempdir");
        let (secrets, tls, out) = (
            root.path().join("secrets"),
            root.path().join("tls"),
            root.path().join("out"),
        );
        let signing = rankmesh_launcher::hex32();
        let token = rankmesh_launcher::hex32();
        secret_volume(
            &secrets,
            &[
                ("admin-token", &format!("{token}\n")),
                ("master-key", &rankmesh_launcher::hex32()),
                ("signing-key", &signing),
            ],
        );
        secret_volume(
            &tls,
            &[("ca.pem", "CA"), ("tls.pem", "CERT"), ("tls.key", "KEY")],
        );
        write(WriteSecretsArgs {
            dir: out.clone(),
            secrets_from: Some(secrets),
            tls_from: Some(tls),
            owner: None,
        })
        .expect("written");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        let admin = out.join("secrets").join("admin-token");
        assert_eq!(mode(&admin), 0o600);
        assert_eq!(
            rankmesh_common::secret::read(&admin).expect("owner-only, readable"),
            token
        );
        assert_eq!(mode(&out.join("tls").join("tls.key")), 0o600);
        assert_eq!(
            std::fs::read_to_string(out.join("tls").join("tls.pem")).expect("cert"),
            "CERT"
        );
        assert!(
            !out.join("tls").join("..2026_12_07_00_00_00.1").exists(),
            "the hidden folder is not copied"
        );
    }

    #[test]
    fn a_missing_secret_file_is_named() {
        let root = tempfile::tempdir().expect("tempdir");
        let e = write(WriteSecretsArgs {
            dir: root.path().join("out"),
            secrets_from: Some(root.path().to_owned()),
            tls_from: None,
            owner: None,
        })
        .expect_err("no files");
        assert!(format!("{e:#}").contains("admin-token"), "{e:#}");
    }
}
