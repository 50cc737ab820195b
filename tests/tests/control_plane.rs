//! The control plane against a real etcd: discovery, election, fencing, and surviving
//! the loss of an etcd member.

use std::time::{Duration, Instant};

use rankmesh_common::config::EtcdConfig;
use rankmesh_common::discovery::{Endpoint, Registration, Resolver, instance_key};
use rankmesh_common::election::{Candidate, ElectionError};
use rankmesh_common::etcd::Etcd;
use rankmesh_tests::etcd::EtcdCluster;
use rankmesh_tests::process::ServiceProcess;
use rankmesh_tests::{eventually, http_get};

const TTL_S: u64 = 2;
const TTL: Duration = Duration::from_secs(TTL_S);
const STARTUP: Duration = Duration::from_secs(20);

/// The production default lease: long enough for a keep-alive to fail over from a
/// killed member (a request timeout, a health check, a new Raft leader) before the
/// lease runs out. At the 2 s minimum that race was lost once in a full run here.
const MEMBER_LOSS_TTL_S: u64 = 5;

fn etcd_config(etcd: &EtcdCluster) -> EtcdConfig {
    etcd_config_with_ttl(etcd, TTL_S)
}

fn etcd_config_with_ttl(etcd: &EtcdCluster, lease_ttl_s: u64) -> EtcdConfig {
    EtcdConfig {
        lease_ttl_s,
        health_check_interval_ms: 200,
        request_timeout_ms: 1_000,
        ..etcd.config()
    }
}

fn ttl_env() -> [(&'static str, &'static str); 2] {
    [
        ("RANKMESH__ETCD__LEASE_TTL_S", "2"),
        ("RANKMESH__SERVER__SHUTDOWN_GRACE_MS", "0"),
    ]
}

#[tokio::test]
async fn registration_appears_and_expires_when_the_process_is_killed() {
    let etcd = EtcdCluster::single().await;
    let client = Etcd::connect(&etcd_config(&etcd))
        .await
        .expect("etcd client");
    let watcher = Resolver::watch(client.clone(), "feature");

    let mut proc = ServiceProcess::spawn(
        "rankmesh-feature",
        "feature-a",
        &etcd.endpoints(),
        &ttl_env(),
    );
    let seen = tokio::time::timeout(STARTUP, watcher.wait_for(|m| m.contains_key("feature-a")))
        .await
        .expect("watcher sees the instance register");
    assert_eq!(seen["feature-a"].grpc, format!("http://{}", proc.grpc_addr));
    // The key is really in etcd, with a lease.
    let mut raw = etcd.client().await;
    let got = raw
        .get(instance_key("feature", "feature-a"), None)
        .await
        .expect("get");
    assert_eq!(got.kvs().len(), 1);
    assert_ne!(got.kvs()[0].lease(), 0, "registered on a lease");

    // SIGKILL: no deregistration; only lease expiry can remove the key.
    proc.kill();
    let killed = Instant::now();
    tokio::time::timeout(
        TTL + Duration::from_secs(3),
        watcher.wait_for(|m| !m.contains_key("feature-a")),
    )
    .await
    .expect("watcher sees the instance expire");
    let got = raw
        .get(instance_key("feature", "feature-a"), None)
        .await
        .expect("get");
    assert!(got.kvs().is_empty(), "key removed from etcd");
    assert!(
        killed.elapsed() >= Duration::from_millis(500),
        "removal came from lease expiry, not an earlier event"
    );
}

#[tokio::test]
async fn sigterm_deregisters_before_exiting() {
    let etcd = EtcdCluster::single().await;
    let client = Etcd::connect(&etcd_config(&etcd))
        .await
        .expect("etcd client");
    let watcher = Resolver::watch(client, "feature");
    // A long TTL: only an explicit deregistration can remove the key quickly.
    let mut proc = ServiceProcess::spawn(
        "rankmesh-feature",
        "feature-b",
        &etcd.endpoints(),
        &[
            ("RANKMESH__ETCD__LEASE_TTL_S", "30"),
            ("RANKMESH__SERVER__SHUTDOWN_GRACE_MS", "0"),
        ],
    );
    tokio::time::timeout(STARTUP, watcher.wait_for(|m| m.contains_key("feature-b")))
        .await
        .expect("registered");
    proc.signal("TERM");
    tokio::time::timeout(Duration::from_secs(5), watcher.wait_for(|m| m.is_empty()))
        .await
        .expect("deregistered well before the 30 s TTL");
    assert_eq!(proc.wait(), Some(0), "clean exit after SIGTERM");
}

/// Which of `procs` report leading the rollout role on their admin port.
async fn leaders(procs: &[ServiceProcess]) -> Vec<String> {
    let mut out = Vec::new();
    for p in procs {
        if p.pid().is_none() {
            continue;
        }
        if let Ok((200, body)) = http_get(&p.admin_addr, "/metrics").await
            && body
                .lines()
                .any(|l| l.starts_with("rankmesh_leader{role=\"rollout\"} 1"))
        {
            out.push(p.name.clone());
        }
    }
    out
}

#[tokio::test]
async fn one_leader_among_three_and_failover_within_ttl_plus_one_second() {
    let etcd = EtcdCluster::single().await;
    let client = Etcd::connect(&etcd_config(&etcd))
        .await
        .expect("etcd client");
    let observer = Candidate::new(client, "rollout", "observer");
    let mut procs: Vec<ServiceProcess> = (0..3)
        .map(|i| {
            ServiceProcess::spawn(
                "rankmesh-ranking",
                &format!("ranking-{i}"),
                &etcd.endpoints(),
                &ttl_env(),
            )
        })
        .collect();

    // Every replica is up (admin answers) and exactly one says it leads.
    let leader = eventually(
        STARTUP,
        "all three replicas up with exactly one leader",
        || {
            let procs = &procs;
            async move {
                for p in procs {
                    http_get(&p.admin_addr, "/live").await.ok()?;
                }
                let l = leaders(procs).await;
                (l.len() == 1).then(|| l[0].clone())
            }
        },
    )
    .await;
    assert_eq!(
        observer.leader().await.expect("leader query"),
        Some(leader.clone())
    );

    let idx = procs
        .iter()
        .position(|p| p.name == leader)
        .expect("leader is one of ours");
    procs[idx].kill();
    let killed = Instant::now();
    let next = eventually(TTL + Duration::from_secs(2), "a new leader", || {
        let observer = &observer;
        let leader = &leader;
        async move {
            match observer.leader().await {
                Ok(Some(who)) if &who != leader => Some(who),
                _ => None,
            }
        }
    })
    .await;
    let took = killed.elapsed();
    eprintln!("leader {leader} killed; {next} elected after {took:?}");
    assert!(
        took <= TTL + Duration::from_secs(1),
        "new leader {next} after {took:?}, want <= TTL + 1 s"
    );

    // And the survivors agree: exactly one of them leads, the one etcd names.
    let survivors = eventually(
        Duration::from_secs(5),
        "survivors agree on the leader",
        || {
            let procs = &procs;
            async move {
                let l = leaders(procs).await;
                (l.len() == 1).then_some(l)
            }
        },
    )
    .await;
    assert_eq!(survivors, vec![next]);
}

#[tokio::test]
async fn a_deposed_leader_cannot_write() {
    let etcd = EtcdCluster::single().await;
    let client = Etcd::connect(&etcd_config(&etcd))
        .await
        .expect("etcd client");
    let a = Candidate::new(client.clone(), "gc", "a");
    let b = Candidate::new(client.clone(), "gc", "b");

    let lead_a = a.campaign().await;
    lead_a
        .fenced_put("/rankmesh/test/owner", "a")
        .await
        .expect("leader writes");

    // A loses its lease without noticing (as after a long GC pause or partition).
    let mut raw = etcd.client().await;
    raw.lease_revoke(lead_a.lease())
        .await
        .expect("revoke a's lease");
    let lead_b = tokio::time::timeout(Duration::from_secs(5), b.campaign())
        .await
        .expect("b wins once a's key is gone");
    lead_b
        .fenced_put("/rankmesh/test/owner", "b")
        .await
        .expect("new leader writes");

    let err = lead_a
        .fenced_put("/rankmesh/test/owner", "a-stale")
        .await
        .expect_err("stale leader is fenced off");
    assert!(matches!(err, ElectionError::NotLeader), "{err}");
    let got = raw.get("/rankmesh/test/owner", None).await.expect("get");
    assert_eq!(
        got.kvs()[0].value(),
        b"b",
        "the fenced write changed nothing"
    );

    tokio::time::timeout(Duration::from_secs(5), lead_a.lost())
        .await
        .expect("a notices it lost leadership");
}

#[tokio::test]
async fn losing_an_etcd_member_breaks_neither_discovery_nor_election() {
    let mut etcd = EtcdCluster::start(3).await;
    let client = Etcd::connect(&etcd_config_with_ttl(&etcd, MEMBER_LOSS_TTL_S))
        .await
        .expect("etcd client");
    let ep = |id: &str| Endpoint {
        instance: id.to_owned(),
        service: "feature".to_owned(),
        grpc: format!("http://127.0.0.1:1/{id}"),
        admin: String::new(),
        version: "test".to_owned(),
        started_ms: 0,
    };
    let reg_x = Registration::start(client.clone(), ep("x"));
    let watcher = Resolver::watch(client.clone(), "feature");
    tokio::time::timeout(STARTUP, watcher.wait_for(|m| m.contains_key("x")))
        .await
        .expect("x registered");
    let leader = Candidate::new(client.clone(), "gc", "first")
        .campaign()
        .await;

    let raft_leader = etcd.leader_index().await.expect("cluster has a leader");
    etcd.kill(raft_leader);
    let killed = etcd.members()[raft_leader].client_url.clone();

    // The dead member leaves the client's balance set.
    eventually(
        Duration::from_secs(10),
        "dead member marked unhealthy",
        || {
            let healthy = client.healthy_endpoints();
            let killed = killed.clone();
            async move { (healthy.len() == 2 && !healthy.contains(&killed)).then_some(()) }
        },
    )
    .await;

    // Discovery: a new instance is seen, and x stays registered past several TTLs.
    let _reg_y = Registration::start(client.clone(), ep("y"));
    tokio::time::timeout(
        Duration::from_secs(10),
        watcher.wait_for(|m| m.contains_key("y")),
    )
    .await
    .expect("watch still delivers after member loss");
    tokio::time::sleep(Duration::from_secs(MEMBER_LOSS_TTL_S * 2)).await;
    let now = watcher.current();
    assert!(
        now.contains_key("x") && now.contains_key("y"),
        "registrations kept alive: {:?}",
        now.keys()
    );
    drop(reg_x);

    // Election: the leader kept its lease and can still write; a handover works.
    assert!(!leader.is_lost(), "leadership survived the member loss");
    leader
        .fenced_put("/rankmesh/test/gc", "first")
        .await
        .expect("fenced write after member loss");
    let second = Candidate::new(client.clone(), "gc", "second");
    let waiting = tokio::spawn(async move { second.campaign().await });
    leader.resign().await.expect("resign");
    let lead2 = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("second candidate elected")
        .expect("campaign task");
    lead2
        .fenced_put("/rankmesh/test/gc", "second")
        .await
        .expect("new leader writes");
}

#[tokio::test]
async fn etcd_down_keeps_last_known_endpoints_and_discovery_resumes() {
    let mut etcd = EtcdCluster::single().await;
    let client = Etcd::connect(&etcd_config(&etcd))
        .await
        .expect("etcd client");
    let ep = |id: &str| Endpoint {
        instance: id.to_owned(),
        service: "ranking".to_owned(),
        grpc: format!("http://127.0.0.1:1/{id}"),
        admin: String::new(),
        version: "test".to_owned(),
        started_ms: 0,
    };
    let _x = Registration::start(client.clone(), ep("x"));
    let watcher = Resolver::watch(client.clone(), "ranking");
    tokio::time::timeout(STARTUP, watcher.wait_for(|m| m.contains_key("x")))
        .await
        .expect("x registered");

    // etcd gone for several TTLs: the last-known set is kept, not emptied.
    etcd.kill(0);
    tokio::time::sleep(TTL * 3).await;
    assert!(
        watcher.current().contains_key("x"),
        "last-known endpoints kept while etcd is down"
    );

    // etcd back: registrations are renewed and the watch delivers new instances.
    etcd.restart(0).await;
    let _y = Registration::start(client.clone(), ep("y"));
    tokio::time::timeout(
        Duration::from_secs(15),
        watcher.wait_for(|m| m.contains_key("x") && m.contains_key("y")),
    )
    .await
    .expect("discovery resumes after etcd returns");
    let mut raw = etcd.client().await;
    let got = raw
        .get(instance_key("ranking", "x"), None)
        .await
        .expect("get");
    assert_eq!(got.kvs().len(), 1, "x is registered in etcd again");
}
