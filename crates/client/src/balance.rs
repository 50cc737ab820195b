//! A load-balanced gRPC channel over one service's replicas, following discovery.
//!
//! Endpoints come from a [`Resolver`] (an etcd watch or a fixed list) as a
//! `tower::discover` stream. Each one is a lazily connecting tonic `Channel`,
//! wrapped in [`Ejecting`] (taken out of rotation after consecutive failures, let
//! back for one probe after a cooldown that doubles while probes fail) and in
//! peak-EWMA load tracking; `tower::balance::p2c` picks the less loaded of two
//! random ready replicas per request. A `Buffer` makes the whole thing cloneable, so
//! typed clients (`RankingServiceClient::new(balanced)`) share one balancer.
//!
//! Ejection matters because a dead replica answers *fast* (connection refused), so
//! peak-EWMA alone would favour it, and tonic's reconnecting channel reports ready on
//! a dead endpoint (tonic#2839). When no replica is in rotation, calls fail at once
//! with UNAVAILABLE naming the service instead of waiting for one to appear.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rankmesh_common::discovery::Resolver;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::discover::Change;
use tower::{BoxError, Service, ServiceExt};

/// How replicas are balanced, ejected and probed.
#[derive(Debug, Clone, Copy)]
pub struct BalanceConfig {
    pub connect_timeout: Duration,
    /// Consecutive failures (transport errors or UNAVAILABLE) that eject a replica.
    pub eject_after: u32,
    /// First ejection; doubles per failed probe up to `max_ejection`.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Peak-EWMA: the RTT assumed for a new replica and the decay window.
    pub default_rtt: Duration,
    pub decay: Duration,
    /// Requests queued for the balancer at most.
    pub buffer: usize,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(500),
            eject_after: 2,
            base_ejection: Duration::from_millis(500),
            max_ejection: Duration::from_secs(30),
            default_rtt: Duration::from_millis(20),
            decay: Duration::from_secs(10),
            buffer: 1024,
        }
    }
}

type Inner = tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

/// A cloneable, balanced gRPC channel to one service.
#[derive(Clone)]
pub struct Balanced {
    service: &'static str,
    inner: Inner,
    resolver: Resolver,
    /// Replicas ejected right now.
    ejected: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Balanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balanced")
            .field("service", &self.service)
            .field("in_rotation", &self.in_rotation())
            .finish()
    }
}

impl Balanced {
    /// Starts following `resolver` (must be called inside a tokio runtime).
    pub fn new(service: &'static str, resolver: &Resolver, config: BalanceConfig) -> Self {
        let ejected = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&ejected);
        let discover = resolver.changes().filter_map(move |c| {
            let counter = Arc::clone(&counter);
            async move {
                match c {
                    Change::Insert(id, ep) => {
                        let uri = crate::uri_of(&ep.grpc);
                        match Endpoint::from_shared(uri.clone()) {
                            Ok(e) => {
                                let channel = e
                                    .connect_timeout(config.connect_timeout)
                                    .tcp_nodelay(true)
                                    .connect_lazy();
                                Some(Ok::<_, BoxError>(Change::Insert(
                                    id,
                                    Ejecting::new(channel, uri, config, counter),
                                )))
                            }
                            Err(e) => {
                                tracing::warn!(endpoint = %uri, error = %e, "bad endpoint in discovery; ignored");
                                None
                            }
                        }
                    }
                    Change::Remove(id) => Some(Ok(Change::Remove(id))),
                }
            }
        });
        let discover = Box::pin(discover);
        let peak = tower::load::PeakEwmaDiscover::new(
            discover,
            config.default_rtt,
            config.decay,
            tower::load::CompleteOnResponse::default(),
        );
        let balance = tower::balance::p2c::Balance::new(peak);
        let buffered = tower::buffer::Buffer::new(balance, config.buffer);
        Self {
            service,
            inner: tower::util::BoxCloneSyncService::new(buffered),
            resolver: resolver.clone(),
            ejected,
        }
    }

    /// Replicas known from discovery and not ejected. (The balancer learns of
    /// changes lazily, when it is polled; discovery is the source of truth.)
    pub fn in_rotation(&self) -> usize {
        self.resolver
            .current()
            .len()
            .saturating_sub(self.ejected.load(Ordering::Relaxed))
    }
}

impl Service<http::Request<Body>> for Balanced {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.in_rotation() == 0 {
            // `call` fails fast; do not wait on a balancer with nobody in it.
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if self.in_rotation() == 0 {
            let status = tonic::Status::unavailable(format!(
                "no {} replica available (none registered, or all ejected after failures)",
                self.service
            ));
            return Box::pin(futures::future::ready(Err(Box::new(status) as BoxError)));
        }
        // The buffer was polled ready above; a clone keeps `self` usable meanwhile.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        let service = self.service;
        Box::pin(inner.oneshot(req).map(move |r| {
            // A transport failure (refused, reset, broken pipe) means the replica
            // was unavailable; tonic would report it as UNKNOWN.
            r.map_err(|e| {
                if e.is::<tonic::Status>() {
                    e
                } else {
                    Box::new(tonic::Status::unavailable(format!(
                        "{service} replica: {e}"
                    ))) as BoxError
                }
            })
        }))
    }
}

/// Health of one replica.
#[derive(Debug)]
struct Health {
    consecutive_failures: u32,
    ejected_until: Option<tokio::time::Instant>,
    next_ejection: Duration,
    in_rotation: bool,
}

/// One replica's channel, taken out of rotation after failures, back for a probe
/// after a cooldown.
#[derive(Debug)]
struct Ejecting {
    inner: Channel,
    uri: String,
    config: BalanceConfig,
    health: Arc<Mutex<Health>>,
    /// The balancer's count of ejected replicas.
    counter: Arc<AtomicUsize>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Ejecting {
    fn new(inner: Channel, uri: String, config: BalanceConfig, counter: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            uri,
            config,
            health: Arc::new(Mutex::new(Health {
                consecutive_failures: 0,
                ejected_until: None,
                next_ejection: config.base_ejection,
                in_rotation: true,
            })),
            counter,
            sleep: None,
        }
    }
}

impl Drop for Ejecting {
    fn drop(&mut self) {
        let h = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !h.in_rotation {
            self.counter.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether a response says the replica could not serve (draining, overloaded
/// transport): a trailers-only UNAVAILABLE.
fn unavailable(resp: &http::Response<Body>) -> bool {
    resp.headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"14")
}

fn record(
    health: &Arc<Mutex<Health>>,
    counter: &Arc<AtomicUsize>,
    config: &BalanceConfig,
    uri: &str,
    ok: bool,
) {
    let mut h = health
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if ok {
        h.consecutive_failures = 0;
        h.next_ejection = config.base_ejection;
        return;
    }
    h.consecutive_failures += 1;
    // After an ejection the count is kept, so one failed probe ejects again (for
    // twice as long).
    if h.consecutive_failures < config.eject_after || !h.in_rotation {
        return;
    }
    let cooldown = h.next_ejection;
    h.ejected_until = Some(tokio::time::Instant::now() + cooldown);
    h.next_ejection = (cooldown * 2).min(config.max_ejection);
    h.in_rotation = false;
    counter.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("rankmesh_client_ejections_total").increment(1);
    tracing::warn!(endpoint = %uri, ?cooldown, "replica ejected after failures");
    // Back in rotation after the cooldown, for a probe: a timer, because with every
    // replica ejected no request reaches the balancer to notice.
    let (weak, counter) = (Arc::downgrade(health), Arc::clone(counter));
    tokio::spawn(async move {
        tokio::time::sleep(cooldown).await;
        if let Some(health) = weak.upgrade() {
            let mut h = health
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !h.in_rotation {
                h.in_rotation = true;
                h.ejected_until = None;
                counter.fetch_sub(1, Ordering::Relaxed);
            }
        }
    });
}

impl Service<http::Request<Body>> for Ejecting {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let until = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .ejected_until;
        if let Some(until) = until
            && until > tokio::time::Instant::now()
        {
            // Not ready until the cooldown ends: p2c picks among the others. The
            // timer wakes the balancer for the probe.
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
            sleep.as_mut().reset(until);
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (health, counter, config, uri) = (
            Arc::clone(&self.health),
            Arc::clone(&self.counter),
            self.config,
            self.uri.clone(),
        );
        Box::pin(self.inner.call(req).map(move |r| {
            let ok = matches!(&r, Ok(resp) if !unavailable(resp));
            record(&health, &counter, &config, &uri, ok);
            r.map_err(Into::into)
        }))
    }
}
