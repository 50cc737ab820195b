//! Faults made with signals on the local mesh's processes: kill (SIGKILL), stop
//! (SIGSTOP, then SIGCONT), restart (SIGKILL or SIGTERM, then the instance started
//! again by the launcher, its data kept).

use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill as signal};
use nix::unistd::Pid;
use rankmesh_launcher::{self as launcher, MeshState};

use super::env::Env;
use crate::faults::undo_after;
use crate::report::Injected;
use crate::scenario::{Fault, RestartSignal};

/// SIGKILL to every target; they stay down.
pub(super) async fn kill(env: &Env, f: &Fault, injected: &mut Injected) -> anyhow::Result<()> {
    for (name, pid) in pids(&env.mesh, &resolve(&env.mesh, &f.targets).await?)? {
        send(pid, Signal::SIGKILL);
        injected.detail.push_str(&format!("SIGKILL {name} "));
        injected.killed.push(name);
    }
    Ok(())
}

/// The restart signal to every target; each is started again once it has exited
/// and the fault's duration has passed.
pub(super) async fn restart(env: &Env, f: &Fault, injected: &mut Injected) -> anyhow::Result<()> {
    let targets = pids(&env.mesh, &resolve(&env.mesh, &f.targets).await?)?;
    let sig = match f.signal.unwrap_or_default() {
        RestartSignal::Kill => Signal::SIGKILL,
        RestartSignal::Term => Signal::SIGTERM,
    };
    let mut done = Vec::new();
    for (name, pid) in &targets {
        send(*pid, sig);
        done.push(format!("{sig:?} {name}"));
    }
    injected.detail = format!(
        "{}; each started again once it exited and {} s had passed",
        done.join(", "),
        f.duration_s
    );
    let hold = Duration::from_secs_f64(f.duration_s);
    let up = env.up.clone();
    // In the order named: a store (redis) before the service that uses it.
    undo_after(hold, targets, move |(name, pid)| {
        let up = up.clone();
        async move {
            exited(&name, pid).await?;
            launcher::restart(&up, &name)
                .await
                .with_context(|| format!("start {name} again"))
        }
    });
    Ok(())
}

/// SIGSTOP to every target (a hang: connections stay open, nothing answers), then
/// SIGCONT after the fault's duration.
pub(super) async fn stop(env: &Env, f: &Fault, injected: &mut Injected) -> anyhow::Result<()> {
    let targets = pids(&env.mesh, &resolve(&env.mesh, &f.targets).await?)?;
    for (name, pid) in &targets {
        send(*pid, Signal::SIGSTOP);
        injected
            .detail
            .push_str(&format!("SIGSTOP {name} for {} s ", f.duration_s));
    }
    let hold = Duration::from_secs_f64(f.duration_s);
    undo_after(hold, targets, |(_, pid)| async move {
        send(pid, Signal::SIGCONT);
        Ok(())
    });
    Ok(())
}

pub(super) fn send(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = signal(Pid::from_raw(p), sig);
    }
}

/// The etcd member that leads the raft group now (asked of each member).
async fn etcd_leader(mesh: &MeshState) -> anyhow::Result<String> {
    for p in mesh.processes.iter().filter(|p| p.service == "etcd") {
        let mut config = mesh.etcd_config();
        config.endpoints = vec![p.grpc.clone()];
        let Ok(etcd) = rankmesh_common::etcd::Etcd::connect(&config).await else {
            continue;
        };
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(2), etcd.client().status()).await
            && s.header().is_some_and(|h| h.member_id() == s.leader())
        {
            return Ok(p.name.clone());
        }
    }
    anyhow::bail!("no etcd member says it leads")
}

/// Fault targets by instance name; `etcd-leader` is whichever member leads now.
async fn resolve(mesh: &MeshState, targets: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for t in targets {
        if t == "etcd-leader" {
            out.push(etcd_leader(mesh).await?);
        } else {
            out.push(t.clone());
        }
    }
    Ok(out)
}

fn pids(mesh: &MeshState, targets: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    targets
        .iter()
        .map(|t| {
            mesh.processes
                .iter()
                .find(|p| &p.name == t)
                .map(|p| (p.name.clone(), p.pid))
                .ok_or_else(|| {
                    let names: Vec<&str> = mesh.processes.iter().map(|p| p.name.as_str()).collect();
                    anyhow::anyhow!(
                        "fault target {t:?} is not in the mesh ({})",
                        names.join(", ")
                    )
                })
        })
        .collect()
}

/// Waits for `pid` to exit (a SIGTERMed instance drains first), so that its
/// successor can bind the same ports.
async fn exited(name: &str, pid: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while launcher::alive(pid) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} (pid {pid}) still running 30 s after the signal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
