//! The trained ranker (scripts/train-ranker) loads, scores, and is refused against
//! any feature schema but the one it was trained on.

use std::path::PathBuf;

use rankmesh_common::onnx::OnnxConfig;
use rankmesh_ranking::ranker::{Ranker, RankerError};

fn ranker_dir() -> PathBuf {
    std::env::var_os("RANKMESH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
        .join("ranker")
}

#[test]
fn trained_ranker_scores_and_guards_its_schema() {
    let dir = ranker_dir();
    assert!(
        dir.join("model.onnx").exists(),
        "{} missing: run scripts/train-ranker (scripts/test does)",
        dir.display()
    );
    let r = Ranker::load(&dir, 1, &OnnxConfig::default()).expect("load ranker");
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("schema.json")).expect("schema.json"))
            .expect("json");
    let columns: Vec<String> = schema["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c.as_str().expect("str").to_owned())
        .collect();
    let name = schema["name"].as_str().expect("name");
    let version = u32::try_from(schema["version"].as_u64().expect("version")).expect("u32");
    r.check_schema(name, version, &columns)
        .expect("its own schema");

    // Another version, or the same columns in another order, is refused.
    let err = r
        .check_schema(name, version + 1, &columns)
        .expect_err("newer schema");
    assert!(matches!(err, RankerError::SchemaMismatch { .. }), "{err}");
    let mut swapped = columns.clone();
    swapped.swap(0, 1);
    assert!(r.check_schema(name, version, &swapped).is_err());

    // Scores: one finite number per row; a ragged matrix is an error, not a panic.
    let f = columns.len();
    let rows: Vec<f32> = (0..5 * f).map(|i| (i % 7) as f32 * 0.3).collect();
    let scores = r.score(rows).expect("score");
    assert_eq!(scores.len(), 5);
    assert!(scores.iter().all(|s| s.is_finite()));
    assert!(r.score(vec![0.0; f + 1]).is_err());
}
