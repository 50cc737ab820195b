//! `meshctl bench`: an open-loop load generator for Search.
//!
//! Requests are sent on a fixed schedule (constant arrival rate), whether or not
//! earlier ones have answered, and each latency is measured from its *scheduled*
//! send time: when the service slows down, queueing delay shows in the numbers
//! instead of silently lowering the offered load (no coordinated omission).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rankmesh_proto::pb::ranking::v1 as pb;
use tokio::sync::Mutex;

/// Most requests in flight; beyond it a scheduled request counts as dropped.
const MAX_IN_FLIGHT: usize = 2_000;

#[derive(Default)]
struct Results {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    /// The first message seen per error code (what went wrong, not just how often).
    error_examples: BTreeMap<String, String>,
    stages: BTreeMap<String, Vec<f32>>,
    per_second: BTreeMap<u64, (u64, u64)>,
    dropped: u64,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn pct_f(sorted: &[f32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    f64::from(sorted[((sorted.len() as f64 - 1.0) * p).round() as usize])
}

pub(crate) async fn search(
    replicas: rankmesh_common::discovery::Resolver,
    qps: f64,
    duration: Duration,
    queries: &Path,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        qps > 0.0 && qps <= 10_000.0,
        "--qps must be within (0, 10000]"
    );
    let text = std::fs::read_to_string(queries)
        .map_err(|e| anyhow::anyhow!("{}: {e}", queries.display()))?;
    let queries: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(!queries.is_empty(), "the query file has no queries");
    // The SDK a storefront uses: every replica, balanced, retried, hedged.
    tokio::time::timeout(
        Duration::from_secs(10),
        replicas.wait_for(|set| !set.is_empty()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no ranking replica found"))?;
    let client = rankmesh_client::RankingClient::new(replicas, timeout);
    let results = Arc::new(Mutex::new(Results::default()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let interval = Duration::from_secs_f64(1.0 / qps);
    let total = (duration.as_secs_f64() * qps).round() as u64;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            results.lock().await.dropped += 1;
            continue;
        };
        let client = client.clone();
        let results = Arc::clone(&results);
        let query = queries[i as usize % queries.len()].clone();
        tasks.push(tokio::spawn(async move {
            let r = client
                .search(pb::SearchRequest {
                    query,
                    user_id: String::new(),
                    k: 10,
                    filters: None,
                    routing_key: String::new(),
                })
                .await;
            let latency = scheduled.elapsed();
            let second = scheduled.duration_since(start).as_secs();
            let mut res = results.lock().await;
            let slot = res.per_second.entry(second).or_default();
            slot.0 += 1;
            match r {
                Ok(resp) => {
                    for (stage, ms) in resp.stage_ms {
                        res.stages.entry(stage).or_default().push(ms);
                    }
                }
                Err(s) => {
                    slot.1 += 1;
                    let code = format!("{:?}", s.code());
                    *res.errors.entry(code.clone()).or_default() += 1;
                    res.error_examples
                        .entry(code)
                        .or_insert_with(|| s.message().to_owned());
                }
            }
            res.latencies.push(latency);
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut res = results.lock().await;
    res.latencies.sort();
    for v in res.stages.values_mut() {
        v.sort_by(f32::total_cmp);
    }
    let sent = res.latencies.len();
    let failed: u64 = res.errors.values().sum();
    if json {
        let stages: serde_json::Map<String, serde_json::Value> = res
            .stages
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::json!({ "p50_ms": pct_f(v, 0.5), "p99_ms": pct_f(v, 0.99) }),
                )
            })
            .collect();
        let timeline: Vec<_> = res
            .per_second
            .iter()
            .map(|(s, (n, e))| serde_json::json!({ "second": s, "requests": n, "errors": e }))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "qps": qps, "sent": sent, "dropped": res.dropped, "failed": failed, "errors": res.errors,
                "error_examples": res.error_examples,
                "achieved_qps": sent as f64 / elapsed,
                "latency_ms": { "p50": pct(&res.latencies, 0.5), "p90": pct(&res.latencies, 0.9), "p99": pct(&res.latencies, 0.99), "max": pct(&res.latencies, 1.0) },
                "stages": stages, "timeline": timeline,
            })
        );
    } else {
        println!(
            "search at {qps} qps for {:.0} s: {sent} sent, {failed} failed, {} dropped",
            duration.as_secs_f64(),
            res.dropped
        );
        println!(
            "latency from scheduled send: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            pct(&res.latencies, 0.5),
            pct(&res.latencies, 0.9),
            pct(&res.latencies, 0.99),
            pct(&res.latencies, 1.0)
        );
        println!("{:<10} {:>9} {:>9}", "stage", "p50 ms", "p99 ms");
        for (k, v) in &res.stages {
            println!("{k:<10} {:>9.2} {:>9.2}", pct_f(v, 0.5), pct_f(v, 0.99));
        }
        for (code, n) in &res.errors {
            let example = res.error_examples.get(code).map_or("", String::as_str);
            println!("errors {code}: {n} (e.g. {example})");
        }
    }
    Ok(())
}
