//! `meshctl`: operate a rankmesh mesh. This file only parses the command line and
//! hands each subcommand to its module, which owns its arguments and its `run`;
//! every command that calls the mesh does so through the SDK (`rankmesh-client`).
//! Must not import a service crate: meshctl starts services as processes and
//! talks to them over gRPC.

mod args;
mod bench;
mod bootstrap;
mod catalog;
mod certs;
mod drill;
mod embed;
mod encoder;
mod eval;
mod generate;
mod inspect;
mod mesh;
mod model;
mod progress;
mod ranker;
mod search;
mod secrets;
mod trace;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub(crate) use args::status;

#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "Operate a rankmesh mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a replica's gRPC health (grpc.health.v1).
    Health(inspect::HealthArgs),
    /// List the registered instances of a service (or of every service).
    Endpoints(inspect::EndpointsArgs),
    /// Start etcd and every service as local processes on loopback, wait until all
    /// are healthy and print the endpoints. Ctrl-C stops everything.
    Up(up::UpArgs),
    /// Print one trace (a reply's `trace_id`) as a span tree with timings, from the
    /// local mesh's trace collector.
    Trace(trace::TraceArgs),
    /// Run an in-memory trace collector: OTLP/gRPC in, a Jaeger-compatible UI and
    /// API out (`meshctl up` starts one).
    #[command(hide = true)]
    Collector(trace::CollectorArgs),
    /// Prepare a mesh started some other way (the compose stack): publish the
    /// default models, import a catalog into each feature replica, build each
    /// embedding replica's index. Waits for each service; safe to re-run.
    Bootstrap(bootstrap::BootstrapArgs),
    /// Print fresh development secrets for a registry as KEY=VALUE lines.
    #[command(hide = true)]
    DevSecrets,
    /// Write RANKMESH_ADMIN_TOKEN, RANKMESH_MASTER_KEY and RANKMESH_SIGNING_KEY
    /// from the environment into owner-only files that services read.
    #[command(hide = true)]
    WriteSecrets(secrets::WriteSecretsArgs),
    /// Exit 0 when the admin port at ADDR answers /ready with 200, else 1.
    #[command(hide = true)]
    Ready(inspect::ReadyArgs),
    /// Disaster-recovery drills: run a scenario (topology, load, fault timeline,
    /// SLO), write its report, exit non-zero when the SLO is missed.
    Drill(drill::DrillArgs),
    /// Stop a mesh started with `meshctl up --detach`.
    Down(up::DownArgs),
    /// Embed a text with the embedding service and print the vector.
    Embed(embed::EmbedArgs),
    /// Dense retrieval: the catalog items nearest to a query by embedding.
    Retrieve(embed::RetrieveArgs),
    /// Ranked search: dense + lexical retrieval, features, ranker.
    Search(search::SearchArgs),
    /// Recommendations for a user (popular items for an unknown one).
    Recommend(search::RecommendArgs),
    /// Quality of lexical, dense, hybrid and full ranking on judgments
    /// (`query,item_id,grade`, fractional grades allowed, `.gz` read as gzip):
    /// NDCG@10 with linear gain (gain = grade), MRR and recall@100 with relevant =
    /// grade >= 2, and the candidate recall (share of relevant items that reach the
    /// ranker). Every row is validated before anything is evaluated.
    Eval(eval::EvalArgs),
    /// Learned rankers: train one on a store's own judgments.
    Ranker(ranker::RankerArgs),
    /// The text encoder: fine-tune it on a store's own judgments.
    Encoder(encoder::EncoderArgs),
    /// Feature rows for ranker training.
    Features(ranker::FeaturesArgs),
    /// Open-loop load: Search or Recommend at a constant rate through the SDK,
    /// latency from scheduled send time (HDR histograms), per-stage timings, errors
    /// by code, a per-second timeline (errors, p50/p99, model versions) with --json.
    Bench(bench::BenchArgs),
    /// Model registry: publish, list, promote, roll back, rotate keys.
    Model(model::ModelArgs),
    /// Import or generate catalogs.
    Catalog(catalog::CatalogArgs),
    /// The mesh CA and workload certificates (mutual TLS identities).
    Certs(certs::CertsArgs),
    /// Show which instance leads a role (e.g. rollout).
    Leader(inspect::LeaderArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    quiet_on_closed_pipe();
    match run(Cli::parse().command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `meshctl search ... | head` ends quietly, as Unix tools do, instead of
/// panicking on the next write: Rust ignores SIGPIPE so a write to a closed pipe
/// is an error, which `println!` turns into a panic. With the default action
/// back, the process ends at that write, silently.
fn quiet_on_closed_pipe() {
    // The one unsafe call lives in the `sigpipe` crate (the workspace forbids
    // unsafe code); it restores SIG_DFL at the start of main.
    sigpipe::reset();
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    args::install_identity(None)?;
    match command {
        Command::Health(a) => inspect::health(a).await,
        Command::Endpoints(a) => inspect::endpoints(a).await,
        Command::Ready(a) => inspect::ready(a).await,
        Command::Leader(a) => inspect::leader(a).await,
        Command::Up(a) => up::up(a).await,
        Command::Down(a) => up::down(a).await,
        Command::Trace(a) => trace::trace(a).await,
        Command::Collector(a) => trace::collector(a).await,
        Command::Bootstrap(a) => bootstrap::command(a).await,
        Command::DevSecrets => secrets::print(),
        Command::WriteSecrets(a) => secrets::write(a),
        Command::Drill(a) => drill::command(a).await,
        Command::Embed(a) => embed::embed(a).await,
        Command::Retrieve(a) => embed::retrieve(a).await,
        Command::Search(a) => search::search(a).await,
        Command::Recommend(a) => search::recommend(a).await,
        Command::Eval(a) => eval::command(a).await,
        Command::Ranker(a) => ranker::command(a).await,
        Command::Encoder(a) => encoder::command(a).await,
        Command::Features(a) => ranker::features(a).await,
        Command::Bench(a) => bench::command(a).await,
        Command::Model(a) => model::command(a).await,
        Command::Catalog(a) => catalog::command(a).await,
        Command::Certs(a) => certs::command(a),
    }
}
