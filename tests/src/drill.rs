//! Running a drill in this process through `rankmesh-drill` (the engine meshctl's
//! `drill run` calls), on a free block of ports, and reading its report back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::process::binary;

/// The client a drill's load goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The SDK as shipped: hedging and retries.
    Shipped,
    /// The SDK without hedging or retries.
    Weakened,
}

/// One finished drill.
#[derive(Debug)]
pub struct DrillRun {
    /// Whether the SLO held (what `meshctl drill run` exits 0 on).
    pub ok: bool,
    pub report: serde_json::Value,
    /// `<report dir>/<scenario>`: report.json, report.html, logs/.
    pub dir: PathBuf,
}

impl DrillRun {
    /// The checks that failed, as "what measured (target ...)".
    pub fn failed_checks(&self) -> Vec<String> {
        self.report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .filter(|c| c["pass"] == false)
            .map(|c| format!("{} {} (target {})", c["what"], c["measured"], c["target"]))
            .collect()
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_owned()
}

/// The demo store the drills run on (`meshctl catalog generate`, as `meshctl drill
/// run` makes it), made once per test binary.
fn demo_store() -> &'static Path {
    static DEMO: OnceLock<PathBuf> = OnceLock::new();
    DEMO.get_or_init(|| {
        let dir = tempfile::tempdir().expect("demo dir").keep();
        let status = Command::new(binary("meshctl"))
            .args(["catalog", "generate", "--items", "2000", "--users", "200"])
            .args(["--seed", "7", "--out"])
            .arg(&dir)
            .status()
            .expect("run meshctl catalog generate");
        assert!(status.success(), "meshctl catalog generate failed");
        dir
    })
}

/// Runs `deploy/drills/<scenario>.toml` through `client`: etcd on the first port of
/// a free block, services (or the compose stack's published ports) from the third.
pub fn run(scenario: &str, client: Client) -> DrillRun {
    run_in(
        &tempfile::tempdir().expect("report dir").keep(),
        scenario,
        client,
    )
}

/// [`run`] with its report (and, while it runs, its mesh's state) in
/// `<reports>/<scenario>/`.
pub fn run_in(reports: &Path, scenario: &str, client: Client) -> DrillRun {
    let repo = repo();
    let base = crate::free_port_block(16);
    let models = crate::catalog::models_dir();
    let venv = std::env::var_os("RANKMESH_VENV").map_or(repo.join(".venv"), PathBuf::from);
    let demo = demo_store();
    let opts = rankmesh_drill::RunOptions {
        report_dir: reports.to_owned(),
        no_hedge: client == Client::Weakened,
        no_retry: client == Client::Weakened,
        etcd_port: base,
        base_port: base + 2,
        bin_dir: binary("meshctl").parent().expect("bin dir").to_owned(),
        quantizer: rankmesh_provision::quantizer(&models),
        models,
        python: venv.join("bin/python"),
        bad_ranker: repo.join("scripts/bad_ranker.py"),
        demo_catalog: demo.join("catalog.jsonl"),
        demo_queries: demo.join("queries.txt"),
        compose_dir: repo.join("deploy/compose"),
    };
    let path = repo.join(format!("deploy/drills/{scenario}.toml"));
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let report = runtime
        .block_on(rankmesh_drill::run(&path, &opts))
        .unwrap_or_else(|e| panic!("drill {scenario} could not run: {e:#}"));
    let dir = reports.join(scenario);
    let json = std::fs::read(dir.join("report.json")).expect("report.json written");
    let report_json: serde_json::Value = serde_json::from_slice(&json).expect("report JSON");
    assert_eq!(
        report_json["pass"], report.pass,
        "report.json is the report"
    );
    DrillRun {
        ok: report.pass,
        report: report_json,
        dir,
    }
}
