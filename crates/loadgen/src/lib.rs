//! The open-loop load engine behind `meshctl bench` and every drill: Search or
//! Recommend at a constant arrival rate through the SDK a storefront uses
//! (discovery, balancing, retries, hedging), and a [`Report`] of what it measured.
//!
//! Requests are sent on a fixed schedule, whether or not earlier ones have
//! answered, and each latency is measured from its *scheduled* send time: when the
//! service slows down, queueing delay shows in the numbers instead of silently
//! lowering the offered load (no coordinated omission). Latencies go into HDR
//! histograms (3 significant digits, 1 µs to 1 h), overall and per second, so a
//! long run costs constant memory.
//!
//! # Layout
//! - this file: [`Options`], [`run`] and the input file.
//! - [`report`]: the accumulators and the [`Report`] they end in.
//!
//! Owns load generation and its figures. Must not import a service crate, the
//! launcher or the drill engine: it only calls a mesh through the SDK.

pub mod report;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rankmesh_client::upstream::UpstreamConfig;
use rankmesh_client::{Deadline, EmbeddingClient, RankingClient};
use rankmesh_common::discovery::Resolver;
use rankmesh_proto::pb::embedding::v1 as emb;
use rankmesh_proto::pb::ranking::v1 as pb;

use report::{Acc, Answer};
pub use report::{Latency, Report, Second, Stage};

/// Most requests in flight; beyond it a scheduled request counts as dropped.
const MAX_IN_FLIGHT: usize = 2_000;
/// Highest rate a run may ask for.
pub const MAX_QPS: f64 = 10_000.0;

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Invalid(String),
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no ranking replica found within {0:?}")]
    NoReplica(Duration),
}

/// Which RPC the load calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Search,
    Recommend,
    /// The embedding service's Embed, one text per call (the query path's
    /// first hop).
    Embed,
}

impl Rpc {
    /// The service that answers it.
    pub fn service(self) -> &'static str {
        match self {
            Self::Search | Self::Recommend => "ranking",
            Self::Embed => "embedding",
        }
    }
}

impl std::str::FromStr for Rpc {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "search" => Ok(Self::Search),
            "recommend" => Ok(Self::Recommend),
            "embed" => Ok(Self::Embed),
            _ => Err(format!("--rpc {s}: expected search, recommend or embed")),
        }
    }
}

/// A stretch of the run offered `factor` times the base rate (a flash sale, a
/// retry storm upstream): what an overload drill offers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Surge {
    /// From the start of the run.
    pub from: Duration,
    pub duration: Duration,
    pub factor: f64,
}

impl Surge {
    fn covers(&self, t: Duration) -> bool {
        t >= self.from && t < self.from + self.duration
    }
}

/// Highest surge factor.
pub const MAX_SURGE: f64 = 100.0;

/// What to send, how fast, and how the SDK may help.
#[derive(Debug, Clone)]
pub struct Options {
    pub rpc: Rpc,
    /// The base arrival rate.
    pub qps: f64,
    /// Stretches of the run at a multiple of `qps`.
    pub surges: Vec<Surge>,
    pub duration: Duration,
    pub timeout: Duration,
    /// Queries (Search) or user ids (Recommend), used in turn.
    pub inputs: Vec<String>,
    /// The SDK's retry budget and hedging (`--no-retry`, `--no-hedge` turn them
    /// off: what a client without them would see).
    pub upstream: UpstreamConfig,
}

impl Options {
    pub fn validate(&self) -> Result<(), LoadError> {
        let invalid = |m: &str| Err(LoadError::Invalid(m.to_owned()));
        if !(self.qps > 0.0 && self.qps <= MAX_QPS) {
            return invalid("--qps must be within (0, 10000]");
        }
        if self.duration.is_zero() {
            return invalid("--duration must be at least 1 s");
        }
        if self.inputs.is_empty() {
            return invalid("the input file has no lines");
        }
        for s in &self.surges {
            if !(s.factor >= 1.0 && s.factor <= MAX_SURGE && s.factor * self.qps <= MAX_QPS) {
                return invalid(
                    "a surge's factor must be within [1, 100], and its rate at most 10000 qps",
                );
            }
        }
        Ok(())
    }

    /// When each call is sent, from the start of the run: `1/qps` apart, and
    /// `factor` times closer within a surge (the densest, where surges overlap).
    /// Lazy, so a long run costs constant memory; kept in f64 seconds, so rounding
    /// each gap to whole nanoseconds does not add a call at the end.
    pub fn schedule(&self) -> impl Iterator<Item = Duration> + '_ {
        let end = self.duration.as_secs_f64();
        let mut t = 0.0_f64;
        std::iter::from_fn(move || {
            // Within a nanosecond of the end is the end.
            if t >= end - 1e-9 {
                return None;
            }
            let at = Duration::from_secs_f64(t);
            let factor = self
                .surges
                .iter()
                .filter(|s| s.covers(at))
                .map(|s| s.factor)
                .fold(1.0, f64::max);
            t += 1.0 / (self.qps * factor);
            Some(at)
        })
    }
}

/// Reads one input per line, skipping blank ones.
pub fn read_inputs(path: &Path) -> Result<Vec<String>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The SDK client the load calls through.
#[derive(Clone)]
enum Target {
    Ranking(RankingClient),
    Embedding(EmbeddingClient),
}

/// One call of `rpc` with `input`; what the reply said.
async fn call(target: &Target, rpc: Rpc, input: String) -> Result<Answer, tonic::Status> {
    match (target, rpc) {
        (Target::Ranking(c), Rpc::Search) => {
            let req = pb::SearchRequest {
                query: input,
                k: 10,
                ..Default::default()
            };
            let r = c.search(req, Deadline::Default).await?;
            Ok(Answer::new(&r.models, r.degraded, r.stage_ms))
        }
        (Target::Ranking(c), Rpc::Recommend) => {
            let req = pb::RecommendRequest {
                user_id: input,
                k: 10,
                ..Default::default()
            };
            let r = c.recommend(req, Deadline::Default).await?;
            Ok(Answer::new(&r.models, r.degraded, r.stage_ms))
        }
        (Target::Embedding(c), _) => {
            let req = emb::EmbedRequest { texts: vec![input] };
            let r = c.embed(req, Deadline::Default).await?;
            let models: Vec<_> = r.model.into_iter().collect();
            Ok(Answer::new(&models, Vec::new(), Default::default()))
        }
        (Target::Ranking(_), Rpc::Embed) => {
            Err(tonic::Status::internal("embed needs the embedding service"))
        }
    }
}

/// Runs the load against the replicas in `replicas` (of [`Rpc::service`]) and
/// reports.
pub async fn run(replicas: Resolver, opts: &Options) -> Result<Report, LoadError> {
    opts.validate()?;
    // The SDK a storefront uses: every replica, balanced, retried, hedged.
    let wait = Duration::from_secs(10);
    tokio::time::timeout(wait, replicas.wait_for(|set| !set.is_empty()))
        .await
        .map_err(|_| LoadError::NoReplica(wait))?;
    let client = match opts.rpc.service() {
        "embedding" => Target::Embedding(EmbeddingClient::with_config(
            replicas,
            opts.timeout,
            opts.upstream,
        )),
        _ => Target::Ranking(RankingClient::with_config(
            replicas,
            opts.timeout,
            opts.upstream,
        )),
    };
    let acc = Arc::new(Mutex::new(Acc::new()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, at) in opts.schedule().enumerate() {
        let scheduled = start + at;
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            acc.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .dropped += 1;
            continue;
        };
        let (client, acc, rpc) = (client.clone(), Arc::clone(&acc), opts.rpc);
        let input = opts.inputs[i % opts.inputs.len()].clone();
        tasks.spawn(async move {
            let outcome = call(&client, rpc, input).await;
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
    // Every task has been joined, so the accumulator is ours alone; take it out of
    // the lock rather than cloning its histograms.
    let acc = std::mem::replace(
        &mut *acc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        Acc::new(),
    );
    Ok(acc.report(opts, elapsed))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Valid options, for tests to change one thing of.
    pub(crate) fn opts() -> Options {
        Options {
            rpc: Rpc::Search,
            qps: 10.0,
            surges: Vec::new(),
            duration: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            inputs: vec!["q".into()],
            upstream: UpstreamConfig::default(),
        }
    }

    #[test]
    fn each_rpc_is_named_and_goes_to_its_service() {
        for (name, rpc, service) in [
            ("search", Rpc::Search, "ranking"),
            ("recommend", Rpc::Recommend, "ranking"),
            ("embed", Rpc::Embed, "embedding"),
        ] {
            assert_eq!(name.parse::<Rpc>(), Ok(rpc));
            assert_eq!(rpc.service(), service);
        }
        assert!("retrieve".parse::<Rpc>().is_err());
    }

    #[test]
    fn a_surge_multiplies_the_rate_for_its_stretch_only() {
        let mut o = opts();
        o.qps = 100.0;
        o.duration = Duration::from_secs(3);
        assert_eq!(o.schedule().count(), 300);
        // A rate whose gap is no whole number of nanoseconds: still qps x duration.
        o.qps = 30.0;
        assert_eq!(o.schedule().count(), 90);
        o.qps = 100.0;
        o.surges = vec![Surge {
            from: Duration::from_secs(1),
            duration: Duration::from_secs(1),
            factor: 3.0,
        }];
        let at: Vec<Duration> = o.schedule().collect();
        let in_second = |s: u64| at.iter().filter(|t| t.as_secs() == s).count();
        assert_eq!(in_second(0), 100);
        assert!((299..=301).contains(&in_second(1)), "{}", in_second(1));
        assert!((99..=101).contains(&in_second(2)), "{}", in_second(2));
        assert!(at.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn bad_options_are_refused() {
        let mut o = opts();
        o.qps = 0.0;
        assert!(o.validate().is_err());
        let mut o = opts();
        o.inputs.clear();
        assert!(o.validate().is_err());
        let mut o = opts();
        o.surges = vec![Surge {
            from: Duration::ZERO,
            duration: Duration::from_secs(1),
            factor: 0.5,
        }];
        assert!(o.validate().is_err());
        assert!("grep".parse::<Rpc>().is_err());
    }
}
