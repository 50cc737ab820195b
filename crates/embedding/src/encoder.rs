//! The sentence encoder: HF tokenizer + ONNX graph whose output `sentence_embedding`
//! is already mean-pooled and L2-normalised (see `scripts/export-encoder`).
//!
//! The shipped tokenizer.json pads every input to 128 tokens and truncates at 128;
//! here padding is to the longest text of each batch (short queries stay cheap) and
//! truncation is at `max_tokens` (256), reported per text.

use std::path::{Path, PathBuf};

use ort::value::Tensor;
use rankmesh_common::onnx::{OnnxConfig, OnnxError, Provider, SessionPool};
use serde::{Deserialize, Serialize};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The graph's output name.
pub const OUTPUT: &str = "sentence_embedding";
const INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

/// Which artifact of the model to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// INT8 on CPU (about 3-4x smaller, faster, cosine ~0.99 to FP32), FP32 on GPU.
    Auto,
    Fp32,
    Int8,
}

impl Variant {
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::Fp32 | Self::Auto => "fp32",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("model file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("model does not match the encoder signature: {0}")]
    Signature(String),
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("inference failed: {0}")]
    Inference(String),
}

/// One embedded text.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vector: Vec<f32>,
    /// The text had more than `max_tokens` tokens; the tail was ignored.
    pub truncated: bool,
}

/// A loaded encoder. Shared between blocking threads (`Sync`): the tokenizer is
/// read-only and sessions come from the pool one call at a time.
#[derive(Debug)]
pub struct Encoder {
    tokenizer: TextTokenizer,
    pool: SessionPool,
    dim: usize,
    variant: Variant,
}

impl Encoder {
    /// Loads `<dir>/<variant>/model.onnx` and its tokenizer.json. `Auto` picks INT8
    /// unless the session lands on CUDA.
    pub fn load(
        dir: &Path,
        variant: Variant,
        max_tokens: usize,
        onnx: &OnnxConfig,
    ) -> Result<Self, EncoderError> {
        let pick = |v: Variant| dir.join(v.dir_name());
        let first = match variant {
            Variant::Auto
                if cfg!(feature = "cuda") && onnx.device != rankmesh_common::onnx::Device::Cpu =>
            {
                Variant::Fp32
            }
            Variant::Auto => Variant::Int8,
            v => v,
        };
        let model_path = pick(first).join("model.onnx");
        let model = std::fs::read(&model_path).map_err(|source| EncoderError::Read {
            path: model_path.clone(),
            source,
        })?;
        let tokenizer_path = pick(first).join("tokenizer.json");
        let tokenizer_json =
            std::fs::read(&tokenizer_path).map_err(|source| EncoderError::Read {
                path: tokenizer_path.clone(),
                source,
            })?;
        Self::from_bytes(&model, &tokenizer_json, first, max_tokens, onnx).map_err(|e| match e {
            EncoderError::Tokenizer { message, .. } => EncoderError::Tokenizer {
                path: tokenizer_path,
                message,
            },
            other => other,
        })
    }

    /// Builds an encoder from artifacts held in memory (the registry path: models
    /// are decrypted in memory and never written to disk).
    pub fn from_bytes(
        model: &[u8],
        tokenizer_json: &[u8],
        variant: Variant,
        max_tokens: usize,
        onnx: &OnnxConfig,
    ) -> Result<Self, EncoderError> {
        let tokenizer =
            TextTokenizer::from_bytes(tokenizer_json, max_tokens).map_err(|message| {
                EncoderError::Tokenizer {
                    path: PathBuf::from("(memory)"),
                    message,
                }
            })?;

        let pool = SessionPool::new(model, onnx)?;
        let dim = pool.with_session(check_signature)?;
        tracing::info!(
            variant = ?variant,
            provider = pool.provider().as_str(),
            sessions = pool.size(),
            intra_threads = onnx.threads(),
            dim,
            "encoder loaded"
        );
        metrics::gauge!("rankmesh_model_provider", "model" => "encoder", "provider" => pool.provider().as_str())
            .set(1.0);
        Ok(Self {
            tokenizer,
            pool,
            dim,
            variant,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    pub fn provider(&self) -> Provider {
        self.pool.provider()
    }

    /// Embeds a batch. Blocking: call from a blocking thread.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Embedded>, EncoderError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let TokenBatch {
            ids,
            mask,
            types,
            batch,
            seq,
            truncated,
        } = self.tokenizer.batch(texts)?;
        let shape = [batch as i64, seq as i64];
        let tensor = |data: Vec<i64>| {
            Tensor::from_array((shape, data)).map_err(|e| EncoderError::Inference(e.to_string()))
        };
        let inputs = ort::inputs![
            INPUTS[0] => tensor(ids)?,
            INPUTS[1] => tensor(mask)?,
            INPUTS[2] => tensor(types)?,
        ];
        let flat = self
            .pool
            .with_session(|s| -> Result<Vec<f32>, EncoderError> {
                let out = s
                    .run(inputs)
                    .map_err(|e| EncoderError::Inference(e.to_string()))?;
                let (_, data) = out[OUTPUT]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| EncoderError::Inference(e.to_string()))?;
                Ok(data.to_vec())
            })?;
        if flat.len() != batch * self.dim {
            return Err(EncoderError::Inference(format!(
                "expected {batch} x {} values, got {}",
                self.dim,
                flat.len()
            )));
        }
        Ok(flat
            .chunks_exact(self.dim)
            .zip(truncated)
            .map(|(v, truncated)| Embedded {
                vector: v.to_vec(),
                truncated,
            })
            .collect())
    }
}

/// The encoder's tokenizer: the HF tokenizer.json, padded to the longest text of a
/// batch and truncated at `max_tokens`. Apart from the ONNX session, so the fuzz
/// target `tokenizer` runs exactly what every Embed and Search text goes through.
#[derive(Debug)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
}

/// A tokenized batch: `[batch, seq]` row-major tensors, the encoder's inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub types: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
    /// Per text: it had more than `max_tokens` tokens; the tail was dropped.
    pub truncated: Vec<bool>,
}

impl TextTokenizer {
    /// Parses a tokenizer.json and sets padding and truncation.
    pub fn from_bytes(tokenizer_json: &[u8], max_tokens: usize) -> Result<Self, String> {
        let mut tokenizer = Tokenizer::from_bytes(tokenizer_json).map_err(|e| e.to_string())?;
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token: "[PAD]".into(),
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| e.to_string())?;
        Ok(Self { tokenizer })
    }

    /// Tokenizes a non-empty batch into rectangular tensors.
    pub fn batch(&self, texts: &[String]) -> Result<TokenBatch, EncoderError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EncoderError::Tokenize(e.to_string()))?;
        let batch = encodings.len();
        let seq = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        let mut types = Vec::with_capacity(batch * seq);
        for e in &encodings {
            // Padding makes every row `seq` long; guard anyway so a tokenizer change
            // cannot produce a ragged tensor.
            let pad = seq - e.get_ids().len();
            ids.extend(e.get_ids().iter().map(|&v| i64::from(v)));
            ids.extend(std::iter::repeat_n(0, pad));
            mask.extend(e.get_attention_mask().iter().map(|&v| i64::from(v)));
            mask.extend(std::iter::repeat_n(0, pad));
            types.extend(e.get_type_ids().iter().map(|&v| i64::from(v)));
            types.extend(std::iter::repeat_n(0, pad));
        }
        let truncated = encodings
            .iter()
            .map(|e| !e.get_overflowing().is_empty())
            .collect();
        Ok(TokenBatch {
            ids,
            mask,
            types,
            batch,
            seq,
            truncated,
        })
    }
}

/// Checks inputs and output by name and returns the embedding dimension.
fn check_signature(session: &mut ort::session::Session) -> Result<usize, EncoderError> {
    for want in INPUTS {
        if !session.inputs().iter().any(|i| i.name() == want) {
            let have: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
            return Err(EncoderError::Signature(format!(
                "missing input {want:?}; model has {have:?}"
            )));
        }
    }
    let out = session
        .outputs()
        .iter()
        .find(|o| o.name() == OUTPUT)
        .ok_or_else(|| EncoderError::Signature(format!("missing output {OUTPUT:?}")))?;
    let dim = match out.dtype() {
        ort::value::ValueType::Tensor { shape, .. } => shape.last().copied().unwrap_or(-1),
        other => {
            return Err(EncoderError::Signature(format!(
                "{OUTPUT} is {other:?}, not a tensor"
            )));
        }
    };
    usize::try_from(dim).ok().filter(|d| *d > 0).ok_or_else(|| {
        EncoderError::Signature(format!("{OUTPUT} has no fixed last dimension ({dim})"))
    })
}
