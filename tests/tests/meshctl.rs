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

    // etcd is mutual TLS too: callers without a certificate of the mesh CA are
    // refused, the operator's is answered.
    let etcd = format!("https://127.0.0.1:{etcd_port}");
    etcd_refuses_callers_without_a_mesh_certificate(&etcd, state.path()).await;

    // Every service is registered in etcd, and one ranking replica leads.
    assert_eq!(mesh["etcd"], etcd.as_str());
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
    // Each model replica says, from its /ready, what it serves and on which provider.
    for e in eps.as_array().expect("array") {
        match e["service"].as_str() {
            Some("embedding") => assert_eq!(e["models"]["encoder"]["provider"], "cpu", "{e}"),
            Some("ranking") => assert_eq!(e["models"]["ranker"]["provider"], "cpu", "{e}"),
            _ => assert_eq!(e["models"], serde_json::json!({}), "{e}"),
        }
    }
    let leader =
        rankmesh_tests::eventually(Duration::from_secs(10), "a rollout leader", || async {
            let out = meshctl(&["leader", "rollout", "--etcd", &etcd]);
            let who = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            who.starts_with("ranking-").then_some(who)
        })
        .await;
    assert!(leader == "ranking-0" || leader == "ranking-1");

    // The embedding service answers through discovery.
    // meshctl finds the local mesh's etcd (and calls it with its identity).
    let out = meshctl(&["embed", "red running shoes", "--json"]);
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

/// Whether a plain etcd client with `options` gets a status answer within 3 s.
async fn etcd_answers(url: &str, options: Option<etcd_client::ConnectOptions>) -> bool {
    let call = async {
        let mut c = etcd_client::Client::connect([url], options).await.ok()?;
        c.status().await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), call).await,
        Ok(Some(_))
    )
}

/// etcd (`--client-cert-auth`) answers the operator's certificate and refuses a
/// plaintext client, a TLS client without a certificate, and one whose
/// certificate comes from another CA.
async fn etcd_refuses_callers_without_a_mesh_certificate(etcd: &str, state: &std::path::Path) {
    use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
    let tls = state.join("tls");
    let read = |p: std::path::PathBuf| std::fs::read(&p).expect("tls file");
    let ca = Certificate::from_pem(read(tls.join("ca.pem")));
    let with = |identity: Option<Identity>| {
        let mut t = TlsOptions::new()
            .ca_certificate(ca.clone())
            .domain_name("etcd.rankmesh");
        if let Some(id) = identity {
            t = t.identity(id);
        }
        Some(ConnectOptions::new().with_tls(t))
    };
    let operator = Identity::from_pem(
        read(tls.join("admin-meshctl.pem")),
        read(tls.join("admin-meshctl.key")),
    );
    assert!(
        etcd_answers(etcd, with(Some(operator))).await,
        "the operator's certificate is answered"
    );
    let plain = etcd.replace("https://", "http://");
    assert!(
        !etcd_answers(&plain, None).await,
        "a plaintext client was answered"
    );
    assert!(
        !etcd_answers(etcd, with(None)).await,
        "a client without a certificate was answered"
    );
    let foreign_dir = tempfile::tempdir().expect("foreign CA");
    let foreign = rankmesh_tls::Ca::init(&foreign_dir.path().join("ca")).expect("foreign CA");
    let id = rankmesh_tls::Identity::new("admin", "intruder").expect("identity");
    let files = foreign
        .issue_to(
            &id,
            rankmesh_tls::Validity::from_now(Duration::from_secs(3600)),
            &[],
            foreign_dir.path(),
        )
        .expect("issue");
    let intruder = Identity::from_pem(read(files.cert), read(files.key));
    assert!(
        !etcd_answers(etcd, with(Some(intruder))).await,
        "a certificate of another CA was answered"
    );
}

/// `meshctl ... | head`: when the reader has gone, meshctl ends at its next
/// write, quietly (SIGPIPE, as Unix tools do), instead of panicking with a
/// backtrace. The pipe's read end is closed before meshctl starts, so its first
/// write meets it.
#[test]
fn a_closed_pipe_ends_meshctl_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(binary("meshctl"))
        .arg("dev-secrets")
        .stdout(writer)
        .output()
        .expect("run meshctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert_eq!(
        out.status.signal(),
        Some(13),
        "ended by SIGPIPE: {:?} {err}",
        out.status
    );
}
