//! INT8 at publish (`PublishHeader.quantize_int8`): the registry runs the project's
//! quantizer (`scripts/quantize_model.py`: dynamic per-channel INT8 in onnxruntime)
//! on the uploaded FP32 artifact and checks the result against it on a calibration
//! set (an encoder's embeddings by cosine, a scorer's scores by correlation). A
//! variant below the bound is refused, and nothing of the upload is stored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::RegistryError;

/// The quantizer a registry runs, and the bounds it holds INT8 variants to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuantizerConfig {
    /// A Python with onnxruntime and tokenizers (the venv scripts/setup makes);
    /// empty: this registry does not quantize, and `quantize_int8` is refused.
    pub python: PathBuf,
    /// The quantizer, `scripts/quantize_model.py`.
    pub script: PathBuf,
    /// Least mean cosine of an encoder's INT8 embeddings to its FP32 ones.
    pub min_cosine: f64,
    /// Least correlation of a scorer's INT8 scores with its FP32 ones.
    pub min_correlation: f64,
    /// Longest one quantization may take, seconds.
    pub timeout_s: u64,
}

impl Default for QuantizerConfig {
    fn default() -> Self {
        Self {
            python: PathBuf::new(),
            script: PathBuf::new(),
            min_cosine: 0.98,
            min_correlation: 0.99,
            timeout_s: 600,
        }
    }
}

/// A checked INT8 artifact.
#[derive(Debug)]
pub struct Quantized {
    pub model: Vec<u8>,
    /// What the check measured, for the INT8 manifest (`int8_check`, ...).
    pub metadata: BTreeMap<String, String>,
}

/// Quantizes `fp32` (an encoder brings its `tokenizer`) and checks the result.
pub async fn int8(
    config: &QuantizerConfig,
    fp32: &[u8],
    tokenizer: Option<&[u8]>,
) -> Result<Quantized, RegistryError> {
    if config.python.as_os_str().is_empty() {
        return Err(RegistryError::Precondition(
            "quantize_int8: this registry has no quantizer (registry.quantizer.python and \
             .script); publish an INT8 file with metadata variant=int8 and parent_version=N"
                .into(),
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| RegistryError::internal("quantizer temp dir", e))?;
    let (src, out) = (dir.path().join("fp32.onnx"), dir.path().join("int8.onnx"));
    // Artifacts are large: written and read off the async workers.
    tokio::fs::write(&src, fp32)
        .await
        .map_err(|e| RegistryError::internal("quantizer input", e))?;
    let mut cmd = tokio::process::Command::new(&config.python);
    cmd.arg(&config.script)
        .arg(&src)
        .arg(&out)
        .args(["--min-cosine", &config.min_cosine.to_string()])
        .args(["--min-correlation", &config.min_correlation.to_string()])
        .kill_on_drop(true);
    if let Some(t) = tokenizer {
        let path = dir.path().join("tokenizer.json");
        tokio::fs::write(&path, t)
            .await
            .map_err(|e| RegistryError::internal("quantizer input", e))?;
        cmd.arg("--tokenizer").arg(path);
    }
    let run = tokio::time::timeout(Duration::from_secs(config.timeout_s), cmd.output());
    let output = run
        .await
        .map_err(|_| {
            RegistryError::internal(
                "quantizing",
                format!("took longer than {} s", config.timeout_s),
            )
        })?
        .map_err(|e| RegistryError::internal("starting the quantizer", e))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            RegistryError::internal(
                "quantizing",
                format!(
                    "{} ({}): {}",
                    config.script.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            )
        })?;
    let summary = report["summary"].as_str().unwrap_or_default().to_owned();
    match output.status.code() {
        Some(0) => {}
        Some(3) => {
            return Err(RegistryError::Precondition(format!(
                "quantize_int8: the INT8 variant misses its bound ({summary}); nothing was stored"
            )));
        }
        _ => return Err(RegistryError::internal("quantizing", output.status)),
    }
    let model = tokio::fs::read(&out)
        .await
        .map_err(|e| RegistryError::internal("quantizer output", e))?;
    let mut metadata = BTreeMap::from([("int8_check".to_owned(), summary)]);
    for key in ["mean_cosine", "min_cosine", "correlation", "calibration"] {
        if let Some(v) = report.get(key) {
            metadata.insert(format!("int8_{key}"), v.to_string());
        }
    }
    Ok(Quantized { model, metadata })
}
