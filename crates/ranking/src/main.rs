//! `rankmesh-ranking`: the ranking service binary.

fn main() -> std::process::ExitCode {
    rankmesh_common::scaffold::run_main(rankmesh_ranking::INFO.name, rankmesh_ranking::run)
}
