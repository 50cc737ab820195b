//! The ranker as a model the replica follows in the registry.
//!
//! The follow loop itself (poll the stages, fetch the variant this replica should
//! run, verify and decrypt in memory, cache, refuse a bad version for good, keep
//! the last good model on any failure) is `rankmesh_artifact::follow`, shared with
//! the embedding service. What is the ranker's own is here: how a decrypted ranker
//! is loaded and warmed up ([`RankerLoader`]), and where it goes ([`RankerTarget`]):
//! production and canary swapped atomically (requests in flight finish on the old
//! ranker), and the replica's readiness.

use std::sync::Arc;
use std::time::Duration;

use rankmesh_artifact::fetch::{Fetcher, FollowError, Opened};
use rankmesh_artifact::follow::{Follower, Loader, Target};
use rankmesh_common::batcher::BatchConfig;
use rankmesh_common::onnx::OnnxConfig;
use rankmesh_common::server::Readiness;
use rankmesh_proto::pb::registry::v1 as pb;

use crate::ranker::Ranker;
use crate::search::{Canary, LoadedRanker, Rankers};

/// Readiness condition of a registry-managed ranker.
pub const RANKER_READY: &str = "ranker";
/// The `/ready` model slot of the canary ranker (the production one's is
/// [`RANKER_READY`]).
pub const CANARY_SLOT: &str = "ranker-canary";
/// How long a replica waits for its first ranker before serving without one.
const READY_WITHOUT_RANKER: Duration = Duration::from_secs(60);

/// Builds a ranker session from a decrypted artifact.
#[derive(Debug, Clone)]
pub struct RankerLoader {
    pub onnx: OnnxConfig,
    pub batch: BatchConfig,
}

impl Loader for RankerLoader {
    type Loaded = LoadedRanker;

    fn label(&self) -> &'static str {
        "ranker"
    }

    fn on_gpu(&self) -> bool {
        rankmesh_common::onnx::expects_gpu(&self.onnx)
    }

    async fn load(&self, opened: Opened) -> Result<LoadedRanker, FollowError> {
        load(opened, &self.onnx, self.batch).await
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
    let ranker = rankmesh_common::blocking::try_run(move || -> Result<Ranker, String> {
        let r = Ranker::from_bytes(&opened.model, version, &onnx).map_err(|e| e.to_string())?;
        // Warm up: the first run allocates; do it before taking traffic.
        let width = r.columns().len();
        r.score(vec![0.0; width * 4])
            .map_err(|e| format!("warm-up: {e}"))?;
        Ok(r)
    })
    .await
    .map_err(FollowError::Load)?;
    Ok(LoadedRanker::new(ranker, batch, &variant))
}

/// The replica's rankers, as the follow loop installs into them.
#[derive(Debug, Clone)]
pub struct RankerTarget {
    pub rankers: Arc<Rankers>,
    /// Condition [`RANKER_READY`] holds once a production ranker is in (or the
    /// registry has none, or `READY_WITHOUT_RANKER` passed: then answers are
    /// served in retrieval order rather than not at all).
    pub readiness: Readiness,
}

impl Target<LoadedRanker> for RankerTarget {
    fn production(&self) -> u64 {
        self.rankers
            .production
            .load()
            .as_deref()
            .map_or(0, |r| r.ranker.version())
    }

    async fn install(&self, model: LoadedRanker) -> Result<(), FollowError> {
        self.readiness.set_model(RANKER_READY, model.served());
        self.rankers.production.store(Some(Arc::new(model)));
        self.readiness.set(RANKER_READY, true);
        Ok(())
    }

    fn canary(&self) -> Option<(u64, u32)> {
        Some(
            self.rankers
                .canary
                .load()
                .as_deref()
                .map_or((0, 0), |c| (c.loaded.ranker.version(), c.percent)),
        )
    }

    fn install_canary(&self, model: LoadedRanker, percent: u32) {
        self.readiness.set_model(CANARY_SLOT, model.served());
        self.rankers.canary.store(Some(Arc::new(Canary {
            loaded: Arc::new(model),
            percent,
        })));
    }

    fn set_canary_percent(&self, percent: u32) {
        if let Some(c) = self.rankers.canary.load_full() {
            self.rankers.canary.store(Some(Arc::new(Canary {
                loaded: Arc::clone(&c.loaded),
                percent,
            })));
        }
    }

    fn retire_canary(&self) {
        self.readiness.clear_model(CANARY_SLOT);
        self.rankers.canary.store(None);
    }

    fn observed(&self, summary: Option<&pb::ModelSummary>) {
        match summary {
            // Never published, or nothing in production: nothing to wait for.
            None => self.readiness.set(RANKER_READY, true),
            Some(s) => {
                if s.production_version == 0 {
                    self.readiness.set(RANKER_READY, true);
                }
                self.rankers.stats.canary_changed(s.canary_version);
            }
        }
    }
}

/// Follows the ranker forever: the cached production ranker first (so a restart
/// while the registry is down serves the last model), then the registry.
pub async fn run(fetcher: Fetcher, loader: RankerLoader, target: RankerTarget) {
    if target.rankers.production.load().is_none() {
        target.readiness.set(RANKER_READY, false);
    }
    let follower = Follower::new(fetcher, loader);
    if let Err(e) = follower.install_cached(&target).await {
        tracing::info!(reason = %e, "no usable cached ranker");
    }
    let readiness = target.readiness.clone();
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
    follower.run(target).await;
}

/// Aborts the task when dropped (the follow loop never returns; this ties the
/// readiness timer to it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
