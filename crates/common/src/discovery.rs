//! Service discovery: instances register under `/rankmesh/services/<service>/<instance>`
//! on a lease, and clients watch a service's prefix.
//!
//! A [`Registration`] keeps its key alive and re-creates it (new lease, same key) if
//! the lease is lost, for instance after etcd was unreachable for longer than the TTL.
//! [`Deregistering`](Registration::deregister) revokes the lease so watchers see the
//! instance leave at once, not after the TTL.
//!
//! A [`Resolver`] holds the current endpoint set of one service. With etcd it resyncs
//! (get the prefix, then watch from the next revision) after every error, so it never
//! misses a change, and keeps the last-known set while etcd is unreachable. Without
//! etcd it is a fixed static list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::etcd::{Etcd, EtcdError};

/// Root of the discovery keyspace.
pub const SERVICES_PREFIX: &str = "/rankmesh/services/";

/// The key prefix under which instances of `service` register (trailing slash
/// included, so `rank` never matches `ranking`).
pub fn service_prefix(service: &str) -> String {
    format!("{SERVICES_PREFIX}{service}/")
}

/// The key of one instance.
pub fn instance_key(service: &str, instance: &str) -> String {
    format!("{}{instance}", service_prefix(service))
}

/// What an instance publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Unique per process, stable for its lifetime.
    pub instance: String,
    /// Service name, e.g. `ranking`.
    pub service: String,
    /// gRPC address as a URI, e.g. `http://127.0.0.1:50051`.
    pub grpc: String,
    /// Admin HTTP address as a URI (`/metrics`, `/ready`).
    pub admin: String,
    /// Binary version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Process start, milliseconds since the Unix epoch.
    pub started_ms: i64,
}

/// A live registration; dropping it stops the keep-alive (the key then expires after
/// the TTL). Call [`Registration::deregister`] for a prompt, clean removal.
#[derive(Debug)]
pub struct Registration {
    task: JoinHandle<()>,
    lease: watch::Receiver<Option<i64>>,
    etcd: Etcd,
    key: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registration {
    /// Starts registering `endpoint`. Returns at once: while etcd is unreachable the
    /// registration is retried in the background, and the service serves meanwhile.
    pub fn start(etcd: Etcd, endpoint: Endpoint) -> Self {
        let key = instance_key(&endpoint.service, &endpoint.instance);
        let (lease_tx, lease) = watch::channel(None);
        let task = tokio::spawn(keep_registered(
            etcd.clone(),
            key.clone(),
            endpoint,
            lease_tx,
        ));
        Self {
            task,
            lease,
            etcd,
            key,
        }
    }

    /// The key this instance is registered under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Waits until the key has been written at least once (useful in tests and for
    /// logging); returns the lease id.
    pub async fn registered(&self) -> i64 {
        let mut rx = self.lease.clone();
        loop {
            if let Some(id) = *rx.borrow_and_update() {
                return id;
            }
            if rx.changed().await.is_err() {
                // The task ended (aborted); wait forever rather than invent a lease.
                futures::future::pending::<()>().await;
            }
        }
    }

    /// Stops keep-alives and revokes the lease, removing the key now.
    pub async fn deregister(self) -> Result<(), EtcdError> {
        self.task.abort();
        let lease = *self.lease.borrow();
        if let Some(id) = lease {
            let mut client = self.etcd.client();
            self.etcd.timed(client.lease_revoke(id)).await?;
        }
        Ok(())
    }
}

async fn keep_registered(
    etcd: Etcd,
    key: String,
    endpoint: Endpoint,
    lease_tx: watch::Sender<Option<i64>>,
) {
    let ttl = etcd.config().lease_ttl();
    let value = match serde_json::to_string(&endpoint) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode endpoint; not registering");
            return;
        }
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), ttl.max(Duration::from_secs(2)));
    loop {
        match register_once(&etcd, &key, &value, ttl, &lease_tx).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                metrics::gauge!("rankmesh_discovery_registered").set(0.0);
                tracing::warn!(key, error = %e, "registration lost; retrying");
            }
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Grants a lease, writes the key and keeps the lease alive until that fails.
async fn register_once(
    etcd: &Etcd,
    key: &str,
    value: &str,
    ttl: Duration,
    lease_tx: &watch::Sender<Option<i64>>,
) -> Result<(), EtcdError> {
    let mut client = etcd.client();
    let ttl_s = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(2);
    let lease = etcd.timed(client.lease_grant(ttl_s, None)).await?.id();
    etcd.timed(client.put(key, value, Some(PutOptions::new().with_lease(lease))))
        .await?;
    lease_tx.send_replace(Some(lease));
    metrics::gauge!("rankmesh_discovery_registered").set(1.0);
    tracing::info!(key, lease, "registered in discovery");
    keep_alive(etcd, lease, ttl).await
}

/// Refreshes `lease` every third of its TTL until it expires or etcd stays
/// unreachable for longer than the TTL. Returns an error saying which.
///
/// A broken keep-alive stream (the member it ran on died) is reopened, through the
/// shared client, on another member: only a lease that etcd says expired, or a TTL
/// without any successful refresh, ends the loop.
pub(crate) async fn keep_alive(etcd: &Etcd, lease: i64, ttl: Duration) -> Result<(), EtcdError> {
    let period = ttl / 3;
    let mut last_ok = tokio::time::Instant::now();
    let mut last_err = EtcdError::Timeout(ttl);
    loop {
        if last_ok.elapsed() > ttl {
            return Err(last_err);
        }
        let mut client = etcd.client();
        let (mut keeper, mut responses) =
            match tokio::time::timeout(period, client.lease_keep_alive(lease)).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    last_err = e.into();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(_) => continue,
            };
        // Refresh on this stream until it breaks.
        loop {
            if last_ok.elapsed() > ttl {
                return Err(last_err);
            }
            let round = async {
                keeper.keep_alive().await?;
                match responses.message().await? {
                    Some(r) => Ok(r.ttl()),
                    None => Err(etcd_client::Error::WatchError(
                        "keep-alive stream ended".into(),
                    )),
                }
            };
            match tokio::time::timeout(period, round).await {
                Ok(Ok(ttl_left)) if ttl_left > 0 => last_ok = tokio::time::Instant::now(),
                Ok(Ok(_)) => {
                    return Err(EtcdError::Client(etcd_client::Error::LeaseKeepAliveError(
                        format!("lease {lease} expired"),
                    )));
                }
                Ok(Err(e)) => {
                    last_err = e.into();
                    break;
                }
                Err(_) => {
                    last_err = EtcdError::Timeout(period);
                    break;
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}

/// The current endpoints of one service, keyed by instance id.
pub type EndpointMap = BTreeMap<String, Endpoint>;

/// A change to a service's endpoint set, as `tower::discover` expects.
pub type Change = tower::discover::Change<String, Endpoint>;

/// Follows the endpoint set of one service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Resolver {
    rx: watch::Receiver<Arc<EndpointMap>>,
    _task: Option<Arc<AbortOnDrop>>,
    /// The client identity to dial these endpoints with; None: the process's
    /// installed one, else plaintext.
    tls: Option<rankmesh_tls::client::ClientTls>,
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Resolver {
    /// A fixed set of endpoints (no etcd): each `grpc` address becomes an instance
    /// named after itself.
    pub fn fixed(service: &str, grpc_addrs: &[String]) -> Self {
        let map: EndpointMap = grpc_addrs
            .iter()
            .map(|a| {
                let grpc = if a.contains("://") {
                    a.clone()
                } else {
                    format!("http://{a}")
                };
                (
                    grpc.clone(),
                    Endpoint {
                        instance: grpc.clone(),
                        service: service.to_owned(),
                        grpc,
                        admin: String::new(),
                        version: String::new(),
                        started_ms: 0,
                    },
                )
            })
            .collect();
        let (_tx, rx) = watch::channel(Arc::new(map));
        // The sender is dropped: the set never changes, and `changed()` reports closed.
        Self {
            rx,
            _task: None,
            tls: None,
        }
    }

    /// Watches `service` in etcd. The set starts empty and fills after the first sync.
    pub fn watch(etcd: Etcd, service: &str) -> Self {
        let (tx, rx) = watch::channel(Arc::new(EndpointMap::new()));
        let task = tokio::spawn(follow(etcd, service_prefix(service), tx));
        Self {
            rx,
            _task: Some(Arc::new(AbortOnDrop(task))),
            tls: None,
        }
    }

    /// The same endpoints, dialled with `tls` (a client identity of a mesh other
    /// than this process's own: a drill's, a test's); `None` leaves the process's
    /// installed one.
    pub fn with_tls(mut self, tls: impl Into<Option<rankmesh_tls::client::ClientTls>>) -> Self {
        self.tls = tls.into();
        self
    }

    /// The client identity to dial with: this resolver's, else the process's
    /// installed one; None for plaintext.
    pub fn tls(&self) -> Option<rankmesh_tls::client::ClientTls> {
        self.tls.clone().or_else(rankmesh_tls::client::installed)
    }

    /// The current set (last known while etcd is unreachable).
    pub fn current(&self) -> Arc<EndpointMap> {
        Arc::clone(&self.rx.borrow())
    }

    /// Waits until `pred` holds for the set, and returns it.
    pub async fn wait_for(&self, mut pred: impl FnMut(&EndpointMap) -> bool) -> Arc<EndpointMap> {
        let mut rx = self.rx.clone();
        loop {
            {
                let cur = rx.borrow_and_update();
                if pred(&cur) {
                    return Arc::clone(&cur);
                }
            }
            if rx.changed().await.is_err() {
                // A fixed set never changes: it either matched above or never will.
                futures::future::pending::<()>().await;
            }
        }
    }

    /// A stream of inserts and removals, starting with an insert per current endpoint;
    /// feed it to `tower::balance`.
    pub fn changes(&self) -> impl futures::Stream<Item = Change> + Send + 'static {
        let rx = self.rx.clone();
        futures::stream::unfold(
            (
                rx,
                EndpointMap::new(),
                std::collections::VecDeque::new(),
                true,
            ),
            |(mut rx, mut seen, mut pending, mut first)| async move {
                loop {
                    if let Some(c) = pending.pop_front() {
                        return Some((c, (rx, seen, pending, first)));
                    }
                    if !first && rx.changed().await.is_err() {
                        // Fixed set: nothing more will ever change.
                        futures::future::pending::<()>().await;
                    }
                    first = false;
                    let now = Arc::clone(&rx.borrow_and_update());
                    for (id, ep) in now.iter() {
                        if seen.get(id) != Some(ep) {
                            pending.push_back(Change::Insert(id.clone(), ep.clone()));
                        }
                    }
                    for id in seen.keys() {
                        if !now.contains_key(id) {
                            pending.push_back(Change::Remove(id.clone()));
                        }
                    }
                    seen = (*now).clone();
                }
            },
        )
    }
}

/// The registered endpoints of `service` right now (one etcd read).
pub async fn list(etcd: &Etcd, service: &str) -> Result<EndpointMap, EtcdError> {
    let prefix = service_prefix(service);
    let mut client = etcd.client();
    let resp = etcd
        .timed(client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| Some((instance_of(&prefix, kv.key())?.to_owned(), decode(kv)?)))
        .collect())
}

async fn follow(etcd: Etcd, prefix: String, tx: watch::Sender<Arc<EndpointMap>>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match sync_and_watch(&etcd, &prefix, &tx, &mut backoff).await {
            Ok(()) => tracing::debug!(prefix, "discovery watch ended; resyncing"),
            Err(e) => {
                tracing::warn!(prefix, error = %e, "discovery watch failed; keeping last-known endpoints")
            }
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

fn decode(kv: &etcd_client::KeyValue) -> Option<Endpoint> {
    match serde_json::from_slice::<Endpoint>(kv.value()) {
        Ok(ep) => Some(ep),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "ignoring malformed endpoint");
            None
        }
    }
}

fn instance_of<'a>(prefix: &str, key: &'a [u8]) -> Option<&'a str> {
    std::str::from_utf8(key).ok()?.strip_prefix(prefix)
}

async fn sync_and_watch(
    etcd: &Etcd,
    prefix: &str,
    tx: &watch::Sender<Arc<EndpointMap>>,
    backoff: &mut Backoff,
) -> Result<(), EtcdError> {
    let mut client = etcd.client();
    let resp = etcd
        .timed(client.get(prefix, Some(GetOptions::new().with_prefix())))
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut map = EndpointMap::new();
    for kv in resp.kvs() {
        if let (Some(id), Some(ep)) = (instance_of(prefix, kv.key()), decode(kv)) {
            map.insert(id.to_owned(), ep);
        }
    }
    tx.send_replace(Arc::new(map.clone()));

    let mut stream = etcd
        .timed(
            client.watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
    backoff.reset();
    while let Some(resp) = stream.next().await {
        let resp = resp?;
        if resp.canceled() || resp.compact_revision() > 0 {
            // Our revision was compacted away or the server cancelled: resync.
            return Ok(());
        }
        let mut changed = false;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(id) = instance_of(prefix, kv.key()) else {
                continue;
            };
            match ev.event_type() {
                EventType::Put => {
                    if let Some(ep) = decode(kv) {
                        map.insert(id.to_owned(), ep);
                        changed = true;
                    }
                }
                EventType::Delete => changed |= map.remove(id).is_some(),
            }
        }
        if changed {
            tx.send_replace(Arc::new(map.clone()));
        }
    }
    Ok(())
}

/// Exponential backoff with full jitter, so replicas that lost etcd together do not
/// reconnect in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            current: base,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.base;
    }

    pub(crate) fn next(&mut self) -> Duration {
        let cap = self.current;
        self.current = (self.current * 2).min(self.max);
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::random_range(millis / 2..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fixed_resolver_yields_inserts_once() {
        let r = Resolver::fixed(
            "feature",
            &["127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
        );
        let cur = r.current();
        assert_eq!(cur.len(), 2);
        assert!(cur.contains_key("http://127.0.0.1:1"));
        let mut changes = Box::pin(r.changes());
        let mut ids = Vec::new();
        for _ in 0..2 {
            match changes.next().await {
                Some(Change::Insert(id, _)) => ids.push(id),
                other => panic!("expected insert, got {other:?}"),
            }
        }
        ids.sort();
        assert_eq!(ids, vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        let more = tokio::time::timeout(Duration::from_millis(50), changes.next()).await;
        assert!(more.is_err(), "a fixed set must not emit more changes");
    }

    #[test]
    fn prefixes_do_not_overlap() {
        assert_eq!(service_prefix("rank"), "/rankmesh/services/rank/");
        assert!(!instance_key("ranking", "a").starts_with(&service_prefix("rank")));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let seq: Vec<Duration> = (0..6).map(|_| b.next()).collect();
        assert!(seq[0] <= Duration::from_millis(100));
        assert!(seq.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(seq[5] >= Duration::from_millis(200));
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
