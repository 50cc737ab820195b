//! The `RankingService` gRPC API.

use std::sync::Arc;
use std::time::Duration;

use rankmesh_proto::pb::ranking::v1 as pb;

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

rankmesh_common::grpc_service! {
    impl pb::ranking_service_server::RankingService for RankingApi {
        search(pb::SearchRequest) -> pb::SearchResponse => search with deadline;
        recommend(pb::RecommendRequest) -> pb::RecommendResponse => recommend with deadline;
        featurize(pb::SearchRequest) -> pb::FeaturizeResponse => featurize with deadline;
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
