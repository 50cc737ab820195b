//! Channels to one upstream service (embedding or feature), following its endpoint
//! set from discovery (or a static list).
//!
//! Each call goes to the next endpoint in turn; a call that fails with UNAVAILABLE
//! (connection refused, endpoint gone) is retried once on another endpoint. This is
//! the minimal failover the orchestrator needs; the client SDK's balanced, budgeted,
//! hedged stack replaces it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rankmesh_common::discovery::Resolver;
use tonic::transport::{Channel, Endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// One upstream service.
#[derive(Debug)]
pub struct Upstream {
    service: &'static str,
    resolver: Resolver,
    channels: Mutex<HashMap<String, Channel>>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(service: &'static str, resolver: Resolver) -> Self {
        Self {
            service,
            resolver,
            channels: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// Endpoints in a stable order, starting at the round-robin position.
    fn endpoints(&self) -> Vec<String> {
        let set = self.resolver.current();
        let mut eps: Vec<String> = set.values().map(|e| e.grpc.clone()).collect();
        eps.sort();
        if !eps.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % eps.len();
            eps.rotate_left(start);
        }
        eps
    }

    fn channel(&self, uri: &str) -> Result<Channel, tonic::Status> {
        let mut map = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = map.get(uri) {
            return Ok(c.clone());
        }
        let c = Endpoint::from_shared(uri.to_owned())
            .map_err(|e| {
                tonic::Status::internal(format!("bad {} endpoint {uri}: {e}", self.service))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        // Forget channels of endpoints that left discovery.
        let live: std::collections::HashSet<String> = self
            .resolver
            .current()
            .values()
            .map(|e| e.grpc.clone())
            .collect();
        map.retain(|k, _| live.contains(k));
        map.insert(uri.to_owned(), c.clone());
        Ok(c)
    }

    /// Runs `call` on an endpoint; on UNAVAILABLE, once more on the next one.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let eps = self.endpoints();
        if eps.is_empty() {
            return Err(tonic::Status::unavailable(format!(
                "no {} endpoints known",
                self.service
            )));
        }
        let mut last = None;
        for uri in eps.iter().take(2) {
            match call(self.channel(uri)?).await {
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    tracing::debug!(service = self.service, endpoint = %uri, error = %s, "upstream unavailable; trying another");
                    last = Some(s);
                }
                other => return other,
            }
        }
        Err(last
            .unwrap_or_else(|| tonic::Status::unavailable(format!("{} unavailable", self.service))))
    }
}
