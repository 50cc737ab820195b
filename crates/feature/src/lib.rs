//! The feature service: the online store of item and user features, the lexical (BM25) candidate source and the real-time event sink.
//!
//! Serves gRPC health and reflection, the admin port, and registers in discovery as
//! `feature`; its own API (`rankmesh.feature.v1.FeatureService`, see the proto) lands with its issue.

use std::future::Future;

use rankmesh_common::config::ConfigError;
use rankmesh_common::server::{Listeners, Readiness, ServiceInfo};
use rankmesh_common::service::{ScaffoldError, serve_routes};

/// Name in discovery and metrics.
pub const SERVICE: &str = "feature";

rankmesh_common::service_config! {
    /// Configuration of the feature service.
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
