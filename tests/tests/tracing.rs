//! One trace per request across services: a search through `meshctl up`'s mesh
//! (which runs the embedded trace collector) is read back from the collector's
//! Jaeger API by the `trace_id` in the reply, and has spans from ranking, embedding
//! and feature, connected into one tree: each server span hangs under the ranking
//! attempt that called it. `meshctl trace` prints that tree. And every service's
//! `/metrics` has the per-RPC counters by code and latency histograms that search
//! produced, with the encoder's batch sizes and query-cache lookups.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use rankmesh_tests::eventually;
use rankmesh_tests::mesh::LocalMesh;

struct Span {
    service: String,
    name: String,
    parent: Option<String>,
    tags: HashMap<String, serde_json::Value>,
}

fn spans(doc: &serde_json::Value) -> HashMap<String, Span> {
    let trace = &doc["data"][0];
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .map(|s| {
                    let parent = s["references"].as_array().and_then(|r| {
                        r.iter()
                            .find(|r| r["refType"] == "CHILD_OF")
                            .and_then(|r| r["spanID"].as_str())
                            .map(str::to_owned)
                    });
                    let process = s["processID"].as_str().unwrap_or_default();
                    let tags = s["tags"]
                        .as_array()
                        .map(|t| {
                            t.iter()
                                .filter_map(|t| {
                                    Some((t["key"].as_str()?.to_owned(), t["value"].clone()))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        s["spanID"].as_str().unwrap_or_default().to_owned(),
                        Span {
                            service: processes[process]["serviceName"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            name: s["operationName"].as_str().unwrap_or_default().to_owned(),
                            parent,
                            tags,
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A numeric tag (exporters may carry numbers recorded late as strings).
fn int(tags: &HashMap<String, serde_json::Value>, key: &str) -> i64 {
    match tags.get(key) {
        Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

#[tokio::test]
async fn a_search_is_one_trace_across_ranking_embedding_and_feature() {
    let mesh = LocalMesh::up(1, &[]);
    let state = mesh.state.path().display().to_string();
    let reply = mesh.meshctl(&[
        "search",
        "wireless headphones",
        "--json",
        "--etcd",
        &mesh.etcd,
    ]);
    let reply: serde_json::Value = serde_json::from_str(&reply).expect("search JSON");
    let trace_id = reply["trace_id"].as_str().expect("trace_id").to_owned();
    assert_eq!(trace_id.len(), 32, "{trace_id}");

    // Spans are exported in batches (every 500 ms): wait until every service's are in.
    let doc = eventually(
        Duration::from_secs(30),
        "the trace with spans from ranking, embedding and feature",
        || {
            let (state, trace_id) = (state.clone(), trace_id.clone());
            async move {
                let out = std::process::Command::new(rankmesh_tests::process::binary("meshctl"))
                    .args(["trace", &trace_id, "--json", "--state-dir", &state])
                    .output()
                    .ok()?;
                let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let spans = spans(&doc);
                let services: BTreeSet<&str> = spans.values().map(|s| s.service.as_str()).collect();
                let servers = spans
                    .values()
                    .filter(|s| s.name.contains("Service/"))
                    .count();
                // ranking's Search plus at least Retrieve, LexicalCandidates and
                // GetFeatures (which also answers the display fields) on the
                // other two.
                (["embedding", "feature", "ranking"]
                    .iter()
                    .all(|s| services.contains(s))
                    && servers >= 4)
                    .then_some(doc)
            }
        },
    )
    .await;
    let spans = spans(&doc);

    // One root: ranking's server span for Search (the CLI sent no trace context).
    let roots: Vec<&Span> = spans.values().filter(|s| s.parent.is_none()).collect();
    assert_eq!(roots.len(), 1, "one root span");
    assert_eq!(roots[0].service, "ranking");
    assert_eq!(roots[0].name, "rankmesh.ranking.v1.RankingService/Search");
    // Connected: every parent is in the trace.
    for (id, s) in &spans {
        if let Some(p) = &s.parent {
            assert!(
                spans.contains_key(p),
                "span {id} ({}) has a missing parent",
                s.name
            );
        }
    }
    // Each embedding and feature server span is the child of a ranking attempt.
    let downstream: Vec<&Span> = spans
        .values()
        .filter(|s| s.service != "ranking" && s.name.contains("Service/"))
        .collect();
    assert!(downstream.len() >= 3, "embedding and feature RPCs traced");
    for s in &downstream {
        let parent = &spans[s.parent.as_ref().expect("has a parent")];
        assert!(
            parent.service == "ranking" && parent.tags.contains_key("attempt"),
            "{} hangs under a ranking attempt, not under {} [{}]",
            s.name,
            parent.name,
            parent.service
        );
        assert!(
            s.tags.contains_key("rpc.grpc.status_code")
                && int(&s.tags, "rpc.grpc.status_code") == 0,
            "{} answered OK: {:?}",
            s.name,
            s.tags
        );
    }
    // Stage attributes.
    let by_name = |n: &str| spans.values().find(|s| s.name == n);
    let retrieve = by_name("stage.retrieve").expect("stage.retrieve span");
    assert!(
        int(&retrieve.tags, "candidates") > 0,
        "candidates counted: {:?}",
        retrieve.tags
    );
    let rank = by_name("stage.rank").expect("stage.rank span");
    assert!(
        rank.tags["models"]
            .as_str()
            .unwrap_or_default()
            .contains("ranker:"),
        "the ranker version is on the rank stage"
    );
    let batch = spans
        .values()
        .find(|s| s.name == "batch" && s.service == "embedding")
        .expect("the encoder's batch span");
    assert!(int(&batch.tags, "batch_size") >= 1);
    assert!(
        spans.values().any(|s| s.tags.contains_key("cache")),
        "the query-vector cache lookup is traced"
    );

    // The terminal view.
    let tree = mesh.meshctl(&["trace", &trace_id, "--state-dir", &state]);
    eprintln!("{tree}");
    assert!(
        tree.contains("rankmesh.ranking.v1.RankingService/Search [ranking]"),
        "{tree}"
    );
    assert!(
        tree.contains("[embedding]") && tree.contains("[feature]"),
        "{tree}"
    );
}
