//! Follows the ranker's stages in the model registry and hot-swaps it.
//!
//! Every `poll_ms` the follower reads the model's stages. When the production or
//! canary version changes it fetches the artifact in the variant this replica
//! should run, verifies and decrypts it in memory ([`Fetcher`]), loads and warms
//! up a session, and swaps it in atomically: requests in flight finish on the old
//! ranker. Any failure keeps the last good ranker serving, and a version that fails
//! verification or loading is not fetched again. The production artifact is cached
//! encrypted, so a restart while the registry is down comes up with the last model.

use std::sync::Arc;
use std::time::Duration;

use rankmesh_common::batcher::BatchConfig;
use rankmesh_common::onnx::OnnxConfig;
use rankmesh_common::server::Readiness;
use rankmesh_model_registry::replica::{Fetcher, FollowError, Opened, Sealed};
use rankmesh_proto::pb::registry::v1 as pb;

use crate::ranker::Ranker;
use crate::search::{Canary, LoadedRanker, Rankers};

/// Cache slot of the production artifact.
const PRODUCTION: &str = "production";
/// Readiness condition of a registry-managed ranker.
pub const RANKER_READY: &str = "ranker";
/// How long a replica waits for its first ranker before serving without one.
const READY_WITHOUT_RANKER: Duration = Duration::from_secs(60);

/// Everything a follower needs.
pub struct Follower {
    pub fetcher: Fetcher,
    pub onnx: OnnxConfig,
    pub batch: BatchConfig,
    pub rankers: Arc<Rankers>,
    /// Condition [`RANKER_READY`] holds once a production ranker is in (or the
    /// registry has none, or [`READY_WITHOUT_RANKER`] passed: then answers are
    /// served in retrieval order rather than not at all).
    readiness: Readiness,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("fetcher", &self.fetcher)
            .finish_non_exhaustive()
    }
}

/// Loads a decrypted ranker, warms it up and wraps it in a batcher.
pub async fn load(
    opened: Opened,
    onnx: &OnnxConfig,
    batch: BatchConfig,
) -> Result<LoadedRanker, FollowError> {
    let onnx = onnx.clone();
    let version = opened.manifest.version;
    let variant = opened.manifest.variant.clone();
    let ranker = tokio::task::spawn_blocking(move || -> Result<Ranker, String> {
        let r = Ranker::from_bytes(&opened.model, version, &onnx).map_err(|e| e.to_string())?;
        // Warm up: the first run allocates; do it before taking traffic.
        let width = r.columns().len();
        r.score(vec![0.0; width * 4])
            .map_err(|e| format!("warm-up: {e}"))?;
        Ok(r)
    })
    .await
    .map_err(|e| FollowError::Load(e.to_string()))?
    .map_err(FollowError::Load)?;
    Ok(LoadedRanker::new(ranker, batch, &variant))
}

fn version_of(r: Option<&LoadedRanker>) -> u64 {
    r.map_or(0, |r| r.ranker.version())
}

impl Follower {
    pub fn new(
        fetcher: Fetcher,
        onnx: OnnxConfig,
        batch: BatchConfig,
        rankers: Arc<Rankers>,
        readiness: Readiness,
    ) -> Self {
        if rankers.production.load().is_none() {
            readiness.set(RANKER_READY, false);
        }
        Self {
            fetcher,
            onnx,
            batch,
            rankers,
            readiness,
        }
    }

    /// Runs forever: start from the cache, then follow the registry.
    pub async fn run(self) {
        if let Err(e) = self.load_cached().await {
            tracing::info!(reason = %e, "no usable cached ranker");
        }
        let readiness = self.readiness.clone();
        let give_up = tokio::spawn(async move {
            tokio::time::sleep(READY_WITHOUT_RANKER).await;
            if readiness.failing().iter().any(|c| c == RANKER_READY) {
                tracing::warn!(
                    "no ranker after {READY_WITHOUT_RANKER:?}; serving in retrieval order until one arrives"
                );
                readiness.set(RANKER_READY, true);
            }
        });
        let _give_up = AbortOnDrop(give_up);
        let period = Duration::from_millis(self.fetcher.source().poll_ms.max(100));
        loop {
            if let Err(e) = self.sync().await {
                metrics::counter!("rankmesh_model_swap_failures_total", "model" => "ranker", "reason" => e.reason())
                    .increment(1);
                tracing::warn!(
                    error = %e,
                    serving = version_of(self.rankers.production.load().as_deref()),
                    "ranker update failed; keeping the last good one"
                );
            }
            tokio::time::sleep(period).await;
        }
    }

    /// One check: brings production and canary in line with the registry.
    pub async fn sync(&self) -> Result<(), FollowError> {
        let Some(summary) = self.fetcher.summary().await? else {
            // Never published: nothing to wait for.
            self.readiness.set(RANKER_READY, true);
            return Ok(());
        };
        if summary.production_version == 0 {
            self.readiness.set(RANKER_READY, true);
        }
        self.rankers.stats.canary_changed(summary.canary_version);

        let want = summary.production_version;
        if want != 0
            && want != version_of(self.rankers.production.load().as_deref())
            && let Some((loaded, sealed)) = self.obtain(&summary, want).await?
        {
            self.rankers.production.store(Some(Arc::new(loaded)));
            metrics::gauge!("rankmesh_model_version", "model" => "ranker", "stage" => "production")
                .set(want as f64);
            tracing::info!(version = want, "production ranker swapped in");
            self.readiness.set(RANKER_READY, true);
            self.fetcher.cache(PRODUCTION, &sealed);
        }

        let want = summary.canary_version;
        let current = self.rankers.canary.load_full();
        match current.as_deref() {
            _ if want == 0 => {
                if current.is_some() {
                    tracing::info!("canary ranker retired");
                    metrics::gauge!("rankmesh_model_version", "model" => "ranker", "stage" => "canary")
                        .set(0.0);
                }
                self.rankers.canary.store(None);
            }
            Some(c) if c.loaded.ranker.version() == want => {
                if c.percent != summary.canary_percent {
                    self.rankers.canary.store(Some(Arc::new(Canary {
                        loaded: Arc::clone(&c.loaded),
                        percent: summary.canary_percent,
                    })));
                }
            }
            _ => {
                if let Some((loaded, _)) = self.obtain(&summary, want).await? {
                    self.rankers.canary.store(Some(Arc::new(Canary {
                        loaded: Arc::new(loaded),
                        percent: summary.canary_percent,
                    })));
                    metrics::gauge!("rankmesh_model_version", "model" => "ranker", "stage" => "canary")
                        .set(want as f64);
                    tracing::info!(
                        version = want,
                        percent = summary.canary_percent,
                        "canary ranker swapped in"
                    );
                }
            }
        }
        Ok(())
    }

    /// The ranker `version`, loaded and warmed up; `None` if refused before.
    async fn obtain(
        &self,
        summary: &pb::ModelSummary,
        version: u64,
    ) -> Result<Option<(LoadedRanker, Sealed)>, FollowError> {
        let on_gpu = rankmesh_common::onnx::expects_gpu(&self.onnx);
        self.fetcher
            .obtain(summary, version, on_gpu, |opened| {
                load(opened, &self.onnx, self.batch)
            })
            .await
    }

    async fn load_cached(&self) -> Result<(), FollowError> {
        let sealed = self.fetcher.load_cached(PRODUCTION)?;
        let opened = self.fetcher.open(&sealed)?;
        let version = opened.manifest.version;
        let loaded = load(opened, &self.onnx, self.batch).await?;
        self.rankers.production.store(Some(Arc::new(loaded)));
        metrics::gauge!("rankmesh_model_version", "model" => "ranker", "stage" => "production")
            .set(version as f64);
        self.readiness.set(RANKER_READY, true);
        tracing::info!(version, "ranker loaded from the local encrypted cache");
        Ok(())
    }
}

/// Aborts the task when dropped (the follower's loop never returns; this ties the
/// readiness timer to it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
