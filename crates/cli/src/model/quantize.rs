//! `meshctl model publish --quantize int8`: the INT8 variant made here with the
//! project's offline tooling (`scripts/quantize_model.py`: dynamic per-channel
//! quantization in onnxruntime), checked against its FP32 parent on a calibration
//! set before anything is uploaded. A variant below the bound is never published.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::args::PythonTool;

/// The bounds and calibration set of `--quantize int8`.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// Texts, one a line (an encoder), or float32 rows (a scorer such as the ranker).
    pub calibration: Option<PathBuf>,
    pub min_cosine: f64,
    pub min_correlation: f64,
}

/// A checked INT8 file and what the check measured.
#[derive(Debug)]
pub(crate) struct Quantized {
    /// Holds the INT8 file until it is uploaded.
    _dir: tempfile::TempDir,
    pub file: PathBuf,
    /// The figures, as manifest metadata (`int8_*`).
    pub metadata: Vec<(String, String)>,
    /// One line for the terminal.
    pub summary: String,
}

/// Quantizes `fp32` (with `tokenizer` for an encoder) and checks it; an error, with
/// the figures, when it misses the bound.
pub(crate) fn int8(
    fp32: &Path,
    tokenizer: Option<&Path>,
    check: &Check,
) -> anyhow::Result<Quantized> {
    let dir = tempfile::tempdir().context("temp dir for the INT8 file")?;
    let out = dir.path().join("model.int8.onnx");
    let tool = PythonTool::in_scripts("quantize_model.py");
    let mut cmd = tool.command();
    cmd.arg(fp32)
        .arg(&out)
        .args(["--min-cosine", &check.min_cosine.to_string()])
        .args(["--min-correlation", &check.min_correlation.to_string()]);
    if let Some(t) = tokenizer {
        cmd.arg("--tokenizer").arg(t);
    }
    if let Some(c) = &check.calibration {
        cmd.arg("--calibration").arg(c);
    }
    eprintln!(
        "quantizing {} to INT8 and checking it against FP32 ...",
        fp32.display()
    );
    let output = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| tool.not_started())?;
    let script = &tool.script;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Option<serde_json::Value> = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    let (report, code) = match (report, output.status.code()) {
        (Some(r), Some(0 | 3)) => (r, output.status.code()),
        _ => bail!("{} failed ({}): {stdout}", script.display(), output.status),
    };
    let figures = figures(&report);
    if code != Some(0) {
        bail!("the INT8 variant misses its bound ({figures}); nothing was published");
    }
    let mut metadata = vec![("int8_check".to_owned(), figures.clone())];
    for key in ["mean_cosine", "min_cosine", "correlation", "calibration"] {
        if let Some(v) = report.get(key) {
            metadata.push((format!("int8_{key}"), v.to_string()));
        }
    }
    Ok(Quantized {
        _dir: dir,
        file: out,
        metadata,
        summary: format!(
            "INT8 {} -> {} bytes; {figures}",
            report["bytes_fp32"], report["bytes_int8"]
        ),
    })
}

/// The check's figures in words, e.g. "mean cosine 0.995 (min 0.97) over 32
/// calibration texts, at least 0.98".
fn figures(r: &serde_json::Value) -> String {
    let n = &r["calibration"];
    if r["kind"] == "encoder" {
        format!(
            "mean cosine {} (min {}) to FP32 over {n} calibration texts, at least {}",
            r["mean_cosine"], r["min_cosine"], r["min_cosine_required"]
        )
    } else {
        format!(
            "score correlation {} (max difference {}) with FP32 over {n} calibration rows, at least {}",
            r["correlation"], r["max_abs_diff"], r["min_correlation_required"]
        )
    }
}
