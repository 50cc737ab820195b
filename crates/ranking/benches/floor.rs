//! The in-process floor of one Search, stage by stage: what the mesh's request
//! path costs with no network, no process boundary, no queueing and no other
//! request competing, on the same models, catalog and queries as `scripts/bench`.
//! The mesh cannot answer faster than the sum of these stages; how close it comes
//! (at half its capacity) is what the gRPC hops, batching and scheduling cost.
//!
//!   RANKMESH_BENCH_STORE=.rankmesh/bench/store-50000 \
//!   RANKMESH_BENCH_INDEX=<an embedding replica's snapshot dir> \
//!   cargo bench -p rankmesh-ranking --bench floor [-- --json]
//!
//! Stages, each timed alone for every query (p50/p99 over the queries):
//! - encode: tokenize and encode one query (INT8 encoder, batch of one), as a
//!   query-vector cache miss does;
//! - hnsw: the dense top 200 from the vector index;
//! - bm25: the lexical top 200 (the feature service's LexicalCandidates);
//! - fuse: reciprocal-rank fusion of the two lists;
//! - features: GetFeatures for the fused candidates with display fields (the feature
//!   service's handler on a redb store, catalog imported from the store);
//! - rank: the ranker on their rows (the retrieval columns appended).
//!
//! The features stage is also taken apart (each part timed alone, outside the
//! sum): reading the candidates' rows and popularity from the store, their BM25
//! part scores, and computing the matrix.
//!
//! Also the encoder's best throughput on these queries (texts/s over batch sizes
//! 1-64), the denominator of the "Search capacity >= 0.5x the encoder".
//! Without RANKMESH_BENCH_INDEX the catalog is embedded here (minutes for 50k).
//! Needs `ORT_DYLIB_PATH` and the models (`scripts/setup`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rankmesh_common::onnx::OnnxConfig;
use rankmesh_embedding::encoder::{Encoder, Variant};
use rankmesh_embedding::index::{Filter, IndexParams, VectorIndex};
use rankmesh_feature::lexical::LexicalIndex;
use rankmesh_feature::service::Features;
use rankmesh_feature::store::{FeatureStore, RedbStore};
use rankmesh_proto::pb::feature::v1 as pb;
use rankmesh_ranking::fusion::{Fusion, Retrieved, append_retrieval, fuse};
use rankmesh_ranking::ranker::Ranker;

/// Candidates from each retrieval source, as the ranking service asks by default.
const CANDIDATES: usize = 200;
/// Queries timed (after a warm-up of 20).
const QUERIES: usize = 300;

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key).map(PathBuf::from)
}

fn models() -> PathBuf {
    env_path("RANKMESH_MODELS")
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50 and p99 of `samples`, milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |p: f64| ms(samples[((samples.len() as f64 - 1.0) * p).round() as usize]);
    (at(0.5), at(0.99))
}

/// Each name with the p50 and p99 of its samples, milliseconds.
fn named_percentiles<'a>(
    names: &[&'a str],
    samples: &mut [Vec<Duration>],
) -> Vec<(&'a str, f64, f64)> {
    names
        .iter()
        .zip(samples)
        .map(|(name, s)| {
            let (p50, p99) = percentiles(s);
            (*name, p50, p99)
        })
        .collect()
}

/// The queries: the bench's unique queries when the store has them (title phrases
/// no cache has seen), else its query log.
fn queries(store: &Path) -> Vec<String> {
    let file = ["unique-queries.txt", "queries.txt"]
        .iter()
        .map(|f| store.join(f))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no queries in {}", store.display()));
    std::fs::read_to_string(&file)
        .expect("read queries")
        .lines()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .take(QUERIES + 20)
        .map(|q| {
            q.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase()
        })
        .collect()
}

/// The vector index: the snapshot a mesh's embedding replica saved, or the catalog
/// embedded here.
fn vector_index(encoder: &Encoder, catalog: &Path) -> VectorIndex {
    if let Some(dir) = env_path("RANKMESH_BENCH_INDEX") {
        return VectorIndex::load(&dir, IndexParams::default()).expect("load the index snapshot");
    }
    eprintln!("embedding the catalog (set RANKMESH_BENCH_INDEX to reuse a snapshot)");
    let items = rankmesh_embedding::catalog::read_jsonl(catalog).expect("catalog");
    let texts: Vec<String> = items
        .iter()
        .map(rankmesh_embedding::catalog::text)
        .collect();
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut vectors = vec![Vec::new(); texts.len()];
    for chunk in order.chunks(32) {
        let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
        for (&i, e) in chunk.iter().zip(encoder.encode(&batch).expect("encode")) {
            vectors[i] = e.vector;
        }
    }
    let entries = items
        .iter()
        .zip(&texts)
        .zip(vectors)
        .map(|((item, text), v)| (rankmesh_embedding::catalog::meta(item, text), v))
        .collect();
    VectorIndex::build(encoder.dim(), IndexParams::default(), "floor", entries)
        .expect("build index")
}

/// Imports the catalog file into a fresh redb store, as `meshctl up` does.
async fn feature_service(catalog: &Path, dir: &Path) -> (Features<RedbStore>, Arc<LexicalIndex>) {
    let store = RedbStore::open(&dir.join("features.redb")).expect("redb");
    let lexical = Arc::new(LexicalIndex::new().expect("lexical index"));
    let f = Features::new(store, Arc::clone(&lexical));
    let data = std::fs::read(catalog).expect("read catalog");
    let n = data.len().div_ceil(1 << 20);
    let chunks: Vec<Result<pb::ImportCatalogChunk, tonic::Status>> = data
        .chunks(1 << 20)
        .enumerate()
        .map(|(i, c)| {
            Ok(pb::ImportCatalogChunk {
                format: if i == 0 {
                    pb::CatalogFormat::Jsonl as i32
                } else {
                    0
                },
                data: c.to_vec(),
                replace: i == 0,
                last: i + 1 == n,
            })
        })
        .collect();
    f.import(futures::stream::iter(chunks))
        .await
        .expect("import catalog");
    (f, lexical)
}

/// The features stage's parts for one query and its candidates, each timed alone:
/// store reads (rows, popularity), BM25 part scores, the matrix.
async fn features_parts(
    features: &Features<RedbStore>,
    lexical: &LexicalIndex,
    query: &str,
    ids: &[String],
) -> [Duration; 3] {
    let t = Instant::now();
    let items: Vec<_> = features
        .store()
        .get_items(ids)
        .await
        .expect("items")
        .into_iter()
        .flatten()
        .collect();
    let known: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    let popularity = features
        .store()
        .popularity(&known)
        .await
        .expect("popularity");
    let read = t.elapsed();
    let t = Instant::now();
    let scores = lexical.scores_for(query, &known).expect("scores");
    let bm25 = t.elapsed();
    let t = Instant::now();
    let rows = rankmesh_feature::features::matrix(query, &items, &scores, &popularity, None);
    std::hint::black_box(rows);
    [read, bm25, t.elapsed()]
}

/// Texts/s of the encoder at its best batch size on `queries`.
fn encoder_best(encoder: &Encoder, queries: &[String]) -> (usize, f64) {
    [1, 4, 8, 16, 32, 64]
        .into_iter()
        .map(|batch| {
            let start = Instant::now();
            let mut done = 0;
            while start.elapsed() < Duration::from_secs(2) {
                let from = done % queries.len();
                let texts: Vec<String> = queries
                    .iter()
                    .cycle()
                    .skip(from)
                    .take(batch)
                    .cloned()
                    .collect();
                encoder.encode(&texts).expect("encode");
                done += batch;
            }
            (batch, done as f64 / start.elapsed().as_secs_f64())
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("batch sizes")
}

/// Per-stage samples, in the order the stages run.
const STAGES: [&str; 6] = ["encode", "hnsw", "bm25", "fuse", "features", "rank"];
/// The features stage's parts.
const PARTS: [&str; 3] = ["features.read", "features.bm25", "features.matrix"];

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let store = env_path("RANKMESH_BENCH_STORE").unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.rankmesh/bench/store-50000")
    });
    let catalog = store.join("catalog.jsonl");
    let queries = queries(&store);
    // One session with the process's CPU budget, as a replica alone on this machine.
    let onnx = OnnxConfig::default();
    let encoder = Encoder::load(&models().join("encoder"), Variant::Int8, 256, &onnx)
        .expect("load encoder (scripts/setup)");
    let ranker = Ranker::load(&models().join("ranker"), 1, &onnx).expect("load ranker");
    let index = vector_index(&encoder, &catalog);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (features, lexical_index) = rt.block_on(feature_service(&catalog, dir.path()));

    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); STAGES.len()];
    let mut parts: Vec<Vec<Duration>> = vec![Vec::new(); PARTS.len()];
    let mut fused_sizes = Vec::new();
    for (n, q) in queries.iter().enumerate() {
        let mut times = [Duration::ZERO; STAGES.len()];
        let t = Instant::now();
        let vector = encoder.encode(std::slice::from_ref(q)).expect("encode");
        times[0] = t.elapsed();
        let t = Instant::now();
        let dense = index
            .search(&vector[0].vector, CANDIDATES, &Filter::default())
            .expect("hnsw");
        times[1] = t.elapsed();
        let t = Instant::now();
        let lexical = rt
            .block_on(features.lexical_candidates(pb::LexicalCandidatesRequest {
                query: q.clone(),
                k: CANDIDATES as u32,
                filters: None,
            }))
            .expect("bm25");
        times[2] = t.elapsed();
        let t = Instant::now();
        let (mut candidates, stats) = fuse(
            &[
                Retrieved {
                    source: "dense",
                    items: dense.into_iter().map(|h| (h.id, h.similarity)).collect(),
                },
                Retrieved {
                    source: "lexical",
                    items: lexical
                        .items
                        .into_iter()
                        .map(|i| (i.item_id, i.score))
                        .collect(),
                },
            ],
            &Fusion::default(),
        );
        times[3] = t.elapsed();
        let t = Instant::now();
        let f = rt
            .block_on(features.get_features(pb::GetFeaturesRequest {
                user_id: String::new(),
                query: q.clone(),
                candidate_ids: candidates.iter().map(|c| c.id.clone()).collect(),
                with_display: true,
            }))
            .expect("features");
        times[4] = t.elapsed();
        let ids: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
        let apart = rt.block_on(features_parts(&features, &lexical_index, q, &ids));
        let t = Instant::now();
        let width = f.schema.as_ref().map_or(0, |s| s.columns.len());
        let rows = append_retrieval(&mut candidates, &stats, &f.item_ids, &f.values, width);
        ranker.score(rows).expect("rank");
        times[5] = t.elapsed();
        if n >= 20 {
            fused_sizes.push(candidates.len());
            for (s, t) in samples.iter_mut().zip(times) {
                s.push(t);
            }
            for (s, t) in parts.iter_mut().zip(apart) {
                s.push(t);
            }
        }
    }
    let (best_batch, encoder_rate) = encoder_best(&encoder, &queries);

    let stages = named_percentiles(&STAGES, &mut samples);
    let sum_p50: f64 = stages.iter().map(|s| s.1).sum();
    let parts = named_percentiles(&PARTS, &mut parts);
    let mean_fused = fused_sizes.iter().sum::<usize>() as f64 / fused_sizes.len().max(1) as f64;
    if json {
        let stage_map: serde_json::Map<String, serde_json::Value> = stages
            .iter()
            .chain(&parts)
            .map(|(n, p50, p99)| {
                (
                    (*n).to_owned(),
                    serde_json::json!({"p50_ms": p50, "p99_ms": p99}),
                )
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "items": index.len(),
                "queries": fused_sizes.len(),
                "mean_candidates": mean_fused,
                "stages": stage_map,
                "stage_sum_p50_ms": sum_p50,
                "encoder_best_batch": best_batch,
                "encoder_texts_per_s": encoder_rate,
            })
        );
        return;
    }
    println!(
        "\n== in-process floor of one Search: {} items, {} queries, {mean_fused:.0} fused candidates on average",
        index.len(),
        fused_sizes.len()
    );
    println!("{:<10} {:>9} {:>9}", "stage", "p50 ms", "p99 ms");
    for (name, p50, p99) in &stages {
        println!("{name:<10} {p50:>9.3} {p99:>9.3}");
    }
    println!("{:<10} {sum_p50:>9.3}", "sum");
    for (name, p50, p99) in &parts {
        println!("{name:<16} {p50:>9.3} {p99:>9.3}   (alone, outside the sum)");
    }
    println!("encoder best throughput: {encoder_rate:.0} queries/s at batch {best_batch}");
}
