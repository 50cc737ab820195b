//! What a run measured: latency percentiles from HDR histograms, overall, per
//! outcome and per second, with errors by code and the model versions that answered.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::Options;

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Second {
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The outcome of a run (the `--json` output).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub rpc: String,
    pub qps: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub dropped: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    /// The first message seen per error code (what went wrong, not just how often).
    pub error_examples: BTreeMap<String, String>,
    /// Calls sent per second.
    pub achieved_qps: f64,
    /// Calls answered successfully per second: what the mesh delivered, which
    /// past saturation is what counts (refusals are fast, not useful).
    #[serde(default)]
    pub goodput_qps: f64,
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

pub(crate) struct Acc {
    latency: Histogram<u64>,
    by_outcome: BTreeMap<String, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    error_examples: BTreeMap<String, String>,
    stages: BTreeMap<String, Histogram<u64>>,
    seconds: BTreeMap<u64, SecondAcc>,
    pub(crate) dropped: u64,
}

/// What one answer said, for the accumulators.
pub(crate) struct Answer {
    models: Vec<String>,
    degraded: Vec<String>,
    stage_ms: Vec<(String, f32)>,
}

impl Acc {
    pub(crate) fn new() -> Self {
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

    pub(crate) fn record(
        &mut self,
        second: u64,
        latency: Duration,
        outcome: Result<Answer, tonic::Status>,
    ) {
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

    pub(crate) fn report(self, opts: &Options, elapsed: Duration) -> Report {
        let sent = self.latency.len();
        let failed: u64 = self.errors.values().sum();
        let per_s = |n: u64| n as f64 / elapsed.as_secs_f64().max(1e-9);
        Report {
            rpc: format!("{:?}", opts.rpc).to_lowercase(),
            qps: opts.qps,
            duration_s: opts.duration.as_secs_f64(),
            sent,
            dropped: self.dropped,
            failed,
            errors: self.errors,
            error_examples: self.error_examples,
            achieved_qps: per_s(sent),
            goodput_qps: per_s(sent - failed),
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
    pub(crate) fn new(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::opts;

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
        assert!((r.achieved_qps - 50.0).abs() < 1e-9 && (r.goodput_qps - 45.0).abs() < 1e-9);
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
}
