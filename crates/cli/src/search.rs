//! `meshctl search` and `meshctl recommend`: the ranked answers storefronts get,
//! through the SDK a storefront uses (discovery, balancing, hedging, deadlines).

use std::process::ExitCode;
use std::time::Duration;

use rankmesh_client::{Deadline, RankingClient};
use rankmesh_proto::pb::ranking::v1 as pb;

use crate::args::TargetArgs;
use crate::embed::FilterArgs;

fn print(
    items: &[pb::RankedItem],
    degraded: &[String],
    stage_ms: &std::collections::HashMap<String, f32>,
    trace_id: &str,
) {
    println!(
        "{:>3}  {:<10} {:>8}  {:<48} {:<34} {:>9}",
        "#", "ITEM", "SCORE", "TITLE", "CATEGORY", "PRICE"
    );
    for (i, it) in items.iter().enumerate() {
        let title: String = it.title.chars().take(48).collect();
        let category: String = it.category.chars().take(34).collect();
        let price = it.price.map_or_else(String::new, |p| format!("{p:.2}"));
        println!(
            "{:>3}  {:<10} {:>8.4}  {:<48} {:<34} {:>9}",
            i + 1,
            it.item_id,
            it.score,
            title,
            category,
            price
        );
    }
    let mut stages: Vec<_> = stage_ms.iter().collect();
    stages.sort_by(|a, b| a.0.cmp(b.0));
    let timing: Vec<String> = stages
        .iter()
        .map(|(k, v)| format!("{k} {v:.1}ms"))
        .collect();
    println!("\ntrace {trace_id}   {}", timing.join(", "));
    if !degraded.is_empty() {
        println!("degraded: {}", degraded.join(", "));
    }
}

/// Prints a ranked answer as a table or as JSON.
fn report(
    items: &[pb::RankedItem],
    m: &[rankmesh_proto::pb::common::v1::ModelRef],
    trace_id: &str,
    degraded: &[String],
    stage_ms: &std::collections::HashMap<String, f32>,
    json: bool,
) {
    if json {
        let out = serde_json::json!({
            "items": json_items(items), "models": models(m), "trace_id": trace_id,
            "degraded": degraded, "stage_ms": stage_ms,
        });
        println!("{out}");
    } else {
        print(items, degraded, stage_ms, trace_id);
    }
}

fn json_items(items: &[pb::RankedItem]) -> Vec<serde_json::Value> {
    items
        .iter()
        .map(|i| {
            serde_json::json!({
                "item_id": i.item_id, "score": i.score, "title": i.title, "category": i.category,
                "brand": i.brand, "price": i.price, "sources": i.sources,
            })
        })
        .collect()
}

fn models(m: &[rankmesh_proto::pb::common::v1::ModelRef]) -> Vec<serde_json::Value> {
    m.iter()
        .map(|m| serde_json::json!({ "name": m.name, "version": m.version, "variant": m.variant }))
        .collect()
}

/// Ranked search: dense + lexical retrieval, features, ranker.
#[derive(Debug, clap::Args)]
pub(crate) struct SearchArgs {
    query: String,
    /// The shopper, for personal features; anonymous when omitted.
    #[arg(long)]
    user: Option<String>,
    #[arg(long, short, default_value_t = 10)]
    k: u32,
    #[command(flatten)]
    filters: FilterArgs,
    /// Deadline for the whole request, milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

pub(crate) async fn search(a: SearchArgs) -> anyhow::Result<ExitCode> {
    let client = RankingClient::new(
        a.target.resolver("ranking").await?,
        Duration::from_millis(a.timeout_ms),
    );
    let r = client
        .search(
            pb::SearchRequest {
                query: a.query,
                user_id: a.user.unwrap_or_default(),
                k: a.k,
                filters: a.filters.to_proto(),
                routing_key: String::new(),
                explain: false,
            },
            Deadline::Default,
        )
        .await
        .map_err(crate::status)?;
    report(
        &r.items,
        &r.models,
        &r.trace_id,
        &r.degraded,
        &r.stage_ms,
        a.json,
    );
    Ok(ExitCode::SUCCESS)
}

/// Recommendations for a user (popular items for an unknown one).
#[derive(Debug, clap::Args)]
pub(crate) struct RecommendArgs {
    user: String,
    #[arg(long, short, default_value_t = 10)]
    k: u32,
    #[command(flatten)]
    filters: FilterArgs,
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

pub(crate) async fn recommend(a: RecommendArgs) -> anyhow::Result<ExitCode> {
    let client = RankingClient::new(
        a.target.resolver("ranking").await?,
        Duration::from_millis(a.timeout_ms),
    );
    let r = client
        .recommend(
            pb::RecommendRequest {
                user_id: a.user,
                k: a.k,
                filters: a.filters.to_proto(),
                routing_key: String::new(),
            },
            Deadline::Default,
        )
        .await
        .map_err(crate::status)?;
    report(
        &r.items,
        &r.models,
        &r.trace_id,
        &r.degraded,
        &r.stage_ms,
        a.json,
    );
    Ok(ExitCode::SUCCESS)
}
