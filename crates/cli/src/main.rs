//! `meshctl`: operate a rankmesh mesh from the terminal.
//!
//! Subcommands that talk to the control plane take `--etcd` (or `RANKMESH_ETCD`);
//! those that talk to one replica take its gRPC address.

mod bench;
mod bootstrap;
mod catalog;
mod drill;
mod embed;
mod eval;
mod generate;
mod launcher;
mod model;
mod progress;
mod ranker;
mod search;
mod trace;

use std::path::PathBuf;
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
    /// Start etcd and every service as local processes on loopback, wait until all
    /// are healthy and print the endpoints. Ctrl-C stops everything.
    Up {
        /// Number of ranking replicas.
        #[arg(long, default_value_t = 2)]
        ranking_replicas: usize,
        /// Return once healthy, leaving the mesh running (`meshctl down` stops it).
        #[arg(long)]
        detach: bool,
        /// etcd client port (the peer port is the next one).
        #[arg(long, default_value_t = 2379)]
        etcd_port: u16,
        /// First service port: ranking-0 gRPC here, its admin port next, and so on.
        #[arg(long, default_value_t = 50051)]
        base_port: u16,
        /// Exported models (`encoder/` inside), as written by scripts/setup.
        #[arg(long, env = "RANKMESH_MODELS", default_value = "models")]
        models: PathBuf,
        /// Catalog (JSONL, import format) loaded into the feature service and indexed
        /// by the embedding service.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Run ranking without the trained ranker (retrieval order), even when
        /// `<models>/ranker/model.onnx` exists.
        #[arg(long)]
        no_ranker: bool,
        /// Extra KEY=VALUE environment for the ranking replicas (repeatable), e.g.
        /// RANKMESH__ROLLOUT__WINDOW_MS=10000.
        #[arg(long = "ranking-env", value_parser = parse_kv)]
        ranking_env: Vec<(String, String)>,
        /// Port of the embedded trace collector's UI and Jaeger API (the services
        /// export spans to it over OTLP on --otlp-port).
        #[arg(long, default_value_t = 16686)]
        trace_ui_port: u16,
        #[arg(long, default_value_t = 4317)]
        otlp_port: u16,
        /// Share of requests traced (parent-based: a traced request is traced in
        /// every service it reaches).
        #[arg(long, default_value_t = 1.0)]
        trace_sample_ratio: f64,
        /// Start no trace collector and export no spans.
        #[arg(long)]
        no_traces: bool,
        /// etcd members: 1, or 3 (a cluster; member i on --etcd-port + 2i).
        #[arg(long, default_value_t = 1)]
        etcd_members: usize,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Print one trace (a reply's `trace_id`) as a span tree with timings, from the
    /// local mesh's trace collector.
    Trace {
        trace_id: String,
        /// The collector's UI/API address; default: the local mesh's.
        #[arg(long)]
        ui: Option<String>,
        /// Print the collector's Jaeger JSON instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Run an in-memory trace collector: OTLP/gRPC in, a Jaeger-compatible UI and
    /// API out (`meshctl up` starts one).
    #[command(hide = true)]
    Collector {
        #[arg(long, default_value = "127.0.0.1:4317")]
        otlp: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:16686")]
        ui: std::net::SocketAddr,
    },
    /// Prepare a mesh started some other way (the compose stack): publish the
    /// default models, import a catalog into each feature replica, build each
    /// embedding replica's index. Waits for each service; safe to re-run.
    Bootstrap {
        /// gRPC address of a registry replica.
        #[arg(long)]
        registry: String,
        /// The registry's admin token.
        #[arg(long, env = "RANKMESH_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
        /// Exported models (`encoder/`, and `ranker/` if trained).
        #[arg(long, env = "RANKMESH_MODELS", default_value = "models")]
        models: PathBuf,
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// gRPC address of a feature replica (repeatable).
        #[arg(long)]
        feature: Vec<String>,
        /// gRPC address of an embedding replica (repeatable).
        #[arg(long)]
        embedding: Vec<String>,
    },
    /// Print fresh development secrets for a registry as KEY=VALUE lines.
    #[command(hide = true)]
    DevSecrets,
    /// Exit 0 when the admin port at ADDR answers /ready with 200, else 1.
    #[command(hide = true)]
    Ready { addr: String },
    /// Disaster-recovery drills: run a scenario (topology, load, fault timeline,
    /// SLO), write its report, exit non-zero when the SLO is missed.
    Drill {
        #[command(subcommand)]
        command: DrillCommand,
    },
    /// Stop a mesh started with `meshctl up --detach`.
    Down {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Embed a text with the embedding service and print the vector.
    Embed {
        text: String,
        /// Print JSON (`dim`, `model`, `truncated`, `vector`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Dense retrieval: the catalog items nearest to a query by embedding.
    Retrieve {
        query: String,
        /// Number of items.
        #[arg(long, short, default_value_t = 10)]
        k: u32,
        #[command(flatten)]
        filters: embed::FilterArgs,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Ranked search: dense + lexical retrieval, features, ranker.
    Search {
        query: String,
        /// The shopper, for personal features; anonymous when omitted.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, short, default_value_t = 10)]
        k: u32,
        #[command(flatten)]
        filters: embed::FilterArgs,
        /// Deadline for the whole request, milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Recommendations for a user (popular items for an unknown one).
    Recommend {
        user: String,
        #[arg(long, short, default_value_t = 10)]
        k: u32,
        #[command(flatten)]
        filters: embed::FilterArgs,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Quality of lexical, dense, hybrid and full ranking on judgments
    /// (`query,item_id,grade`, fractional grades allowed, `.gz` read as gzip):
    /// NDCG@10 with linear gain (gain = grade), MRR and recall@100 with relevant =
    /// grade >= 2, and the candidate recall (share of relevant items that reach the
    /// ranker). Every row is validated before anything is evaluated.
    Eval {
        #[arg(long)]
        labels: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Learned rankers: train one on a store's own judgments.
    Ranker {
        #[command(subcommand)]
        command: RankerCommand,
    },
    /// Feature rows for ranker training.
    Features {
        #[command(subcommand)]
        command: FeaturesCommand,
    },
    /// Open-loop load: Search or Recommend at a constant rate through the SDK,
    /// latency from scheduled send time (HDR histograms), per-stage timings, errors
    /// by code, a per-second timeline (errors, p50/p99, model versions) with --json.
    Bench {
        /// `search` (inputs are queries) or `recommend` (inputs are user ids).
        #[arg(long, default_value = "search")]
        rpc: bench::Rpc,
        #[arg(long, default_value_t = 50.0)]
        qps: f64,
        /// Seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// One query (or user id) per line, e.g. a generated queries.txt.
        #[arg(long)]
        queries: PathBuf,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Turn the SDK's hedging off (what a client without it sees).
        #[arg(long)]
        no_hedge: bool,
        /// Turn the SDK's retries off.
        #[arg(long)]
        no_retry: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Model registry: publish, list, promote, roll back, rotate keys.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
        #[command(flatten)]
        target: TargetArgs,
        /// Admin token for writes; default: RANKMESH_ADMIN_TOKEN, then the local
        /// mesh's secrets file.
        #[arg(long, env = "RANKMESH_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Import or generate catalogs.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Show which instance leads a role (e.g. rollout).
    Leader {
        role: String,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

#[derive(Debug, Subcommand)]
enum DrillCommand {
    /// Run scenarios (or --all in --dir); each gets `<report>/<name>/report.{json,html}`.
    Run {
        scenarios: Vec<PathBuf>,
        /// Every scenario in --dir.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value = "deploy/drills")]
        dir: PathBuf,
        #[arg(long, default_value = ".rankmesh/drills")]
        report: PathBuf,
        /// Weaken the client: no hedging.
        #[arg(long)]
        no_hedge: bool,
        /// Weaken the client: no retries.
        #[arg(long)]
        no_retry: bool,
        /// etcd's client port for the drill's mesh; services from --base-port.
        #[arg(long, default_value_t = 24379)]
        etcd_port: u16,
        #[arg(long, default_value_t = 24400)]
        base_port: u16,
        #[arg(long, env = "RANKMESH_MODELS", default_value = "models")]
        models: PathBuf,
        /// The compose stack that `topology.kind = "compose"` scenarios run
        /// (images from scripts/images, its .env beside it).
        #[arg(long, default_value = "deploy/compose")]
        compose_dir: PathBuf,
    },
    /// The scenario catalog: name, duration, faults, hypothesis.
    List {
        #[arg(long, default_value = "deploy/drills")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Stream a catalog (JSONL or CSV: id, title, description, category, brand,
    /// price, rating, review_count, attributes) to the feature service. Bad rows are
    /// listed with their line numbers; exits 1 when any row was rejected.
    Import {
        file: PathBuf,
        /// jsonl or csv; taken from the file extension when omitted.
        #[arg(long)]
        format: Option<String>,
        /// Remove items that are not in this file.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Write a deterministic synthetic store: catalog.jsonl, users.jsonl,
    /// events.jsonl, queries.txt and graded labels (labels.csv, -train, -test).
    Generate {
        #[arg(long, default_value_t = 5000)]
        items: usize,
        #[arg(long, default_value_t = 500)]
        users: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Upload an ONNX file as the next version of NAME.
    Publish {
        name: String,
        file: PathBuf,
        /// Input names the artifact must have (comma-separated).
        #[arg(long, value_delimiter = ',')]
        inputs: Vec<String>,
        /// Output names the artifact must have (comma-separated).
        #[arg(long, value_delimiter = ',')]
        outputs: Vec<String>,
        /// key=value metadata (repeatable), e.g. variant=int8, parent_version=3.
        #[arg(long = "meta", value_parser = parse_kv)]
        metadata: Vec<(String, String)>,
        /// Extra file shipped with the model, e.g. tokenizer.json (repeatable).
        #[arg(long = "sidecar")]
        sidecars: Vec<PathBuf>,
        /// The INT8 variant of FILE (made offline), stored linked to the new version;
        /// replicas on CPU pick it, replicas on GPU the FP32 file.
        #[arg(long)]
        int8: Option<PathBuf>,
    },
    /// Versions, stages and stage history.
    List {
        #[arg(default_value = "")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Make VERSION production, or a canary with --canary PERCENT.
    Promote {
        name: String,
        version: u64,
        #[arg(long)]
        canary: Option<u32>,
        #[arg(long, default_value = "manual promotion")]
        reason: String,
    },
    /// End the running canary; without one, restore the previous production version.
    Rollback {
        name: String,
        #[arg(long, default_value = "manual rollback")]
        reason: String,
    },
    /// Re-wrap every data key under master key KEY_ID (configured on the registry).
    RotateKey { key_id: String },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

#[derive(Debug, Subcommand)]
enum RankerCommand {
    /// Train a ranker on judgments (`query,item_id,grade`) over a catalog: split by
    /// query into train and dev, featurize every judged query with the serving code
    /// in a private mesh, train LambdaMART and a listwise MLP, keep the better on dev
    /// NDCG@10, export ONNX, evaluate every variant on dev. Writes DIR/model.onnx,
    /// DIR/metrics.json, DIR/training.json and the rows (DIR/rows/).
    Train(ranker::TrainArgs),
}

/// The ranker's ONNX signature.
pub(crate) const RANKER_INPUT: &str = "features";
pub(crate) const RANKER_OUTPUT: &str = "score";

#[derive(Debug, Subcommand)]
enum FeaturesCommand {
    /// For each judged query, the ranker's input exactly as Search computes it
    /// (ranking's Featurize): into DIR, `all.csv` (qid, grade, item_id; grade 0 when
    /// unjudged), `all.f32` (rows, little-endian f32), `schema.json`, `queries.csv`
    /// and `judged.csv`.
    Dump {
        #[arg(long)]
        labels: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Debug, clap::Args)]
struct StateArgs {
    /// Where the local mesh keeps its data, logs and process list.
    #[arg(long, env = "RANKMESH_STATE_DIR", default_value = ".rankmesh/run")]
    state_dir: PathBuf,
}

/// Which replica to talk to: an explicit address, or the first one registered.
#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// gRPC address of a replica; discovered through etcd when omitted.
    #[arg(long)]
    addr: Option<String>,
    #[command(flatten)]
    etcd: EtcdArgs,
}

impl TargetArgs {
    async fn resolve_owned(self, service: &str) -> anyhow::Result<String> {
        self.resolve(service).await
    }

    async fn resolve(&self, service: &str) -> anyhow::Result<String> {
        if let Some(a) = &self.addr {
            return Ok(a.clone());
        }
        let etcd = self.etcd.connect().await?;
        let set = rankmesh_common::discovery::list(&etcd, service).await?;
        set.into_values().next().map(|e| e.grpc).ok_or_else(|| {
            anyhow::anyhow!(
                "no {service} instance registered in etcd ({:?}); is the mesh up?",
                self.etcd.etcd
            )
        })
    }
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

/// One replica of ranking, embedding and feature, found through etcd.
async fn targets(etcd: &EtcdArgs) -> anyhow::Result<eval::Targets> {
    let by = |service: &'static str| {
        TargetArgs {
            addr: None,
            etcd: EtcdArgs {
                etcd: etcd.etcd.clone(),
            },
        }
        .resolve_owned(service)
    };
    let (r, e, f) = tokio::try_join!(by("ranking"), by("embedding"), by("feature"))?;
    eval::targets(&r, &e, &f).await
}

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
        Command::Up {
            ranking_replicas,
            detach,
            etcd_port,
            base_port,
            models,
            catalog,
            no_ranker,
            ranking_env,
            trace_ui_port,
            otlp_port,
            trace_sample_ratio,
            no_traces,
            etcd_members,
            state,
        } => {
            anyhow::ensure!(
                etcd_members == 1 || etcd_members == 3,
                "--etcd-members must be 1 or 3"
            );
            anyhow::ensure!(
                (0.0..=1.0).contains(&trace_sample_ratio),
                "--trace-sample-ratio must be within 0.0..=1.0"
            );
            let cwd = std::env::current_dir()?;
            let absolute = |p: PathBuf| if p.is_absolute() { p } else { cwd.join(p) };
            let bin_dir = std::env::current_exe()?
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default();
            let opts = launcher::UpOptions {
                state_dir: state.state_dir.clone(),
                ranking_replicas,
                etcd_port,
                base_port,
                bin_dir,
                ranker: (!no_ranker)
                    .then(|| absolute(models.join("ranker")))
                    .filter(|d| d.join("model.onnx").exists()),
                models: absolute(models),
                catalog: catalog.map(absolute),
                ranking_env,
                etcd_members,
                redis_port: None,
                follow_ranker: false,
                instance_env: Default::default(),
                traces: (!no_traces).then_some(launcher::TraceOptions {
                    ui_port: trace_ui_port,
                    otlp_port,
                    sample_ratio: trace_sample_ratio,
                }),
            };
            let mesh = launcher::up(&opts).await?;
            if let Some(file) = &opts.catalog {
                let loaded = launcher::load_catalog(&mesh, file);
                if let Err(e) = loaded.await {
                    launcher::stop(&mesh, Duration::from_secs(10)).await;
                    launcher::down(&state.state_dir).await?;
                    return Err(e.context("loading the catalog into the mesh"));
                }
            }
            println!(
                "{:<12} {:<10} {:>8} {:<24} {:<24}",
                "INSTANCE", "SERVICE", "PID", "GRPC", "ADMIN"
            );
            for p in &mesh.processes {
                println!(
                    "{:<12} {:<10} {:>8} {:<24} {:<24}",
                    p.name, p.service, p.pid, p.grpc, p.admin
                );
            }
            println!(
                "\netcd: {}   logs: {}",
                mesh.etcd,
                state.state_dir.join("logs").display()
            );
            if detach {
                println!("mesh running; stop it with `meshctl down`");
                return Ok(ExitCode::SUCCESS);
            }
            println!("mesh running; Ctrl-C stops it");
            rankmesh_common::server::shutdown_signal().await;
            launcher::stop(&mesh, Duration::from_secs(10)).await;
            launcher::down(&state.state_dir).await?;
            println!("mesh stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Down { state } => {
            let n = launcher::down(&state.state_dir).await?;
            println!("stopped {n} running process(es)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Embed { text, json, target } => {
            let addr = target.resolve("embedding").await?;
            embed::embed(&addr, text, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Retrieve {
            query,
            k,
            filters,
            json,
            target,
        } => {
            let addr = target.resolve("embedding").await?;
            embed::retrieve(&addr, query, k, &filters, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Search {
            query,
            user,
            k,
            filters,
            timeout_ms,
            json,
            target,
        } => {
            let addr = target.resolve("ranking").await?;
            search::search(
                &addr,
                query,
                user,
                k,
                &filters,
                Duration::from_millis(timeout_ms),
                json,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Recommend {
            user,
            k,
            filters,
            timeout_ms,
            json,
            target,
        } => {
            let addr = target.resolve("ranking").await?;
            search::recommend(
                &addr,
                user,
                k,
                &filters,
                Duration::from_millis(timeout_ms),
                json,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { labels, json, etcd } => {
            let t = targets(&etcd).await?;
            eval::eval(&t, &eval::read_labels(&labels)?, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Features {
            command:
                FeaturesCommand::Dump {
                    labels,
                    out,
                    target,
                },
        } => {
            let ranking = rankmesh_client::RankingClient::new(
                rankmesh_common::discovery::Resolver::fixed(
                    "ranking",
                    &[target.resolve("ranking").await?],
                ),
                Duration::from_secs(30),
            );
            let labels = eval::read_labels(&labels)?;
            ranker::featurize(&ranking, &[("all", &labels)], &out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ranker {
            command: RankerCommand::Train(args),
        } => {
            ranker::train(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace {
            trace_id,
            ui,
            json,
            state,
        } => {
            let ui = match ui {
                Some(ui) => ui,
                None => launcher::read_state(&state.state_dir)?
                    .and_then(|m| {
                        m.processes
                            .into_iter()
                            .find(|p| p.service == "collector")
                            .map(|p| p.admin)
                    })
                    .unwrap_or_else(|| "127.0.0.1:16686".to_owned()),
            };
            let doc = trace::fetch(&ui, &trace_id).await?;
            if json {
                println!("{doc}");
            } else {
                print!("{}", trace::render(&trace::spans_of(&doc)));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bootstrap {
            registry,
            token,
            models,
            catalog,
            feature,
            embedding,
        } => {
            bootstrap::run(&bootstrap::Plan {
                registry: &registry,
                token: &token,
                models: &models,
                catalog: catalog.as_deref(),
                feature: &feature,
                embedding: &embedding,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Drill {
            command: DrillCommand::List { dir },
        } => {
            drill::list(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Drill {
            command:
                DrillCommand::Run {
                    scenarios,
                    all,
                    dir,
                    report,
                    no_hedge,
                    no_retry,
                    etcd_port,
                    base_port,
                    models,
                    compose_dir,
                },
        } => {
            let mut paths = scenarios;
            if all {
                paths.extend(drill::catalog(&dir)?.into_iter().map(|(p, _)| p));
            }
            anyhow::ensure!(!paths.is_empty(), "name a scenario file, or --all");
            let cwd = std::env::current_dir()?;
            let opts = drill::RunOptions {
                report_dir: cwd.join(report),
                no_hedge,
                no_retry,
                etcd_port,
                base_port,
                models: cwd.join(models),
                compose_dir: cwd.join(compose_dir),
            };
            let mut failed = Vec::new();
            for p in &paths {
                // One drill that cannot run does not stop the others.
                match drill::run(p, &opts).await {
                    Ok(r) if r.pass => {}
                    Ok(r) => failed.push(r.name),
                    Err(e) => {
                        eprintln!("drill {}: could not run: {e:#}", p.display());
                        failed.push(p.display().to_string());
                    }
                }
            }
            if failed.is_empty() {
                println!("{} drill(s) passed", paths.len());
                Ok(ExitCode::SUCCESS)
            } else {
                println!("SLO missed: {}", failed.join(", "));
                Ok(ExitCode::FAILURE)
            }
        }
        Command::DevSecrets => {
            print!("{}", bootstrap::dev_secrets()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ready { addr } => {
            let ok = rankmesh_client::ready(&addr, Duration::from_secs(2))
                .await
                .unwrap_or(false);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Collector { otlp, ui } => {
            trace::collect(otlp, ui).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            rpc,
            qps,
            duration,
            queries,
            timeout_ms,
            no_hedge,
            no_retry,
            json,
            target,
        } => {
            let replicas = match &target.addr {
                Some(a) => {
                    rankmesh_common::discovery::Resolver::fixed("ranking", std::slice::from_ref(a))
                }
                None => rankmesh_common::discovery::Resolver::watch(
                    target.etcd.connect().await?,
                    "ranking",
                ),
            };
            let mut upstream = rankmesh_client::upstream::UpstreamConfig::default();
            if no_hedge {
                upstream.hedge_percentile = 0.0;
            }
            if no_retry {
                upstream.max_retries = 0;
            }
            let opts = bench::Options {
                rpc,
                qps,
                duration: Duration::from_secs(duration),
                timeout: Duration::from_millis(timeout_ms),
                inputs: bench::read_inputs(&queries)?,
                upstream,
            };
            let report = bench::run(replicas, &opts).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                bench::print(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Model {
            command,
            target,
            token,
            state,
        } => {
            let addr = target.resolve("registry").await?;
            let token = || launcher::admin_token(token.as_deref(), &state.state_dir);
            match command {
                ModelCommand::Publish {
                    name,
                    file,
                    inputs,
                    outputs,
                    metadata,
                    sidecars,
                    int8,
                } => {
                    let token = token()?;
                    let mut up = model::Upload {
                        name: &name,
                        file: &file,
                        inputs: &inputs,
                        outputs: &outputs,
                        metadata,
                        sidecars: &sidecars,
                    };
                    let m = model::publish(&addr, &token, &up).await?;
                    if let Some(int8) = &int8 {
                        up.file = int8;
                        up.metadata.push(("variant".into(), "int8".into()));
                        up.metadata
                            .push(("parent_version".into(), m.version.to_string()));
                        model::publish(&addr, &token, &up).await?;
                    }
                }
                ModelCommand::List { name, json } => model::list(&addr, &name, json).await?,
                ModelCommand::Promote {
                    name,
                    version,
                    canary,
                    reason,
                } => model::promote(&addr, &token()?, &name, version, canary, &reason).await?,
                ModelCommand::Rollback { name, reason } => {
                    model::rollback(&addr, &token()?, &name, &reason).await?
                }
                ModelCommand::RotateKey { key_id } => {
                    model::rotate(&addr, &token()?, &key_id).await?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog { command } => match command {
            CatalogCommand::Import {
                file,
                format,
                replace,
                target,
            } => {
                let addr = target.resolve("feature").await?;
                let clean = catalog::import(&addr, &file, format.as_deref(), replace).await?;
                Ok(if clean {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            CatalogCommand::Generate {
                items,
                users,
                seed,
                out,
            } => {
                generate::generate(items, users, seed, &out)?;
                println!(
                    "wrote {items} items, {users} users, events, queries and labels to {}",
                    out.display()
                );
                Ok(ExitCode::SUCCESS)
            }
        },
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
