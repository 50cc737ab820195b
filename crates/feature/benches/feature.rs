//! Feature service benchmarks, both backends in one run (in-process service layer,
//! no gRPC): catalog import rate, durable RecordEvent throughput at concurrency 32,
//! and GetFeatures latency for 200 candidates.
//!
//!   cargo bench -p rankmesh-feature --bench feature        (RANKMESH_BENCH_ITEMS=50000)
//!
//! Redis runs as a real redis-server with appendfsync always (durable acks, like redb).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rankmesh_feature::lexical::LexicalIndex;
use rankmesh_feature::service::Features;
use rankmesh_feature::store::{FeatureStore, RedbStore, RedisStore};
use rankmesh_proto::pb::feature::v1 as pb;

const CATS: &[&str] = &[
    "Electronics > Audio > Headphones",
    "Electronics > Computers > Laptops",
    "Home > Kitchen > Cookware",
    "Sports > Footwear > Running",
    "Fashion > Clothing > Jackets",
    "Toys > Games > Board Games",
];
const NOUNS: &[&str] = &[
    "headphones",
    "laptop",
    "frying pan",
    "running shoes",
    "rain jacket",
    "board game",
];
const ADJ: &[&str] = &[
    "wireless",
    "compact",
    "premium",
    "lightweight",
    "classic",
    "waterproof",
    "smart",
];

fn catalog(n: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..n {
        let c = i % CATS.len();
        let row = serde_json::json!({
            "id": format!("p{i:07}"),
            "title": format!("Brand{} {} {} model {}", i % 50, ADJ[i % ADJ.len()], NOUNS[c], i % 997),
            "description": format!("A {} {} for everyday use, item {i}.", ADJ[(i / 7) % ADJ.len()], NOUNS[c]),
            "category": CATS[c],
            "brand": format!("Brand{}", i % 50),
            "price": (i % 500) as f64 + 9.99,
            "rating": 3.0 + (i % 20) as f64 / 10.0,
            "review_count": i % 1000,
        });
        out.push_str(&row.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

async fn run<S: FeatureStore + Clone>(name: &str, store: S, data: &[u8], n: usize) {
    let f = Arc::new(Features::new(
        store,
        Arc::new(LexicalIndex::new().expect("index")),
    ));
    // Import.
    let n_chunks = data.len().div_ceil(1 << 20);
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
                last: i + 1 == n_chunks,
            })
        })
        .collect();
    let t = Instant::now();
    let r = f
        .import(futures::stream::iter(chunks))
        .await
        .expect("import");
    let import_s = t.elapsed().as_secs_f64();
    assert_eq!(r.imported as usize, n);

    // Durable events at concurrency 32.
    let events = 4000;
    let t = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|w| {
            let f = Arc::clone(&f);
            tokio::spawn(async move {
                for i in (w..events).step_by(32) {
                    let req = pb::RecordEventRequest {
                        event_id: format!("{i}"),
                        user_id: format!("u{}", i % 500),
                        item_id: format!("p{:07}", (i * 7919) % n),
                        r#type: pb::EventType::View as i32,
                        timestamp_ms: 0,
                    };
                    f.record_event(req).await.expect("record");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let ev_rate = events as f64 / t.elapsed().as_secs_f64();

    // GetFeatures, 200 candidates, a known user.
    let mut lat = Vec::new();
    for q in 0..300usize {
        let ids: Vec<String> = (0..200)
            .map(|j| format!("p{:07}", (q * 131 + j * 37) % n))
            .collect();
        let req = pb::GetFeaturesRequest {
            user_id: format!("u{}", q % 500),
            query: format!("{} {}", ADJ[q % ADJ.len()], NOUNS[q % NOUNS.len()]),
            candidate_ids: ids,
            // As Search asks: rows and display fields in one call.
            with_display: true,
        };
        let t = Instant::now();
        let r = f.get_features(req).await.expect("features");
        lat.push(t.elapsed());
        assert_eq!(r.item_ids.len(), 200);
    }
    lat.sort();
    println!(
        "{name:<6} {:>12.0} {:>16.0} {:>12.2} {:>12.2}",
        n as f64 / import_s,
        ev_rate,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
}

fn main() {
    let n: usize = std::env::var("RANKMESH_BENCH_ITEMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let data = catalog(n);
        println!(
            "\n== feature service, {n} items ({:.1} MB JSONL), in-process",
            data.len() as f64 / 1e6
        );
        println!(
            "{:<6} {:>12} {:>16} {:>12} {:>12}",
            "store", "import it/s", "events/s (c=32)", "GF200 p50ms", "GF200 p99ms"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let redb = RedbStore::open(&dir.path().join("bench.redb")).expect("redb");
        run("redb", redb, &data, n).await;
        let redis = rankmesh_tests::redis::RedisServer::start().await;
        let store = RedisStore::open(&redis.url()).expect("redis");
        run("redis", store, &data, n).await;
    });
}
