//! `rankmesh-model-registry`: the registry service binary.

fn main() -> std::process::ExitCode {
    rankmesh_common::service::run_main(
        rankmesh_model_registry::SERVICE,
        rankmesh_model_registry::run,
    )
}
