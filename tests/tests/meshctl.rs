//! `meshctl up --detach` brings every service (and the trace collector) up healthy
//! and registered, every gRPC hop mutual TLS with certificates from the mesh's own
//! CA (keys 0600); meshctl calls it as the mesh's operator, a plaintext caller gets
//! no answer; `meshctl down` stops every process it started.

use std::process::Command;
use std::time::Duration;

use rankmesh_tests::process::binary;

/// meshctl as an operator of the mesh in `state_dir` runs it (`RANKMESH_STATE_DIR`
/// says which mesh, and so which TLS identity).
fn meshctl_in(state_dir: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary("meshctl"))
        .args(args)
        .env("RANKMESH_STATE_DIR", state_dir)
        .env_remove("RANKMESH_TLS_CA")
        .output()
        .expect("run meshctl")
}

fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn up_detach_then_down_leaves_nothing_behind() {
    let state = tempfile::tempdir().expect("state dir");
    let state_dir = state.path().to_str().expect("utf-8 path");
    let meshctl = |args: &[&str]| meshctl_in(state_dir, args);
    let base = rankmesh_tests::free_port_block(16);
    let etcd_port = base.to_string();
    let svc_port = (base + 2).to_string();
    let (otlp_port, ui_port) = ((base + 14).to_string(), (base + 15).to_string());
    let up = meshctl(&[
        "up",
        "--detach",
        "--state-dir",
        state_dir,
        "--etcd-port",
        &etcd_port,
        "--base-port",
        &svc_port,
        "--ranking-replicas",
        "2",
        "--otlp-port",
        &otlp_port,
        "--trace-ui-port",
        &ui_port,
    ]);
    assert!(
        up.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );

    let mesh: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.path().join("mesh.json")).expect("mesh.json"))
            .expect("json");
    let procs = mesh["processes"].as_array().expect("processes");
    let mut names: Vec<&str> = procs
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "collector",
            "embedding-0",
            "etcd",
            "feature-0",
            "ranking-0",
            "ranking-1",
            "registry-0"
        ]
    );
    let pids: Vec<u64> = procs
        .iter()
        .map(|p| p["pid"].as_u64().expect("pid"))
        .collect();

    // Every service is registered in etcd, and one ranking replica leads.
    let etcd = format!("http://127.0.0.1:{etcd_port}");
    let eps = meshctl(&["endpoints", "--json", "--etcd", &etcd]);
    assert!(eps.status.success());
    let eps: serde_json::Value = serde_json::from_slice(&eps.stdout).expect("json");
    let mut services: Vec<&str> = eps
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["service"].as_str().expect("service"))
        .collect();
    services.sort_unstable();
    assert_eq!(
        services,
        ["embedding", "feature", "ranking", "ranking", "registry"]
    );
    let leader =
        rankmesh_tests::eventually(Duration::from_secs(10), "a rollout leader", || async {
            let out = meshctl(&["leader", "rollout", "--etcd", &etcd]);
            let who = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            who.starts_with("ranking-").then_some(who)
        })
        .await;
    assert!(leader == "ranking-0" || leader == "ranking-1");

    // The embedding service answers through discovery.
    let out = meshctl(&["embed", "red running shoes", "--json", "--etcd", &etcd]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["dim"], 384);
    assert_eq!(v["vector"].as_array().map(Vec::len), Some(384));

    // A catalog streams into the feature service; bad rows would be listed.
    let catalog = rankmesh_tests::catalog::demo_catalog();
    let out = meshctl(&[
        "catalog",
        "import",
        catalog.to_str().expect("utf-8"),
        "--etcd",
        &etcd,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 20 items, rejected 0 rows"));

    // Every hop is mutual TLS: a caller without the mesh's identity gets no answer,
    // and every key is readable by its owner only.
    let feature = procs
        .iter()
        .find(|p| p["service"] == "feature")
        .and_then(|p| p["grpc"].as_str())
        .expect("feature address");
    assert!(
        !rankmesh_tests::process::feature_answers_plaintext(feature).await,
        "a plaintext call was answered"
    );
    let out = Command::new(binary("meshctl"))
        .args(["embed", "shoes", "--etcd", &etcd])
        .env("RANKMESH_STATE_DIR", "/nonexistent")
        .output()
        .expect("run meshctl");
    assert!(
        !out.status.success(),
        "meshctl without an identity was answered"
    );
    let keys: Vec<std::path::PathBuf> = std::fs::read_dir(state.path().join("tls"))
        .expect("tls dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    assert!(
        keys.len() >= 6,
        "a key per instance and the operator's: {keys:?}"
    );
    for k in keys.iter().chain([&state.path().join("tls/ca/ca.key")]) {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(k).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", k.display());
    }

    // A second `up` on the same state dir refuses instead of doubling the mesh.
    let again = meshctl(&[
        "up",
        "--detach",
        "--state-dir",
        state_dir,
        "--etcd-port",
        &etcd_port,
    ]);
    assert!(!again.status.success());

    let down = meshctl(&["down", "--state-dir", state_dir]);
    assert!(down.status.success());
    rankmesh_tests::eventually(Duration::from_secs(15), "every mesh process gone", || {
        let pids = pids.clone();
        async move { pids.iter().all(|p| !alive(*p)).then_some(()) }
    })
    .await;
}
