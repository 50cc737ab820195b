//! Faults made with models, through the drill mesh's registry: a canary that
//! scores NaN or a constant (made before the load by `scripts/bad_ranker.py`), and
//! an artifact corrupted in the store after publishing; and reading back when the
//! registry rolled the canary back.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rankmesh_launcher::{ENCODER_MODEL, RANKER_MODEL};
use rankmesh_provision::models;

use super::env::Env;
use crate::report::{Injected, Rollout};
use crate::scenario::{Fault, FaultKind};

/// Publishes the broken ranker `prepare` made and makes it a canary.
pub(super) async fn canary(env: &Env, f: &Fault, injected: &mut Injected) -> anyhow::Result<()> {
    let production = ranker_stages(env).await?.production_version;
    let bad = broken_ranker(env, &f.model);
    let v = publish_ranker(env, &bad, "drill: broken canary")
        .await?
        .version;
    let reason = format!("drill: {} canary", f.model);
    models::promote(&env.registry()?, RANKER_MODEL, v, Some(f.percent), &reason).await?;
    injected.detail = format!(
        "ranker v{v} ({} scores) as a {}% canary",
        f.model, f.percent
    );
    injected.forbidden_model = Some(format!("ranker:{v}"));
    injected.production_model = Some(format!("ranker:{production}"));
    Ok(())
}

/// Publishes the ranker, corrupts its blob in the store, then promotes it.
pub(super) async fn corrupt_artifact(env: &Env, injected: &mut Injected) -> anyhow::Result<()> {
    let ranker = env.models.join("ranker/model.onnx");
    let v = publish_ranker(env, &ranker, "drill: corrupted after publishing")
        .await?
        .version;
    // Flip bytes in the middle of the stored (encrypted) blob: the GCM tag and the
    // hashes no longer match.
    let blob = newest_file(&env.state_dir.join("registry/blobs"))?;
    let mut bytes = std::fs::read(&blob).with_context(|| format!("read {}", blob.display()))?;
    let mid = bytes.len() / 2;
    for b in bytes.iter_mut().skip(mid).take(16) {
        *b ^= 0xff;
    }
    std::fs::write(&blob, bytes)?;
    let reason = "drill: promote a corrupt artifact";
    models::promote(&env.registry()?, RANKER_MODEL, v, None, reason).await?;
    injected.detail = format!("ranker v{v} corrupted in the store, then promoted");
    injected.forbidden_model = Some(format!("ranker:{v}"));
    Ok(())
}

/// Publishes the served encoder's files again as the next encoder version (the
/// registry makes its INT8 variant) and promotes it under load.
pub(super) async fn encoder_rollout(env: &Env, injected: &mut Injected) -> anyhow::Result<()> {
    let registry = env.registry()?;
    let from = models::production(&registry, ENCODER_MODEL)
        .await?
        .context("no production encoder to roll out from")?
        .version;
    let encoder = env.models.join("encoder/fp32");
    let m = models::publish(
        &registry,
        &models::Upload {
            name: ENCODER_MODEL,
            file: &encoder.join("model.onnx"),
            inputs: &["input_ids", "attention_mask", "token_type_ids"].map(String::from),
            outputs: &["sentence_embedding".to_owned()],
            metadata: vec![("source".into(), "drill: encoder rollout".into())],
            sidecars: &[encoder.join("tokenizer.json")],
            quantize_int8: true,
        },
    )
    .await?;
    models::promote(
        &registry,
        ENCODER_MODEL,
        m.version,
        None,
        "drill: encoder rollout",
    )
    .await?;
    injected.detail = format!("encoder v{} promoted over v{from}", m.version);
    injected.rollout = Some(Rollout {
        from: format!("{ENCODER_MODEL}:{from}"),
        to: format!("{ENCODER_MODEL}:{}", m.version),
    });
    Ok(())
}

/// Publishes `file` as the next ranker version; returns its manifest.
async fn publish_ranker(
    env: &Env,
    file: &Path,
    why: &str,
) -> anyhow::Result<rankmesh_proto::pb::registry::v1::ModelManifest> {
    let m = models::publish(
        &env.registry()?,
        &models::Upload {
            name: RANKER_MODEL,
            file,
            inputs: &["features".to_owned()],
            outputs: &["score".to_owned()],
            metadata: vec![("source".into(), why.to_owned())],
            sidecars: &[],
            quantize_int8: false,
        },
    )
    .await?;
    Ok(m)
}

/// The most recently written file under `dir`: the blob just published (the
/// registry names blobs by an opaque context, and a drill's registry has no other
/// writer).
fn newest_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                stack.push(e.path());
            } else if newest
                .as_ref()
                .is_none_or(|(t, _)| meta.modified().is_ok_and(|m| m > *t))
            {
                newest = Some((meta.modified()?, e.path()));
            }
        }
    }
    newest
        .map(|(_, p)| p)
        .ok_or_else(|| anyhow::anyhow!("no blob under {}", dir.display()))
}

fn broken_ranker(env: &Env, mode: &str) -> PathBuf {
    env.state_dir.join(format!("ranker-{mode}.onnx"))
}

/// What faults need made before the load starts, so that making it does not load
/// the machine during the measurement (it did: a Python process on 2 cores pushed
/// p99 past a second): broken copies of the ranker for canaries.
pub(super) fn prepare(env: &Env, faults: &[Fault]) -> anyhow::Result<()> {
    for f in faults.iter().filter(|f| f.kind == FaultKind::Canary) {
        let bad = broken_ranker(env, &f.model);
        if bad.exists() {
            continue;
        }
        let status = std::process::Command::new(&env.python)
            .arg(&env.bad_ranker)
            .arg(&f.model)
            .arg(env.models.join("ranker/model.onnx"))
            .arg(&bad)
            .status()
            .with_context(|| {
                format!(
                    "run {} {} (scripts/setup makes the venv)",
                    env.python.display(),
                    env.bad_ranker.display()
                )
            })?;
        anyhow::ensure!(
            status.success(),
            "{} {} failed",
            env.bad_ranker.display(),
            f.model
        );
    }
    Ok(())
}

/// The ranker's stages and their history, as the registry answers them.
async fn ranker_stages(
    env: &Env,
) -> anyhow::Result<rankmesh_proto::pb::registry::v1::ModelSummary> {
    use rankmesh_proto::pb::registry::v1 as pb;
    let req = pb::ListModelsRequest {
        name: RANKER_MODEL.to_owned(),
    };
    let listed = env
        .registry()?
        .list_models(req, rankmesh_client::Deadline::Default)
        .await
        .map_err(|s| anyhow::anyhow!("ListModels: {:?}: {}", s.code(), s.message()))?;
    listed
        .models
        .into_iter()
        .find(|m| m.name == RANKER_MODEL)
        .context("the registry lists no ranker")
}

/// Seconds from `fault_at_ms` (Unix ms) until the ranker's stage history recorded
/// the rollback of the canary `forbidden` (`ranker:N`); None when it never did.
pub(super) async fn canary_rolled_back(
    env: &Env,
    forbidden: &str,
    fault_at_ms: i64,
) -> Option<f64> {
    let version = forbidden.strip_prefix("ranker:")?;
    let stages = match ranker_stages(env).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("drill: reading the ranker's stage history: {e:#}");
            return None;
        }
    };
    let rolled_back = format!("canary v{version} rolled back");
    stages
        .history
        .iter()
        .find(|e| e.description.contains(&rolled_back))
        .map(|e| (e.at_ms - fault_at_ms) as f64 / 1000.0)
}
