//! `rankmesh-embedding`: the embedding service binary.

fn main() -> std::process::ExitCode {
    rankmesh_common::scaffold::run_main(rankmesh_embedding::INFO.name, rankmesh_embedding::run)
}
