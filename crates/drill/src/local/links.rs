//! The fault proxies of a local drill: one on every link a network fault names,
//! started before the mesh so each instance is routed through them from its start.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use rankmesh_launcher as launcher;

use crate::faults::Links;
use crate::netfault::FaultProxy;
use crate::scenario::{Link, Scenario};

/// Starts a proxy on every link a network fault names, before the mesh starts, and
/// returns the environment that routes each instance through them: its advertised
/// port (callers find the proxy in discovery) and its etcd endpoints.
pub(super) async fn start_links(
    scenario: &Scenario,
    up: &launcher::UpOptions,
) -> anyhow::Result<(Links, BTreeMap<String, Vec<(String, String)>>)> {
    let instances = launcher::instances(up);
    // The proxies pass bytes through, TLS included: an instance dials its proxy
    // with the scheme etcd has, and checks etcd's certificate by name.
    let scheme = if up.insecure { "http://" } else { "https://" };
    let etcd: Vec<String> = launcher::etcd_client_urls(up)
        .iter()
        .map(|u| u.trim_start_matches(scheme).to_owned())
        .collect();
    let mut links = Links::new();
    let mut env: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for f in scenario.faults.iter().filter(|f| f.is_network()) {
        for t in &f.targets {
            for link in f.links() {
                if links.contains_key(&(t.clone(), link)) {
                    continue;
                }
                let upstreams = match link {
                    Link::Clients => {
                        let i = instances.iter().find(|i| &i.name == t).ok_or_else(|| {
                            let names: Vec<&str> =
                                instances.iter().map(|i| i.name.as_str()).collect();
                            anyhow::anyhow!(
                                "fault target {t:?} is not in the mesh ({})",
                                names.join(", ")
                            )
                        })?;
                        vec![i.grpc.clone()]
                    }
                    Link::Etcd => etcd.clone(),
                };
                let mut proxies = Vec::new();
                for u in upstreams {
                    let upstream = u.parse().with_context(|| format!("address {u}"))?;
                    let p = FaultProxy::start(([127, 0, 0, 1], 0).into(), upstream)
                        .await
                        .with_context(|| format!("start a fault proxy for {t} to {u}"))?;
                    proxies.push(Arc::new(p));
                }
                let var = match link {
                    Link::Clients => (
                        "RANKMESH__SERVER__ADVERTISE_PORT".to_owned(),
                        proxies[0].addr().port().to_string(),
                    ),
                    Link::Etcd => (
                        "RANKMESH__ETCD__ENDPOINTS".to_owned(),
                        proxies
                            .iter()
                            .map(|p| format!("{scheme}{}", p.addr()))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                };
                env.entry(t.clone()).or_default().push(var);
                links.insert((t.clone(), link), proxies);
            }
        }
    }
    Ok((links, env))
}
