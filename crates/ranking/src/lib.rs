//! The ranking service: the entry point storefront backends call (Search, Recommend),
//! and the home of the rollout controller.
//!
//! Its replicas elect a leader for the `rollout` role in etcd; the leader will run
//! the canary controller (promote or roll back) once the model registry exists. Until
//! the Search/Recommend API lands with its issue, it serves health, reflection and
//! the admin port, registers in discovery, and takes part in the election.

use std::future::Future;

use rankmesh_common::config::ConfigError;
use rankmesh_common::election::{Candidate, lead_forever};
use rankmesh_common::server::{Listeners, Readiness, ServiceInfo, instance_id, serve};
use rankmesh_common::service::{ScaffoldError, connect_etcd};
use tokio::sync::watch;

/// Name in discovery and metrics.
pub const SERVICE: &str = "ranking";

/// Election role of the replica that runs the rollout controller.
pub const ROLLOUT_ROLE: &str = "rollout";

rankmesh_common::service_config! {
    /// Configuration of the ranking service.
    pub struct Config {}
}

impl Config {
    fn validate_service(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Runs the service on `listeners` until `shutdown` resolves, then hands over
/// leadership, deregisters and drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ScaffoldError> {
    let etcd = connect_etcd(&config.etcd).await?;
    let grpc_addr = listeners
        .grpc_addr()
        .map_err(rankmesh_common::server::ServeError::Admin)?;
    let identity = instance_id(&config.server, grpc_addr);

    let (stop_tx, stop_rx) = watch::channel(false);
    let (leading_tx, _leading_rx) = watch::channel(false);
    let election = etcd.clone().map(|etcd| {
        let candidate = Candidate::new(etcd, ROLLOUT_ROLE, &identity);
        tokio::spawn(lead_forever(candidate, leading_tx, stop_rx, |leadership| {
            tracing::info!(fence = leadership.revision(), "leading the rollout role");
            // The rollout controller needs the model registry; until then leadership
            // is held (and visible in etcd and `rankmesh_leader`) without work.
            futures_pending()
        }))
    });

    let info = ServiceInfo {
        name: SERVICE,
        grpc_services: Vec::new(),
    };
    let routes = tonic::service::Routes::default();
    let stop = async {
        shutdown.await;
        // Hand over leadership first, so the next leader starts while we drain.
        stop_tx.send_replace(true);
    };
    let served = serve(
        info,
        &config.server,
        etcd,
        Readiness::default(),
        routes,
        listeners,
        stop,
    )
    .await;
    if let Some(task) = election {
        let _ = task.await;
    }
    served?;
    Ok(())
}

async fn futures_pending() {
    std::future::pending::<()>().await;
}
