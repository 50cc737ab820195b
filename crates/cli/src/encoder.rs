//! `meshctl encoder train`: the text encoder fine-tuned on a store's own judgments.
//!
//! 1. Splits the judgments by query exactly as `meshctl ranker train` does (same
//!    seed and share: the same dev queries), written beside the model.
//! 2. Starts a private mesh with the catalog and the encoder it would serve today,
//!    and asks it for every train query's candidate lists: the embedding service's
//!    dense neighbours and the feature service's lexical candidates, interleaved.
//!    The hard negatives come from these, the lists Search itself ranks.
//! 3. Runs `scripts/train_encoder.py` (PyTorch, from `scripts/setup --train`):
//!    contrastive fine-tuning from the published encoder's weights, within a time
//!    budget with checkpoints (`--resume`), the ONNX export checked against
//!    PyTorch, and dense retrieval on dev before and after (`metrics.json`).
//! 4. With `--publish`, uploads the FP32 encoder with its tokenizer and dev figures
//!    to the target registry, which makes and checks the INT8 variant; `--promote`
//!    makes it production: each embedding replica re-embeds the catalog in the
//!    background while the old encoder and index serve, then swaps both at once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use rankmesh_client::{Deadline, EmbeddingClient, FeatureClient};
use rankmesh_common::discovery::Resolver;
use rankmesh_proto::pb::embedding::v1 as emb;
use rankmesh_proto::pb::feature::v1 as feat;

use crate::eval::Labels;
use rankmesh_launcher as launcher;

/// Candidates asked of each list (dense and lexical) per train query.
const CANDIDATES: u32 = 100;
/// Queries asked at once.
const CONCURRENCY: usize = 4;
/// The encoder's ONNX signature, as the registry checks it.
const INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];
const OUTPUT: &str = "sentence_embedding";

/// The text encoder: fine-tune it on a store's judgments.
#[derive(Debug, clap::Args)]
pub(crate) struct EncoderArgs {
    #[command(subcommand)]
    command: EncoderCommand,
}

#[derive(Debug, clap::Subcommand)]
enum EncoderCommand {
    /// Fine-tune the encoder on judgments (`query,item_id,grade`) over a catalog:
    /// split by query as `ranker train` does, mine hard negatives from a private
    /// mesh's candidate lists, train (contrastive, in-batch and hard negatives)
    /// within --max-minutes, export ONNX (FP32 and INT8) checked against the
    /// trained model, and measure dense retrieval on dev before and after. Writes
    /// DIR/encoder/{fp32,int8}/, DIR/metrics.json and DIR/training.json.
    Train(TrainArgs),
}

pub(crate) async fn command(a: EncoderArgs) -> anyhow::Result<std::process::ExitCode> {
    match a.command {
        EncoderCommand::Train(args) => train(args).await?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    /// The store's catalog (JSONL in the import format; `.gz` is read as gzip).
    #[arg(long)]
    catalog: PathBuf,
    /// Judgments: CSV naming `query,item_id,grade`; relevant means grade >= 2.
    #[arg(long)]
    judgments: PathBuf,
    /// Where the encoder, metrics.json and training.json go.
    #[arg(long)]
    out: PathBuf,
    /// Share of queries held out as the dev split (as `ranker train`).
    #[arg(long, default_value_t = 0.2)]
    dev_share: f64,
    /// Seed of the split and of training (as `ranker train`).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Training time budget; training stops at a step boundary when it is spent.
    #[arg(long, default_value_t = 60.0)]
    max_minutes: f64,
    /// Passes over the training pairs (the budget may end training earlier).
    #[arg(long, default_value_t = 1)]
    epochs: u32,
    /// Continue from DIR's checkpoint (and its candidate lists) after an
    /// interrupted or budget-bound run.
    #[arg(long)]
    resume: bool,
    /// Publish the trained encoder to the target mesh's registry as the next
    /// `encoder` version (INT8 made and checked at publish), dev figures in its
    /// metadata.
    #[arg(long)]
    publish: bool,
    /// With --publish: make it production (embedding replicas re-embed their
    /// catalog, then swap encoder and index together).
    #[arg(long, requires = "publish")]
    promote: bool,
    /// Admin token of the target registry; default: RANKMESH_ADMIN_TOKEN, then the
    /// local mesh's secrets file (--state-dir).
    #[arg(long, env = "RANKMESH_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    target: crate::args::TargetArgs,
    #[command(flatten)]
    state: crate::args::StateArgs,
    /// Working folder of the private mesh (its logs stay there).
    #[arg(long, default_value = ".rankmesh/encoder-train")]
    work: PathBuf,
    /// The private mesh's etcd client port (the peer port is the next one).
    #[arg(long, default_value_t = 23890)]
    mesh_etcd_port: u16,
    /// The private mesh's first service port (two per instance from here).
    #[arg(long, default_value_t = 23900)]
    mesh_base_port: u16,
    /// Exported models (`encoder/` inside), as written by scripts/setup.
    #[arg(long, env = "RANKMESH_MODELS", default_value = "models")]
    models: PathBuf,
    /// Python with PyTorch (`scripts/setup --train`).
    #[arg(long)]
    python: Option<PathBuf>,
    /// The training script; default: scripts/train_encoder.py beside the models.
    #[arg(long)]
    script: Option<PathBuf>,
}

pub(crate) async fn train(args: TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.max_minutes > 0.0, "--max-minutes must be > 0");
    let (train_labels, _) =
        crate::ranker::split_judgments(&args.judgments, args.seed, args.dev_share, &args.out)?;
    let candidates = args.out.join("candidates.jsonl");
    if args.resume && candidates.exists() {
        println!("reusing {}", candidates.display());
    } else {
        candidates_from_private_mesh(&args, &train_labels, &candidates).await?;
    }
    let metrics = run_trainer(&args, &candidates)?;
    if args.publish {
        publish_trained(&args, &metrics).await?;
    }
    Ok(())
}

/// Step 2: a private mesh's dense and lexical candidates for every train query,
/// written as JSONL (`{"query", "ids"}`, the two lists interleaved, best first).
async fn candidates_from_private_mesh(
    args: &TrainArgs,
    train: &Labels,
    path: &Path,
) -> anyhow::Result<()> {
    let (mesh, state_dir) = crate::mesh::private(&crate::mesh::Private {
        work: &args.work,
        etcd_port: args.mesh_etcd_port,
        base_port: args.mesh_base_port,
        models: &args.models,
        catalog: &args.catalog,
        follow_ranker: false,
    })
    .await?;
    let result = async {
        let embedding = EmbeddingClient::new(
            Resolver::fixed("embedding", &[mesh.grpc_of("embedding")?]),
            Duration::from_secs(30),
        );
        let feature = FeatureClient::new(
            Resolver::fixed("feature", &[mesh.grpc_of("feature")?]),
            Duration::from_secs(30),
        );
        write_candidates(&embedding, &feature, train, path).await
    }
    .await;
    crate::mesh::stop_private(&mesh, &state_dir, &args.state.state_dir).await?;
    result
}

async fn write_candidates(
    embedding: &EmbeddingClient,
    feature: &FeatureClient,
    train: &Labels,
    path: &Path,
) -> anyhow::Result<()> {
    let progress = crate::progress::Progress::new("candidates", train.len());
    let tmp = path.with_extension("jsonl.tmp");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?,
    );
    let mut lists = futures::stream::iter(train.keys())
        .map(|q| async move { (q, candidates_of(embedding, feature, q).await) })
        .buffered(CONCURRENCY);
    while let Some((query, ids)) = lists.next().await {
        let ids = ids.with_context(|| format!("candidates of {query:?}"))?;
        serde_json::to_writer(&mut out, &serde_json::json!({ "query": query, "ids": ids }))?;
        out.write_all(b"\n")?;
        progress.tick();
    }
    progress.done();
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// One query's dense and lexical candidates, interleaved (dense first), without
/// repeats.
async fn candidates_of(
    embedding: &EmbeddingClient,
    feature: &FeatureClient,
    query: &str,
) -> anyhow::Result<Vec<String>> {
    let dense = embedding.retrieve(
        emb::RetrieveRequest {
            query: Some(emb::retrieve_request::Query::Text(query.to_owned())),
            k: CANDIDATES,
            filters: None,
        },
        Deadline::Default,
    );
    let lexical = feature.lexical_candidates(
        feat::LexicalCandidatesRequest {
            query: query.to_owned(),
            k: CANDIDATES,
            filters: None,
        },
        Deadline::Default,
    );
    let (dense, lexical) = futures::join!(dense, lexical);
    let dense: Vec<String> = dense?.items.into_iter().map(|i| i.item_id).collect();
    let lexical: Vec<String> = lexical?.items.into_iter().map(|i| i.item_id).collect();
    Ok(interleave(&dense, &lexical))
}

/// `a[0], b[0], a[1], b[1], ...`, each id once.
fn interleave(a: &[String], b: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(a.len() + b.len());
    for i in 0..a.len().max(b.len()) {
        for list in [a, b] {
            if let Some(id) = list.get(i)
                && seen.insert(id.as_str())
            {
                out.push(id.clone());
            }
        }
    }
    out
}

/// Step 3: the Python trainer; returns what it wrote to metrics.json.
fn run_trainer(args: &TrainArgs, candidates: &Path) -> anyhow::Result<serde_json::Value> {
    let script = args.script.clone().unwrap_or_else(|| {
        let models = std::fs::canonicalize(&args.models).unwrap_or_else(|_| args.models.clone());
        models
            .parent()
            .map_or_else(|| PathBuf::from("scripts"), |root| root.join("scripts"))
            .join("train_encoder.py")
    });
    let tool = crate::args::PythonTool::new(args.python.clone(), script);
    let mut cmd = tool.command();
    cmd.arg("--catalog")
        .arg(&args.catalog)
        .arg("--judgments")
        .arg(&args.judgments)
        .arg("--out")
        .arg(&args.out)
        .arg("--models")
        .arg(&args.models)
        .arg("--candidates")
        .arg(candidates)
        .args(["--seed", &args.seed.to_string()])
        .args(["--dev-share", &args.dev_share.to_string()])
        .args(["--epochs", &args.epochs.to_string()])
        .args(["--max-minutes", &args.max_minutes.to_string()]);
    if args.resume {
        cmd.arg("--resume");
    }
    let status = cmd.status().with_context(|| tool.not_started())?;
    if !status.success() {
        bail!("{} failed ({status})", tool.script.display());
    }
    let path = args.out.join("metrics.json");
    serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
    )
    .with_context(|| format!("parse {}", path.display()))
}

/// Step 4: the trained encoder published with its figures, and made production
/// when asked.
async fn publish_trained(args: &TrainArgs, metrics: &serde_json::Value) -> anyhow::Result<()> {
    let token = launcher::admin_token(args.token.as_deref(), &args.state.state_dir)?;
    let registry = crate::model::registry(args.target.resolver("registry").await?, Some(&token));
    let fp32 = args.out.join("encoder").join("fp32");
    let inputs: Vec<String> = INPUTS.map(String::from).to_vec();
    let outputs = vec![OUTPUT.to_owned()];
    let sidecars = [fp32.join("tokenizer.json")];
    let up = crate::model::Upload {
        name: launcher::ENCODER_MODEL,
        file: &fp32.join("model.onnx"),
        inputs: &inputs,
        outputs: &outputs,
        metadata: manifest_metadata(&args.judgments, metrics),
        sidecars: &sidecars,
        quantize_int8: true,
    };
    let manifest = crate::model::publish(&registry, &up).await?;
    crate::model::print_published(&manifest);
    if args.promote {
        crate::model::promote(
            &registry,
            launcher::ENCODER_MODEL,
            manifest.version,
            None,
            &format!("meshctl encoder train on {}", args.judgments.display()),
        )
        .await?;
    }
    Ok(())
}

/// The dev figures a manifest carries: dense retrieval before and after.
fn manifest_metadata(judgments: &Path, metrics: &serde_json::Value) -> Vec<(String, String)> {
    let figure = |when: &str, variant: &str, m: &str| {
        format!(
            "{:.4}",
            metrics[when][variant][m].as_f64().unwrap_or_default()
        )
    };
    vec![
        ("trained_on".into(), judgments.display().to_string()),
        (
            "dev_queries".into(),
            metrics["split"]["dev_queries"].to_string(),
        ),
        (
            "dev_dense_ndcg@10".into(),
            figure("dev_after", "dense_int8", "ndcg@10"),
        ),
        (
            "dev_dense_recall@100".into(),
            figure("dev_after", "dense_int8", "recall@100"),
        ),
        (
            "dev_dense_ndcg@10_before".into(),
            figure("dev_before", "dense_fp32", "ndcg@10"),
        ),
        (
            "dev_dense_recall@100_before".into(),
            figure("dev_before", "dense_fp32", "recall@100"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_lists_interleave_without_repeats() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            interleave(&s(&["a", "b", "c"]), &s(&["b", "d"])),
            s(&["a", "b", "d", "c"])
        );
        assert_eq!(interleave(&[], &s(&["x"])), s(&["x"]));
    }

    #[test]
    fn the_manifest_carries_the_dev_figures() {
        let m = serde_json::json!({
            "split": {"dev_queries": 2329},
            "dev_before": {"dense_fp32": {"ndcg@10": 0.27, "recall@100": 0.64}},
            "dev_after": {"dense_int8": {"ndcg@10": 0.35, "recall@100": 0.75}},
        });
        let md: std::collections::BTreeMap<String, String> =
            manifest_metadata(Path::new("j.csv"), &m)
                .into_iter()
                .collect();
        assert_eq!(md["dev_queries"], "2329");
        assert_eq!(md["dev_dense_recall@100"], "0.7500");
        assert_eq!(md["dev_dense_ndcg@10_before"], "0.2700");
    }
}
