//! `meshctl bootstrap`: what `meshctl up` does to a fresh mesh after starting it,
//! for a mesh started some other way (the compose stack): publish the default models
//! into the registry, import a catalog into each feature replica, and build each
//! embedding replica's index. Each step waits for its service to answer, so it can
//! run as soon as the containers are created. Re-running it changes nothing that is
//! already in place.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long each step waits for its service to come up.
const PATIENCE: Duration = Duration::from_secs(300);

/// Retries `step` until it succeeds or `PATIENCE` passes (services in other
/// containers may still be starting).
async fn patiently<T, F, Fut>(what: &str, mut step: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    let mut last = None;
    while Instant::now() < deadline {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                eprintln!("{what}: {e:#}; retrying");
                last = Some(e);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("gave up")))
        .with_context(|| format!("{what}: not done within {PATIENCE:?}"))
}

/// Prepare a mesh started some other way (the compose stack): publish the
/// default models, import a catalog into each feature replica, build each
/// embedding replica's index. Waits for each service; safe to re-run.
#[derive(Debug, clap::Args)]
pub(crate) struct BootstrapArgs {
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
}

pub(crate) async fn command(a: BootstrapArgs) -> anyhow::Result<ExitCode> {
    run(&Plan {
        registry: &a.registry,
        token: &a.token,
        models: &a.models,
        catalog: a.catalog.as_deref(),
        feature: &a.feature,
        embedding: &a.embedding,
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) struct Plan<'a> {
    pub registry: &'a str,
    pub token: &'a str,
    pub models: &'a Path,
    pub catalog: Option<&'a Path>,
    pub feature: &'a [String],
    pub embedding: &'a [String],
}

pub(crate) async fn run(plan: &Plan<'_>) -> anyhow::Result<()> {
    let ranker = plan.models.join("ranker");
    let ranker = ranker.join("model.onnx").exists().then_some(ranker);
    let registry = rankmesh_provision::registry_at(plan.registry, Some(plan.token), None);
    let published = patiently("publishing the default models", || async {
        let defaults = rankmesh_provision::models::publish_defaults;
        Ok(defaults(&registry, plan.models, ranker.as_deref()).await?)
    })
    .await?;
    for m in &published {
        crate::model::print_published(m);
    }
    println!(
        "models published: encoder{}",
        if ranker.is_some() { ", ranker" } else { "" }
    );
    if let Some(file) = plan.catalog {
        // Every replica: each keeps its own lexical index over the shared store,
        // rebuilt on import.
        for addr in plan.feature {
            patiently(&format!("importing the catalog into {addr}"), || {
                crate::catalog::import(addr, file, None, true)
            })
            .await?;
        }
    }
    for addr in plan.embedding {
        patiently(&format!("building the index of {addr}"), || {
            crate::embed::build_index(addr)
        })
        .await?;
    }
    println!("bootstrap done");
    Ok(())
}
