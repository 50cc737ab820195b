//! `meshctl embed` and `meshctl retrieve`: one text through the embedding service,
//! through the SDK (discovery, balancing, deadlines, retries).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use rankmesh_client::{Deadline, EmbeddingClient, Resolver};
use rankmesh_proto::pb::embedding::v1 as pb;

use crate::args::TargetArgs;

/// How long one embed or retrieve may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole catalog re-embedded on CPU can take minutes.
const BUILD_INDEX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Embed a text with the embedding service and print the vector.
#[derive(Debug, clap::Args)]
pub(crate) struct EmbedArgs {
    text: String,
    /// Print JSON (`dim`, `model`, `truncated`, `vector`).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

/// Embeds the text and prints the vector.
pub(crate) async fn embed(a: EmbedArgs) -> anyhow::Result<ExitCode> {
    let client = EmbeddingClient::new(a.target.resolver("embedding").await?, CALL_TIMEOUT);
    let resp = client
        .embed(
            pb::EmbedRequest {
                texts: vec![a.text],
            },
            Deadline::Default,
        )
        .await
        .map_err(crate::status)?;
    let json = a.json;
    let vector = resp
        .vectors
        .into_iter()
        .next()
        .context("the service returned no vector")?
        .values;
    let truncated = !resp.truncated.is_empty();
    let model = resp.model.unwrap_or_default();
    if json {
        let out = serde_json::json!({
            "dim": resp.dim,
            "model": { "name": model.name, "version": model.version, "variant": model.variant },
            "truncated": truncated,
            "vector": vector,
        });
        println!("{out}");
    } else {
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        let head: Vec<String> = vector.iter().take(8).map(|x| format!("{x:+.4}")).collect();
        println!(
            "model {} v{} ({}), {} dims, norm {norm:.4}{}",
            model.name,
            model.version,
            model.variant,
            resp.dim,
            if truncated {
                ", truncated to the model's token limit"
            } else {
                ""
            }
        );
        println!("[{}, ...]", head.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Filters accepted on the command line (see the proto's `Filters`).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct FilterArgs {
    /// Category path prefix, e.g. "Home > Kitchen".
    #[arg(long)]
    pub(crate) category: Option<String>,
    #[arg(long)]
    pub(crate) min_price: Option<f64>,
    #[arg(long)]
    pub(crate) max_price: Option<f64>,
    /// Only these brands (repeat the flag or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub(crate) brand: Vec<String>,
}

impl FilterArgs {
    pub(crate) fn to_proto(&self) -> Option<rankmesh_proto::pb::common::v1::Filters> {
        let f = rankmesh_proto::pb::common::v1::Filters {
            category_prefix: self.category.clone().unwrap_or_default(),
            min_price: self.min_price,
            max_price: self.max_price,
            brands: self.brand.clone(),
        };
        (f != rankmesh_proto::pb::common::v1::Filters::default()).then_some(f)
    }
}

/// Dense retrieval: the catalog items nearest to a query by embedding.
#[derive(Debug, clap::Args)]
pub(crate) struct RetrieveArgs {
    query: String,
    /// Number of items.
    #[arg(long, short, default_value_t = 10)]
    k: u32,
    #[command(flatten)]
    filters: FilterArgs,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

/// Dense retrieval only: the nearest catalog items to the query by embedding.
pub(crate) async fn retrieve(a: RetrieveArgs) -> anyhow::Result<ExitCode> {
    let client = EmbeddingClient::new(a.target.resolver("embedding").await?, CALL_TIMEOUT);
    let resp = client
        .retrieve(
            pb::RetrieveRequest {
                query: Some(pb::retrieve_request::Query::Text(a.query)),
                k: a.k,
                filters: a.filters.to_proto(),
            },
            Deadline::Default,
        )
        .await
        .map_err(crate::status)?;
    if a.json {
        let items: Vec<_> = resp
            .items
            .iter()
            .map(|n| serde_json::json!({ "item_id": n.item_id, "similarity": n.similarity }))
            .collect();
        println!("{}", serde_json::json!({ "items": items }));
    } else {
        println!("{:>4}  {:<24} {:>10}", "#", "ITEM", "SIMILARITY");
        for (i, n) in resp.items.iter().enumerate() {
            println!("{:>4}  {:<24} {:>10.4}", i + 1, n.item_id, n.similarity);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Re-embeds the feature service's catalog into the index of the embedding
/// replica at `addr` (each replica keeps its own index).
pub(crate) async fn build_index(addr: &str) -> anyhow::Result<()> {
    let client = EmbeddingClient::new(
        Resolver::fixed("embedding", &[addr.to_owned()]),
        BUILD_INDEX_TIMEOUT,
    );
    print_indexed(&rankmesh_provision::catalog::build_index(&client).await?);
    Ok(())
}

/// What a BuildIndex did, as meshctl says it.
pub(crate) fn print_indexed(r: &pb::BuildIndexResponse) {
    let kept = r.indexed.saturating_sub(r.embedded);
    println!(
        "indexed {} items for dense retrieval in {:.1} s ({} embedded, {kept} unchanged)",
        r.indexed,
        r.elapsed_ms as f64 / 1e3,
        r.embedded,
    );
}
