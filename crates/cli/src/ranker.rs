//! `meshctl ranker train`: a learned ranker from a storefront's own judgments.
//!
//! 1. Reads the judgments (every row validated first) and splits them by query,
//!    seeded, into train and dev.
//! 2. Starts a private mesh on its own ports with the catalog (and events, for
//!    popularity and user features), and asks its ranking replica for every judged
//!    query's ranker input (`Featurize`): the rows Search would score, computed by
//!    the serving code itself, so training and serving cannot drift apart.
//! 3. Trains LambdaMART (LightGBM lambdarank) and a listwise MLP on the train rows
//!    (`scripts/train_ranker.py`, exported to ONNX), and keeps the better on dev.
//! 4. Publishes the winner into the private mesh, waits until its ranking replica
//!    serves it, and evaluates every variant on the dev queries (`metrics.json`).
//! 5. With `--publish`, uploads it to the target mesh's registry as the next ranker
//!    version with its dev metrics in the manifest; `--promote` or `--canary`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use rankmesh_client::RegistryClient;
use rankmesh_proto::pb::feature::v1 as feat;

use crate::eval::{self, Labels};
use rankmesh_launcher as launcher;

/// Queries featurized at once.
const CONCURRENCY: usize = 4;
/// Longest wait for the private ranking replica to serve the new ranker.
const SWAP_WAIT: Duration = Duration::from_secs(90);

/// The ranker's ONNX signature.
pub(crate) const RANKER_INPUT: &str = "features";
pub(crate) const RANKER_OUTPUT: &str = "score";

/// Learned rankers: train one on a store's own judgments.
#[derive(Debug, clap::Args)]
pub(crate) struct RankerArgs {
    #[command(subcommand)]
    command: RankerCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RankerCommand {
    /// Train a ranker on judgments (`query,item_id,grade`) over a catalog: split by
    /// query into train and dev, featurize every judged query with the serving code
    /// in a private mesh, train LambdaMART and a listwise MLP, keep the better on dev
    /// NDCG@10, export ONNX, evaluate every variant on dev. Writes DIR/model.onnx,
    /// DIR/metrics.json, DIR/training.json and the rows (DIR/rows/).
    Train(TrainArgs),
}

pub(crate) async fn command(a: RankerArgs) -> anyhow::Result<std::process::ExitCode> {
    match a.command {
        RankerCommand::Train(args) => train(args).await?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Feature rows for ranker training.
#[derive(Debug, clap::Args)]
pub(crate) struct FeaturesArgs {
    #[command(subcommand)]
    command: FeaturesCommand,
}

#[derive(Debug, clap::Subcommand)]
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
        target: crate::args::TargetArgs,
    },
}

/// `meshctl features dump`.
pub(crate) async fn features(a: FeaturesArgs) -> anyhow::Result<std::process::ExitCode> {
    let FeaturesCommand::Dump {
        labels,
        out,
        target,
    } = a.command;
    let ranking = rankmesh_client::RankingClient::new(
        target.resolver("ranking").await?,
        Duration::from_secs(30),
    );
    let labels = eval::read_labels(&labels)?;
    featurize(&ranking, &[("all", &labels)], &out).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    /// The store's catalog (JSONL or CSV in the import format; `.gz` is read as
    /// gzip). Items need only `id` and `title`.
    #[arg(long)]
    catalog: PathBuf,
    /// Judgments: CSV with a header naming `query,item_id,grade` (any order);
    /// grades are numbers >= 0, fractional allowed (e.g. a mean of raters on
    /// 1..3); relevant means grade >= 2. `.gz` is read as gzip.
    #[arg(long)]
    judgments: PathBuf,
    /// Where model.onnx, metrics.json and the training rows (rows/) go.
    #[arg(long)]
    out: PathBuf,
    /// User events (JSONL: event_id, user_id, item_id, type view|cart|purchase,
    /// timestamp_ms), recorded before featurizing so popularity and user features
    /// are those of the store.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Share of queries held out as the dev split (by query, never by row).
    #[arg(long, default_value_t = 0.2)]
    dev_share: f64,
    /// Seed of the split and of training.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Models to try: `auto` (LambdaMART and the listwise MLP; the better on dev
    /// NDCG@10 is kept), `lambdamart` or `mlp`.
    #[arg(long, default_value = "auto")]
    algo: String,
    /// Publish the trained ranker to the target mesh's registry (found through
    /// --etcd, or --addr) as the next `ranker` version, dev metrics in its metadata.
    #[arg(long)]
    publish: bool,
    /// With --publish: make it production (replicas hot-swap it).
    #[arg(long, requires = "publish", conflicts_with = "canary")]
    promote: bool,
    /// With --publish: start a canary answering PERCENT of searches.
    #[arg(long, requires = "publish", value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
    canary: Option<u32>,
    /// Admin token of the target registry; default: RANKMESH_ADMIN_TOKEN, then the
    /// local mesh's secrets file (--state-dir).
    #[arg(long, env = "RANKMESH_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    target: crate::args::TargetArgs,
    #[command(flatten)]
    state: crate::args::StateArgs,
    /// Working folder of the private training mesh (its logs stay there).
    #[arg(long, default_value = ".rankmesh/ranker-train")]
    work: PathBuf,
    /// The private mesh's etcd client port (the peer port is the next one).
    #[arg(long, default_value_t = 23790)]
    mesh_etcd_port: u16,
    /// The private mesh's first service port (two per instance from here).
    #[arg(long, default_value_t = 23800)]
    mesh_base_port: u16,
    /// Exported models (`encoder/` inside), as written by scripts/setup.
    #[arg(long, env = "RANKMESH_MODELS", default_value = "models")]
    models: PathBuf,
    /// Python with the training packages (scripts/requirements.txt).
    #[arg(long)]
    python: Option<PathBuf>,
    /// The training script; default: scripts/train_ranker.py beside the models.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Rows of another store (an earlier run's DIR/rows, same schema) to train on
    /// jointly, e.g. a generated store so the default ranker also weighs category,
    /// brand and price (repeatable). Its train queries are repeated up to a tenth
    /// of this store's; its dev figures go into training.json.
    #[arg(long)]
    extra_rows: Vec<PathBuf>,
    /// Reuse DIR/rows from an earlier run when the private mesh serves the same
    /// schema (retraining without featurizing again).
    #[arg(long)]
    reuse_rows: bool,
}

/// FNV-1a of the seed and the query: the same split on every machine.
fn is_dev(query: &str, seed: u64, share: f64) -> bool {
    use rankmesh_common::fnv::{OFFSET, fnv1a_from};
    let h = fnv1a_from(OFFSET ^ seed, query.as_bytes());
    (h % 1_000_000) as f64 / 1e6 < share
}

/// Splits judgments by query into (train, dev).
pub(crate) fn split(labels: &Labels, seed: u64, dev_share: f64) -> (Labels, Labels) {
    let mut train = Labels::new();
    let mut dev = Labels::new();
    for (q, l) in labels {
        let side = if is_dev(q, seed, dev_share) {
            &mut dev
        } else {
            &mut train
        };
        side.insert(q.clone(), l.clone());
    }
    (train, dev)
}

fn write_judgments(path: &Path, labels: &Labels) -> anyhow::Result<()> {
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("create {}", path.display()))?;
    w.write_record(["query", "item_id", "grade"])?;
    for (q, l) in labels {
        let mut items: Vec<(&String, &f32)> = l.iter().collect();
        items.sort_by(|a, b| a.0.cmp(b.0));
        for (id, g) in items {
            w.write_record([q.as_str(), id.as_str(), &g.to_string()])?;
        }
    }
    w.flush()?;
    Ok(())
}

/// The training rows of one split: `<split>.csv` (qid, grade, item_id per row; grade
/// 0 for an unjudged candidate) and `<split>.f32` (the rows, little-endian f32,
/// row-major), plus `schema.json` (name, version, columns) beside them.
pub(crate) struct RowsWriter {
    index: csv::Writer<std::fs::File>,
    values: std::io::BufWriter<std::fs::File>,
    rows: usize,
}

impl RowsWriter {
    fn create(dir: &Path, split: &str) -> anyhow::Result<Self> {
        let index = dir.join(format!("{split}.csv"));
        let values = dir.join(format!("{split}.f32"));
        let mut index = csv::Writer::from_path(&index)
            .with_context(|| format!("create {}", index.display()))?;
        index.write_record(["qid", "grade", "item_id"])?;
        Ok(Self {
            index,
            values: std::io::BufWriter::new(
                std::fs::File::create(&values)
                    .with_context(|| format!("create {}", values.display()))?,
            ),
            rows: 0,
        })
    }

    fn push(&mut self, qid: usize, grade: f32, item: &str, row: &[f32]) -> anyhow::Result<()> {
        self.index
            .write_record([&qid.to_string(), &grade.to_string(), item])?;
        for v in row {
            self.values.write_all(&v.to_le_bytes())?;
        }
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<usize> {
        self.index.flush()?;
        self.values.flush()?;
        Ok(self.rows)
    }
}

/// Featurizes every query of `splits` through the ranking replica and writes the
/// rows under `dir`; `queries.csv` maps qid to split and query, `judged.csv` holds
/// every judgment by qid (the ideal ranking of NDCG counts judged items that never
/// became candidates). Returns the schema.
pub(crate) async fn featurize(
    ranking: &rankmesh_client::RankingClient,
    splits: &[(&str, &Labels)],
    dir: &Path,
) -> anyhow::Result<feat::FeatureSchema> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut queries = csv::Writer::from_path(dir.join("queries.csv"))?;
    queries.write_record(["qid", "split", "query"])?;
    let mut judged = csv::Writer::from_path(dir.join("judged.csv"))?;
    judged.write_record(["qid", "item_id", "grade"])?;
    let mut schema: Option<feat::FeatureSchema> = None;
    let mut qid = 0usize;
    for (name, labels) in splits {
        let mut rows = RowsWriter::create(dir, name)?;
        let progress = crate::progress::Progress::new(&format!("featurizing {name}"), labels.len());
        let mut stream = futures::stream::iter(labels.iter())
            .map(|(q, l)| async move {
                let r = eval::when_admitted(|| {
                    ranking.featurize(eval::search_request(q, 1), Duration::from_secs(30))
                })
                .await
                .map_err(|s| anyhow::anyhow!("featurize {q:?}: {}: {}", s.code(), s.message()));
                r.map(|r| (q, l, r))
            })
            .buffered(CONCURRENCY);
        while let Some(r) = stream.next().await {
            let (q, l, f) = r?;
            progress.tick();
            let s = f.schema.context("no schema in the Featurize reply")?;
            match &schema {
                None => schema = Some(s.clone()),
                Some(first) if *first != s => bail!(
                    "the ranker schema changed while featurizing ({}:{} -> {}:{})",
                    first.name,
                    first.version,
                    s.name,
                    s.version
                ),
                Some(_) => {}
            }
            let width = s.columns.len().max(1);
            queries.write_record([&qid.to_string(), *name, q.as_str()])?;
            let mut items: Vec<(&String, &f32)> = l.iter().collect();
            items.sort_by(|a, b| a.0.cmp(b.0));
            for (id, g) in items {
                judged.write_record([&qid.to_string(), id.as_str(), &g.to_string()])?;
            }
            for (id, row) in f.item_ids.iter().zip(f.values.chunks(width)) {
                rows.push(qid, l.get(id).copied().unwrap_or(0.0), id, row)?;
            }
            qid += 1;
        }
        progress.done();
        let n = rows.finish()?;
        println!("{name}: {n} rows for {} queries", labels.len());
    }
    queries.flush()?;
    judged.flush()?;
    let schema = schema.context("no query was featurized")?;
    std::fs::write(
        dir.join("schema.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "name": schema.name, "version": schema.version, "columns": schema.columns,
        }))?,
    )?;
    Ok(schema)
}

/// Records `file`'s events (JSONL) in the feature service.
async fn record_events(feature: &str, file: &Path) -> anyhow::Result<usize> {
    #[derive(serde::Deserialize)]
    struct Event {
        event_id: String,
        user_id: String,
        item_id: String,
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        timestamp_ms: i64,
    }
    let text = std::io::read_to_string(rankmesh_provision::catalog::open_maybe_gz(file)?)?;
    let mut events = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let e: Event = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}", file.display(), i + 1))?;
        let kind = match e.kind.as_str() {
            "view" => feat::EventType::View,
            "cart" => feat::EventType::Cart,
            "purchase" => feat::EventType::Purchase,
            other => bail!(
                "{}: line {}: type {other:?}: expected view, cart or purchase",
                file.display(),
                i + 1
            ),
        };
        events.push(feat::RecordEventRequest {
            event_id: e.event_id,
            user_id: e.user_id,
            item_id: e.item_id,
            r#type: kind as i32,
            timestamp_ms: e.timestamp_ms,
        });
    }
    let client = rankmesh_client::FeatureClient::new(
        rankmesh_client::Resolver::fixed("feature", &[feature.to_owned()]),
        Duration::from_secs(30),
    );
    let n = events.len();
    let progress = crate::progress::Progress::new("recording events", n);
    let mut stream = futures::stream::iter(events)
        .map(|e| client.record_event(e, rankmesh_client::Deadline::Default))
        .buffer_unordered(8);
    while let Some(r) = stream.next().await {
        r.map_err(|s| anyhow::anyhow!("RecordEvent: {}: {}", s.code(), s.message()))?;
        progress.tick();
    }
    progress.done();
    Ok(n)
}

/// Runs the Python trainer; it writes `model.onnx` and `training.json` into `out`.
fn train_models(args: &TrainArgs, rows: &Path) -> anyhow::Result<serde_json::Value> {
    let script = args.script.clone().unwrap_or_else(|| {
        let models = std::fs::canonicalize(&args.models).unwrap_or_else(|_| args.models.clone());
        models
            .parent()
            .map_or_else(|| PathBuf::from("scripts"), |root| root.join("scripts"))
            .join("train_ranker.py")
    });
    let tool = crate::args::PythonTool::new(args.python.clone(), script);
    let script = &tool.script;
    let status = tool
        .command()
        .arg("--rows")
        .arg(rows)
        .arg("--out")
        .arg(&args.out)
        .args(["--algo", &args.algo, "--seed", &args.seed.to_string()])
        .args(
            args.extra_rows
                .iter()
                .flat_map(|r| [std::ffi::OsStr::new("--extra-rows"), r.as_os_str()]),
        )
        .status()
        .with_context(|| tool.not_started())?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    let path = args.out.join("training.json");
    serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
    )
    .with_context(|| format!("parse {}", path.display()))
}

/// What a published ranker carries in its manifest (each value under the
/// registry's 1 KiB limit): where it was trained and its dev figures.
fn manifest_metadata(judgments: &Path, metrics: &serde_json::Value) -> Vec<(String, String)> {
    let dev = &metrics["dev"];
    let figure = |variant: &str, m: &str| {
        format!("{:.4}", dev["variants"][variant][m].as_f64().unwrap_or(0.0))
    };
    vec![
        ("trained_on".into(), judgments.display().to_string()),
        (
            "algo".into(),
            metrics["chosen"].as_str().unwrap_or_default().to_owned(),
        ),
        (
            "dev_queries".into(),
            metrics["split"]["dev_queries"].to_string(),
        ),
        ("dev_ndcg@10".into(), figure("full", "ndcg@10")),
        ("dev_mrr".into(), figure("full", "mrr")),
        ("dev_recall@100".into(), figure("full", "recall@100")),
        ("dev_hybrid_ndcg@10".into(), figure("hybrid", "ndcg@10")),
        ("dev_lexical_ndcg@10".into(), figure("lexical", "ndcg@10")),
        (
            "dev_candidate_recall".into(),
            format!("{:.4}", dev["candidate_recall"].as_f64().unwrap_or(0.0)),
        ),
    ]
}

/// Publishes `model` as the next ranker version in `registry`; returns it.
async fn publish_ranker(
    registry: &RegistryClient,
    model: &Path,
    metadata: Vec<(String, String)>,
) -> anyhow::Result<u64> {
    let inputs = vec![RANKER_INPUT.to_owned()];
    let outputs = vec![RANKER_OUTPUT.to_owned()];
    let up = crate::model::Upload {
        name: launcher::RANKER_MODEL,
        file: model,
        inputs: &inputs,
        outputs: &outputs,
        metadata,
        sidecars: &[],
        quantize_int8: false,
    };
    Ok(crate::model::publish(registry, &up).await?.version)
}

/// Waits until a search on `ranking` is ranked by ranker `version`.
async fn wait_for_ranker(
    ranking: &rankmesh_client::RankingClient,
    query: &str,
    version: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let r = ranking
            .search(eval::search_request(query, 1), Duration::from_secs(10))
            .await;
        if let Ok(r) = &r
            && r.models
                .iter()
                .any(|m| m.name == "ranker" && m.version == version)
        {
            return Ok(());
        }
        if started.elapsed() > SWAP_WAIT {
            bail!(
                "the private ranking replica did not serve ranker v{version} within {SWAP_WAIT:?} (last answer: {:?}); see its log under the --work folder",
                r.map(|r| (r.models, r.degraded))
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `meshctl ranker train`.
pub(crate) async fn train(args: TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        ["auto", "lambdamart", "mlp"].contains(&args.algo.as_str()),
        "--algo {}: expected auto, lambdamart or mlp",
        args.algo
    );
    let (train_labels, dev_labels) =
        split_judgments(&args.judgments, args.seed, args.dev_share, &args.out)?;
    let (mesh, state_dir) = crate::mesh::private(&crate::mesh::Private {
        work: &args.work,
        etcd_port: args.mesh_etcd_port,
        base_port: args.mesh_base_port,
        models: &args.models,
        catalog: &args.catalog,
        follow_ranker: true,
    })
    .await?;
    let result = async {
        if let Some(events) = &args.events {
            let n = record_events(&mesh.grpc_of("feature")?, events).await?;
            println!("recorded {n} events");
        }
        trained_on_private_mesh(&args, &mesh, &state_dir, &train_labels, &dev_labels).await
    }
    .await;
    crate::mesh::stop_private(&mesh, &state_dir, &args.state.state_dir).await?;
    let metrics = result?;
    if args.publish {
        publish_trained(&args, &metrics).await?;
    }
    Ok(())
}

/// Step 1: the judgments split by query into train and dev, written into `out`
/// (`judgments-train.csv`, `judgments-dev.csv`). The split `encoder train` makes
/// too, so both train on the same queries and are measured on the same dev ones.
pub(crate) fn split_judgments(
    judgments: &Path,
    seed: u64,
    dev_share: f64,
    out: &Path,
) -> anyhow::Result<(eval::Labels, eval::Labels)> {
    anyhow::ensure!(
        dev_share > 0.0 && dev_share < 1.0,
        "--dev-share must be within (0, 1)"
    );
    let labels = eval::read_labels(judgments)?;
    let (train_labels, dev_labels) = split(&labels, seed, dev_share);
    anyhow::ensure!(
        !train_labels.is_empty() && !dev_labels.is_empty(),
        "{} queries cannot be split into train and dev",
        labels.len()
    );
    println!(
        "{} judgments over {} queries: {} train, {} dev queries (seed {}, dev share {})",
        labels
            .values()
            .map(std::collections::HashMap::len)
            .sum::<usize>(),
        labels.len(),
        train_labels.len(),
        dev_labels.len(),
        seed,
        dev_share
    );
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    write_judgments(&out.join("judgments-train.csv"), &train_labels)?;
    write_judgments(&out.join("judgments-dev.csv"), &dev_labels)?;
    Ok((train_labels, dev_labels))
}

/// Step 5: the trained model published to the operator's registry with its
/// figures, and made production or a canary when asked.
async fn publish_trained(args: &TrainArgs, metrics: &serde_json::Value) -> anyhow::Result<()> {
    let token = launcher::admin_token(args.token.as_deref(), &args.state.state_dir)?;
    let registry = crate::model::registry(args.target.resolver("registry").await?, Some(&token));
    let metadata = manifest_metadata(&args.judgments, metrics);
    let version = publish_ranker(&registry, &args.out.join("model.onnx"), metadata).await?;
    if args.promote || args.canary.is_some() {
        crate::model::promote(
            &registry,
            launcher::RANKER_MODEL,
            version,
            args.canary,
            &format!("meshctl ranker train on {}", args.judgments.display()),
        )
        .await?;
    }
    Ok(())
}

/// Steps 2-4 on the running private mesh; returns what metrics.json holds.
async fn trained_on_private_mesh(
    args: &TrainArgs,
    mesh: &launcher::MeshState,
    state_dir: &Path,
    train_labels: &Labels,
    dev_labels: &Labels,
) -> anyhow::Result<serde_json::Value> {
    let ranking_addr = mesh.grpc_of("ranking")?;
    let ranking = rankmesh_client::RankingClient::new(
        rankmesh_common::discovery::Resolver::fixed("ranking", std::slice::from_ref(&ranking_addr)),
        Duration::from_secs(30),
    );
    let rows = args.out.join("rows");
    let t = Instant::now();
    let schema = match reusable_rows(args, &ranking, &rows, dev_labels).await? {
        Some(schema) => {
            println!("reusing the rows in {} (same schema)", rows.display());
            schema
        }
        None => {
            let splits = [("train", train_labels), ("dev", dev_labels)];
            let schema = featurize(&ranking, &splits, &rows).await?;
            println!(
                "featurized {} queries in {:.0?}: schema {}:{} ({} columns)",
                train_labels.len() + dev_labels.len(),
                t.elapsed(),
                schema.name,
                schema.version,
                schema.columns.len()
            );
            schema
        }
    };
    let training = train_models(args, &rows)?;
    let secrets = launcher::registry_secrets(state_dir)?;
    let registry =
        crate::model::registry_at(&mesh.grpc_of("registry")?, Some(&secrets.admin_token), None);
    let version = publish_ranker(&registry, &args.out.join("model.onnx"), vec![]).await?;
    crate::model::promote(
        &registry,
        launcher::RANKER_MODEL,
        version,
        None,
        "meshctl ranker train: dev evaluation",
    )
    .await?;
    let probe = dev_labels.keys().next().context("no dev query")?;
    wait_for_ranker(&ranking, probe, version).await?;
    let targets = eval::targets(
        &ranking_addr,
        &mesh.grpc_of("embedding")?,
        &mesh.grpc_of("feature")?,
    );
    let report = eval::evaluate(&targets, dev_labels).await?;
    report.print();
    let metrics = serde_json::json!({
        "judgments": args.judgments.display().to_string(),
        "catalog": args.catalog.display().to_string(),
        "split": { "seed": args.seed, "dev_share": args.dev_share,
                   "train_queries": train_labels.len(), "dev_queries": dev_labels.len() },
        "schema": { "name": schema.name, "version": schema.version, "columns": schema.columns },
        "chosen": training["chosen"],
        "models": training["models"],
        "dev": report.json(),
    });
    let path = args.out.join("metrics.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&metrics)?)
        .with_context(|| format!("write {}", path.display()))?;
    println!(
        "wrote {} and {}",
        args.out.join("model.onnx").display(),
        path.display()
    );
    Ok(metrics)
}

/// With --reuse-rows: the schema of `rows` when it is what the mesh serves now.
async fn reusable_rows(
    args: &TrainArgs,
    ranking: &rankmesh_client::RankingClient,
    rows: &Path,
    dev_labels: &Labels,
) -> anyhow::Result<Option<feat::FeatureSchema>> {
    if !args.reuse_rows {
        return Ok(None);
    }
    let Ok(stored) = std::fs::read(rows.join("schema.json")) else {
        return Ok(None);
    };
    let stored: serde_json::Value = serde_json::from_slice(&stored)?;
    let probe = dev_labels.keys().next().context("no dev query")?;
    let served = ranking
        .featurize(eval::search_request(probe, 1), Duration::from_secs(30))
        .await
        .map_err(|s| anyhow::anyhow!("featurize {probe:?}: {}", s.message()))?
        .schema
        .context("no schema in the Featurize reply")?;
    let same = stored["name"] == served.name.as_str()
        && stored["version"] == served.version
        && stored["columns"] == serde_json::json!(served.columns);
    Ok(same.then_some(served))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_by_query_seeded_and_near_the_share() {
        let labels: Labels = (0..2000)
            .map(|i| (format!("query {i}"), [("a".to_owned(), 1.0)].into()))
            .collect();
        let (train, dev) = split(&labels, 42, 0.2);
        assert_eq!(train.len() + dev.len(), 2000);
        assert!((300..500).contains(&dev.len()), "{}", dev.len());
        assert!(dev.keys().all(|q| !train.contains_key(q)));
        let (_, again) = split(&labels, 42, 0.2);
        assert_eq!(
            dev.keys().collect::<Vec<_>>(),
            again.keys().collect::<Vec<_>>()
        );
        let (_, other) = split(&labels, 7, 0.2);
        assert_ne!(
            dev.keys().collect::<Vec<_>>(),
            other.keys().collect::<Vec<_>>()
        );
    }
}
