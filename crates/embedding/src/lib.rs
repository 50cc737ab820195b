//! The embedding service: the ONNX text encoder with dynamic batching and the item-vector (HNSW) index.
//!
//! Serves gRPC health and reflection, the admin port, and registers in discovery as
//! `embedding`; its own API (`rankmesh.embedding.v1.EmbeddingService`, see the proto) lands with its issue.

use std::future::Future;

use rankmesh_common::config::ConfigError;
use rankmesh_common::server::{Listeners, Readiness, ServiceInfo};
use rankmesh_common::service::{ScaffoldError, serve_routes};

/// Name in discovery and metrics.
pub const SERVICE: &str = "embedding";

rankmesh_common::service_config! {
    /// Configuration of the embedding service.
    pub struct Config {}
}

impl Config {
    fn validate_service(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Runs the service on `listeners` until `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ScaffoldError> {
    let info = ServiceInfo {
        name: SERVICE,
        grpc_services: Vec::new(),
    };
    let routes = tonic::service::Routes::default();
    serve_routes(
        info,
        &config,
        Readiness::default(),
        routes,
        listeners,
        shutdown,
    )
    .await
}
