//! The Rust tokenization + inference path reproduces the Python onnxruntime
//! reference written by `scripts/export-encoder` (models/encoder/reference.json).

use std::path::PathBuf;

use rankmesh_common::onnx::OnnxConfig;
use rankmesh_embedding::encoder::{Encoder, Variant};

fn models_dir() -> PathBuf {
    std::env::var_os("RANKMESH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
        .join("encoder")
}

struct Reference {
    sentences: Vec<String>,
    fp32: Vec<Vec<f32>>,
    int8: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = models_dir().join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/setup (it exports the encoder)",
            path.display()
        )
    });
    let v: serde_json::Value = serde_json::from_str(&text).expect("reference.json is JSON");
    let vecs = |key: &str| -> Vec<Vec<f32>> {
        v[key]
            .as_array()
            .expect("array")
            .iter()
            .map(|row| {
                row.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().expect("number") as f32)
                    .collect()
            })
            .collect()
    };
    Reference {
        sentences: v["sentences"]
            .as_array()
            .expect("sentences")
            .iter()
            .map(|s| s.as_str().expect("string").to_owned())
            .collect(),
        fp32: vecs("fp32"),
        int8: vecs("int8"),
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn onnx() -> OnnxConfig {
    OnnxConfig {
        intra_threads: 2,
        ..OnnxConfig::default()
    }
}

#[test]
fn fp32_matches_python_reference() {
    let r = reference();
    let enc = Encoder::load(&models_dir(), Variant::Fp32, 256, &onnx()).expect("load fp32 encoder");
    assert_eq!(enc.dim(), 384);
    let out = enc.encode(&r.sentences).expect("encode");
    for (i, (got, want)) in out.iter().zip(&r.fp32).enumerate() {
        let c = cosine(&got.vector, want);
        assert!(c >= 0.9999, "sentence {i} {:?}: cosine {c}", r.sentences[i]);
    }
    // The published sentence-transformers values for the first sentence.
    assert_eq!(r.sentences[0], "This is an example sentence");
    for (got, want) in out[0].vector.iter().zip([0.0677, 0.0635, 0.0487, 0.0793]) {
        assert!((got - want).abs() < 5e-4, "{got} vs {want}");
    }
    // Only the long text exceeds 256 tokens.
    let truncated: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, e)| e.truncated)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(truncated.len(), 1, "{truncated:?}");
    assert!(r.sentences[truncated[0]].len() > 2000);
}

#[test]
fn int8_stays_close_to_reference() {
    let r = reference();
    let enc = Encoder::load(&models_dir(), Variant::Int8, 256, &onnx()).expect("load int8 encoder");
    let out = enc.encode(&r.sentences).expect("encode");
    for (i, got) in out.iter().enumerate() {
        let c_int8 = cosine(&got.vector, &r.int8[i]);
        let c_fp32 = cosine(&got.vector, &r.fp32[i]);
        assert!(
            c_int8 >= 0.98,
            "sentence {i}: cosine to int8 reference {c_int8}"
        );
        assert!(
            c_fp32 >= 0.97,
            "sentence {i}: cosine to fp32 reference {c_fp32}"
        );
    }
}

#[test]
fn batching_does_not_change_fp32_results() {
    let r = reference();
    let enc = Encoder::load(&models_dir(), Variant::Fp32, 256, &onnx()).expect("load");
    let batch = enc.encode(&r.sentences[..4]).expect("batch");
    for (i, s) in r.sentences[..4].iter().enumerate() {
        let alone = enc.encode(std::slice::from_ref(s)).expect("single");
        let c = cosine(&alone[0].vector, &batch[i].vector);
        assert!(c > 0.99999, "padding leaked into sentence {i}: cosine {c}");
    }
}
