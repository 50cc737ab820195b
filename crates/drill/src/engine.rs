//! The engine of a drill: [`run`] starts the topology a scenario names, and
//! [`drive`] offers its open-loop load through the SDK, injects its faults on
//! schedule through the topology, records events and reads them back where the
//! scenario asks, and judges the run against the SLO.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rankmesh_loadgen as loadgen;

use crate::options::RunOptions;
use crate::report::{self, DrillReport};
use crate::scenario::{Fault, FaultKind, Scenario};
use crate::topology::Topology;
use crate::{compose, local};

/// Runs the scenario in `path` on its topology; writes its report (`report.json`,
/// `report.html`, the services' logs) to `<report_dir>/<name>/` and returns it. A
/// report whose SLO was missed is still `Ok`: see its `pass`.
pub async fn run(path: &Path, opts: &RunOptions) -> anyhow::Result<DrillReport> {
    let scenario = Scenario::load(path)?;
    let out = opts.report_dir.join(&scenario.name);
    let state_dir = out.join("state");
    if state_dir.exists() {
        // A previous run's mesh, if any is left, then its files.
        let _ = rankmesh_launcher::down(&state_dir).await;
        std::fs::remove_dir_all(&state_dir)
            .with_context(|| format!("clear {}", state_dir.display()))?;
    }
    std::fs::create_dir_all(&state_dir)?;
    let catalog = or_default(&scenario.topology.catalog, &opts.demo_catalog);
    let inputs = if scenario.load.rpc == "recommend" {
        (0..200).map(|u| format!("u{u:05}")).collect()
    } else {
        loadgen::read_inputs(&or_default(&scenario.load.queries, &opts.demo_queries))?
    };
    let logs = out.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    let result = if scenario.topology.kind == "compose" {
        match compose::start(&scenario, opts, &logs).await {
            Ok(target) => drive_on(target, &scenario, opts, None, inputs, &logs).await,
            Err(e) => Err(e),
        }
    } else {
        match local::start(&scenario, opts, &state_dir, &catalog).await {
            Ok(target) => drive_on(target, &scenario, opts, Some(&catalog), inputs, &logs).await,
            Err(e) => Err(e),
        }
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

/// Drives the load and faults on a started topology, then tears it down whatever
/// happened (its logs go to `logs`).
async fn drive_on(
    target: impl Topology,
    scenario: &Scenario,
    opts: &RunOptions,
    catalog: Option<&Path>,
    inputs: Vec<String>,
    logs: &Path,
) -> anyhow::Result<DrillReport> {
    let result = drive(scenario, opts, &target, catalog, inputs).await;
    target.tear_down(logs).await;
    result
}

/// `path`, unless it is empty (the scenario left it to the run).
fn or_default(path: &Path, default: &Path) -> PathBuf {
    if path.as_os_str().is_empty() {
        default.to_owned()
    } else {
        path.to_owned()
    }
}

/// Offers the load, injects the faults, reads the events back, judges.
async fn drive(
    scenario: &Scenario,
    opts: &RunOptions,
    target: &impl Topology,
    catalog: Option<&Path>,
    inputs: Vec<String>,
) -> anyhow::Result<DrillReport> {
    let ranking = target.ranking();
    let (load, client) = load_options(scenario, opts, inputs)?;
    // Warm-up: connections, caches, the hedging delay's first samples.
    let warm = loadgen::Options {
        duration: Duration::from_secs(2),
        surges: Vec::new(),
        ..load.clone()
    };
    loadgen::run(ranking.clone(), &warm).await?;

    let start = Instant::now();
    let start_ms = rankmesh_common::server::now_ms();
    let bench_task = tokio::spawn({
        let load = load.clone();
        async move { loadgen::run(ranking, &load).await }
    });
    let feature = target.feature();
    let events = match (&feature, catalog, scenario.load.events_per_s > 0.0) {
        (Some(feature), Some(catalog), true) => Some(tokio::spawn(record_events(
            feature.clone(),
            Arc::new(item_ids(catalog)?),
            scenario.load.events_per_s,
            start + load.duration,
        ))),
        _ => None,
    };
    let mut injected = inject_on_schedule(scenario, target, start).await?;
    let load_report = bench_task.await.context("load task")??;
    for i in injected.iter_mut().filter(|i| i.production_model.is_some()) {
        let Some(forbidden) = i.forbidden_model.clone() else {
            continue;
        };
        let fault_at_ms = start_ms + (i.at_s * 1000.0) as i64;
        i.rolled_back_after_s = target.canary_rolled_back(&forbidden, fault_at_ms).await;
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
    let rejoined = target.rejoined(&killed, Duration::from_secs(10)).await;
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

/// The scenario's open-loop load through the SDK (weakened as `opts` says), and
/// what the report calls that client.
fn load_options(
    scenario: &Scenario,
    opts: &RunOptions,
    inputs: Vec<String>,
) -> anyhow::Result<(loadgen::Options, &'static str)> {
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
    let rpc = scenario
        .load
        .rpc
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let surges = scenario
        .faults
        .iter()
        .filter(|f| f.kind == FaultKind::Surge)
        .map(|f| loadgen::Surge {
            from: Duration::from_secs_f64(f.at_s),
            duration: Duration::from_secs_f64(f.duration_s),
            factor: f.factor,
        })
        .collect();
    let load = loadgen::Options {
        rpc,
        qps: scenario.load.qps,
        surges,
        duration: Duration::from_secs(scenario.load.duration_s),
        timeout: Duration::from_millis(scenario.load.timeout_ms),
        inputs,
        upstream,
    };
    Ok((load, client))
}

/// Injects the scenario's faults, each at its time after `start`; what each did.
async fn inject_on_schedule(
    scenario: &Scenario,
    target: &impl Topology,
    start: Instant,
) -> anyhow::Result<Vec<report::Injected>> {
    let mut faults = scenario.faults.clone();
    faults.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let mut injected = Vec::new();
    for f in &faults {
        tokio::time::sleep_until((start + Duration::from_secs_f64(f.at_s)).into()).await;
        let at = start.elapsed().as_secs_f64();
        let i = if f.kind == FaultKind::Surge {
            surge(scenario, f)
        } else {
            target
                .inject(f, at)
                .await
                .with_context(|| format!("injecting {} at {} s", f.kind.name(), f.at_s))?
        };
        eprintln!("  {:>5.1} s  {}: {}", at, i.kind, i.detail);
        injected.push(i);
    }
    Ok(injected)
}

/// A surge is the load's own doing (it was scheduled with the load): what it
/// offers, for the report.
fn surge(scenario: &Scenario, f: &Fault) -> report::Injected {
    let mut i = report::Injected::new(f.kind.name(), f.at_s);
    i.detail = format!(
        "{:.0} qps offered for {} s ({}x the base {} qps)",
        scenario.load.qps * f.factor,
        f.duration_s,
        f.factor,
        scenario.load.qps
    );
    i.ends_at_s = Some(f.at_s + f.duration_s);
    i
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
