//! Development secrets of a registry outside `meshctl up` (which keeps its own
//! under the state dir): `meshctl dev-secrets` prints fresh ones as environment
//! lines (scripts/images keeps them in the compose stack's owner-only `.env`),
//! and `meshctl write-secrets` turns those variables into the owner-only files
//! the services read (the compose stack's one-shot `secrets` job). Services
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
/// RANKMESH_SIGNING_KEY from the environment into files.
pub(crate) fn write(a: WriteSecretsArgs) -> anyhow::Result<ExitCode> {
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let secrets = RegistrySecrets {
        admin_token: var("RANKMESH_ADMIN_TOKEN")?,
        master_key: var("RANKMESH_MASTER_KEY")?,
        signing_key: var("RANKMESH_SIGNING_KEY")?,
    };
    // The signing seed is checked here, so a bad .env fails this job with a clear
    // message rather than every registry at start.
    rankmesh_launcher::verify_key_hex(&secrets.signing_key)?;
    let files = secrets.files(&a.dir)?;
    println!(
        "wrote the registry secrets to {}",
        files
            .admin_token
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
