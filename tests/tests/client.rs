//! The SDK's balanced channel against real service processes (feature replicas) on
//! loopback: calls succeed across replicas; a replica killed with SIGKILL is ejected
//! after a couple of failures; with every replica down calls fail fast with
//! UNAVAILABLE instead of hanging; a replica restarted on its old address is probed
//! back into rotation (the stuck-channel pitfalls of tonic#1147 and #643). And a
//! typed client following etcd discovery keeps calling the last-known replicas while
//! etcd is down, then follows discovery again when it returns.

use std::time::Duration;

use rankmesh_client::balance::{BalanceConfig, Balanced};
use rankmesh_client::{Deadline, FeatureClient};
use rankmesh_common::config::EtcdConfig;
use rankmesh_common::discovery::Resolver;
use rankmesh_common::etcd::Etcd;
use rankmesh_proto::pb::feature::v1::GetUserProfileRequest;
use rankmesh_tests::etcd::EtcdCluster;
use rankmesh_tests::eventually;
use rankmesh_tests::process::ServiceProcess;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn replica(name: &str, listen: Option<&str>) -> ServiceProcess {
    let env: Vec<(&str, &str)> = listen
        .map(|a| vec![("RANKMESH__SERVER__LISTEN", a)])
        .unwrap_or_default();
    ServiceProcess::spawn("rankmesh-feature", name, &[], &env)
}

async fn check(b: &Balanced) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(Duration::from_secs(2));
    HealthClient::new(b.clone()).check(req).await.map(|_| ())
}

async fn direct_ok(addr: &str) -> Option<()> {
    let ch = rankmesh_tests::tls::channel(addr).await?;
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()
        .map(|_| ())
}

#[tokio::test]
async fn balanced_channel_ejects_fails_fast_and_recovers() {
    let mut replicas = vec![
        replica("feature-a", None),
        replica("feature-b", None),
        replica("feature-c", None),
    ];
    for r in &replicas {
        let addr = r.grpc_addr.clone();
        eventually(Duration::from_secs(30), "replica serving", || {
            direct_ok(&addr)
        })
        .await;
    }
    let addrs: Vec<String> = replicas.iter().map(|r| r.grpc_addr.clone()).collect();
    let resolver = Resolver::fixed("feature", &addrs);
    let b = Balanced::new(
        "feature",
        &resolver,
        BalanceConfig {
            base_ejection: Duration::from_millis(300),
            ..BalanceConfig::default()
        },
    );
    assert_eq!(b.in_rotation(), 3);
    for _ in 0..300 {
        check(&b).await.expect("all replicas up");
    }

    // SIGKILL one: at most a few calls fail before it is ejected.
    let dead = replicas[0].grpc_addr.clone();
    replicas[0].kill();
    let mut failed = 0;
    for _ in 0..300 {
        if check(&b).await.is_err() {
            failed += 1;
        }
    }
    // Two failures eject it; after each cooldown (300 ms, then doubling) one probe
    // fails and ejects it again. (A retry layer on top absorbs even these.)
    assert!(
        failed <= 6,
        "{failed} of 300 calls failed after one replica died"
    );

    // All down: every call fails fast and clearly; none hangs.
    replicas[1].kill();
    replicas[2].kill();
    for _ in 0..20 {
        let s = tokio::time::timeout(Duration::from_secs(3), check(&b))
            .await
            .expect("no hang")
            .expect_err("nobody is up");
        assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
    }

    // The first replica comes back on its old address: probed back, used again.
    let _back = replica("feature-a2", Some(&dead));
    eventually(
        Duration::from_secs(30),
        "the restarted replica used again",
        || async { check(&b).await.ok() },
    )
    .await;
    // The two replicas still down stay in the static list: each may get one probe
    // when its cooldown ends (and fail it), never more within a few calls, since the
    // cooldown doubles with every failed probe.
    let mut failed = Vec::new();
    for _ in 0..50 {
        if let Err(s) = check(&b).await {
            failed.push(s);
        }
    }
    assert!(
        failed.len() <= 2,
        "{} of 50 failed: {failed:?}",
        failed.len()
    );
}

async fn profile(feature: &FeatureClient) -> Result<(), tonic::Status> {
    feature
        .get_user_profile(
            GetUserProfileRequest {
                user_id: "u1".into(),
            },
            Deadline::Default,
        )
        .await
        .map(|_| ())
}

#[tokio::test]
async fn typed_client_keeps_last_known_replicas_while_etcd_is_down() {
    let mut etcd = EtcdCluster::single().await;
    let endpoints = etcd.endpoints();
    let env = [
        ("RANKMESH__ETCD__LEASE_TTL_S", "2"),
        ("RANKMESH__SERVER__SHUTDOWN_GRACE_MS", "0"),
    ];
    let spawn = |name: &str| ServiceProcess::spawn("rankmesh-feature", name, &endpoints, &env);
    let mut a = spawn("feature-a");
    let mut b = spawn("feature-b");
    let client = Etcd::connect(&EtcdConfig {
        lease_ttl_s: 2,
        health_check_interval_ms: 200,
        request_timeout_ms: 1_000,
        ..etcd.config()
    })
    .await
    .expect("etcd client");
    let resolver = Resolver::watch(client, "feature");
    let feature = FeatureClient::new(resolver.clone(), Duration::from_secs(2));
    tokio::time::timeout(
        Duration::from_secs(30),
        resolver.wait_for(|set| set.len() == 2),
    )
    .await
    .expect("both replicas in discovery");
    eventually(Duration::from_secs(30), "replicas serving", || async {
        profile(&feature).await.ok()
    })
    .await;

    // etcd down for three lease TTLs: every call still goes to the replicas known.
    etcd.kill(0);
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut calls = 0;
    while tokio::time::Instant::now() < until {
        profile(&feature).await.expect("served while etcd is down");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(calls >= 50, "{calls} calls");
    assert_eq!(resolver.current().len(), 2, "the last-known set is kept");

    // etcd back: a replica that registers now is found, and the old ones (killed,
    // their leases left to expire) leave.
    etcd.restart(0).await;
    let _c = spawn("feature-c");
    tokio::time::timeout(
        Duration::from_secs(30),
        resolver.wait_for(|set| set.contains_key("feature-c")),
    )
    .await
    .expect("discovery resumed: the new replica is seen");
    a.kill();
    b.kill();
    tokio::time::timeout(
        Duration::from_secs(30),
        resolver.wait_for(|set| set.len() == 1),
    )
    .await
    .expect("the killed replicas leave discovery when their leases expire");
    for _ in 0..50 {
        profile(&feature).await.expect("served by the new replica");
    }
}
