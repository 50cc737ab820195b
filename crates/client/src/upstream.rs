//! Calls to one upstream service over its [`Balanced`] channel, with retries within a
//! budget and optional hedging.
//!
//! - **Balancing and ejection**: [`Balanced`] (p2c over peak-EWMA; failing or hung
//!   replicas ejected and probed back, never the last one in rotation; fails fast
//!   when discovery lists none).
//! - **Retries**: a call that fails with UNAVAILABLE (the replica could not take it:
//!   refused, reset, draining) is tried again, at most `max_retries` times, and only
//!   while the retry budget allows: retries may add at most `retry_ratio` of the
//!   recent request rate plus a floor of `retry_floor_per_s` (gRPC A6, Linkerd), so a
//!   sick upstream is not hit with a retry storm. Only idempotent calls should go
//!   through [`Upstream::call`]; the caller decides (RecordEvent only with an event
//!   id).
//! - **Hedging** ([`Upstream::call_hedged`], for latency-critical reads): when the
//!   first attempt has not answered after the observed p95 latency of this upstream,
//!   a second attempt starts (peak-EWMA counts the first one as load, so p2c sends
//!   the second elsewhere); the first answer wins and the other is cancelled. Hedges
//!   draw from the same budget.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rankmesh_common::discovery::Resolver;
use tower::retry::budget::{Budget, TpsBudget};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::balance::{BalanceConfig, Balanced};

/// Latencies kept to estimate the hedging delay.
const LATENCY_WINDOW: usize = 512;
/// Samples needed before the hedging delay follows observed latency (a p95 of a
/// handful is noise); until then `hedge_initial` applies.
const MIN_SAMPLES: usize = 20;
/// Successes between recomputations of the hedging delay.
const RECOMPUTE_EVERY: u64 = 16;

/// Retry budget and hedging of one upstream.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamConfig {
    pub balance: BalanceConfig,
    /// Retries per call at most, on top of the first attempt (0: never retry).
    pub max_retries: usize,
    /// Retries and hedges may add this share of the recent request rate...
    pub retry_ratio: f32,
    /// ... plus this many per second.
    pub retry_floor_per_s: u32,
    /// Hedge after this percentile of observed latency (0: never hedge).
    pub hedge_percentile: f64,
    /// The hedging delay until enough latencies are observed: a fresh client must
    /// not wait out a hung replica either.
    pub hedge_initial: Duration,
    /// Bounds of the hedging delay.
    pub hedge_min: Duration,
    pub hedge_max: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            balance: BalanceConfig::default(),
            max_retries: 2,
            retry_ratio: 0.2,
            retry_floor_per_s: 10,
            hedge_percentile: 0.95,
            hedge_initial: Duration::from_millis(50),
            hedge_min: Duration::from_millis(2),
            hedge_max: Duration::from_millis(500),
        }
    }
}

/// One upstream service.
pub struct Upstream {
    service: &'static str,
    resolver: Resolver,
    config: UpstreamConfig,
    /// Built on first use, inside the runtime (the balancer runs a task).
    channel: OnceLock<Balanced>,
    budget: TpsBudget,
    latencies: Mutex<VecDeque<Duration>>,
    /// Successes observed, and the hedging delay last computed from the window
    /// (0: not enough samples yet).
    observed: AtomicU64,
    delay_ns: AtomicU64,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("service", &self.service)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(service: &'static str, resolver: Resolver) -> Self {
        Self::with_config(service, resolver, UpstreamConfig::default())
    }

    pub fn with_config(service: &'static str, resolver: Resolver, config: UpstreamConfig) -> Self {
        Self {
            service,
            resolver,
            config,
            channel: OnceLock::new(),
            budget: TpsBudget::new(
                Duration::from_secs(10),
                config.retry_floor_per_s,
                config.retry_ratio,
            ),
            latencies: Mutex::new(VecDeque::with_capacity(LATENCY_WINDOW)),
            observed: AtomicU64::new(0),
            delay_ns: AtomicU64::new(0),
        }
    }

    /// The service's name in discovery.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The balanced channel (cloning it is cheap).
    pub fn channel(&self) -> Balanced {
        self.channel
            .get_or_init(|| Balanced::new(self.service, &self.resolver, self.config.balance))
            .clone()
    }

    fn observe(&self, took: Duration) {
        let mut l = self
            .latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.len() == LATENCY_WINDOW {
            l.pop_front();
        }
        l.push_back(took);
        // Sorting the window costs more than a call's own overhead: recompute the
        // percentile every few samples, not per call.
        let seen = self.observed.fetch_add(1, Ordering::Relaxed) + 1;
        if l.len() >= MIN_SAMPLES
            && (l.len() == MIN_SAMPLES || seen.is_multiple_of(RECOMPUTE_EVERY))
        {
            let mut sorted: Vec<Duration> = l.iter().copied().collect();
            drop(l);
            sorted.sort_unstable();
            let i = ((sorted.len() - 1) as f64 * self.config.hedge_percentile).round() as usize;
            let d =
                sorted[i.min(sorted.len() - 1)].clamp(self.config.hedge_min, self.config.hedge_max);
            self.delay_ns.store(d.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// The hedging delay: the configured percentile of recent latencies, bounded
    /// (`hedge_initial` while there are too few samples); `None` when hedging is off.
    pub fn hedge_delay(&self) -> Option<Duration> {
        if self.config.hedge_percentile <= 0.0 {
            return None;
        }
        match self.delay_ns.load(Ordering::Relaxed) {
            0 => Some(self.config.hedge_initial),
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Runs a `call` that must not be repeated: one attempt, balanced, neither
    /// retried nor hedged (its latency still counts for the hedging delay).
    pub async fn call_once<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(Balanced) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.budget.deposit();
        let started = Instant::now();
        let r = call(self.channel())
            .instrument(self.attempt_span("first"))
            .await;
        if r.is_ok() {
            self.observe(started.elapsed());
        }
        r
    }

    /// The span of one attempt (the network call): its kind is `first`, `hedge` or
    /// `retry`, and its context is what the server's span hangs under.
    fn attempt_span(&self, kind: &'static str) -> tracing::Span {
        tracing::info_span!(
            "attempt",
            otel.name = %format!("{} {kind}", self.service),
            otel.kind = "client",
            rpc.service = self.service,
            attempt = kind,
        )
    }

    fn attempt<T, F, Fut>(&self, call: &mut F, kind: &'static str) -> Instrumented<Fut>
    where
        F: FnMut(Balanced) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        call(self.channel()).instrument(self.attempt_span(kind))
    }

    /// Runs an idempotent `call`, retried on UNAVAILABLE within the budget.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Balanced) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.budget.deposit();
        let started = Instant::now();
        let r = self.attempt(&mut call, "first").await;
        self.settle(r, started, &mut call).await
    }

    /// Like [`Upstream::call`], and a second attempt races the first when it is
    /// slower than the observed p95: first answer wins, the other is cancelled.
    pub async fn call_hedged<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Balanced) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.budget.deposit();
        let started = Instant::now();
        let (ch, placement) = self.channel().placed();
        let mut first = std::pin::pin!(call(ch).instrument(self.attempt_span("first")));
        let Some(delay) = self.hedge_delay() else {
            let r = first.await;
            return self.settle(r, started, &mut call).await;
        };
        tokio::select! {
            r = &mut first => return self.settle(r, started, &mut call).await,
            () = tokio::time::sleep(delay) => {}
        }
        if !self.budget.withdraw() {
            let r = first.await;
            return self.settle(r, started, &mut call).await;
        }
        metrics::counter!("rankmesh_client_hedges_total", "service" => self.service).increment(1);
        tracing::debug!(?delay, "no answer within the hedging delay; hedging");
        // The replica that is slow on the first attempt must not take the hedge.
        placement.suspect(self.config.balance.stall_after);
        let mut second = std::pin::pin!(self.attempt(&mut call, "hedge"));
        // The first success wins; dropping the other future cancels its RPC.
        let r = tokio::select! {
            r = &mut first => match r {
                Ok(v) => Ok(v),
                Err(e) => self.race(second, e, &mut call).await,
            },
            r = &mut second => match r {
                Ok(v) => Ok(v),
                Err(e) => self.race(first, e, &mut call).await,
            },
        };
        placement.clear();
        self.settle(r, started, &mut call).await
    }

    /// One attempt failed with `failed` while `remaining` still runs (it may be
    /// stuck on a hung replica): on UNAVAILABLE, a retry races it (budget
    /// permitting) instead of waiting on it alone.
    async fn race<T, F, Fut>(
        &self,
        remaining: impl Future<Output = Result<T, tonic::Status>>,
        failed: tonic::Status,
        call: &mut F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(Balanced) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        if failed.code() != tonic::Code::Unavailable
            || self.config.max_retries == 0
            || !self.budget.withdraw()
        {
            return remaining.await;
        }
        metrics::counter!("rankmesh_client_retries_total", "service" => self.service).increment(1);
        let retry = self.attempt(call, "retry");
        let (mut remaining, mut retry) = (std::pin::pin!(remaining), std::pin::pin!(retry));
        tokio::select! {
            r = &mut remaining => match r {
                Ok(v) => Ok(v),
                Err(_) => retry.await,
            },
            r = &mut retry => match r {
                Ok(v) => Ok(v),
                Err(_) => remaining.await,
            },
        }
    }

    /// Records the latency of a success, or retries an UNAVAILABLE within budget.
    async fn settle<T, F, Fut>(
        &self,
        mut r: Result<T, tonic::Status>,
        started: Instant,
        call: &mut F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(Balanced) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        for _ in 0..self.config.max_retries {
            match &r {
                Err(s) if s.code() == tonic::Code::Unavailable && self.budget.withdraw() => {
                    tracing::debug!(service = self.service, error = %s, "unavailable; retrying");
                    metrics::counter!("rankmesh_client_retries_total", "service" => self.service)
                        .increment(1);
                    r = self.attempt(call, "retry").await;
                }
                _ => break,
            }
        }
        if r.is_ok() {
            self.observe(started.elapsed());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hedge_delay_is_the_bounded_percentile() {
        let u = Upstream::new("x", Resolver::fixed("x", &[]));
        assert_eq!(
            u.hedge_delay(),
            Some(Duration::from_millis(50)),
            "the initial delay until there are enough samples"
        );
        for ms in 1..=96 {
            u.observe(Duration::from_millis(ms));
        }
        // Recomputed at the 96th sample: p95 of 1..=96 ms.
        assert_eq!(u.hedge_delay(), Some(Duration::from_millis(91)));
        for _ in 0..LATENCY_WINDOW {
            u.observe(Duration::from_secs(5));
        }
        assert_eq!(u.hedge_delay(), Some(Duration::from_millis(500)), "capped");
    }

    #[tokio::test]
    async fn retries_stop_when_the_budget_is_spent() {
        let u = Upstream::with_config(
            "x",
            Resolver::fixed("x", &["127.0.0.1:1".to_owned()]),
            UpstreamConfig {
                retry_ratio: 0.0,
                retry_floor_per_s: 1,
                ..UpstreamConfig::default()
            },
        );
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        for _ in 0..20 {
            let r: Result<(), _> = u
                .call(|_| {
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async { Err(tonic::Status::unavailable("down")) }
                })
                .await;
            assert_eq!(r.expect_err("down").code(), tonic::Code::Unavailable);
        }
        // 20 calls; retries capped by a floor of 1/s over the 10 s window.
        let n = attempts.load(std::sync::atomic::Ordering::Relaxed);
        assert!((20..=32).contains(&n), "{n} attempts for 20 calls");
    }
}
