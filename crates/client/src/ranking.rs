//! The storefront's client for Search and Recommend.
//!
//! Replicas come from discovery (or a fixed list); calls are balanced over them,
//! retried on UNAVAILABLE within the retry budget and hedged after the observed
//! p95 (both RPCs are reads). Every call carries a deadline, sent to the server as
//! `grpc-timeout` so the whole request path works within it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rankmesh_common::discovery::Resolver;
use rankmesh_proto::pb::ranking::v1 as pb;
use rankmesh_proto::pb::ranking::v1::ranking_service_client::RankingServiceClient;

use crate::upstream::{Upstream, UpstreamConfig};

/// Search and Recommend against the ranking replicas. Cheap to clone.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use rankmesh_client::RankingClient;
/// use rankmesh_common::{config::EtcdConfig, discovery::Resolver, etcd::Etcd};
/// use rankmesh_proto::pb::ranking::v1::SearchRequest;
///
/// let etcd = Etcd::connect(&EtcdConfig {
///     endpoints: vec!["http://127.0.0.1:2379".into()],
///     ..EtcdConfig::default()
/// })
/// .await?;
/// let ranking = RankingClient::new(Resolver::watch(etcd, "ranking"), Duration::from_millis(300));
/// let page = ranking
///     .search(SearchRequest { query: "pan for eggs".into(), k: 10, ..Default::default() })
///     .await?;
/// for item in page.items {
///     println!("{} {:.3} {}", item.item_id, item.score, item.title);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RankingClient {
    upstream: Arc<Upstream>,
    timeout: Duration,
}

impl RankingClient {
    /// Follows the ranking replicas in `resolver`; calls time out after `timeout`.
    pub fn new(resolver: Resolver, timeout: Duration) -> Self {
        Self::with_config(resolver, timeout, UpstreamConfig::default())
    }

    pub fn with_config(resolver: Resolver, timeout: Duration, config: UpstreamConfig) -> Self {
        Self {
            upstream: Arc::new(Upstream::with_config("ranking", resolver, config)),
            timeout,
        }
    }

    pub async fn search(
        &self,
        req: pb::SearchRequest,
    ) -> Result<pb::SearchResponse, tonic::Status> {
        self.hedged(req, |mut c, r| async move { c.search(r).await })
            .await
    }

    pub async fn recommend(
        &self,
        req: pb::RecommendRequest,
    ) -> Result<pb::RecommendResponse, tonic::Status> {
        self.hedged(req, |mut c, r| async move { c.recommend(r).await })
            .await
    }

    /// One read RPC: hedged, retried within budget, within the deadline.
    async fn hedged<Req, Resp, F, Fut>(&self, req: Req, rpc: F) -> Result<Resp, tonic::Status>
    where
        Req: Clone,
        F: Fn(RankingServiceClient<crate::balance::Balanced>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        self.within(
            deadline,
            self.upstream.call_hedged(|ch| {
                let call = rpc(
                    RankingServiceClient::new(ch),
                    with_deadline(req.clone(), deadline),
                );
                async move { call.await.map(tonic::Response::into_inner) }
            }),
        )
        .await
    }

    async fn within<T>(
        &self,
        deadline: Instant,
        call: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        tokio::time::timeout_at(deadline.into(), call)
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!(
                    "ranking did not answer within {:?}",
                    self.timeout
                )))
            })
    }
}

/// A request carrying what is left of the caller's deadline as `grpc-timeout`.
fn with_deadline<T>(msg: T, deadline: Instant) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    );
    r
}
