//! What the local topology's faults reach: the running mesh, how it was started,
//! its state directory, the registry's token, and the fault proxies on its links.

use std::path::PathBuf;

use rankmesh_launcher::{self as launcher, MeshState};

use crate::faults::Links;

/// Where the drill's local mesh lives.
pub(crate) struct Env {
    /// How the mesh was started (a restart fault starts an instance the same way).
    pub(crate) up: launcher::UpOptions,
    pub(crate) mesh: MeshState,
    pub(crate) state_dir: PathBuf,
    pub(crate) token: String,
    pub(crate) models: PathBuf,
    /// What makes broken rankers (`.venv/bin/python`, `scripts/bad_ranker.py`).
    pub(crate) python: PathBuf,
    pub(crate) bad_ranker: PathBuf,
    pub(crate) links: Links,
    /// The operator's identity on this mesh; None when it runs plaintext.
    pub(crate) tls: Option<rankmesh_tls::client::ClientTls>,
}

impl Env {
    /// An SDK client for the drill mesh's registry, with the admin token.
    pub(crate) fn registry(&self) -> anyhow::Result<rankmesh_client::RegistryClient> {
        let addr = self.mesh.grpc_of("registry")?;
        let tls = self.tls.clone();
        Ok(rankmesh_provision::registry_at(
            &addr,
            Some(&self.token),
            tls,
        ))
    }
}
