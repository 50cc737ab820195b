//! Offline quality work against a running mesh:
//! - judgments (`query,item_id,grade`, grades fractional, e.g. the mean of several
//!   raters on 1..3), read whole and validated before anything is evaluated;
//! - `meshctl eval --labels FILE`: per variant (lexical only, dense only, hybrid
//!   retrieval in fused order without the ranker, and the full pipeline), NDCG@10
//!   with linear gain (gain = grade), MRR and recall@100 with relevant = grade >= 2,
//!   and the candidate recall (share of relevant items that reach the ranker).
//!
//! An unjudged item is unknown, not irrelevant, but counts as gain 0: the
//! usual convention, which rewards putting judged items first.

use rankmesh_common::relevance::ndcg;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use rankmesh_client::{Deadline, EmbeddingClient, FeatureClient, RankingClient, Resolver};
use rankmesh_proto::pb::embedding::v1 as emb;
use rankmesh_proto::pb::feature::v1 as feat;
use rankmesh_proto::pb::ranking::v1 as rank;

use crate::args::EtcdArgs;

/// Grade from which an item counts as relevant (MRR, recall).
pub(crate) const RELEVANT: f32 = 2.0;
/// Depth of recall and of each variant's list.
const DEPTH: usize = 100;
/// Queries evaluated at once.
const CONCURRENCY: usize = 4;
/// Deadline of each call: evaluation measures quality, not latency, so a busy
/// machine must not turn slow answers into degraded ones (the ranking service's
/// default deadline, for callers that send none, is 1 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// query -> item -> grade
pub(crate) type Labels = BTreeMap<String, HashMap<String, f32>>;

/// Reads judgments `query,item_id,grade` (a header row naming those columns, in
/// any order; quoted queries allowed; `.gz` read as gzip). Every row is checked
/// before any is used: a missing column, an empty query or item, or a grade that is
/// not a finite number >= 0 is an error naming the row.
pub(crate) fn read_labels(path: &Path) -> anyhow::Result<Labels> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(rankmesh_provision::catalog::open_maybe_gz(path)?);
    let header = r
        .headers()
        .with_context(|| format!("{}: header row", path.display()))?
        .clone();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .with_context(|| {
                format!(
                    "{}: row 1: no {name:?} column (the header must name query,item_id,grade)",
                    path.display()
                )
            })
    };
    let (qc, ic, gc) = (col("query")?, col("item_id")?, col("grade")?);
    let mut out = Labels::new();
    for (i, rec) in r.records().enumerate() {
        let row = i + 2;
        let rec = rec.with_context(|| format!("{}: row {row}", path.display()))?;
        let field = |c: usize, name: &str| {
            rec.get(c)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .with_context(|| format!("{}: row {row}: missing {name}", path.display()))
        };
        let (q, item, g) = (
            field(qc, "query")?,
            field(ic, "item_id")?,
            field(gc, "grade")?,
        );
        let grade: f32 = g
            .parse()
            .ok()
            .filter(|g: &f32| g.is_finite())
            .with_context(|| {
                format!("{}: row {row}: grade {g:?} is not a number", path.display())
            })?;
        if grade < 0.0 {
            bail!("{}: row {row}: grade {grade} is negative", path.display());
        }
        out.entry(q.to_owned())
            .or_default()
            .insert(item.to_owned(), grade);
    }
    if out.is_empty() {
        bail!("{}: no judgments", path.display());
    }
    Ok(out)
}

fn relevant(labels: &HashMap<String, f32>) -> HashSet<&String> {
    labels
        .iter()
        .filter(|(_, g)| **g >= RELEVANT)
        .map(|(id, _)| id)
        .collect()
}

/// Reciprocal rank of the first relevant item; `None` without relevant items.
pub(crate) fn mrr(ranked: &[String], labels: &HashMap<String, f32>) -> Option<f64> {
    let rel = relevant(labels);
    if rel.is_empty() {
        return None;
    }
    Some(
        ranked
            .iter()
            .position(|id| rel.contains(id))
            .map_or(0.0, |p| 1.0 / (p + 1) as f64),
    )
}

/// Share of relevant items in the first k; `None` without relevant items.
pub(crate) fn recall(ranked: &[String], labels: &HashMap<String, f32>, k: usize) -> Option<f64> {
    let rel = relevant(labels);
    if rel.is_empty() {
        return None;
    }
    let top: HashSet<&String> = ranked.iter().take(k).collect();
    Some(rel.iter().filter(|id| top.contains(*id)).count() as f64 / rel.len() as f64)
}

/// Running means of the metrics of one variant (each over the queries it is
/// defined for).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Means {
    sums: [f64; 3],
    counts: [usize; 3],
}

impl Means {
    pub(crate) fn add(&mut self, ranked: &[String], labels: &HashMap<String, f32>) {
        for (i, v) in [
            ndcg(ranked, labels, 10),
            mrr(ranked, labels),
            recall(ranked, labels, DEPTH),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(v) = v {
                self.sums[i] += v;
                self.counts[i] += 1;
            }
        }
    }

    fn mean(&self, i: usize) -> f64 {
        if self.counts[i] == 0 {
            0.0
        } else {
            self.sums[i] / self.counts[i] as f64
        }
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({ "ndcg@10": self.mean(0), "mrr": self.mean(1), "recall@100": self.mean(2) })
    }
}

/// SDK clients for the services a mesh evaluation calls.
pub(crate) struct Targets {
    pub ranking: RankingClient,
    pub embedding: EmbeddingClient,
    pub feature: FeatureClient,
}

async fn dense(t: &Targets, q: &str) -> anyhow::Result<Vec<String>> {
    let req = emb::RetrieveRequest {
        query: Some(emb::retrieve_request::Query::Text(q.to_owned())),
        k: DEPTH as u32,
        filters: None,
    };
    let r = t.embedding.retrieve(req, Deadline::Default).await?;
    Ok(r.items.into_iter().map(|n| n.item_id).collect())
}

async fn lexical(t: &Targets, q: &str) -> anyhow::Result<Vec<String>> {
    let req = feat::LexicalCandidatesRequest {
        query: q.to_owned(),
        k: DEPTH as u32,
        filters: None,
    };
    let r = t.feature.lexical_candidates(req, Deadline::Default).await?;
    Ok(r.items.into_iter().map(|i| i.item_id).collect())
}

pub(crate) fn search_request(q: &str, k: u32) -> rank::SearchRequest {
    rank::SearchRequest {
        query: q.to_owned(),
        k,
        ..Default::default()
    }
}

/// Every variant's ranking for one query.
struct Answers {
    lexical: Vec<String>,
    dense: Vec<String>,
    /// The ranker's candidates in fused (reciprocal-rank) order.
    hybrid: Vec<String>,
    full: Vec<String>,
    ranked: bool,
}

/// Calls `f` again, after a backoff that doubles from 20 ms to 1 s, while the
/// ranking service refuses it as overloaded (RESOURCE_EXHAUSTED: its admission
/// turned the call away before doing any work), at most 10 times: a batch job
/// may run more calls at once than a small mesh admits, and should wait rather
/// than fail.
pub(crate) async fn when_admitted<T, F, Fut>(mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut delay = Duration::from_millis(20);
    for _ in 0..10 {
        match f().await {
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            r => return r,
        }
    }
    f().await
}

async fn answers(t: &Targets, q: &str) -> anyhow::Result<Answers> {
    let (lex, den, cands, full) = tokio::join!(
        lexical(t, q),
        dense(t, q),
        when_admitted(|| t
            .ranking
            .featurize(search_request(q, DEPTH as u32), Deadline::Default)),
        when_admitted(|| t
            .ranking
            .search(search_request(q, DEPTH as u32), Deadline::Default)),
    );
    let full = full.with_context(|| format!("search {q:?}"))?;
    Ok(Answers {
        lexical: lex?,
        dense: den?,
        hybrid: cands.with_context(|| format!("featurize {q:?}"))?.item_ids,
        ranked: !full.degraded.iter().any(|d| d == "ranker"),
        full: full.items.into_iter().map(|i| i.item_id).collect(),
    })
}

/// What `eval` measured.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) variants: BTreeMap<&'static str, Means>,
    /// Mean over queries with relevant items of the share that reach the ranker.
    pub(crate) candidate_recall: f64,
    pub(crate) candidates_mean: f64,
    pub(crate) queries: usize,
    pub(crate) full_without_ranker: usize,
}

pub(crate) const VARIANTS: [&str; 4] = ["lexical", "dense", "hybrid", "full"];

impl Report {
    pub(crate) fn json(&self) -> serde_json::Value {
        let variants: serde_json::Map<String, serde_json::Value> = self
            .variants
            .iter()
            .map(|(v, m)| ((*v).to_owned(), m.json()))
            .collect();
        serde_json::json!({
            "queries": self.queries,
            "gain": "linear: gain = grade (NDCG@10)",
            "relevant": format!("grade >= {RELEVANT} (MRR, recall@100, candidate recall)"),
            "variants": variants,
            "candidate_recall": self.candidate_recall,
            "candidates_per_query": self.candidates_mean,
            "full_without_ranker": self.full_without_ranker,
        })
    }

    pub(crate) fn print(&self) {
        println!(
            "{} queries; NDCG@10 with gain = grade; relevant = grade >= {RELEVANT}",
            self.queries
        );
        println!(
            "{:<10} {:>9} {:>9} {:>11}",
            "variant", "NDCG@10", "MRR", "recall@100"
        );
        for v in VARIANTS {
            let m = self.variants.get(v).copied().unwrap_or_default();
            println!(
                "{v:<10} {:>9.4} {:>9.4} {:>11.4}",
                m.mean(0),
                m.mean(1),
                m.mean(2)
            );
        }
        println!(
            "candidate recall {:.4} ({:.0} candidates a query reach the ranker)",
            self.candidate_recall, self.candidates_mean
        );
        if self.full_without_ranker > 0 {
            println!(
                "note: {} full-pipeline answers ran without the ranker (degraded)",
                self.full_without_ranker
            );
        }
    }
}

/// Evaluates every variant on `labels`.
pub(crate) async fn evaluate(t: &Targets, labels: &Labels) -> anyhow::Result<Report> {
    let progress = crate::progress::Progress::new("evaluating", labels.len());
    let mut stream = futures::stream::iter(labels.iter())
        .map(|(q, l)| async move { answers(t, q).await.map(|a| (a, l)) })
        .buffer_unordered(CONCURRENCY);
    let mut report = Report {
        queries: labels.len(),
        ..Report::default()
    };
    let (mut cand_sum, mut cand_n, mut cands) = (0.0, 0usize, 0usize);
    while let Some(r) = stream.next().await {
        let (a, l) = r?;
        progress.tick();
        for (v, ranked) in [
            ("lexical", &a.lexical),
            ("dense", &a.dense),
            ("hybrid", &a.hybrid),
            ("full", &a.full),
        ] {
            report.variants.entry(v).or_default().add(ranked, l);
        }
        if let Some(r) = recall(&a.hybrid, l, usize::MAX) {
            cand_sum += r;
            cand_n += 1;
        }
        cands += a.hybrid.len();
        if !a.ranked {
            report.full_without_ranker += 1;
        }
    }
    progress.done();
    report.candidate_recall = if cand_n == 0 {
        0.0
    } else {
        cand_sum / cand_n as f64
    };
    report.candidates_mean = cands as f64 / labels.len().max(1) as f64;
    Ok(report)
}

/// Quality of lexical, dense, hybrid and full ranking on judgments
/// (`query,item_id,grade`, fractional grades allowed, `.gz` read as gzip):
/// NDCG@10 with linear gain (gain = grade), MRR and recall@100 with relevant =
/// grade >= 2, and the candidate recall (share of relevant items that reach the
/// ranker). Every row is validated before anything is evaluated.
#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    #[arg(long)]
    labels: PathBuf,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// `meshctl eval`, against every registered replica.
pub(crate) async fn command(a: EvalArgs) -> anyhow::Result<ExitCode> {
    let labels = read_labels(&a.labels)?;
    let t = Targets {
        ranking: RankingClient::new(a.etcd.watch("ranking").await?, CALL_TIMEOUT),
        embedding: EmbeddingClient::new(a.etcd.watch("embedding").await?, CALL_TIMEOUT),
        feature: FeatureClient::new(a.etcd.watch("feature").await?, CALL_TIMEOUT),
    };
    let report = evaluate(&t, &labels).await?;
    if a.json {
        println!("{}", report.json());
    } else {
        report.print();
    }
    Ok(ExitCode::SUCCESS)
}

/// Clients for one replica of each service.
pub(crate) fn targets(ranking: &str, embedding: &str, feature: &str) -> Targets {
    let one = |service, addr: &str| Resolver::fixed(service, &[addr.to_owned()]);
    Targets {
        ranking: RankingClient::new(one("ranking", ranking), CALL_TIMEOUT),
        embedding: EmbeddingClient::new(one("embedding", embedding), CALL_TIMEOUT),
        feature: FeatureClient::new(one("feature", feature), CALL_TIMEOUT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn metrics_on_a_known_ranking() {
        let labels: HashMap<String, f32> =
            [("a".into(), 3.0), ("b".into(), 1.0), ("c".into(), 2.33)].into();
        assert!((ndcg(&ids(&["a", "c", "b"]), &labels, 10).expect("ndcg") - 1.0).abs() < 1e-12);
        // Linear gain: b (1.0) at rank 2 and c (2.33) at rank 3.
        let worse = ids(&["x", "b", "c", "a"]);
        let d = |i: usize| 1.0 / ((i + 2) as f64).log2();
        let want = (1.0 * d(1) + 2.33f32 as f64 * d(2) + 3.0 * d(3))
            / (3.0 * d(0) + 2.33f32 as f64 * d(1) + 1.0 * d(2));
        assert!((ndcg(&worse, &labels, 10).expect("ndcg") - want).abs() < 1e-9);
        // Relevant = grade >= 2: c is the first one, at rank 3.
        assert!((mrr(&worse, &labels).expect("mrr") - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(recall(&worse, &labels, 2), Some(0.0));
        assert_eq!(recall(&worse, &labels, 4), Some(1.0));
        let irrelevant: HashMap<String, f32> = [("a".into(), 1.0)].into();
        assert_eq!(
            mrr(&worse, &irrelevant),
            None,
            "no relevant item: undefined"
        );
        assert_eq!(ndcg(&worse, &[("a".into(), 0.0)].into(), 10), None);
    }

    fn labels_from(text: &str) -> anyhow::Result<Labels> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("j.csv");
        std::fs::write(&p, text)?;
        read_labels(&p)
    }

    #[test]
    fn judgments_take_fractional_grades_and_name_bad_rows() {
        let l = labels_from("query,item_id,grade\n\"2x4, treated\",a,2.33\nq,b,3\n").expect("ok");
        assert_eq!(l["2x4, treated"]["a"], 2.33);
        let err = |t: &str| format!("{:#}", labels_from(t).expect_err("bad"));
        assert!(err("query,item_id,grade\nq,a,high\n").contains("row 2: grade \"high\""));
        assert!(
            err("query,item_id,grade\nq,a,1\nq,b,-1\n").contains("row 3: grade -1 is negative")
        );
        assert!(err("query,item_id,grade\nq,a,NaN\n").contains("row 2"));
        assert!(err("query,item_id\nq,a\n").contains("no \"grade\" column"));
        assert!(err("query,item_id,grade\nq,a\n").contains("row 2: missing grade"));
        // Columns in any order.
        let l = labels_from("grade,query,item_id\n1.67,q,a\n").expect("ok");
        assert_eq!(l["q"]["a"], 1.67);
    }
}
