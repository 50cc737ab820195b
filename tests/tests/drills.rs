//! Disaster-recovery drills, run as an operator runs them (`meshctl drill run`, from
//! the repository root): the replica-hang scenario passes its SLO with the SDK as
//! shipped, and the same scenario with hedging and retries turned off misses it and
//! exits non-zero; a broken canary drill passes with no answer from the canary. Each
//! writes its JSON and HTML report.

use std::path::{Path, PathBuf};
use std::process::Command;

use rankmesh_tests::process::binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_owned()
}

/// Runs one drill on a free block of ports; returns (exit success, report JSON).
fn drill(scenario: &str, extra: &[&str]) -> (bool, serde_json::Value, PathBuf) {
    let reports = tempfile::tempdir().expect("report dir").keep();
    let base = rankmesh_tests::free_port_block(16);
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    let dir = reports.join(scenario);
    let json = std::fs::read(dir.join("report.json")).unwrap_or_else(|e| {
        panic!(
            "no report for {scenario} ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let report = serde_json::from_slice(&json).expect("report JSON");
    (out.status.success(), report, dir)
}

fn failed_checks(report: &serde_json::Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["pass"] == false)
        .map(|c| format!("{} {} (target {})", c["what"], c["measured"], c["target"]))
        .collect()
}

#[test]
fn drills_pass_and_a_weakened_client_fails_one() {
    let (ok, report, dir) = drill("replica-hang", &[]);
    assert!(ok && report["pass"] == true, "{:?}", failed_checks(&report));
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(html.contains("<svg") && html.contains("replica-hang") && html.contains("PASS"));
    assert_eq!(report["faults"][0]["kind"], "stop");

    // The same fault, the SDK without hedging and retries: the SLO is missed and the
    // drill says so with its exit code.
    let (ok, weak, _) = drill("replica-hang", &["--no-hedge", "--no-retry"]);
    assert!(!ok, "a weakened client must fail the drill");
    assert_eq!(weak["pass"], false);
    assert!(
        failed_checks(&weak)
            .iter()
            .any(|c| c.contains("availability")),
        "{:?}",
        failed_checks(&weak)
    );
    assert!(weak["requests_lost"].as_u64().unwrap_or(0) > 0);

    // A broken canary never answers. (One test: drills measure latency, so they
    // must not run side by side.)
    let (ok, report, _) = drill("bad-canary", &[]);
    assert!(ok, "{:?}", failed_checks(&report));
    assert_eq!(report["wrong_version_answers"], 0);
    assert!(
        report["faults"][0]["forbidden_model"]
            .as_str()
            .is_some_and(|m| m.starts_with("ranker:")),
        "{}",
        report["faults"][0]
    );
}
