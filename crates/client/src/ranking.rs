//! The storefront's client for Search and Recommend.
//!
//! Replicas come from discovery (or a fixed list); calls are balanced over them,
//! retried on UNAVAILABLE within the retry budget and hedged after the observed
//! p95 (both RPCs are reads). Every call carries a deadline, sent to the server as
//! `grpc-timeout` so the whole request path works within it.

use std::time::Duration;

use rankmesh_common::discovery::Resolver;
use rankmesh_proto::pb::ranking::v1 as pb;
use rankmesh_proto::pb::ranking::v1::ranking_service_client::RankingServiceClient;

use crate::rpc::{Core, unary_rpcs};
use crate::upstream::UpstreamConfig;

/// Search and Recommend against the ranking replicas. Cheap to clone.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use rankmesh_client::{Deadline, RankingClient};
/// use rankmesh_common::{config::EtcdConfig, discovery::Resolver, etcd::Etcd};
/// use rankmesh_proto::pb::ranking::v1::SearchRequest;
///
/// let etcd = Etcd::connect(&EtcdConfig {
///     endpoints: vec!["http://127.0.0.1:2379".into()],
///     ..EtcdConfig::default()
/// })
/// .await?;
/// let ranking = RankingClient::new(Resolver::watch(etcd, "ranking"), Duration::from_millis(300));
/// let query = SearchRequest { query: "pan for eggs".into(), k: 10, ..Default::default() };
/// let page = ranking.search(query, Deadline::Default).await?;
/// for item in page.items {
///     println!("{} {:.3} {}", item.item_id, item.score, item.title);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RankingClient {
    core: Core,
}

impl RankingClient {
    /// Follows the ranking replicas in `resolver`; calls made with
    /// `Deadline::Default` time out after `timeout`.
    pub fn new(resolver: Resolver, timeout: Duration) -> Self {
        Self::with_config(resolver, timeout, UpstreamConfig::default())
    }

    pub fn with_config(resolver: Resolver, timeout: Duration, config: UpstreamConfig) -> Self {
        Self {
            core: Core::new("ranking", resolver, timeout, config),
        }
    }

    /// Sends `token` as `authorization: Bearer <token>` with every call: a
    /// storefront without a client certificate calls over TLS
    /// (`ClientTls::server_only`) with a token the servers hold.
    pub fn with_token(self, token: &str) -> Self {
        Self {
            core: self.core.with_bearer(token),
        }
    }

    pub fn core(&self) -> &Core {
        &self.core
    }
}

unary_rpcs!(RankingClient, RankingServiceClient {
    /// Ranked products for a query.
    Read search(pb::SearchRequest) -> pb::SearchResponse;
    /// Ranked products for a user.
    Read recommend(pb::RecommendRequest) -> pb::RecommendResponse;
    /// The ranker's input for every candidate of a query (training, evaluation).
    Read featurize(pb::SearchRequest) -> pb::FeaturizeResponse;
});
