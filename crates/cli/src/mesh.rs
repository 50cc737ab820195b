//! meshctl's local mesh: [`rankmesh_provision::up`] (the launcher's processes, the
//! default models published into the registry before the replicas that fetch them
//! start, a catalog loaded), with what it did printed.

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
