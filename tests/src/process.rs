//! Service binaries as real processes on loopback.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Path of a workspace binary (`target/<profile>/<name>`), next to the running test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A running service process with its gRPC and admin ports; SIGKILLed on drop.
#[derive(Debug)]
pub struct ServiceProcess {
    pub name: String,
    pub grpc_addr: String,
    pub admin_addr: String,
    child: Option<Child>,
    /// The process's working directory: relative default paths (stores, caches)
    /// land here, never in the source tree.
    _cwd: tempfile::TempDir,
}

impl ServiceProcess {
    /// Starts `bin` on fresh loopback ports with `env` overrides (RANKMESH__...),
    /// on mutual TLS with a certificate of the kit's CA ([`crate::tls`]) naming
    /// `spiffe://rankmesh/<service>/<instance>`, unless `env` sets
    /// `RANKMESH__SERVER__TLS__INSECURE`; the same certificate is its etcd client
    /// identity where `etcd` is on https. Reach it with [`crate::tls::channel`]
    /// or the SDK.
    pub fn spawn(bin: &str, instance: &str, etcd: &[String], env: &[(&str, &str)]) -> Self {
        let grpc_addr = format!("127.0.0.1:{}", crate::free_port());
        let admin_addr = format!("127.0.0.1:{}", crate::free_port());
        let cwd = tempfile::tempdir().expect("working dir for the service");
        let mut cmd = Command::new(binary(bin));
        let role = bin
            .trim_start_matches("rankmesh-")
            .trim_start_matches("model-");
        let files = crate::tls::kit().issue(role, instance, &[], &cwd.path().join("tls"));
        if !env
            .iter()
            .any(|(k, _)| *k == "RANKMESH__SERVER__TLS__INSECURE")
        {
            cmd.env("RANKMESH__SERVER__TLS__CA", &files.ca)
                .env("RANKMESH__SERVER__TLS__CERT", &files.cert)
                .env("RANKMESH__SERVER__TLS__KEY", &files.key);
        }
        // The workload's identity is also its etcd client certificate, as under
        // `meshctl up`.
        if etcd.iter().any(|e| e.starts_with("https://")) {
            cmd.env("RANKMESH__ETCD__TLS__CA", &files.ca)
                .env("RANKMESH__ETCD__TLS__CERT", &files.cert)
                .env("RANKMESH__ETCD__TLS__KEY", &files.key);
        }
        cmd.current_dir(cwd.path())
            .env("RANKMESH__SERVER__LISTEN", &grpc_addr)
            .env("RANKMESH__SERVER__ADMIN_LISTEN", &admin_addr)
            .env("RANKMESH__SERVER__INSTANCE_ID", instance)
            .env("RANKMESH__ETCD__ENDPOINTS", etcd.join(","))
            .env("RANKMESH__TELEMETRY__LOG_FILTER", "warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn service binary");
        Self {
            name: instance.to_owned(),
            grpc_addr,
            admin_addr,
            child: Some(child),
            _cwd: cwd,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no deregistration, no drain. Discovery must notice by lease expiry.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (TERM, STOP, CONT) with kill(1).
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .expect("run kill(1)");
            assert!(status.success(), "kill -{sig} {pid} failed");
        }
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child
            .take()
            .and_then(|mut c| c.wait().ok())
            .and_then(|s| s.code())
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// meshctl with the kit's operator identity ([`crate::tls`]), to call the
/// processes this kit started.
pub fn meshctl_command() -> Command {
    let operator = crate::tls::kit().operator();
    let mut cmd = Command::new(binary("meshctl"));
    cmd.env("RANKMESH_TLS_CA", &operator.ca)
        .env("RANKMESH_TLS_CERT", &operator.cert)
        .env("RANKMESH_TLS_KEY", &operator.key);
    cmd
}

/// Runs `meshctl ARGS` with the kit's operator identity ([`crate::tls`]), for
/// processes this kit started; returns its stdout; panics with stderr when it
/// fails.
pub fn meshctl(args: &[&str]) -> String {
    stdout_of(meshctl_command(), args)
}

/// Runs the meshctl `cmd` with `args`; its stdout, or a panic with its stderr
/// when it fails.
pub fn stdout_of(mut cmd: Command, args: &[&str]) -> String {
    let out = cmd.args(args).output().expect("run meshctl");
    assert!(
        out.status.success(),
        "meshctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the feature service at `grpc_addr` answers a plaintext gRPC call (no
/// TLS, no certificate) within 5 s: a mesh on mutual TLS must not.
pub async fn feature_answers_plaintext(grpc_addr: &str) -> bool {
    use rankmesh_proto::pb::feature::v1::ScanItemsRequest;
    use rankmesh_proto::pb::feature::v1::feature_service_client::FeatureServiceClient;
    let call = async {
        let ch = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let req = ScanItemsRequest {
            after_id: String::new(),
            page_size: 1,
        };
        FeatureServiceClient::new(ch).scan_items(req).await.ok()
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(5), call).await,
        Ok(Some(_))
    )
}
