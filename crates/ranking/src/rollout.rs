//! Canary rollouts of the ranker: per-replica outcome counts, their reports in etcd,
//! and the controller the elected `rollout` leader runs.
//!
//! Every replica counts, per ranker version, the requests it scored, failures,
//! non-finite and constant score lists, and a latency histogram of the scoring
//! step. The counts restart whenever the replica sees a new canary, so canary and
//! production are compared over the same stretch of traffic. Each replica writes
//! its counts to `/rankmesh/rollout/<model>/<instance>` every report period.
//!
//! The leader sums the reports that are about the current canary and judges it
//! ([`judge`]): broken scores (NaN, infinities) roll it back at once, constant
//! scores as soon as they dominate; after the window, a canary whose error rate or
//! p99 is worse than production's by more than the policy allows is rolled back,
//! otherwise promoted. The decision goes through the registry (`SetStage` or
//! `Rollback`, compare-and-set on the stage record it judged) with the reason
//! recorded in the stage history that `meshctl model list` shows.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rankmesh_client::{Deadline, RegistryClient};
use rankmesh_common::etcd::Etcd;
use rankmesh_common::server::now_ms;
use rankmesh_proto::pb::registry::v1 as pb;
use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, milliseconds; one more bucket holds the rest.
const BUCKETS_MS: [f64; 16] = [
    0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 50.0, 80.0, 130.0, 200.0, 500.0, 1000.0,
];

/// Reports older than this are ignored (the replica is gone or cut off).
const STALE_MS: i64 = 15_000;
/// Reports older than this are deleted by the leader.
const FORGET_MS: i64 = 600_000;

pub fn report_prefix(model: &str) -> String {
    format!("/rankmesh/rollout/{model}/")
}

/// How one scoring call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The ranker failed or timed out.
    Error,
    /// A score was NaN or infinite.
    NonFinite,
    /// Every candidate got the same score (two or more candidates).
    Constant,
}

impl Outcome {
    /// Judges a list of scores.
    pub fn of(scores: &[f32]) -> Self {
        if scores.iter().any(|s| !s.is_finite()) {
            Self::NonFinite
        } else if scores.len() >= 2 && scores.iter().all(|s| *s == scores[0]) {
            Self::Constant
        } else {
            Self::Ok
        }
    }
}

/// Outcome counts of one ranker version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub non_finite: u64,
    pub constant: u64,
    /// Scoring latency histogram over [`BUCKETS_MS`] plus an overflow bucket.
    pub latency: Vec<u64>,
}

impl Counts {
    fn record(&mut self, latency: Duration, outcome: Outcome) {
        self.requests += 1;
        match outcome {
            Outcome::Ok => {}
            Outcome::Error => self.errors += 1,
            Outcome::NonFinite => self.non_finite += 1,
            Outcome::Constant => self.constant += 1,
        }
        let ms = latency.as_secs_f64() * 1e3;
        let bucket = BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BUCKETS_MS.len());
        self.latency.resize(BUCKETS_MS.len() + 1, 0);
        self.latency[bucket] += 1;
    }

    fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.non_finite += other.non_finite;
        self.constant += other.constant;
        self.latency.resize(BUCKETS_MS.len() + 1, 0);
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The upper bound of the bucket holding the 99th percentile (0 without data;
    /// twice the last bound for the overflow bucket).
    pub fn p99_ms(&self) -> f64 {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return BUCKETS_MS
                    .get(i)
                    .copied()
                    .unwrap_or(BUCKETS_MS[BUCKETS_MS.len() - 1] * 2.0);
            }
        }
        0.0
    }
}

/// What a replica writes to etcd.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// The canary version these counts are about (0: none).
    pub canary: u64,
    pub at_ms: i64,
    pub by_version: BTreeMap<u64, Counts>,
}

/// This replica's counts since it last saw the canary change.
#[derive(Debug, Default)]
pub struct RolloutStats {
    inner: Mutex<Report>,
}

impl RolloutStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Report> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn record(&self, version: u64, latency: Duration, outcome: Outcome) {
        self.lock()
            .by_version
            .entry(version)
            .or_default()
            .record(latency, outcome);
    }

    /// Starts counting afresh for `canary` (no-op if it is already the one counted).
    pub fn canary_changed(&self, canary: u64) {
        let mut r = self.lock();
        if r.canary != canary {
            *r = Report {
                canary,
                ..Report::default()
            };
        }
    }

    pub fn snapshot(&self) -> Report {
        Report {
            at_ms: now_ms(),
            ..self.lock().clone()
        }
    }
}

/// Writes this replica's counts to etcd every `period` (deleted on stop).
pub async fn report_forever(
    etcd: Etcd,
    model: String,
    instance: String,
    stats: std::sync::Arc<RolloutStats>,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let key = format!("{}{instance}", report_prefix(&model));
    loop {
        let value = serde_json::to_vec(&stats.snapshot()).expect("a Report always serialises");
        let mut client = etcd.client();
        if let Err(e) = etcd.timed(client.put(key.as_str(), value, None)).await {
            tracing::debug!(error = %e, "rollout report not written");
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let mut client = etcd.client();
    let _ = etcd.timed(client.delete(key.as_str(), None)).await;
}

/// When the leader promotes or rolls back a canary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutPolicy {
    /// File holding the registry's admin token, for the rollback and promotion
    /// writes; none: the controller only watches. (A file, never a value: see
    /// `rankmesh_common::secret`.)
    pub admin_token_file: PathBuf,
    /// How long a canary runs before it is judged, milliseconds.
    pub window_ms: u64,
    /// Canary requests needed before it is judged on errors and latency.
    pub min_requests: u64,
    /// Allowed increase of the error rate over production (0.01 = 1 point).
    pub max_error_rate_increase: f64,
    /// Allowed canary p99 as a multiple of production's ...
    pub max_p99_ratio: f64,
    /// ... plus this many milliseconds (bucketed latencies are coarse when fast).
    pub p99_slack_ms: f64,
    /// Share of constant score lists above which the canary is rolled back.
    pub max_constant_fraction: f64,
    /// How often the leader looks, and replicas report, milliseconds.
    pub tick_ms: u64,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            admin_token_file: PathBuf::new(),
            window_ms: 60_000,
            min_requests: 100,
            max_error_rate_increase: 0.01,
            max_p99_ratio: 1.5,
            p99_slack_ms: 5.0,
            max_constant_fraction: 0.5,
            tick_ms: 1_000,
        }
    }
}

/// What to do with a canary.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Wait(String),
    Promote(String),
    Rollback(String),
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Judges `canary` against `production` after `elapsed_ms` of canary traffic.
pub fn judge(
    policy: &RolloutPolicy,
    canary: &Counts,
    production: &Counts,
    elapsed_ms: i64,
) -> Verdict {
    let n = canary.requests;
    if canary.non_finite > 0 {
        return Verdict::Rollback(format!(
            "{} of {n} score lists had NaN or infinite scores",
            canary.non_finite
        ));
    }
    // Constant scores are judged early, but on more than a couple of requests.
    let early = policy.min_requests.clamp(1, 20);
    if n >= early && canary.constant as f64 > policy.max_constant_fraction * n as f64 {
        return Verdict::Rollback(format!(
            "constant scores in {} of {n} score lists",
            canary.constant
        ));
    }
    if elapsed_ms < policy.window_ms as i64 || n < policy.min_requests {
        return Verdict::Wait(format!(
            "{n}/{} requests, {:.0}/{:.0} s",
            policy.min_requests,
            elapsed_ms as f64 / 1e3,
            policy.window_ms as f64 / 1e3
        ));
    }
    let (ce, pe) = (canary.error_rate(), production.error_rate());
    let (cp, pp) = (canary.p99_ms(), production.p99_ms());
    let compared = format!(
        "errors {} vs {}, p99 {cp} ms vs {pp} ms, over {n} canary and {} production requests",
        pct(ce),
        pct(pe),
        production.requests
    );
    if ce > pe + policy.max_error_rate_increase {
        return Verdict::Rollback(format!("error rate too high: {compared}"));
    }
    if production.requests > 0 && cp > pp * policy.max_p99_ratio + policy.p99_slack_ms {
        return Verdict::Rollback(format!("p99 too high: {compared}"));
    }
    Verdict::Promote(compared)
}

/// The leader's side: watches the model's canary and decides.
pub struct Controller {
    pub registry: RegistryClient,
    pub etcd: Etcd,
    pub model: String,
    pub policy: RolloutPolicy,
    /// The registry admin token read from `policy.admin_token_file`; empty: the
    /// controller only watches.
    pub admin_token: String,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Runs while this replica leads: `lead_forever` drops the future when
    /// leadership is lost, and every write is a compare-and-set on the stage record
    /// judged, so a deposed leader cannot apply a stale decision.
    pub async fn run(self: std::sync::Arc<Self>) {
        let period = Duration::from_millis(self.policy.tick_ms.max(100));
        let mut last_wait = String::new();
        loop {
            tokio::time::sleep(period).await;
            match self.step().await {
                Ok(Some(Verdict::Wait(why))) => {
                    if why != last_wait {
                        tracing::debug!(model = %self.model, why, "canary still under watch");
                        last_wait = why;
                    }
                }
                Ok(Some(decision)) => {
                    tracing::info!(model = %self.model, ?decision, "canary decided")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(model = %self.model, error = %e, "rollout step failed"),
            }
        }
    }

    /// One look at the canary; returns what was decided (None: no canary).
    pub async fn step(&self) -> Result<Option<Verdict>, String> {
        let name = self.model.clone();
        let Some(summary) = self
            .registry
            .model(&name, Deadline::Default)
            .await
            .map_err(|s| format!("registry: {}", s.message()))?
        else {
            return Ok(None);
        };
        if summary.canary_version == 0 {
            return Ok(None);
        }
        let (canary, production) = self
            .gather(summary.canary_version, summary.production_version)
            .await?;
        let elapsed = now_ms() - summary.canary_since_ms;
        let verdict = judge(&self.policy, &canary, &production, elapsed);
        if matches!(verdict, Verdict::Wait(_)) || self.admin_token.is_empty() {
            return Ok(Some(verdict));
        }
        let v = summary.canary_version;
        let registry = self.registry.clone().with_token(&self.admin_token);
        let revision = summary.stage_revision;
        // Both writes are compare-and-sets on the stage record judged.
        let result = match &verdict {
            Verdict::Promote(why) => registry
                .set_stage(
                    pb::SetStageRequest {
                        name,
                        version: v,
                        stage: pb::Stage::Production as i32,
                        percent: 0,
                        reason: format!("rollout controller promoted canary v{v}: {why}"),
                        expected_revision: revision,
                    },
                    Deadline::Default,
                )
                .await
                .map(|_| ()),
            Verdict::Rollback(why) => registry
                .rollback(
                    pb::RollbackRequest {
                        name,
                        reason: format!("rollout controller: {why}"),
                        expected_revision: revision,
                    },
                    Deadline::Default,
                )
                .await
                .map(|_| ()),
            Verdict::Wait(_) => Ok(()),
        };
        match result {
            Ok(()) => {
                metrics::counter!("rankmesh_rollout_decisions_total", "model" => self.model.clone(), "decision" => match verdict { Verdict::Promote(_) => "promote", _ => "rollback" }).increment(1);
                Ok(Some(verdict))
            }
            // Someone changed the stages since we looked: look again next tick.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => Ok(None),
            Err(s) => Err(format!("registry write: {}", s.message())),
        }
    }

    /// Sums the fresh reports about `canary`: (canary counts, production counts).
    async fn gather(&self, canary: u64, production: u64) -> Result<(Counts, Counts), String> {
        let prefix = report_prefix(&self.model);
        let mut client = self.etcd.client();
        let resp = self
            .etcd
            .timed(client.get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            ))
            .await
            .map_err(|e| format!("etcd: {e}"))?;
        let now = now_ms();
        let (mut c, mut p) = (Counts::default(), Counts::default());
        for kv in resp.kvs() {
            let Ok(report) = serde_json::from_slice::<Report>(kv.value()) else {
                continue;
            };
            if now - report.at_ms > FORGET_MS {
                let _ = self.etcd.timed(client.delete(kv.key(), None)).await;
                continue;
            }
            if now - report.at_ms > STALE_MS || report.canary != canary {
                continue;
            }
            if let Some(x) = report.by_version.get(&canary) {
                c.add(x);
            }
            if let Some(x) = report.by_version.get(&production) {
                p.add(x);
            }
        }
        Ok((c, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: u64, outcome: Outcome, ms: u64) -> Counts {
        let mut c = Counts::default();
        for _ in 0..n {
            c.record(Duration::from_millis(ms), outcome);
        }
        c
    }

    fn policy() -> RolloutPolicy {
        RolloutPolicy {
            window_ms: 10_000,
            min_requests: 50,
            ..RolloutPolicy::default()
        }
    }

    #[test]
    fn outcomes_of_score_lists() {
        assert_eq!(Outcome::of(&[1.0, 2.0]), Outcome::Ok);
        assert_eq!(Outcome::of(&[1.0, f32::NAN]), Outcome::NonFinite);
        assert_eq!(Outcome::of(&[f32::INFINITY, 1.0]), Outcome::NonFinite);
        assert_eq!(Outcome::of(&[0.5, 0.5, 0.5]), Outcome::Constant);
        assert_eq!(Outcome::of(&[0.5]), Outcome::Ok);
    }

    #[test]
    fn p99_is_the_bucket_bound() {
        let mut c = counts(99, Outcome::Ok, 1);
        c.add(&counts(1, Outcome::Ok, 40));
        assert_eq!(c.p99_ms(), 1.0);
        c.add(&counts(5, Outcome::Ok, 40));
        assert_eq!(c.p99_ms(), 50.0);
        assert_eq!(Counts::default().p99_ms(), 0.0);
    }

    #[test]
    fn broken_scores_roll_back_at_once() {
        let mut c = counts(3, Outcome::Ok, 1);
        c.add(&counts(1, Outcome::NonFinite, 1));
        let v = judge(&policy(), &c, &counts(100, Outcome::Ok, 1), 10);
        assert!(
            matches!(v, Verdict::Rollback(ref why) if why.contains("NaN")),
            "{v:?}"
        );
        let v = judge(
            &policy(),
            &counts(20, Outcome::Constant, 1),
            &Counts::default(),
            10,
        );
        assert!(
            matches!(v, Verdict::Rollback(ref why) if why.contains("constant")),
            "{v:?}"
        );
    }

    #[test]
    fn waits_for_the_window_and_enough_requests() {
        let prod = counts(100, Outcome::Ok, 2);
        assert!(matches!(
            judge(&policy(), &counts(60, Outcome::Ok, 2), &prod, 9_000),
            Verdict::Wait(_)
        ));
        assert!(matches!(
            judge(&policy(), &counts(10, Outcome::Ok, 2), &prod, 20_000),
            Verdict::Wait(_)
        ));
        assert!(matches!(
            judge(&policy(), &counts(60, Outcome::Ok, 2), &prod, 20_000),
            Verdict::Promote(_)
        ));
    }

    #[test]
    fn errors_and_latency_roll_back() {
        let prod = counts(100, Outcome::Ok, 2);
        let mut errs = counts(50, Outcome::Ok, 2);
        errs.add(&counts(5, Outcome::Error, 2));
        let v = judge(&policy(), &errs, &prod, 20_000);
        assert!(
            matches!(v, Verdict::Rollback(ref why) if why.contains("error rate")),
            "{v:?}"
        );
        let v = judge(&policy(), &counts(60, Outcome::Ok, 150), &prod, 20_000);
        assert!(
            matches!(v, Verdict::Rollback(ref why) if why.contains("p99")),
            "{v:?}"
        );
    }
}
