//! The sentence encoder: HF tokenizer + ONNX graph whose output `sentence_embedding`
//! is already mean-pooled and L2-normalised (see `scripts/export-encoder`).
//!
//! The shipped tokenizer.json pads every input to 128 tokens and truncates at 128;
//! here truncation is at `max_tokens` (256), reported per text, and a batch runs
//! in groups of similar length, each padded to its longest text (short queries
//! stay cheap, and a long text does not make its batch pay for it).

use std::path::{Path, PathBuf};

use ort::value::Tensor;
use rankmesh_common::onnx::{OnnxConfig, OnnxError, Provider, SessionPool};
use serde::{Deserialize, Serialize};
use tokenizers::{Encoding, Tokenizer, TruncationParams};

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
            Variant::Auto if rankmesh_common::onnx::expects_gpu(onnx) => Variant::Fp32,
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
        rankmesh_common::onnx::report_provider("encoder", pool.provider());
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

    /// Embeds texts, in the order given. Blocking: call from a blocking thread.
    ///
    /// The texts run in groups of similar token length ([`length_groups`]): a
    /// model call pads every row to its longest, so a batch mixing a 10-token
    /// query with a 200-token description would pay 200 for both.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Embedded>, EncoderError> {
        let encodings = self.tokenizer.encodings(texts)?;
        let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        let mut out: Vec<Option<Embedded>> = (0..texts.len()).map(|_| None).collect();
        for group in length_groups(&lengths, TOKEN_BUDGET) {
            let rows: Vec<&Encoding> = group.iter().map(|&i| &encodings[i]).collect();
            let embedded = self.run(self.tokenizer.pad(&rows))?;
            for (i, e) in group.into_iter().zip(embedded) {
                out[i] = Some(e);
            }
        }
        out.into_iter()
            .map(|e| e.ok_or_else(|| EncoderError::Inference("a text got no vector".into())))
            .collect()
    }

    /// Embeds texts as one batch padded to the longest, in the order given: what
    /// [`Self::encode`] does without length groups (the benchmark's baseline).
    pub fn encode_as_one_batch(&self, texts: &[String]) -> Result<Vec<Embedded>, EncoderError> {
        self.run(self.tokenizer.batch(texts)?)
    }

    /// Runs one padded batch through the model.
    fn run(&self, batch: TokenBatch) -> Result<Vec<Embedded>, EncoderError> {
        let TokenBatch {
            ids,
            mask,
            types,
            batch,
            seq,
            truncated,
        } = batch;
        if batch == 0 {
            return Ok(Vec::new());
        }
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

/// Most padded tokens (rows x longest row) in one model call: a batch of long
/// texts runs as several calls rather than one large tensor (a 256-token text is
/// 32 rows of it).
pub const TOKEN_BUDGET: usize = 8192;
/// A length group is cut when padding would make it more than 1.5 times its real
/// tokens (a padded token costs the model as much as a real one; another call
/// costs about as much as a few padded tokens)...
const MAX_PADDED_HALVES: usize = 3;
/// ...and it already has this many rows (fewer: another model call would cost
/// more than the padding it saves).
const MIN_GROUP_ROWS: usize = 4;

/// The texts of a batch in groups to run as one model call each, by index:
/// shortest first, a group cut where the next text would make it pad to more than
/// 1.5x its real tokens (once it has [`MIN_GROUP_ROWS`]) or exceed
/// `budget` padded tokens. Every index is in exactly one group.
pub fn length_groups(lengths: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut groups = Vec::new();
    let mut group: Vec<usize> = Vec::new();
    let mut real = 0;
    for i in order {
        // Sorted: the newcomer is the group's longest, the width it would pad to.
        let len = lengths[i].max(1);
        let padded = (group.len() + 1) * len;
        let wasteful =
            group.len() >= MIN_GROUP_ROWS && 2 * padded > MAX_PADDED_HALVES * (real + len);
        if !group.is_empty() && (padded > budget || wasteful) {
            groups.push(std::mem::take(&mut group));
            real = 0;
        }
        real += len;
        group.push(i);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// The encoder's tokenizer: the HF tokenizer.json, truncated at `max_tokens`, each
/// batch padded to its longest text. Apart from the ONNX session, so the fuzz
/// target `tokenizer` runs exactly what every Embed and Search text goes through.
#[derive(Debug)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    pad_id: i64,
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
    /// Parses a tokenizer.json and sets truncation; padding is done per batch
    /// ([`Self::pad`]), its own padding turned off.
    pub fn from_bytes(tokenizer_json: &[u8], max_tokens: usize) -> Result<Self, String> {
        let mut tokenizer = Tokenizer::from_bytes(tokenizer_json).map_err(|e| e.to_string())?;
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            tokenizer,
            pad_id: i64::from(pad_id),
        })
    }

    /// Each text's tokens, unpadded.
    pub fn encodings(&self, texts: &[String]) -> Result<Vec<Encoding>, EncoderError> {
        self.tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EncoderError::Tokenize(e.to_string()))
    }

    /// Tokenizes a batch into rectangular tensors, padded to its longest text.
    pub fn batch(&self, texts: &[String]) -> Result<TokenBatch, EncoderError> {
        let encodings = self.encodings(texts)?;
        Ok(self.pad(&encodings.iter().collect::<Vec<_>>()))
    }

    /// Rectangular tensors of `encodings`, each row padded to the longest.
    pub fn pad(&self, encodings: &[&Encoding]) -> TokenBatch {
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
        for e in encodings {
            let pad = seq - e.get_ids().len();
            ids.extend(e.get_ids().iter().map(|&v| i64::from(v)));
            ids.extend(std::iter::repeat_n(self.pad_id, pad));
            mask.extend(e.get_attention_mask().iter().map(|&v| i64::from(v)));
            mask.extend(std::iter::repeat_n(0, pad));
            types.extend(e.get_type_ids().iter().map(|&v| i64::from(v)));
            types.extend(std::iter::repeat_n(0, pad));
        }
        let truncated = encodings
            .iter()
            .map(|e| !e.get_overflowing().is_empty())
            .collect();
        TokenBatch {
            ids,
            mask,
            types,
            batch,
            seq,
            truncated,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(lengths: &[usize], groups: &[Vec<usize>]) -> usize {
        groups
            .iter()
            .map(|g| g.len() * g.iter().map(|&i| lengths[i]).max().unwrap_or(0))
            .sum()
    }

    #[test]
    fn length_groups_cover_every_text_once_and_cut_padding() {
        // Eight short queries, eight medium titles, sixteen long descriptions,
        // interleaved as a batch arrives.
        let lengths: Vec<usize> = (0..32)
            .map(|i| match i % 4 {
                0 => 10,
                1 => 50,
                _ => 120,
            })
            .collect();
        let groups = length_groups(&lengths, TOKEN_BUDGET);
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..32).collect::<Vec<_>>());
        for g in &groups {
            let lens: Vec<usize> = g.iter().map(|&i| lengths[i]).collect();
            assert!(
                lens.iter().all(|&l| l == lens[0]),
                "one length per group: {lens:?}"
            );
        }
        // One batch padded to 120 would be 3,840 tokens; the groups pad to 2,400.
        assert_eq!(padded(&lengths, &groups), 8 * 10 + 8 * 50 + 16 * 120);

        // Similar lengths stay one call; so do fewer rows than a group's minimum.
        assert_eq!(length_groups(&[7, 8, 9, 8, 7, 9], TOKEN_BUDGET).len(), 1);
        assert_eq!(length_groups(&[5, 200, 5], TOKEN_BUDGET).len(), 1);
        // The budget splits long texts however alike they are.
        let long = vec![256; 64];
        let groups = length_groups(&long, TOKEN_BUDGET);
        assert_eq!(groups.len(), 2);
        assert!(groups.iter().all(|g| g.len() * 256 <= TOKEN_BUDGET));
        assert!(length_groups(&[], TOKEN_BUDGET).is_empty());
    }
}
