//! `meshctl health`, `ready`, `endpoints` and `leader`: what the mesh looks like
//! from outside, one read each.

use std::process::ExitCode;
use std::time::Duration;

use rankmesh_common::election::Candidate;

use crate::args::{EtcdArgs, exit};

const SERVICES: &[&str] = &["ranking", "embedding", "feature", "registry"];

#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    /// gRPC address, e.g. 127.0.0.1:50051.
    addr: String,
    /// Fully qualified gRPC service; empty for the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

/// Prints a replica's grpc.health.v1 status; exit 0 when SERVING.
pub(crate) async fn health(a: HealthArgs) -> anyhow::Result<ExitCode> {
    let status =
        rankmesh_client::health(&a.addr, &a.service, Duration::from_millis(a.timeout_ms)).await?;
    println!("{}", status.as_str_name());
    Ok(exit(status == rankmesh_client::ServingStatus::Serving))
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReadyArgs {
    /// Admin address (host:port).
    addr: String,
}

/// Exit 0 when the admin port answers /ready with 200.
pub(crate) async fn ready(a: ReadyArgs) -> anyhow::Result<ExitCode> {
    let ok = rankmesh_client::ready(&a.addr, Duration::from_secs(2))
        .await
        .unwrap_or(false);
    Ok(exit(ok))
}

#[derive(Debug, clap::Args)]
pub(crate) struct EndpointsArgs {
    /// Service name (feature, embedding, ranking, registry); all when omitted.
    service: Option<String>,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Lists the registered instances of a service, or of every service.
pub(crate) async fn endpoints(a: EndpointsArgs) -> anyhow::Result<ExitCode> {
    let etcd = a.etcd.connect().await?;
    let names: Vec<String> = match a.service {
        Some(s) => vec![s],
        None => SERVICES.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut all = Vec::new();
    for name in names {
        let set = rankmesh_common::discovery::list(&etcd, &name).await?;
        all.extend(set.into_values());
    }
    if a.json {
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

#[derive(Debug, clap::Args)]
pub(crate) struct LeaderArgs {
    /// The role, e.g. rollout.
    role: String,
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// Prints which instance leads a role.
pub(crate) async fn leader(a: LeaderArgs) -> anyhow::Result<ExitCode> {
    let etcd = a.etcd.connect().await?;
    match Candidate::new(etcd, &a.role, "meshctl").leader().await? {
        Some(who) => println!("{who}"),
        None => println!("(no leader)"),
    }
    Ok(ExitCode::SUCCESS)
}
