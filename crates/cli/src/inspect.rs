//! `meshctl health`, `ready`, `endpoints` and `leader`: what the mesh looks like
//! from outside, one read each.

use std::process::ExitCode;
use std::time::Duration;

use std::collections::BTreeMap;

use rankmesh_common::discovery::Endpoint;
use rankmesh_common::election::Candidate;
use rankmesh_common::server::ServedModel;

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

/// How long `endpoints` waits for each replica's `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// An instance as `endpoints` prints it: its registration, and the models its
/// `/ready` reports (where they run included); `None` when `/ready` did not answer.
#[derive(Debug, serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    endpoint: Endpoint,
    models: Option<BTreeMap<String, ServedModel>>,
}

/// Lists the registered instances of a service, or of every service, with the
/// models each serves and the execution provider each runs on.
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
    let listed: Vec<Listed> = futures::future::join_all(all.into_iter().map(|endpoint| async {
        let models = served_models(&endpoint.admin).await;
        Listed { endpoint, models }
    }))
    .await;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
    } else {
        println!(
            "{:<10} {:<32} {:<24} {:<24} MODELS",
            "SERVICE", "INSTANCE", "GRPC", "ADMIN"
        );
        for l in &listed {
            let e = &l.endpoint;
            println!(
                "{:<10} {:<32} {:<24} {:<24} {}",
                e.service,
                e.instance,
                e.grpc,
                e.admin,
                models_column(l.models.as_ref())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The models a replica's `/ready` reports; `None` when it cannot be read (the
/// admin port unreachable from here, say).
async fn served_models(admin: &str) -> Option<BTreeMap<String, ServedModel>> {
    let (_, body) = rankmesh_client::http_get(admin, "/ready", READY_TIMEOUT)
        .await
        .ok()?;
    let ready: serde_json::Value = serde_json::from_str(&body).ok()?;
    serde_json::from_value(ready.get("models")?.clone()).ok()
}

/// `ranker v3 fp32 on cuda, ranker-canary v4 fp32 on cpu (GPU fallback)`, `-`
/// for none, `?` when unknown.
fn models_column(models: Option<&BTreeMap<String, ServedModel>>) -> String {
    let Some(models) = models else {
        return "?".into();
    };
    if models.is_empty() {
        return "-".into();
    }
    models
        .iter()
        .map(|(role, m)| {
            let fallback = if m.gpu_fallback.is_some() {
                " (GPU fallback)"
            } else {
                ""
            };
            format!(
                "{role} v{} {} on {}{fallback}",
                m.version, m.variant, m.provider
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
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
