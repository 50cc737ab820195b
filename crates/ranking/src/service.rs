//! The `RankingService` gRPC API.

use std::sync::Arc;

use rankmesh_proto::pb::ranking::v1 as pb;

use crate::search::Orchestrator;

/// The tonic service.
#[derive(Debug, Clone)]
pub struct RankingApi {
    inner: Arc<Orchestrator>,
}

impl RankingApi {
    pub fn new(inner: Arc<Orchestrator>) -> Self {
        Self { inner }
    }
}

rankmesh_common::grpc_service! {
    impl pb::ranking_service_server::RankingService for RankingApi {
        search(pb::SearchRequest) -> pb::SearchResponse => search with deadline;
        recommend(pb::RecommendRequest) -> pb::RecommendResponse => recommend with deadline;
        featurize(pb::SearchRequest) -> pb::FeaturizeResponse => featurize with deadline;
    }
}
