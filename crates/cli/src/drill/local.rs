//! The local topology of a drill: the mesh as processes on loopback, started by
//! `meshctl up`'s launcher on the drill's own ports, and its faults: signals
//! (SIGKILL; SIGSTOP then SIGCONT; SIGKILL then the instance started again, its
//! data kept, by the launcher), fault proxies on an instance's links (see
//! `netfault`), and broken models published through the registry (a canary that
//! scores NaN or a constant; an artifact corrupted in the store).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::drive::{RunOptions, drive};
use super::faults::{Links, impair, undo_after};
use super::topology::Topology;
use rankmesh_common::discovery::Resolver;
use rankmesh_drill::netfault::FaultProxy;
use rankmesh_drill::report::{self, DrillReport, Injected};
use rankmesh_drill::scenario::{Fault, FaultKind, Link, RestartSignal, Scenario};
use rankmesh_launcher::{self as launcher, MeshState};

pub(super) fn send(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

/// The etcd member that leads the raft group now (asked of each member).
async fn etcd_leader(mesh: &MeshState) -> anyhow::Result<String> {
    for p in mesh.processes.iter().filter(|p| p.service == "etcd") {
        let Ok(mut c) = etcd_client::Client::connect([p.grpc.as_str()], None).await else {
            continue;
        };
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), c.status()).await
            && s.header().is_some_and(|h| h.member_id() == s.leader())
        {
            return Ok(p.name.clone());
        }
    }
    anyhow::bail!("no etcd member says it leads")
}

/// Fault targets by instance name; `etcd-leader` is whichever member leads now.
async fn resolve(mesh: &MeshState, targets: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for t in targets {
        if t == "etcd-leader" {
            out.push(etcd_leader(mesh).await?);
        } else {
            out.push(t.clone());
        }
    }
    Ok(out)
}

fn pids(mesh: &MeshState, targets: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    targets
        .iter()
        .map(|t| {
            mesh.processes
                .iter()
                .find(|p| &p.name == t)
                .map(|p| (p.name.clone(), p.pid))
                .ok_or_else(|| {
                    let names: Vec<&str> = mesh.processes.iter().map(|p| p.name.as_str()).collect();
                    anyhow::anyhow!(
                        "fault target {t:?} is not in the mesh ({})",
                        names.join(", ")
                    )
                })
        })
        .collect()
}

/// The file a disk-full fault fills the disk with.
const FILLER: &str = "drill-disk-filler";

/// Where an instance (`feature-0`, `registry-0`) keeps its data.
fn data_dir(state_dir: &Path, instance: &str) -> PathBuf {
    let service = instance.rsplit_once('-').map_or(instance, |(s, _)| s);
    launcher::data_dir(state_dir, service)
}

/// Small disks a drill mounted; unmounted when dropped (after the mesh stopped).
#[derive(Debug, Default)]
pub(super) struct Disks(Vec<PathBuf>);

impl Drop for Disks {
    fn drop(&mut self) {
        for d in &self.0 {
            match std::process::Command::new("umount").arg(d).status() {
                Ok(s) if s.success() => {}
                other => eprintln!("drill: umount {}: {other:?}", d.display()),
            }
        }
    }
}

/// Mounts a tmpfs of the fault's size under the data of every disk-full target, so
/// filling it fills nothing else. Keep the guard until the mesh has stopped.
pub(super) fn mount_disks(scenario: &Scenario, state_dir: &Path) -> anyhow::Result<Disks> {
    let mut mounted = Disks::default();
    for f in scenario
        .faults
        .iter()
        .filter(|f| f.kind == FaultKind::DiskFull)
    {
        for t in &f.targets {
            let dir = data_dir(state_dir, t);
            if mounted.0.contains(&dir) {
                continue;
            }
            std::fs::create_dir_all(&dir)?;
            let out = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={}m", f.disk_mb),
                    "tmpfs",
                ])
                .arg(&dir)
                .output()
                .context("run mount")?;
            if !out.status.success() {
                anyhow::bail!(
                    "disk-full mounts a {} MiB tmpfs at {} (root with CAP_SYS_ADMIN): {}",
                    f.disk_mb,
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            mounted.0.push(dir);
        }
    }
    Ok(mounted)
}

/// Writes zeros to `path` until the disk refuses more; the bytes written.
fn fill(path: &Path) -> std::io::Result<u64> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => return Ok(written),
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => return Ok(written),
            Err(e) => return Err(e),
        }
    }
}

/// Waits for `pid` to exit (a SIGTERMed instance drains first), so that its
/// successor can bind the same ports.
async fn exited(name: &str, pid: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while launcher::alive(pid) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} (pid {pid}) still running 30 s after the signal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Where the drill's local mesh lives.
pub(super) struct Env {
    /// How the mesh was started (a restart fault starts an instance the same way).
    pub(super) up: launcher::UpOptions,
    pub(super) mesh: MeshState,
    pub(super) state_dir: PathBuf,
    pub(super) token: String,
    pub(super) models: PathBuf,
    pub(super) links: Links,
}

impl Env {
    /// An SDK client for the drill mesh's registry, with the admin token.
    fn registry(&self) -> anyhow::Result<rankmesh_client::RegistryClient> {
        Ok(crate::model::registry_at(
            &self.mesh.grpc_of("registry")?,
            Some(&self.token),
        ))
    }
}

/// Starts a proxy on every link a network fault names, before the mesh starts, and
/// returns the environment that routes each instance through them: its advertised
/// port (callers find the proxy in discovery) and its etcd endpoints.
pub(super) async fn start_links(
    scenario: &Scenario,
    up: &launcher::UpOptions,
) -> anyhow::Result<(Links, BTreeMap<String, Vec<(String, String)>>)> {
    let instances = launcher::instances(up);
    let etcd: Vec<String> = launcher::etcd_client_urls(up)
        .iter()
        .map(|u| u.trim_start_matches("http://").to_owned())
        .collect();
    let mut links = Links::new();
    let mut env: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for f in scenario.faults.iter().filter(|f| f.is_network()) {
        for t in &f.targets {
            for link in f.links() {
                if links.contains_key(&(t.clone(), link)) {
                    continue;
                }
                let upstreams = match link {
                    Link::Clients => {
                        let i = instances.iter().find(|i| &i.name == t).ok_or_else(|| {
                            let names: Vec<&str> =
                                instances.iter().map(|i| i.name.as_str()).collect();
                            anyhow::anyhow!(
                                "fault target {t:?} is not in the mesh ({})",
                                names.join(", ")
                            )
                        })?;
                        vec![i.grpc.clone()]
                    }
                    Link::Etcd => etcd.clone(),
                };
                let mut proxies = Vec::new();
                for u in upstreams {
                    let upstream = u.parse().with_context(|| format!("address {u}"))?;
                    let p = FaultProxy::start(([127, 0, 0, 1], 0).into(), upstream)
                        .await
                        .with_context(|| format!("start a fault proxy for {t} to {u}"))?;
                    proxies.push(Arc::new(p));
                }
                let var = match link {
                    Link::Clients => (
                        "RANKMESH__SERVER__ADVERTISE_PORT".to_owned(),
                        proxies[0].addr().port().to_string(),
                    ),
                    Link::Etcd => (
                        "RANKMESH__ETCD__ENDPOINTS".to_owned(),
                        proxies
                            .iter()
                            .map(|p| format!("http://{}", p.addr()))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                };
                env.entry(t.clone()).or_default().push(var);
                links.insert((t.clone(), link), proxies);
            }
        }
    }
    Ok((links, env))
}

/// Publishes `file` as the next ranker version; returns its manifest.
async fn publish_ranker(
    env: &Env,
    file: &Path,
    why: &str,
) -> anyhow::Result<rankmesh_proto::pb::registry::v1::ModelManifest> {
    let m = crate::model::publish(
        &env.registry()?,
        &crate::model::Upload {
            name: launcher::RANKER_MODEL,
            file,
            inputs: &["features".to_owned()],
            outputs: &["score".to_owned()],
            metadata: vec![("source".into(), why.to_owned())],
            sidecars: &[],
            quantize_int8: false,
        },
    )
    .await?;
    Ok(m)
}

/// The most recently written file under `dir`: the blob just published (the
/// registry names blobs by an opaque context, and a drill's registry has no other
/// writer).
fn newest_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                stack.push(e.path());
            } else if newest
                .as_ref()
                .is_none_or(|(t, _)| meta.modified().is_ok_and(|m| m > *t))
            {
                newest = Some((meta.modified()?, e.path()));
            }
        }
    }
    newest
        .map(|(_, p)| p)
        .ok_or_else(|| anyhow::anyhow!("no blob under {}", dir.display()))
}

fn broken_ranker(env: &Env, mode: &str) -> PathBuf {
    env.state_dir.join(format!("ranker-{mode}.onnx"))
}

/// What faults need made before the load starts, so that making it does not load
/// the machine during the measurement (it did: a Python process on 2 cores pushed
/// p99 past a second): broken copies of the ranker for canaries.
pub(super) fn prepare(env: &Env, faults: &[Fault]) -> anyhow::Result<()> {
    for f in faults.iter().filter(|f| f.kind == FaultKind::Canary) {
        let bad = broken_ranker(env, &f.model);
        if bad.exists() {
            continue;
        }
        let status = std::process::Command::new(".venv/bin/python")
            .arg("scripts/bad_ranker.py")
            .arg(&f.model)
            .arg(env.models.join("ranker/model.onnx"))
            .arg(&bad)
            .status()
            .context("run scripts/bad_ranker.py (from the repository root, after scripts/setup)")?;
        anyhow::ensure!(status.success(), "scripts/bad_ranker.py {} failed", f.model);
    }
    Ok(())
}

/// Injects one fault; returns what it did.
pub(super) async fn inject(env: &Env, f: &Fault, at_s: f64) -> anyhow::Result<Injected> {
    let mut injected = Injected::new(f.kind.name(), at_s);
    match f.kind {
        FaultKind::Kill => {
            for (name, pid) in pids(&env.mesh, &resolve(&env.mesh, &f.targets).await?)? {
                send(pid, Signal::SIGKILL);
                injected.detail.push_str(&format!("SIGKILL {name} "));
                injected.killed.push(name);
            }
        }
        FaultKind::Restart => {
            let targets = pids(&env.mesh, &resolve(&env.mesh, &f.targets).await?)?;
            let signal = match f.signal.unwrap_or_default() {
                RestartSignal::Kill => Signal::SIGKILL,
                RestartSignal::Term => Signal::SIGTERM,
            };
            let mut done = Vec::new();
            for (name, pid) in &targets {
                send(*pid, signal);
                done.push(format!("{signal:?} {name}"));
            }
            injected.detail = format!(
                "{}; each started again once it exited and {} s had passed",
                done.join(", "),
                f.duration_s
            );
            let hold = Duration::from_secs_f64(f.duration_s);
            let up = env.up.clone();
            // In the order named: a store (redis) before the service that uses it.
            undo_after(hold, targets, move |(name, pid)| {
                let up = up.clone();
                async move {
                    exited(&name, pid).await?;
                    launcher::restart(&up, &name)
                        .await
                        .with_context(|| format!("start {name} again"))
                }
            });
        }
        FaultKind::DiskFull => {
            let mut filled = Vec::new();
            for t in &f.targets {
                let filler = data_dir(&env.state_dir, t).join(FILLER);
                let bytes = fill(&filler).with_context(|| format!("fill {}", filler.display()))?;
                injected.detail.push_str(&format!(
                    "{t}'s {} MiB disk filled ({:.1} MiB of filler) for {} s; ",
                    f.disk_mb,
                    bytes as f64 / (1 << 20) as f64,
                    f.duration_s
                ));
                filled.push(filler);
            }
            let hold = Duration::from_secs_f64(f.duration_s);
            undo_after(hold, filled, |filler| async move {
                std::fs::remove_file(&filler).with_context(|| format!("free {}", filler.display()))
            });
        }
        FaultKind::Stop => {
            let targets = pids(&env.mesh, &resolve(&env.mesh, &f.targets).await?)?;
            for (name, pid) in &targets {
                send(*pid, Signal::SIGSTOP);
                injected
                    .detail
                    .push_str(&format!("SIGSTOP {name} for {} s ", f.duration_s));
            }
            let hold = Duration::from_secs_f64(f.duration_s);
            undo_after(hold, targets, |(_, pid)| async move {
                send(pid, Signal::SIGCONT);
                Ok(())
            });
        }
        FaultKind::Canary => {
            // Made by `prepare` before the load started.
            let production = ranker_stages(env).await?.production_version;
            let bad = broken_ranker(env, &f.model);
            let v = publish_ranker(env, &bad, "drill: broken canary")
                .await?
                .version;
            crate::model::promote(
                &env.registry()?,
                launcher::RANKER_MODEL,
                v,
                Some(f.percent),
                &format!("drill: {} canary", f.model),
            )
            .await?;
            injected.detail = format!(
                "ranker v{v} ({} scores) as a {}% canary",
                f.model, f.percent
            );
            injected.forbidden_model = Some(format!("ranker:{v}"));
            injected.production_model = Some(format!("ranker:{production}"));
        }
        FaultKind::Delay | FaultKind::Loss | FaultKind::Partition => {
            injected.detail = impair(&env.links, f)?;
        }
        FaultKind::CorruptArtifact => {
            let m = publish_ranker(
                env,
                &env.models.join("ranker/model.onnx"),
                "drill: corrupted after publishing",
            )
            .await?;
            let v = m.version;
            // Flip bytes in the middle of the stored (encrypted) blob: the GCM tag
            // and the hashes no longer match.
            let blob = newest_file(&env.state_dir.join("registry/blobs"))?;
            let mut bytes =
                std::fs::read(&blob).with_context(|| format!("read {}", blob.display()))?;
            let mid = bytes.len() / 2;
            for b in bytes.iter_mut().skip(mid).take(16) {
                *b ^= 0xff;
            }
            std::fs::write(&blob, bytes)?;
            crate::model::promote(
                &env.registry()?,
                launcher::RANKER_MODEL,
                v,
                None,
                "drill: promote a corrupt artifact",
            )
            .await?;
            injected.detail = format!("ranker v{v} corrupted in the store, then promoted");
            injected.forbidden_model = Some(format!("ranker:{v}"));
        }
    }
    injected.detail = injected.detail.trim().to_owned();
    Ok(injected)
}

/// The ranker's stages and their history, as the registry answers them.
async fn ranker_stages(
    env: &Env,
) -> anyhow::Result<rankmesh_proto::pb::registry::v1::ModelSummary> {
    use rankmesh_proto::pb::registry::v1 as pb;
    let req = pb::ListModelsRequest {
        name: launcher::RANKER_MODEL.to_owned(),
    };
    let listed = env
        .registry()?
        .list_models(req, rankmesh_client::Deadline::Default)
        .await
        .map_err(crate::status)?;
    listed
        .models
        .into_iter()
        .find(|m| m.name == launcher::RANKER_MODEL)
        .context("the registry lists no ranker")
}

/// Seconds from `fault_at_ms` (Unix ms) until the ranker's stage history recorded
/// the rollback of the canary `forbidden` (`ranker:N`); None when it never did.
pub(super) async fn canary_rolled_back(
    env: &Env,
    forbidden: &str,
    fault_at_ms: i64,
) -> Option<f64> {
    let version = forbidden.strip_prefix("ranker:")?;
    let stages = match ranker_stages(env).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("drill: reading the ranker's stage history: {e:#}");
            return None;
        }
    };
    let rolled_back = format!("canary v{version} rolled back");
    stages
        .history
        .iter()
        .find(|e| e.description.contains(&rolled_back))
        .map(|e| (e.at_ms - fault_at_ms) as f64 / 1000.0)
}

/// Waits up to `wait` for every service instance not killed to be listed in
/// discovery again.
pub(super) async fn rejoined(
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
pub(super) struct LocalTopology {
    pub(super) env: Env,
    /// The mesh's etcd, for discovery checks.
    pub(super) etcd: rankmesh_common::etcd::Etcd,
}

impl Topology for LocalTopology {
    async fn inject(&self, f: &Fault, at_s: f64) -> anyhow::Result<Injected> {
        inject(&self.env, f, at_s).await
    }

    async fn canary_rolled_back(&self, forbidden_model: &str, fault_at_ms: i64) -> Option<f64> {
        canary_rolled_back(&self.env, forbidden_model, fault_at_ms).await
    }

    async fn rejoined(&self, killed: &[&str], wait: Duration) -> report::Rejoined {
        rejoined(&self.etcd, &self.env.mesh, killed, wait).await
    }
}

/// The local topology: start the mesh, drive, stop it; its logs go to `logs`.
pub(super) async fn run(
    scenario: &Scenario,
    opts: &RunOptions,
    state_dir: &Path,
    logs: &Path,
    catalog: &Path,
    inputs: Vec<String>,
) -> anyhow::Result<DrillReport> {
    eprintln!(
        "drill {}: starting the mesh in {}",
        scenario.name,
        state_dir.display()
    );
    let ranker = opts.models.join("ranker");
    let serve = crate::mesh::Serve {
        models: opts.models.clone(),
        ranker: ranker.join("model.onnx").exists().then_some(ranker),
        catalog: Some(catalog.to_owned()),
    };
    let up = up_options(scenario, opts, state_dir, serve.ranker.is_some())?;
    // Small disks under the data a disk-full fault fills, before anything writes there.
    // Dropped last, after the mesh has stopped.
    let _disks = mount_disks(scenario, state_dir)?;
    // Kept until the mesh has stopped: the instances' etcd links run through them.
    let (links, instance_env) = start_links(scenario, &up).await?;
    let up = launcher::UpOptions { instance_env, ..up };
    let mesh = crate::mesh::up(&up, &serve).await?;
    let result = async {
        let env = Env {
            up: up.clone(),
            mesh: mesh.clone(),
            state_dir: state_dir.to_owned(),
            token: launcher::registry_secrets(state_dir)?.admin_token,
            models: opts.models.clone(),
            links: links.clone(),
        };
        prepare(&env, &scenario.faults)?;
        let etcd = rankmesh_common::etcd::Etcd::connect(&rankmesh_common::config::EtcdConfig {
            endpoints: mesh.etcd.split(',').map(str::to_owned).collect(),
            ..rankmesh_common::config::EtcdConfig::default()
        })
        .await?;
        let ranking = Resolver::watch(etcd.clone(), "ranking");
        let feature = rankmesh_client::FeatureClient::new(
            Resolver::watch(etcd.clone(), "feature"),
            Duration::from_secs(2),
        );
        let target = LocalTopology { env, etcd };
        drive(
            scenario,
            opts,
            &target,
            ranking,
            Some(feature),
            catalog,
            inputs,
        )
        .await
    }
    .await;
    tear_down(&mesh, links, state_dir, logs).await;
    result
}

/// How the scenario's local mesh is started: its replicas, ports, etcd members and
/// feature store, the ranker followed when one is served.
fn up_options(
    scenario: &Scenario,
    opts: &RunOptions,
    state_dir: &Path,
    follow_ranker: bool,
) -> anyhow::Result<launcher::UpOptions> {
    let topology = &scenario.topology;
    Ok(launcher::UpOptions {
        state_dir: state_dir.to_owned(),
        ranking_replicas: topology.ranking_replicas,
        etcd_port: opts.etcd_port,
        base_port: opts.base_port,
        bin_dir: launcher::own_bin_dir()?,
        follow_ranker,
        quantizer: crate::mesh::quantizer(&opts.models),
        ranking_env: topology
            .ranking_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        traces: None,
        etcd_members: topology.etcd_members,
        // Right after the services' ports (two per instance).
        redis_port: (topology.feature_store == "redis").then(|| {
            opts.base_port
                .saturating_add(2 * (topology.ranking_replicas as u16 + 3))
        }),
        instance_env: BTreeMap::new(),
    })
}

/// Whatever happened, nothing keeps running: hung processes are continued so they
/// can be stopped, and cut links healed so they can deregister. The services' logs
/// are kept beside the report; the mesh's data (registry blobs, etcd, indexes) goes
/// with the state directory.
async fn tear_down(mesh: &MeshState, links: Links, state_dir: &Path, logs: &Path) {
    for p in &mesh.processes {
        send(p.pid, Signal::SIGCONT);
    }
    for p in links.values().flatten() {
        p.heal();
    }
    launcher::stop(mesh, Duration::from_secs(5)).await;
    drop(links);
    let _ = launcher::down(state_dir).await;
    let _ = std::fs::rename(state_dir.join("logs"), logs);
}
