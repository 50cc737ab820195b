//! `meshctl bench`: an open-loop load generator for Search and Recommend.
//!
//! Requests are sent on a fixed schedule (constant arrival rate), whether or not
//! earlier ones have answered, and each latency is measured from its *scheduled*
//! send time: when the service slows down, queueing delay shows in the numbers
//! instead of silently lowering the offered load (no coordinated omission).
//! Latencies go into HDR histograms (3 significant digits, 1 µs to 1 h), overall
//! and per second, so a long run costs constant memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rankmesh_client::upstream::UpstreamConfig;
use rankmesh_client::{Deadline, RankingClient};
use rankmesh_common::discovery::Resolver;
use rankmesh_proto::pb::ranking::v1 as pb;
use serde::Serialize;

/// Most requests in flight; beyond it a scheduled request counts as dropped.
const MAX_IN_FLIGHT: usize = 2_000;

/// Open-loop load: Search or Recommend at a constant rate through the SDK,
/// latency from scheduled send time (HDR histograms), per-stage timings, errors
/// by code, a per-second timeline (errors, p50/p99, model versions) with --json.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// `search` (inputs are queries) or `recommend` (inputs are user ids).
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
    let replicas = a.target.resolver("ranking").await?;
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

/// Which RPC the load calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rpc {
    Search,
    Recommend,
}

impl std::str::FromStr for Rpc {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "search" => Ok(Self::Search),
            "recommend" => Ok(Self::Recommend),
            _ => Err(format!("--rpc {s}: expected search or recommend")),
        }
    }
}

/// What to send, how fast, and how the SDK may help.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub rpc: Rpc,
    pub qps: f64,
    pub duration: Duration,
    pub timeout: Duration,
    /// Queries (Search) or user ids (Recommend), used in turn.
    pub inputs: Vec<String>,
    /// The SDK's retry budget and hedging (`--no-retry`, `--no-hedge` turn them
    /// off: what a client without them would see).
    pub upstream: UpstreamConfig,
}

impl Options {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.qps > 0.0 && self.qps <= 10_000.0,
            "--qps must be within (0, 10000]"
        );
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be at least 1 s");
        anyhow::ensure!(!self.inputs.is_empty(), "the input file has no lines");
        Ok(())
    }
}

/// Reads one input per line, skipping blank ones.
pub(crate) fn read_inputs(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h at 3 significant digits; values are in microseconds.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1e3
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: ms(h, 0.5),
            p90: ms(h, 0.9),
            p99: ms(h, 0.99),
            p999: ms(h, 0.999),
            max: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1e3
            },
        }
    }
}

/// One second of the run (by scheduled send time).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Second {
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers per model version, as `name:version` (e.g. `ranker:2`).
    pub models: BTreeMap<String, u64>,
    /// Answers that skipped a stage, per stage.
    pub degraded: BTreeMap<String, u64>,
}

/// Per-stage server timings reported in replies.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stage {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The outcome of a run (the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub rpc: String,
    pub qps: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub dropped: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    /// The first message seen per error code (what went wrong, not just how often).
    pub error_examples: BTreeMap<String, String>,
    pub achieved_qps: f64,
    /// From scheduled send time, successes and failures alike.
    pub latency_ms: Latency,
    /// The same per outcome: "Ok" or an error code (how fast each kind of answer
    /// came: an overloaded service must refuse within milliseconds).
    pub latency_by_outcome_ms: BTreeMap<String, Latency>,
    pub stages: BTreeMap<String, Stage>,
    pub timeline: Vec<Second>,
}

#[derive(Default)]
struct SecondAcc {
    requests: u64,
    errors: BTreeMap<String, u64>,
    latency: Option<Histogram<u64>>,
    models: BTreeMap<String, u64>,
    degraded: BTreeMap<String, u64>,
}

struct Acc {
    latency: Histogram<u64>,
    by_outcome: BTreeMap<String, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    error_examples: BTreeMap<String, String>,
    stages: BTreeMap<String, Histogram<u64>>,
    seconds: BTreeMap<u64, SecondAcc>,
    dropped: u64,
}

/// What one answer said, for the accumulators.
struct Answer {
    models: Vec<String>,
    degraded: Vec<String>,
    stage_ms: Vec<(String, f32)>,
}

impl Acc {
    fn new() -> Self {
        Self {
            latency: histogram(),
            by_outcome: BTreeMap::new(),
            errors: BTreeMap::new(),
            error_examples: BTreeMap::new(),
            stages: BTreeMap::new(),
            seconds: BTreeMap::new(),
            dropped: 0,
        }
    }

    fn record(&mut self, second: u64, latency: Duration, outcome: Result<Answer, tonic::Status>) {
        let us = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        self.latency.saturating_record(us);
        let slot = self.seconds.entry(second).or_default();
        slot.requests += 1;
        slot.latency
            .get_or_insert_with(histogram)
            .saturating_record(us);
        let outcome_name = match &outcome {
            Ok(_) => "Ok".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.by_outcome
            .entry(outcome_name)
            .or_insert_with(histogram)
            .saturating_record(us);
        match outcome {
            Ok(a) => {
                for m in a.models {
                    *slot.models.entry(m).or_default() += 1;
                }
                for d in a.degraded {
                    *slot.degraded.entry(d).or_default() += 1;
                }
                for (stage, ms) in a.stage_ms {
                    let v = (f64::from(ms) * 1e3).clamp(1.0, 3.6e9) as u64;
                    self.stages
                        .entry(stage)
                        .or_insert_with(histogram)
                        .saturating_record(v);
                }
            }
            Err(s) => {
                let code = format!("{:?}", s.code());
                *slot.errors.entry(code.clone()).or_default() += 1;
                *self.errors.entry(code.clone()).or_default() += 1;
                self.error_examples
                    .entry(code)
                    .or_insert_with(|| s.message().to_owned());
            }
        }
    }

    fn report(self, opts: &Options, elapsed: Duration) -> Report {
        let sent = self.latency.len();
        Report {
            rpc: format!("{:?}", opts.rpc).to_lowercase(),
            qps: opts.qps,
            duration_s: opts.duration.as_secs_f64(),
            sent,
            dropped: self.dropped,
            failed: self.errors.values().sum(),
            errors: self.errors,
            error_examples: self.error_examples,
            achieved_qps: sent as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_ms: Latency::of(&self.latency),
            latency_by_outcome_ms: self
                .by_outcome
                .iter()
                .map(|(k, h)| (k.clone(), Latency::of(h)))
                .collect(),
            stages: self
                .stages
                .iter()
                .map(|(k, h)| {
                    (
                        k.clone(),
                        Stage {
                            p50_ms: ms(h, 0.5),
                            p99_ms: ms(h, 0.99),
                        },
                    )
                })
                .collect(),
            timeline: self
                .seconds
                .into_iter()
                .map(|(second, s)| {
                    let h = s.latency.unwrap_or_else(histogram);
                    Second {
                        second,
                        requests: s.requests,
                        errors: s.errors.values().sum(),
                        errors_by_code: s.errors,
                        p50_ms: ms(&h, 0.5),
                        p99_ms: ms(&h, 0.99),
                        models: s.models,
                        degraded: s.degraded,
                    }
                })
                .collect(),
        }
    }
}

impl Answer {
    /// What a Search or Recommend reply said (both carry the same fields).
    fn new(
        models: &[rankmesh_proto::pb::common::v1::ModelRef],
        degraded: Vec<String>,
        stage_ms: std::collections::HashMap<String, f32>,
    ) -> Self {
        Self {
            models: models
                .iter()
                .map(|m| format!("{}:{}", m.name, m.version))
                .collect(),
            degraded,
            stage_ms: stage_ms.into_iter().collect(),
        }
    }
}

/// Runs the load against the replicas in `replicas` and reports.
pub(crate) async fn run(replicas: Resolver, opts: &Options) -> anyhow::Result<Report> {
    opts.validate()?;
    // The SDK a storefront uses: every replica, balanced, retried, hedged.
    tokio::time::timeout(
        Duration::from_secs(10),
        replicas.wait_for(|set| !set.is_empty()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no ranking replica found"))?;
    let client = RankingClient::with_config(replicas, opts.timeout, opts.upstream);
    let acc = Arc::new(Mutex::new(Acc::new()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let interval = Duration::from_secs_f64(1.0 / opts.qps);
    let total = (opts.duration.as_secs_f64() * opts.qps).round() as u64;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            acc.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .dropped += 1;
            continue;
        };
        let (client, acc, rpc) = (client.clone(), Arc::clone(&acc), opts.rpc);
        let input = opts.inputs[i as usize % opts.inputs.len()].clone();
        tasks.spawn(async move {
            let outcome = match rpc {
                Rpc::Search => client
                    .search(
                        pb::SearchRequest {
                            query: input,
                            k: 10,
                            ..Default::default()
                        },
                        Deadline::Default,
                    )
                    .await
                    .map(|r| Answer::new(&r.models, r.degraded, r.stage_ms)),
                Rpc::Recommend => client
                    .recommend(
                        pb::RecommendRequest {
                            user_id: input,
                            k: 10,
                            ..Default::default()
                        },
                        Deadline::Default,
                    )
                    .await
                    .map(|r| Answer::new(&r.models, r.degraded, r.stage_ms)),
            };
            let latency = scheduled.elapsed();
            let second = scheduled.duration_since(start).as_secs();
            acc.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(second, latency, outcome);
            drop(permit);
        });
        // Reap finished tasks as we go, so memory stays flat on long runs.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    let acc = Arc::try_unwrap(acc)
        .map_err(|_| anyhow::anyhow!("bench tasks still running"))?
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(acc.report(opts, elapsed))
}

/// Prints a report for a person.
pub(crate) fn print(r: &Report) {
    println!(
        "{} at {} qps for {:.0} s: {} sent, {} failed, {} dropped ({:.1} qps achieved)",
        r.rpc, r.qps, r.duration_s, r.sent, r.failed, r.dropped, r.achieved_qps
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            rpc: Rpc::Search,
            qps: 10.0,
            duration: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            inputs: vec!["q".into()],
            upstream: UpstreamConfig::default(),
        }
    }

    #[test]
    fn the_report_counts_errors_per_second_and_models_answering() {
        let mut acc = Acc::new();
        for i in 0..100u64 {
            let outcome = if i % 10 == 0 {
                Err(tonic::Status::unavailable("down"))
            } else {
                Ok(Answer {
                    models: vec![format!("ranker:{}", 1 + i / 50)],
                    degraded: vec![],
                    stage_ms: vec![("rank".into(), 2.0)],
                })
            };
            acc.record(i / 50, Duration::from_millis(i + 1), outcome);
        }
        let r = acc.report(&opts(), Duration::from_secs(2));
        assert_eq!((r.sent, r.failed), (100, 10));
        assert_eq!(r.errors["Unavailable"], 10);
        assert!(r.latency_by_outcome_ms["Unavailable"].max <= 91.1);
        assert!(r.latency_by_outcome_ms["Ok"].max > 99.0);
        assert_eq!(r.timeline.len(), 2);
        assert_eq!(r.timeline[0].models["ranker:1"], 45);
        assert_eq!(r.timeline[1].models["ranker:2"], 45);
        assert_eq!(r.timeline[1].errors_by_code["Unavailable"], 5);
        // HDR percentiles are within 0.1% of the true value.
        assert!(
            (r.latency_ms.p50 - 50.0).abs() < 0.1,
            "{}",
            r.latency_ms.p50
        );
        assert!(
            (r.latency_ms.max - 100.0).abs() < 0.1,
            "{}",
            r.latency_ms.max
        );
        assert!((r.stages["rank"].p50_ms - 2.0).abs() < 0.01);
    }

    #[test]
    fn bad_options_are_refused() {
        let mut o = opts();
        o.qps = 0.0;
        assert!(o.validate().is_err());
        let mut o = opts();
        o.inputs.clear();
        assert!(o.validate().is_err());
        assert!("grep".parse::<Rpc>().is_err());
    }
}
