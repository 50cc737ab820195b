//! The learned ranker: an ONNX model scoring rows of the feature service's matrix.
//!
//! Contract (written by `scripts/train-ranker`): one float input `features` of shape
//! [N, F], one float output `score` of shape [N] or [N, 1], and model metadata
//! `feature_schema` = `<name>:<version>` and `feature_columns` = comma-separated
//! column names. A ranker whose schema or columns differ from what the feature
//! service serves is refused: scoring the wrong columns gives confident nonsense.

use std::path::Path;

use ort::value::Tensor;
use rankmesh_common::onnx::{OnnxConfig, OnnxError, Provider, SessionPool};

pub const INPUT: &str = "features";
pub const OUTPUT: &str = "score";

#[derive(Debug, thiserror::Error)]
pub enum RankerError {
    #[error("ranker file {path}: {message}")]
    Read { path: String, message: String },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("ranker signature: {0}")]
    Signature(String),
    #[error("ranker schema {got}, but the feature service serves {want}")]
    SchemaMismatch { got: String, want: String },
    #[error("ranker inference: {0}")]
    Inference(String),
}

/// A loaded ranker.
#[derive(Debug)]
pub struct Ranker {
    pool: SessionPool,
    schema: String,
    columns: Vec<String>,
    version: u64,
}

impl Ranker {
    /// Loads `<dir>/model.onnx`.
    pub fn load(dir: &Path, version: u64, onnx: &OnnxConfig) -> Result<Self, RankerError> {
        let path = dir.join("model.onnx");
        let bytes = std::fs::read(&path).map_err(|e| RankerError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_bytes(&bytes, version, onnx)
    }

    pub fn from_bytes(model: &[u8], version: u64, onnx: &OnnxConfig) -> Result<Self, RankerError> {
        let pool = SessionPool::new(model, onnx)?;
        let (schema, columns) =
            pool.with_session(|s| -> Result<(String, Vec<String>), RankerError> {
                if !s.inputs().iter().any(|i| i.name() == INPUT) {
                    return Err(RankerError::Signature(format!("missing input {INPUT:?}")));
                }
                if !s.outputs().iter().any(|o| o.name() == OUTPUT) {
                    return Err(RankerError::Signature(format!("missing output {OUTPUT:?}")));
                }
                let meta = s
                    .metadata()
                    .map_err(|e| RankerError::Signature(e.to_string()))?;
                let schema = meta
                    .custom("feature_schema")
                    .ok_or_else(|| RankerError::Signature("no feature_schema metadata".into()))?;
                let columns = meta
                    .custom("feature_columns")
                    .ok_or_else(|| RankerError::Signature("no feature_columns metadata".into()))?
                    .split(',')
                    .map(|c| c.trim().to_owned())
                    .collect();
                Ok((schema, columns))
            })?;
        tracing::info!(
            schema,
            columns = columns.len(),
            provider = pool.provider().as_str(),
            "ranker loaded"
        );
        rankmesh_common::onnx::report_provider("ranker", pool.provider());
        Ok(Self {
            pool,
            schema,
            columns,
            version,
        })
    }

    /// `name:version` the ranker was trained on.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn provider(&self) -> Provider {
        self.pool.provider()
    }

    /// Refuses a feature schema other than the one the ranker was trained on.
    pub fn check_schema(
        &self,
        name: &str,
        version: u32,
        columns: &[String],
    ) -> Result<(), RankerError> {
        let served = format!("{name}:{version}");
        if served != self.schema || columns != self.columns.as_slice() {
            return Err(RankerError::SchemaMismatch {
                got: format!("{} ({} columns)", self.schema, self.columns.len()),
                want: format!("{served} ({} columns)", columns.len()),
            });
        }
        Ok(())
    }

    /// Scores `rows` (row-major, `columns().len()` per row). Blocking.
    pub fn score(&self, rows: Vec<f32>) -> Result<Vec<f32>, RankerError> {
        let f = self.columns.len();
        if f == 0 || !rows.len().is_multiple_of(f) {
            return Err(RankerError::Inference(format!(
                "{} values is not a multiple of {f} columns",
                rows.len()
            )));
        }
        let n = rows.len() / f;
        if n == 0 {
            return Ok(Vec::new());
        }
        let tensor = Tensor::from_array(([n as i64, f as i64], rows))
            .map_err(|e| RankerError::Inference(e.to_string()))?;
        self.pool.with_session(|s| {
            let out = s
                .run(ort::inputs![INPUT => tensor])
                .map_err(|e| RankerError::Inference(e.to_string()))?;
            let (_, scores) = out[OUTPUT]
                .try_extract_tensor::<f32>()
                .map_err(|e| RankerError::Inference(e.to_string()))?;
            if scores.len() != n {
                return Err(RankerError::Inference(format!(
                    "{} scores for {n} rows",
                    scores.len()
                )));
            }
            Ok(scores.to_vec())
        })
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }
}
