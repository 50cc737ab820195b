//! The follow loop every model-serving replica runs: keep what it serves in line
//! with the registry's stages, safely.
//!
//! A [`Follower`] owns a [`Fetcher`] and a [`Loader`] (how this replica turns
//! verified plaintext into something it can serve: an ONNX session, warmed up).
//! [`Follower::run`] then follows a [`Target`] (where loaded models go: an
//! `ArcSwap`, an index rebuild) forever:
//!
//! - every `poll_ms` it reads the model's stages;
//! - a new production version is fetched in the variant this replica should run,
//!   verified, decrypted in memory, loaded, installed, and its ciphertext cached (so
//!   a restart while the registry is down comes up with it);
//! - a target that runs canaries gets the canary version and share the same way;
//! - any failure keeps what is serving and is counted in
//!   `rankmesh_model_swap_failures_total{model, reason}`; a version that failed
//!   verification or loading is not fetched again ([`Fetcher::obtain`]).

use std::future::Future;
use std::time::Duration;

use rankmesh_proto::pb::registry::v1 as pb;

use crate::fetch::{Fetcher, FollowError, Opened, Sealed};

/// Cache slot of the production artifact.
const PRODUCTION: &str = "production";
/// First and longest wait between attempts while a replica has no model at all.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Turns a verified, decrypted artifact into a servable model.
pub trait Loader: Send + Sync {
    type Loaded: Send;

    /// The model's label in metrics and logs ("ranker", "encoder").
    fn label(&self) -> &'static str;

    /// Whether this replica runs its sessions on a GPU (picks the variant).
    fn on_gpu(&self) -> bool;

    /// Builds and warms up the model; an error refuses this version for good.
    fn load(
        &self,
        opened: Opened,
    ) -> impl Future<Output = Result<Self::Loaded, FollowError>> + Send;
}

/// Where a follower installs what it loaded.
pub trait Target<M>: Send + Sync {
    /// The production version serving now (0: none).
    fn production(&self) -> u64;

    /// Puts `model` in production. An error keeps the current one serving.
    fn install(&self, model: M) -> impl Future<Output = Result<(), FollowError>> + Send;

    /// The canary serving now as (version, percent); `None` when this target does
    /// not run canaries, and then the registry's canary is ignored.
    fn canary(&self) -> Option<(u64, u32)> {
        None
    }

    /// Puts `model` in as the canary at `percent`.
    fn install_canary(&self, model: M, percent: u32) {
        let _ = (model, percent);
    }

    /// Changes the running canary's share.
    fn set_canary_percent(&self, percent: u32) {
        let _ = percent;
    }

    /// Retires the canary.
    fn retire_canary(&self) {}

    /// What the registry said at the start of each check, before anything is
    /// fetched (`None`: the model was never published).
    fn observed(&self, summary: Option<&pb::ModelSummary>) {
        let _ = summary;
    }
}

/// Fetches, loads and follows one model.
pub struct Follower<L> {
    pub fetcher: Fetcher,
    pub loader: L,
}

impl<L> std::fmt::Debug for Follower<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("fetcher", &self.fetcher)
            .finish_non_exhaustive()
    }
}

impl<L: Loader> Follower<L> {
    pub fn new(fetcher: Fetcher, loader: L) -> Self {
        Self { fetcher, loader }
    }

    /// The production model last cached on this replica, verified and loaded.
    pub async fn cached(&self) -> Result<L::Loaded, FollowError> {
        let sealed = self.fetcher.load_cached(PRODUCTION)?;
        let opened = self.fetcher.open(&sealed)?;
        let version = opened.manifest.version;
        let loaded = self.loader.load(opened).await?;
        tracing::info!(
            model = self.loader.label(),
            version,
            "loaded from the local encrypted cache"
        );
        Ok(loaded)
    }

    /// A first production model for a replica that cannot serve without one: from
    /// the cache, else from the registry, retried (backing off) until one loads.
    pub async fn first(&self) -> L::Loaded {
        match self.cached().await {
            Ok(loaded) => return loaded,
            Err(e) => {
                tracing::info!(model = self.loader.label(), reason = %e, "no usable cached model")
            }
        }
        let mut wait = FIRST_RETRY;
        loop {
            match self.production_if_not(0).await {
                Ok(Some((loaded, sealed))) => {
                    self.fetcher.cache(PRODUCTION, &sealed);
                    return loaded;
                }
                Ok(None) => {
                    tracing::warn!(model = self.loader.label(), "no production version yet");
                }
                Err(e) => {
                    tracing::warn!(model = self.loader.label(), error = %e, "could not get the model from the registry");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RETRY);
        }
    }

    /// Installs the cached production model into `target`, if there is one.
    pub async fn install_cached(&self, target: &impl Target<L::Loaded>) -> Result<(), FollowError> {
        let loaded = self.cached().await?;
        target.install(loaded).await?;
        let version = target.production();
        self.gauge("production", version);
        Ok(())
    }

    /// Follows the registry forever, installing into `target`. Starts by checking
    /// at once; then every `poll_ms`.
    pub async fn run(self, target: impl Target<L::Loaded>) {
        let period = Duration::from_millis(self.fetcher.source().poll_ms.max(100));
        loop {
            if let Err(e) = self.sync(&target).await {
                metrics::counter!(
                    "rankmesh_model_swap_failures_total",
                    "model" => self.loader.label(),
                    "reason" => e.reason()
                )
                .increment(1);
                tracing::warn!(
                    model = self.loader.label(),
                    error = %e,
                    serving = target.production(),
                    "update failed; keeping the last good model"
                );
            }
            tokio::time::sleep(period).await;
        }
    }

    /// One check: brings the target's production (and canary) in line with the
    /// registry.
    pub async fn sync(&self, target: &impl Target<L::Loaded>) -> Result<(), FollowError> {
        let summary = self.fetcher.summary().await?;
        target.observed(summary.as_ref());
        let Some(summary) = summary else {
            return Ok(());
        };

        let want = summary.production_version;
        if want != 0
            && want != target.production()
            && let Some((loaded, sealed)) = self.obtain(&summary, want).await?
        {
            target.install(loaded).await?;
            self.gauge("production", want);
            tracing::info!(
                model = self.loader.label(),
                version = want,
                "production swapped in"
            );
            self.fetcher.cache(PRODUCTION, &sealed);
        }

        let Some((serving, percent)) = target.canary() else {
            return Ok(());
        };
        let want = summary.canary_version;
        if want == 0 {
            if serving != 0 {
                target.retire_canary();
                self.gauge("canary", 0);
                tracing::info!(model = self.loader.label(), "canary retired");
            }
        } else if want == serving {
            if percent != summary.canary_percent {
                target.set_canary_percent(summary.canary_percent);
            }
        } else if let Some((loaded, _)) = self.obtain(&summary, want).await? {
            target.install_canary(loaded, summary.canary_percent);
            self.gauge("canary", want);
            tracing::info!(
                model = self.loader.label(),
                version = want,
                percent = summary.canary_percent,
                "canary swapped in"
            );
        }
        Ok(())
    }

    /// The production model if its version differs from `serving`; `None` when
    /// there is nothing new (or it was refused before).
    async fn production_if_not(
        &self,
        serving: u64,
    ) -> Result<Option<(L::Loaded, Sealed)>, FollowError> {
        let Some(summary) = self.fetcher.summary().await? else {
            return Ok(None);
        };
        let version = summary.production_version;
        if version == 0 || version == serving {
            return Ok(None);
        }
        self.obtain(&summary, version).await
    }

    async fn obtain(
        &self,
        summary: &pb::ModelSummary,
        version: u64,
    ) -> Result<Option<(L::Loaded, Sealed)>, FollowError> {
        self.fetcher
            .obtain(summary, version, self.loader.on_gpu(), |opened| {
                self.loader.load(opened)
            })
            .await
    }

    fn gauge(&self, stage: &'static str, version: u64) {
        metrics::gauge!("rankmesh_model_version", "model" => self.loader.label(), "stage" => stage)
            .set(version as f64);
    }
}
