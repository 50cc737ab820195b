//! A local mesh as processes on loopback: etcd (one member or a cluster of three),
//! optionally Redis and the trace collector, and every service, with their logs,
//! data and a state file under one state directory, so `meshctl down`, a restart
//! or a drill finds them again.
//!
//! # Layout
//! - [`plan`]: what a mesh is made of ([`UpOptions`]), its instances and their
//!   ports, and where each keeps its data.
//! - [`state`]: the state file (`mesh.json`): what runs, with pids and addresses.
//! - [`secrets`]: the registry's development secrets, created once per state dir.
//! - [`identity`]: the mesh's CA and the certificates of its instances and of
//!   its operator (mutual TLS on every gRPC hop, unless `insecure`).
//! - [`process`]: starting, probing and stopping processes.
//! - this file: [`up`], [`restart`] and [`down`].
//!
//! Owns processes, ports, data directories and secrets. Knows nothing of models or
//! catalogs beyond the names the replicas are told to follow: what a mesh serves is
//! put into it by the caller, through a [`RegistryHook`] and the services' APIs.
//! Must not import a service crate, the drill engine or the CLI.

pub mod error;
pub mod identity;
pub mod plan;
pub mod process;
pub mod secrets;
pub mod state;

use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;

pub use error::{BoxError, LaunchError};
pub use plan::{
    ENCODER_MODEL, Instance, Quantizer, RANKER_MODEL, TraceOptions, UpOptions, data_dir,
    etcd_client_urls, instances, own_bin_dir,
};
pub use process::{alive, stop};
pub use secrets::{
    RegistrySecrets, SecretFiles, admin_token, existing_secrets, hex32, registry_secrets,
    verify_key_hex,
};
pub use state::{MeshState, Proc, read_state};

/// The registry of a mesh being started, once it answers.
#[derive(Debug, Clone)]
pub struct RegistryReady {
    /// Its gRPC address.
    pub addr: String,
    /// The token its writes take.
    pub admin_token: String,
    /// The operator's identity to call it with; None for a plaintext mesh.
    pub tls: Option<rankmesh_tls::client::ClientTls>,
}

/// What the caller does once the registry answers and before any other service
/// starts: publishing the models the replicas will fetch, so they get them the
/// way production replicas do.
pub type RegistryHook =
    Box<dyn FnOnce(RegistryReady) -> BoxFuture<'static, Result<(), BoxError>> + Send>;

/// Starts etcd and every service, waits until all are ready, records the state.
/// `on_registry` runs between the registry and the rest. On any failure, stops
/// what it started.
pub async fn up(
    opts: &UpOptions,
    on_registry: Option<RegistryHook>,
) -> Result<MeshState, LaunchError> {
    if let Some(state) = read_state(&opts.state_dir)?
        && state.processes.iter().any(|p| alive(p.pid))
    {
        return Err(LaunchError::AlreadyRunning(opts.state_dir.clone()));
    }
    let logs = opts.state_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(LaunchError::io("create", &logs))?;
    let client_tls = if opts.insecure {
        None
    } else {
        Some(identity::operator_files(&opts.state_dir)?)
    };
    let mut started = MeshState {
        etcd: String::new(),
        processes: Vec::new(),
        client_tls,
    };
    match start_all(opts, &logs, on_registry, &mut started).await {
        Ok(()) => {
            state::write_state(&opts.state_dir, &started)?;
            Ok(started)
        }
        Err(e) => {
            stop(&started, Duration::from_secs(5)).await;
            Err(e)
        }
    }
}

async fn start_all(
    opts: &UpOptions,
    logs: &Path,
    on_registry: Option<RegistryHook>,
    state: &mut MeshState,
) -> Result<(), LaunchError> {
    if let Some(t) = opts.traces {
        process::start_collector(opts, t, logs, state)?;
    }
    state.etcd = process::start_etcd(opts, logs, state).await?.join(",");
    if let Some(port) = opts.redis_port {
        process::start_redis(opts, logs, port, state).await?;
    }
    let secrets = registry_secrets(&opts.state_dir)?;
    let mut instances = instances(opts);
    // Dependencies start first; ranking (the entry point) last.
    instances.rotate_left(opts.ranking_replicas);
    let (registry, rest): (Vec<_>, Vec<_>) =
        instances.into_iter().partition(|i| i.service == "registry");
    let etcd = state.etcd.clone();
    for inst in registry {
        process::start_service(opts, logs, &etcd, &secrets, inst, state)?;
    }
    process::wait_ready(state).await?;
    if let Some(hook) = on_registry {
        let ready = RegistryReady {
            addr: state.grpc_of("registry")?,
            admin_token: secrets.admin_token.clone(),
            tls: state.client_tls()?,
        };
        hook(ready).await.map_err(LaunchError::Hook)?;
    }
    for inst in rest {
        process::start_service(opts, logs, &etcd, &secrets, inst, state)?;
    }
    process::wait_ready(state).await
}

/// Starts instance `name` (a service instance, or `redis`) of the mesh `opts`
/// started, again: same addresses, configuration and data, as after a crash. Its new
/// pid goes into the state file, so `meshctl down` stops it; the log of the run
/// before is kept as `NAME.log.1`.
pub async fn restart(opts: &UpOptions, name: &str) -> Result<(), LaunchError> {
    let mut state = read_state(&opts.state_dir)?.ok_or_else(|| {
        LaunchError::Invalid(format!("no mesh state in {}", opts.state_dir.display()))
    })?;
    if let Some(old) = state.processes.iter().find(|p| p.name == name) {
        let _ = std::fs::rename(&old.log, old.log.with_extension("log.1"));
    }
    state.processes.retain(|p| p.name != name);
    let logs = opts.state_dir.join("logs");
    if name == "redis" {
        let port = opts
            .redis_port
            .ok_or_else(|| LaunchError::Invalid("this mesh has no Redis".into()))?;
        process::start_redis(opts, &logs, port, &mut state).await?;
    } else {
        let inst = instances(opts)
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| {
                LaunchError::Invalid(format!("{name} is not an instance of this mesh"))
            })?;
        let secrets = registry_secrets(&opts.state_dir)?;
        let etcd = state.etcd.clone();
        process::start_service(opts, &logs, &etcd, &secrets, inst, &mut state)?;
    }
    state::write_state(&opts.state_dir, &state)
}

/// Stops the mesh recorded in the state dir and removes the record; answers how
/// many of its processes were still running.
pub async fn down(state_dir: &Path) -> Result<usize, LaunchError> {
    let Some(state) = read_state(state_dir)? else {
        return Ok(0);
    };
    let running = state.processes.iter().filter(|p| alive(p.pid)).count();
    stop(&state, Duration::from_secs(10)).await;
    std::fs::remove_file(state::state_file(state_dir)).ok();
    Ok(running)
}
