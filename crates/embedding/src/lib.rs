//! The embedding service: a sentence encoder (all-MiniLM-L6-v2, 384-d) run by ONNX
//! Runtime with dynamic batching across concurrent calls, and an HNSW index over
//! catalog item embeddings for dense retrieval with category, brand and price filters.
//!
//! # Layout
//! - [`encoder`]: tokenizer + ONNX session pool; blocking `encode`.
//! - [`index`]: the vector index, its filters and its checksummed snapshots.
//! - [`catalog`]: reading catalog items to index.
//! - [`service`]: the gRPC API (validation, batching, Retrieve, BuildIndex) and the
//!   encoder/index generation swapped together.
//! - [`follow`]: the encoder from the model registry (cache, fetch, hot swap with a
//!   re-embedded index).
//!
//! Owns the encoder session and the vector index. Must not import another service
//! crate (the registry server included): it follows models through
//! `rankmesh-artifact` and reads the catalog over the SDK.

pub mod catalog;
pub mod encoder;
pub mod follow;
pub mod index;
pub mod service;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use rankmesh_common::batcher::BatchConfig;
use rankmesh_common::config::{ConfigError, invalid};
use rankmesh_common::onnx::OnnxConfig;
use rankmesh_common::scaffold::{ScaffoldError, serve_routes};
use rankmesh_common::server::{Listeners, Readiness, ServiceInfo};
use rankmesh_proto::pb::common::v1::ModelRef;
use rankmesh_proto::pb::embedding::v1::embedding_service_server::EmbeddingServiceServer;
use serde::{Deserialize, Serialize};

use crate::encoder::{Encoder, Variant};
use crate::follow::{EncoderLoader, EncoderTarget};
use crate::index::{IndexParams, VectorIndex};
use crate::service::{CatalogSource, Embedder, EmbeddingApi, LoadedEncoder};
use rankmesh_artifact::fetch::{Fetcher, RegistrySource};
use rankmesh_artifact::follow::Follower;

/// Its name in discovery and metrics, and the gRPC service it serves.
pub const INFO: ServiceInfo =
    ServiceInfo::new("embedding", &["rankmesh.embedding.v1.EmbeddingService"]);

rankmesh_common::service_config! {
    /// Configuration of the embedding service.
    pub struct Config {
        /// Which encoder artifacts to load.
        pub model: ModelConfig,
        /// ONNX Runtime: library, device, sessions, threads.
        pub onnx: OnnxConfig,
        /// Dynamic batching of Embed calls (workers = onnx.sessions).
        pub batch: BatchConfig,
        /// The item-vector index.
        pub index: IndexConfig,
    }
}

/// The encoder to load (the model registry replaces this with a fetched artifact).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Folder with `fp32/` and `int8/` (each `model.onnx` + `tokenizer.json`), as
    /// written by `scripts/export-encoder`.
    pub dir: PathBuf,
    /// `auto` (INT8 on CPU, FP32 on GPU), `fp32` or `int8`.
    pub variant: Variant,
    /// Version reported in replies and metrics.
    pub version: u64,
    /// Tokens per text; longer texts are truncated and reported as such.
    pub max_tokens: usize,
    /// Follow this model in the registry instead of loading `dir`.
    pub registry: RegistrySource,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models/encoder"),
            variant: Variant::Auto,
            version: 1,
            max_tokens: 256,
            registry: RegistrySource {
                poll_ms: 2_000,
                variant: "auto".into(),
                ..RegistrySource::default()
            },
        }
    }
}

/// Where the index comes from and where it is kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// JSONL catalog to embed (import format). Wins over `from_feature`.
    pub catalog: PathBuf,
    /// Index the feature service's catalog (ScanItems), found in discovery or at
    /// `feature_addrs`; BuildIndex re-reads it after an import.
    pub from_feature: bool,
    /// Feature replicas when etcd is not configured.
    pub feature_addrs: Vec<String>,
    /// Folder for the snapshot; loaded at startup so a restart does not re-embed.
    /// Empty: no snapshot.
    pub snapshot_dir: PathBuf,
    /// HNSW parameters.
    pub hnsw: IndexParams,
}

impl Config {
    fn validate_service(&self) -> Result<(), ConfigError> {
        self.onnx.validate("onnx")?;
        self.batch.validate("batch")?;
        if !(1..=512).contains(&self.model.max_tokens) {
            return Err(invalid(
                "model.max_tokens",
                self.model.max_tokens,
                "must be within 1..=512 (the model's positions)",
            ));
        }
        if self.index.hnsw.connectivity < 2 {
            return Err(invalid(
                "index.hnsw.connectivity",
                self.index.hnsw.connectivity,
                "must be >= 2",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Scaffold(#[from] ScaffoldError),
    #[error("encoder: {0}")]
    Encoder(#[from] encoder::EncoderError),
    #[error("onnx: {0}")]
    Onnx(#[from] rankmesh_common::onnx::OnnxError),
    #[error("encoder loading task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("model.registry: {0}")]
    Follow(String),
}

fn non_empty(p: &std::path::Path) -> Option<PathBuf> {
    (!p.as_os_str().is_empty()).then(|| p.to_owned())
}

/// Loads the encoder, then serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let batch = BatchConfig {
        workers: config.onnx.sessions,
        ..config.batch
    };
    // Before anything else: a replica told to require CUDA that cannot have it
    // refuses to start here, with the reason.
    let provider = rankmesh_common::onnx::resolve_device(&config.onnx)?;
    tracing::info!(device = ?config.onnx.device, provider = provider.as_str(), "ONNX Runtime provider");
    let etcd = rankmesh_common::scaffold::connect_etcd(&config.etcd).await?;
    let (encoder, follower) = if config.model.registry.enabled() {
        let resolver = match &etcd {
            Some(e) => rankmesh_common::discovery::Resolver::watch(e.clone(), "registry"),
            None => rankmesh_common::discovery::Resolver::fixed("registry", &[]),
        };
        let fetcher = Fetcher::new(
            config.model.registry.clone(),
            rankmesh_client::RegistryClient::new(resolver, std::time::Duration::from_secs(5)),
        )
        .map_err(Error::Follow)?;
        let loader = EncoderLoader {
            onnx: config.onnx.clone(),
            batch,
            max_tokens: config.model.max_tokens,
        };
        let follower = Follower::new(fetcher, loader);
        (follower.first().await, Some(follower))
    } else {
        let model_cfg = config.model.clone();
        let onnx = config.onnx.clone();
        let encoder = tokio::task::spawn_blocking(move || {
            Encoder::load(
                &model_cfg.dir,
                model_cfg.variant,
                model_cfg.max_tokens,
                &onnx,
            )
        })
        .await??;
        let model = ModelRef {
            name: "encoder".into(),
            version: config.model.version,
            variant: encoder.variant().dir_name().into(),
            provider: String::new(),
        };
        (LoadedEncoder::new(encoder, model, batch), None)
    };
    let source = match non_empty(&config.index.catalog) {
        Some(path) => CatalogSource::File(path),
        None if config.index.from_feature => {
            let resolver = match etcd {
                Some(e) => rankmesh_common::discovery::Resolver::watch(e, "feature"),
                None => rankmesh_common::discovery::Resolver::fixed(
                    "feature",
                    &config.index.feature_addrs,
                ),
            };
            // Only ScanItems goes through this client, and a scan streams without a
            // per-call deadline (a large catalog takes a while); the timeout is moot.
            CatalogSource::Feature(rankmesh_client::FeatureClient::new(
                resolver,
                std::time::Duration::from_secs(300),
            ))
        }
        None => CatalogSource::None,
    };
    let embedder = Arc::new(Embedder::new(
        encoder,
        config.index.hnsw,
        source,
        non_empty(&config.index.snapshot_dir),
    ));

    let readiness = Readiness::default();
    readiness.set_model(follow::ENCODER_SLOT, embedder.encoder().served());
    start_index(&embedder, &config.index, &readiness).await;
    let following = follower.map(|f| {
        tokio::spawn(f.run(EncoderTarget {
            embedder: Arc::clone(&embedder),
            readiness: readiness.clone(),
        }))
    });

    let routes = rankmesh_common::limited_routes!(
        EmbeddingServiceServer::new(EmbeddingApi::new(Arc::clone(&embedder))),
        config.server.max_message_bytes
    );
    serve_routes(INFO, &config, readiness, routes, listeners, shutdown).await?;
    if let Some(f) = following {
        f.abort();
    }
    Ok(())
}

/// Loads the snapshot when there is a valid one; otherwise builds from the catalog in
/// the background (Embed serves meanwhile; `/ready` waits for the index).
async fn start_index(embedder: &Arc<Embedder>, config: &IndexConfig, readiness: &Readiness) {
    if let Some(dir) = non_empty(&config.snapshot_dir)
        && dir.join("manifest.json").exists()
    {
        let (d, params) = (dir.clone(), config.hnsw);
        match tokio::task::spawn_blocking(move || VectorIndex::load(&d, params)).await {
            Ok(Ok(index)) => {
                let items = index.len();
                match embedder.set_index(index) {
                    Ok(()) => {
                        tracing::info!(items, dir = %dir.display(), "vector index loaded from snapshot");
                        return;
                    }
                    Err(e) => {
                        tracing::info!(reason = %e, "snapshot not usable; rebuilding from the catalog")
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "snapshot refused; rebuilding from the catalog")
            }
            Err(e) => {
                tracing::warn!(error = %e, "snapshot load failed; rebuilding from the catalog")
            }
        }
    }
    if embedder.has_source() {
        // The source (a feature replica) may still be starting: retry until it
        // answers. An empty catalog gives an empty, ready index.
        let embedder = Arc::clone(embedder);
        readiness.retry_until_ready("index", move || {
            let embedder = Arc::clone(&embedder);
            async move { embedder.build_index(Default::default()).await }
        });
    }
}
