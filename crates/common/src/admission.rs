//! Admission at the edge: a concurrency limit that follows latency, so a service
//! past saturation refuses the excess at once (RESOURCE_EXHAUSTED, in
//! microseconds) instead of letting every call queue for CPU downstream until
//! all of them miss their deadlines.
//!
//! The limit is TCP Vegas' rule as Netflix's `concurrency-limits` applies it to
//! RPCs: with `min_rtt` the latency of a call that did not queue and `rtt` the
//! latency of the last one, `limit * (1 - min_rtt / rtt)` calls are queued
//! somewhere (Little's law). Here `min_rtt` is stretched by a tolerance (2x):
//! search calls vary in cost, and the fastest is not what a typical one takes.
//! Few queued: the limit grows (there is room); many: it shrinks; a call that
//! failed by running out of time shrinks it at once.
//! The limit only moves while it is being used (at least half of it in flight
//! when the call started): a quiet service neither drifts to a limit it never
//! tested nor shrinks its limit over one slow call that queued behind nothing.
//!
//! `min_rtt` is the smallest latency of the last [`RTT_WINDOW`], the previous
//! window's kept as a floor so the estimate never jumps up at a window's turn:
//! the service's fastest answer changes (a larger catalog, another model), and a
//! stale minimum would hold the limit too low for good.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a latency minimum is trusted before it is measured anew.
pub const RTT_WINDOW: Duration = Duration::from_secs(10);

/// Bounds of the adaptive limit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Off: every call is admitted (the server's `max_concurrency` still caps
    /// calls in flight).
    pub adaptive: bool,
    /// The limit at start, before any latency was measured.
    pub initial_limit: usize,
    /// The limit never goes below this: calls that always get in, however slow
    /// the service has become. At 4, one latency spike on a busy 2-core machine
    /// took the ranking service's limit to 6 and refused 4 of 1,200 calls at
    /// 80% of its capacity; 8 rides such spikes out.
    pub min_limit: usize,
    /// Nor above this.
    pub max_limit: usize,
    /// Latency up to this multiple of the fastest recent call counts as no
    /// queueing: calls differ in cost (a query with many lexical hits takes
    /// longer than one with few), and the fastest one is not what a typical one
    /// costs.
    pub tolerance: f64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            adaptive: true,
            initial_limit: 16,
            min_limit: 8,
            max_limit: 256,
            tolerance: 2.0,
        }
    }
}

impl AdmissionConfig {
    pub fn validate(&self, section: &str) -> Result<(), crate::config::ConfigError> {
        if self.min_limit == 0 || self.min_limit > self.max_limit {
            return Err(crate::config::invalid(
                &format!("{section}.min_limit"),
                self.min_limit,
                "must be >= 1 and <= max_limit",
            ));
        }
        if !(self.tolerance >= 1.0 && self.tolerance.is_finite()) {
            return Err(crate::config::invalid(
                &format!("{section}.tolerance"),
                self.tolerance,
                "must be a number >= 1",
            ));
        }
        if !(self.min_limit..=self.max_limit).contains(&self.initial_limit) {
            return Err(crate::config::invalid(
                &format!("{section}.initial_limit"),
                self.initial_limit,
                "must be within min_limit..=max_limit",
            ));
        }
        Ok(())
    }
}

/// Why a call was not admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("overloaded: {in_flight} calls in flight at a limit of {limit}; retry with backoff")]
pub struct Refused {
    pub in_flight: usize,
    pub limit: usize,
}

/// The limiter: shared by every call of a service.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    /// The smallest latency of the current window, and of the previous one.
    min_rtt: Option<Duration>,
    previous_min_rtt: Option<Duration>,
    window_started: Instant,
}

/// How a finished call went, as far as the limit is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered: its latency counts.
    Answered,
    /// Ran out of time or was given up by its caller: a sign of overload.
    TimedOut,
    /// Failed for a reason of its own (a bad request, a backend down): its
    /// latency says nothing about load.
    Failed,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            state: Mutex::new(State {
                limit: config.initial_limit as f64,
                in_flight: 0,
                min_rtt: None,
                previous_min_rtt: None,
                window_started: Instant::now(),
            }),
        })
    }

    /// Admits a call, or refuses it when the limit is reached. The permit
    /// records the call's latency when it is finished (or dropped: a call its
    /// caller gave up counts as timed out).
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Refused> {
        let mut s = self.lock();
        let limit = s.limit as usize;
        if self.config.adaptive && s.in_flight >= limit {
            metrics::counter!("rankmesh_admission_refused_total").increment(1);
            return Err(Refused {
                in_flight: s.in_flight,
                limit,
            });
        }
        s.in_flight += 1;
        Ok(Permit {
            admission: Arc::clone(self),
            started: Instant::now(),
            in_flight: s.in_flight,
            outcome: Outcome::TimedOut,
        })
    }

    /// The state; a panic elsewhere while holding it leaves numbers, not broken
    /// invariants, so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current limit (rounded down).
    pub fn limit(&self) -> usize {
        self.lock().limit as usize
    }

    fn finish(&self, rtt: Duration, in_flight_at_start: usize, outcome: Outcome) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if !self.config.adaptive || outcome == Outcome::Failed {
            return;
        }
        let now = Instant::now();
        if now.duration_since(s.window_started) >= RTT_WINDOW {
            s.previous_min_rtt = s.min_rtt.take();
            s.window_started = now;
        }
        if outcome == Outcome::Answered {
            s.min_rtt = Some(s.min_rtt.map_or(rtt, |m| m.min(rtt)));
        }
        let Some(min_rtt) = s.min_rtt.into_iter().chain(s.previous_min_rtt).min() else {
            return;
        };
        let limit = s.limit;
        let log = limit.log10().max(1.0);
        let next = if outcome == Outcome::TimedOut {
            limit - log
        } else if (in_flight_at_start as f64) * 2.0 < limit {
            // Not using the limit it has: a slow call then is one slow call (a
            // long query, a cold cache), not calls queueing behind each other,
            // and nothing is learnt about a larger limit either.
            limit
        } else {
            let baseline = min_rtt.as_secs_f64() * self.config.tolerance;
            let queued = limit * (1.0 - baseline / rtt.as_secs_f64().max(1e-9)).max(0.0);
            let (alpha, beta) = (3.0 * log, 6.0 * log);
            if queued <= log {
                limit + beta
            } else if queued < alpha {
                limit + log
            } else if queued > beta {
                limit - log
            } else {
                limit
            }
        };
        s.limit = next.clamp(self.config.min_limit as f64, self.config.max_limit as f64);
        metrics::gauge!("rankmesh_admission_limit").set(s.limit);
    }
}

/// An admitted call; finish it with its outcome, or drop it (timed out).
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    started: Instant,
    in_flight: usize,
    /// What the drop records: timed out, unless `finish` said otherwise.
    outcome: Outcome,
}

impl Permit {
    /// Records how the call went; its latency is measured to now.
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission
            .finish(self.started.elapsed(), self.in_flight, self.outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission() -> Arc<Admission> {
        Admission::new(AdmissionConfig {
            adaptive: true,
            initial_limit: 8,
            min_limit: 2,
            max_limit: 64,
            tolerance: 1.0,
        })
    }

    /// Runs `n` rounds of `limit` concurrent calls, each answered after `rtt`
    /// (given the calls in flight): started that long ago, as tests do not sleep.
    fn rounds(a: &Arc<Admission>, n: usize, rtt: impl Fn(usize) -> Duration) {
        for _ in 0..n {
            let permits: Vec<Permit> = (0..a.limit()).filter_map(|_| a.admit().ok()).collect();
            let in_flight = permits.len();
            for mut p in permits {
                p.in_flight = in_flight;
                p.started = Instant::now()
                    .checked_sub(rtt(in_flight))
                    .expect("an instant that long ago");
                p.finish(Outcome::Answered);
            }
        }
    }

    #[test]
    fn refuses_at_the_limit_and_admits_again_when_a_call_finishes() {
        let a = admission();
        let permits: Vec<Permit> = (0..8).map(|_| a.admit().expect("admitted")).collect();
        let refused = a.admit().expect_err("the ninth is refused");
        assert_eq!((refused.in_flight, refused.limit), (8, 8));
        drop(permits);
        assert!(a.admit().is_ok(), "admitted once calls finished");
    }

    #[test]
    fn the_limit_grows_while_latency_holds_and_shrinks_when_calls_queue() {
        let a = admission();
        // A service whose latency does not depend on load: the limit grows.
        rounds(&a, 50, |_| Duration::from_millis(10));
        let grown = a.limit();
        assert!(grown > 32, "grew to {grown}");
        // A saturated one, where latency grows with calls in flight (two served
        // at once, 10 ms each): the limit comes down to a few queued calls.
        rounds(&a, 200, |n| {
            Duration::from_millis(10 * (n as u64).div_ceil(2))
        });
        let settled = a.limit();
        assert!(settled <= 8, "settled at {settled}");
        assert!(settled >= 2, "never below min_limit: {settled}");
    }

    #[test]
    fn a_timed_out_call_shrinks_the_limit_and_an_idle_service_keeps_it() {
        let a = admission();
        rounds(&a, 1, |_| Duration::from_millis(10));
        let before = a.limit();
        drop(a.admit().expect("admitted"));
        assert!(a.limit() < before, "{} < {before}", a.limit());
        // One call at a time on a limit of several: nothing learnt, no change.
        let at = a.limit();
        for _ in 0..20 {
            let p = a.admit().expect("admitted");
            p.finish(Outcome::Answered);
        }
        assert_eq!(a.limit(), at);
    }

    #[test]
    fn latency_within_the_tolerance_is_not_queueing() {
        let with = |tolerance: f64| {
            let a = Admission::new(AdmissionConfig {
                tolerance,
                initial_limit: 16,
                min_limit: 2,
                max_limit: 64,
                adaptive: true,
            });
            // The fastest call took 10 ms; the typical one takes 19.
            rounds(&a, 1, |_| Duration::from_millis(10));
            let before = a.limit();
            rounds(&a, 20, |_| Duration::from_millis(19));
            (before, a.limit())
        };
        let (before, after) = with(2.0);
        assert!(after >= before, "2x tolerance: {before} -> {after}");
        let (before, after) = with(1.0);
        assert!(after < before, "no tolerance: {before} -> {after}");
    }

    #[test]
    fn off_admits_everything() {
        let a = Admission::new(AdmissionConfig {
            adaptive: false,
            ..AdmissionConfig::default()
        });
        let permits: Vec<Permit> = (0..1000).map(|_| a.admit().expect("admitted")).collect();
        assert_eq!(permits.len(), 1000);
    }
}
