//! A mesh's first contents, put in through the SDK as an operator's tools would:
//! model files published into its registry and made production, a catalog file
//! imported into its feature store and indexed for dense retrieval; and [`up`], a
//! local mesh (the launcher's processes) that serves them from its first answer.
//!
//! # Layout
//! - [`models`]: uploads, stage changes, and the default models (encoder, ranker).
//! - [`catalog`]: streaming a catalog file (JSONL or CSV, gzipped or not) and
//!   building the dense index.
//! - this file: [`up`] and [`load_catalog`] for a local mesh, and [`quantizer`].
//!
//! Used by meshctl (`up`, `bootstrap`, `ranker train`, `model publish`, `catalog
//! import`) and by the drills. Reports what it did as values; printing is the
//! caller's. Must not import a service crate, the drill engine or the CLI.

pub mod catalog;
pub mod error;
pub mod models;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rankmesh_client::{EmbeddingClient, FeatureClient, RegistryClient, Resolver};
use rankmesh_launcher::{MeshState, Quantizer, RegistryHook, RegistryReady, UpOptions};
use rankmesh_proto::pb::embedding::v1 as emb;
use rankmesh_proto::pb::registry::v1 as reg;
use rankmesh_tls::client::ClientTls;

pub use catalog::Imported;
pub use error::ProvisionError;

/// Uploads of large models take a while.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(600);
/// A large catalog streams, and is indexed, for minutes.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a local mesh serves.
#[derive(Debug, Clone)]
pub struct Serve {
    /// Exported models (`encoder/` inside), as scripts/setup writes them.
    pub models: PathBuf,
    /// A trained ranker folder to publish and make production, if any.
    pub ranker: Option<PathBuf>,
    /// A catalog loaded into the feature service and indexed, if any.
    pub catalog: Option<PathBuf>,
}

/// A local mesh that serves, and what was put into it.
#[derive(Debug, Clone)]
pub struct Served {
    pub mesh: MeshState,
    /// The manifests published (none when production already had those files).
    pub published: Vec<reg::ModelManifest>,
    /// The catalog import and the index built from it, when a catalog was given.
    pub loaded: Option<Loaded>,
}

/// A catalog imported and indexed.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub imported: Imported,
    pub indexed: emb::BuildIndexResponse,
}

/// An SDK client for the registry replica at `addr`, sending `token` on writes,
/// dialling with `tls` (else the process's installed identity, else plaintext).
pub fn registry_at(addr: &str, token: Option<&str>, tls: Option<ClientTls>) -> RegistryClient {
    registry(
        Resolver::fixed("registry", &[addr.to_owned()]).with_tls(tls),
        token,
    )
}

/// An SDK client for the registry replicas in `resolver`, sending `token` on
/// writes.
pub fn registry(resolver: Resolver, token: Option<&str>) -> RegistryClient {
    let client = RegistryClient::new(resolver, REGISTRY_TIMEOUT);
    match token {
        Some(t) => client.with_token(t),
        None => client,
    }
}

/// Starts the mesh of `opts` serving `serve`: the default models are published
/// once its registry answers (before the replicas that fetch them start), the
/// catalog loaded once every service is ready. On any failure, stops what was
/// started.
pub async fn up(opts: &UpOptions, serve: &Serve) -> Result<Served, ProvisionError> {
    let (models, ranker) = (serve.models.clone(), serve.ranker.clone());
    let published = Arc::new(Mutex::new(Vec::new()));
    let sink = published.clone();
    let publish: RegistryHook = Box::new(move |r: RegistryReady| {
        Box::pin(async move {
            let registry = registry_at(&r.addr, Some(&r.admin_token), r.tls);
            let p = models::publish_defaults(&registry, &models, ranker.as_deref()).await?;
            sink.lock().unwrap_or_else(|e| e.into_inner()).extend(p);
            Ok(())
        })
    });
    let mesh = rankmesh_launcher::up(opts, Some(publish)).await?;
    let loaded = match &serve.catalog {
        None => None,
        Some(file) => match load_catalog(&mesh, file).await {
            Ok(l) => Some(l),
            Err(e) => {
                rankmesh_launcher::stop(&mesh, Duration::from_secs(10)).await;
                rankmesh_launcher::down(&opts.state_dir).await.ok();
                return Err(e);
            }
        },
    };
    let published = std::mem::take(&mut *published.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Served {
        mesh,
        published,
        loaded,
    })
}

/// Imports `file` into the mesh's feature service (features, lexical search) and
/// rebuilds the embedding index from it.
pub async fn load_catalog(mesh: &MeshState, file: &Path) -> Result<Loaded, ProvisionError> {
    let tls = mesh.client_tls()?;
    let feature = FeatureClient::new(
        Resolver::fixed("feature", &[mesh.grpc_of("feature")?]).with_tls(tls.clone()),
        CATALOG_TIMEOUT,
    );
    let format = catalog::format_of(file, None)?;
    let imported = catalog::import_file(&feature, file, format, true).await?;
    let embedding = EmbeddingClient::new(
        Resolver::fixed("embedding", &[mesh.grpc_of("embedding")?]).with_tls(tls),
        CATALOG_TIMEOUT,
    );
    let indexed = catalog::build_index(&embedding).await?;
    Ok(Loaded { imported, indexed })
}

/// The registry's INT8 quantizer: the venv's Python (`$RANKMESH_VENV`, else
/// `.venv`) and `scripts/quantize_model.py` of the checkout whose `models/` the
/// mesh serves, when both are there.
pub fn quantizer(models: &Path) -> Option<Quantizer> {
    let root = std::fs::canonicalize(models).ok()?.parent()?.to_owned();
    let python = match std::env::var_os("RANKMESH_VENV") {
        Some(venv) => root.join(venv).join("bin/python"),
        None => root.join(".venv/bin/python"),
    };
    let script = root.join("scripts/quantize_model.py");
    (python.exists() && script.exists()).then_some(Quantizer { python, script })
}
