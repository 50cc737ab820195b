//! The `RankingService` gRPC API.

use std::sync::Arc;
use std::time::Duration;

use rankmesh_proto::pb::ranking::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::search::Orchestrator;

/// Parses a `grpc-timeout` header value ("250m", "1S", "500000u", ...).
pub fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

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

#[tonic::async_trait]
impl pb::ranking_service_server::RankingService for RankingApi {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let deadline = self.inner.deadline(grpc_timeout(request.metadata()));
        let req = request.into_inner();
        let span = tracing::info_span!(
            "search",
            k = req.k,
            degraded = tracing::field::Empty,
            items = tracing::field::Empty,
        );
        let resp = self
            .inner
            .search(req, deadline)
            .instrument(span.clone())
            .await?;
        span.record("items", resp.items.len());
        metrics::histogram!("rankmesh_search_ms")
            .record(resp.stage_ms.get("total").copied().unwrap_or(0.0) as f64);
        Ok(Response::new(resp))
    }

    async fn recommend(
        &self,
        request: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let deadline = self.inner.deadline(grpc_timeout(request.metadata()));
        let req = request.into_inner();
        let span = tracing::info_span!(
            "recommend",
            k = req.k,
            degraded = tracing::field::Empty,
            items = tracing::field::Empty,
        );
        let resp = self
            .inner
            .recommend(req, deadline)
            .instrument(span.clone())
            .await?;
        span.record("items", resp.items.len());
        Ok(Response::new(resp))
    }

    async fn featurize(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::FeaturizeResponse>, Status> {
        let deadline = self.inner.deadline(grpc_timeout(request.metadata()));
        let req = request.into_inner();
        let span = tracing::info_span!("featurize", candidates = tracing::field::Empty);
        let resp = self
            .inner
            .featurize(req, deadline)
            .instrument(span.clone())
            .await?;
        span.record("candidates", resp.item_ids.len());
        Ok(Response::new(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout_units() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        m.insert("grpc-timeout", "250m".parse().expect("ascii"));
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(250)));
        m.insert("grpc-timeout", "2S".parse().expect("ascii"));
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(2)));
        m.insert("grpc-timeout", "x".parse().expect("ascii"));
        assert_eq!(grpc_timeout(&m), None);
    }
}
