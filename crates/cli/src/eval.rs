//! Offline quality work against a running mesh:
//! - `meshctl eval --labels FILE`: NDCG@10, MRR and recall@100 for lexical only, dense
//!   only, hybrid retrieval without the ranker (reciprocal-rank fusion), and the full
//!   pipeline (Search).
//! - `meshctl features dump --labels FILE --out CSV`: the feature rows a ranker trains
//!   on: for every labelled query, its retrieved candidates plus its labelled items,
//!   with the grade (0 when unlabelled).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rankmesh_proto::pb::embedding::v1 as emb;
use rankmesh_proto::pb::feature::v1 as feat;
use rankmesh_proto::pb::ranking::v1 as rank;
use tonic::transport::Channel;

/// query -> item -> grade
pub(crate) type Labels = BTreeMap<String, HashMap<String, u8>>;

/// Reads `query,item_id,grade` (with a header row; quoted queries allowed).
pub(crate) fn read_labels(path: &Path) -> anyhow::Result<Labels> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("open {}", path.display()))?;
    let mut out = Labels::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        let (Some(q), Some(item), Some(g)) = (rec.get(0), rec.get(1), rec.get(2)) else {
            anyhow::bail!(
                "{}: row {}: expected query,item_id,grade",
                path.display(),
                i + 2
            );
        };
        let g: u8 = g
            .trim()
            .parse()
            .with_context(|| format!("{}: row {}: grade {g:?}", path.display(), i + 2))?;
        out.entry(q.to_owned())
            .or_default()
            .insert(item.to_owned(), g);
    }
    Ok(out)
}

/// DCG-based NDCG@k with gains 2^g - 1.
fn ndcg(ranked: &[String], labels: &HashMap<String, u8>, k: usize) -> f64 {
    let gain = |g: u8| f64::from((1u32 << g) - 1);
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, id)| gain(labels.get(id).copied().unwrap_or(0)) / ((i + 2) as f64).log2())
        .sum();
    let mut ideal: Vec<u8> = labels.values().copied().collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, g)| gain(*g) / ((i + 2) as f64).log2())
        .sum();
    if idcg == 0.0 { 0.0 } else { dcg / idcg }
}

/// Reciprocal rank of the first item with the query's best grade.
fn mrr(ranked: &[String], labels: &HashMap<String, u8>) -> f64 {
    let best = labels.values().copied().max().unwrap_or(0);
    ranked
        .iter()
        .position(|id| labels.get(id).copied() == Some(best))
        .map_or(0.0, |p| 1.0 / (p + 1) as f64)
}

/// Share of relevant (grade >= 2) items found in the first k.
fn recall(ranked: &[String], labels: &HashMap<String, u8>, k: usize) -> f64 {
    let relevant: Vec<&String> = labels
        .iter()
        .filter(|(_, g)| **g >= 2)
        .map(|(id, _)| id)
        .collect();
    if relevant.is_empty() {
        return 0.0;
    }
    let top: std::collections::HashSet<&String> = ranked.iter().take(k).collect();
    relevant.iter().filter(|id| top.contains(*id)).count() as f64 / relevant.len() as f64
}

pub(crate) struct Targets {
    pub ranking: Channel,
    pub embedding: Channel,
    pub feature: Channel,
}

async fn dense(t: &Targets, q: &str, k: u32) -> anyhow::Result<Vec<String>> {
    let r = emb::embedding_service_client::EmbeddingServiceClient::new(t.embedding.clone())
        .retrieve(emb::RetrieveRequest {
            query: Some(emb::retrieve_request::Query::Text(q.to_owned())),
            k,
            filters: None,
        })
        .await?
        .into_inner();
    Ok(r.items.into_iter().map(|n| n.item_id).collect())
}

async fn lexical(t: &Targets, q: &str, k: u32) -> anyhow::Result<Vec<String>> {
    let r = feat::feature_service_client::FeatureServiceClient::new(t.feature.clone())
        .lexical_candidates(feat::LexicalCandidatesRequest {
            query: q.to_owned(),
            k,
            filters: None,
        })
        .await?
        .into_inner();
    Ok(r.items.into_iter().map(|i| i.item_id).collect())
}

fn fuse(lists: &[&[String]]) -> Vec<String> {
    let mut score: HashMap<&String, f64> = HashMap::new();
    for list in lists {
        for (rank, id) in list.iter().enumerate() {
            *score.entry(id).or_default() += 1.0 / (61.0 + rank as f64);
        }
    }
    let mut all: Vec<(&String, f64)> = score.into_iter().collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    all.into_iter().map(|(id, _)| id.clone()).collect()
}

/// Metrics per variant, averaged over queries.
pub(crate) async fn eval(t: &Targets, labels: &Labels, json: bool) -> anyhow::Result<()> {
    let variants = ["lexical", "dense", "hybrid", "full"];
    let mut sums: BTreeMap<&str, [f64; 3]> = variants.iter().map(|v| (*v, [0.0; 3])).collect();
    let mut degraded_full = 0usize;
    for (q, l) in labels {
        let lex = lexical(t, q, 100).await?;
        let den = dense(t, q, 100).await?;
        let hyb = fuse(&[&lex, &den]);
        let full = rank::ranking_service_client::RankingServiceClient::new(t.ranking.clone())
            .search(rank::SearchRequest {
                query: q.clone(),
                user_id: String::new(),
                k: 100,
                filters: None,
                routing_key: String::new(),
            })
            .await?
            .into_inner();
        if full.degraded.iter().any(|d| d == "ranker") {
            degraded_full += 1;
        }
        let full: Vec<String> = full.items.into_iter().map(|i| i.item_id).collect();
        for (v, ranked) in [
            ("lexical", &lex),
            ("dense", &den),
            ("hybrid", &hyb),
            ("full", &full),
        ] {
            let s = sums.get_mut(v).context("variant")?;
            s[0] += ndcg(ranked, l, 10);
            s[1] += mrr(ranked, l);
            s[2] += recall(ranked, l, 100);
        }
    }
    let n = labels.len().max(1) as f64;
    if json {
        let out: serde_json::Map<String, serde_json::Value> = sums
            .iter()
            .map(|(v, s)| {
                ((*v).to_owned(), serde_json::json!({ "ndcg@10": s[0] / n, "mrr": s[1] / n, "recall@100": s[2] / n }))
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "queries": labels.len(), "variants": out, "full_without_ranker": degraded_full })
        );
    } else {
        println!("{} queries", labels.len());
        println!(
            "{:<10} {:>9} {:>9} {:>11}",
            "variant", "NDCG@10", "MRR", "recall@100"
        );
        for v in variants {
            let s = sums[v];
            println!(
                "{v:<10} {:>9.4} {:>9.4} {:>11.4}",
                s[0] / n,
                s[1] / n,
                s[2] / n
            );
        }
        if degraded_full > 0 {
            println!(
                "note: {degraded_full} full-pipeline answers ran without the ranker (degraded)"
            );
        }
    }
    Ok(())
}

/// Writes the training rows: `qid,grade,<columns...>` plus `<out>.schema.json`.
pub(crate) async fn dump(
    t: &Targets,
    labels: &Labels,
    candidates: u32,
    out: &Path,
) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?,
    );
    let mut schema_written = false;
    let mut rows = 0usize;
    for (qid, (q, l)) in labels.iter().enumerate() {
        let mut ids = lexical(t, q, candidates).await?;
        ids.extend(dense(t, q, candidates).await?);
        ids.extend(l.keys().cloned());
        ids.sort();
        ids.dedup();
        ids.truncate(rankmesh_proto::limits::MAX_CANDIDATES as usize);
        let f = feat::feature_service_client::FeatureServiceClient::new(t.feature.clone())
            .get_features(feat::GetFeaturesRequest {
                user_id: String::new(),
                query: q.clone(),
                candidate_ids: ids,
            })
            .await?
            .into_inner();
        let schema = f.schema.context("no schema in GetFeatures reply")?;
        if !schema_written {
            writeln!(file, "qid,grade,{}", schema.columns.join(","))?;
            let meta = serde_json::json!({ "name": schema.name, "version": schema.version, "columns": schema.columns });
            std::fs::write(
                out.with_extension("schema.json"),
                serde_json::to_vec_pretty(&meta)?,
            )?;
            schema_written = true;
        }
        let w = schema.columns.len();
        for (i, id) in f.item_ids.iter().enumerate() {
            let grade = l.get(id).copied().unwrap_or(0);
            let vals: Vec<String> = f.values[i * w..(i + 1) * w]
                .iter()
                .map(|v| format!("{v}"))
                .collect();
            writeln!(file, "{qid},{grade},{}", vals.join(","))?;
            rows += 1;
        }
    }
    file.flush()?;
    println!(
        "wrote {rows} rows for {} queries to {}",
        labels.len(),
        out.display()
    );
    Ok(())
}

/// Connects to one replica of each service.
pub(crate) async fn targets(
    ranking: &str,
    embedding: &str,
    feature: &str,
) -> anyhow::Result<Targets> {
    let t = Duration::from_secs(30);
    Ok(Targets {
        ranking: rankmesh_client::connect(ranking, t).await?,
        embedding: rankmesh_client::connect(embedding, t).await?,
        feature: rankmesh_client::connect(feature, t).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_a_known_ranking() {
        let labels: HashMap<String, u8> =
            [("a".into(), 3), ("b".into(), 1), ("c".into(), 2)].into();
        let perfect: Vec<String> = ["a", "c", "b"].iter().map(|s| (*s).to_owned()).collect();
        assert!((ndcg(&perfect, &labels, 10) - 1.0).abs() < 1e-12);
        let worse: Vec<String> = ["x", "b", "c", "a"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert!(ndcg(&worse, &labels, 10) < 0.8);
        assert!((mrr(&worse, &labels) - 0.25).abs() < 1e-12);
        assert!((recall(&worse, &labels, 2) - 0.0).abs() < 1e-12);
        assert!((recall(&worse, &labels, 4) - 1.0).abs() < 1e-12);
    }
}
