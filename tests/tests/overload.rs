//! Overload seen from a storefront: a ranking replica whose admission (a
//! concurrency limit that follows latency) is capped low, offered far more than it can serve
//! by `meshctl bench` (open loop), refuses the excess with RESOURCE_EXHAUSTED in
//! milliseconds instead of letting calls queue into their deadlines, its memory
//! stays bounded, and it serves again once the flood is over. (Its own test
//! binary: the flood must not run beside the failover test's latency
//! measurements.)

use rankmesh_tests::mesh::{LocalMesh, bench_report, number, search_load, summary};

#[tokio::test]
async fn overload_is_refused_in_milliseconds_with_bounded_memory() {
    // Admission as it comes, its limit capped at 4 so that the flood exceeds it
    // on any machine (the adaptive rule itself is unit-tested in
    // rankmesh_common::admission; scripts/bench measures it at full size).
    let mesh = LocalMesh::up(
        1,
        &[
            "--ranking-env",
            "RANKMESH__ADMISSION__MAX_LIMIT=4",
            "--ranking-env",
            "RANKMESH__ADMISSION__INITIAL_LIMIT=4",
            "--ranking-env",
            "RANKMESH__ADMISSION__MIN_LIMIT=2",
        ],
    );
    let queries = mesh.queries_file();
    bench_report(mesh.bench(&search_load(&queries, "20", "2")));
    let before = mesh.rss_kib("ranking-0");

    // Far more than two searches at a time can serve on this machine.
    let over = bench_report(mesh.bench(&search_load(&queries, "400", "5")));
    let after = mesh.rss_kib("ranking-0");
    let refused = over["errors"]["ResourceExhausted"].as_u64().unwrap_or(0);
    assert!(
        refused as f64 >= 0.2 * number(&over, &["sent"]),
        "the excess was refused: {}",
        summary(&over)
    );
    assert!(
        over["latency_by_outcome_ms"]["Ok"].is_object(),
        "some searches were served: {}",
        summary(&over)
    );
    eprintln!("flood: {}", summary(&over));
    // Admission refuses before calls queue: none runs into its deadline or a
    // transport error (a handful allowed: this machine is saturated by the load
    // generator itself).
    let other: u64 = over["errors"]
        .as_object()
        .map(|e| {
            e.iter()
                .filter(|(code, _)| *code != "ResourceExhausted")
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    assert!(
        other as f64 <= 0.005 * number(&over, &["sent"]),
        "errors other than refusals: {}",
        summary(&over)
    );
    // Refusals do not queue: they come back long before the 3 s deadline (the
    // bound is loose because this machine is saturated by the load itself).
    let refused_p99 = number(
        &over,
        &["latency_by_outcome_ms", "ResourceExhausted", "p99"],
    );
    assert!(
        refused_p99 < 250.0,
        "RESOURCE_EXHAUSTED p99 {refused_p99} ms: {}",
        over["latency_by_outcome_ms"]
    );
    // Nothing piles up in the replica: its memory stays flat under the flood.
    assert!(
        after < before + 64 * 1024,
        "ranking RSS {before} KiB -> {after} KiB under overload"
    );
    eprintln!("ranking RSS {before} KiB before the flood, {after} KiB after");
    // And it still serves once the flood is over (a hedge can still meet the
    // limit of two now and then, so not every single call).
    let calm = bench_report(mesh.bench(&search_load(&queries, "5", "4")));
    assert!(
        number(&calm, &["failed"]) <= 2.0,
        "serving again after the flood: {}",
        summary(&calm)
    );
}
