//! `meshctl drill`: the command line of `rankmesh-drill`. `drill run SCENARIO.toml`
//! starts the topology a scenario names (local processes, or the compose stack),
//! offers its open-loop load through the SDK (as a storefront would), injects its
//! faults on schedule, then judges the SLO and writes a JSON report and a
//! self-contained HTML page; a drill whose SLO is missed exits non-zero. `drill
//! list` shows the catalog in `deploy/drills/`; `drill table` renders the record.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use rankmesh_drill::RunOptions;
use rankmesh_drill::results;
use rankmesh_drill::scenario::catalog;

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
    Run(RunArgs),
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

#[derive(Debug, clap::Args)]
struct RunArgs {
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
}

pub(crate) async fn command(a: DrillArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        DrillCommand::List { dir } => list(&dir).map(|()| ExitCode::SUCCESS),
        DrillCommand::Table { record, readme } => {
            table(&record, readme.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        DrillCommand::Run(run) => run_all(run).await,
    }
}

/// Prints the recorded table, or rewrites it in `readme` between its markers.
fn table(record: &Path, readme: Option<&Path>) -> anyhow::Result<()> {
    let table = results::table(&results::load(record)?);
    match readme {
        None => print!("{table}"),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            std::fs::write(path, results::replace_block(&text, &table)?)
                .with_context(|| format!("write {}", path.display()))?;
            eprintln!("rewrote the drill table in {}", path.display());
        }
    }
    Ok(())
}

/// Runs every scenario named (one that cannot run does not stop the others),
/// records them if asked; fails when any SLO was missed.
async fn run_all(a: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.record.is_none() || !(a.no_hedge || a.no_retry),
        "--record keeps what the SDK as shipped measures; not a weakened client's run"
    );
    let mut paths = a.scenarios.clone();
    if a.all {
        paths.extend(catalog(&a.dir)?.into_iter().map(|(p, _)| p));
    }
    anyhow::ensure!(!paths.is_empty(), "name a scenario file, or --all");
    let opts = run_options(&a)?;
    let mut failed = Vec::new();
    let mut reports = Vec::new();
    for p in &paths {
        match rankmesh_drill::run(p, &opts).await {
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
    if let Some(path) = &a.record {
        results::record(path, &reports, &results::today())?;
        eprintln!(
            "recorded {} run(s) in {}; `meshctl drill table --readme README.md` renders them",
            reports.len(),
            path.display()
        );
    }
    if failed.is_empty() {
        println!("{} drill(s) passed", paths.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("SLO missed: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

/// The engine's options from the command line, paths made absolute, and the demo
/// store written: the one scripts/images bakes into the compose stack's
/// bootstrap, which scenarios run on unless they name their own.
fn run_options(a: &RunArgs) -> anyhow::Result<RunOptions> {
    let cwd = std::env::current_dir()?;
    let report_dir = cwd.join(&a.report);
    let demo = report_dir.join("demo");
    crate::generate::generate(2_000, 200, 7, &demo)?;
    let python = crate::args::PythonTool::new(None, cwd.join("scripts/bad_ranker.py"));
    Ok(RunOptions {
        report_dir,
        no_hedge: a.no_hedge,
        no_retry: a.no_retry,
        etcd_port: a.etcd_port,
        base_port: a.base_port,
        bin_dir: rankmesh_launcher::own_bin_dir()?,
        quantizer: crate::mesh::quantizer(&a.models),
        models: cwd.join(&a.models),
        python: cwd.join(python.python),
        bad_ranker: python.script,
        demo_catalog: demo.join("catalog.jsonl"),
        demo_queries: demo.join("queries.txt"),
        compose_dir: cwd.join(&a.compose_dir),
    })
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
