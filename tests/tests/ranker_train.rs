//! `meshctl ranker train` on a slice of real shopper judgments (the shared Home
//! Depot set: 300 queries over 2,000 products): it trains, publishes into a live
//! mesh and is promoted there; the live ranking replica then serves it; and the
//! rows it trained on are the rows a live Search feeds the ranker (no train/serve
//! skew). Quality figures belong to the benchmark report (README), not here.
//!
//! The set lives outside the repository, so the test is `#[ignore]`d: scripts/test
//! runs it (`--ignored`) where `$RANKMESH_HOMEDEPOT_DIR` (default
//! `../shared/data/homedepot`) holds it, and always where `CI=true`, where a missing
//! set fails it. By hand: `cargo test --test ranker_train -- --ignored`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rankmesh_client::RankingClient;
use rankmesh_common::discovery::Resolver;
use rankmesh_proto::pb::ranking::v1 as pb;
use rankmesh_tests::catalog::homedepot_slice;
use rankmesh_tests::mesh::LocalMesh;
use rankmesh_tests::{eventually, free_port_block};

/// How far one item's dense similarity may move between two meshes. Each mesh
/// embeds with INT8, whose activations are quantised per batch, so an item's
/// vector moves with the items it was embedded beside: over 1,295 rows the gap
/// was 0.0022 on average, 0.0092 at p90 and 0.026 at most, and one run met 0.054
/// (a bound of 0.05 failed CI). One row's gap is noise with a long tail ...
const MAX_SIMILARITY_GAP: f32 = 0.15;
/// ... their mean is not: a mean past this is skew.
const MAX_MEAN_SIMILARITY_GAP: f32 = 0.01;

/// Rows of one split as written by the trainer: (query id, item) -> row.
fn read_rows(dir: &Path, split: &str, width: usize) -> HashMap<(usize, String), Vec<f32>> {
    let values = std::fs::read(dir.join(format!("{split}.f32"))).expect("rows");
    let floats: Vec<f32> = values
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut index = csv::Reader::from_path(dir.join(format!("{split}.csv"))).expect("index");
    index
        .records()
        .enumerate()
        .map(|(i, rec)| {
            let rec = rec.expect("row");
            (
                (rec[0].parse().expect("qid"), rec[2].to_owned()),
                floats[i * width..(i + 1) * width].to_vec(),
            )
        })
        .collect()
}

fn queries(dir: &Path, split: &str) -> Vec<(usize, String)> {
    let mut r = csv::Reader::from_path(dir.join("queries.csv")).expect("queries.csv");
    r.records()
        .map(|rec| rec.expect("row"))
        .filter(|rec| &rec[1] == split)
        .map(|rec| (rec[0].parse().expect("qid"), rec[2].to_owned()))
        .collect()
}

fn columns(dir: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("schema.json")).expect("schema"))
            .expect("json");
    v["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c.as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Home Depot set: set RANKMESH_HOMEDEPOT_DIR; scripts/test runs it where the set is"]
async fn trains_on_real_judgments_serves_live_and_has_no_skew() {
    let work = tempfile::tempdir().expect("dir");
    let (catalog, judgments) = homedepot_slice(work.path(), 300, 2000);
    let mesh = LocalMesh::up_with_catalog(1, &catalog, &["--no-traces"]);
    let out = work.path().join("out");
    let base = free_port_block(8);
    let trained = mesh.meshctl(&[
        "ranker",
        "train",
        "--catalog",
        catalog.to_str().expect("utf-8"),
        "--judgments",
        judgments.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--work",
        work.path().join("train").to_str().expect("utf-8"),
        "--mesh-etcd-port",
        &base.to_string(),
        "--mesh-base-port",
        &(base + 2).to_string(),
        "--publish",
        "--promote",
        "--etcd",
        &mesh.etcd,
        "--state-dir",
        mesh.state.path().to_str().expect("utf-8"),
    ]);
    assert!(trained.contains("published ranker"), "{trained}");

    // metrics.json: every variant on dev, with the metric definitions.
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).expect("metrics.json"))
            .expect("json");
    for v in ["lexical", "dense", "hybrid", "full"] {
        for m in ["ndcg@10", "mrr", "recall@100"] {
            let x = metrics["dev"]["variants"][v][m]
                .as_f64()
                .unwrap_or_else(|| panic!("{v} {m} in {metrics}"));
            assert!((0.0..=1.0).contains(&x), "{v} {m} = {x}");
        }
    }
    assert!(
        metrics["dev"]["gain"]
            .as_str()
            .expect("gain")
            .contains("gain = grade")
    );
    assert_eq!(metrics["dev"]["full_without_ranker"], 0, "{metrics}");
    let chosen = metrics["chosen"].as_str().expect("chosen");
    assert!(["lambdamart", "mlp"].contains(&chosen), "{chosen}");
    assert!(metrics["models"]["lambdamart"]["dev_ndcg@10"].is_number());
    assert!(metrics["models"]["mlp"]["dev_ndcg@10"].is_number());

    // Its dev figures travel in the manifest.
    let listed = mesh.meshctl(&["model", "--etcd", &mesh.etcd, "list", "ranker"]);
    assert!(listed.contains("dev_ndcg@10="), "{listed}");
    assert!(listed.contains(&format!("algo={chosen}")), "{listed}");

    // The live replica hot-swaps the published ranker (v2: v1 is meshctl up's).
    let ranking = RankingClient::new(
        Resolver::fixed("ranking", &[mesh.grpc("ranking")]),
        Duration::from_secs(10),
    );
    let rows = out.join("rows");
    let width = columns(&rows).len();
    let dev = queries(&rows, "dev");
    let probe = dev[0].1.clone();
    eventually(Duration::from_secs(60), "the trained ranker serves", || {
        let ranking = ranking.clone();
        let q = probe.clone();
        async move {
            let r = ranking
                .search(
                    pb::SearchRequest {
                        query: q,
                        k: 5,
                        ..Default::default()
                    },
                    Duration::from_secs(10),
                )
                .await
                .ok()?;
            r.models
                .iter()
                .any(|m| m.name == "ranker" && m.version == 2)
                .then_some(())
        }
    })
    .await;

    // No skew: what a live Search feeds the ranker is what the trainer computes
    // (`meshctl features dump`, the training featurizer) on the same mesh, bit for
    // bit; and the private training mesh's rows agree with it too, the dense
    // columns within INT8 batching noise.
    let dump = work.path().join("dump");
    let dev_labels = out.join("judgments-dev.csv");
    mesh.meshctl(&[
        "features",
        "dump",
        "--labels",
        dev_labels.to_str().expect("utf-8"),
        "--out",
        dump.to_str().expect("utf-8"),
        "--etcd",
        &mesh.etcd,
    ]);
    assert_eq!(columns(&dump), columns(&rows));
    let served_rows = read_rows(&dump, "all", width);
    let trained_rows = read_rows(&rows, "dev", width);
    let dump_queries: HashMap<String, usize> = queries(&dump, "all")
        .into_iter()
        .map(|(q, text)| (text, q))
        .collect();
    let cols = columns(&rows);
    // Across the two meshes, the feature service's columns must agree. Ranking's
    // retrieval columns (the last eight) are checked bit for bit on the same mesh
    // above, not across meshes: each mesh embeds with INT8, whose vectors move
    // slightly with the batch they were computed in, and breaks BM25 ties by its
    // own document order, so a candidate's place in a list (found or not, rank,
    // fused score, the list's floor) can move. Where both meshes found an item
    // densely, its similarity must still agree closely.
    let served_columns = cols.len() - 8;
    let col = |name: &str| cols.iter().position(|c| c == name).expect("column");
    let (found, similarity) = (col("dense_found"), col("dense_similarity"));
    let (mut compared, mut exact) = (0usize, 0usize);
    let mut similarity_gaps: Vec<f32> = Vec::new();
    for (train_qid, q) in dev.iter().take(20) {
        let r = ranking
            .search(
                pb::SearchRequest {
                    query: q.clone(),
                    k: 100,
                    explain: true,
                    ..Default::default()
                },
                Duration::from_secs(10),
            )
            .await
            .expect("search");
        let schema = r.feature_schema.expect("explain gives the schema");
        assert_eq!(schema.columns, cols, "served columns are the trained ones");
        for item in &r.items {
            assert_eq!(item.features.len(), width, "explain gives each row");
            let dumped = &served_rows[&(dump_queries[q], item.item_id.clone())];
            assert_eq!(
                &item.features, dumped,
                "{q:?} {}: Search vs trainer",
                item.item_id
            );
            if let Some(t) = trained_rows.get(&(*train_qid, item.item_id.clone())) {
                for (i, c) in cols.iter().enumerate().take(served_columns) {
                    assert!(
                        (t[i] - item.features[i]).abs() <= 1e-5 * t[i].abs().max(1.0),
                        "{q:?} {} column {c}: trained {} served {}",
                        item.item_id,
                        t[i],
                        item.features[i]
                    );
                }
                if t[found] == 1.0 && item.features[found] == 1.0 {
                    let gap = (t[similarity] - item.features[similarity]).abs();
                    assert!(
                        gap <= MAX_SIMILARITY_GAP,
                        "{q:?} {}: dense similarity trained {} served {}",
                        item.item_id,
                        t[similarity],
                        item.features[similarity]
                    );
                    similarity_gaps.push(gap);
                }
                exact += usize::from(*t == item.features);
                compared += 1;
            }
        }
    }
    assert!(compared >= 200, "compared {compared} rows");
    similarity_gaps.sort_by(f32::total_cmp);
    let mean = similarity_gaps.iter().sum::<f32>() / similarity_gaps.len().max(1) as f32;
    let p90 = similarity_gaps
        .get(similarity_gaps.len() * 9 / 10)
        .copied()
        .unwrap_or(0.0);
    println!(
        "dense similarity, trained vs served, {} rows: mean gap {mean:.4}, p90 {p90:.4}, max {:.4}",
        similarity_gaps.len(),
        similarity_gaps.last().copied().unwrap_or(0.0)
    );
    assert!(
        similarity_gaps.len() >= 50 && mean <= MAX_MEAN_SIMILARITY_GAP,
        "dense similarity drifts between meshes: mean gap {mean} over {} rows",
        similarity_gaps.len()
    );
    println!("{compared} served rows compared with training rows, {exact} identical");

    // meshctl eval on the live mesh: fractional grades, every variant.
    let eval = mesh.meshctl(&[
        "eval",
        "--labels",
        dev_labels.to_str().expect("utf-8"),
        "--json",
        "--etcd",
        &mesh.etcd,
    ]);
    let eval: serde_json::Value = serde_json::from_str(eval.trim()).expect("eval json");
    assert_eq!(eval["full_without_ranker"], 0, "{eval}");
    assert!(eval["candidate_recall"].as_f64().expect("candidate recall") > 0.0);
}
