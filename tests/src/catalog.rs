//! The demo catalog (`deploy/demo/catalog.jsonl`, import format): twenty hand-written
//! items with clear topics, for tests that need real items.

use std::path::PathBuf;

/// Path of the demo catalog in the repository.
pub fn demo_catalog() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo/catalog.jsonl")
}

/// Where `scripts/setup` exported the models (`$RANKMESH_MODELS`, else `models/`).
pub fn models_dir() -> PathBuf {
    std::env::var_os("RANKMESH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}
