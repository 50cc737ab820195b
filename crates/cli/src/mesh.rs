//! meshctl's local mesh: [`rankmesh_provision::up`] (the launcher's processes, the
//! default models published into the registry before the replicas that fetch them
//! start, a catalog loaded), with what it did printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rankmesh_launcher::{MeshState, UpOptions};
pub(crate) use rankmesh_provision::{Serve, quantizer};

/// Starts the mesh of `opts` serving `serve`; prints the models published and the
/// catalog loaded. On any failure, stops what was started.
pub(crate) async fn up(opts: &UpOptions, serve: &Serve) -> anyhow::Result<MeshState> {
    let served = rankmesh_provision::up(opts, serve).await?;
    for m in &served.published {
        crate::model::print_published(m);
    }
    if let Some(loaded) = &served.loaded {
        crate::catalog::print_imported(&loaded.imported);
        crate::embed::print_indexed(&loaded.indexed);
    }
    Ok(served.mesh)
}

/// Where an offline job (ranker or encoder training) runs its private mesh, and
/// what it serves.
pub(crate) struct Private<'a> {
    /// The job's working folder: the mesh's state (and logs) go in `<work>/mesh`.
    pub work: &'a Path,
    pub etcd_port: u16,
    pub base_port: u16,
    pub models: &'a Path,
    pub catalog: &'a Path,
    /// Ranking follows the registry's ranker (a job that publishes one into it).
    pub follow_ranker: bool,
}

/// Starts a private mesh with one replica of each service on its own ports,
/// afresh (a mesh an interrupted run left is stopped and its state removed), and
/// makes this process its operator until [`stop_private`]. Returns the mesh and its
/// state folder.
pub(crate) async fn private(p: &Private<'_>) -> anyhow::Result<(MeshState, PathBuf)> {
    let cwd = std::env::current_dir()?;
    let absolute = |p: &Path| {
        if p.is_absolute() {
            p.to_owned()
        } else {
            cwd.join(p)
        }
    };
    let state_dir = absolute(p.work).join("mesh");
    rankmesh_launcher::down(&state_dir).await.ok();
    let _ = std::fs::remove_dir_all(&state_dir);
    let opts = UpOptions {
        state_dir: state_dir.clone(),
        ranking_replicas: 1,
        etcd_port: p.etcd_port,
        base_port: p.base_port,
        bin_dir: rankmesh_launcher::own_bin_dir()?,
        follow_ranker: p.follow_ranker,
        quantizer: quantizer(&absolute(p.models)),
        insecure: false,
        ranking_env: vec![],
        embedding_env: vec![],
        traces: None,
        etcd_members: 1,
        redis_port: None,
        instance_env: BTreeMap::new(),
    };
    println!("starting a private mesh in {}", state_dir.display());
    let serve = Serve {
        models: absolute(p.models),
        ranker: None,
        catalog: Some(absolute(p.catalog)),
    };
    let mesh = up(&opts, &serve).await?;
    // This process calls the private mesh as its operator until it stops.
    if let Some(tls) = mesh.client_tls()? {
        rankmesh_tls::client::install(tls);
    }
    Ok((mesh, state_dir))
}

/// Stops a [`private`] mesh, and makes this process the operator of the mesh in
/// `operator_state` again.
pub(crate) async fn stop_private(
    mesh: &MeshState,
    state_dir: &Path,
    operator_state: &Path,
) -> anyhow::Result<()> {
    rankmesh_launcher::stop(mesh, Duration::from_secs(10)).await;
    rankmesh_launcher::down(state_dir).await.ok();
    crate::args::install_identity(Some(operator_state))
}
