//! A drill scenario: what to run, what load to offer, which faults to inject when,
//! and the SLO that must hold. Read from TOML; every field is checked before
//! anything starts.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{DrillError, bail, ensure};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
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
pub struct Topology {
    /// `local`: processes on loopback through `meshctl up`'s launcher; `compose`:
    /// the stack in deploy/compose (3 etcd, Redis, 2 each of registry, feature and
    /// embedding, 3 ranking), its faults made through Docker. The other fields
    /// are the local topology's.
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
pub struct Load {
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
pub struct Fault {
    /// Seconds after the load starts.
    pub at_s: f64,
    pub kind: FaultKind,
    /// Instance names (`ranking-1`, `registry-0`, `etcd`, `etcd-2`, ...) for kill
    /// and stop; `etcd-leader` is the member leading when the fault fires.
    #[serde(default)]
    pub targets: Vec<String>,
    /// For `stop`: SIGCONT after this many seconds; for `restart`: start again
    /// after this many; for `delay`, `loss` and `partition`: heal after this many.
    #[serde(default)]
    pub duration_s: f64,
    /// For `delay`: added to each chunk crossing the link, each way.
    #[serde(default)]
    pub delay_ms: u64,
    /// For `delay`: each chunk's delay varies by up to this much either way.
    #[serde(default)]
    pub jitter_ms: u64,
    /// For `loss`: share of chunks lost (each then waits for a retransmission).
    #[serde(default)]
    pub loss_percent: f64,
    /// For `delay`, `loss` and `partition`: which of the targets' links:
    /// `clients` (callers to it) and `etcd` (it to the control plane). Default:
    /// `clients`, and both for a partition.
    #[serde(default)]
    pub links: Vec<Link>,
    /// For `canary`: `nan` or `constant` (a broken copy of the trained ranker).
    #[serde(default)]
    pub model: String,
    /// For `restart`: `kill` (SIGKILL, a crash; the default) or `term` (SIGTERM: the
    /// instance deregisters and drains, as in a rolling restart); it is started again
    /// `duration_s` after the signal, once it has exited.
    #[serde(default)]
    pub signal: Option<RestartSignal>,
    /// For `canary`: share of traffic.
    #[serde(default = "percent")]
    pub percent: u32,
    /// For `disk-full`: the size of the disk (a tmpfs) under each target's data.
    #[serde(default = "disk_mb")]
    pub disk_mb: u64,
    /// For `surge`: the load offered during it, as a multiple of `load.qps`.
    #[serde(default)]
    pub factor: f64,
}

fn percent() -> u32 {
    50
}

fn disk_mb() -> u64 {
    64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL the targets.
    Kill,
    /// SIGSTOP the targets (a hang), SIGCONT after `duration_s`.
    Stop,
    /// SIGKILL the targets, and start them again after `duration_s` with the same
    /// addresses, configuration and data (a crash and its restart).
    Restart,
    /// Fill the disk under the targets' data (`feature-0`, `registry-0`: a small
    /// tmpfs the drill mounts there before the mesh starts), free it after
    /// `duration_s`.
    DiskFull,
    /// Publish a broken ranker as a canary (the rollout leader must roll it back).
    Canary,
    /// Publish a new ranker version, flip bytes in its stored blob, and promote it:
    /// replicas must refuse it and keep serving the version they have.
    CorruptArtifact,
    /// Publish a new encoder version (the served encoder's files again) and promote
    /// it: each embedding replica re-embeds its catalog with it while the old
    /// encoder and index serve, then swaps both at one instant.
    EncoderRollout,
    /// Delay what crosses the targets' links, for `duration_s`.
    Delay,
    /// Lose chunks on the targets' links, for `duration_s`.
    Loss,
    /// Let nothing cross the targets' links, for `duration_s`.
    Partition,
    /// Offer `factor` times the load for `duration_s` (no target: the mesh as a
    /// whole is overloaded). Calls refused with RESOURCE_EXHAUSTED during it are
    /// the designed answer, judged by `slo.overload`, not lost requests.
    Surge,
}

/// How a restart fault stops its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartSignal {
    /// SIGKILL (`docker kill -s KILL`): a crash.
    #[default]
    Kill,
    /// SIGTERM (`docker stop`): a graceful stop, as a rolling restart does.
    Term,
}

/// A network link of one instance that a fault proxy sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Link {
    /// Its callers (everyone who finds it in discovery) to it.
    Clients,
    /// It to etcd (its lease, its watches, its elections).
    Etcd,
}

impl Link {
    pub fn name(self) -> &'static str {
        match self {
            Self::Clients => "clients",
            Self::Etcd => "etcd",
        }
    }
}

impl Fault {
    /// Whether this fault impairs network links (through fault proxies).
    pub fn is_network(&self) -> bool {
        matches!(
            self.kind,
            FaultKind::Delay | FaultKind::Loss | FaultKind::Partition
        )
    }

    /// The links this fault impairs on each target.
    pub fn links(&self) -> Vec<Link> {
        match (self.links.is_empty(), self.kind) {
            (false, _) => self.links.clone(),
            (true, FaultKind::Partition) => vec![Link::Clients, Link::Etcd],
            (true, _) => vec![Link::Clients],
        }
    }
}

impl FaultKind {
    /// The name scenarios use for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::DiskFull => "disk-full",
            Self::Canary => "canary",
            Self::CorruptArtifact => "corrupt-artifact",
            Self::EncoderRollout => "encoder-rollout",
            Self::Delay => "delay",
            Self::Loss => "loss",
            Self::Partition => "partition",
            Self::Surge => "surge",
        }
    }
}

/// What must hold for the drill to pass.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
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
    /// For a drill with surges: how the mesh must behave past saturation.
    #[serde(default)]
    pub overload: Option<OverloadSlo>,
}

/// Graceful overload, judged over the seconds of each surge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadSlo {
    /// Answered calls per second during a surge, at least this share of the base
    /// rate (the mesh keeps serving what it served before, at least).
    pub goodput_ratio: f64,
    /// p99 of the refusals (RESOURCE_EXHAUSTED), from scheduled send time: a
    /// refusal must be fast to be useful.
    pub refusal_p99_ms: f64,
    /// p99 of the calls answered, over the whole run.
    pub answered_p99_ms: f64,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, DrillError> {
        let text = std::fs::read_to_string(path).map_err(DrillError::io("read", path))?;
        Self::parse(&text)
            .map_err(|e| DrillError::Invalid(format!("scenario {}: {e}", path.display())))
    }

    /// Parses and checks a scenario's text. Pure, so the fuzz target
    /// `drill_scenario` runs it on arbitrary files.
    pub fn parse(text: &str) -> Result<Self, DrillError> {
        let s: Self =
            toml::from_str(text).map_err(|e| DrillError::Invalid(format!("parse: {e}")))?;
        s.validate()
            .map_err(|e| DrillError::Invalid(format!("check: {e}")))?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), DrillError> {
        ensure!(!self.name.is_empty(), "name: must not be empty");
        let compose = self.topology.kind == "compose";
        ensure!(
            compose || self.topology.kind == "local",
            "topology.kind {:?}: \"local\" or \"compose\"",
            self.topology.kind
        );
        ensure!(
            (1..=3).contains(&self.topology.ranking_replicas),
            "topology.ranking_replicas: 1..=3"
        );
        ensure!(
            self.topology.etcd_members == 1 || self.topology.etcd_members == 3,
            "topology.etcd_members: 1 or 3"
        );
        ensure!(
            self.topology.feature_store == "redb" || self.topology.feature_store == "redis",
            "topology.feature_store: redb or redis"
        );
        ensure!(
            self.load.rpc == "search" || self.load.rpc == "recommend",
            "load.rpc: search or recommend"
        );
        ensure!(
            self.load.qps > 0.0 && self.load.qps <= 1_000.0,
            "load.qps: within (0, 1000]"
        );
        ensure!(
            (1..=3_600).contains(&self.load.duration_s),
            "load.duration_s: 1..=3600"
        );
        ensure!(
            (0.0..=100.0).contains(&self.load.events_per_s),
            "load.events_per_s: 0..=100"
        );
        for (i, f) in self.faults.iter().enumerate() {
            self.validate_fault(i, f, compose)?;
        }
        ensure!(
            (0.0..=1.0).contains(&self.slo.availability),
            "slo.availability: 0..=1"
        );
        let surges = self.faults.iter().any(|f| f.kind == FaultKind::Surge);
        ensure!(
            surges == self.slo.overload.is_some(),
            "slo.overload: judges surges; give it exactly when the timeline has one"
        );
        if let Some(o) = &self.slo.overload {
            ensure!(
                o.goodput_ratio > 0.0 && o.goodput_ratio <= 1.0,
                "slo.overload.goodput_ratio: within (0, 1]"
            );
            ensure!(
                o.refusal_p99_ms > 0.0 && o.answered_p99_ms > 0.0,
                "slo.overload: latency bounds must be > 0"
            );
        }
        if compose {
            ensure!(
                self.load.events_per_s == 0.0,
                "load.events_per_s: the compose stack's feature service is not published to the host; run event drills locally"
            );
        }
        Ok(())
    }

    /// One fault of the timeline: its fields for its kind, and what its topology
    /// can inject.
    fn validate_fault(&self, i: usize, f: &Fault, compose: bool) -> Result<(), DrillError> {
        ensure!(
            f.at_s >= 0.0 && f.at_s < self.load.duration_s as f64,
            "fault[{i}].at_s: within the load's duration"
        );
        validate_kind_fields(i, f)?;
        ensure!(
            f.signal.is_none() || f.kind == FaultKind::Restart,
            "fault[{i}].signal: only for restart"
        );
        // A graceful restart may start again as soon as the instance has exited.
        let graceful = f.signal == Some(RestartSignal::Term);
        if f.kind == FaultKind::Restart && graceful {
            ensure!(
                f.duration_s >= 0.0,
                "fault[{i}].duration_s: >= 0 for a graceful restart"
            );
        } else if matches!(
            f.kind,
            FaultKind::Stop | FaultKind::Restart | FaultKind::DiskFull | FaultKind::Surge
        ) || f.is_network()
        {
            ensure!(
                f.duration_s > 0.0,
                "fault[{i}].duration_s: > 0 for {}",
                f.kind.name()
            );
        }
        if f.is_network() {
            ensure!(
                !f.targets.is_empty(),
                "fault[{i}].targets: name at least one"
            );
        }
        if compose {
            self.validate_compose(i, f)?;
        } else if f.is_network() {
            validate_local_links(i, f)?;
        }
        Ok(())
    }

    /// What a fault may be in the compose stack: Docker reaches whole containers,
    /// and only the ranking replicas are published to the host.
    fn validate_compose(&self, i: usize, f: &Fault) -> Result<(), DrillError> {
        match f.kind {
            FaultKind::DiskFull => bail!(
                "fault[{i}].kind disk-full: mounts a small disk under a local instance's data; a local-topology fault"
            ),
            FaultKind::Canary | FaultKind::CorruptArtifact | FaultKind::EncoderRollout => bail!(
                "fault[{i}].kind {}: needs the registry from the host; a local-topology fault",
                f.kind.name()
            ),
            FaultKind::Partition => ensure!(
                f.links.is_empty() || f.links().len() == 2,
                "fault[{i}].links: a compose partition (docker network disconnect) cuts every link"
            ),
            FaultKind::Delay | FaultKind::Loss => {
                ensure!(
                    f.links() == [Link::Clients],
                    "fault[{i}].links: in the compose stack only `clients` (a proxy before the published port)"
                );
                for t in &f.targets {
                    ensure!(
                        ["ranking-1", "ranking-2", "ranking-3"].contains(&t.as_str()),
                        "fault[{i}].targets: {t:?}: delay and loss reach ranking-1..ranking-3 in the compose stack"
                    );
                }
            }
            FaultKind::Kill | FaultKind::Stop | FaultKind::Restart | FaultKind::Surge => {}
        }
        Ok(())
    }
}

/// Every `*.toml` scenario in `dir`, by file name.
pub fn catalog(dir: &Path) -> Result<Vec<(PathBuf, Scenario)>, DrillError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(DrillError::io("read", dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| Scenario::load(&p).map(|s| (p, s)))
        .collect()
}

/// The fields a fault of its kind must have, in range.
fn validate_kind_fields(i: usize, f: &Fault) -> Result<(), DrillError> {
    match f.kind {
        FaultKind::Kill | FaultKind::Stop | FaultKind::Restart => {
            ensure!(
                !f.targets.is_empty(),
                "fault[{i}].targets: name at least one"
            )
        }
        FaultKind::DiskFull => {
            ensure!(
                !f.targets.is_empty()
                    && f.targets
                        .iter()
                        .all(|t| t == "feature-0" || t == "registry-0"),
                "fault[{i}].targets: feature-0 and/or registry-0 (the instances with data on disk)"
            );
            ensure!(
                (8..=1024).contains(&f.disk_mb),
                "fault[{i}].disk_mb: 8..=1024"
            );
        }
        FaultKind::Canary => ensure!(
            f.model == "nan" || f.model == "constant",
            "fault[{i}].model: nan or constant"
        ),
        FaultKind::CorruptArtifact | FaultKind::EncoderRollout => {}
        FaultKind::Delay => ensure!(
            (1..=10_000).contains(&f.delay_ms) && f.jitter_ms <= f.delay_ms,
            "fault[{i}].delay_ms: 1..=10000, and jitter_ms at most delay_ms"
        ),
        FaultKind::Loss => ensure!(
            f.loss_percent > 0.0 && f.loss_percent < 100.0,
            "fault[{i}].loss_percent: within (0, 100)"
        ),
        FaultKind::Partition => {}
        FaultKind::Surge => {
            ensure!(
                f.targets.is_empty(),
                "fault[{i}].targets: a surge overloads the mesh as a whole; name none"
            );
            ensure!(
                f.factor > 1.0 && f.factor <= rankmesh_loadgen::MAX_SURGE,
                "fault[{i}].factor: within (1, 100]"
            );
        }
    }
    Ok(())
}

/// A local network fault's targets must have links to impair: a service
/// instance's advertised port and etcd endpoints are what the proxies take over.
fn validate_local_links(i: usize, f: &Fault) -> Result<(), DrillError> {
    for t in &f.targets {
        let service = t.rsplit_once('-').map_or(t.as_str(), |(s, _)| s);
        ensure!(
            ["ranking", "registry", "feature", "embedding"].contains(&service),
            "fault[{i}].targets: {t:?} has no links to impair \
             (a ranking, registry, feature or embedding instance)"
        );
    }
    Ok(())
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

    fn with_fault(topology: &str, fault: &str) -> Result<(), DrillError> {
        let text = format!(
            r#"
            name = "x"
            hypothesis = "y"
            [topology]
            kind = "{topology}"
            [load]
            qps = 10
            duration_s = 10
            [[fault]]
            at_s = 1
            {fault}
            [slo]
            availability = 0.99
            p99_ms = 100
            recover_within_s = 1
        "#
        );
        toml::from_str::<Scenario>(&text)
            .map_err(|e| DrillError::Invalid(e.to_string()))?
            .validate()
    }

    #[test]
    fn faults_the_topology_can_inject_are_accepted() {
        let delay = "kind = \"delay\"\ntargets = [\"ranking-1\"]\ndelay_ms = 100\nduration_s = 2";
        with_fault("local", delay).expect("a delay on a proxied link");
        let partition = "kind = \"partition\"\ntargets = [\"etcd-2\"]\nduration_s = 3";
        with_fault("compose", partition).expect("a partition of any container");
        let rolling = "kind = \"restart\"\nsignal = \"term\"\ntargets = [\"registry-0\"]";
        with_fault("local", rolling).expect("a graceful restart, at once");
    }

    #[test]
    fn faults_the_topology_cannot_inject_are_refused_and_named() {
        // (topology, fault, what the error must name)
        let refused = [
            // Network faults need a duration ...
            (
                "local",
                "kind = \"partition\"\ntargets = [\"ranking-1\"]",
                "duration_s",
            ),
            // ... and an instance behind a proxied link.
            (
                "local",
                "kind = \"loss\"\ntargets = [\"etcd\"]\nloss_percent = 5\nduration_s = 1",
                "no links",
            ),
            // Docker cannot run what needs the local registry, nor reach unpublished links.
            (
                "compose",
                "kind = \"canary\"\nmodel = \"nan\"",
                "local-topology",
            ),
            (
                "compose",
                "kind = \"delay\"\ntargets = [\"feature-1\"]\ndelay_ms = 5\nduration_s = 1",
                "ranking-1..ranking-3",
            ),
            (
                "swarm",
                "kind = \"kill\"\ntargets = [\"ranking-1\"]",
                "topology.kind",
            ),
            // A crash-restart needs its downtime; a signal is only a restart's.
            (
                "local",
                "kind = \"restart\"\ntargets = [\"feature-0\"]",
                "duration_s",
            ),
            (
                "local",
                "kind = \"kill\"\ntargets = [\"feature-0\"]\nsignal = \"term\"",
                "signal",
            ),
        ];
        for (topology, fault, names) in refused {
            let e = with_fault(topology, fault).expect_err(fault).to_string();
            assert!(e.contains(names), "{topology} {fault:?}: {e}");
        }
    }
}
