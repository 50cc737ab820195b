//! `rankmesh-feature`: the feature service binary.

fn main() -> std::process::ExitCode {
    rankmesh_common::scaffold::run_main(rankmesh_feature::INFO.name, rankmesh_feature::run)
}
