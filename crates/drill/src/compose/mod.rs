//! The compose topology of a drill: the stack in `deploy/compose` (images built by
//! `scripts/images`) as a project of its own, with its ranking replicas published on
//! the drill's ports, and faults made through the Docker engine:
//! - kill: `docker kill -s KILL` (the container stays down, like a lost machine);
//! - stop: `docker pause`, then `unpause` (the freezer cgroup: a hang, as SIGSTOP);
//! - restart: `docker kill -s KILL` (or `docker stop`, graceful), then `docker
//!   start` (the same container: its volumes and configuration);
//! - partition: `docker network disconnect` from the stack's network, then
//!   `connect` again under its aliases (it loses its callers, etcd, everything);
//! - delay and loss: a fault proxy between the storefront and a ranking replica's
//!   published port (the kernel has no netem to do it inside the container).
//!
//! [`Stack`] is the Docker side; [`ComposeTopology`] is the drill's view of it,
//! as `local::LocalTopology` is of the local processes.

mod stack;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rankmesh_common::discovery::Resolver;

use crate::faults::{Links, impair, undo_after};
use crate::netfault::FaultProxy;
use crate::options::RunOptions;
use crate::report::{Injected, Rejoined};
use crate::scenario::{Fault, FaultKind, Link, RestartSignal, Scenario};
use crate::topology::Topology;
use stack::SERVICES;
use stack::Stack;

/// The compose topology: the stack as a project of its own, faults through Docker.
pub(crate) struct ComposeTopology {
    stack: Arc<Stack>,
    /// Fault proxies in front of published ranking ports.
    links: Links,
    /// The ranking replicas as the storefront calls them (a proxy's address where
    /// one is in front).
    ranking: Vec<String>,
    /// The stack's operator identity (`admin/meshctl` in `deploy/compose/tls`),
    /// which the storefront load calls with: the stack is mutual TLS.
    tls: rankmesh_tls::client::ClientTls,
}

impl Topology for ComposeTopology {
    fn ranking(&self) -> Resolver {
        Resolver::fixed("ranking", &self.ranking).with_tls(self.tls.clone())
    }

    /// The stack's feature service is not published to the host.
    fn feature(&self) -> Option<rankmesh_client::FeatureClient> {
        None
    }

    async fn inject(&self, f: &Fault, at_s: f64) -> anyhow::Result<Injected> {
        inject(&self.stack, &self.links, f, at_s).await
    }

    /// The compose topology runs no canary faults (they need the registry from the
    /// host).
    async fn canary_rolled_back(&self, _: &str, _: i64) -> Option<f64> {
        None
    }

    async fn rejoined(&self, killed: &[&str], wait: Duration) -> Rejoined {
        rejoined(&self.stack, killed, wait).await
    }

    /// Every container's log goes to `logs/compose.log`; the stack goes down with
    /// its volumes.
    async fn tear_down(self, logs: &Path) {
        save_logs_and_down(&self.stack, logs).await;
    }
}

/// Brings the stack up as a project of its own (one left by an interrupted run goes
/// first), with fault proxies in front of the ranking ports its faults impair. If
/// it cannot come up, its logs go to `logs` and it goes down.
pub(crate) async fn start(
    scenario: &Scenario,
    opts: &RunOptions,
    logs: &Path,
) -> anyhow::Result<ComposeTopology> {
    let project = format!("rankmesh-drill-{}", scenario.name);
    let stack = Arc::new(Stack::new(&opts.compose_dir, &project, opts.base_port).await?);
    let tls = stack.operator_tls()?;
    eprintln!(
        "drill {}: starting the compose stack (project {project})",
        scenario.name
    );
    stack.down().await;
    let started = async {
        stack.up().await?;
        links(scenario, &stack).await
    }
    .await;
    match started {
        Ok((links, ranking)) => Ok(ComposeTopology {
            stack,
            links,
            ranking,
            tls,
        }),
        Err(e) => {
            save_logs_and_down(&stack, logs).await;
            Err(e)
        }
    }
}

async fn save_logs_and_down(stack: &Stack, logs: &Path) {
    if let Err(e) = std::fs::create_dir_all(logs) {
        eprintln!("drill: create {}: {e}", logs.display());
    }
    stack.save_logs(&logs.join("compose.log")).await;
    stack.down().await;
}

/// Injects one fault into the compose stack.
async fn inject(
    stack: &Arc<Stack>,
    links: &Links,
    f: &Fault,
    at_s: f64,
) -> anyhow::Result<Injected> {
    let mut injected = Injected::new(f.kind.name(), at_s);
    let mut targets = Vec::new();
    for t in &f.targets {
        targets.push(if t == "etcd-leader" {
            stack.etcd_leader().await?
        } else {
            t.clone()
        });
    }
    let hold = Duration::from_secs_f64(f.duration_s);
    match f.kind {
        FaultKind::Kill => {
            for t in targets {
                stack.kill(&t).await?;
                injected
                    .detail
                    .push_str(&format!("docker kill -s KILL {t} "));
                injected.killed.push(t);
            }
        }
        // Held on whole containers: paused then unpaused, or killed then started.
        FaultKind::Stop | FaultKind::Restart => {
            hold_containers(stack, targets, f, &mut injected).await?;
        }
        FaultKind::Partition => {
            let mut detached = Vec::new();
            for t in &targets {
                detached.push(stack.disconnect(t).await?);
                injected.detail.push_str(&format!(
                    "docker network disconnect {t} for {} s ",
                    f.duration_s
                ));
            }
            let stack = stack.clone();
            undo_after(hold, detached, move |d| {
                let stack = stack.clone();
                async move { stack.reconnect(&d).await.context("reconnect") }
            });
        }
        FaultKind::Delay | FaultKind::Loss => injected.detail = impair(links, f)?,
        FaultKind::Canary
        | FaultKind::CorruptArtifact
        | FaultKind::EncoderRollout
        | FaultKind::DiskFull => {
            anyhow::bail!("{} is a local-topology fault", f.kind.name())
        }
        FaultKind::Surge => anyhow::bail!("a surge is offered by the load, not injected"),
    }
    injected.detail = injected.detail.trim().to_owned();
    Ok(injected)
}

/// Stop (pause) or restart (kill or stop) whole containers; undone (unpause or
/// start) after the fault's duration.
async fn hold_containers(
    stack: &Arc<Stack>,
    targets: Vec<String>,
    f: &Fault,
    injected: &mut Injected,
) -> anyhow::Result<()> {
    let hold = Duration::from_secs_f64(f.duration_s);
    let restart = f.kind == FaultKind::Restart;
    let graceful = f.signal == Some(RestartSignal::Term);
    let (done, undone) = match (restart, graceful) {
        (true, false) => ("docker kill -s KILL", "docker start"),
        (true, true) => ("docker stop", "docker start"),
        (false, _) => ("docker pause", "docker unpause"),
    };
    for t in &targets {
        match (restart, graceful) {
            (true, false) => stack.kill(t).await?,
            (true, true) => stack.stop(t).await?,
            (false, _) => stack.pause(t).await?,
        }
        injected
            .detail
            .push_str(&format!("{done} {t}, {undone} after {} s ", f.duration_s));
    }
    let stack = stack.clone();
    undo_after(hold, targets, move |t| {
        let stack = stack.clone();
        async move {
            let undo = if restart {
                stack.start(&t).await
            } else {
                stack.unpause(&t).await
            };
            undo.with_context(|| format!("{undone} {t}"))
        }
    });
    Ok(())
}

/// Waits up to `wait` for every compose service not killed to be registered again.
async fn rejoined(stack: &Stack, killed: &[&str], wait: Duration) -> Rejoined {
    let survivors: Vec<&str> = SERVICES
        .iter()
        .copied()
        .filter(|s| {
            ["ranking", "registry", "feature", "embedding"]
                .iter()
                .any(|svc| s.starts_with(&format!("{svc}-")))
                && !killed.contains(s)
        })
        .collect();
    if ["etcd-1", "etcd-2", "etcd-3"]
        .iter()
        .filter(|m| killed.contains(m))
        .count()
        >= 2
    {
        // No quorum left to read discovery from.
        return Rejoined::NotChecked;
    }
    let deadline = Instant::now() + wait;
    loop {
        let mut missing = Vec::new();
        for service in ["ranking", "registry", "feature", "embedding"] {
            let listed = stack.registered(service).await.unwrap_or_default();
            missing.extend(
                survivors
                    .iter()
                    .filter(|s| s.starts_with(&format!("{service}-")))
                    .filter(|s| !listed.iter().any(|l| l == *s))
                    .map(|s| (*s).to_owned()),
            );
        }
        if missing.is_empty() {
            return Rejoined::All(survivors.len());
        }
        if Instant::now() >= deadline {
            return Rejoined::Missing(missing);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Fault proxies in front of the compose stack's published ranking ports, for the
/// network faults that name a replica; returns them and the addresses the
/// storefront calls (a proxy's where there is one).
async fn links(scenario: &Scenario, stack: &Stack) -> anyhow::Result<(Links, Vec<String>)> {
    let mut addrs = stack.ranking_addrs();
    let mut links = Links::new();
    for f in scenario.faults.iter().filter(|f| f.is_network()) {
        if f.kind == FaultKind::Partition {
            continue; // docker network disconnect
        }
        for t in &f.targets {
            let key = (t.clone(), Link::Clients);
            if links.contains_key(&key) {
                continue;
            }
            let i = replica(t)?;
            let upstream = addrs[i].parse().with_context(|| addrs[i].clone())?;
            let p = FaultProxy::start(([127, 0, 0, 1], 0).into(), upstream).await?;
            addrs[i] = p.addr().to_string();
            links.insert(key, vec![Arc::new(p)]);
        }
    }
    Ok((links, addrs))
}

/// `ranking-1`..`ranking-3`: the index of its published port.
fn replica(name: &str) -> anyhow::Result<usize> {
    name.strip_prefix("ranking-")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=3).contains(n))
        .map(|n| n - 1)
        .with_context(|| {
            format!("{name:?}: delay and loss in the compose stack reach ranking-1..ranking-3")
        })
}
