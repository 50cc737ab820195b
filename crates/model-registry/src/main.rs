//! `rankmesh-model-registry`: the registry service binary.

fn main() -> std::process::ExitCode {
    rankmesh_common::scaffold::run_main(
        rankmesh_model_registry::INFO.name,
        rankmesh_model_registry::run,
    )
}
