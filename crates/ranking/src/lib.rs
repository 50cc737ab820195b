//! The ranking service: the entry point storefront backends call (Search, Recommend),
//! and the home of the rollout controller.
//!
//! # Layout
//! - [`search`]: the request path (retrieval, features, ranker, display).
//! - [`ranker`]: the ONNX ranker and its schema contract.
//! - [`follow`]: follows the ranker's production version in the model registry and
//!   hot-swaps it (verified, decrypted in memory, warmed up).
//! - [`service`]: the gRPC API and deadline parsing.
//!
//! Replicas elect a leader for the `rollout` role in etcd; the leader will run the
//! canary controller once the model registry exists (until then it holds the role).

pub mod follow;
pub mod ranker;
pub mod search;
pub mod service;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use rankmesh_common::batcher::{BatchConfig, Batcher};
use rankmesh_common::config::ConfigError;
use rankmesh_common::discovery::Resolver;
use rankmesh_common::election::{Candidate, lead_forever};
use rankmesh_common::onnx::OnnxConfig;
use rankmesh_common::server::{Listeners, Readiness, ServiceInfo, instance_id, serve};
use rankmesh_common::service::{ScaffoldError, connect_etcd};
use rankmesh_proto::pb::ranking::v1::ranking_service_server::RankingServiceServer;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ranker::Ranker;
use crate::search::{LoadedRanker, Orchestrator, SearchConfig};
use crate::service::RankingApi;
use rankmesh_client::upstream::Upstream;

/// Name in discovery and metrics.
pub const SERVICE: &str = "ranking";
/// Fully qualified gRPC service name.
pub const GRPC_SERVICE: &str = "rankmesh.ranking.v1.RankingService";
/// Election role of the replica that runs the rollout controller.
pub const ROLLOUT_ROLE: &str = "rollout";

rankmesh_common::service_config! {
    /// Configuration of the ranking service.
    pub struct Config {
        /// Where embedding and feature replicas are when etcd is not configured.
        pub upstream: UpstreamConfig,
        /// Candidate counts and default deadline.
        pub search: SearchConfig,
        /// The ONNX ranker; without one, answers are in retrieval order.
        pub ranker: RankerConfig,
        /// ONNX Runtime for the ranker.
        pub onnx: OnnxConfig,
        /// Dynamic batching of ranker calls (rows).
        pub batch: BatchConfig,
    }
}

/// Static upstream addresses (used only without etcd).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    pub embedding: Vec<String>,
    pub feature: Vec<String>,
}

/// The ranker to load (the model registry replaces this with a fetched artifact).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankerConfig {
    /// Folder with `model.onnx` from `scripts/train-ranker`; empty: no ranker.
    pub dir: PathBuf,
    /// Version reported in replies.
    pub version: u64,
    /// Follow a model in the registry instead (or after) `dir`.
    pub registry: follow::RegistrySource,
}

impl Default for RankerConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            version: 1,
            registry: follow::RegistrySource {
                poll_ms: 1_000,
                ..follow::RegistrySource::default()
            },
        }
    }
}

impl Config {
    fn validate_service(&self) -> Result<(), ConfigError> {
        self.onnx.validate("onnx")?;
        self.batch.validate("batch")?;
        if !(1..=rankmesh_proto::limits::MAX_CANDIDATES).contains(&self.search.candidates) {
            return Err(rankmesh_common::config::invalid(
                "search.candidates",
                self.search.candidates,
                "must be within 1..=1000",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Scaffold(#[from] ScaffoldError),
    #[error("ranker: {0}")]
    Ranker(#[from] ranker::RankerError),
    #[error("ranker loading task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("ranker.registry: {0}")]
    Follow(String),
}

/// Ranker batching: one worker per session, and room for a full candidate set.
fn ranker_batch(config: &Config) -> BatchConfig {
    BatchConfig {
        workers: config.onnx.sessions,
        max_batch: config
            .batch
            .max_batch
            .max(rankmesh_proto::limits::MAX_CANDIDATES as usize),
        ..config.batch
    }
}

fn load_ranker(
    config: &Config,
) -> Option<impl Future<Output = Result<LoadedRanker, Error>> + use<>> {
    if config.ranker.dir.as_os_str().is_empty() {
        return None;
    }
    let dir = config.ranker.dir.clone();
    let version = config.ranker.version;
    let onnx = config.onnx.clone();
    let batch = ranker_batch(config);
    Some(async move {
        let ranker = Arc::new(
            tokio::task::spawn_blocking(move || Ranker::load(&dir, version, &onnx)).await??,
        );
        let r = Arc::clone(&ranker);
        let batcher = Batcher::new("ranker", batch, move |rows: Vec<Vec<f32>>| {
            r.score(rows.concat()).map_err(|e| e.to_string())
        });
        Ok(LoadedRanker { ranker, batcher })
    })
}

/// Serves until `shutdown` resolves, then hands over leadership, deregisters and
/// drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let etcd = connect_etcd(&config.etcd)
        .await
        .map_err(ScaffoldError::from)?;
    let grpc_addr = listeners
        .grpc_addr()
        .map_err(|e| ScaffoldError::Serve(rankmesh_common::server::ServeError::Admin(e)))?;
    let identity = instance_id(&config.server, grpc_addr);

    let ranker = match load_ranker(&config) {
        Some(f) => Some(f.await?),
        None => {
            tracing::warn!("no ranker configured (ranker.dir); answers use retrieval order");
            None
        }
    };
    let resolver = |service: &str, fixed: &[String]| match &etcd {
        Some(e) => Resolver::watch(e.clone(), service),
        None => Resolver::fixed(service, fixed),
    };
    let slot = Arc::new(arc_swap::ArcSwapOption::from(ranker.map(Arc::new)));
    let follower = if config.ranker.registry.model.is_empty() {
        None
    } else {
        let src = config.ranker.registry.clone();
        let keys = rankmesh_model_registry::envelope::MasterKeys::from_hex(
            &src.master_keys,
            src.master_keys.keys().next().map_or("", String::as_str),
        )
        .map_err(|e| Error::Follow(e.to_string()))?;
        let follower = follow::Follower {
            registry: Upstream::new("registry", resolver("registry", &[])),
            verify_key: follow::verify_key(&src.verify_key).map_err(Error::Follow)?,
            source: src,
            keys,
            onnx: config.onnx.clone(),
            batch: ranker_batch(&config),
            slot: Arc::clone(&slot),
            refused: std::sync::Mutex::new(None),
        };
        Some(tokio::spawn(follower.run()))
    };
    let orchestrator = Arc::new(Orchestrator {
        embedding: Upstream::new(
            "embedding",
            resolver("embedding", &config.upstream.embedding),
        ),
        feature: Upstream::new("feature", resolver("feature", &config.upstream.feature)),
        ranker: slot,
        config: config.search.clone(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let (leading_tx, _leading_rx) = watch::channel(false);
    let election = etcd.clone().map(|etcd| {
        let candidate = Candidate::new(etcd, ROLLOUT_ROLE, &identity);
        tokio::spawn(lead_forever(candidate, leading_tx, stop_rx, |leadership| {
            tracing::info!(fence = leadership.revision(), "leading the rollout role");
            // The rollout controller needs the model registry; until then leadership
            // is held (and visible in etcd and `rankmesh_leader`) without work.
            std::future::pending::<()>()
        }))
    });

    let api = RankingServiceServer::new(RankingApi::new(orchestrator))
        .max_decoding_message_size(config.server.max_message_bytes)
        .max_encoding_message_size(config.server.max_message_bytes);
    let info = ServiceInfo {
        name: SERVICE,
        grpc_services: vec![GRPC_SERVICE],
    };
    let stop = async {
        shutdown.await;
        // Hand over leadership first, so the next leader starts while we drain.
        stop_tx.send_replace(true);
    };
    let served = serve(
        info,
        &config.server,
        etcd,
        Readiness::default(),
        tonic::service::Routes::new(api),
        listeners,
        stop,
    )
    .await;
    if let Some(task) = election {
        let _ = task.await;
    }
    if let Some(f) = follower {
        f.abort();
    }
    served.map_err(ScaffoldError::from)?;
    Ok(())
}
