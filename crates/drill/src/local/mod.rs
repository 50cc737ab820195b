//! The local topology of a drill: the mesh as processes on loopback, started by
//! the launcher on the drill's own ports with the default models and the drill's
//! catalog put in (`rankmesh-provision`), and its faults.
//!
//! # Layout
//! - this file: [`start`], and [`LocalTopology`]: its `inject` by fault kind, the
//!   rejoin check, and tearing it down.
//! - `env`: what the faults reach (the mesh, its state, its links).
//! - `signals`: kill, stop and restart, by signal (and the launcher's restart).
//! - `disk`: a small tmpfs under an instance's data, filled.
//! - `models`: broken canaries and corrupt artifacts, through the registry.
//! - `links`: the fault proxies on instances' links (see [`crate::netfault`]).

mod disk;
mod env;
mod links;
mod models;
mod signals;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rankmesh_common::discovery::Resolver;
use rankmesh_launcher::{self as launcher, MeshState};

use env::Env;

use crate::faults::impair;
use crate::options::RunOptions;
use crate::report::{self, Injected};
use crate::scenario::{Fault, FaultKind, Scenario};
use crate::topology::Topology;

/// Injects one fault; returns what it did.
async fn inject(env: &Env, f: &Fault, at_s: f64) -> anyhow::Result<Injected> {
    let mut injected = Injected::new(f.kind.name(), at_s);
    let i = &mut injected;
    match f.kind {
        FaultKind::Kill => signals::kill(env, f, i).await?,
        FaultKind::Restart => signals::restart(env, f, i).await?,
        FaultKind::Stop => signals::stop(env, f, i).await?,
        FaultKind::DiskFull => disk::disk_full(env, f, i)?,
        FaultKind::Canary => models::canary(env, f, i).await?,
        FaultKind::CorruptArtifact => models::corrupt_artifact(env, i).await?,
        FaultKind::EncoderRollout => models::encoder_rollout(env, i).await?,
        FaultKind::Delay | FaultKind::Loss | FaultKind::Partition => {
            i.detail = impair(&env.links, f)?;
        }
        FaultKind::Surge => anyhow::bail!("a surge is offered by the load, not injected"),
    }
    injected.detail = injected.detail.trim().to_owned();
    Ok(injected)
}

/// Waits up to `wait` for every service instance not killed to be listed in
/// discovery again.
async fn rejoined(
    etcd: &rankmesh_common::etcd::Etcd,
    mesh: &MeshState,
    killed: &[&str],
    wait: Duration,
) -> report::Rejoined {
    let survivors: Vec<&launcher::Proc> = mesh
        .processes
        .iter()
        .filter(|p| {
            ["ranking", "registry", "feature", "embedding"].contains(&p.service.as_str())
                && !killed.contains(&p.name.as_str())
        })
        .collect();
    let etcd_left = mesh
        .processes
        .iter()
        .any(|p| p.service == "etcd" && !killed.contains(&p.name.as_str()));
    if !etcd_left {
        return report::Rejoined::NotChecked;
    }
    let deadline = Instant::now() + wait;
    loop {
        let mut missing = Vec::new();
        for p in &survivors {
            match rankmesh_common::discovery::list(etcd, &p.service).await {
                Ok(listed) if listed.contains_key(&p.name) => {}
                _ => missing.push(p.name.clone()),
            }
        }
        if missing.is_empty() {
            return report::Rejoined::All(survivors.len());
        }
        if Instant::now() >= deadline {
            return report::Rejoined::Missing(missing);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The local topology: the drill's mesh as processes on loopback.
pub(crate) struct LocalTopology {
    env: Env,
    /// The mesh's etcd, for discovery and the SDK's resolvers.
    etcd: rankmesh_common::etcd::Etcd,
    /// Unmounted when dropped: after the mesh has stopped.
    disks: disk::Disks,
}

impl Topology for LocalTopology {
    fn ranking(&self) -> Resolver {
        let resolver = Resolver::watch(self.etcd.clone(), "ranking");
        resolver.with_tls(self.env.tls.clone())
    }

    fn feature(&self) -> Option<rankmesh_client::FeatureClient> {
        let resolver = Resolver::watch(self.etcd.clone(), "feature");
        let resolver = resolver.with_tls(self.env.tls.clone());
        Some(rankmesh_client::FeatureClient::new(
            resolver,
            Duration::from_secs(2),
        ))
    }

    async fn inject(&self, f: &Fault, at_s: f64) -> anyhow::Result<Injected> {
        inject(&self.env, f, at_s).await
    }

    async fn canary_rolled_back(&self, forbidden_model: &str, fault_at_ms: i64) -> Option<f64> {
        models::canary_rolled_back(&self.env, forbidden_model, fault_at_ms).await
    }

    async fn rejoined(&self, killed: &[&str], wait: Duration) -> report::Rejoined {
        rejoined(&self.etcd, &self.env.mesh, killed, wait).await
    }

    async fn tear_down(self, logs: &Path) {
        let Self { env, etcd, disks } = self;
        drop(etcd);
        tear_down(env, Some(logs)).await;
        drop(disks);
    }
}

/// Starts the scenario's mesh on loopback with the default models and `catalog`
/// put in, and the fault proxies and small disks its faults need.
pub(crate) async fn start(
    scenario: &Scenario,
    opts: &RunOptions,
    state_dir: &Path,
    catalog: &Path,
) -> anyhow::Result<LocalTopology> {
    eprintln!(
        "drill {}: starting the mesh in {}",
        scenario.name,
        state_dir.display()
    );
    let ranker = opts.models.join("ranker");
    let serve = rankmesh_provision::Serve {
        models: opts.models.clone(),
        ranker: ranker.join("model.onnx").exists().then_some(ranker),
        catalog: Some(catalog.to_owned()),
    };
    let up = up_options(scenario, opts, state_dir, serve.ranker.is_some());
    // Small disks under the data a disk-full fault fills, before anything writes there.
    let disks = disk::mount_disks(scenario, state_dir)?;
    // Kept until the mesh has stopped: the instances' links run through them.
    let (links, instance_env) = links::start_links(scenario, &up).await?;
    let up = launcher::UpOptions { instance_env, ..up };
    let mesh = rankmesh_provision::up(&up, &serve).await?.mesh;
    let tls = mesh.client_tls();
    let mut env = Env {
        up,
        mesh,
        state_dir: state_dir.to_owned(),
        token: String::new(),
        models: opts.models.clone(),
        python: opts.python.clone(),
        bad_ranker: opts.bad_ranker.clone(),
        links,
        tls: None,
    };
    // What the faults need before the load starts.
    let ready = async {
        env.tls = tls?;
        env.token = launcher::registry_secrets(state_dir)?.admin_token;
        models::prepare(&env, &scenario.faults)?;
        anyhow::Ok(rankmesh_common::etcd::Etcd::connect(&env.mesh.etcd_config()).await?)
    }
    .await;
    match ready {
        Ok(etcd) => Ok(LocalTopology { env, etcd, disks }),
        Err(e) => {
            tear_down(env, None).await;
            Err(e)
        }
    }
}

/// How the scenario's local mesh is started: its replicas, ports, etcd members and
/// feature store, the ranker followed when one is served.
fn up_options(
    scenario: &Scenario,
    opts: &RunOptions,
    state_dir: &Path,
    follow_ranker: bool,
) -> launcher::UpOptions {
    let topology = &scenario.topology;
    launcher::UpOptions {
        state_dir: state_dir.to_owned(),
        ranking_replicas: topology.ranking_replicas,
        etcd_port: opts.etcd_port,
        base_port: opts.base_port,
        bin_dir: opts.bin_dir.clone(),
        follow_ranker,
        quantizer: opts.quantizer.clone(),
        insecure: false,
        ranking_env: topology
            .ranking_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        embedding_env: Vec::new(),
        traces: None,
        etcd_members: topology.etcd_members,
        // Right after the services' ports (two per instance).
        redis_port: (topology.feature_store == "redis").then(|| {
            opts.base_port
                .saturating_add(2 * (topology.ranking_replicas as u16 + 3))
        }),
        instance_env: BTreeMap::new(),
    }
}

/// Whatever happened, nothing keeps running: hung processes are continued so they
/// can be stopped, and cut links healed so they can deregister. The services' logs
/// are kept in `logs` (beside the report) when given; the mesh's data (registry
/// blobs, etcd, indexes) goes with the state directory.
async fn tear_down(env: Env, logs: Option<&Path>) {
    for p in &env.mesh.processes {
        signals::send(p.pid, Signal::SIGCONT);
    }
    for p in env.links.values().flatten() {
        p.heal();
    }
    launcher::stop(&env.mesh, Duration::from_secs(5)).await;
    let state_dir = env.state_dir.clone();
    // The fault proxies close with it.
    drop(env);
    let _ = launcher::down(&state_dir).await;
    if let Some(logs) = logs {
        let _ = std::fs::rename(state_dir.join("logs"), logs);
    }
}
