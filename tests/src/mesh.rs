//! A local mesh started the way users start one: `meshctl up --detach` with the
//! demo catalog, in a temp state directory on a free block of loopback ports,
//! every hop (etcd included) on mutual TLS from the kit's CA ([`crate::tls`]), so
//! the test's own SDK clients and [`crate::tls::channel`] reach it, and meshctl
//! calls it as the mesh's operator. `meshctl down` stops it on drop.

use std::path::Path;
use std::process::Command;

use crate::catalog::{demo_catalog, models_dir};
use crate::process::binary;

#[derive(Debug)]
pub struct LocalMesh {
    pub state: tempfile::TempDir,
    /// etcd's client URL.
    pub etcd: String,
    /// The trace collector's UI and Jaeger API.
    pub trace_ui: String,
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        let _ = Command::new(binary("meshctl"))
            .args(["down", "--state-dir"])
            .arg(self.state.path())
            .output();
    }
}

impl LocalMesh {
    /// `meshctl up` with `ranking_replicas` and `extra` arguments; panics with the
    /// tail of every service log when it fails (the logs die with the temp dir).
    pub fn up(ranking_replicas: usize, extra: &[&str]) -> Self {
        Self::up_with_catalog(ranking_replicas, &demo_catalog(), extra)
    }

    /// [`LocalMesh::up`] with another catalog.
    pub fn up_with_catalog(ranking_replicas: usize, catalog: &Path, extra: &[&str]) -> Self {
        assert!(
            ranking_replicas <= 3,
            "the port block holds 3 ranking replicas"
        );
        let state = tempfile::tempdir().expect("state dir");
        crate::tls::kit().seed(state.path());
        let base = crate::free_port_block(16);
        let out = Command::new(binary("meshctl"))
            .args(["up", "--detach", "--ranking-replicas"])
            .arg(ranking_replicas.to_string())
            .arg("--state-dir")
            .arg(state.path())
            .args(["--etcd-port", &base.to_string()])
            .args(["--base-port", &(base + 2).to_string()])
            // Up to 3 ranking replicas and 3 other services take base+2..=base+13.
            .args(["--otlp-port", &(base + 14).to_string()])
            .args(["--trace-ui-port", &(base + 15).to_string()])
            .arg("--models")
            .arg(models_dir())
            .arg("--catalog")
            .arg(catalog)
            .args(extra)
            .output()
            .expect("run meshctl up");
        if !out.status.success() {
            panic!(
                "meshctl up: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                log_tails(&state.path().join("logs"))
            );
        }
        Self {
            state,
            etcd: format!("https://127.0.0.1:{base}"),
            trace_ui: format!("127.0.0.1:{}", base + 15),
        }
    }

    /// The processes in `mesh.json`.
    pub fn processes(&self) -> Vec<serde_json::Value> {
        let bytes = std::fs::read(self.state.path().join("mesh.json")).expect("mesh.json");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        v["processes"].as_array().expect("processes").clone()
    }

    /// gRPC URLs of every replica of `service`.
    pub fn grpc_all(&self, service: &str) -> Vec<String> {
        self.processes()
            .iter()
            .filter(|p| p["service"] == service)
            .map(|p| format!("http://{}", p["grpc"].as_str().expect("grpc")))
            .collect()
    }

    /// gRPC URL of the first replica of `service`.
    pub fn grpc(&self, service: &str) -> String {
        self.grpc_all(service)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{service} started"))
    }

    /// The pid of the process named `name`.
    pub fn pid(&self, name: &str) -> u64 {
        self.processes()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} in mesh.json"))["pid"]
            .as_u64()
            .expect("pid")
    }

    /// Resident memory of the process named `name`, in KiB.
    pub fn rss_kib(&self, name: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(name)))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Runs `meshctl ARGS` as this mesh's operator and returns its stdout;
    /// panics with stderr when it fails.
    pub fn meshctl(&self, args: &[&str]) -> String {
        crate::process::stdout_of(self.meshctl_command(), args)
    }

    /// meshctl as this mesh's operator (its identity, and its etcd by default).
    pub fn meshctl_command(&self) -> Command {
        let mut cmd = Command::new(binary("meshctl"));
        cmd.env("RANKMESH_STATE_DIR", self.state.path())
            .env_remove("RANKMESH_TLS_CA")
            .env_remove("RANKMESH_ETCD");
        cmd
    }

    /// Starts `meshctl bench` at the mesh (through etcd discovery) with `args`;
    /// [`bench_report`] waits for its JSON report.
    pub fn bench(&self, args: &[&str]) -> std::process::Child {
        self.meshctl_command()
            .arg("bench")
            .args(args)
            .args(["--json", "--etcd", &self.etcd])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start meshctl bench")
    }

    /// Sends `signal` (e.g. "-KILL", "-STOP") to the process named `name`.
    pub fn signal(&self, name: &str, signal: &str) {
        let pid = self.pid(name);
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {signal} {name}");
    }

    /// SIGKILLs every process of `service`.
    pub fn kill(&self, service: &str) {
        for p in self.processes().iter().filter(|p| p["service"] == service) {
            let pid = p["pid"].as_u64().expect("pid").to_string();
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    }
}

/// A few queries the demo catalog answers, one per line.
const QUERIES: &str =
    "wireless headphones\nrunning shoes\ncoffee grinder\nyoga mat\nnoise cancelling headphones\n";

impl LocalMesh {
    /// Writes a query log into the state dir and returns its path.
    pub fn queries_file(&self) -> String {
        let path = self.state.path().join("queries.txt");
        std::fs::write(&path, QUERIES).expect("queries");
        path.display().to_string()
    }
}

/// `meshctl bench` arguments: Search at `qps` for `seconds`, 3 s deadline.
pub fn search_load<'a>(queries: &'a str, qps: &'a str, seconds: &'a str) -> Vec<&'a str> {
    vec![
        "--rpc",
        "search",
        "--qps",
        qps,
        "--duration",
        seconds,
        "--timeout-ms",
        "3000",
        "--queries",
        queries,
    ]
}

/// A number at `path` in a bench report; panics naming the path when absent.
pub fn number(r: &serde_json::Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(r, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} in {r}"))
}

/// Waits for a `meshctl bench` started by [`LocalMesh::bench`] and parses its report.
pub fn bench_report(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("bench finishes");
    assert!(out.status.success(), "meshctl bench failed");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    eprintln!("bench: {}", summary(&r));
    r
}

/// The headline numbers of a bench report, for logs and assertion messages.
pub fn summary(r: &serde_json::Value) -> String {
    format!(
        "{} sent, {} failed {}, p50 {} ms, p99 {} ms, max {} ms",
        r["sent"],
        r["failed"],
        r["errors"],
        r["latency_ms"]["p50"],
        r["latency_ms"]["p99"],
        r["latency_ms"]["max"]
    )
}

fn log_tails(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(5).collect();
                    format!("{}:\n{}", e.path().display(), tail.join("\n"))
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}
