//! Secrets stay secret (issue 19, item 5): a whole local mesh is brought up,
//! searched, published to, rotated and refused a bad write, and a drill runs on
//! its own mesh; then every log, the trace export, every /metrics page, every
//! error message, every `ps` line and every `/proc/PID/environ` of the mesh's
//! processes, and the drill's report and logs, are searched for each secret (the
//! admin token, the master key, the signing seed, every TLS private key): no hit.
//! The search itself is shown to find a secret where one is (the secrets file).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rankmesh_tests::drill::{self, Client};
use rankmesh_tests::mesh::LocalMesh;
use rankmesh_tests::process::binary;

/// Each secret with what it is, for the failure message.
struct Secrets(Vec<(String, String)>);

impl Secrets {
    /// The registry secrets of the mesh in `state`, and the body lines of every
    /// TLS private key under it.
    fn of(state: &Path) -> Self {
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(state.join("registry-secrets.json")).expect("registry secrets"),
        )
        .expect("secrets JSON");
        let mut all: Vec<(String, String)> = ["admin_token", "master_key", "signing_key"]
            .iter()
            .map(|k| {
                let v = json[k].as_str().expect("secret").to_owned();
                assert!(v.len() >= 32, "{k} is a real secret");
                ((*k).to_owned(), v)
            })
            .collect();
        for path in files_under(&state.join("tls")) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains("PRIVATE KEY") {
                // Each base64 line of the key's body: any one of them in a log
                // means the key leaked.
                all.extend(
                    text.lines()
                        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
                        .map(|l| (path.display().to_string(), l.to_owned())),
                );
            }
        }
        Self(all)
    }

    /// The secrets `text` (from `source`) contains, as "what in where".
    fn hits(&self, source: &str, text: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, v)| text.contains(v.as_str()))
            .map(|(what, _)| format!("{what} in {source}"))
            .collect()
    }
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Runs meshctl against the mesh as its operator; returns stdout and stderr
/// together (error messages included), whether or not it succeeded.
fn meshctl(state: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary("meshctl"))
        .args(args)
        .env("RANKMESH_STATE_DIR", state)
        .env_remove("RANKMESH_ADMIN_TOKEN")
        .output()
        .expect("run meshctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn no_secret_reaches_a_log_a_trace_a_metric_an_error_ps_or_environ() {
    let mesh = LocalMesh::up(1, &[]);
    let state = mesh.state.path().to_owned();
    let secrets = Secrets::of(&state);
    let etcd = mesh.etcd.clone();
    let st = state.to_str().expect("utf-8 path").to_owned();
    let mut seen = String::new();

    // Use it: searches, a publish, a rotation, and refused writes.
    for q in ["wireless headphones", "running shoes", "yoga mat"] {
        let (ok, out) = meshctl(&state, &["search", q, "--etcd", &etcd]);
        assert!(ok, "search {q}: {out}");
        seen.push_str(&out);
    }
    let ranker = rankmesh_tests::catalog::models_dir().join("ranker/model.onnx");
    let ranker = ranker.to_str().expect("utf-8 path");
    let model = |args: &[&str]| {
        let mut all = vec!["model", "--etcd", &etcd, "--state-dir", &st];
        all.extend_from_slice(args);
        meshctl(&state, &all)
    };
    let (ok, out) = model(&["publish", "ranker", ranker]);
    assert!(ok, "publish: {out}");
    seen.push_str(&out);
    let (ok, out) = model(&["rotate-key", "local1"]);
    assert!(ok, "rotate-key: {out}");
    seen.push_str(&out);
    let (ok, out) = model(&["--token", "not-the-token", "rotate-key", "local1"]);
    assert!(!ok, "a wrong token is refused: {out}");
    seen.push_str(&out);
    let (ok, out) = model(&["rotate-key", "no-such-key"]);
    assert!(!ok, "an unknown key is refused: {out}");
    seen.push_str(&out);

    // The traces of those calls reach the collector (batched export).
    let traces = rankmesh_tests::eventually(Duration::from_secs(20), "traces exported", || {
        let ui = mesh.trace_ui.clone();
        async move {
            let (code, body) = rankmesh_tests::http_get(&ui, "/api/traces?limit=2000")
                .await
                .ok()?;
            (code == 200 && body.contains("Search")).then_some(body)
        }
    })
    .await;

    let mut hits = secrets.hits("meshctl output and errors", &seen);
    hits.extend(secrets.hits("the trace export", &traces));
    for path in files_under(&state.join("logs")) {
        let text = String::from_utf8_lossy(&std::fs::read(&path).expect("log")).into_owned();
        hits.extend(secrets.hits(&path.display().to_string(), &text));
    }
    let mut environs = 0;
    for p in mesh.processes() {
        let name = p["name"].as_str().expect("name").to_owned();
        let service = p["service"].as_str().unwrap_or_default();
        if ["ranking", "embedding", "feature", "registry"].contains(&service) {
            let admin = p["admin"].as_str().expect("admin address");
            let (code, body) = rankmesh_tests::http_get(admin, "/metrics")
                .await
                .expect("metrics");
            assert_eq!(code, 200, "{name} /metrics");
            hits.extend(secrets.hits(&format!("{name} /metrics"), &body));
        }
        let pid = p["pid"].as_u64().expect("pid").to_string();
        let ps = Command::new("ps")
            .args(["-ww", "-o", "args=", "-p", &pid])
            .output()
            .expect("ps");
        let line = String::from_utf8_lossy(&ps.stdout).into_owned();
        assert!(!line.trim().is_empty(), "{name} is running");
        hits.extend(secrets.hits(&format!("ps line of {name}"), &line));
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
        environs += usize::from(environ.contains("RANKMESH"));
        hits.extend(secrets.hits(&format!("/proc/{pid}/environ of {name}"), &environ));
    }
    assert!(environs >= 4, "the services' environments were read");

    // The search finds a secret where there is one.
    let file = std::fs::read_to_string(state.join("registry-secrets.json")).expect("secrets");
    assert_eq!(secrets.hits("the secrets file", &file).len(), 3);

    assert!(hits.is_empty(), "secrets leaked: {hits:#?}");
}

/// A drill on its own mesh: its secrets (read while it runs, before the drill
/// removes its state) appear nowhere in its report or its services' logs.
#[test]
fn a_drill_report_and_its_logs_hold_no_secret() {
    let reports = tempfile::tempdir().expect("reports");
    let dir = reports.path().to_owned();
    let drill = std::thread::spawn(move || drill::run_in(&dir, "replica-kill", Client::Shipped));
    let state = reports.path().join("replica-kill/state");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let secrets = loop {
        // mesh.json is written once every process started, so every
        // certificate has been issued by then.
        if state.join("mesh.json").exists()
            && let Ok(bytes) = std::fs::read(state.join("registry-secrets.json"))
            && serde_json::from_slice::<serde_json::Value>(&bytes).is_ok()
        {
            break Secrets::of(&state);
        }
        assert!(
            std::time::Instant::now() < deadline && !drill.is_finished(),
            "the drill's mesh never wrote its secrets"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        secrets.0.len() > 3,
        "the drill's mesh is on TLS: its private keys are among the secrets"
    );
    let run = drill.join().expect("drill thread");
    assert!(run.ok, "the drill passes: {:?}", run.failed_checks());
    let mut hits = Vec::new();
    let mut read = 0;
    for path in files_under(&run.dir) {
        let text = String::from_utf8_lossy(&std::fs::read(&path).expect("file")).into_owned();
        read += 1;
        hits.extend(secrets.hits(&path.display().to_string(), &text));
    }
    assert!(read >= 3, "report.json, report.html and logs were read");
    assert!(hits.is_empty(), "secrets leaked: {hits:#?}");
}
