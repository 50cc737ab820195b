//! Starts and stops a local mesh as processes on loopback: one etcd and every
//! service, with logs and a state file under a state directory, so `meshctl down`
//! (or a drill) can find them again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// What `up` started, written to `<state>/mesh.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MeshState {
    pub(crate) etcd: String,
    pub(crate) processes: Vec<Proc>,
}

impl MeshState {
    /// The gRPC address of the first instance of `service`.
    pub(crate) fn grpc_of(&self, service: &str) -> anyhow::Result<String> {
        self.processes
            .iter()
            .find(|p| p.service == service)
            .map(|p| p.grpc.clone())
            .ok_or_else(|| anyhow::anyhow!("no {service} service in the mesh"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Proc {
    /// Instance id (`ranking-0`, `etcd`, ...).
    pub(crate) name: String,
    /// Service name in discovery; `etcd` for the control plane.
    pub(crate) service: String,
    pub(crate) pid: u32,
    /// gRPC address (client URL for etcd).
    pub(crate) grpc: String,
    /// Admin HTTP address; empty for etcd.
    pub(crate) admin: String,
    pub(crate) log: PathBuf,
}

/// The folder meshctl runs from: the service binaries are built next to it.
pub(crate) fn own_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("meshctl's own path")?;
    Ok(exe.parent().map(PathBuf::from).unwrap_or_default())
}

/// Options of `meshctl up`.
#[derive(Debug, Clone)]
pub(crate) struct UpOptions {
    pub(crate) state_dir: PathBuf,
    pub(crate) ranking_replicas: usize,
    /// etcd's client port; its peer port is the next one.
    pub(crate) etcd_port: u16,
    /// First service port: ranking-0 serves gRPC here and its admin port on the next;
    /// every further instance takes the following two.
    pub(crate) base_port: u16,
    pub(crate) bin_dir: PathBuf,
    /// Exported models folder (`encoder/` inside).
    pub(crate) models: PathBuf,
    /// Catalog the embedding service indexes, if any.
    pub(crate) catalog: Option<PathBuf>,
    /// Trained ranker folder for the ranking replicas, if any.
    pub(crate) ranker: Option<PathBuf>,
    /// Ranking replicas follow the ranker in the registry even when no ranker is
    /// published at start (`meshctl ranker train` publishes one later).
    pub(crate) follow_ranker: bool,
    /// Extra environment for the ranking replicas (e.g. rollout policy).
    pub(crate) ranking_env: Vec<(String, String)>,
    /// The trace collector to start and export to, if any.
    pub(crate) traces: Option<TraceOptions>,
    /// etcd members: 1, or 3 for a cluster that can lose a member.
    pub(crate) etcd_members: usize,
    /// Keep the feature store in a Redis started on this port (durable: fsync per
    /// write) instead of an embedded redb file.
    pub(crate) redis_port: Option<u16>,
    /// Extra environment for single instances, by name (`ranking-1`), applied last
    /// so it overrides: a drill points an instance's advertised port and etcd
    /// endpoints at its fault proxies.
    pub(crate) instance_env: std::collections::BTreeMap<String, Vec<(String, String)>>,
}

/// The local trace collector.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TraceOptions {
    pub(crate) ui_port: u16,
    pub(crate) otlp_port: u16,
    pub(crate) sample_ratio: f64,
}

/// The (service, binary) pairs started, in start order: dependencies first.
const SERVICES: &[(&str, &str)] = &[
    ("registry", "rankmesh-model-registry"),
    ("feature", "rankmesh-feature"),
    ("embedding", "rankmesh-embedding"),
];

/// Longest wait for every service to become ready (the first index build embeds the
/// whole catalog).
const STARTUP: Duration = Duration::from_secs(300);

fn state_file(dir: &Path) -> PathBuf {
    dir.join("mesh.json")
}

pub(crate) fn read_state(dir: &Path) -> anyhow::Result<Option<MeshState>> {
    let path = state_file(dir);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

pub(crate) fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok())
}

/// Starts etcd and every service, waits until all are healthy, records the state.
/// On any failure, stops what it started.
pub(crate) async fn up(opts: &UpOptions) -> anyhow::Result<MeshState> {
    if let Some(state) = read_state(&opts.state_dir)?
        && state.processes.iter().any(|p| alive(p.pid))
    {
        bail!(
            "a mesh is already running from {} (pids in mesh.json); run `meshctl down` first",
            opts.state_dir.display()
        );
    }
    let logs = opts.state_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let mut started = MeshState {
        etcd: String::new(),
        processes: Vec::new(),
    };
    match start_all(opts, &logs, &mut started).await {
        Ok(()) => {
            write_state(&opts.state_dir, &started)?;
            Ok(started)
        }
        Err(e) => {
            stop(&started, Duration::from_secs(5)).await;
            Err(e)
        }
    }
}

fn write_state(dir: &Path, state: &MeshState) -> anyhow::Result<()> {
    let tmp = dir.join("mesh.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&tmp, state_file(dir))?;
    Ok(())
}

/// One service instance to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instance {
    /// Its id in discovery and in the state file (`ranking-0`).
    pub name: String,
    /// The service it runs (`ranking`).
    pub service: &'static str,
    /// The binary, in the bin dir.
    pub bin: &'static str,
    /// gRPC and admin listen addresses.
    pub grpc: String,
    pub admin: String,
}

/// The service instances `up` starts, with their addresses, in a stable, memorable
/// port order (ranking-0 first): ranking-0 on `base_port` and its admin port on the
/// next, every further instance on the following two.
pub(crate) fn instances(opts: &UpOptions) -> Vec<Instance> {
    let mut names: Vec<(String, &'static str, &'static str)> = (0..opts.ranking_replicas)
        .map(|i| (format!("ranking-{i}"), "ranking", "rankmesh-ranking"))
        .collect();
    names.extend(
        SERVICES
            .iter()
            .map(|(svc, bin)| (format!("{svc}-0"), *svc, *bin)),
    );
    names
        .into_iter()
        .zip((opts.base_port..).step_by(2))
        .map(|((name, service, bin), port)| Instance {
            name,
            service,
            bin,
            grpc: format!("127.0.0.1:{port}"),
            admin: format!("127.0.0.1:{}", port + 1),
        })
        .collect()
}

/// etcd's members' client URLs: member i on `etcd_port + 2i` (its peer port next).
pub(crate) fn etcd_client_urls(opts: &UpOptions) -> Vec<String> {
    (0..opts.etcd_members.max(1))
        .map(|i| format!("http://127.0.0.1:{}", opts.etcd_port as usize + 2 * i))
        .collect()
}

async fn start_all(opts: &UpOptions, logs: &Path, state: &mut MeshState) -> anyhow::Result<()> {
    let mut instances = instances(opts);
    // Dependencies start first; ranking (the entry point) last.
    instances.rotate_left(opts.ranking_replicas);

    if let Some(t) = opts.traces {
        // First, so the services' first spans have somewhere to go.
        let ui = format!("127.0.0.1:{}", t.ui_port);
        let otlp = format!("127.0.0.1:{}", t.otlp_port);
        let log = logs.join("collector.log");
        let exe = std::env::current_exe().context("meshctl's own path")?;
        let child = Command::new(&exe)
            .args(["collector", "--otlp", &otlp, "--ui", &ui])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(open_log(&log)?)
            .spawn()
            .context("start the trace collector")?;
        state.processes.push(Proc {
            name: "collector".into(),
            service: "collector".into(),
            pid: reap_in_background(child),
            grpc: otlp,
            // Its UI answers `/ready` like the services' admin ports.
            admin: ui,
            log,
        });
    }
    let etcd_bin =
        std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from);
    // One member, or a cluster (to lose its leader in a drill): member i listens
    // for clients on etcd_port + 2i and for peers on the port after.
    let members = opts.etcd_members.max(1);
    let port = |i: usize, peer: bool| {
        let p = opts.etcd_port as usize + 2 * i + usize::from(peer);
        format!("http://127.0.0.1:{p}")
    };
    let name = |i: usize| {
        if members == 1 {
            "etcd".to_owned()
        } else {
            format!("etcd-{i}")
        }
    };
    let initial_cluster = (0..members)
        .map(|i| format!("{}={}", name(i), port(i, true)))
        .collect::<Vec<_>>()
        .join(",");
    let mut clients = Vec::new();
    for i in 0..members {
        let (client, peer, name) = (port(i, false), port(i, true), name(i));
        let log = logs.join(format!("{name}.log"));
        let child = Command::new(&etcd_bin)
            .args(["--name", &name])
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
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(open_log(&log)?)
            .spawn()
            .with_context(|| {
                format!(
                    "start {} (run scripts/setup to install etcd)",
                    etcd_bin.display()
                )
            })?;
        state.processes.push(Proc {
            name,
            service: "etcd".into(),
            pid: reap_in_background(child),
            grpc: client.clone(),
            admin: String::new(),
            log,
        });
        clients.push(client);
    }
    let client = clients.join(",");
    state.etcd.clone_from(&client);
    if let Some(port) = opts.redis_port {
        start_redis(opts, logs, port, state).await?;
    }
    for c in &clients {
        wait_etcd(c, Duration::from_secs(20)).await?;
    }

    let secrets = registry_secrets(&opts.state_dir)?;
    // The registry first: the ranker is published through it before the ranking
    // replicas start, so they get their model the way production replicas do.
    let (registry, rest): (Vec<_>, Vec<_>) =
        instances.into_iter().partition(|i| i.service == "registry");
    for inst in registry {
        spawn(opts, logs, &client, &secrets, inst, state)?;
    }
    wait_ready(state).await?;
    let registry = state
        .processes
        .iter()
        .find(|p| p.service == "registry")
        .map(|p| p.grpc.clone())
        .context("no registry started")?;
    publish_defaults(
        &registry,
        &secrets.admin_token,
        &opts.models,
        opts.ranker.as_deref(),
    )
    .await?;
    for inst in rest {
        spawn(opts, logs, &client, &secrets, inst, state)?;
    }
    wait_ready(state).await
}

/// Imports `file` into the mesh's feature service (features, lexical search) and
/// rebuilds the embedding index from it.
pub(crate) async fn load_catalog(mesh: &MeshState, file: &Path) -> anyhow::Result<()> {
    crate::catalog::import(&mesh.grpc_of("feature")?, file, None, true).await?;
    crate::embed::build_index(&mesh.grpc_of("embedding")?).await
}

/// Publishes the encoder (FP32, its INT8 variant and tokenizer) from `models` and,
/// if given, the ranker in `ranker`, and makes both production (unless they already
/// are): what `meshctl up` and `meshctl bootstrap` serve.
pub(crate) async fn publish_defaults(
    registry: &str,
    token: &str,
    models: &Path,
    ranker: Option<&Path>,
) -> anyhow::Result<()> {
    let encoder = models.join("encoder");
    publish_default(
        registry,
        token,
        &DefaultModel {
            name: ENCODER_MODEL,
            fp32: encoder.join("fp32/model.onnx"),
            int8: Some(encoder.join("int8/model.onnx")),
            sidecars: vec![encoder.join("fp32/tokenizer.json")],
            inputs: ["input_ids", "attention_mask", "token_type_ids"]
                .map(String::from)
                .to_vec(),
            outputs: vec!["sentence_embedding".into()],
        },
    )
    .await
    .context("publishing the encoder (run scripts/setup to export it)")?;
    if let Some(dir) = ranker {
        publish_default(
            registry,
            token,
            &DefaultModel {
                name: RANKER_MODEL,
                fp32: dir.join("model.onnx"),
                int8: None,
                sidecars: vec![],
                inputs: vec!["features".into()],
                outputs: vec!["score".into()],
            },
        )
        .await
        .context("publishing the ranker")?;
    }
    Ok(())
}

/// A model `meshctl up` serves from the registry.
struct DefaultModel {
    name: &'static str,
    fp32: PathBuf,
    /// Published as the INT8 variant of the same version (replicas on CPU pick it).
    int8: Option<PathBuf>,
    sidecars: Vec<PathBuf>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// Publishes a default model and makes it production, unless production already
/// is this exact file (a restarted mesh keeps its registry in the state directory).
async fn publish_default(registry: &str, token: &str, d: &DefaultModel) -> anyhow::Result<()> {
    use sha2::Digest;
    let registry = &crate::model::registry_at(registry, Some(token));
    let bytes = std::fs::read(&d.fp32).with_context(|| format!("read {}", d.fp32.display()))?;
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let current = crate::model::production(registry, d.name).await?;
    if current
        .as_ref()
        .is_some_and(|m| m.sha256_plaintext == digest)
    {
        return Ok(());
    }
    let mut up = crate::model::Upload {
        name: d.name,
        file: &d.fp32,
        inputs: &d.inputs,
        outputs: &d.outputs,
        metadata: vec![("source".into(), d.fp32.display().to_string())],
        sidecars: &d.sidecars,
        quantize_int8: false,
    };
    let m = crate::model::publish(registry, &up).await?;
    if let Some(int8) = &d.int8 {
        up.file = int8;
        up.metadata = vec![
            ("source".into(), int8.display().to_string()),
            ("variant".into(), "int8".into()),
            ("parent_version".into(), m.version.to_string()),
        ];
        crate::model::publish(registry, &up).await?;
    }
    crate::model::promote(
        registry,
        d.name,
        m.version,
        None,
        &format!("meshctl up: {}", d.fp32.display()),
    )
    .await
}

/// Name of the encoder in the registry.
pub(crate) const ENCODER_MODEL: &str = "encoder";
/// Name of the ranker in the registry.
pub(crate) const RANKER_MODEL: &str = "ranker";

/// The registry's public key for a signing seed.
pub(crate) fn verify_key_hex(signing_seed: &str) -> anyhow::Result<String> {
    let bytes = (0..signing_seed.len())
        .step_by(2)
        .map(|i| {
            signing_seed
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .context("the signing key must be hex")?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("the signing key must be 32 bytes"))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn spawn(
    opts: &UpOptions,
    logs: &Path,
    client: &str,
    secrets: &RegistrySecrets,
    Instance {
        name,
        service,
        bin,
        grpc,
        admin,
    }: Instance,
    state: &mut MeshState,
) -> anyhow::Result<()> {
    {
        let log = logs.join(format!("{name}.log"));
        let path = opts.bin_dir.join(bin);
        let mut cmd = Command::new(&path);
        // Models come from the registry: verified, decrypted in memory, cached
        // encrypted per replica; the ranking leader runs canary rollouts.
        let follow = |cmd: &mut Command, section: &str, model: &str| -> anyhow::Result<()> {
            let key = |k: &str| format!("RANKMESH__{section}__REGISTRY__{k}");
            cmd.env(key("MODEL"), model)
                .env(key("MASTER_KEYS__LOCAL1"), &secrets.master_key)
                .env(key("VERIFY_KEY"), verify_key_hex(&secrets.signing_key)?)
                .env(
                    key("CACHE_DIR"),
                    opts.state_dir.join("model-cache").join(&name),
                );
            Ok(())
        };
        if service == "ranking" && (opts.ranker.is_some() || opts.follow_ranker) {
            follow(&mut cmd, "RANKER", RANKER_MODEL)?;
            cmd.env("RANKMESH__ROLLOUT__ADMIN_TOKEN", &secrets.admin_token);
        }
        if service == "embedding" {
            follow(&mut cmd, "MODEL", ENCODER_MODEL)?;
        }
        if service == "ranking" {
            cmd.envs(opts.ranking_env.iter().map(|(k, v)| (k, v)));
        }
        if service == "registry" {
            cmd.env(
                "RANKMESH__REGISTRY__BLOB_DIR",
                data_dir(&opts.state_dir, "registry").join("blobs"),
            )
            .env("RANKMESH__REGISTRY__ADMIN_TOKEN", &secrets.admin_token)
            .env(
                "RANKMESH__REGISTRY__MASTER_KEYS__LOCAL1",
                &secrets.master_key,
            )
            .env("RANKMESH__REGISTRY__CURRENT_KEY", "local1")
            .env("RANKMESH__REGISTRY__SIGNING_KEY", &secrets.signing_key);
            // INT8 at publish with the project's quantizer, where the venv is.
            if let Some((python, script)) = quantizer(opts) {
                cmd.env("RANKMESH__REGISTRY__QUANTIZER__PYTHON", python)
                    .env("RANKMESH__REGISTRY__QUANTIZER__SCRIPT", script);
            }
        }
        if service == "feature" {
            cmd.env(
                "RANKMESH__STORE__PATH",
                data_dir(&opts.state_dir, "feature").join("features.redb"),
            );
            if let Some(port) = opts.redis_port {
                cmd.env("RANKMESH__STORE__BACKEND", "redis").env(
                    "RANKMESH__STORE__REDIS_URL",
                    format!("redis://127.0.0.1:{port}/0"),
                );
            }
        }
        if service == "embedding" {
            // The embedding index follows the feature service's catalog.
            cmd.env(
                "RANKMESH__INDEX__SNAPSHOT_DIR",
                opts.state_dir.join("embedding-index"),
            )
            .env("RANKMESH__INDEX__FROM_FEATURE", "true");
        }
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
        let child = cmd
            .env("RANKMESH__SERVER__LISTEN", &grpc)
            .env("RANKMESH__SERVER__ADMIN_LISTEN", &admin)
            .env("RANKMESH__SERVER__INSTANCE_ID", &name)
            .env("RANKMESH__ETCD__ENDPOINTS", client)
            .envs(
                opts.instance_env
                    .get(&name)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(open_log(&log)?)
            .spawn()
            .with_context(|| {
                format!(
                    "start {} (build it: cargo build --workspace --bins)",
                    path.display()
                )
            })?;
        let pid = reap_in_background(child);
        state.processes.push(Proc {
            name,
            service: service.to_owned(),
            pid,
            grpc,
            admin,
            log,
        });
    }

    Ok(())
}

/// Where the instances of `service` keep their data in a mesh's state directory
/// (the feature store's file, the registry's blobs).
pub(crate) fn data_dir(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join(service)
}

/// The venv's Python and `scripts/quantize_model.py` of the checkout whose
/// `models/` the mesh serves, when both are there.
fn quantizer(opts: &UpOptions) -> Option<(PathBuf, PathBuf)> {
    let root = std::fs::canonicalize(&opts.models)
        .ok()?
        .parent()?
        .to_owned();
    let tool = crate::args::PythonTool::new(None, root.join("scripts/quantize_model.py"));
    let python = if tool.python.is_absolute() {
        tool.python
    } else {
        root.join(tool.python)
    };
    (python.exists() && tool.script.exists()).then_some((python, tool.script))
}

/// Waits until every started service answers `/ready`.
async fn wait_ready(state: &MeshState) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP;
    // etcd and Redis have no admin port; they were waited for when started.
    for p in state.processes.iter().filter(|p| !p.admin.is_empty()) {
        loop {
            if !alive(p.pid) {
                bail!("{} exited during startup; see {}", p.name, p.log.display());
            }
            // Ready, not just serving: models loaded and the index built.
            match rankmesh_client::ready(&p.admin, Duration::from_secs(1)).await {
                Ok(true) => break,
                _ if Instant::now() > deadline => {
                    bail!(
                        "{} not ready after {STARTUP:?}; see {}",
                        p.name,
                        p.log.display()
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(())
}

/// Development secrets of a local mesh's registry, created once per state dir
/// (readable by the owner only) so restarts keep decrypting what was published.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RegistrySecrets {
    pub(crate) admin_token: String,
    pub(crate) master_key: String,
    pub(crate) signing_key: String,
}

pub(crate) fn hex32() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The registry admin token a write uses: the one given, else the local mesh's
/// (its secrets file under `state_dir`).
pub(crate) fn admin_token(given: Option<&str>, state_dir: &Path) -> anyhow::Result<String> {
    match given {
        Some(t) => Ok(t.to_owned()),
        None => Ok(registry_secrets(state_dir)?.admin_token),
    }
}

/// The local mesh's registry secrets, if `state_dir` has them (read only).
pub(crate) fn existing_secrets(state_dir: &Path) -> anyhow::Result<Option<RegistrySecrets>> {
    let path = state_dir.join("registry-secrets.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("parse {}", path.display())),
        Err(_) => Ok(None),
    }
}

/// The local mesh's registry secrets, created on first use.
pub(crate) fn registry_secrets(state_dir: &Path) -> anyhow::Result<RegistrySecrets> {
    if let Some(s) = existing_secrets(state_dir)? {
        return Ok(s);
    }
    let path = state_dir.join("registry-secrets.json");
    let secrets = RegistrySecrets {
        admin_token: hex32(),
        master_key: hex32(),
        signing_key: hex32(),
    };
    std::fs::create_dir_all(state_dir)?;
    std::fs::write(&path, serde_json::to_vec_pretty(&secrets)?)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(secrets)
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

fn open_log(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("create {}", path.display()))
}

/// Starts instance `name` (a service instance, or `redis`) of the mesh `opts`
/// started, again: same addresses, configuration and data, as after a crash. Its new
/// pid goes into the state file, so `meshctl down` stops it; the log of the run
/// before is kept as `NAME.log.1`.
pub(crate) async fn restart(opts: &UpOptions, name: &str) -> anyhow::Result<()> {
    let mut state = read_state(&opts.state_dir)?
        .with_context(|| format!("no mesh state in {}", opts.state_dir.display()))?;
    if let Some(old) = state.processes.iter().find(|p| p.name == name) {
        let _ = std::fs::rename(&old.log, old.log.with_extension("log.1"));
    }
    state.processes.retain(|p| p.name != name);
    let logs = opts.state_dir.join("logs");
    if name == "redis" {
        let port = opts.redis_port.context("this mesh has no Redis")?;
        start_redis(opts, &logs, port, &mut state).await?;
    } else {
        let inst = instances(opts)
            .into_iter()
            .find(|i| i.name == name)
            .with_context(|| format!("{name} is not an instance of this mesh"))?;
        let secrets = registry_secrets(&opts.state_dir)?;
        let etcd = state.etcd.clone();
        spawn(opts, &logs, &etcd, &secrets, inst, &mut state)?;
    }
    write_state(&opts.state_dir, &state)
}

/// Debian's redis-server on `port`, append-only with an fsync per write (so an
/// acknowledged event is on disk), its files in the state dir.
async fn start_redis(
    opts: &UpOptions,
    logs: &Path,
    port: u16,
    state: &mut MeshState,
) -> anyhow::Result<()> {
    let dir = opts.state_dir.join("redis");
    std::fs::create_dir_all(&dir)?;
    let log = logs.join("redis.log");
    let bin =
        std::env::var_os("REDIS_BIN").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from);
    let child = Command::new(&bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(open_log(&log)?)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {} (run scripts/setup)", bin.display()))?;
    state.processes.push(Proc {
        name: "redis".into(),
        service: "redis".into(),
        pid: reap_in_background(child),
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
            bail!("redis on port {port} did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn wait_etcd(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut c) = etcd_client::Client::connect([url], None).await
            && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), c.status()).await
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("etcd at {url} did not answer within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops services (SIGTERM, so they deregister and drain) in reverse start order, etcd
/// last; anything still alive after `grace` is SIGKILLed.
pub(crate) async fn stop(state: &MeshState, grace: Duration) {
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

fn signal(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        // ESRCH (already gone) is fine: that is the goal.
        let _ = kill(Pid::from_raw(p), sig);
    }
}

/// `meshctl down`: stops the mesh recorded in the state dir and removes the record.
pub(crate) async fn down(state_dir: &Path) -> anyhow::Result<usize> {
    let Some(state) = read_state(state_dir)? else {
        return Ok(0);
    };
    let running = state.processes.iter().filter(|p| alive(p.pid)).count();
    stop(&state, Duration::from_secs(10)).await;
    std::fs::remove_file(state_file(state_dir)).ok();
    Ok(running)
}
