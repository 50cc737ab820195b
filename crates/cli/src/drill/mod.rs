//! Disaster-recovery drills: `meshctl drill run SCENARIO.toml` starts the topology a
//! scenario names, offers its open-loop load through the SDK (as a storefront
//! would), injects its faults on schedule, then judges the SLO and writes a JSON
//! report and a self-contained HTML page. A drill whose SLO is missed exits
//! non-zero. `meshctl drill list` shows the catalog in `deploy/drills/`.

pub(crate) mod report;
pub(crate) mod scenario;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::bench;
use crate::launcher::{self, MeshState};
use report::{DrillReport, Injected};
use scenario::{Fault, FaultKind, Scenario};

/// How a drill is run (from the command line).
#[derive(Debug, Clone)]
pub(crate) struct RunOptions {
    /// Reports go to `<report_dir>/<scenario name>/`.
    pub report_dir: PathBuf,
    /// The SDK without hedging / retries: a weakened client, to show what they buy.
    pub no_hedge: bool,
    pub no_retry: bool,
    /// Ports of the local topology: etcd on `etcd_port`, services from `base_port`.
    pub etcd_port: u16,
    pub base_port: u16,
    pub models: PathBuf,
}

/// Lists the scenarios in `dir`: name, duration, faults, hypothesis.
pub(crate) fn list(dir: &Path) -> anyhow::Result<()> {
    let scenarios = catalog(dir)?;
    println!("{:<22} {:>6}  {:<28} hypothesis", "name", "secs", "faults");
    for (_, s) in scenarios {
        let faults: Vec<String> = s
            .faults
            .iter()
            .map(|f| format!("{}@{}s", f.kind.name(), f.at_s))
            .collect();
        let first = s
            .hypothesis
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "{:<22} {:>6}  {:<28} {}",
            s.name,
            s.load.duration_s,
            faults.join(","),
            first
        );
    }
    Ok(())
}

/// Every `*.toml` scenario in `dir`, by file name.
pub(crate) fn catalog(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Scenario)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
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

fn send(pid: u32, sig: Signal) {
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

fn grpc_of(mesh: &MeshState, service: &str) -> anyhow::Result<String> {
    mesh.processes
        .iter()
        .find(|p| p.service == service)
        .map(|p| p.grpc.clone())
        .ok_or_else(|| anyhow::anyhow!("no {service} in the mesh"))
}

/// Where the drill's local mesh lives.
struct Env {
    mesh: MeshState,
    state_dir: PathBuf,
    token: String,
    models: PathBuf,
}

/// Publishes `file` as the next ranker version; returns its manifest.
async fn publish_ranker(
    env: &Env,
    file: &Path,
    why: &str,
) -> anyhow::Result<rankmesh_proto::pb::registry::v1::ModelManifest> {
    let registry = grpc_of(&env.mesh, "registry")?;
    let m = crate::model::publish(
        &registry,
        &env.token,
        &crate::model::Upload {
            name: launcher::RANKER_MODEL,
            file,
            inputs: &["features".to_owned()],
            outputs: &["score".to_owned()],
            metadata: vec![("source".into(), why.to_owned())],
            sidecars: &[],
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
fn prepare(env: &Env, faults: &[Fault]) -> anyhow::Result<()> {
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
async fn inject(env: &Env, f: &Fault, at_s: f64) -> anyhow::Result<Injected> {
    let mut injected = Injected {
        at_s,
        kind: f.kind.name().to_owned(),
        detail: String::new(),
        forbidden_model: None,
        recovered_after_s: None,
    };
    match f.kind {
        FaultKind::Kill => {
            for (name, pid) in pids(&env.mesh, &resolve(&env.mesh, &f.targets).await?)? {
                send(pid, Signal::SIGKILL);
                injected.detail.push_str(&format!("SIGKILL {name} "));
            }
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
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                for (_, pid) in targets {
                    send(pid, Signal::SIGCONT);
                }
            });
        }
        FaultKind::Canary => {
            // Made by `prepare` before the load started.
            let bad = broken_ranker(env, &f.model);
            let v = publish_ranker(env, &bad, "drill: broken canary")
                .await?
                .version;
            crate::model::promote(
                &grpc_of(&env.mesh, "registry")?,
                &env.token,
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
                &grpc_of(&env.mesh, "registry")?,
                &env.token,
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

/// RecordEvent at `per_s` until `until`; returns the requests that were acked.
async fn record_events(
    feature: rankmesh_client::FeatureClient,
    items: Arc<Vec<String>>,
    per_s: f64,
    until: Instant,
) -> Vec<rankmesh_proto::pb::feature::v1::RecordEventRequest> {
    use rankmesh_proto::pb::feature::v1 as feat;
    let mut acked = Vec::new();
    let interval = Duration::from_secs_f64(1.0 / per_s);
    let mut n = 0u64;
    let run = format!("{:08x}", rand::random::<u32>());
    while Instant::now() < until {
        let req = feat::RecordEventRequest {
            event_id: format!("drill-{run}-{n}"),
            user_id: format!("drill-user-{}", n % 20),
            item_id: items[n as usize % items.len()].clone(),
            r#type: feat::EventType::View as i32,
            timestamp_ms: 0,
        };
        if feature
            .record_event(req.clone(), rankmesh_client::Deadline::Default)
            .await
            .is_ok()
        {
            acked.push(req);
        }
        n += 1;
        tokio::time::sleep(interval).await;
    }
    acked
}

/// Re-sends every acked event: one the store had kept answers `duplicate`; any
/// other answer means it was lost. None when the feature service cannot answer.
async fn lost_events(
    feature: &rankmesh_client::FeatureClient,
    acked: &[rankmesh_proto::pb::feature::v1::RecordEventRequest],
) -> Option<u64> {
    let mut lost = 0;
    for req in acked {
        match feature
            .record_event(req.clone(), Duration::from_secs(5))
            .await
        {
            Ok(r) if r.duplicate => {}
            Ok(_) => lost += 1,
            Err(_) => return None,
        }
    }
    Some(lost)
}

/// Item ids from a catalog file (the first few hundred), for RecordEvent.
fn item_ids(catalog: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(catalog)?;
    let ids: Vec<String> = text
        .lines()
        .take(500)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect();
    anyhow::ensure!(!ids.is_empty(), "no item ids in {}", catalog.display());
    Ok(ids)
}

/// Runs one scenario; returns its report (written to disk too).
pub(crate) async fn run(path: &Path, opts: &RunOptions) -> anyhow::Result<DrillReport> {
    let scenario = Scenario::load(path)?;
    let out = opts.report_dir.join(&scenario.name);
    let state_dir = out.join("state");
    if state_dir.exists() {
        // A previous run's mesh, if any is left, then its files.
        let _ = launcher::down(&state_dir).await;
        std::fs::remove_dir_all(&state_dir)
            .with_context(|| format!("clear {}", state_dir.display()))?;
    }
    std::fs::create_dir_all(&state_dir)?;
    let demo = state_dir.join("demo");
    let catalog = if scenario.topology.catalog.as_os_str().is_empty() {
        crate::generate::generate(2_000, 200, 7, &demo)?;
        demo.join("catalog.jsonl")
    } else {
        scenario.topology.catalog.clone()
    };
    let queries = if scenario.load.queries.as_os_str().is_empty() {
        demo.join("queries.txt")
    } else {
        scenario.load.queries.clone()
    };
    let inputs = if scenario.load.rpc == "recommend" {
        (0..200).map(|u| format!("u{u:05}")).collect()
    } else {
        bench::read_inputs(&queries)?
    };

    eprintln!(
        "drill {}: starting the mesh in {}",
        scenario.name,
        state_dir.display()
    );
    let ranker = opts.models.join("ranker");
    let up = launcher::UpOptions {
        state_dir: state_dir.clone(),
        ranking_replicas: scenario.topology.ranking_replicas,
        etcd_port: opts.etcd_port,
        base_port: opts.base_port,
        bin_dir: std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
        ranker: ranker.join("model.onnx").exists().then_some(ranker),
        models: opts.models.clone(),
        catalog: Some(catalog.clone()),
        ranking_env: scenario
            .topology
            .ranking_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        traces: None,
        etcd_members: scenario.topology.etcd_members,
        // Right after the services' ports (two per instance).
        redis_port: (scenario.topology.feature_store == "redis").then(|| {
            opts.base_port
                .saturating_add(2 * (scenario.topology.ranking_replicas as u16 + 3))
        }),
    };
    let mesh = launcher::up(&up).await?;
    let result = drive(&scenario, opts, &mesh, &state_dir, &catalog, inputs).await;
    // Whatever happened, nothing keeps running: hung processes are continued so
    // they can be stopped.
    for p in &mesh.processes {
        send(p.pid, Signal::SIGCONT);
    }
    launcher::stop(&mesh, Duration::from_secs(5)).await;
    let _ = launcher::down(&state_dir).await;
    // Keep the services' logs beside the report; drop the mesh's data (registry
    // blobs, etcd, indexes).
    let logs = out.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    let _ = std::fs::rename(state_dir.join("logs"), &logs);
    let _ = std::fs::remove_dir_all(&state_dir);
    let report = result?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(out.join("report.html"), report::html(&report))?;
    print!("{}", report::summary(&report));
    println!("report: {}", out.join("report.html").display());
    Ok(report)
}

/// Loads the catalog, offers the load, injects the faults, judges.
async fn drive(
    scenario: &Scenario,
    opts: &RunOptions,
    mesh: &MeshState,
    state_dir: &Path,
    catalog: &Path,
    inputs: Vec<String>,
) -> anyhow::Result<DrillReport> {
    launcher::load_catalog(mesh, catalog).await?;
    let env = Env {
        mesh: mesh.clone(),
        state_dir: state_dir.to_owned(),
        token: launcher::registry_secrets(state_dir)?.admin_token,
        models: opts.models.clone(),
    };
    let etcd = rankmesh_common::etcd::Etcd::connect(&rankmesh_common::config::EtcdConfig {
        endpoints: mesh.etcd.split(',').map(str::to_owned).collect(),
        ..rankmesh_common::config::EtcdConfig::default()
    })
    .await?;
    let mut upstream = rankmesh_client::upstream::UpstreamConfig::default();
    if opts.no_hedge {
        upstream.hedge_percentile = 0.0;
    }
    if opts.no_retry {
        upstream.max_retries = 0;
    }
    let client = match (opts.no_hedge, opts.no_retry) {
        (false, false) => "SDK with hedging and retries",
        (true, false) => "SDK without hedging",
        (false, true) => "SDK without retries",
        (true, true) => "SDK without hedging or retries (weakened)",
    };
    let load = bench::Options {
        rpc: scenario
            .load
            .rpc
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?,
        qps: scenario.load.qps,
        duration: Duration::from_secs(scenario.load.duration_s),
        timeout: Duration::from_millis(scenario.load.timeout_ms),
        inputs,
        upstream,
    };
    prepare(&env, &scenario.faults)?;
    // Warm-up: connections, caches, the hedging delay's first samples.
    let warm = bench::Options {
        duration: Duration::from_secs(2),
        ..load.clone()
    };
    let ranking = rankmesh_common::discovery::Resolver::watch(etcd.clone(), "ranking");
    bench::run(ranking.clone(), &warm).await?;

    let start = Instant::now();
    let bench_task = tokio::spawn({
        let load = load.clone();
        async move { bench::run(ranking, &load).await }
    });
    let feature = rankmesh_client::FeatureClient::new(
        rankmesh_common::discovery::Resolver::watch(etcd, "feature"),
        Duration::from_secs(2),
    );
    let items = if scenario.load.events_per_s > 0.0 {
        Some(Arc::new(item_ids(catalog)?))
    } else {
        None
    };
    let events = items.map(|items| {
        tokio::spawn(record_events(
            feature.clone(),
            items,
            scenario.load.events_per_s,
            start + load.duration,
        ))
    });
    let mut faults = scenario.faults.clone();
    faults.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let mut injected = Vec::new();
    for f in &faults {
        tokio::time::sleep_until((start + Duration::from_secs_f64(f.at_s)).into()).await;
        let at = start.elapsed().as_secs_f64();
        let i = inject(&env, f, at)
            .await
            .with_context(|| format!("injecting {} at {} s", f.kind.name(), f.at_s))?;
        eprintln!("  {:>5.1} s  {}: {}", at, i.kind, i.detail);
        injected.push(i);
    }
    let load_report = bench_task.await.context("load task")??;
    let (acked, lost) = match events {
        Some(t) => {
            let acked = t.await.context("event task")?;
            let lost = lost_events(&feature, &acked).await;
            (acked.len() as u64, lost)
        }
        None => (0, None),
    };
    Ok(report::judge(report::Inputs {
        name: &scenario.name,
        hypothesis: scenario.hypothesis.trim(),
        slo: &scenario.slo,
        faults: injected,
        load: load_report,
        events_acked: acked,
        events_lost: lost,
        client: client.to_owned(),
    }))
}
