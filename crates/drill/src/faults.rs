//! What local and compose faults share: the fault proxies on an instance's links
//! and impairing them, and ending a held fault on time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::netfault::{FaultProxy, Impairment};
use crate::scenario::{Fault, FaultKind, Link};

/// The fault proxies on the links a scenario's network faults impair, by instance
/// and link (one proxy per etcd member on an etcd link).
pub(crate) type Links = BTreeMap<(String, Link), Vec<Arc<FaultProxy>>>;

/// Impairs the links a network fault names (their proxies are running) and heals
/// them after its duration; returns what it did.
pub(crate) fn impair(links: &Links, f: &Fault) -> anyhow::Result<String> {
    let impairment = Impairment {
        delay: Duration::from_millis(f.delay_ms),
        jitter: Duration::from_millis(f.jitter_ms),
        loss: f.loss_percent / 100.0,
        cut: f.kind == FaultKind::Partition,
    };
    let mut impaired: Vec<Arc<FaultProxy>> = Vec::new();
    for t in &f.targets {
        for link in f.links() {
            let proxies = links
                .get(&(t.clone(), link))
                .with_context(|| format!("{t}'s {} link has no fault proxy", link.name()))?;
            for p in proxies {
                p.set(impairment);
                impaired.push(p.clone());
            }
        }
    }
    let what = match f.kind {
        FaultKind::Delay => format!("{} ± {} ms delay", f.delay_ms, f.jitter_ms),
        FaultKind::Loss => format!("{}% loss", f.loss_percent),
        _ => "partition".to_owned(),
    };
    let names: Vec<&str> = f.links().iter().map(|l| l.name()).collect();
    let hold = Duration::from_secs_f64(f.duration_s);
    undo_after(hold, impaired, |p| async move {
        p.heal();
        Ok(())
    });
    Ok(format!(
        "{what} on {} ({} links) for {} s",
        f.targets.join(", "),
        names.join(" and "),
        f.duration_s
    ))
}

/// Ends a held fault once `hold` has passed: `undo` runs for each of `held`, in
/// order; a failure is logged and the rest are still undone (a drill must not leave
/// the mesh broken because one restore failed).
pub(crate) fn undo_after<T, F, Fut>(hold: Duration, held: Vec<T>, undo: F)
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        for h in held {
            if let Err(e) = undo(h).await {
                eprintln!("drill: ending a fault: {e:#}");
            }
        }
    });
}
