//! Follows the encoder's production version in the model registry.
//!
//! At startup the encoder comes from the local encrypted cache, else from the
//! registry (retried until it answers). Afterwards every `poll_ms` the follower
//! checks the production version; a new one is fetched in the variant this replica
//! should run (INT8 on CPU, FP32 on GPU), verified and decrypted in memory with its
//! tokenizer, warmed up, and handed to [`Embedder::swap_encoder`], which re-embeds
//! the catalog with it before swapping encoder and index together. Failures keep
//! the current encoder; a version that fails verification or loading is not
//! fetched again. Encoders are not canaried: a canary encoder would need its own
//! index, and the ranker's canary covers ranking quality.

use std::sync::Arc;
use std::time::Duration;

use rankmesh_common::batcher::BatchConfig;
use rankmesh_common::onnx::OnnxConfig;
use rankmesh_model_registry::replica::{Fetcher, FollowError, Opened, Sealed};
use rankmesh_proto::pb::common::v1::ModelRef;

use crate::encoder::{Encoder, Variant};
use crate::service::{Embedder, LoadedEncoder};

/// Cache slot of the production encoder.
const PRODUCTION: &str = "production";
/// The tokenizer sidecar every published encoder carries.
pub const TOKENIZER: &str = "tokenizer.json";

/// Loads a decrypted encoder with its tokenizer and warms it up.
pub async fn load(
    opened: Opened,
    max_tokens: usize,
    onnx: &OnnxConfig,
    batch: BatchConfig,
) -> Result<LoadedEncoder, FollowError> {
    let m = &opened.manifest;
    let model = ModelRef {
        name: m.name.clone(),
        version: m.version,
        variant: m.variant.clone(),
    };
    let variant = if m.variant == "int8" {
        Variant::Int8
    } else {
        Variant::Fp32
    };
    let Some(tokenizer) = opened.sidecars.get(TOKENIZER).cloned() else {
        return Err(FollowError::Load(format!(
            "{} v{} has no {TOKENIZER} sidecar",
            m.name, m.version
        )));
    };
    let onnx = onnx.clone();
    let encoder = tokio::task::spawn_blocking(move || -> Result<Encoder, String> {
        let e = Encoder::from_bytes(&opened.model, &tokenizer, variant, max_tokens, &onnx)
            .map_err(|e| e.to_string())?;
        // Warm up before taking traffic: the first run allocates.
        e.encode(&["warm up".to_owned()])
            .map_err(|e| format!("warm-up: {e}"))?;
        Ok(e)
    })
    .await
    .map_err(|e| FollowError::Load(e.to_string()))?
    .map_err(FollowError::Load)?;
    Ok(LoadedEncoder::new(encoder, model, batch))
}

/// Fetches and follows the encoder.
pub struct EncoderFollower {
    pub fetcher: Fetcher,
    pub onnx: OnnxConfig,
    pub batch: BatchConfig,
    pub max_tokens: usize,
}

impl std::fmt::Debug for EncoderFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderFollower")
            .field("fetcher", &self.fetcher)
            .finish_non_exhaustive()
    }
}

impl EncoderFollower {
    pub fn new(fetcher: Fetcher, onnx: OnnxConfig, batch: BatchConfig, max_tokens: usize) -> Self {
        Self {
            fetcher,
            onnx,
            batch,
            max_tokens,
        }
    }

    /// The first encoder: from the cache, else from the registry, retried until one
    /// loads (the service cannot embed anything without it).
    pub async fn initial(&self) -> LoadedEncoder {
        match self.load_cached().await {
            Ok(e) => return e,
            Err(e) => tracing::info!(reason = %e, "no usable cached encoder"),
        }
        let mut wait = Duration::from_millis(200);
        loop {
            match self.obtain(0).await {
                Ok(Some((e, sealed))) => {
                    self.fetcher.cache(PRODUCTION, &sealed);
                    return e;
                }
                Ok(None) => tracing::warn!("no production encoder in the registry yet"),
                Err(e) => tracing::warn!(error = %e, "could not get the encoder from the registry"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    async fn load_cached(&self) -> Result<LoadedEncoder, FollowError> {
        let sealed = self.fetcher.load_cached(PRODUCTION)?;
        let opened = self.fetcher.open(&sealed)?;
        let e = load(opened, self.max_tokens, &self.onnx, self.batch).await?;
        tracing::info!(
            version = e.model.version,
            "encoder loaded from the local encrypted cache"
        );
        Ok(e)
    }

    /// Follows the production version forever.
    pub async fn run(self, embedder: Arc<Embedder>) {
        let period = Duration::from_millis(self.fetcher.source().poll_ms.max(100));
        loop {
            tokio::time::sleep(period).await;
            let serving = embedder.model().version;
            match self.obtain(serving).await {
                Ok(None) => {}
                Ok(Some((e, sealed))) => {
                    let version = e.model.version;
                    match embedder.swap_encoder(e).await {
                        Ok(items) => {
                            tracing::info!(
                                version,
                                items,
                                "encoder swapped in with a re-embedded index"
                            );
                            self.fetcher.cache(PRODUCTION, &sealed);
                        }
                        Err(e) => {
                            metrics::counter!("rankmesh_model_swap_failures_total", "model" => "encoder", "reason" => "reindex").increment(1);
                            tracing::warn!(error = %e, serving, "encoder swap failed; keeping the current one");
                        }
                    }
                }
                Err(e) => {
                    metrics::counter!("rankmesh_model_swap_failures_total", "model" => "encoder", "reason" => e.reason()).increment(1);
                    tracing::warn!(error = %e, serving, "encoder update failed; keeping the current one");
                }
            }
        }
    }

    /// The production encoder if its version differs from `serving`; `None` when
    /// there is nothing new (or it was refused before).
    async fn obtain(&self, serving: u64) -> Result<Option<(LoadedEncoder, Sealed)>, FollowError> {
        let Some(summary) = self.fetcher.summary().await? else {
            return Ok(None);
        };
        let version = summary.production_version;
        if version == 0 || version == serving {
            return Ok(None);
        }
        let on_gpu = rankmesh_common::onnx::expects_gpu(&self.onnx);
        self.fetcher
            .obtain(&summary, version, on_gpu, |opened| {
                load(opened, self.max_tokens, &self.onnx, self.batch)
            })
            .await
    }
}
