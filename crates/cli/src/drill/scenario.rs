//! A drill scenario: what to run, what load to offer, which faults to inject when,
//! and the SLO that must hold. Read from TOML; every field is checked before
//! anything starts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Scenario {
    pub name: String,
    /// What the drill is meant to show, in a sentence or two: the claim the SLO
    /// tests.
    pub hypothesis: String,
    #[serde(default)]
    pub topology: Topology,
    pub load: Load,
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    pub slo: Slo,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Topology {
    /// `local`: processes on loopback through `meshctl up`'s launcher.
    pub kind: String,
    pub ranking_replicas: usize,
    /// etcd members: 1, or 3 (so that its leader can be lost).
    pub etcd_members: usize,
    /// `redb` (an embedded file) or `redis` (a Redis server the drill starts, which
    /// a fault can take down: target `redis`).
    pub feature_store: String,
    /// Extra environment for the ranking replicas.
    pub ranking_env: std::collections::BTreeMap<String, String>,
    /// Catalog to load; empty: a generated demo store of 2000 items.
    pub catalog: PathBuf,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            kind: "local".into(),
            ranking_replicas: 3,
            etcd_members: 1,
            feature_store: "redb".into(),
            ranking_env: Default::default(),
            catalog: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Load {
    #[serde(default = "search")]
    pub rpc: String,
    pub qps: f64,
    pub duration_s: u64,
    /// Query log (one per line); empty: the generated store's queries.
    #[serde(default)]
    pub queries: PathBuf,
    #[serde(default = "timeout_ms")]
    pub timeout_ms: u64,
    /// RecordEvent calls per second alongside (each acknowledged event is read back
    /// after the drill: none may be lost).
    #[serde(default)]
    pub events_per_s: f64,
}

fn search() -> String {
    "search".into()
}

fn timeout_ms() -> u64 {
    1_000
}

/// One fault on the timeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fault {
    /// Seconds after the load starts.
    pub at_s: f64,
    pub kind: FaultKind,
    /// Instance names (`ranking-1`, `registry-0`, `etcd`, `etcd-2`, ...) for kill
    /// and stop; `etcd-leader` is the member leading when the fault fires.
    #[serde(default)]
    pub targets: Vec<String>,
    /// For `stop`: SIGCONT after this many seconds.
    #[serde(default)]
    pub duration_s: f64,
    /// For `canary`: `nan` or `constant` (a broken copy of the trained ranker).
    #[serde(default)]
    pub model: String,
    /// For `canary`: share of traffic.
    #[serde(default = "percent")]
    pub percent: u32,
}

fn percent() -> u32 {
    50
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FaultKind {
    /// SIGKILL the targets.
    Kill,
    /// SIGSTOP the targets (a hang), SIGCONT after `duration_s`.
    Stop,
    /// Publish a broken ranker as a canary (the rollout leader must roll it back).
    Canary,
    /// Publish a new ranker version, flip bytes in its stored blob, and promote it:
    /// replicas must refuse it and keep serving the version they have.
    CorruptArtifact,
}

impl FaultKind {
    /// The name scenarios use for it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Stop => "stop",
            Self::Canary => "canary",
            Self::CorruptArtifact => "corrupt-artifact",
        }
    }
}

/// What must hold for the drill to pass.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Slo {
    /// Share of requests that must succeed over the whole run.
    pub availability: f64,
    /// p99 over the whole run, from scheduled send time.
    pub p99_ms: f64,
    /// From each fault until every following second is clean again (no errors,
    /// p99 within `p99_ms`).
    pub recover_within_s: f64,
    /// Answers by a model version a fault published (a broken canary, a corrupt
    /// artifact) allowed at most.
    #[serde(default)]
    pub wrong_version_answers: u64,
    /// Acknowledged events that may be missing afterwards.
    #[serde(default)]
    pub lost_events: u64,
}

impl Scenario {
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let s: Self = toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        s.validate()
            .with_context(|| format!("check {}", path.display()))?;
        Ok(s)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.name.is_empty(), "name: must not be empty");
        anyhow::ensure!(
            self.topology.kind == "local",
            "topology.kind {:?}: only \"local\" is supported",
            self.topology.kind
        );
        anyhow::ensure!(
            (1..=3).contains(&self.topology.ranking_replicas),
            "topology.ranking_replicas: 1..=3"
        );
        anyhow::ensure!(
            self.topology.etcd_members == 1 || self.topology.etcd_members == 3,
            "topology.etcd_members: 1 or 3"
        );
        anyhow::ensure!(
            self.topology.feature_store == "redb" || self.topology.feature_store == "redis",
            "topology.feature_store: redb or redis"
        );
        anyhow::ensure!(
            self.load.rpc == "search" || self.load.rpc == "recommend",
            "load.rpc: search or recommend"
        );
        anyhow::ensure!(
            self.load.qps > 0.0 && self.load.qps <= 1_000.0,
            "load.qps: within (0, 1000]"
        );
        anyhow::ensure!(
            (1..=3_600).contains(&self.load.duration_s),
            "load.duration_s: 1..=3600"
        );
        anyhow::ensure!(
            (0.0..=100.0).contains(&self.load.events_per_s),
            "load.events_per_s: 0..=100"
        );
        for (i, f) in self.faults.iter().enumerate() {
            anyhow::ensure!(
                f.at_s >= 0.0 && f.at_s < self.load.duration_s as f64,
                "fault[{i}].at_s: within the load's duration"
            );
            match f.kind {
                FaultKind::Kill | FaultKind::Stop => {
                    anyhow::ensure!(
                        !f.targets.is_empty(),
                        "fault[{i}].targets: name at least one"
                    )
                }
                FaultKind::Canary => anyhow::ensure!(
                    f.model == "nan" || f.model == "constant",
                    "fault[{i}].model: nan or constant"
                ),
                FaultKind::CorruptArtifact => {}
            }
            if f.kind == FaultKind::Stop {
                anyhow::ensure!(f.duration_s > 0.0, "fault[{i}].duration_s: > 0 for stop");
            }
        }
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.slo.availability),
            "slo.availability: 0..=1"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_in_deploy_drills_parses_and_states_its_hypothesis() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/drills");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("deploy/drills") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
                assert!(s.hypothesis.len() > 40, "{}: a real hypothesis", s.name);
                n += 1;
            }
        }
        assert!(n >= 8, "{n} scenarios");
    }

    #[test]
    fn bad_scenarios_are_refused_naming_the_field() {
        let bad = r#"
            name = "x"
            hypothesis = "y"
            [load]
            qps = 10
            duration_s = 5
            [[fault]]
            at_s = 9
            kind = "kill"
            targets = ["ranking-0"]
            [slo]
            availability = 0.99
            p99_ms = 100
            recover_within_s = 1
        "#;
        let s: Scenario = toml::from_str(bad).expect("parses");
        let e = s.validate().expect_err("fault after the end");
        assert!(e.to_string().contains("fault[0].at_s"), "{e}");
    }
}
