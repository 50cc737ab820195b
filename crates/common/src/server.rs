//! The serving scaffold every rankmesh service runs in.
//!
//! [`serve`] wraps a service's gRPC routes with `grpc.health.v1`, reflection and the
//! overload guard, serves them and an admin HTTP port (`/metrics`, `/live`, `/ready`),
//! registers the instance in discovery, and on shutdown runs the sequence that lets
//! callers move away without errors:
//!
//! 1. health NOT_SERVING and `/ready` 503, so probes and balancers stop choosing us;
//! 2. deregister from etcd (lease revoked: watchers see it at once);
//! 3. keep accepting for `shutdown_grace_ms`, for clients that have not seen 2 yet;
//! 4. stop accepting and drain in-flight calls, at most `drain_timeout_ms`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::routing::get;
use rankmesh_tls::{Acceptor, ClientCerts};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tower::{Layer, Service, ServiceBuilder};

use crate::authz::{AuthorizeLayer, StorefrontTokens};
use crate::config::{ServerConfig, TlsConfig};
use crate::discovery::{Endpoint, Registration};
use crate::etcd::Etcd;
use crate::observe::RpcTelemetryLayer;
use crate::request_body::{BodyLimits, RequestBodyLayer};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot read the {what} listener's address: {source}")]
    LocalAddr {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] rankmesh_tls::TlsError),
    #[error("{}", crate::config::NO_IDENTITY)]
    NoIdentity,
    #[error("server.tls.storefront_token_files: {0}")]
    Tokens(String),
}

/// The bound gRPC and admin listeners. Binding is separate from serving so tests (and
/// `meshctl up`) can bind port 0 and learn the address first.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
    /// The plaintext health port for probes, where `server.probe_listen` asks.
    pub probe: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &ServerConfig) -> Result<Self, ServeError> {
        async fn listen(what: &'static str, addr: &str) -> Result<TcpListener, ServeError> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    what,
                    addr: addr.to_owned(),
                    source,
                })
        }
        let probe = match config.probe_listen.as_str() {
            "" => None,
            addr => Some(listen("probe", addr).await?),
        };
        Ok(Self {
            grpc: listen("gRPC", &config.listen).await?,
            admin: listen("admin", &config.admin_listen).await?,
            probe,
        })
    }

    pub fn grpc_addr(&self) -> Result<SocketAddr, ServeError> {
        self.grpc
            .local_addr()
            .map_err(|source| ServeError::LocalAddr {
                what: "gRPC",
                source,
            })
    }

    /// The probe port's address, where one is served.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probe.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn admin_addr(&self) -> Result<SocketAddr, ServeError> {
        self.admin
            .local_addr()
            .map_err(|source| ServeError::LocalAddr {
                what: "admin",
                source,
            })
    }
}

/// Named readiness conditions (e.g. "model loaded", "index built"); `/ready` answers
/// 200 only when all hold and the server is not draining. It also carries what
/// `/ready` reports beside them: the models the replica serves and where they run.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<BTreeMap<String, bool>>>,
    models: Arc<Mutex<BTreeMap<String, ServedModel>>>,
}

/// A model a replica serves, as `/ready` and `meshctl endpoints` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServedModel {
    /// Registry model name (`encoder`, `ranker`).
    pub name: String,
    /// Registry version; 0 for a model loaded from a folder.
    pub version: u64,
    /// `fp32` or `int8`.
    pub variant: String,
    /// ONNX Runtime execution provider: `cpu` or `cuda`.
    pub provider: String,
    /// Why it runs on CPU although its device allowed CUDA; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_fallback: Option<String>,
}

impl Readiness {
    /// Reports `model` in the slot `role` (e.g. `ranker`, `ranker-canary`,
    /// `encoder`), replacing what the slot held.
    pub fn set_model(&self, role: &str, model: ServedModel) {
        self.lock_models().insert(role.to_owned(), model);
    }

    /// Empties the slot `role` (a canary retired).
    pub fn clear_model(&self, role: &str) {
        self.lock_models().remove(role);
    }

    /// The models reported, by role.
    pub fn models(&self) -> BTreeMap<String, ServedModel> {
        self.lock_models().clone()
    }

    fn lock_models(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ServedModel>> {
        self.models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set(&self, condition: &str, ok: bool) {
        self.lock().insert(condition.to_owned(), ok);
    }

    /// Conditions that do not hold.
    pub fn failing(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, ok)| !**ok)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Marks `condition` not ready and runs `attempt` in the background, retrying
    /// with jittered backoff (200 ms up to 5 s) until it succeeds, then marks it ready.
    /// For start-up work that depends on something that may still be starting.
    pub fn retry_until_ready<T, E, F, Fut>(&self, condition: &'static str, mut attempt: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: std::fmt::Debug + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.set(condition, false);
        let readiness = self.clone();
        tokio::spawn(async move {
            let mut backoff = crate::discovery::Backoff::new(
                std::time::Duration::from_millis(200),
                std::time::Duration::from_secs(5),
            );
            loop {
                match attempt().await {
                    Ok(done) => {
                        tracing::info!(condition, result = ?done, "ready");
                        readiness.set(condition, true);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(condition, error = %e, "not ready yet; retrying");
                        tokio::time::sleep(backoff.next()).await;
                    }
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        // Single-key inserts cannot leave the map inconsistent; recover from poison.
        self.conditions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What `serve` needs to know about the service it hosts; each service keeps one
/// as a `const INFO`.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInfo {
    /// Short service name used in discovery and metrics, e.g. `ranking`.
    pub name: &'static str,
    /// Fully qualified gRPC service names, for per-service health status.
    pub grpc_services: &'static [&'static str],
}

impl ServiceInfo {
    /// A service named `name` in discovery that serves `grpc_services`.
    pub const fn new(name: &'static str, grpc_services: &'static [&'static str]) -> Self {
        Self {
            name,
            grpc_services,
        }
    }
}

/// The routes of one generated tonic server, with the same message-size limit on
/// what it decodes and what it encodes: every service takes it from
/// `server.max_message_bytes` (the registry from its chunk size), and a limit set
/// on one side only is how a 5 MB response gets refused by its own server.
#[macro_export]
macro_rules! limited_routes {
    ($server:expr, $max_message_bytes:expr) => {{
        let max: usize = $max_message_bytes;
        ::tonic::service::Routes::new(
            $server
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
    }};
}

/// Serves `routes` until `shutdown` resolves, then deregisters and drains.
pub async fn serve(
    info: ServiceInfo,
    config: &ServerConfig,
    etcd: Option<Etcd>,
    readiness: Readiness,
    routes: Routes,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let grpc_addr = listeners.grpc_addr()?;
    let admin_addr = listeners.admin_addr()?;
    let endpoint = endpoint_for(info.name, config, grpc_addr, admin_addr);
    let acceptor = acceptor(info.name, &config.tls)?;
    let tokens =
        StorefrontTokens::load(&config.tls.storefront_token_files).map_err(ServeError::Tokens)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, &info, ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rankmesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    // Admin port: metrics and probes, up for the whole life of the process.
    let (draining_tx, draining) = watch::channel(false);
    let (admin_stop_tx, admin_stop) = watch::channel(false);
    let admin = tokio::spawn(serve_admin(
        listeners.admin,
        readiness.clone(),
        draining.clone(),
        info.name,
        endpoint.instance.clone(),
        admin_stop,
    ));

    let probe = listeners.probe.map(|listener| {
        tokio::spawn(serve_probe(
            listener,
            readiness.clone(),
            draining.clone(),
            admin_stop_tx.subscribe(),
        ))
    });

    let registration = etcd.map(|e| Registration::start(e, endpoint.clone()));
    tracing::info!(service = info.name, instance = %endpoint.instance, grpc = %grpc_addr, admin = %admin_addr, "serving");

    // Stop accepting only after steps 1-3 of the shutdown sequence.
    let (stop_accepting_tx, mut stop_accepting) = watch::channel(false);
    let incoming = rankmesh_tls::server::incoming(listeners.grpc, acceptor);
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        // A peer that stops answering pings is gone: its connection and streams
        // are dropped instead of held until the kernel notices.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(stack(config, tokens))
        .add_routes(routes)
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_accepting.wait_for(|s| *s).await;
        });
    tokio::pin!(server);

    tokio::select! {
        r = &mut server => {
            // The server stopped on its own: an accept error. Report it.
            let _ = admin_stop_tx.send(true);
            return r.map_err(Into::into);
        }
        () = shutdown => {}
    }

    tracing::info!(
        service = info.name,
        "shutting down: NOT_SERVING, deregistering, draining"
    );
    draining_tx.send_replace(true);
    set_health(&health, &info, ServingStatus::NotServing).await;
    if let Some(reg) = registration
        && let Err(e) = reg.deregister().await
    {
        tracing::warn!(error = %e, "deregister failed; the lease will expire");
    }
    // Keep serving through the grace period: requests routed from stale endpoint sets
    // still succeed here.
    tokio::select! {
        r = &mut server => { let _ = admin_stop_tx.send(true); return r.map_err(Into::into); }
        () = tokio::time::sleep(config.shutdown_grace()) => {}
    }
    stop_accepting_tx.send_replace(true);
    // One deadline for the whole drain: the gRPC port's in-flight calls, then the
    // admin and probe ports, whose graceful stop waits for every open connection
    // (a health Watch on the probe port never ends by itself).
    let deadline = tokio::time::Instant::now() + config.drain_timeout();
    let drained = tokio::time::timeout_at(deadline, &mut server).await;
    let result = match drained {
        Ok(r) => r.map_err(Into::into),
        Err(_) => {
            tracing::warn!(timeout = ?config.drain_timeout(), "drain deadline passed; cancelling in-flight calls");
            Ok(())
        }
    };
    let _ = admin_stop_tx.send(true);
    // Past the deadline the side ports still get a moment to close cleanly.
    let deadline = deadline.max(tokio::time::Instant::now() + SIDE_PORT_CLOSE);
    stop_side_port("admin", admin, deadline).await;
    if let Some(probe) = probe {
        stop_side_port("probe", probe, deadline).await;
    }
    tracing::info!(service = info.name, "stopped");
    result
}

/// The least time the admin and probe ports get to close once the gRPC port has
/// drained (a scrape or probe in flight finishes in milliseconds).
const SIDE_PORT_CLOSE: Duration = Duration::from_millis(500);

/// Waits for the admin or probe server to stop gracefully until `deadline`, then
/// drops what it still holds open.
async fn stop_side_port<E: std::fmt::Display>(
    port: &'static str,
    mut task: tokio::task::JoinHandle<Result<(), E>>,
    deadline: tokio::time::Instant,
) {
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(port, error = %e, "server error"),
        Ok(Err(e)) => tracing::warn!(port, error = %e, "server task failed"),
        Err(_) => {
            task.abort();
            tracing::warn!(port, "connections still open at the drain deadline; closed");
        }
    }
}

/// The TLS acceptor `tls` configures; None (with a warning) for plaintext, which
/// must be asked for (`insecure`): without files a service does not serve. The
/// admin port (metrics, probes) stays plaintext: bind it to loopback or a private
/// network.
fn acceptor(service: &str, tls: &TlsConfig) -> Result<Option<Arc<Acceptor>>, ServeError> {
    let Some(files) = tls.files() else {
        if !tls.insecure {
            return Err(ServeError::NoIdentity);
        }
        tracing::warn!(
            service,
            "server.tls.insecure: serving plaintext gRPC; anyone who reaches the port can call any RPC (no identities, no authorization)"
        );
        return Ok(None);
    };
    // Storefronts with a bearer token come without a certificate.
    let client_certs = if tls.storefront_token_files.is_empty() {
        ClientCerts::Required
    } else {
        ClientCerts::Optional
    };
    let acceptor = Acceptor::with_poll(&files, client_certs, rankmesh_tls::reload::POLL)?;
    tracing::info!(service, identity = %acceptor.identity(), ?client_certs, "serving mutual TLS");
    Ok(Some(Arc::new(acceptor)))
}

/// The same health status for the whole server ("") and each of its services.
async fn set_health(
    health: &tonic_health::server::HealthReporter,
    info: &ServiceInfo,
    status: ServingStatus,
) {
    health.set_service_status("", status).await;
    for s in info.grpc_services {
        health.set_service_status(*s, status).await;
    }
}

/// The middleware every gRPC request passes through, outermost first.
type Stack = tower::layer::util::Stack<
    RequestBodyLayer,
    tower::layer::util::Stack<
        OverloadLayer,
        tower::layer::util::Stack<
            AuthorizeLayer,
            tower::layer::util::Stack<RpcTelemetryLayer, tower::layer::util::Identity>,
        >,
    >,
>;

/// How often an idle connection is pinged, and how long a ping may go unanswered.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

fn stack(config: &ServerConfig, tokens: StorefrontTokens) -> ServiceBuilder<Stack> {
    ServiceBuilder::new()
        // A span per RPC, child of the caller's traceparent, and per-RPC metrics;
        // outermost, so refused and shed requests are counted and traced too.
        .layer(RpcTelemetryLayer)
        // Who may call what (over mutual TLS), before any work is admitted.
        .layer(AuthorizeLayer::new(tokens))
        // Bound in-flight work across all connections; answer RESOURCE_EXHAUSTED at once
        // when full, so overload sheds load instead of queueing it.
        .layer(OverloadLayer::new(config.max_concurrency))
        // A request must arrive in time and within the size limit, or the slot it
        // took is freed.
        .layer(RequestBodyLayer::new(BodyLimits {
            request: Duration::from_millis(config.request_body_timeout_ms),
            upload_idle: Duration::from_millis(config.upload_idle_timeout_ms),
            upload_min_rate: config.upload_min_bytes_per_sec,
            max_message_bytes: config.max_message_bytes,
        }))
}

fn endpoint_for(
    service: &str,
    config: &ServerConfig,
    grpc: SocketAddr,
    admin: SocketAddr,
) -> Endpoint {
    let host = if !config.advertise_host.is_empty() {
        config.advertise_host.clone()
    } else if grpc.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        grpc.ip().to_string()
    };
    let instance = instance_id(config, grpc);
    let port = match config.advertise_port {
        0 => grpc.port(),
        p => p,
    };
    Endpoint {
        instance,
        service: service.to_owned(),
        grpc: format!("http://{host}:{port}"),
        admin: format!("http://{host}:{}", admin.port()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_ms: now_ms(),
    }
}

/// This process's instance id: configured, or derived from host name, pid and port.
pub fn instance_id(config: &ServerConfig, grpc: SocketAddr) -> String {
    if config.instance_id.is_empty() {
        format!("{}-{}-{}", hostname(), std::process::id(), grpc.port())
    } else {
        config.instance_id.clone()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn serve_admin(
    listener: TcpListener,
    readiness: Readiness,
    draining: watch::Receiver<bool>,
    service: &'static str,
    instance: String,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let metrics = crate::telemetry::prometheus();
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/live", get(|| async { "live\n" }))
        .route(
            "/ready",
            get(move || {
                let failing = readiness.failing();
                let models = readiness.models();
                let draining = *draining.borrow();
                let instance = instance.clone();
                async move {
                    let ready = failing.is_empty() && !draining;
                    let body = serde_json::json!({
                        "service": service,
                        "instance": instance,
                        "ready": ready,
                        "draining": draining,
                        "failing": failing,
                        "models": models,
                    })
                    .to_string();
                    let code = if ready {
                        http::StatusCode::OK
                    } else {
                        http::StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        code,
                        [(http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

/// How often the probe port's status follows readiness.
const PROBE_REFRESH: Duration = Duration::from_millis(250);

/// Serves `grpc.health.v1` alone, in plaintext, until `stop`: service `""` says
/// what `/ready` says (SERVING once every readiness condition holds, NOT_SERVING
/// while any fails or the replica drains), `liveness` is SERVING while the
/// process runs. A separate reporter from the mesh's own health service, which
/// says SERVING from the start for callers that are already past readiness.
async fn serve_probe(
    listener: TcpListener,
    readiness: Readiness,
    draining: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(PROBE_LIVENESS, ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    // In this task, not a spawned one: when the drain deadline aborts the probe
    // server, the loop goes with it.
    let follow = async move {
        let mut shown = ServingStatus::NotServing;
        loop {
            let ready = readiness.failing().is_empty() && !*draining.borrow();
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if status != shown {
                reporter.set_service_status("", status).await;
                shown = status;
            }
            tokio::time::sleep(PROBE_REFRESH).await;
        }
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let served = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    tokio::select! {
        r = served => r,
        () = follow => unreachable!("the readiness loop never ends"),
    }
}

/// The probe port's service that is SERVING while the process runs.
pub const PROBE_LIVENESS: &str = "liveness";

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                futures::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// Limits in-flight requests across all connections and rejects the excess at once
/// with RESOURCE_EXHAUSTED.
///
/// This is `ConcurrencyLimit` + `LoadShed` fused: tower's pair needs `poll_ready` to
/// be driven per request, and its `Overloaded` error would reach tonic as an opaque
/// error (UNKNOWN) instead of a gRPC status; and it cannot exempt health checks.
#[derive(Debug, Clone)]
pub struct OverloadLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl OverloadLayer {
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> Layer<S> for OverloadLayer {
    type Service = Overload<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Overload {
            inner,
            permits: Arc::clone(&self.permits),
            limit: self.limit,
        }
    }
}

/// See [`OverloadLayer`].
#[derive(Debug, Clone)]
pub struct Overload<S> {
    inner: S,
    /// Shared by every connection's clone: the limit is per process, not per
    /// connection, so many clients cannot multiply it.
    permits: Arc<Semaphore>,
    limit: usize,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> Service<http::Request<B>> for Overload<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Standard tower dance: use the clone we polled ready, leave a fresh one behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Never shed: health probes must answer under overload, or orchestrators
        // would restart a busy-but-healthy replica.
        if crate::rpc::is_health_or_reflection(req.uri().path()) {
            return Box::pin(inner.call(req));
        }
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => {
                metrics::gauge!("rankmesh_inflight_requests").increment(1.0);
                let fut = inner.call(req);
                Box::pin(async move {
                    let r = fut.await;
                    metrics::gauge!("rankmesh_inflight_requests").decrement(1.0);
                    drop(permit);
                    r
                })
            }
            Err(_) => {
                metrics::counter!("rankmesh_requests_shed_total").increment(1);
                let status = tonic::Status::resource_exhausted(format!(
                    "overloaded: {} requests in flight; retry with backoff",
                    self.limit
                ));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::format_ms(0), "1970-01-01 00:00:00");
        assert_eq!(super::format_ms(1_795_824_000_000), "2026-11-28 00:00:00");
        assert_eq!(
            super::format_ms(951_782_400_000 + 3_723_000),
            "2000-02-29 01:02:03"
        );
    }

    use super::*;
    use tower::ServiceExt;
    use tower_test::mock;

    fn req(path: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(path)
            .body(())
            .expect("valid request")
    }

    fn grpc_status(resp: &http::Response<String>) -> Option<String> {
        resp.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The inner service's next request, answered "ok".
    async fn answer_ok(
        handle: &mut mock::Handle<http::Request<()>, http::Response<String>>,
        what: &str,
    ) {
        let (_, send) = handle.next_request().await.expect(what);
        send.send_response(http::Response::new("ok".into()));
    }

    #[tokio::test]
    async fn sheds_beyond_limit_and_recovers() {
        let (svc, mut handle) = mock::pair::<http::Request<()>, http::Response<String>>();
        let mut svc = OverloadLayer::new(1).layer(svc);
        handle.allow(10);

        let first = svc
            .ready()
            .await
            .expect("ready")
            .call(req("/rankmesh.ranking.v1.RankingService/Search"));

        // Second concurrent call: rejected at once, without reaching the inner service.
        let second = svc
            .ready()
            .await
            .expect("ready")
            .call(req("/rankmesh.ranking.v1.RankingService/Search"))
            .await
            .expect("a status response, not an error");
        assert_eq!(
            grpc_status(&second).as_deref(),
            Some("8"),
            "RESOURCE_EXHAUSTED"
        );

        // Health checks are never shed.
        let check = req("/grpc.health.v1.Health/Check");
        let health = svc.ready().await.expect("ready").call(check);

        answer_ok(&mut handle, "first reached inner").await;
        answer_ok(&mut handle, "health reached inner").await;
        assert_eq!(first.await.expect("first").into_body(), "ok");
        assert_eq!(health.await.expect("health").into_body(), "ok");

        // The permit came back: the next call goes through.
        let search = req("/rankmesh.ranking.v1.RankingService/Search");
        let third = svc.ready().await.expect("ready").call(search);
        answer_ok(&mut handle, "third reached inner").await;
        assert_eq!(third.await.expect("third").into_body(), "ok");
    }

    #[test]
    fn readiness_lists_failing_conditions() {
        let r = Readiness::default();
        assert!(r.failing().is_empty());
        r.set("model", false);
        r.set("index", true);
        assert_eq!(r.failing(), vec!["model"]);
        r.set("model", true);
        assert!(r.failing().is_empty());
    }

    #[test]
    fn registers_the_advertised_host_and_port_when_set() {
        let grpc = SocketAddr::from(([0, 0, 0, 0], 5000));
        let admin = SocketAddr::from(([0, 0, 0, 0], 5001));
        let mut config = ServerConfig::default();
        let e = endpoint_for("ranking", &config, grpc, admin);
        assert_eq!(e.grpc, "http://127.0.0.1:5000");
        config.advertise_host = "ranking-1".into();
        config.advertise_port = 6000;
        let e = endpoint_for("ranking", &config, grpc, admin);
        assert_eq!(e.grpc, "http://ranking-1:6000");
        // The admin port is not proxied: probes reach the process itself.
        assert_eq!(e.admin, "http://ranking-1:5001");
    }
}
