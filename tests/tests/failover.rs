//! Failover seen from a storefront: `meshctl bench` (the SDK: discovery, balancing,
//! ejection of failing and hung replicas, retries within budget, hedging) drives
//! open-loop Search load at three ranking replicas while they fail:
//! - one hung with SIGSTOP mid-run: no request fails, and p99 stays within 2x the
//!   healthy p99 measured just before (hedging rescues the calls it swallows, and
//!   the balancer ejects it once it has answered nothing for `stall_after`);
//! - one killed with SIGKILL mid-run: at most 0.1% of requests fail;
//! - all of them down: every request fails fast with UNAVAILABLE, none hangs.

use std::time::Duration;

use rankmesh_tests::mesh::{LocalMesh, bench_report, number, search_load, summary};

#[tokio::test]
async fn hung_and_killed_ranking_replicas_under_load() {
    let mesh = LocalMesh::up(3, &[]);
    let queries = mesh.queries_file();

    // Warm-up (first requests pay connection setup and cold caches), then the
    // healthy baseline.
    bench_report(mesh.bench(&search_load(&queries, "30", "3")));
    let healthy = bench_report(mesh.bench(&search_load(&queries, "30", "8")));
    assert_eq!(number(&healthy, &["failed"]), 0.0, "{}", summary(&healthy));
    let healthy_p99 = number(&healthy, &["latency_ms", "p99"]);

    // SIGSTOP one of three mid-run: it keeps its connections and answers nothing.
    let run = mesh.bench(&search_load(&queries, "30", "12"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    mesh.signal("ranking-2", "-STOP");
    let hung = bench_report(run);
    mesh.signal("ranking-2", "-CONT");
    let sent = number(&hung, &["sent"]);
    assert!(sent >= 300.0, "the load ran: {}", summary(&hung));
    assert_eq!(
        number(&hung, &["failed"]),
        0.0,
        "no search may fail while a replica hangs: {}",
        summary(&hung)
    );
    let hung_p99 = number(&hung, &["latency_ms", "p99"]);
    assert!(
        hung_p99 <= 2.0 * healthy_p99,
        "p99 {hung_p99} ms with a hung replica vs {healthy_p99} ms healthy: {}",
        summary(&hung)
    );

    // SIGKILL one of three mid-run.
    let run = mesh.bench(&search_load(&queries, "30", "12"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    mesh.signal("ranking-1", "-KILL");
    let killed = bench_report(run);
    let (sent, failed) = (number(&killed, &["sent"]), number(&killed, &["failed"]));
    assert!(sent >= 300.0, "the load ran: {}", summary(&killed));
    assert!(
        failed <= 0.001 * sent,
        "searches failed when one replica of three was killed: {}",
        summary(&killed)
    );

    // Every replica down: fast, clear UNAVAILABLE.
    mesh.signal("ranking-0", "-KILL");
    mesh.signal("ranking-2", "-KILL");
    // Until their leases expire they are still in discovery: dead, not gone.
    let down = bench_report(mesh.bench(&search_load(&queries, "30", "2")));
    assert_eq!(down["failed"], down["sent"], "nothing can succeed");
    // The documented failure (README, SDK docs): UNAVAILABLE, fast. Every failure is
    // UNAVAILABLE (none ran into the 3 s deadline); the typical one is a refused
    // connection and a retry (2.5 ms here); none waits longer than one ejection
    // window (`base_ejection`, 500 ms: a call that finds every replica ejected waits
    // for the first probe; seen once in 60 calls at 503 ms).
    assert_eq!(
        down["errors"]["Unavailable"], down["sent"],
        "every failure is UNAVAILABLE: {}",
        down["errors"]
    );
    assert!(
        number(&down, &["latency_ms", "p50"]) < 50.0,
        "a typical UNAVAILABLE takes milliseconds: {}",
        summary(&down)
    );
    let window = rankmesh_client::balance::BalanceConfig::default().base_ejection;
    assert!(
        number(&down, &["latency_ms", "max"]) < (window.as_secs_f64() * 1000.0) * 2.0,
        "no UNAVAILABLE waits past an ejection window ({window:?}) and its probe: {}",
        summary(&down)
    );
}
