//! Disaster-recovery drills: `meshctl drill run SCENARIO.toml` starts the topology a
//! scenario names (local processes, or the compose stack), offers its open-loop
//! load through the SDK (as a storefront would), injects its faults on schedule,
//! then judges the SLO and writes a JSON report and a self-contained HTML page. A
//! drill whose SLO is missed exits non-zero. `meshctl drill list` shows the catalog
//! in `deploy/drills/`.

pub(crate) mod compose;
pub(crate) mod faults;
pub(crate) mod local;

use rankmesh_drill::{netfault, report, results, scenario};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;

use faults::{Links, impair, undo_after};
use netfault::FaultProxy;
use rankmesh_common::discovery::Resolver;
use rankmesh_launcher as launcher;
use rankmesh_loadgen as loadgen;
use report::{DrillReport, Injected};
use scenario::{Fault, FaultKind, Link, Scenario, catalog};

/// Disaster-recovery drills: run a scenario (topology, load, fault timeline,
/// SLO), write its report, exit non-zero when the SLO is missed.
#[derive(Debug, clap::Args)]
pub(crate) struct DrillArgs {
    #[command(subcommand)]
    command: DrillCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DrillCommand {
    /// Run scenarios (or --all in --dir); each gets `<report>/<name>/report.{json,html}`.
    Run {
        scenarios: Vec<PathBuf>,
        /// Every scenario in --dir.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value = "deploy/drills")]
        dir: PathBuf,
        #[arg(long, default_value = ".rankmesh/drills")]
        report: PathBuf,
        /// Weaken the client: no hedging.
        #[arg(long)]
        no_hedge: bool,
        /// Weaken the client: no retries.
        #[arg(long)]
        no_retry: bool,
        /// etcd's client port for the drill's mesh; services from --base-port.
        #[arg(long, default_value_t = 24379)]
        etcd_port: u16,
        #[arg(long, default_value_t = 24400)]
        base_port: u16,
        #[arg(long, env = "RANKMESH_MODELS", default_value = "models")]
        models: PathBuf,
        /// The compose stack that `topology.kind = "compose"` scenarios run
        /// (images from scripts/images, its .env beside it).
        #[arg(long, default_value = "deploy/compose")]
        compose_dir: PathBuf,
        /// Also keep each drill's verdict and measurements in this record (e.g.
        /// deploy/drills/last-run.json, which the README's table is made from);
        /// refused for a weakened client.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// The markdown table of every drill's last recorded run.
    Table {
        #[arg(long, default_value = "deploy/drills/last-run.json")]
        record: PathBuf,
        /// Rewrite the generated table in this file (between its markers) instead
        /// of printing it.
        #[arg(long)]
        readme: Option<PathBuf>,
    },
    /// The scenario catalog: name, duration, faults, hypothesis.
    List {
        #[arg(long, default_value = "deploy/drills")]
        dir: PathBuf,
    },
}

pub(crate) async fn command(a: DrillArgs) -> anyhow::Result<std::process::ExitCode> {
    let (scenarios, all, dir, opts, record) = match a.command {
        DrillCommand::List { dir } => {
            list(&dir)?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        DrillCommand::Table { record, readme } => {
            let table = results::table(&results::load(&record)?);
            match readme {
                None => print!("{table}"),
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("read {}", path.display()))?;
                    std::fs::write(&path, results::replace_block(&text, &table)?)
                        .with_context(|| format!("write {}", path.display()))?;
                    eprintln!("rewrote the drill table in {}", path.display());
                }
            }
            return Ok(std::process::ExitCode::SUCCESS);
        }
        DrillCommand::Run {
            scenarios,
            all,
            dir,
            report,
            no_hedge,
            no_retry,
            etcd_port,
            base_port,
            models,
            compose_dir,
            record,
        } => {
            anyhow::ensure!(
                record.is_none() || !(no_hedge || no_retry),
                "--record keeps what the SDK as shipped measures; not a weakened client's run"
            );
            let cwd = std::env::current_dir()?;
            let opts = RunOptions {
                report_dir: cwd.join(report),
                no_hedge,
                no_retry,
                etcd_port,
                base_port,
                models: cwd.join(models),
                compose_dir: cwd.join(compose_dir),
            };
            (scenarios, all, dir, opts, record)
        }
    };
    let mut paths = scenarios;
    if all {
        paths.extend(catalog(&dir)?.into_iter().map(|(p, _)| p));
    }
    anyhow::ensure!(!paths.is_empty(), "name a scenario file, or --all");
    let mut failed = Vec::new();
    let mut reports = Vec::new();
    for p in &paths {
        // One drill that cannot run does not stop the others.
        match run(p, &opts).await {
            Ok(r) => {
                if !r.pass {
                    failed.push(r.name.clone());
                }
                reports.push(r);
            }
            Err(e) => {
                eprintln!("drill {}: could not run: {e:#}", p.display());
                failed.push(p.display().to_string());
            }
        }
    }
    if let Some(path) = &record {
        results::record(path, &reports, &results::today())?;
        eprintln!(
            "recorded {} run(s) in {}; `meshctl drill table --readme README.md` renders them",
            reports.len(),
            path.display()
        );
    }
    if failed.is_empty() {
        println!("{} drill(s) passed", paths.len());
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        println!("SLO missed: {}", failed.join(", "));
        Ok(std::process::ExitCode::FAILURE)
    }
}

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
    /// The compose stack (`deploy/compose`) for compose scenarios.
    pub compose_dir: PathBuf,
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

/// RecordEvent at `per_s` until `until`; returns the requests that were acked, and
/// how many were refused, by status code.
async fn record_events(
    feature: rankmesh_client::FeatureClient,
    items: Arc<Vec<String>>,
    per_s: f64,
    until: Instant,
) -> (
    Vec<rankmesh_proto::pb::feature::v1::RecordEventRequest>,
    BTreeMap<String, u64>,
) {
    use rankmesh_proto::pb::feature::v1 as feat;
    let mut acked = Vec::new();
    let mut refused = BTreeMap::new();
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
        match feature
            .record_event(req.clone(), rankmesh_client::Deadline::Default)
            .await
        {
            Ok(_) => acked.push(req),
            Err(s) => *refused.entry(format!("{:?}", s.code())).or_default() += 1,
        }
        n += 1;
        tokio::time::sleep(interval).await;
    }
    (acked, refused)
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

/// The mesh a drill runs against, and how its faults reach it.
enum Target {
    Local {
        // Boxed: the mesh's options and the client are large, and a compose target
        // holds little.
        env: Box<local::Env>,
        etcd: Box<rankmesh_common::etcd::Etcd>,
    },
    Compose {
        stack: Arc<compose::Stack>,
        links: Links,
    },
}

impl Target {
    async fn inject(&self, f: &Fault, at_s: f64) -> anyhow::Result<Injected> {
        match self {
            Self::Local { env, .. } => local::inject(env, f, at_s).await,
            Self::Compose { stack, links } => inject_compose(stack, links, f, at_s).await,
        }
    }

    /// For a canary fault: when the registry recorded its rollback (local only: the
    /// compose topology runs no canary faults).
    async fn canary_rolled_back(&self, fault: &Injected, start_ms: i64) -> Option<f64> {
        let forbidden = fault.forbidden_model.as_deref()?;
        let fault_at_ms = start_ms + (fault.at_s * 1000.0) as i64;
        match self {
            Self::Local { env, .. } => local::canary_rolled_back(env, forbidden, fault_at_ms).await,
            Self::Compose { .. } => None,
        }
    }

    async fn rejoined(&self, killed: &[&str]) -> report::Rejoined {
        let wait = Duration::from_secs(10);
        match self {
            Self::Local { env, etcd } => local::rejoined(etcd, &env.mesh, killed, wait).await,
            Self::Compose { stack, .. } => compose_rejoined(stack, killed, wait).await,
        }
    }
}

/// Injects one fault into the compose stack.
async fn inject_compose(
    stack: &Arc<compose::Stack>,
    links: &Links,
    f: &Fault,
    at_s: f64,
) -> anyhow::Result<Injected> {
    let mut injected = Injected::new(f.kind.name(), at_s);
    let mut targets = Vec::new();
    for t in &f.targets {
        targets.push(if t == "etcd-leader" {
            stack.etcd_leader().await?
        } else {
            t.clone()
        });
    }
    let hold = Duration::from_secs_f64(f.duration_s);
    match f.kind {
        FaultKind::Kill => {
            for t in targets {
                stack.kill(&t).await?;
                injected
                    .detail
                    .push_str(&format!("docker kill -s KILL {t} "));
                injected.killed.push(t);
            }
        }
        // Held on whole containers: paused then unpaused, or killed then started.
        FaultKind::Stop | FaultKind::Restart => {
            let restart = f.kind == FaultKind::Restart;
            let graceful = f.signal == Some(scenario::RestartSignal::Term);
            let (done, undone) = match (restart, graceful) {
                (true, false) => ("docker kill -s KILL", "docker start"),
                (true, true) => ("docker stop", "docker start"),
                (false, _) => ("docker pause", "docker unpause"),
            };
            for t in &targets {
                match (restart, graceful) {
                    (true, false) => stack.kill(t).await?,
                    (true, true) => stack.stop(t).await?,
                    (false, _) => stack.pause(t).await?,
                }
                injected
                    .detail
                    .push_str(&format!("{done} {t}, {undone} after {} s ", f.duration_s));
            }
            let stack = stack.clone();
            undo_after(hold, targets, move |t| {
                let stack = stack.clone();
                async move {
                    let undo = if restart {
                        stack.start(&t).await
                    } else {
                        stack.unpause(&t).await
                    };
                    undo.with_context(|| format!("{undone} {t}"))
                }
            });
        }
        FaultKind::Partition => {
            let mut detached = Vec::new();
            for t in &targets {
                detached.push(stack.disconnect(t).await?);
                injected.detail.push_str(&format!(
                    "docker network disconnect {t} for {} s ",
                    f.duration_s
                ));
            }
            let stack = stack.clone();
            undo_after(hold, detached, move |d| {
                let stack = stack.clone();
                async move { stack.reconnect(&d).await.context("reconnect") }
            });
        }
        FaultKind::Delay | FaultKind::Loss => injected.detail = impair(links, f)?,
        FaultKind::Canary | FaultKind::CorruptArtifact | FaultKind::DiskFull => {
            anyhow::bail!("{} is a local-topology fault", f.kind.name())
        }
    }
    injected.detail = injected.detail.trim().to_owned();
    Ok(injected)
}

/// Waits up to `wait` for every compose service not killed to be registered again.
async fn compose_rejoined(
    stack: &compose::Stack,
    killed: &[&str],
    wait: Duration,
) -> report::Rejoined {
    let survivors: Vec<&str> = compose::SERVICES
        .iter()
        .copied()
        .filter(|s| {
            ["ranking", "registry", "feature", "embedding"]
                .iter()
                .any(|svc| s.starts_with(&format!("{svc}-")))
                && !killed.contains(s)
        })
        .collect();
    if ["etcd-1", "etcd-2", "etcd-3"]
        .iter()
        .filter(|m| killed.contains(m))
        .count()
        >= 2
    {
        // No quorum left to read discovery from.
        return report::Rejoined::NotChecked;
    }
    let deadline = Instant::now() + wait;
    loop {
        let mut missing = Vec::new();
        for service in ["ranking", "registry", "feature", "embedding"] {
            let listed = stack.registered(service).await.unwrap_or_default();
            missing.extend(
                survivors
                    .iter()
                    .filter(|s| s.starts_with(&format!("{service}-")))
                    .filter(|s| !listed.iter().any(|l| l == *s))
                    .map(|s| (*s).to_owned()),
            );
        }
        if missing.is_empty() {
            return report::Rejoined::All(survivors.len());
        }
        if Instant::now() >= deadline {
            return report::Rejoined::Missing(missing);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Fault proxies in front of the compose stack's published ranking ports, for the
/// network faults that name a replica; returns them and the addresses the
/// storefront calls (a proxy's where there is one).
async fn compose_links(
    scenario: &Scenario,
    stack: &compose::Stack,
) -> anyhow::Result<(Links, Vec<String>)> {
    let mut addrs = stack.ranking_addrs();
    let mut links = Links::new();
    for f in scenario.faults.iter().filter(|f| f.is_network()) {
        if f.kind == FaultKind::Partition {
            continue; // docker network disconnect
        }
        for t in &f.targets {
            let key = (t.clone(), Link::Clients);
            if links.contains_key(&key) {
                continue;
            }
            let i = compose_replica(t)?;
            let upstream = addrs[i].parse().with_context(|| addrs[i].clone())?;
            let p = FaultProxy::start(([127, 0, 0, 1], 0).into(), upstream).await?;
            addrs[i] = p.addr().to_string();
            links.insert(key, vec![Arc::new(p)]);
        }
    }
    Ok((links, addrs))
}

/// `ranking-1`..`ranking-3`: the index of its published port.
fn compose_replica(name: &str) -> anyhow::Result<usize> {
    name.strip_prefix("ranking-")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=3).contains(n))
        .map(|n| n - 1)
        .with_context(|| {
            format!("{name:?}: delay and loss in the compose stack reach ranking-1..ranking-3")
        })
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
    // The same demo store (and its queries) that scripts/images bakes into the
    // compose stack's bootstrap.
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
        loadgen::read_inputs(&queries)?
    };
    let logs = out.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    let result = if scenario.topology.kind == "compose" {
        run_compose(&scenario, opts, &logs, inputs).await
    } else {
        run_local(&scenario, opts, &state_dir, &logs, &catalog, inputs).await
    };
    // A mesh that could not run keeps its state: the error names its logs there.
    // (The next run of the scenario clears it.)
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    let report = result?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(out.join("report.html"), report::html(&report))?;
    print!("{}", report::summary(&report));
    println!("report: {}", out.join("report.html").display());
    Ok(report)
}

/// The local topology: start the mesh, drive, stop it; its logs go to `logs`.
async fn run_local(
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
    let up = launcher::UpOptions {
        state_dir: state_dir.to_owned(),
        ranking_replicas: scenario.topology.ranking_replicas,
        etcd_port: opts.etcd_port,
        base_port: opts.base_port,
        bin_dir: launcher::own_bin_dir()?,
        follow_ranker: serve.ranker.is_some(),
        quantizer: crate::mesh::quantizer(&opts.models),
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
        instance_env: BTreeMap::new(),
    };
    // Small disks under the data a disk-full fault fills, before anything writes there.
    // Dropped last, after the mesh has stopped.
    let _disks = local::mount_disks(scenario, state_dir)?;
    // Kept until the mesh has stopped: the instances' etcd links run through them.
    let (links, instance_env) = local::start_links(scenario, &up).await?;
    let up = launcher::UpOptions { instance_env, ..up };
    let mesh = crate::mesh::up(&up, &serve).await?;
    let result = async {
        let env = local::Env {
            up: up.clone(),
            mesh: mesh.clone(),
            state_dir: state_dir.to_owned(),
            token: launcher::registry_secrets(state_dir)?.admin_token,
            models: opts.models.clone(),
            links: links.clone(),
        };
        local::prepare(&env, &scenario.faults)?;
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
        let target = Target::Local {
            env: Box::new(env),
            etcd: Box::new(etcd),
        };
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
    // Whatever happened, nothing keeps running: hung processes are continued so
    // they can be stopped, and cut links healed so they can deregister.
    for p in &mesh.processes {
        local::send(p.pid, Signal::SIGCONT);
    }
    for p in links.values().flatten() {
        p.heal();
    }
    launcher::stop(&mesh, Duration::from_secs(5)).await;
    drop(links);
    let _ = launcher::down(state_dir).await;
    // Keep the services' logs beside the report; the mesh's data (registry blobs,
    // etcd, indexes) goes with the state directory.
    let _ = std::fs::rename(state_dir.join("logs"), logs);
    result
}

/// The compose topology: bring the stack up as its own project, drive, take it
/// down with its volumes; every container's log goes to `logs/compose.log`.
async fn run_compose(
    scenario: &Scenario,
    opts: &RunOptions,
    logs: &Path,
    inputs: Vec<String>,
) -> anyhow::Result<DrillReport> {
    let project = format!("rankmesh-drill-{}", scenario.name);
    let stack = Arc::new(compose::Stack::new(&opts.compose_dir, &project, opts.base_port).await?);
    eprintln!(
        "drill {}: starting the compose stack (project {project})",
        scenario.name
    );
    // A stack left by an interrupted run goes first.
    stack.down().await;
    let result = async {
        stack.up().await?;
        let (links, addrs) = compose_links(scenario, &stack).await?;
        let ranking = Resolver::fixed("ranking", &addrs);
        let target = Target::Compose {
            stack: stack.clone(),
            links,
        };
        drive(
            scenario,
            opts,
            &target,
            ranking,
            None,
            Path::new(""),
            inputs,
        )
        .await
    }
    .await;
    std::fs::create_dir_all(logs)?;
    stack.save_logs(&logs.join("compose.log")).await;
    stack.down().await;
    result
}

/// Offers the load, injects the faults, reads the events back, judges.
async fn drive(
    scenario: &Scenario,
    opts: &RunOptions,
    target: &Target,
    ranking: Resolver,
    feature: Option<rankmesh_client::FeatureClient>,
    catalog: &Path,
    inputs: Vec<String>,
) -> anyhow::Result<DrillReport> {
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
    let load = loadgen::Options {
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
    // Warm-up: connections, caches, the hedging delay's first samples.
    let warm = loadgen::Options {
        duration: Duration::from_secs(2),
        ..load.clone()
    };
    loadgen::run(ranking.clone(), &warm).await?;

    let start = Instant::now();
    let start_ms = rankmesh_common::server::now_ms();
    let bench_task = tokio::spawn({
        let load = load.clone();
        async move { loadgen::run(ranking, &load).await }
    });
    let events = match (&feature, scenario.load.events_per_s > 0.0) {
        (Some(feature), true) => Some(tokio::spawn(record_events(
            feature.clone(),
            Arc::new(item_ids(catalog)?),
            scenario.load.events_per_s,
            start + load.duration,
        ))),
        _ => None,
    };
    let mut faults = scenario.faults.clone();
    faults.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let mut injected = Vec::new();
    for f in &faults {
        tokio::time::sleep_until((start + Duration::from_secs_f64(f.at_s)).into()).await;
        let at = start.elapsed().as_secs_f64();
        let i = target
            .inject(f, at)
            .await
            .with_context(|| format!("injecting {} at {} s", f.kind.name(), f.at_s))?;
        eprintln!("  {:>5.1} s  {}: {}", at, i.kind, i.detail);
        injected.push(i);
    }
    let load_report = bench_task.await.context("load task")??;
    for i in injected.iter_mut().filter(|i| i.production_model.is_some()) {
        i.rolled_back_after_s = target.canary_rolled_back(i, start_ms).await;
    }
    let events = match (events, &feature) {
        (Some(t), Some(feature)) => {
            let (acked, refused) = t.await.context("event task")?;
            Some(report::Events {
                lost: lost_events(feature, &acked).await,
                acked: acked.len() as u64,
                refused,
            })
        }
        _ => None,
    };
    let killed: Vec<&str> = injected
        .iter()
        .flat_map(|i| i.killed.iter().map(String::as_str))
        .collect();
    let rejoined = target.rejoined(&killed).await;
    Ok(report::judge(report::Inputs {
        name: &scenario.name,
        hypothesis: scenario.hypothesis.trim(),
        slo: &scenario.slo,
        faults: injected,
        load: load_report,
        events,
        rejoined,
        client: client.to_owned(),
    }))
}
