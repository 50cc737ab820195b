//! Disaster-recovery drills: `meshctl drill run SCENARIO.toml` starts the topology a
//! scenario names (local processes, or the compose stack), offers its open-loop
//! load through the SDK (as a storefront would), injects its faults on schedule,
//! then judges the SLO and writes a JSON report and a self-contained HTML page. A
//! drill whose SLO is missed exits non-zero. `meshctl drill list` shows the catalog
//! in `deploy/drills/`.

//!
//! # Layout
//! - this file: the command line, and [`run`]: one scenario, its report written.
//! - [`drive`]: the engine: load, fault timeline, events read back, the verdict;
//!   it reaches the mesh only through a [`topology::Topology`].
//! - [`local`] and [`compose`]: the two topologies (processes on loopback through
//!   the launcher; the compose stack through Docker), each starting its mesh,
//!   injecting faults into it and tearing it down.
//! - [`faults`]: what both share: fault proxies on links, and ending held faults.

pub(crate) mod compose;
pub(crate) mod drive;
pub(crate) mod faults;
pub(crate) mod local;
pub(crate) mod topology;

use std::path::{Path, PathBuf};

use anyhow::Context;

use drive::RunOptions;
use rankmesh_drill::scenario::{Scenario, catalog};
use rankmesh_drill::{report, results};
use rankmesh_launcher as launcher;
use rankmesh_loadgen as loadgen;
use report::DrillReport;

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
        compose::run(&scenario, opts, &logs, inputs).await
    } else {
        local::run(&scenario, opts, &state_dir, &logs, &catalog, inputs).await
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
