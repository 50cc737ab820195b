//! How a drill is run: where its reports go, its ports, binaries, models and
//! tools, the demo store, and whether the client is weakened.

use std::path::PathBuf;

use rankmesh_launcher::Quantizer;

/// How a drill is run. Paths are absolute, or relative to the working directory.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Reports go to `<report_dir>/<scenario name>/`.
    pub report_dir: PathBuf,
    /// The SDK without hedging / retries: a weakened client, to show what they buy.
    pub no_hedge: bool,
    pub no_retry: bool,
    /// Ports of the local topology: etcd on `etcd_port`, services from `base_port`.
    pub etcd_port: u16,
    pub base_port: u16,
    /// The service binaries the local topology starts.
    pub bin_dir: PathBuf,
    /// Exported models (`encoder/`, `ranker/`), as scripts/setup writes them.
    pub models: PathBuf,
    /// The registry's INT8 quantizer, if the mesh has one.
    pub quantizer: Option<Quantizer>,
    /// The interpreter and script that make broken rankers for canary faults
    /// (`.venv/bin/python`, `scripts/bad_ranker.py`).
    pub python: PathBuf,
    pub bad_ranker: PathBuf,
    /// The store scenarios run on when they name no catalog or query log: the
    /// same demo store (`meshctl catalog generate --items 2000 --users 200 --seed
    /// 7`) that scripts/images bakes into the compose stack's bootstrap.
    pub demo_catalog: PathBuf,
    pub demo_queries: PathBuf,
    /// The compose stack (`deploy/compose`) for compose scenarios.
    pub compose_dir: PathBuf,
}
