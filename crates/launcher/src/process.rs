//! Starting, probing and stopping the processes of a mesh: each one's command
//! line and environment, its log, and the wait until it answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::LaunchError;
use crate::plan::{
    ENCODER_MODEL, Instance, RANKER_MODEL, TraceOptions, UpOptions, data_dir, etcd_name, etcd_url,
};
use crate::secrets::{RegistrySecrets, verify_key_hex};
use crate::state::{MeshState, Proc};

/// Longest wait for every service to become ready (the first index build embeds the
/// whole catalog).
const STARTUP: Duration = Duration::from_secs(300);

/// Whether `pid` is a live process.
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok())
}

/// Sends `sig` to `pid`; one already gone is not an error (that is the goal).
pub fn signal(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

/// Waits for the child on a thread so it never lingers as a zombie (which would
/// look alive to `kill(pid, 0)`); returns its pid.
fn reap_in_background(mut child: std::process::Child) -> u32 {
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    pid
}

fn open_log(path: &Path) -> Result<std::fs::File, LaunchError> {
    std::fs::File::create(path).map_err(LaunchError::io("create", path))
}

/// Spawns `cmd` with its output going to `log`, reaped in the background.
fn launch(
    cmd: &mut Command,
    log: &Path,
    to_stdout: bool,
    hint: &'static str,
) -> Result<u32, LaunchError> {
    let file = open_log(log)?;
    let (out, err) = if to_stdout {
        (Stdio::from(file), Stdio::null())
    } else {
        (Stdio::null(), Stdio::from(file))
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| LaunchError::Start {
            program: PathBuf::from(cmd.get_program()),
            hint,
            source,
        })?;
    Ok(reap_in_background(child))
}

/// The trace collector (`meshctl collector`): first, so the services' first spans
/// have somewhere to go.
pub(crate) fn start_collector(
    opts: &UpOptions,
    t: TraceOptions,
    logs: &Path,
    state: &mut MeshState,
) -> Result<(), LaunchError> {
    let ui = format!("127.0.0.1:{}", t.ui_port);
    let otlp = format!("127.0.0.1:{}", t.otlp_port);
    let log = logs.join("collector.log");
    let pid = launch(
        Command::new(opts.bin_dir.join("meshctl")).args([
            "collector",
            "--otlp",
            &otlp,
            "--ui",
            &ui,
        ]),
        &log,
        false,
        "build it: cargo build --workspace --bins",
    )?;
    state.processes.push(Proc {
        name: "collector".into(),
        service: "collector".into(),
        pid,
        grpc: otlp,
        // Its UI answers `/ready` like the services' admin ports.
        admin: ui,
        log,
    });
    Ok(())
}

/// etcd: one member, or a cluster (to lose its leader in a drill); member i
/// listens for clients on `etcd_port + 2i` and for peers on the port after.
/// Returns the client URLs once every member answers.
pub(crate) async fn start_etcd(
    opts: &UpOptions,
    logs: &Path,
    state: &mut MeshState,
) -> Result<Vec<String>, LaunchError> {
    let etcd_bin =
        std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from);
    let members = opts.etcd_members.max(1);
    let initial_cluster = (0..members)
        .map(|i| format!("{}={}", etcd_name(opts, i), etcd_url(opts, i, true)))
        .collect::<Vec<_>>()
        .join(",");
    let mut clients = Vec::new();
    for i in 0..members {
        let (client, peer, name) = (
            etcd_url(opts, i, false),
            etcd_url(opts, i, true),
            etcd_name(opts, i),
        );
        let log = logs.join(format!("{name}.log"));
        let mut cmd = Command::new(&etcd_bin);
        cmd.args(["--name", &name])
            .arg("--data-dir")
            .arg(opts.state_dir.join(&name))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--logger", "zap", "--log-level", "warn"]);
        if !opts.insecure {
            etcd_tls(&mut cmd, &opts.state_dir, &name)?;
        }
        let pid = launch(&mut cmd, &log, false, "run scripts/setup to install etcd")?;
        state.processes.push(Proc {
            name,
            service: "etcd".into(),
            pid,
            grpc: client.clone(),
            admin: String::new(),
            log,
        });
        clients.push(client);
    }
    for c in &clients {
        let mut config = state.etcd_config();
        config.endpoints = vec![c.clone()];
        wait_etcd(&config, Duration::from_secs(20)).await?;
    }
    Ok(clients)
}

/// Mutual TLS for etcd member `name`, clients and peers alike: a certificate from
/// the mesh CA naming `etcd.rankmesh` and the loopback address members dial each
/// other at; clients must present a certificate of the mesh CA
/// (`--client-cert-auth`), and peers one naming `etcd.rankmesh`, so no service's
/// certificate can join the cluster.
fn etcd_tls(cmd: &mut Command, state_dir: &Path, name: &str) -> Result<(), LaunchError> {
    let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    let files = crate::identity::issue_for_hosts(state_dir, "etcd", name, &hosts)?;
    let member_name = rankmesh_tls::Identity::server_name("etcd");
    for prefix in ["--", "--peer-"] {
        cmd.arg(format!("{prefix}cert-file"))
            .arg(&files.cert)
            .arg(format!("{prefix}key-file"))
            .arg(&files.key)
            .arg(format!("{prefix}trusted-ca-file"))
            .arg(&files.ca)
            .arg(format!("{prefix}client-cert-auth"));
    }
    cmd.args(["--peer-cert-allowed-hostname", &member_name]);
    Ok(())
}

async fn wait_etcd(
    config: &rankmesh_common::config::EtcdConfig,
    timeout: Duration,
) -> Result<(), LaunchError> {
    let url = config.endpoints.join(",");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(etcd) = rankmesh_common::etcd::Etcd::connect(config).await
            && let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(1), etcd.client().status()).await
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LaunchError::Startup(format!(
                "etcd at {url} did not answer within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Debian's redis-server on `port`, append-only with an fsync per write (so an
/// acknowledged event is on disk), its files in the state dir.
pub(crate) async fn start_redis(
    opts: &UpOptions,
    logs: &Path,
    port: u16,
    state: &mut MeshState,
) -> Result<(), LaunchError> {
    let dir = opts.state_dir.join("redis");
    std::fs::create_dir_all(&dir).map_err(LaunchError::io("create", &dir))?;
    let log = logs.join("redis.log");
    let bin =
        std::env::var_os("REDIS_BIN").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from);
    let mut cmd = Command::new(&bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&dir);
    let pid = launch(&mut cmd, &log, true, "run scripts/setup")?;
    state.processes.push(Proc {
        name: "redis".into(),
        service: "redis".into(),
        pid,
        grpc: format!("redis://127.0.0.1:{port}"),
        admin: String::new(),
        log,
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(LaunchError::Startup(format!(
                "redis on port {port} did not start"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Starts one service instance, configured through `RANKMESH__*` variables.
pub(crate) fn start_service(
    opts: &UpOptions,
    logs: &Path,
    etcd: &str,
    secrets: &RegistrySecrets,
    inst: Instance,
    state: &mut MeshState,
) -> Result<(), LaunchError> {
    let log = logs.join(format!("{}.log", inst.name));
    let mut cmd = Command::new(opts.bin_dir.join(inst.bin));
    service_env(&mut cmd, opts, secrets, &inst)?;
    if let Some(t) = opts.traces {
        cmd.env(
            "RANKMESH__TELEMETRY__OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", t.otlp_port),
        )
        .env(
            "RANKMESH__TELEMETRY__SAMPLE_RATIO",
            t.sample_ratio.to_string(),
        );
    }
    if opts.insecure {
        cmd.env("RANKMESH__SERVER__TLS__INSECURE", "true");
    } else {
        let files = crate::identity::issue(&opts.state_dir, inst.service, &inst.name)?;
        // One identity for the mesh's gRPC and for etcd, which requires a client
        // certificate of the mesh CA.
        cmd.env("RANKMESH__SERVER__TLS__CA", &files.ca)
            .env("RANKMESH__SERVER__TLS__CERT", &files.cert)
            .env("RANKMESH__SERVER__TLS__KEY", &files.key)
            .env("RANKMESH__ETCD__TLS__CA", &files.ca)
            .env("RANKMESH__ETCD__TLS__CERT", &files.cert)
            .env("RANKMESH__ETCD__TLS__KEY", &files.key);
    }
    cmd.env("RANKMESH__SERVER__LISTEN", &inst.grpc)
        .env("RANKMESH__SERVER__ADMIN_LISTEN", &inst.admin)
        .env("RANKMESH__SERVER__INSTANCE_ID", &inst.name)
        .env("RANKMESH__ETCD__ENDPOINTS", etcd)
        .envs(
            opts.instance_env
                .get(&inst.name)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k, v)),
        );
    let pid = launch(
        &mut cmd,
        &log,
        false,
        "build it: cargo build --workspace --bins",
    )?;
    state.processes.push(Proc {
        name: inst.name,
        service: inst.service.to_owned(),
        pid,
        grpc: inst.grpc,
        admin: inst.admin,
        log,
    });
    Ok(())
}

/// Each service's own configuration: where its data lives, and for the model
/// replicas, which model to follow and the keys to verify and decrypt it with.
fn service_env(
    cmd: &mut Command,
    opts: &UpOptions,
    secrets: &RegistrySecrets,
    inst: &Instance,
) -> Result<(), LaunchError> {
    let data = data_dir(&opts.state_dir, inst.service);
    let files = secrets.files(&opts.state_dir)?;
    // Models come from the registry: verified, decrypted in memory, cached
    // encrypted per replica; the ranking leader runs canary rollouts. Secrets are
    // handed over as paths of owner-only files, never as values.
    let follow = |cmd: &mut Command, section: &str, model: &str| -> Result<(), LaunchError> {
        let key = |k: &str| format!("RANKMESH__{section}__REGISTRY__{k}");
        cmd.env(key("MODEL"), model)
            .env(key("MASTER_KEY_FILES__LOCAL1"), &files.master_key)
            .env(key("VERIFY_KEY"), verify_key_hex(&secrets.signing_key)?)
            .env(
                key("CACHE_DIR"),
                opts.state_dir.join("model-cache").join(&inst.name),
            );
        Ok(())
    };
    match inst.service {
        "ranking" => {
            if opts.follow_ranker {
                follow(cmd, "RANKER", RANKER_MODEL)?;
                cmd.env("RANKMESH__ROLLOUT__ADMIN_TOKEN_FILE", &files.admin_token);
            }
            cmd.envs(opts.ranking_env.iter().map(|(k, v)| (k, v)));
        }
        "embedding" => {
            follow(cmd, "MODEL", ENCODER_MODEL)?;
            // The embedding index follows the feature service's catalog; each
            // replica snapshots its own, so the next `meshctl up` over the same
            // catalog and encoder embeds nothing again.
            cmd.env(
                "RANKMESH__INDEX__SNAPSHOT_DIR",
                opts.state_dir.join("embedding-index").join(&inst.name),
            )
            .env("RANKMESH__INDEX__FROM_FEATURE", "true");
            cmd.envs(opts.embedding_env.iter().map(|(k, v)| (k, v)));
        }
        "registry" => {
            cmd.env("RANKMESH__REGISTRY__BLOB_DIR", data.join("blobs"))
                .env("RANKMESH__REGISTRY__ADMIN_TOKEN_FILE", &files.admin_token)
                .env(
                    "RANKMESH__REGISTRY__MASTER_KEY_FILES__LOCAL1",
                    &files.master_key,
                )
                .env("RANKMESH__REGISTRY__CURRENT_KEY", "local1")
                .env("RANKMESH__REGISTRY__SIGNING_KEY_FILE", &files.signing_key);
            // INT8 at publish, where the caller has a quantizer.
            if let Some(q) = &opts.quantizer {
                cmd.env("RANKMESH__REGISTRY__QUANTIZER__PYTHON", &q.python)
                    .env("RANKMESH__REGISTRY__QUANTIZER__SCRIPT", &q.script);
            }
        }
        "feature" => {
            cmd.env("RANKMESH__STORE__PATH", data.join("features.redb"));
            if let Some(port) = opts.redis_port {
                cmd.env("RANKMESH__STORE__BACKEND", "redis").env(
                    "RANKMESH__STORE__REDIS_URL",
                    format!("redis://127.0.0.1:{port}/0"),
                );
            }
        }
        _ => {}
    }
    Ok(())
}

/// Waits until every started process with an admin port answers `/ready`.
pub(crate) async fn wait_ready(state: &MeshState) -> Result<(), LaunchError> {
    let deadline = Instant::now() + STARTUP;
    // etcd and Redis have no admin port; they were waited for when started.
    for p in state.processes.iter().filter(|p| !p.admin.is_empty()) {
        loop {
            if !alive(p.pid) {
                return Err(LaunchError::Startup(format!(
                    "{} exited during startup; see {}",
                    p.name,
                    p.log.display()
                )));
            }
            // Ready, not just serving: models loaded and the index built.
            match rankmesh_client::ready(&p.admin, Duration::from_secs(1)).await {
                Ok(true) => break,
                _ if Instant::now() > deadline => {
                    return Err(LaunchError::Startup(format!(
                        "{} not ready after {STARTUP:?}; see {}",
                        p.name,
                        p.log.display()
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(())
}

/// Stops processes (SIGTERM, so services deregister and drain) in reverse start
/// order, etcd last; anything still alive after `grace` is SIGKILLed.
pub async fn stop(state: &MeshState, grace: Duration) {
    let (etcd, services): (Vec<&Proc>, Vec<&Proc>) =
        state.processes.iter().partition(|p| p.service == "etcd");
    for group in [services, etcd] {
        for p in group.iter().rev() {
            signal(p.pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while group.iter().any(|p| alive(p.pid)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for p in &group {
            if alive(p.pid) {
                signal(p.pid, Signal::SIGKILL);
            }
        }
    }
}
