//! `meshctl`: operate a rankmesh mesh from the terminal.
//!
//! Subcommands that talk to the control plane take `--etcd` (or `RANKMESH_ETCD`);
//! those that talk to one replica take its gRPC address.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rankmesh_common::config::EtcdConfig;
use rankmesh_common::election::Candidate;
use rankmesh_common::etcd::Etcd;

#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "Operate a rankmesh mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a replica's gRPC health (grpc.health.v1).
    Health {
        /// gRPC address, e.g. 127.0.0.1:50051.
        addr: String,
        /// Fully qualified gRPC service; empty for the whole server.
        #[arg(long, default_value = "")]
        service: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// List the registered instances of a service (or of every service).
    Endpoints {
        /// Service name (feature, embedding, ranking, registry); all when omitted.
        service: Option<String>,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show which instance leads a role (e.g. rollout).
    Leader {
        role: String,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

#[derive(Debug, clap::Args)]
struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "RANKMESH_ETCD",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    etcd: Vec<String>,
}

impl EtcdArgs {
    async fn connect(&self) -> anyhow::Result<Etcd> {
        let config = EtcdConfig {
            endpoints: self.etcd.clone(),
            ..EtcdConfig::default()
        };
        config.validate()?;
        Ok(Etcd::connect(&config).await?)
    }
}

const SERVICES: &[&str] = &["ranking", "embedding", "feature", "registry"];

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Health {
            addr,
            service,
            timeout_ms,
        } => {
            let status =
                rankmesh_client::health(&addr, &service, Duration::from_millis(timeout_ms)).await?;
            println!("{}", status.as_str_name());
            Ok(if status == rankmesh_client::ServingStatus::Serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Endpoints {
            service,
            etcd,
            json,
        } => {
            let etcd = etcd.connect().await?;
            let names: Vec<String> = match service {
                Some(s) => vec![s],
                None => SERVICES.iter().map(|s| (*s).to_owned()).collect(),
            };
            let mut all = Vec::new();
            for name in names {
                let set = rankmesh_common::discovery::list(&etcd, &name).await?;
                all.extend(set.into_values());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!(
                    "{:<10} {:<32} {:<24} {:<24}",
                    "SERVICE", "INSTANCE", "GRPC", "ADMIN"
                );
                for e in &all {
                    println!(
                        "{:<10} {:<32} {:<24} {:<24}",
                        e.service, e.instance, e.grpc, e.admin
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Leader { role, etcd } => {
            let etcd = etcd.connect().await?;
            match Candidate::new(etcd, &role, "meshctl").leader().await? {
                Some(who) => println!("{who}"),
                None => println!("(no leader)"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
