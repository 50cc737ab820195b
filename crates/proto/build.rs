//! Compiles `proto/rankmesh/**/v1/*.proto` into Rust and writes the descriptor set that
//! gRPC reflection serves.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "rankmesh/common/v1/common.proto",
    "rankmesh/feature/v1/feature.proto",
    "rankmesh/embedding/v1/embedding.proto",
    "rankmesh/ranking/v1/ranking.proto",
    "rankmesh/registry/v1/registry.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("rankmesh_descriptor.bin"))
        .compile_protos(&files, &[root])?;
    Ok(())
}
