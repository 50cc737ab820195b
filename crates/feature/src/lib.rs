//! The feature service: the online store of item attributes and user features, the
//! lexical (BM25) candidate source, and the real-time event sink.
//!
//! # Layout
//! - [`domain`]: items, events, user profiles and their limits (the catalog's
//!   records; "model" in this mesh means an ONNX model).
//! - [`import`]: streaming JSONL/CSV catalog parsing with per-row errors.
//! - [`store`]: the storage trait with redb (embedded) and Redis (shared) backends.
//! - [`lexical`]: the tantivy BM25 index with exact filters.
//! - [`features`]: the ranker's feature schema and matrix.
//! - [`service`]: the gRPC API.
//!
//! Owns the catalog's storage and the lexical index. Must not import another
//! service crate or the artifact crate; it is called over gRPC only.

pub mod domain;
pub mod features;
pub mod import;
pub mod lexical;
pub mod service;
pub mod store;
pub mod text;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use rankmesh_common::config::{ConfigError, invalid};
use rankmesh_common::scaffold::{ScaffoldError, serve_routes};
use rankmesh_common::server::{Listeners, Readiness, ServiceInfo};
use rankmesh_proto::pb::feature::v1::feature_service_server::FeatureServiceServer;
use serde::{Deserialize, Serialize};

use crate::lexical::LexicalIndex;
use crate::service::{FeatureApi, Features};
use crate::store::{AnyStore, RedbStore, RedisStore, StoreError};

/// Its name in discovery and metrics, and the gRPC service it serves.
pub const INFO: ServiceInfo = ServiceInfo::new("feature", &["rankmesh.feature.v1.FeatureService"]);

rankmesh_common::service_config! {
    /// Configuration of the feature service.
    pub struct Config {
        /// Where features live.
        pub store: StoreConfig,
    }
}

/// The storage backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `redb` (an embedded file; one replica) or `redis` (shared by replicas).
    pub backend: Backend,
    /// The redb file.
    pub path: PathBuf,
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0`.
    pub redis_url: String,
    /// redb's page cache, in MiB: with the in-memory lexical index, most of what
    /// the service holds as the catalog grows (imports stream through in batches).
    pub redb_cache_mb: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Redb,
    Redis,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Redb,
            path: PathBuf::from(".rankmesh/feature/features.redb"),
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redb_cache_mb: (store::DEFAULT_REDB_CACHE_BYTES >> 20) as u64,
        }
    }
}

impl Config {
    fn validate_service(&self) -> Result<(), ConfigError> {
        if !(1..=1 << 20).contains(&self.store.redb_cache_mb) {
            return Err(invalid(
                "store.redb_cache_mb",
                self.store.redb_cache_mb.to_string(),
                "must be 1..=1048576 (MiB)",
            ));
        }
        if self.store.backend == Backend::Redis && !self.store.redis_url.starts_with("redis://") {
            return Err(invalid(
                "store.redis_url",
                format!("{:?}", self.store.redis_url),
                "must start with redis://",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Scaffold(#[from] ScaffoldError),
    #[error("feature store: {0}")]
    Store(#[from] StoreError),
    #[error("lexical index: {0}")]
    Lexical(#[from] lexical::LexicalError),
}

/// Opens the configured store.
pub fn open_store(config: &StoreConfig) -> Result<AnyStore, StoreError> {
    Ok(match config.backend {
        Backend::Redb => AnyStore::Redb(RedbStore::open_with_cache(
            &config.path,
            usize::try_from(config.redb_cache_mb << 20).unwrap_or(usize::MAX),
        )?),
        Backend::Redis => AnyStore::Redis(RedisStore::open(&config.redis_url)?),
    })
}

/// Opens the store, rebuilds the lexical index from it, and serves until `shutdown`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let store = open_store(&config.store)?;
    tracing::info!(backend = ?config.store.backend, "feature store open");
    let features = Arc::new(Features::new(store, Arc::new(LexicalIndex::new()?)));

    // Serve at once; `/ready` waits until the lexical index holds the catalog.
    let readiness = Readiness::default();
    let f = Arc::clone(&features);
    readiness.retry_until_ready("lexical_index", move || {
        let f = Arc::clone(&f);
        async move { f.rebuild_lexical().await }
    });

    let routes = rankmesh_common::limited_routes!(
        FeatureServiceServer::new(FeatureApi::new(features)),
        config.server.max_message_bytes
    );
    serve_routes(INFO, &config, readiness, routes, listeners, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redb_cache_is_sized_within_bounds() {
        let mut c = Config::default();
        assert_eq!(c.store.redb_cache_mb, 1024, "redb's own default");
        for bad in [0, (1 << 20) + 1] {
            c.store.redb_cache_mb = bad;
            let e = c.validate_service().expect_err("out of bounds");
            assert!(e.to_string().contains("store.redb_cache_mb"), "{e}");
        }
        c.store.redb_cache_mb = 256;
        assert!(c.validate_service().is_ok());
    }
}
