//! `meshctl search` and `meshctl recommend`: the ranked answers storefronts get.

use std::time::Duration;

use rankmesh_proto::pb::ranking::v1 as pb;

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

pub(crate) async fn search(
    addr: &str,
    query: String,
    user: Option<String>,
    k: u32,
    filters: &FilterArgs,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let channel = rankmesh_client::connect(addr, timeout).await?;
    let mut client = pb::ranking_service_client::RankingServiceClient::new(channel);
    let r = client
        .search(pb::SearchRequest {
            query,
            user_id: user.unwrap_or_default(),
            k,
            filters: filters.to_proto(),
            routing_key: String::new(),
            explain: false,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    report(
        &r.items,
        &r.models,
        &r.trace_id,
        &r.degraded,
        &r.stage_ms,
        json,
    );
    Ok(())
}

pub(crate) async fn recommend(
    addr: &str,
    user: String,
    k: u32,
    filters: &FilterArgs,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let channel = rankmesh_client::connect(addr, timeout).await?;
    let mut client = pb::ranking_service_client::RankingServiceClient::new(channel);
    let r = client
        .recommend(pb::RecommendRequest {
            user_id: user,
            k,
            filters: filters.to_proto(),
            routing_key: String::new(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    report(
        &r.items,
        &r.models,
        &r.trace_id,
        &r.degraded,
        &r.stage_ms,
        json,
    );
    Ok(())
}
