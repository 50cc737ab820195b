//! The SDK stack's overhead against a bare tonic channel to one endpoint, in one run.
//!
//!   cargo bench -p rankmesh-client --bench stack
//!
//! One in-process tonic server (grpc.health.v1) on loopback. The same Check call
//! goes through:
//! - `bare`: a connected tonic `Channel` (what a hand-written client has);
//! - `balanced`: `Balanced` alone (discovery, ejection bookkeeping, peak-EWMA, p2c,
//!   the buffer task);
//! - `sdk`: the typed-client path, `Core::unary` of a read (deadline as
//!   grpc-timeout, retry budget, hedging timer, latency window) over `Balanced`.
//!
//! Rounds alternate between the three so machine noise hits them alike; each
//! reports sequential latency (p50/p99 over every call) and throughput at 32
//! concurrent callers, then the ratio to `bare`.

use std::time::{Duration, Instant};

use rankmesh_client::balance::{BalanceConfig, Balanced};
use rankmesh_client::rpc::{Core, Deadline, Kind};
use rankmesh_client::upstream::UpstreamConfig;
use rankmesh_common::discovery::Resolver;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const ROUNDS: usize = 5;
const SEQUENTIAL: usize = 2_000;
const CONCURRENCY: usize = 32;
const THROUGHPUT_FOR: Duration = Duration::from_secs(2);

#[derive(Clone)]
enum Path {
    Bare(Channel),
    Balanced(Balanced),
    Sdk(Core),
}

impl Path {
    fn name(&self) -> &'static str {
        match self {
            Self::Bare(_) => "bare",
            Self::Balanced(_) => "balanced",
            Self::Sdk(_) => "sdk",
        }
    }

    async fn call(&self) {
        let req = HealthCheckRequest {
            service: String::new(),
        };
        let r = match self {
            Self::Bare(ch) => HealthClient::new(ch.clone()).check(req).await.map(|_| ()),
            Self::Balanced(b) => HealthClient::new(b.clone()).check(req).await.map(|_| ()),
            Self::Sdk(core) => core
                .unary(
                    "check",
                    Kind::Read,
                    req,
                    Deadline::Default,
                    |ch, r| async move { HealthClient::new(ch).check(r).await },
                )
                .await
                .map(|_| ()),
        };
        r.expect("health check");
    }
}

#[derive(Default)]
struct Stats {
    latencies: Vec<Duration>,
    calls: u64,
    busy: Duration,
}

impl Stats {
    fn pct(&mut self, p: f64) -> f64 {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1e6
    }
    fn throughput(&self) -> f64 {
        self.calls as f64 / self.busy.as_secs_f64()
    }
}

async fn round(path: &Path, stats: &mut Stats) {
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        path.call().await;
        stats.latencies.push(t.elapsed());
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let path = path.clone();
        tasks.spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < THROUGHPUT_FOR {
                path.call().await;
                n += 1;
            }
            n
        });
    }
    while let Some(n) = tasks.join_next().await {
        stats.calls += n.expect("caller");
    }
    stats.busy += started.elapsed();
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                // As the services do: no Nagle delay on answers.
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        let uri = format!("http://{addr}");
        let bare = Channel::from_shared(uri.clone())
            .expect("uri")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        let resolver = Resolver::fixed("bench", std::slice::from_ref(&uri));
        let paths = [
            Path::Bare(bare),
            Path::Balanced(Balanced::new("bench", &resolver, BalanceConfig::default())),
            Path::Sdk(Core::new(
                "bench",
                resolver.clone(),
                Duration::from_secs(2),
                UpstreamConfig::default(),
            )),
        ];
        // Warm-up: connections, the balancer's first discovery poll, the hedging
        // delay's latency window.
        for p in &paths {
            for _ in 0..500 {
                p.call().await;
            }
        }
        let mut stats: Vec<Stats> = paths.iter().map(|_| Stats::default()).collect();
        for r in 0..ROUNDS {
            for (p, s) in paths.iter().zip(stats.iter_mut()) {
                round(p, s).await;
            }
            eprintln!("round {} of {ROUNDS} done", r + 1);
        }
        let base_p50 = stats[0].pct(0.5);
        let base_p99 = stats[0].pct(0.99);
        let base_tput = stats[0].throughput();
        println!(
            "{:<9} {:>9} {:>7} {:>9} {:>7} {:>12} {:>7}",
            "path", "p50 µs", "ratio", "p99 µs", "ratio", "calls/s c=32", "ratio"
        );
        for (p, s) in paths.iter().zip(stats.iter_mut()) {
            let (p50, p99, tput) = (s.pct(0.5), s.pct(0.99), s.throughput());
            println!(
                "{:<9} {:>9.1} {:>6.2}x {:>9.1} {:>6.2}x {:>12.0} {:>6.2}x",
                p.name(),
                p50,
                p50 / base_p50,
                p99,
                p99 / base_p99,
                tput,
                tput / base_tput
            );
        }
    });
}
