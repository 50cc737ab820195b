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
//!
//! A *hung* replica (SIGSTOP, a wedged process, a black-holed link) is the opposite
//! case: its connection stays open and ready, calls never answer, and hedging
//! cancels them, so neither failures nor peak-EWMA load ever build up against it.
//! So each replica also tracks how long it has gone without answering anything while
//! calls were sent to it (cancelled ones included); past `stall_after`, with at least
//! two unanswered calls, it is ejected like a failing one.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
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
    /// A replica that answers nothing for this long while at least two calls wait
    /// on it (or were given up on) counts as hung and is ejected.
    pub stall_after: Duration,
    /// Cancelled streams each connection remembers (late frames for them are
    /// ignored rather than counted as protocol errors).
    pub remembered_resets: usize,
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
            stall_after: Duration::from_millis(500),
            remembered_resets: 4096,
            buffer: 1024,
        }
    }
}

type Inner = tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;
/// What both layers of the balancer (the p2c set and each ejecting endpoint) answer
/// with.
type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>>;

/// A cloneable, balanced gRPC channel to one service.
#[derive(Clone)]
pub struct Balanced {
    service: &'static str,
    inner: Inner,
    resolver: Resolver,
    /// Replicas ejected right now.
    ejected: Ejected,
    /// Set on a channel made for one attempt: told which replica took it.
    placement: Option<Placement>,
}

/// Which replica one attempt went to (the replica's channel fills it in), so that a
/// hedge can be kept off it: p2c alone may well pick the same replica again, and a
/// hung replica's calls are cancelled, so its load looks low.
#[derive(Debug, Clone, Default)]
pub struct Placement(Arc<Mutex<Option<Arc<Mutex<Health>>>>>);

impl Placement {
    fn replica(&self) -> Option<Arc<Mutex<Health>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keeps the replica this attempt went to out of rotation until it answers
    /// something, [`Placement::clear`], or `for_at_most` passes.
    pub fn suspect(&self, for_at_most: Duration) {
        if let Some(h) = self.replica() {
            lock(&h).suspect_until = Some(tokio::time::Instant::now() + for_at_most);
        }
    }

    /// Keeps the replica this attempt went to out of rotation until it answers a
    /// call successfully or `for_at_most` passes: it has just failed this call, and
    /// the retry must go elsewhere. (A replica failing fast looks lightly loaded to
    /// peak-EWMA, so p2c would pick it again; and one failure is below
    /// `eject_after`.) Callers avoid only while another replica is in rotation
    /// ([`Balanced::in_rotation`]), or the retry would wait for no one.
    pub fn avoid(&self, for_at_most: Duration) {
        if let Some(h) = self.replica() {
            lock(&h).avoid_until = Some(tokio::time::Instant::now() + for_at_most);
        }
    }

    /// Lifts [`Placement::suspect`] (the race is over).
    pub fn clear(&self) {
        if let Some(h) = self.replica() {
            let mut h = lock(&h);
            if h.suspect_until.take().is_some()
                && let Some(w) = h.waker.take()
            {
                w.wake();
            }
        }
    }
}

/// A lazily connected channel to `uri`: through the TLS connector when there is
/// one, plaintext otherwise.
fn channel(
    uri: &str,
    config: &BalanceConfig,
    connector: Option<&Result<rankmesh_tls::Connector, String>>,
) -> Result<Channel, BoxError> {
    let endpoint = Endpoint::from_shared(uri.to_owned())?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        // Hedging cancels calls (RST_STREAM); frames the server already sent for
        // them arrive after. h2 remembers 50 reset streams by default and counts
        // frames for forgotten ones toward a limit of 1024 "local error resets",
        // then tears the connection down with GOAWAY(ENHANCE_YOUR_CALM): seen in
        // `cargo bench --bench stack` at 32 callers. Remember enough to cover a
        // burst.
        .http2_max_concurrent_reset_streams(config.remembered_resets);
    Ok(match connector {
        None => endpoint.connect_lazy(),
        Some(Ok(c)) => endpoint.connect_with_connector_lazy(c.clone()),
        Some(Err(e)) => return Err(format!("TLS: {e}").into()),
    })
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
        let ejected = Ejected::default();
        let counter = ejected.clone();
        // The TLS identity to dial with (the resolver's, else the process's): a
        // server must prove it is a `service` of the mesh CA.
        let connector = resolver
            .tls()
            .map(|tls| tls.connector(service).map_err(|e| e.to_string()));
        let discover = resolver.changes().filter_map(move |c| {
            let counter = counter.clone();
            let connector = connector.clone();
            async move {
                match c {
                    Change::Insert(id, ep) => {
                        let uri = crate::uri_of(&ep.grpc);
                        let channel = match channel(&uri, &config, connector.as_ref()) {
                            Ok(channel) => channel,
                            Err(e) => {
                                tracing::warn!(endpoint = %uri, error = %e, "cannot dial this endpoint from discovery; ignored");
                                return None;
                            }
                        };
                        Some(Ok::<_, BoxError>(Change::Insert(
                            id,
                            Ejecting::new(channel, uri, config, counter),
                        )))
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
            placement: None,
        }
    }

    /// A clone for one attempt, and where that attempt will have gone.
    pub fn placed(&self) -> (Self, Placement) {
        let placement = Placement::default();
        let mut ch = self.clone();
        ch.placement = Some(placement.clone());
        (ch, placement)
    }

    /// Replicas known from discovery and not ejected. (The balancer learns of
    /// changes lazily, when it is polled; discovery is the source of truth, so a
    /// replica that has left discovery counts for nothing, ejected or not: with a
    /// count of ejections instead, a dead replica leaving discovery while ejected
    /// made the last live one look ejected too, until its cooldown ended.)
    pub fn in_rotation(&self) -> usize {
        let current = self.resolver.current();
        // Called twice per request: most calls see nothing ejected, and then need
        // neither the lock held per replica nor a URI built per replica.
        let ejected = self.ejected.set();
        if ejected.is_empty() {
            return current.len();
        }
        current
            .values()
            .filter(|ep| !ejected.contains(crate::uri_of(&ep.grpc).as_str()))
            .count()
    }
}

impl Service<http::Request<Body>> for Balanced {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.in_rotation() == 0 {
            // `call` fails fast; do not wait on a balancer with nobody in it.
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // Every attempt carries the caller's trace context (`traceparent`).
        rankmesh_common::observe::inject(req.headers_mut());
        if let Some(p) = &self.placement {
            req.extensions_mut().insert(p.clone());
        }
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

/// The replicas (by URI) ejected right now, and how many the balancer holds.
#[derive(Debug, Clone, Default)]
struct Ejected {
    set: Arc<Mutex<std::collections::HashSet<String>>>,
    members: Arc<std::sync::atomic::AtomicUsize>,
}

impl Ejected {
    fn set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// Whether one more replica may be ejected: never the last one in rotation,
    /// for looking hung or for failing. Ejection routes calls around a replica;
    /// with nowhere else to route them it only turns slow or flaky answers into
    /// certain failures. Seen in drills on 2 starved cores: every replica looked
    /// hung at once, and every call failed fast; and the one feature replica was
    /// ejected for two transport errors, degrading every search for its cooldown.
    /// A dead last replica still fails fast (its connection is refused).
    fn may_eject(&self) -> bool {
        let members = self.members.load(std::sync::atomic::Ordering::Relaxed);
        self.set().len() + 1 < members
    }
    fn add(&self, uri: &str) {
        self.set().insert(uri.to_owned());
    }
    fn remove(&self, uri: &str) {
        self.set().remove(uri);
    }
}

/// Health of one replica: closed (in rotation), open (ejected for a cooldown) or
/// half-open (back after a cooldown: one probe call at a time until one succeeds).
#[derive(Debug)]
struct Health {
    consecutive_failures: u32,
    ejected_until: Option<tokio::time::Instant>,
    next_ejection: Duration,
    in_rotation: bool,
    /// Back from an ejection, not yet answered successfully.
    probing: bool,
    /// Calls sent and not yet answered or given up on.
    in_flight: u32,
    /// Calls sent since the last answer, and when the first two of them were sent:
    /// a call given up on (a hedge loser, a caller's deadline) stays unanswered, so
    /// a hung replica cannot look idle by having its calls cancelled.
    unanswered: u32,
    first_unanswered: Option<tokio::time::Instant>,
    second_unanswered: Option<tokio::time::Instant>,
    /// Kept out of rotation until then (or its next answer): a call on it is being
    /// hedged, so the hedge must go elsewhere.
    suspect_until: Option<tokio::time::Instant>,
    /// Kept out of rotation until then (or its next success): it failed a call
    /// that is being retried.
    avoid_until: Option<tokio::time::Instant>,
    /// The balancer task waiting for this replica to take a call again.
    waker: Option<Waker>,
}

impl Health {
    fn new(config: &BalanceConfig) -> Self {
        Self {
            consecutive_failures: 0,
            ejected_until: None,
            next_ejection: config.base_ejection,
            in_rotation: true,
            probing: false,
            in_flight: 0,
            unanswered: 0,
            first_unanswered: None,
            second_unanswered: None,
            suspect_until: None,
            avoid_until: None,
            waker: None,
        }
    }

    fn sent(&mut self, now: tokio::time::Instant) {
        self.in_flight += 1;
        self.unanswered += 1;
        if self.first_unanswered.is_none() {
            self.first_unanswered = Some(now);
        } else if self.second_unanswered.is_none() {
            self.second_unanswered = Some(now);
        }
    }

    /// An answer (of any kind) came back: the replica is not hung. Calls still in
    /// flight are counted as sent now.
    fn answered(&mut self, now: tokio::time::Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.restart_count(now);
        self.suspect_until = None;
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn given_up(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    fn restart_count(&mut self, now: tokio::time::Instant) {
        self.unanswered = self.in_flight;
        self.first_unanswered = (self.in_flight > 0).then_some(now);
        self.second_unanswered = (self.in_flight > 1).then_some(now);
    }

    /// Until when the replica must not take a call (always later than `now`, so a
    /// caller that sleeps until then makes progress): the end of its ejection; the
    /// moment its unanswered probe counts as hung; or the end of a suspicion or an
    /// avoidance. A probe past that moment that was not ejected for it (the last
    /// replica in rotation is never ejected) lets calls through again: returning
    /// that past moment had `poll_ready` loop on an elapsed timer for good, one
    /// worker thread at 100% and every call stuck (a drill with Redis down, where
    /// the ranking replicas all looked hung).
    fn not_before(
        &self,
        now: tokio::time::Instant,
        stall_after: Duration,
    ) -> Option<tokio::time::Instant> {
        let probe = (self.probing && self.unanswered > 0)
            .then(|| self.first_unanswered.unwrap_or(now) + stall_after);
        match self.ejected_until {
            Some(until) if until > now => Some(until),
            _ => probe
                .into_iter()
                .chain(self.suspect_until)
                .chain(self.avoid_until)
                .filter(|until| *until > now)
                .max(),
        }
    }

    /// Whether the replica looks hung: it has answered nothing since two calls
    /// were sent to it (one, for a probe), the later of them `after` ago. Two,
    /// because one call lost long ago (a cancelled hedge) followed by an idle spell
    /// says nothing about the call just sent.
    fn stalled(&self, now: tokio::time::Instant, after: Duration) -> bool {
        let since = if self.probing {
            self.first_unanswered
        } else {
            self.second_unanswered
        };
        since.is_some_and(|since| now.saturating_duration_since(since) >= after)
    }
}

fn lock(health: &Mutex<Health>) -> std::sync::MutexGuard<'_, Health> {
    health
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One replica's channel, taken out of rotation after failures or a hang, back for
/// a probe after a cooldown.
#[derive(Debug)]
struct Ejecting {
    inner: Channel,
    uri: String,
    config: BalanceConfig,
    health: Arc<Mutex<Health>>,
    /// The balancer's set of ejected replicas.
    counter: Ejected,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Ejecting {
    fn new(inner: Channel, uri: String, config: BalanceConfig, counter: Ejected) -> Self {
        counter
            .members
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            inner,
            uri,
            health: Arc::new(Mutex::new(Health::new(&config))),
            config,
            counter,
            sleep: None,
        }
    }
}

impl Drop for Ejecting {
    fn drop(&mut self) {
        if !lock(&self.health).in_rotation {
            self.counter.remove(&self.uri);
        }
        self.counter
            .members
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether a response says the replica could not serve (draining, overloaded
/// transport): a trailers-only UNAVAILABLE.
fn unavailable(resp: &http::Response<Body>) -> bool {
    resp.headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"14")
}

/// What one replica's calls need to report back.
#[derive(Debug, Clone)]
struct Reporter {
    health: Arc<Mutex<Health>>,
    counter: Ejected,
    config: BalanceConfig,
    uri: Arc<str>,
}

impl Reporter {
    fn record(&self, ok: bool) {
        let mut h = lock(&self.health);
        h.answered(tokio::time::Instant::now());
        if ok {
            h.avoid_until = None;
            h.consecutive_failures = 0;
            h.next_ejection = self.config.base_ejection;
            h.probing = false;
            return;
        }
        h.consecutive_failures += 1;
        // After an ejection the count is kept, so one failed probe ejects again (for
        // twice as long).
        if h.consecutive_failures < self.config.eject_after
            || !h.in_rotation
            || !self.counter.may_eject()
        {
            return;
        }
        self.eject(&mut h, "failures");
    }

    /// Takes the replica out of rotation for its current cooldown, then lets it
    /// back, half-open, for a probe.
    fn eject(&self, h: &mut Health, why: &'static str) {
        let cooldown = h.next_ejection;
        h.ejected_until = Some(tokio::time::Instant::now() + cooldown);
        h.next_ejection = (cooldown * 2).min(self.config.max_ejection);
        h.in_rotation = false;
        self.counter.add(&self.uri);
        metrics::counter!("rankmesh_client_ejections_total", "reason" => why).increment(1);
        tracing::warn!(endpoint = %self.uri, ?cooldown, reason = why, "replica ejected");
        // Back in rotation after the cooldown: a timer, because with every replica
        // ejected no request reaches the balancer to notice.
        let (weak, counter, uri) = (
            Arc::downgrade(&self.health),
            self.counter.clone(),
            Arc::clone(&self.uri),
        );
        tokio::spawn(async move {
            tokio::time::sleep(cooldown).await;
            if let Some(health) = weak.upgrade() {
                let mut h = lock(&health);
                if !h.in_rotation {
                    h.in_rotation = true;
                    h.probing = true;
                    h.ejected_until = None;
                    // The probe starts a fresh count: calls lost before the
                    // ejection must not eject it again at once.
                    h.restart_count(tokio::time::Instant::now());
                    counter.remove(&uri);
                    if let Some(w) = h.waker.take() {
                        w.wake();
                    }
                }
            }
        });
    }
}

/// Marks a call given up on when its future is dropped before an answer.
struct InFlight {
    health: Arc<Mutex<Health>>,
    done: bool,
}

impl InFlight {
    /// The call came back: the answer is recorded elsewhere.
    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.health).given_up();
        }
    }
}

impl Ejecting {
    fn reporter(&self) -> Reporter {
        Reporter {
            health: Arc::clone(&self.health),
            counter: self.counter.clone(),
            config: self.config,
            uri: Arc::from(self.uri.as_str()),
        }
    }

    /// Until when this replica must not take a call: ejected (until the cooldown
    /// ends), or half-open with its probe unanswered (until that probe counts as
    /// hung). Ejects a replica found hung.
    fn not_before(&self, cx: &Context<'_>) -> Option<tokio::time::Instant> {
        let mut h = lock(&self.health);
        let now = tokio::time::Instant::now();
        if h.in_rotation && h.stalled(now, self.config.stall_after) && self.counter.may_eject() {
            self.reporter().eject(&mut h, "hung");
        }
        let until = h.not_before(now, self.config.stall_after);
        if until.is_some() {
            h.waker = Some(cx.waker().clone());
        }
        until
    }
}

impl Service<http::Request<Body>> for Ejecting {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Not ready while ejected or probing: p2c picks among the others. The timer
        // (or the probe's answer) wakes the balancer to look again.
        while let Some(until) = self.not_before(cx) {
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
        if let Some(p) = req.extensions().get::<Placement>() {
            *p.0.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(Arc::clone(&self.health));
        }
        let reporter = self.reporter();
        lock(&self.health).sent(tokio::time::Instant::now());
        let guard = InFlight {
            health: Arc::clone(&self.health),
            done: false,
        };
        Box::pin(self.inner.call(req).map(move |r| {
            guard.finish();
            let ok = matches!(&r, Ok(resp) if !unavailable(resp));
            reporter.record(ok);
            r.map_err(Into::into)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 s stall threshold, which the timings below are written against.
    fn config() -> BalanceConfig {
        BalanceConfig {
            stall_after: Duration::from_secs(1),
            ..BalanceConfig::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_last_replica_in_rotation_is_never_ejected() {
        let ejected = Ejected::default();
        let members = |n| {
            ejected
                .members
                .store(n, std::sync::atomic::Ordering::Relaxed)
        };
        members(1);
        assert!(!ejected.may_eject(), "the only replica");
        members(3);
        assert!(ejected.may_eject());
        ejected.add("http://a");
        assert!(ejected.may_eject(), "one of three out, one more may go");
        ejected.add("http://b");
        assert!(!ejected.may_eject(), "the last one in rotation stays");
        ejected.remove("http://a");
        assert!(ejected.may_eject());
    }

    #[test]
    fn a_stalled_probe_that_was_not_ejected_lets_calls_through() {
        let config = config();
        let mut h = Health::new(&config);
        let t0 = tokio::time::Instant::now();
        h.probing = true;
        h.restart_count(t0);
        h.sent(t0);
        assert_eq!(
            h.not_before(t0 + ms(100), config.stall_after),
            Some(t0 + config.stall_after),
            "one probe at a time, until it counts as hung"
        );
        // Hung, but the last one in rotation: never a moment in the past.
        assert_eq!(h.not_before(t0 + ms(1_100), config.stall_after), None);
        h.suspect_until = Some(t0 + ms(1_300));
        assert_eq!(
            h.not_before(t0 + ms(1_100), config.stall_after),
            Some(t0 + ms(1_300))
        );
        h.avoid_until = Some(t0 + ms(1_400));
        assert_eq!(
            h.not_before(t0 + ms(1_350), config.stall_after),
            Some(t0 + ms(1_400))
        );
        assert_eq!(h.not_before(t0 + ms(1_400), config.stall_after), None);
    }

    #[test]
    fn a_replica_that_answers_nothing_counts_as_hung_even_when_its_calls_are_cancelled() {
        let config = config();
        let mut h = Health::new(&config);
        let t0 = tokio::time::Instant::now();
        h.sent(t0);
        h.given_up(); // a hedge loser
        assert!(
            !h.stalled(t0 + ms(5_000), config.stall_after),
            "one lost call on an idle replica is not a hang"
        );
        h.sent(t0 + ms(10));
        h.given_up();
        assert!(!h.stalled(t0 + ms(1_000), config.stall_after));
        assert!(
            h.stalled(t0 + ms(1_010), config.stall_after),
            "two calls sent, nothing answered for stall_after since the second"
        );
        h.sent(t0 + ms(1_000));
        h.answered(t0 + ms(1_001));
        assert!(
            !h.stalled(t0 + ms(10_000), config.stall_after),
            "it answered"
        );
    }

    #[test]
    fn a_call_after_an_idle_spell_that_followed_a_lost_call_is_given_its_time() {
        let config = config();
        let mut h = Health::new(&config);
        let t0 = tokio::time::Instant::now();
        h.sent(t0);
        h.given_up();
        let t1 = t0 + ms(60_000);
        h.sent(t1);
        h.sent(t1);
        assert!(!h.stalled(t1 + ms(5), config.stall_after));
        h.answered(t1 + ms(10));
        assert!(!h.stalled(t1 + ms(5_000), config.stall_after));
    }

    #[test]
    fn a_busy_healthy_replica_is_never_hung() {
        let config = config();
        let mut h = Health::new(&config);
        let t0 = tokio::time::Instant::now();
        // Calls overlap; each takes 300 ms and one in three is cancelled.
        for i in 0..100u64 {
            let now = t0 + ms(i * 100);
            h.sent(now);
            if i % 3 == 0 {
                h.given_up();
            } else if i >= 3 {
                h.answered(now);
            }
            assert!(!h.stalled(now, config.stall_after), "call {i}");
        }
    }

    #[test]
    fn a_probe_that_hangs_is_enough() {
        let config = config();
        let mut h = Health::new(&config);
        h.probing = true;
        let t0 = tokio::time::Instant::now();
        h.sent(t0);
        assert!(!h.stalled(t0 + ms(999), config.stall_after));
        assert!(h.stalled(t0 + ms(1_000), config.stall_after));
    }
}
