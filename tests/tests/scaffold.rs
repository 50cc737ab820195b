//! The serving scaffold end to end: health, reflection, admin port, overload and
//! graceful shutdown, on a real server over loopback; and config errors exit 64.

use std::sync::Arc;
use std::time::Duration;

use rankmesh_common::config::{ServerConfig, TlsConfig};
use rankmesh_common::server::{Listeners, Readiness, ServiceInfo, serve};
use rankmesh_proto::pb::ranking::v1 as ranking;
use rankmesh_tests::http_get;
use rankmesh_tests::process::binary;
use tokio::sync::{Notify, oneshot};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A Search that waits until released, to hold requests in flight.
struct Gate {
    release: Arc<Notify>,
    arrived: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl ranking::ranking_service_server::RankingService for Gate {
    async fn search(
        &self,
        _req: tonic::Request<ranking::SearchRequest>,
    ) -> Result<tonic::Response<ranking::SearchResponse>, tonic::Status> {
        let released = self.release.notified();
        self.arrived
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        released.await;
        Ok(tonic::Response::new(ranking::SearchResponse::default()))
    }

    async fn recommend(
        &self,
        _req: tonic::Request<ranking::RecommendRequest>,
    ) -> Result<tonic::Response<ranking::RecommendResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn featurize(
        &self,
        _req: tonic::Request<ranking::SearchRequest>,
    ) -> Result<tonic::Response<ranking::FeaturizeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

#[tokio::test]
async fn overload_health_readiness_and_graceful_drain() {
    let config = ServerConfig {
        max_concurrency: 2,
        shutdown_grace_ms: 300,
        drain_timeout_ms: 5_000,
        // The scaffold's behaviour, not TLS, is under test here (tls.rs and
        // authz.rs test that); plaintext must be asked for.
        tls: TlsConfig::insecure(),
        probe_listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    let listeners = Listeners::bind(&config).await.expect("bind");
    let grpc = format!("http://{}", listeners.grpc_addr().expect("addr"));
    let probe = format!("http://{}", listeners.probe_addr().expect("probe port"));
    let admin = listeners.admin_addr().expect("addr").to_string();
    let release = Arc::new(Notify::new());
    let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let routes = tonic::service::Routes::new(
        ranking::ranking_service_server::RankingServiceServer::new(Gate {
            release: Arc::clone(&release),
            arrived: Arc::clone(&arrived),
        }),
    );
    let readiness = Readiness::default();
    readiness.set("model", false);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let info = ServiceInfo {
        name: "ranking",
        grpc_services: &["rankmesh.ranking.v1.RankingService"],
    };
    let server = tokio::spawn({
        let readiness = readiness.clone();
        async move {
            serve(info, &config, None, readiness, routes, listeners, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });

    let channel = tonic::transport::Endpoint::from_shared(grpc.clone())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "rankmesh.ranking.v1.RankingService".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    // Admin: live always; ready only when every condition holds. The probe port
    // (plaintext grpc.health.v1, for Kubernetes' gRPC probes) says the same.
    let probe = tonic::transport::Endpoint::from_shared(probe)
        .expect("uri")
        .connect()
        .await
        .expect("connect to the probe port");
    let probe_health = HealthClient::new(probe.clone());
    assert_eq!(
        probed(&probe_health, "liveness").await,
        Some(ServingStatus::Serving)
    );
    assert_eq!(http_get(&admin, "/live").await.expect("live").0, 200);
    let (code, body) = http_get(&admin, "/ready").await.expect("ready");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("model"), "{body}");
    assert_eq!(
        probed(&probe_health, "").await,
        Some(ServingStatus::NotServing)
    );
    readiness.set("model", true);
    assert_eq!(http_get(&admin, "/ready").await.expect("ready").0, 200);
    probe_says(&probe_health, ServingStatus::Serving).await;
    // It serves health and nothing else.
    let other = ranking::ranking_service_client::RankingServiceClient::new(probe)
        .search(ranking::SearchRequest::default())
        .await
        .expect_err("not on the probe port");
    assert_eq!(other.code(), tonic::Code::Unimplemented, "{other:?}");

    // Reflection lists our service.
    let mut refl = tonic_reflection_client(channel.clone()).await;
    assert!(
        refl.iter()
            .any(|s| s == "rankmesh.ranking.v1.RankingService"),
        "{refl:?}"
    );
    refl.clear();

    // Fill both permits, then the third call is shed at once.
    let client = ranking::ranking_service_client::RankingServiceClient::new(channel.clone());
    let inflight: Vec<_> = (0..2)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { c.search(ranking::SearchRequest::default()).await })
        })
        .collect();
    rankmesh_tests::eventually(Duration::from_secs(5), "two calls in flight", || {
        let n = arrived.load(std::sync::atomic::Ordering::SeqCst);
        async move { (n == 2).then_some(()) }
    })
    .await;
    let mut c = client.clone();
    let shed = tokio::time::timeout(
        Duration::from_secs(2),
        c.search(ranking::SearchRequest::default()),
    )
    .await
    .expect("shed at once, not queued")
    .expect_err("over the limit");
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    assert!(shed.message().contains("overloaded"), "{}", shed.message());
    // Health is exempt from shedding.
    assert!(
        health
            .check(HealthCheckRequest {
                service: String::new()
            })
            .await
            .is_ok()
    );
    let metrics = http_get(&admin, "/metrics").await.expect("metrics").1;
    assert!(
        metrics.contains("rankmesh_requests_shed_total"),
        "{metrics}"
    );

    // Shutdown: NOT_SERVING and /ready 503 at once, while in-flight calls drain.
    stop_tx.send(()).expect("server running");
    rankmesh_tests::eventually(Duration::from_secs(5), "NOT_SERVING", || {
        let mut h = health.clone();
        async move {
            let r = h
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?;
            (r.into_inner().status() == ServingStatus::NotServing).then_some(())
        }
    })
    .await;
    assert_eq!(http_get(&admin, "/ready").await.expect("ready").0, 503);
    probe_says(&probe_health, ServingStatus::NotServing).await;
    assert_eq!(
        probed(&probe_health, "liveness").await,
        Some(ServingStatus::Serving),
        "alive while draining"
    );
    release.notify_waiters();
    for call in inflight {
        call.await
            .expect("task")
            .expect("in-flight call completed during drain");
    }
    server.await.expect("server task").expect("clean shutdown");
}

/// Watchers hold streams open for as long as the server lets them: one on the
/// probe port (a health Watch, which never ends by itself) and one on the admin
/// port (an HTTP/1.1 request whose headers never finish) must not hold a stopping
/// replica past its drain deadline, or Kubernetes waits out the whole grace
/// period and kills it. Each alone held it before the deadline covered them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_watchers_do_not_hold_shutdown_past_the_drain_deadline() {
    const DRAIN_MS: u64 = 1_000;
    let config = ServerConfig {
        shutdown_grace_ms: 0,
        drain_timeout_ms: DRAIN_MS,
        tls: TlsConfig::insecure(),
        probe_listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    let listeners = Listeners::bind(&config).await.expect("bind");
    let probe = format!("http://{}", listeners.probe_addr().expect("probe port"));
    let admin = listeners.admin_addr().expect("addr").to_string();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let info = ServiceInfo {
        name: "ranking",
        grpc_services: &["rankmesh.ranking.v1.RankingService"],
    };
    let server = tokio::spawn(async move {
        let routes = tonic::service::Routes::new(
            ranking::ranking_service_server::RankingServiceServer::new(Gate {
                release: Arc::new(Notify::new()),
                arrived: Arc::default(),
            }),
        );
        serve(
            info,
            &config,
            None,
            Readiness::default(),
            routes,
            listeners,
            async {
                let _ = stop_rx.await;
            },
        )
        .await
    });

    let channel = tonic::transport::Endpoint::from_shared(probe)
        .expect("uri")
        .connect()
        .await
        .expect("connect to the probe port");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    watch
        .message()
        .await
        .expect("first status")
        .expect("a status");
    let mut stalled = tokio::net::TcpStream::connect(&admin).await.expect("admin");
    tokio::io::AsyncWriteExt::write_all(&mut stalled, b"GET /metrics HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("headers that never finish");

    let stopping = std::time::Instant::now();
    stop_tx.send(()).expect("server running");
    tokio::time::timeout(Duration::from_millis(DRAIN_MS * 5), server)
        .await
        .expect("the replica stops despite the open watchers")
        .expect("server task")
        .expect("clean shutdown");
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_millis(DRAIN_MS * 3),
        "stopped in {took:?}"
    );
    drop((watch, stalled));
}

/// What the health service at `client` says of `service` (None: no answer).
async fn probed(
    client: &HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Option<ServingStatus> {
    let mut c = client.clone();
    let r = c
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    Some(r.into_inner().status())
}

/// Waits (the probe port follows readiness every 250 ms) until the probe port's
/// overall status is `want`.
async fn probe_says(client: &HealthClient<tonic::transport::Channel>, want: ServingStatus) {
    rankmesh_tests::eventually(
        Duration::from_secs(5),
        "the probe port's status",
        || async { (probed(client, "").await == Some(want)).then_some(()) },
    )
    .await;
}

/// Lists services through grpc.reflection.v1.
async fn tonic_reflection_client(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection_pb::ServerReflectionRequest;
    use tonic_reflection_pb::server_reflection_client::ServerReflectionClient;
    use tonic_reflection_pb::server_reflection_request::MessageRequest;
    use tonic_reflection_pb::server_reflection_response::MessageResponse;
    let mut c = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = c
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .expect("reflection")
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.expect("reflection message") {
        if let Some(MessageResponse::ListServicesResponse(l)) = msg.message_response {
            out.extend(l.service.into_iter().map(|s| s.name));
        }
    }
    out
}

use tonic_reflection::pb::v1 as tonic_reflection_pb;

#[test]
fn unknown_config_key_exits_64_naming_key_and_value() {
    let out = std::process::Command::new(binary("rankmesh-feature"))
        .env("RANKMESH__SERVER__LISTN", "0.0.0.0:1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.listn")
            && err.contains("0.0.0.0:1")
            && err.contains("RANKMESH__SERVER__LISTN"),
        "{err}"
    );
}

#[test]
fn bad_value_in_file_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ranking.toml");
    std::fs::write(
        &path,
        "[etcd]\nlease_ttl_s = 1\nendpoints = [\"http://127.0.0.1:1\"]\n",
    )
    .expect("write");
    let out = std::process::Command::new(binary("rankmesh-ranking"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd.lease_ttl_s"), "{err}");
}

/// Fail closed: a service given no TLS identity and not told to serve plaintext
/// refuses to start (exit 64, naming what to set) instead of serving plaintext;
/// with `server.tls.insecure` it starts, and with both it refuses again.
#[test]
fn a_service_without_a_tls_identity_refuses_to_start() {
    let start = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(binary("rankmesh-feature"));
        cmd.env("RANKMESH__SERVER__LISTEN", "127.0.0.1:0")
            .env("RANKMESH__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env_remove("RANKMESH__SERVER__TLS__INSECURE")
            .envs(env.iter().copied());
        cmd
    };
    let out = start(&[]).output().expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.tls") && err.contains("no TLS identity") && err.contains("insecure"),
        "{err}"
    );
    let both = start(&[
        ("RANKMESH__SERVER__TLS__INSECURE", "true"),
        ("RANKMESH__SERVER__TLS__CA", "/ca.pem"),
        ("RANKMESH__SERVER__TLS__CERT", "/c.pem"),
        ("RANKMESH__SERVER__TLS__KEY", "/c.key"),
    ])
    .output()
    .expect("run");
    assert_eq!(both.status.code(), Some(64));
    // Plaintext on purpose: it starts (and is stopped here).
    let dir = tempfile::tempdir().expect("cwd");
    let mut child = start(&[("RANKMESH__SERVER__TLS__INSECURE", "true")])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_secs(2));
    let running = child.try_wait().expect("poll").is_none();
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    assert!(
        running,
        "an insecure service starts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("serving plaintext gRPC"));
}
