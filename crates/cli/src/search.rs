//! `meshctl search` and `meshctl recommend`: the ranked answers storefronts get,
//! through the SDK a storefront uses (discovery, balancing, hedging, deadlines).

use std::process::ExitCode;
use std::time::Duration;

use rankmesh_client::{Deadline, RankingClient};
use rankmesh_proto::pb::common::v1::ModelRef;
use rankmesh_proto::pb::ranking::v1 as pb;

use crate::args::TargetArgs;
use crate::embed::FilterArgs;

fn print(
    items: &[pb::RankedItem],
    models: &[ModelRef],
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
    if !models.is_empty() {
        let ran: Vec<String> = models
            .iter()
            .map(|m| {
                let on = if m.provider.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", m.provider)
                };
                format!("{} v{} {}{on}", m.name, m.version, m.variant)
            })
            .collect();
        println!("models: {}", ran.join(", "));
    }
    if !degraded.is_empty() {
        println!("degraded: {}", degraded.join(", "));
    }
}

/// What Search and Recommend both answer with.
struct Answer<'a> {
    items: &'a [pb::RankedItem],
    models: &'a [ModelRef],
    trace_id: &'a str,
    degraded: &'a [String],
    stage_ms: &'a std::collections::HashMap<String, f32>,
}

/// Borrows an [`Answer`] from a Search or Recommend response (same fields, two types).
macro_rules! answer_of {
    ($r:expr) => {
        Answer {
            items: &$r.items,
            models: &$r.models,
            trace_id: &$r.trace_id,
            degraded: &$r.degraded,
            stage_ms: &$r.stage_ms,
        }
    };
}

impl Answer<'_> {
    /// Prints the answer as a table or as JSON.
    fn report(&self, json: bool) {
        if json {
            let out = serde_json::json!({
                "items": json_items(self.items), "models": models(self.models),
                "trace_id": self.trace_id, "degraded": self.degraded, "stage_ms": self.stage_ms,
            });
            println!("{out}");
        } else {
            print(
                self.items,
                self.models,
                self.degraded,
                self.stage_ms,
                self.trace_id,
            );
        }
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

fn models(m: &[ModelRef]) -> Vec<serde_json::Value> {
    m.iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name, "version": m.version, "variant": m.variant, "provider": m.provider,
            })
        })
        .collect()
}

/// What search and recommend share: how many, which, how long, how shown, where.
#[derive(Debug, clap::Args)]
struct AnswerArgs {
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

impl AnswerArgs {
    async fn client(&self) -> anyhow::Result<RankingClient> {
        Ok(RankingClient::new(
            self.target.resolver("ranking").await?,
            Duration::from_millis(self.timeout_ms),
        ))
    }
}

/// Ranked search: dense + lexical retrieval, features, ranker.
#[derive(Debug, clap::Args)]
pub(crate) struct SearchArgs {
    query: String,
    /// The shopper, for personal features; anonymous when omitted.
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    answer: AnswerArgs,
}

pub(crate) async fn search(a: SearchArgs) -> anyhow::Result<ExitCode> {
    let request = pb::SearchRequest {
        query: a.query,
        user_id: a.user.unwrap_or_default(),
        k: a.answer.k,
        filters: a.answer.filters.to_proto(),
        routing_key: String::new(),
        explain: false,
    };
    let r = (a.answer.client().await?)
        .search(request, Deadline::Default)
        .await
        .map_err(crate::status)?;
    answer_of!(r).report(a.answer.json);
    Ok(ExitCode::SUCCESS)
}

/// Recommendations for a user (popular items for an unknown one).
#[derive(Debug, clap::Args)]
pub(crate) struct RecommendArgs {
    user: String,
    #[command(flatten)]
    answer: AnswerArgs,
}

pub(crate) async fn recommend(a: RecommendArgs) -> anyhow::Result<ExitCode> {
    let request = pb::RecommendRequest {
        user_id: a.user,
        k: a.answer.k,
        filters: a.answer.filters.to_proto(),
        routing_key: String::new(),
    };
    let r = (a.answer.client().await?)
        .recommend(request, Deadline::Default)
        .await
        .map_err(crate::status)?;
    answer_of!(r).report(a.answer.json);
    Ok(ExitCode::SUCCESS)
}
