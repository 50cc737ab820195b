//! Embedding benchmarks, each side by side with its baseline in the same run and
//! reported as a ratio (this machine is small and noisy: absolute numbers drift,
//! ratios much less).
//!
//!   cargo bench -p rankmesh-embedding --bench embedding -- [encoder] [service] [retrieve] [bulk]
//!
//! - encoder: texts/s at concurrency 16 through the dynamic batcher vs one text per
//!   model call, for INT8 and FP32; and INT8 vs FP32.
//! - service: Embed latency through the gRPC service (loopback) vs calling the
//!   encoder in-process on the same input (the floor); and Embed throughput with 16
//!   callers each sending one text at a time (the service batches them) vs the
//!   encoder in-process at its best batch size on the same texts.
//! - retrieve: Retrieve p50/p99 and recall@10 against exact search at 50k and 500k
//!   items (`RANKMESH_BENCH_ITEMS=50000,500000`), on real embeddings of generated
//!   product titles (`RANKMESH_BENCH_REAL` of them; the rest are near-duplicates).
//!
//! - bulk: catalog texts of mixed length (a title, or a title and a description),
//!   embedded as BuildIndex does (sorted by length, batches of 32, each in length
//!   groups) vs as it did before (arrival order, each batch padded to its
//!   longest), and vs Python onnxruntime on the same texts (`bench/peer/
//!   bulk_embed.py`, run with the venv's python when there is one).
//!
//! Needs `ORT_DYLIB_PATH` and the exported models (`scripts/setup`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rankmesh_common::batcher::{BatchConfig, Batcher};
use rankmesh_common::onnx::OnnxConfig;
use rankmesh_embedding::encoder::{Encoder, Variant};
use rankmesh_embedding::index::{Filter, IndexParams, ItemMeta, VectorIndex};

const QUERIES: &[&str] = &[
    "wireless noise cancelling headphones",
    "red running shoes size 42",
    "non-stick frying pan induction",
    "gaming laptop 32gb ram",
    "kids building blocks",
    "espresso machine with milk frother",
    "waterproof hiking jacket for women",
    "organic green tea bags",
];

fn models() -> PathBuf {
    std::env::var_os("RANKMESH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
        .join("encoder")
}

fn onnx() -> OnnxConfig {
    OnnxConfig {
        sessions: 1,
        intra_threads: 2,
        ..OnnxConfig::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Texts/s embedding `n` texts one model call per text.
fn sequential(enc: &Encoder, n: usize) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let t = QUERIES[i % QUERIES.len()].to_owned();
        enc.encode(&[t]).expect("encode");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Texts/s with `concurrency` callers each submitting single texts to the batcher.
async fn batched(enc: Arc<Encoder>, n: usize, concurrency: usize) -> (f64, f64) {
    let config = BatchConfig {
        max_batch: 32,
        max_wait_us: 2_000,
        queue_capacity: 10_000,
        workers: 1,
    };
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let batcher = Batcher::new("bench", config, move |texts: Vec<String>| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        enc.encode(&texts).map_err(|e| e.to_string())
    });
    let start = Instant::now();
    let per = n / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|c| {
            let b = batcher.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    let t = QUERIES[(c + i) % QUERIES.len()].to_owned();
                    b.submit(vec![t]).await.expect("submit");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let rate = (per * concurrency) as f64 / start.elapsed().as_secs_f64();
    let mean_batch =
        (per * concurrency) as f64 / calls.load(std::sync::atomic::Ordering::Relaxed) as f64;
    (rate, mean_batch)
}

async fn bench_encoder() {
    println!("\n== encoder throughput (texts/s), 2 intra-op threads, 1 session");
    println!(
        "{:<6} {:>14} {:>22} {:>10} {:>12}",
        "model", "batch=1", "batched (conc. 16)", "ratio", "mean batch"
    );
    let mut rates = Vec::new();
    for variant in [Variant::Int8, Variant::Fp32] {
        let enc = Arc::new(Encoder::load(&models(), variant, 256, &onnx()).expect("load encoder"));
        // Warm up: first calls allocate.
        sequential(&enc, 8);
        let seq = sequential(&enc, 96);
        let (bat, mean_batch) = batched(Arc::clone(&enc), 512, 16).await;
        println!(
            "{:<6} {:>14.1} {:>22.1} {:>9.2}x {:>12.1}",
            variant.dir_name(),
            seq,
            bat,
            bat / seq,
            mean_batch
        );
        rates.push((seq, bat));
    }
    println!(
        "int8 vs fp32: batch=1 {:.2}x, batched {:.2}x",
        rates[0].0 / rates[1].0,
        rates[0].1 / rates[1].1
    );
}

async fn bench_service() {
    use rankmesh_proto::pb::embedding::v1 as pb;
    println!("\n== Embed latency, one text: gRPC service on loopback vs in-process encoder (int8)");
    let mut config = rankmesh_embedding::Config {
        model: rankmesh_embedding::ModelConfig {
            dir: models(),
            variant: Variant::Int8,
            ..Default::default()
        },
        onnx: onnx(),
        ..Default::default()
    };
    // In-process on loopback: plaintext, asked for (a service without an identity
    // refuses to serve otherwise).
    config.server.tls.insecure = true;
    let listeners = rankmesh_common::server::Listeners::bind(&config.server)
        .await
        .expect("bind");
    let addr = format!("http://{}", listeners.grpc_addr().expect("addr"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rankmesh_embedding::run(config, listeners, async {
        let _ = stop_rx.await;
    }));
    // Through the SDK, as a caller would: one replica, so no balancing choice.
    let bare = addr.trim_start_matches("http://").to_owned();
    let client = rankmesh_client::EmbeddingClient::new(
        rankmesh_client::Resolver::fixed("embedding", &[bare]),
        Duration::from_secs(5),
    );
    let deadline = rankmesh_client::Deadline::Default;
    while !server.is_finished()
        && client
            .embed(
                pb::EmbedRequest {
                    texts: vec!["warm".into()],
                },
                deadline,
            )
            .await
            .is_err()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !server.is_finished(),
        "the embedding service stopped: {:?}",
        server.await
    );
    let enc = Encoder::load(&models(), Variant::Int8, 256, &onnx()).expect("load");
    let n = 300;
    let mut svc = Vec::with_capacity(n);
    let mut floor = Vec::with_capacity(n);
    // Interleave the two so machine noise hits both alike.
    for i in 0..n + 20 {
        let t = QUERIES[i % QUERIES.len()].to_owned();
        let s = Instant::now();
        client
            .embed(
                pb::EmbedRequest {
                    texts: vec![t.clone()],
                },
                deadline,
            )
            .await
            .expect("embed");
        let a = s.elapsed();
        let s = Instant::now();
        enc.encode(&[t]).expect("encode");
        let b = s.elapsed();
        if i >= 20 {
            svc.push(a);
            floor.push(b);
        }
    }
    svc.sort();
    floor.sort();
    println!("{:<12} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    println!(
        "{:<12} {:>10.3} {:>10.3}",
        "service",
        ms(percentile(&svc, 0.5)),
        ms(percentile(&svc, 0.99))
    );
    println!(
        "{:<12} {:>10.3} {:>10.3}",
        "in-process",
        ms(percentile(&floor, 0.5)),
        ms(percentile(&floor, 0.99))
    );
    println!(
        "service / in-process: p50 {:.2}x, p99 {:.2}x",
        percentile(&svc, 0.5).as_secs_f64() / percentile(&floor, 0.5).as_secs_f64(),
        percentile(&svc, 0.99).as_secs_f64() / percentile(&floor, 0.99).as_secs_f64()
    );

    // Throughput: 16 callers through the service, one text per call, against the
    // encoder's best batch in-process; alternated twice so drift hits both.
    println!(
        "\n== Embed throughput, one text per call: 16 concurrent callers vs the encoder's best batch"
    );
    let texts: Vec<String> = (0..4096).map(|i| product(i).0).collect();
    let mut pairs = Vec::new();
    for _ in 0..2 {
        let service = embed_concurrently(&client, &texts, 16, Duration::from_secs(5)).await;
        let (batch, best) = best_batch(&enc, &texts);
        println!(
            "service at concurrency 16: {service:>7.1} texts/s | in-process best batch ({batch}): {best:>7.1} texts/s | ratio {:.2}x",
            service / best
        );
        pairs.push(service / best);
    }
    println!(
        "service / in-process best batch: {:.2}x (mean of {})",
        pairs.iter().sum::<f64>() / pairs.len() as f64,
        pairs.len()
    );
    let _ = stop_tx.send(());
    let _ = server.await;
}

/// Texts/s through `client` with `concurrency` callers sending one text per call,
/// for `run`.
async fn embed_concurrently(
    client: &rankmesh_client::EmbeddingClient,
    texts: &[String],
    concurrency: usize,
    run: Duration,
) -> f64 {
    use rankmesh_proto::pb::embedding::v1 as pb;
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, texts) = (client.clone(), Arc::clone(&next), texts.to_vec());
            tokio::spawn(async move {
                while start.elapsed() < run {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let req = pb::EmbedRequest {
                        texts: vec![texts[i % texts.len()].clone()],
                    };
                    client
                        .embed(req, rankmesh_client::Deadline::Default)
                        .await
                        .expect("embed");
                }
            })
        })
        .collect();
    for c in callers {
        c.await.expect("caller");
    }
    next.load(std::sync::atomic::Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// The encoder's best throughput on `texts` over batch sizes 1-64: (batch, texts/s).
fn best_batch(enc: &Encoder, texts: &[String]) -> (usize, f64) {
    [1, 8, 16, 32, 64]
        .into_iter()
        .map(|batch| {
            let start = Instant::now();
            let mut done = 0;
            while start.elapsed() < Duration::from_secs(2) {
                let from = done % texts.len();
                let end = (from + batch).min(texts.len());
                enc.encode(&texts[from..end]).expect("encode");
                done += end - from;
            }
            (batch, done as f64 / start.elapsed().as_secs_f64())
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("batch sizes")
}

const NOUNS: &[(&str, &str)] = &[
    ("headphones", "Electronics > Audio"),
    ("earbuds", "Electronics > Audio"),
    ("speaker", "Electronics > Audio"),
    ("laptop", "Electronics > Computers"),
    ("keyboard", "Electronics > Computers"),
    ("monitor", "Electronics > Computers"),
    ("mouse", "Electronics > Computers"),
    ("smartphone", "Electronics > Phones"),
    ("phone case", "Electronics > Phones"),
    ("running shoes", "Sports > Footwear"),
    ("hiking boots", "Sports > Footwear"),
    ("yoga mat", "Sports > Fitness"),
    ("dumbbells", "Sports > Fitness"),
    ("tennis racket", "Sports > Racket"),
    ("bicycle helmet", "Sports > Cycling"),
    ("frying pan", "Home > Kitchen"),
    ("chef's knife", "Home > Kitchen"),
    ("coffee machine", "Home > Kitchen"),
    ("blender", "Home > Kitchen"),
    ("sofa", "Home > Furniture"),
    ("desk lamp", "Home > Lighting"),
    ("bed sheets", "Home > Bedding"),
    ("pillow", "Home > Bedding"),
    ("backpack", "Fashion > Bags"),
    ("t-shirt", "Fashion > Clothing"),
    ("jeans", "Fashion > Clothing"),
    ("rain jacket", "Fashion > Clothing"),
    ("sunglasses", "Fashion > Accessories"),
    ("watch", "Fashion > Accessories"),
    ("lipstick", "Beauty > Makeup"),
    ("shampoo", "Beauty > Hair"),
    ("face cream", "Beauty > Skin"),
    ("building blocks", "Toys > Construction"),
    ("board game", "Toys > Games"),
    ("dog food", "Pets > Dogs"),
    ("cat toy", "Pets > Cats"),
    ("garden hose", "Garden > Watering"),
    ("lawn mower", "Garden > Tools"),
    ("drill", "DIY > Tools"),
    ("paint brush", "DIY > Painting"),
];
const ADJECTIVES: &[&str] = &[
    "wireless",
    "lightweight",
    "waterproof",
    "premium",
    "compact",
    "ergonomic",
    "organic",
    "vintage",
    "professional",
    "portable",
    "heavy-duty",
    "eco-friendly",
    "stainless steel",
    "cotton",
    "leather",
    "bamboo",
    "smart",
    "foldable",
    "kids'",
    "women's",
    "men's",
    "non-slip",
    "noise cancelling",
    "rechargeable",
    "handmade",
];
const COLORS: &[&str] = &[
    "black",
    "white",
    "red",
    "navy blue",
    "forest green",
    "grey",
    "pink",
    "beige",
    "yellow",
    "purple",
    "orange",
    "teal",
];
const BRANDS: &[&str] = &[
    "Acme", "Sonora", "Vertex", "Stride", "Chefline", "Nordhaus", "Lumen", "Zenfit", "Brickly",
    "Ironclad",
];
const SIZES: &[&str] = &[
    "small",
    "medium",
    "large",
    "XL",
    "2-pack",
    "set of 3",
    "travel size",
    "family size",
];

/// A deterministic product title and its category, like a generated catalog's.
fn product(i: usize) -> (String, &'static str) {
    // Mixed radices so neighbouring ids differ in every part.
    let (noun, cat) = NOUNS[i % NOUNS.len()];
    let adj = ADJECTIVES[(i / 7) % ADJECTIVES.len()];
    let color = COLORS[(i / 13) % COLORS.len()];
    let brand = BRANDS[(i / 29) % BRANDS.len()];
    let size = SIZES[(i / 97) % SIZES.len()];
    (
        format!("{brand} {adj} {noun}, {color}, {size} (model {})", i % 1009),
        cat,
    )
}

/// Embeds `texts` with the INT8 encoder in batches of 64.
fn embed_all(enc: &Encoder, texts: &[String]) -> Vec<Vec<f32>> {
    texts
        .chunks(64)
        .flat_map(|c| enc.encode(c).expect("encode").into_iter().map(|e| e.vector))
        .collect()
}

/// `n` item vectors: real embeddings of generated product titles; beyond
/// `real` items, each extra vector is a real one plus small noise (a near-duplicate
/// variant), since embedding 500k titles on 2 cores takes too long for a bench.
fn catalog_vectors(enc: &Encoder, n: usize, real: usize) -> Vec<(ItemMeta, Vec<f32>)> {
    let base_n = real.min(n);
    let texts: Vec<String> = (0..base_n).map(|i| product(i).0).collect();
    let base = embed_all(enc, &texts);
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    (0..n)
        .map(|i| {
            let v = if i < base_n {
                base[i].clone()
            } else {
                base[i % base_n]
                    .iter()
                    .map(|x| x + 0.02 * noise())
                    .collect()
            };
            let (_, cat) = product(i % base_n);
            (
                ItemMeta {
                    id: format!("i{i}"),
                    category: rankmesh_embedding::index::normalize_category(cat),
                    brand: BRANDS[(i / 29) % BRANDS.len()].to_lowercase(),
                    price: Some((i % 1000) as f64),
                    text_hash: 0,
                },
                v,
            )
        })
        .collect()
}

fn bench_retrieve() {
    let sizes: Vec<usize> = std::env::var("RANKMESH_BENCH_ITEMS")
        .unwrap_or_else(|_| "50000,500000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let real: usize = std::env::var("RANKMESH_BENCH_REAL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let enc = Encoder::load(&models(), Variant::Int8, 256, &onnx()).expect("load encoder");
    let query_texts: Vec<String> = (0..200)
        .map(|i| {
            let (noun, _) = NOUNS[(i * 7) % NOUNS.len()];
            format!(
                "{} {} {noun}",
                COLORS[i % COLORS.len()],
                ADJECTIVES[(i * 3) % ADJECTIVES.len()]
            )
        })
        .collect();
    let queries = embed_all(&enc, &query_texts);
    println!(
        "\n== Retrieve, k=10, HNSW M=16 efSearch=160; items: real INT8 MiniLM embeddings of generated"
    );
    println!(
        "   product titles (up to {real}), then noisy near-duplicates of them; 200 text queries"
    );
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>10} {:>13} {:>10}",
        "items", "build s", "p50 ms", "p99 ms", "exact p50", "filtered p50", "recall@10"
    );
    for n in sizes {
        let entries = catalog_vectors(&enc, n, real);
        let start = Instant::now();
        let idx = VectorIndex::build(384, IndexParams::default(), "bench", entries).expect("build");
        let build = start.elapsed();
        let mut lat = Vec::new();
        let mut exact_lat = Vec::new();
        let mut filt_lat = Vec::new();
        let mut found = 0;
        let kitchen = Filter {
            category_prefix: "home > kitchen".into(),
            ..Filter::default()
        };
        for q in &queries {
            let s = Instant::now();
            let approx = idx.search(q, 10, &Filter::default()).expect("search");
            lat.push(s.elapsed());
            let s = Instant::now();
            let exact = idx.exact_search(q, 10).expect("exact");
            exact_lat.push(s.elapsed());
            let s = Instant::now();
            idx.search(q, 10, &kitchen).expect("filtered");
            filt_lat.push(s.elapsed());
            found += exact
                .iter()
                .filter(|h| approx.iter().any(|a| a.id == h.id))
                .count();
        }
        lat.sort();
        exact_lat.sort();
        filt_lat.sort();
        println!(
            "{:>8} {:>9.1} {:>9.3} {:>9.3} {:>10.3} {:>13.3} {:>10.3}",
            n,
            build.as_secs_f64(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(percentile(&exact_lat, 0.5)),
            ms(percentile(&filt_lat, 0.5)),
            found as f64 / (queries.len() * 10) as f64
        );
    }
}

/// `n` catalog texts as `catalog::text` makes them: a title, brand and category,
/// and for most items a description of 10 to 120 words.
fn catalog_texts(n: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "durable",
        "design",
        "with",
        "easy",
        "to",
        "clean",
        "surface",
        "and",
        "a",
        "comfortable",
        "grip",
        "for",
        "everyday",
        "use",
        "made",
        "from",
        "recycled",
        "materials",
        "tested",
        "quality",
        "fits",
        "most",
        "standard",
        "sizes",
        "includes",
        "warranty",
    ];
    (0..n)
        .map(|i| {
            let (title, cat) = product(i);
            let brand = BRANDS[(i / 29) % BRANDS.len()];
            let words = if i % 5 == 0 { 0 } else { 10 + (i * 37) % 111 };
            let desc: Vec<&str> = (0..words)
                .map(|w| WORDS[(i + w * 7) % WORDS.len()])
                .collect();
            let mut t = format!("{title}. {brand}. {cat}");
            if !desc.is_empty() {
                t.push_str(". ");
                t.push_str(&desc.join(" "));
            }
            t
        })
        .collect()
}

fn bench_bulk() {
    let n: usize = std::env::var("RANKMESH_BENCH_BULK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    println!("\n== bulk indexing, {n} catalog texts, int8, batches of 32, 2 intra-op threads");
    let enc = Encoder::load(&models(), Variant::Int8, 256, &onnx()).expect("load encoder");
    let texts = catalog_texts(n);
    enc.encode(&texts[..32]).expect("warm-up");
    let rate = |f: &dyn Fn() -> usize| {
        let start = Instant::now();
        let done = f();
        done as f64 / start.elapsed().as_secs_f64()
    };
    let before = rate(&|| {
        texts
            .chunks(32)
            .map(|c| enc.encode_as_one_batch(c).expect("encode").len())
            .sum()
    });
    let now = rate(&|| {
        let mut sorted: Vec<&String> = texts.iter().collect();
        sorted.sort_by_key(|t| t.len());
        let sorted: Vec<String> = sorted.into_iter().cloned().collect();
        sorted
            .chunks(32)
            .map(|c| enc.encode(c).expect("encode").len())
            .sum()
    });
    println!(
        "{:<46} {:>10.1} texts/s",
        "arrival order, padded to each batch's longest", before
    );
    println!(
        "{:<46} {:>10.1} texts/s  ({:.2}x)",
        "sorted by length, length groups (BuildIndex)",
        now,
        now / before
    );
    let venv = std::env::var_os("RANKMESH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let python = venv.join("bin/python");
    if !python.exists() {
        println!("python peer: not run ({} missing)", python.display());
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("texts.txt");
    std::fs::write(&file, texts.join("\n")).expect("write texts");
    let peer = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/peer/bulk_embed.py");
    let out = std::process::Command::new(python)
        .arg(peer)
        .arg("--model")
        .arg(models().join("int8/model.onnx"))
        .arg("--tokenizer")
        .arg(models().join("int8/tokenizer.json"))
        .arg("--texts")
        .arg(&file)
        .output()
        .expect("run the python peer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let peer: serde_json::Value = serde_json::from_str(line.trim()).expect("peer JSON");
    let py = peer["texts_per_s"].as_f64().expect("texts_per_s");
    println!(
        "{:<46} {:>10.1} texts/s",
        "python onnxruntime, sorted by length", py
    );
    println!("rust (BuildIndex) / python: {:.2}x", now / py);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if want("encoder") {
        rt.block_on(bench_encoder());
    }
    if want("service") {
        rt.block_on(bench_service());
    }
    if want("retrieve") {
        bench_retrieve();
    }
    if want("bulk") {
        bench_bulk();
    }
}
