//! The encoder as a model the replica follows in the registry.
//!
//! The follow loop is `rankmesh_artifact::follow`, shared with the ranking service.
//! What is the encoder's own: a published encoder carries its tokenizer as a
//! sidecar, and is loaded and warmed up with it ([`EncoderLoader`]); a new version
//! goes in through [`Embedder::swap_encoder`], which re-embeds the catalog with it
//! before swapping encoder and index together ([`EncoderTarget`]). At startup the
//! encoder comes from the local encrypted cache, else from the registry, retried
//! until it answers (`Follower::first`): the service cannot embed without one.
//! Encoders are not canaried: a canary encoder would need its own index, and the
//! ranker's canary covers ranking quality.

use std::sync::Arc;

use rankmesh_artifact::fetch::{FollowError, Opened};
use rankmesh_artifact::follow::{Loader, Target};
use rankmesh_common::batcher::BatchConfig;
use rankmesh_common::onnx::OnnxConfig;
use rankmesh_common::server::Readiness;
use rankmesh_proto::pb::common::v1::ModelRef;

use crate::encoder::{Encoder, Variant};
use crate::service::{Embedder, LoadedEncoder};

/// The `/ready` model slot of the encoder.
pub const ENCODER_SLOT: &str = "encoder";

/// The tokenizer sidecar every published encoder carries.
pub const TOKENIZER: &str = "tokenizer.json";

/// Builds an encoder session (with its tokenizer) from a decrypted artifact.
#[derive(Debug, Clone)]
pub struct EncoderLoader {
    pub onnx: OnnxConfig,
    pub batch: BatchConfig,
    pub max_tokens: usize,
}

impl Loader for EncoderLoader {
    type Loaded = LoadedEncoder;

    fn label(&self) -> &'static str {
        "encoder"
    }

    fn on_gpu(&self) -> bool {
        rankmesh_common::onnx::expects_gpu(&self.onnx)
    }

    async fn load(&self, opened: Opened) -> Result<LoadedEncoder, FollowError> {
        load(opened, self.max_tokens, &self.onnx, self.batch).await
    }
}

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
        provider: String::new(),
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
    let encoder = rankmesh_common::blocking::try_run(move || -> Result<Encoder, String> {
        let e = Encoder::from_bytes(&opened.model, &tokenizer, variant, max_tokens, &onnx)
            .map_err(|e| e.to_string())?;
        // Warm up before taking traffic: the first run allocates.
        e.encode(&["warm up".to_owned()])
            .map_err(|e| format!("warm-up: {e}"))?;
        Ok(e)
    })
    .await
    .map_err(FollowError::Load)?;
    Ok(LoadedEncoder::new(encoder, model, batch))
}

/// The embedder, as the follow loop installs new encoders into it.
#[derive(Debug, Clone)]
pub struct EncoderTarget {
    pub embedder: Arc<Embedder>,
    /// Where `/ready` reports the encoder that serves.
    pub readiness: Readiness,
}

impl Target<LoadedEncoder> for EncoderTarget {
    fn production(&self) -> u64 {
        self.embedder.model().version
    }

    async fn install(&self, model: LoadedEncoder) -> Result<(), FollowError> {
        let version = model.model.version;
        let served = model.served();
        let items = self
            .embedder
            .swap_encoder(model)
            .await
            .map_err(|e| FollowError::Swap(format!("re-embedding the catalog: {e}")))?;
        tracing::info!(
            version,
            items,
            "encoder swapped in with a re-embedded index"
        );
        self.readiness.set_model(ENCODER_SLOT, served);
        Ok(())
    }
}
