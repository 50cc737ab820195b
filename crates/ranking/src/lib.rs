//! The ranking service: the entry point storefront backends call (Search, Recommend),
//! and the home of the rollout controller.
//!
//! # Layout
//! - [`search`]: the request path (retrieval, features, ranker, display).
//! - [`fusion`]: reciprocal-rank fusion and the retrieval columns ranking adds to
//!   every feature row.
//! - [`ranker`]: the ONNX ranker and its schema contract.
//! - [`follow`]: follows the ranker's production and canary versions in the model
//!   registry and hot-swaps them (verified, decrypted in memory, warmed up).
//! - [`rollout`]: canary outcome counts, their reports in etcd, and the controller.
//! - [`service`]: the gRPC API.
//!
//! Replicas elect a leader for the `rollout` role in etcd; the leader runs the
//! canary controller, which promotes or rolls back the ranker's canary.
//!
//! Owns the request path and the rollout controller. Must not import another
//! service crate (the registry server included): it calls them over the SDK and
//! follows the ranker through `rankmesh-artifact`.

pub mod follow;
pub mod fusion;
pub mod ranker;
pub mod rollout;
pub mod search;
pub mod service;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rankmesh_common::batcher::BatchConfig;
use rankmesh_common::config::ConfigError;
use rankmesh_common::discovery::Resolver;
use rankmesh_common::election::{Candidate, lead_forever};
use rankmesh_common::onnx::OnnxConfig;
use rankmesh_common::scaffold::{ScaffoldError, connect_etcd};
use rankmesh_common::server::{Listeners, Readiness, ServiceInfo, instance_id, serve};
use rankmesh_proto::pb::ranking::v1::ranking_service_server::RankingServiceServer;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ranker::Ranker;
use crate::rollout::{Controller, RolloutPolicy};
use crate::search::{LoadedRanker, Orchestrator, Rankers, SearchConfig};
use crate::service::RankingApi;
use rankmesh_artifact::fetch::{Fetcher, RegistrySource};
use rankmesh_client::{EmbeddingClient, FeatureClient, RegistryClient};
use rankmesh_common::admission::{Admission, AdmissionConfig};
use rankmesh_common::secret;

/// Its name in discovery and metrics, and the gRPC service it serves.
pub const INFO: ServiceInfo = ServiceInfo::new("ranking", &["rankmesh.ranking.v1.RankingService"]);
/// Deadline of one registry call (listing stages, a stage change).
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);
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
        /// When the rollout leader promotes or rolls back a canary ranker.
        pub rollout: RolloutPolicy,
        /// Admission of Search, Recommend and Featurize calls: a concurrency limit
        /// that follows latency, so past saturation the excess is refused at once
        /// here, at the edge, before any work is spent downstream.
        pub admission: AdmissionConfig,
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
    pub registry: RegistrySource,
}

impl Default for RankerConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            version: 1,
            registry: RegistrySource {
                poll_ms: 1_000,
                variant: "auto".into(),
                ..RegistrySource::default()
            },
        }
    }
}

impl Config {
    fn validate_service(&self) -> Result<(), ConfigError> {
        self.onnx.validate("onnx")?;
        self.batch.validate("batch")?;
        self.admission.validate("admission")?;
        if !(1..=rankmesh_proto::limits::MAX_CANDIDATES).contains(&self.search.candidates) {
            return Err(rankmesh_common::config::invalid(
                "search.candidates",
                self.search.candidates,
                "must be within 1..=1000",
            ));
        }
        if let Some((key, value, why)) = self.search.fusion.invalid() {
            return Err(rankmesh_common::config::invalid(key, value, why));
        }
        let token = &self.rollout.admin_token_file;
        secret::read_optional(token).map_err(|e| {
            rankmesh_common::config::invalid(
                "rollout.admin_token_file",
                token.display().to_string(),
                &e.to_string(),
            )
        })?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Scaffold(#[from] ScaffoldError),
    #[error("ranker: {0}")]
    Ranker(#[from] ranker::RankerError),
    #[error("onnx: {0}")]
    Onnx(#[from] rankmesh_common::onnx::OnnxError),
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
        let ranker =
            tokio::task::spawn_blocking(move || Ranker::load(&dir, version, &onnx)).await??;
        Ok(LoadedRanker::new(ranker, batch, "fp32"))
    })
}

/// Serves until `shutdown` resolves, then hands over leadership, deregisters and
/// drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    // Before anything else: a replica told to require CUDA that cannot have it
    // refuses to start here, with the reason. (A replica with no ranker to run
    // needs no ONNX Runtime at all, unless it was told to require the GPU.)
    let runs_models = !config.ranker.dir.as_os_str().is_empty()
        || config.ranker.registry.enabled()
        || config.onnx.device == rankmesh_common::onnx::Device::Cuda;
    if runs_models {
        let provider = rankmesh_common::onnx::resolve_device(&config.onnx)?;
        tracing::info!(device = ?config.onnx.device, provider = provider.as_str(), "ONNX Runtime provider");
    }
    let etcd = connect_etcd(&config.etcd).await?;
    let grpc_addr = listeners.grpc_addr().map_err(ScaffoldError::Serve)?;
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
    let readiness = Readiness::default();
    if let Some(r) = &ranker {
        readiness.set_model(follow::RANKER_READY, r.served());
    }
    let rankers = Arc::new(Rankers::new(ranker));
    let registry = || RegistryClient::new(resolver("registry", &[]), REGISTRY_TIMEOUT);
    let follower = if config.ranker.registry.enabled() {
        let fetcher =
            Fetcher::new(config.ranker.registry.clone(), registry()).map_err(Error::Follow)?;
        let loader = follow::RankerLoader {
            onnx: config.onnx.clone(),
            batch: ranker_batch(&config),
        };
        let target = follow::RankerTarget {
            rankers: Arc::clone(&rankers),
            readiness: readiness.clone(),
        };
        Some(tokio::spawn(follow::run(fetcher, loader, target)))
    } else {
        None
    };
    let orchestrator = Arc::new(Orchestrator {
        // Each call's deadline is a share of the request's (see `search`).
        embedding: EmbeddingClient::new(
            resolver("embedding", &config.upstream.embedding),
            Duration::from_millis(config.search.default_timeout_ms),
        ),
        feature: FeatureClient::new(
            resolver("feature", &config.upstream.feature),
            Duration::from_millis(config.search.default_timeout_ms),
        ),
        rankers: Arc::clone(&rankers),
        config: config.search.clone(),
        admission: Admission::new(config.admission),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let (leading_tx, _leading_rx) = watch::channel(false);
    let model = config.ranker.registry.model.clone();
    let admin_token = secret::read_optional(&config.rollout.admin_token_file)
        .map_err(|e| Error::Follow(format!("rollout.admin_token_file: {e}")))?;
    let controller = (config.ranker.registry.enabled())
        .then_some(etcd.as_ref())
        .flatten()
        .map(|etcd| {
            Arc::new(Controller {
                registry: registry(),
                etcd: etcd.clone(),
                model: model.clone(),
                policy: config.rollout.clone(),
                admin_token: admin_token.clone(),
            })
        });
    let reporter = match (&etcd, &controller) {
        (Some(etcd), Some(_)) => Some(tokio::spawn(rollout::report_forever(
            etcd.clone(),
            model,
            identity.clone(),
            Arc::clone(&rankers.stats),
            Duration::from_millis(config.rollout.tick_ms.max(100)),
            stop_rx.clone(),
        ))),
        _ => None,
    };
    let election = etcd.clone().map(|etcd| {
        let candidate = Candidate::new(etcd, ROLLOUT_ROLE, &identity);
        tokio::spawn(lead_forever(
            candidate,
            leading_tx,
            stop_rx,
            move |leadership| {
                tracing::info!(fence = leadership.revision(), "leading the rollout role");
                let controller = controller.clone();
                async move {
                    match controller {
                        Some(c) => c.run().await,
                        // Without a registry-managed ranker there is nothing to roll out;
                        // leadership is still held (visible in etcd and `rankmesh_leader`).
                        None => std::future::pending::<()>().await,
                    }
                }
            },
        ))
    });

    let routes = rankmesh_common::limited_routes!(
        RankingServiceServer::new(RankingApi::new(orchestrator)),
        config.server.max_message_bytes
    );
    let stop = async {
        shutdown.await;
        // Hand over leadership first, so the next leader starts while we drain.
        stop_tx.send_replace(true);
    };
    let served = serve(
        INFO,
        &config.server,
        etcd,
        readiness,
        routes,
        listeners,
        stop,
    )
    .await;
    if let Some(task) = election {
        let _ = task.await;
    }
    if let Some(task) = reporter {
        let _ = task.await;
    }
    if let Some(f) = follower {
        f.abort();
    }
    served.map_err(ScaffoldError::from)?;
    Ok(())
}
