//! Failover seen from a storefront: `meshctl bench` (the SDK: discovery, balancing,
//! retries within budget, hedging) drives open-loop Search load at three ranking
//! replicas, and one of them is killed with SIGKILL mid-run. At most 0.1% of
//! requests may fail.

use std::process::Command;
use std::time::Duration;

use rankmesh_tests::catalog::{demo_catalog, models_dir};
use rankmesh_tests::process::binary;

struct Mesh {
    state: tempfile::TempDir,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = Command::new(binary("meshctl"))
            .args(["down", "--state-dir"])
            .arg(self.state.path())
            .output();
    }
}

#[tokio::test]
async fn killing_a_ranking_replica_under_load_fails_almost_nothing() {
    let state = tempfile::tempdir().expect("state dir");
    let base = rankmesh_tests::free_port_block(16);
    let out = Command::new(binary("meshctl"))
        .args(["up", "--detach", "--ranking-replicas", "3", "--state-dir"])
        .arg(state.path())
        .args(["--etcd-port", &base.to_string()])
        .args(["--base-port", &(base + 2).to_string()])
        .arg("--models")
        .arg(models_dir())
        .arg("--catalog")
        .arg(demo_catalog())
        .output()
        .expect("run meshctl up");
    assert!(
        out.status.success(),
        "meshctl up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mesh = Mesh { state };
    let queries = mesh.state.path().join("queries.txt");
    std::fs::write(
        &queries,
        "wireless headphones\nrunning shoes\ncoffee grinder\nyoga mat\nnoise cancelling headphones\n",
    )
    .expect("queries");

    let bench = Command::new(binary("meshctl"))
        .args([
            "bench",
            "--rpc",
            "search",
            "--qps",
            "30",
            "--duration",
            "12",
        ])
        .args(["--timeout-ms", "3000", "--json", "--etcd"])
        .arg(format!("http://127.0.0.1:{base}"))
        .arg("--queries")
        .arg(&queries)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start meshctl bench");

    tokio::time::sleep(Duration::from_secs(4)).await;
    let bytes = std::fs::read(mesh.state.path().join("mesh.json")).expect("mesh.json");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    let victim = v["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["name"] == "ranking-1")
        .expect("ranking-1")["pid"]
        .as_u64()
        .expect("pid");
    let killed = Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());

    let out = bench.wait_with_output().expect("bench finishes");
    assert!(out.status.success(), "meshctl bench failed");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    let sent = r["sent"].as_u64().expect("sent");
    let failed = r["failed"].as_u64().expect("failed");
    eprintln!("{r}");
    assert!(sent >= 300, "the load ran: {sent} sent");
    assert!(
        failed as f64 <= 0.001 * sent as f64,
        "{failed} of {sent} searches failed when one replica of three was killed: {}",
        r["errors"]
    );
}
