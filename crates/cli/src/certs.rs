//! `meshctl certs`: the mesh CA and the certificates it issues (`rankmesh-tls`).
//! `init` makes the CA once (`ca.pem`, `ca.key` 0600); `issue ROLE NAME` writes a
//! certificate naming `spiffe://rankmesh/<ROLE>/<NAME>` and its key (0600), for a
//! service instance, a storefront or an operator. Issuing again over the same files
//! rotates them: running workloads re-read them without a restart.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use rankmesh_tls::{Ca, Identity, Validity};

/// The mesh CA and workload certificates.
#[derive(Debug, clap::Args)]
pub(crate) struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertsCommand {
    /// Make the mesh CA in --ca-dir (kept if there is one already).
    Init {
        #[arg(long, default_value = ".rankmesh/tls/ca")]
        ca_dir: PathBuf,
    },
    /// Issue a certificate for ROLE/NAME (a service: ranking, embedding, feature,
    /// registry; a caller: storefront, operator, admin) into --out.
    Issue {
        role: String,
        name: String,
        #[arg(long, default_value = ".rankmesh/tls/ca")]
        ca_dir: PathBuf,
        #[arg(long, default_value = ".rankmesh/tls")]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 30)]
        days: u64,
        /// Also name this host (IP address or DNS name) in the certificate
        /// (repeatable): etcd members check the address they dial of each other.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

pub(crate) fn command(a: CertsArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        CertsCommand::Init { ca_dir } => {
            let existed = ca_dir.join(rankmesh_tls::ca::CA_KEY).exists();
            Ca::init(&ca_dir)?;
            let verb = if existed { "kept the" } else { "made a" };
            println!("{verb} mesh CA in {}", ca_dir.display());
        }
        CertsCommand::Issue {
            role,
            name,
            ca_dir,
            out,
            days,
            hosts,
        } => {
            anyhow::ensure!((1..=825).contains(&days), "--days: 1..=825");
            let identity = Identity::new(&role, &name)?;
            let lifetime = Duration::from_secs(days * 24 * 3600);
            let files = Ca::load(&ca_dir)?.issue_to(
                &identity,
                Validity::from_now(lifetime),
                &hosts,
                &out,
            )?;
            println!(
                "issued {identity} for {days} days\n  ca   {}\n  cert {}\n  key  {} (0600)",
                files.ca.display(),
                files.cert.display(),
                files.key.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
