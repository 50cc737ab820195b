//! Calls to one upstream service over its [`Balanced`] channel, with retries within a
//! budget and optional hedging.
//!
//! - **Balancing and ejection**: [`Balanced`] (p2c over peak-EWMA; failing or hung
//!   replicas ejected and probed back, never the last one in rotation; fails fast
//!   when discovery lists none).
//! - **Retries**: a call that fails with UNAVAILABLE (the replica could not take it:
//!   refused, reset, draining), or that a replica refused with RESOURCE_EXHAUSTED
//!   (its admission limit or queue is full) while another replica is in rotation, is
//!   tried again on another replica, at most `max_retries` times, and only
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

use crate::balance::{BalanceConfig, Balanced, Placement};

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

    /// One attempt of `call`, and where it went.
    fn attempt<T, F, Fut>(&self, call: &mut F, kind: &'static str) -> (Instrumented<Fut>, Placement)
    where
        F: FnMut(Balanced) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let (ch, placement) = self.channel().placed();
        (call(ch).instrument(self.attempt_span(kind)), placement)
    }

    /// Keeps the replica an attempt failed on out of the way of its retry, while
    /// another replica is in rotation (with none other, the retry waits for no one).
    fn avoid(&self, failed_on: Option<&Placement>) {
        if let Some(p) = failed_on
            && self.channel().in_rotation() > 1
        {
            p.avoid(self.config.balance.stall_after);
        }
    }

    /// Whether a failed attempt may be tried again elsewhere: the replica could not
    /// take the call (UNAVAILABLE), or refused it for want of room
    /// (RESOURCE_EXHAUSTED: it did no work) and another replica may have some. A
    /// lone replica's refusal goes back to the caller at once: asking it again
    /// would only add to its load.
    fn retryable(&self, s: &tonic::Status) -> bool {
        match s.code() {
            tonic::Code::Unavailable => true,
            tonic::Code::ResourceExhausted => self.channel().in_rotation() > 1,
            _ => false,
        }
    }

    /// Runs an idempotent `call`, retried on UNAVAILABLE (and RESOURCE_EXHAUSTED,
    /// on another replica) within the budget.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Balanced) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.run(call, false).await
    }

    /// Like [`Upstream::call`], and a second attempt races the first when it is
    /// slower than the observed p95: first answer wins, the other is cancelled.
    pub async fn call_hedged<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Balanced) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.run(call, true).await
    }

    /// A call, its retries and (when `hedge`) its hedge.
    async fn run<T, F, Fut>(&self, mut call: F, hedge: bool) -> Result<T, tonic::Status>
    where
        F: FnMut(Balanced) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.budget.deposit();
        let started = Instant::now();
        let (first, placement) = self.attempt(&mut call, "first");
        let mut first = std::pin::pin!(first);
        let Some(delay) = self.hedge_delay().filter(|_| hedge) else {
            let r = first.await;
            return self.settle(r, Some(placement), started, &mut call).await;
        };
        tokio::select! {
            r = &mut first => return self.settle(r, Some(placement), started, &mut call).await,
            () = tokio::time::sleep(delay) => {}
        }
        if !self.budget.withdraw() {
            let r = first.await;
            return self.settle(r, Some(placement), started, &mut call).await;
        }
        metrics::counter!("rankmesh_client_hedges_total", "service" => self.service).increment(1);
        tracing::debug!(?delay, "no answer within the hedging delay; hedging");
        // The replica that is slow on the first attempt must not take the hedge.
        placement.suspect(self.config.balance.stall_after);
        let (second, hedged) = self.attempt(&mut call, "hedge");
        let mut second = std::pin::pin!(second);
        // The first success wins; dropping the other future cancels its RPC.
        let (r, last) = tokio::select! {
            r = &mut first => match r {
                Ok(v) => (Ok(v), None),
                Err(e) => self.race(second, Some(hedged), e, &placement, &mut call).await,
            },
            r = &mut second => match r {
                Ok(v) => (Ok(v), None),
                Err(e) => self.race(first, Some(placement.clone()), e, &hedged, &mut call).await,
            },
        };
        placement.clear();
        self.settle(r, last, started, &mut call).await
    }

    /// One attempt failed with `failed` (on `failed_on`) while `remaining` still
    /// runs (it may be stuck on a hung replica): on UNAVAILABLE, a retry races it
    /// (budget permitting) instead of waiting on it alone. Returns the outcome, and
    /// where it came from when that is one attempt that failed.
    async fn race<T, F, Fut>(
        &self,
        remaining: impl Future<Output = Result<T, tonic::Status>>,
        remaining_on: Option<Placement>,
        failed: tonic::Status,
        failed_on: &Placement,
        call: &mut F,
    ) -> (Result<T, tonic::Status>, Option<Placement>)
    where
        F: FnMut(Balanced) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        if !self.retryable(&failed) || self.config.max_retries == 0 || !self.budget.withdraw() {
            return (remaining.await, remaining_on);
        }
        metrics::counter!("rankmesh_client_retries_total", "service" => self.service).increment(1);
        self.avoid(Some(failed_on));
        let (retry, retried_on) = self.attempt(call, "retry");
        let (mut remaining, mut retry) = (std::pin::pin!(remaining), std::pin::pin!(retry));
        tokio::select! {
            r = &mut remaining => match r {
                Ok(v) => (Ok(v), None),
                Err(_) => (retry.await, Some(retried_on)),
            },
            r = &mut retry => match r {
                Ok(v) => (Ok(v), None),
                Err(_) => (remaining.await, remaining_on),
            },
        }
    }

    /// Records the latency of a success, or retries an UNAVAILABLE within budget,
    /// each retry kept off the replica the attempt before it failed on.
    async fn settle<T, F, Fut>(
        &self,
        mut r: Result<T, tonic::Status>,
        mut failed_on: Option<Placement>,
        started: Instant,
        call: &mut F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(Balanced) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        for _ in 0..self.config.max_retries {
            match &r {
                Err(s) if self.retryable(s) && self.budget.withdraw() => {
                    tracing::debug!(service = self.service, error = %s, "refused; retrying");
                    metrics::counter!("rankmesh_client_retries_total", "service" => self.service)
                        .increment(1);
                    self.avoid(failed_on.as_ref());
                    let (retry, placement) = self.attempt(call, "retry");
                    r = retry.await;
                    failed_on = Some(placement);
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

    /// A replica that fails every call at once: accepts, then closes (as a
    /// partitioned or restarting replica's proxy, or a crashing process, does).
    async fn failing_replica() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        addr
    }

    async fn healthy_replica() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let (_, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        addr
    }

    /// Never ejected, one retry, a budget that never runs out: only avoiding the
    /// replica that failed can make every call succeed.
    fn one_retry_elsewhere() -> UpstreamConfig {
        UpstreamConfig {
            balance: BalanceConfig {
                eject_after: u32::MAX,
                ..BalanceConfig::default()
            },
            max_retries: 1,
            retry_ratio: 1.0,
            retry_floor_per_s: 1000,
            ..UpstreamConfig::default()
        }
    }

    #[tokio::test]
    async fn a_retry_does_not_go_back_to_the_replica_that_just_failed() {
        // (The failing replica fails fast, so it looks the less loaded of the two
        // to peak-EWMA.)
        let u = Upstream::with_config(
            "x",
            Resolver::fixed("x", &[failing_replica().await, healthy_replica().await]),
            one_retry_elsewhere(),
        );
        let mut failed = Vec::new();
        for _ in 0..40 {
            let r = u
                .call(|ch| async move {
                    tonic_health::pb::health_client::HealthClient::new(ch)
                        .check(tonic_health::pb::HealthCheckRequest::default())
                        .await
                })
                .await;
            if let Err(s) = r {
                failed.push(s.to_string());
            }
        }
        assert!(
            failed.is_empty(),
            "{} of 40 failed: {:?}",
            failed.len(),
            failed.first()
        );
    }

    /// A replica whose admission refuses every call (RESOURCE_EXHAUSTED).
    async fn refusing_replica() -> String {
        use tonic_health::pb::health_server::{Health, HealthServer};
        use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
        struct Refusing;
        #[tonic::async_trait]
        impl Health for Refusing {
            async fn check(
                &self,
                _: tonic::Request<HealthCheckRequest>,
            ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
                Err(tonic::Status::resource_exhausted(
                    "over the admission limit",
                ))
            }
            type WatchStream = futures::stream::Empty<Result<HealthCheckResponse, tonic::Status>>;
            async fn watch(
                &self,
                _: tonic::Request<HealthCheckRequest>,
            ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
                Err(tonic::Status::resource_exhausted(
                    "over the admission limit",
                ))
            }
        }
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HealthServer::new(Refusing))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        addr
    }

    async fn check(u: &Upstream) -> Result<(), tonic::Status> {
        u.call(|ch| async move {
            tonic_health::pb::health_client::HealthClient::new(ch)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map(drop)
        })
        .await
    }

    #[tokio::test]
    async fn a_refusal_is_retried_on_another_replica_but_not_on_a_lone_one() {
        let config = one_retry_elsewhere();
        let refusing = refusing_replica().await;
        let pair = Upstream::with_config(
            "x",
            Resolver::fixed("x", &[refusing.clone(), healthy_replica().await]),
            config,
        );
        for i in 0..40 {
            check(&pair)
                .await
                .unwrap_or_else(|s| panic!("call {i}: {s}"));
        }
        let lone = Upstream::with_config("x", Resolver::fixed("x", &[refusing]), config);
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let r = lone
            .call(|ch| {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    tonic_health::pb::health_client::HealthClient::new(ch)
                        .check(tonic_health::pb::HealthCheckRequest::default())
                        .await
                }
            })
            .await;
        assert_eq!(
            r.expect_err("refused").code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(attempts.load(std::sync::atomic::Ordering::Relaxed), 1);
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
