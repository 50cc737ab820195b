//! The shared `main` of every service binary, so each `main.rs` stays a few lines:
//! load and validate config (exit 64 on error) before binding anything, init
//! telemetry, bind, run until SIGTERM/SIGINT, drain.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{ConfigError, EtcdConfig, ServerConfig};
use crate::server::Listeners;
use crate::telemetry::TelemetryConfig;

/// A service's top-level config: the sections the scaffold needs, plus validation of
/// what serde cannot check.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    fn server(&self) -> &ServerConfig;
    fn etcd(&self) -> &EtcdConfig;
    fn telemetry(&self) -> &TelemetryConfig;
    /// Service-specific checks; the common sections are validated by [`run_main`].
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Every check a binary runs on its loaded config before binding anything: the
/// common sections, then the service's own.
pub fn validate_all<C: ServiceConfig>(config: &C) -> Result<(), ConfigError> {
    config.etcd().validate()?;
    config.telemetry().validate()?;
    config.server().validate()?;
    config.validate()
}

/// The shutdown signal handed to a service's `run`.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a service binary. `run` is the service library's `run(config, listeners,
/// shutdown)`.
pub fn run_main<C, F, Fut, E>(service: &'static str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, Listeners, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let config: C = crate::config::load_or_exit(validate_all::<C>);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match crate::telemetry::init(service, config.telemetry()) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: telemetry: {e}");
                return ExitCode::FAILURE;
            }
        };
        // This process's identity for its calls to other services.
        if let Some(files) = config.server().tls.files() {
            match rankmesh_tls::client::ClientTls::new(&files) {
                Ok(tls) => rankmesh_tls::client::install(tls),
                Err(e) => {
                    tracing::error!(error = %e, "cannot load the TLS files");
                    return ExitCode::FAILURE;
                }
            }
        }
        let listeners = match Listeners::bind(config.server()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot bind");
                return ExitCode::FAILURE;
            }
        };
        match run(
            config,
            listeners,
            Box::pin(crate::server::shutdown_signal()),
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "{service} failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// Declares a service `Config` with the common sections plus service-specific ones,
/// and implements [`ServiceConfig`] for it.
#[macro_export]
macro_rules! service_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            /// gRPC and admin listeners, overload limit, shutdown timing.
            pub server: $crate::config::ServerConfig,
            /// The control plane; empty endpoints run without etcd.
            pub etcd: $crate::config::EtcdConfig,
            /// Logs and trace export.
            pub telemetry: $crate::telemetry::TelemetryConfig,
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $crate::scaffold::ServiceConfig for $name {
            fn server(&self) -> &$crate::config::ServerConfig {
                &self.server
            }
            fn etcd(&self) -> &$crate::config::EtcdConfig {
                &self.etcd
            }
            fn telemetry(&self) -> &$crate::telemetry::TelemetryConfig {
                &self.telemetry
            }
            fn validate(&self) -> Result<(), $crate::config::ConfigError> {
                // Each service defines `validate_service` for its own sections.
                self.validate_service()
            }
        }
    };
}

/// Connects to etcd when endpoints are configured; `None` runs without a control
/// plane (static discovery, no election).
pub async fn connect_etcd(config: &EtcdConfig) -> Result<Option<crate::etcd::Etcd>, ScaffoldError> {
    if config.enabled() {
        Ok(Some(crate::etcd::Etcd::connect(config).await?))
    } else {
        Ok(None)
    }
}

/// Errors every service's `run` can return before its own.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(transparent)]
    Serve(#[from] crate::server::ServeError),
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
}

/// Connects to etcd (when configured) and serves `routes` with the scaffold: the
/// whole `run` of a service that needs nothing else around its gRPC routes.
pub async fn serve_routes<C: ServiceConfig>(
    info: crate::server::ServiceInfo,
    config: &C,
    readiness: crate::server::Readiness,
    routes: tonic::service::Routes,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ScaffoldError> {
    let etcd = connect_etcd(config.etcd()).await?;
    crate::server::serve(
        info,
        config.server(),
        etcd,
        readiness,
        routes,
        listeners,
        shutdown,
    )
    .await?;
    Ok(())
}
