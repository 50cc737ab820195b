//! What a mesh is made of: its options, its instances with their ports, and where
//! each keeps its data. Pure, so a drill can know an instance's address before the
//! mesh starts (to put a fault proxy in front of it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::LaunchError;

/// Name of the encoder in the registry: the embedding replicas follow it.
pub const ENCODER_MODEL: &str = "encoder";
/// Name of the ranker in the registry: the ranking replicas follow it when told to.
pub const RANKER_MODEL: &str = "ranker";

/// The (service, binary) pairs started before ranking, in start order.
const SERVICES: &[(&str, &str)] = &[
    ("registry", "rankmesh-model-registry"),
    ("feature", "rankmesh-feature"),
    ("embedding", "rankmesh-embedding"),
];

/// What to start.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub state_dir: PathBuf,
    pub ranking_replicas: usize,
    /// etcd's client port; its peer port is the next one.
    pub etcd_port: u16,
    /// First service port: ranking-0 serves gRPC here and its admin port on the next;
    /// every further instance takes the following two.
    pub base_port: u16,
    /// Where the service binaries (and `meshctl`, which runs the trace collector) are.
    pub bin_dir: PathBuf,
    /// Ranking replicas follow [`RANKER_MODEL`] in the registry (and the rollout
    /// leader may change its stages). Without it they rank in retrieval order.
    pub follow_ranker: bool,
    /// Extra environment for the ranking replicas (e.g. rollout policy).
    pub ranking_env: Vec<(String, String)>,
    /// Extra environment for the embedding replicas (e.g. `onnx.device`).
    pub embedding_env: Vec<(String, String)>,
    /// The trace collector to start and export to, if any.
    pub traces: Option<TraceOptions>,
    /// etcd members: 1, or 3 for a cluster that can lose a member.
    pub etcd_members: usize,
    /// Keep the feature store in a Redis started on this port (durable: fsync per
    /// write) instead of an embedded redb file.
    pub redis_port: Option<u16>,
    /// The registry's INT8 quantizer, if there is one to run.
    pub quantizer: Option<Quantizer>,
    /// Plaintext gRPC between everything (no certificates); mutual TLS otherwise.
    pub insecure: bool,
    /// Extra environment for single instances, by name (`ranking-1`), applied last
    /// so it overrides: a drill points an instance's advertised port and etcd
    /// endpoints at its fault proxies.
    pub instance_env: BTreeMap<String, Vec<(String, String)>>,
}

/// The local trace collector.
#[derive(Debug, Clone, Copy)]
pub struct TraceOptions {
    pub ui_port: u16,
    pub otlp_port: u16,
    pub sample_ratio: f64,
}

/// The Python and the script the registry quantizes with (`registry.quantizer`).
#[derive(Debug, Clone)]
pub struct Quantizer {
    pub python: PathBuf,
    pub script: PathBuf,
}

/// One service instance to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its id in discovery and in the state file (`ranking-0`).
    pub name: String,
    /// The service it runs (`ranking`).
    pub service: &'static str,
    /// The binary, in the bin dir.
    pub bin: &'static str,
    /// gRPC and admin listen addresses.
    pub grpc: String,
    pub admin: String,
}

/// The service instances `up` starts, with their addresses, in a stable, memorable
/// port order (ranking-0 first): ranking-0 on `base_port` and its admin port on the
/// next, every further instance on the following two.
pub fn instances(opts: &UpOptions) -> Vec<Instance> {
    let mut names: Vec<(String, &'static str, &'static str)> = (0..opts.ranking_replicas)
        .map(|i| (format!("ranking-{i}"), "ranking", "rankmesh-ranking"))
        .collect();
    names.extend(
        SERVICES
            .iter()
            .map(|(svc, bin)| (format!("{svc}-0"), *svc, *bin)),
    );
    names
        .into_iter()
        .zip((opts.base_port..).step_by(2))
        .map(|((name, service, bin), port)| Instance {
            name,
            service,
            bin,
            grpc: format!("127.0.0.1:{port}"),
            admin: format!("127.0.0.1:{}", port + 1),
        })
        .collect()
}

/// etcd's members' client URLs: member i on `etcd_port + 2i` (its peer port next).
pub fn etcd_client_urls(opts: &UpOptions) -> Vec<String> {
    (0..opts.etcd_members.max(1))
        .map(|i| etcd_url(opts, i, false))
        .collect()
}

/// Member `i`'s client (or peer) URL.
pub(crate) fn etcd_url(opts: &UpOptions, i: usize, peer: bool) -> String {
    let port = opts.etcd_port as usize + 2 * i + usize::from(peer);
    let scheme = if opts.insecure { "http" } else { "https" };
    format!("{scheme}://127.0.0.1:{port}")
}

/// Member `i`'s name: `etcd` alone, `etcd-0`.. in a cluster.
pub(crate) fn etcd_name(opts: &UpOptions, i: usize) -> String {
    if opts.etcd_members.max(1) == 1 {
        "etcd".to_owned()
    } else {
        format!("etcd-{i}")
    }
}

/// Where the instances of `service` keep their data in a mesh's state directory
/// (the feature store's file, the registry's blobs).
pub fn data_dir(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join(service)
}

/// The folder the running program is in: `meshctl` and the service binaries are
/// built next to each other (and a test binary's `deps/` sits below them).
pub fn own_bin_dir() -> Result<PathBuf, LaunchError> {
    let exe = std::env::current_exe().map_err(LaunchError::io("find", "the running program"))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    Ok(if dir.ends_with("deps") {
        dir.parent().map(PathBuf::from).unwrap_or(dir)
    } else {
        dir
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn opts(ranking_replicas: usize, etcd_members: usize) -> UpOptions {
        UpOptions {
            state_dir: PathBuf::from("/tmp/mesh"),
            ranking_replicas,
            etcd_port: 2379,
            base_port: 50051,
            bin_dir: PathBuf::from("target/debug"),
            follow_ranker: false,
            ranking_env: Vec::new(),
            embedding_env: Vec::new(),
            traces: None,
            etcd_members,
            redis_port: None,
            quantizer: None,
            insecure: false,
            instance_env: BTreeMap::new(),
        }
    }

    #[test]
    fn instances_take_two_ports_each_ranking_first() {
        let all = instances(&opts(2, 1));
        let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ranking-0",
                "ranking-1",
                "registry-0",
                "feature-0",
                "embedding-0"
            ]
        );
        assert_eq!(all[0].grpc, "127.0.0.1:50051");
        assert_eq!(all[0].admin, "127.0.0.1:50052");
        assert_eq!(all[4].grpc, "127.0.0.1:50059");
        assert_eq!(all[2].bin, "rankmesh-model-registry");
    }

    #[test]
    fn etcd_members_take_a_client_and_a_peer_port_each() {
        assert_eq!(etcd_client_urls(&opts(1, 1)), ["https://127.0.0.1:2379"]);
        let three = opts(1, 3);
        assert_eq!(
            etcd_client_urls(&three),
            [
                "https://127.0.0.1:2379",
                "https://127.0.0.1:2381",
                "https://127.0.0.1:2383"
            ]
        );
        assert_eq!(etcd_url(&three, 1, true), "https://127.0.0.1:2382");
        let plaintext = UpOptions {
            insecure: true,
            ..opts(1, 1)
        };
        assert_eq!(etcd_client_urls(&plaintext), ["http://127.0.0.1:2379"]);
        assert_eq!(etcd_name(&three, 2), "etcd-2");
        assert_eq!(etcd_name(&opts(1, 1), 0), "etcd");
    }
}
