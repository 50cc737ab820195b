//! The etcd connection every service shares, with member health-checking.
//!
//! `etcd-client` balances over all configured members but never drops a dead one by
//! itself (etcd-client#39): requests routed to it fail until it returns. So a
//! background task probes each member with its own single-endpoint client and removes
//! unhealthy members from the shared client, re-adding them once they answer again.
//! At least one member always stays in (when all look dead, removing them would only
//! turn "maybe" into "certainly" failing).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio::task::JoinHandle;

use crate::config::EtcdConfig;

/// HTTP/2 keep-alive interval towards etcd. etcd answers faster pingers with
/// GOAWAY (too_many_pings), so never go below 10 s.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoints configured")]
    NotConfigured,
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("etcd request timed out after {0:?}")]
    Timeout(Duration),
    #[error("etcd TLS: {0}")]
    Tls(String),
}

/// A shared etcd client plus the task that keeps its member set healthy. Cheap to
/// clone; the health task stops when the last clone is dropped.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    config: EtcdConfig,
    health: Arc<HealthTask>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.config.endpoints)
            .finish_non_exhaustive()
    }
}

struct HealthTask {
    handle: JoinHandle<()>,
    /// Last probe result per member, for `/ready` and metrics.
    healthy: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Drop for HealthTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Connection options; with `config.tls`, TLS 1.3 with the workload's client
/// certificate, the members checked against the configured CA and name. The
/// files are read here, at connect time: a rotated client certificate is used
/// from the next connect (the services' own gRPC identities reload live).
fn options(config: &EtcdConfig) -> Result<ConnectOptions, EtcdError> {
    let options = ConnectOptions::new()
        .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT);
    let Some(files) = config.tls.files() else {
        return Ok(options);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| EtcdError::Tls(format!("{}: {e}", path.display())))
    };
    let name = match config.tls.server_name.as_str() {
        "" => rankmesh_tls::Identity::server_name("etcd"),
        name => name.to_owned(),
    };
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)?))
        .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?))
        .domain_name(name);
    Ok(options.with_tls(tls))
}

impl Etcd {
    /// Creates the client. Connections are made lazily, so this succeeds while etcd is
    /// down; callers see errors per request and retry.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::NotConfigured);
        }
        let client = Client::connect(&config.endpoints, Some(options(config)?)).await?;
        let healthy = Arc::new(Mutex::new(
            config
                .endpoints
                .iter()
                .map(|e| (e.clone(), true))
                .collect::<BTreeMap<_, _>>(),
        ));
        let handle = tokio::spawn(health_loop(
            client.clone(),
            config.clone(),
            Arc::clone(&healthy),
        ));
        Ok(Self {
            client,
            config: config.clone(),
            health: Arc::new(HealthTask { handle, healthy }),
        })
    }

    /// A clone of the shared client (clones share connections).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// Members that answered their last probe.
    pub fn healthy_endpoints(&self) -> Vec<String> {
        lock(&self.health.healthy)
            .iter()
            .filter(|(_, ok)| **ok)
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// Runs one unary request with the configured timeout.
    pub async fn timed<T, F>(&self, fut: F) -> Result<T, EtcdError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let limit = self.config.request_timeout();
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(EtcdError::Timeout(limit)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (single
    // inserts), so recover the guard instead of propagating the poison.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn probe(client: &mut Client, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, client.status()).await,
        Ok(Ok(_))
    )
}

async fn health_loop(
    shared: Client,
    config: EtcdConfig,
    healthy: Arc<Mutex<BTreeMap<String, bool>>>,
) {
    let timeout = config.request_timeout().min(Duration::from_secs(1));
    let mut probes: BTreeMap<String, Client> = BTreeMap::new();
    // Whether each member is currently part of the shared client's balance set.
    let mut included: BTreeMap<String, bool> =
        config.endpoints.iter().map(|e| (e.clone(), true)).collect();
    let mut tick = tokio::time::interval(config.health_check_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut results = BTreeMap::new();
        for ep in &config.endpoints {
            if !probes.contains_key(ep) {
                let connected = match options(&config) {
                    Ok(o) => Client::connect([ep.as_str()], Some(o)).await.ok(),
                    Err(_) => None,
                };
                match connected {
                    Some(c) => {
                        probes.insert(ep.clone(), c);
                    }
                    None => {
                        results.insert(ep.clone(), false);
                        continue;
                    }
                }
            }
            let ok = match probes.get_mut(ep) {
                Some(c) => probe(c, timeout).await,
                None => false,
            };
            results.insert(ep.clone(), ok);
        }
        let any_healthy = results.values().any(|ok| *ok);
        for (ep, ok) in &results {
            metrics::gauge!("rankmesh_etcd_endpoint_healthy", "endpoint" => ep.clone())
                .set(if *ok { 1.0 } else { 0.0 });
            let want_in = *ok || !any_healthy;
            let is_in = included.get(ep).copied().unwrap_or(true);
            if want_in && !is_in {
                if shared.add_endpoint(ep).await.is_ok() {
                    tracing::info!(endpoint = %ep, "etcd member healthy again; re-added");
                    included.insert(ep.clone(), true);
                }
            } else if !want_in && is_in && shared.remove_endpoint(ep).await.is_ok() {
                tracing::warn!(endpoint = %ep, "etcd member unhealthy; removed from balance set");
                included.insert(ep.clone(), false);
            }
        }
        metrics::gauge!("rankmesh_etcd_session_up").set(if any_healthy { 1.0 } else { 0.0 });
        *lock(&healthy) = results;
    }
}
