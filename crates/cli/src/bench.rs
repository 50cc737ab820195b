//! `meshctl bench`: open-loop load through the SDK (`rankmesh-loadgen`), printed
//! for a person or as JSON.

use std::time::Duration;

use rankmesh_client::upstream::UpstreamConfig;
use rankmesh_loadgen::{Options, Report, Rpc, read_inputs, run};

/// Open-loop load: Search or Recommend at a constant rate through the SDK,
/// latency from scheduled send time (HDR histograms), per-stage timings, errors
/// by code, a per-second timeline (errors, p50/p99, model versions) with --json.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// `search` (inputs are queries), `recommend` (inputs are user ids) or
    /// `embed` (inputs are texts, one per call, to the embedding service).
    #[arg(long, default_value = "search")]
    rpc: Rpc,
    #[arg(long, default_value_t = 50.0)]
    qps: f64,
    /// Seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// One query (or user id) per line, e.g. a generated queries.txt.
    #[arg(long)]
    queries: std::path::PathBuf,
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Turn the SDK's hedging off (what a client without it sees).
    #[arg(long)]
    no_hedge: bool,
    /// Turn the SDK's retries off.
    #[arg(long)]
    no_retry: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: crate::args::TargetArgs,
}

pub(crate) async fn command(a: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let replicas = a.target.resolver(a.rpc.service()).await?;
    let mut upstream = UpstreamConfig::default();
    if a.no_hedge {
        upstream.hedge_percentile = 0.0;
    }
    if a.no_retry {
        upstream.max_retries = 0;
    }
    let opts = Options {
        rpc: a.rpc,
        qps: a.qps,
        surges: Vec::new(),
        duration: Duration::from_secs(a.duration),
        timeout: Duration::from_millis(a.timeout_ms),
        inputs: read_inputs(&a.queries)?,
        upstream,
    };
    let report = run(replicas, &opts).await?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print(&report);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Prints a report for a person.
fn print(r: &Report) {
    println!(
        "{} at {} qps for {:.0} s: {} sent, {} failed, {} dropped ({:.1} qps achieved, goodput {:.1} answered/s)",
        r.rpc, r.qps, r.duration_s, r.sent, r.failed, r.dropped, r.achieved_qps, r.goodput_qps
    );
    let l = &r.latency_ms;
    println!(
        "latency from scheduled send: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        l.p50, l.p90, l.p99, l.p999, l.max
    );
    if !r.stages.is_empty() {
        println!("{:<10} {:>9} {:>9}", "stage", "p50 ms", "p99 ms");
        for (k, s) in &r.stages {
            println!("{k:<10} {:>9.2} {:>9.2}", s.p50_ms, s.p99_ms);
        }
    }
    for (code, n) in &r.errors {
        let example = r.error_examples.get(code).map_or("", String::as_str);
        println!("errors {code}: {n} (e.g. {example})");
    }
}
