//! The model registry: versioned, encrypted, signed model artifacts in an object store, with versions and stages in etcd.
//!
//! Serves gRPC health and reflection, the admin port, and registers in discovery as
//! `registry`; its own API (`rankmesh.registry.v1.ModelRegistry`, see the proto) is
//! being built: [`envelope`] (AES-256-GCM envelope encryption with rotatable master
//! keys, ed25519-signed manifests) is its first part.

pub mod envelope;
pub mod store;

use std::future::Future;

use rankmesh_common::config::ConfigError;
use rankmesh_common::server::{Listeners, Readiness, ServiceInfo};
use rankmesh_common::service::{ScaffoldError, serve_routes};

/// Name in discovery and metrics.
pub const SERVICE: &str = "registry";

rankmesh_common::service_config! {
    /// Configuration of the registry service.
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
