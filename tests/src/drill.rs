//! Running `meshctl drill run` as an operator does (from the repository root, on a
//! free block of ports) and reading its report back.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::binary;

/// One finished drill.
#[derive(Debug)]
pub struct DrillRun {
    /// Whether meshctl exited 0 (the SLO held).
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

/// Runs `deploy/drills/<scenario>.toml` with `extra` flags: etcd on the first port of
/// a free block, services (or the compose stack's published ports) from the third.
pub fn run(scenario: &str, extra: &[&str]) -> DrillRun {
    let reports = tempfile::tempdir().expect("report dir").keep();
    let base = crate::free_port_block(16);
    let out = Command::new(binary("meshctl"))
        .current_dir(repo())
        .args(["drill", "run"])
        .arg(format!("deploy/drills/{scenario}.toml"))
        .arg("--report")
        .arg(&reports)
        .args(["--etcd-port", &base.to_string()])
        .args(["--base-port", &(base + 2).to_string()])
        .args(extra)
        .output()
        .expect("run meshctl drill");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let dir = reports.join(scenario);
    let json = std::fs::read(dir.join("report.json")).unwrap_or_else(|e| {
        panic!(
            "no report for {scenario} ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    DrillRun {
        ok: out.status.success(),
        report: serde_json::from_slice(&json).expect("report JSON"),
        dir,
    }
}
