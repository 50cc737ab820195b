//! The GPU path on a machine without a GPU: which execution provider a replica
//! runs on, whether it fell back, and a replica that must have CUDA refusing to
//! start without it. Real service processes on loopback, real ONNX Runtime.
//!
//! The default build's binaries are tested always. The `cuda`-feature build's are
//! tested under this crate's `cuda-build` feature, which `scripts/test` turns on
//! after building them into the folder `RANKMESH_CUDA_BINARIES` names; run there,
//! a missing folder fails the test rather than skipping it. They are given the CPU
//! wheel's ONNX Runtime, which has no CUDA provider: the "provider library
//! missing" case, on any machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rankmesh_tests::catalog::models_dir;
use rankmesh_tests::process::binary;
use rankmesh_tests::{eventually, free_port, http_get};

/// How long a replica may take to answer ready, or to refuse to start.
const START: Duration = Duration::from_secs(60);

/// A service process with its admin port and its log file.
struct Replica {
    child: Child,
    admin: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/ready`'s JSON once it answers 200; panics with the log if the process
    /// exits, or after [`START`].
    async fn ready(&mut self) -> serde_json::Value {
        let admin = self.admin.clone();
        let body = eventually(START, "/ready to answer 200", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited with {status} before ready:\n{}", self.log());
            }
            let admin = admin.clone();
            async move {
                match http_get(&admin, "/ready").await {
                    Ok((200, body)) => Some(body),
                    _ => None,
                }
            }
        })
        .await;
        serde_json::from_str(&body).expect("/ready is JSON")
    }
}

/// Starts `bin` in plaintext on free loopback ports with no etcd, `env` added.
fn start(bin: &Path, env: &[(&str, &str)]) -> Replica {
    let dir = tempfile::tempdir().expect("working dir");
    let log = dir.path().join("service.log");
    let admin = format!("127.0.0.1:{}", free_port());
    let child = Command::new(bin)
        .current_dir(dir.path())
        .env("RANKMESH__SERVER__TLS__INSECURE", "true")
        .env(
            "RANKMESH__SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("RANKMESH__SERVER__ADMIN_LISTEN", &admin)
        .env("RANKMESH__ETCD__ENDPOINTS", "")
        .env("RANKMESH__TELEMETRY__LOG_FILTER", "info")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log file"))
        .stderr(
            std::fs::File::options()
                .append(true)
                .open(&log)
                .expect("log file"),
        )
        .spawn()
        .expect("spawn the service");
    Replica {
        child,
        admin,
        log,
        _dir: dir,
    }
}

/// A model replica on `device`: ranking with the shipped ranker, embedding with
/// the encoder, each from its folder.
fn replica(bin: &Path, device: &str, extra: &[(&str, &str)]) -> Replica {
    let ranking = bin.ends_with("rankmesh-ranking");
    let (key, model) = if ranking {
        ("RANKMESH__RANKER__DIR", models_dir().join("ranker"))
    } else {
        ("RANKMESH__MODEL__DIR", models_dir().join("encoder"))
    };
    let model = model.to_str().expect("utf-8 path");
    let mut env = vec![(key, model), ("RANKMESH__ONNX__DEVICE", device)];
    env.extend_from_slice(extra);
    start(bin, &env)
}

/// Waits for a process that should refuse to start; its exit code and log.
async fn refused(mut replica: Replica) -> (Option<i32>, String) {
    let admin = replica.admin.clone();
    let code = eventually(START, "the replica to exit", || {
        let exited = replica.child.try_wait().ok().flatten().map(|s| s.code());
        let log = replica.log();
        let admin = admin.clone();
        async move {
            if exited.is_none() && http_get(&admin, "/live").await.is_ok() {
                panic!("it started and serves:\n{log}");
            }
            exited
        }
    })
    .await;
    (code, replica.log())
}

/// The shipped ranker as `/ready` reports it.
fn served_ranker(ready: &serde_json::Value) -> &serde_json::Value {
    &ready["models"]["ranker"]
}

/// A CPU build is a CPU replica: on `auto` it serves on CPU and reports no
/// fallback (nothing fell back); told to require CUDA it refuses to start, saying
/// why, rather than serve at CPU speed.
#[tokio::test]
async fn a_cpu_build_serves_on_cpu_and_refuses_to_require_cuda() {
    let mut auto = replica(&binary("rankmesh-ranking"), "auto", &[]);
    let ready = auto.ready().await;
    let ranker = served_ranker(&ready);
    assert_eq!(ranker["provider"], "cpu", "{ready}");
    assert_eq!(ranker["variant"], "fp32", "{ready}");
    assert!(ranker.get("gpu_fallback").is_none(), "{ready}");
    let (_, metrics) = http_get(&auto.admin, "/metrics").await.expect("/metrics");
    assert!(
        metrics.contains(r#"rankmesh_model_provider{model="ranker",provider="cpu"} 1"#)
            && metrics.contains(r#"rankmesh_model_provider{model="ranker",provider="cuda"} 0"#),
        "{metrics}"
    );
    drop(auto);

    for bin in ["rankmesh-ranking", "rankmesh-embedding"] {
        let (code, log) = refused(replica(&binary(bin), "cuda", &[])).await;
        assert_eq!(code, Some(1), "{bin}: {log}");
        assert!(
            log.contains("CUDA was required") && log.contains("built without the `cuda` feature"),
            "{bin}: {log}"
        );
    }
}

/// The CUDA build given an ONNX Runtime without the CUDA provider (the CPU wheel's):
/// on `auto` it logs the fallback once (with 2 sessions, and a warm-up), serves on
/// CPU and reports why in `/ready`; on `cuda` it refuses to start with the reason.
#[cfg(feature = "cuda-build")]
#[tokio::test]
async fn a_cuda_build_without_the_cuda_provider_falls_back_once_and_says_so() {
    let dir = PathBuf::from(
        std::env::var_os("RANKMESH_CUDA_BINARIES")
            .expect("RANKMESH_CUDA_BINARIES: the folder of the cuda-feature binaries"),
    );
    let cpu_library = cpu_onnxruntime();
    let library = cpu_library.to_str().expect("utf-8 path");
    let env = [
        ("RANKMESH__ONNX__LIBRARY", library),
        ("RANKMESH__ONNX__SESSIONS", "2"),
    ];

    let mut auto = replica(&dir.join("rankmesh-ranking"), "auto", &env);
    let ready = auto.ready().await;
    let ranker = served_ranker(&ready);
    assert_eq!(ranker["provider"], "cpu", "{ready}");
    let why = ranker["gpu_fallback"].as_str().unwrap_or_default();
    assert!(why.contains("no CUDA execution provider"), "{ready}");
    let log = auto.log();
    assert_eq!(
        log.matches("CUDA cannot be used").count(),
        1,
        "the fallback is logged once:\n{log}"
    );
    assert!(log.contains("WARN"), "{log}");
    drop(auto);

    for bin in ["rankmesh-ranking", "rankmesh-embedding"] {
        let (code, log) = refused(replica(&dir.join(bin), "cuda", &env)).await;
        assert_eq!(code, Some(1), "{bin}: {log}");
        assert!(
            log.contains("CUDA was required") && log.contains("no CUDA execution provider"),
            "{bin}: {log}"
        );
    }
}

/// `libonnxruntime.so` of the CPU wheel in the setup's venv.
#[cfg(feature = "cuda-build")]
fn cpu_onnxruntime() -> PathBuf {
    let venv =
        PathBuf::from(std::env::var_os("RANKMESH_VENV").expect("RANKMESH_VENV (.rankmesh/env)"));
    let lib = venv.join("lib");
    for python in std::fs::read_dir(&lib).expect("venv lib").flatten() {
        let capi = python.path().join("site-packages/onnxruntime/capi");
        if let Ok(files) = std::fs::read_dir(&capi) {
            for f in files.flatten() {
                let name = f.file_name();
                if name.to_string_lossy().starts_with("libonnxruntime.so") {
                    return f.path();
                }
            }
        }
    }
    panic!("no CPU libonnxruntime.so under {}", lib.display());
}
