//! `meshctl embed`: one text through the embedding service.

use std::time::Duration;

use anyhow::Context;
use rankmesh_proto::pb::embedding::v1 as pb;

/// Embeds `text` on the embedding replica at `addr` and prints the vector.
pub(crate) async fn embed(addr: &str, text: String, json: bool) -> anyhow::Result<()> {
    let channel = rankmesh_client::connect(addr, Duration::from_secs(10)).await?;
    let mut client = pb::embedding_service_client::EmbeddingServiceClient::new(channel);
    let resp = client
        .embed(pb::EmbedRequest { texts: vec![text] })
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
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
    Ok(())
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

/// Dense retrieval only: the nearest catalog items to `query` by embedding.
pub(crate) async fn retrieve(
    addr: &str,
    query: String,
    k: u32,
    filters: &FilterArgs,
    json: bool,
) -> anyhow::Result<()> {
    let channel = rankmesh_client::connect(addr, Duration::from_secs(10)).await?;
    let mut client = pb::embedding_service_client::EmbeddingServiceClient::new(channel);
    let resp = client
        .retrieve(pb::RetrieveRequest {
            query: Some(pb::retrieve_request::Query::Text(query)),
            k,
            filters: filters.to_proto(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    if json {
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
    Ok(())
}

/// Re-embeds the feature service's catalog into the embedding index.
pub(crate) async fn build_index(addr: &str) -> anyhow::Result<()> {
    let channel = rankmesh_client::connect(addr, Duration::from_secs(3600)).await?;
    let r = pb::embedding_service_client::EmbeddingServiceClient::new(channel)
        .build_index(pb::BuildIndexRequest {
            item_ids: Vec::new(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("BuildIndex: {}: {}", s.code(), s.message()))?
        .into_inner();
    println!(
        "indexed {} items for dense retrieval in {:.1} s",
        r.indexed,
        r.elapsed_ms as f64 / 1e3
    );
    Ok(())
}
