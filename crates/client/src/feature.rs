//! The feature service: item and user features, lexical candidates, events.

use std::time::Duration;

use rankmesh_common::discovery::Resolver;
use rankmesh_proto::pb::feature::v1 as pb;
use rankmesh_proto::pb::feature::v1::feature_service_client::FeatureServiceClient;

use crate::rpc::{Core, Deadline, Kind, unary_rpcs};
use crate::upstream::UpstreamConfig;

/// Typed calls to the feature replicas. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FeatureClient {
    core: Core,
}

impl FeatureClient {
    pub fn new(resolver: Resolver, timeout: Duration) -> Self {
        Self::with_config(resolver, timeout, UpstreamConfig::default())
    }

    pub fn with_config(resolver: Resolver, timeout: Duration, config: UpstreamConfig) -> Self {
        Self {
            core: Core::new("feature", resolver, timeout, config),
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

    /// Records one event. Retried on UNAVAILABLE only when it carries its
    /// `event_id` (the server's idempotency key: a repeat answers
    /// `duplicate = true` and changes nothing); without one a repeat could count
    /// the event twice, so it is sent once.
    pub async fn record_event(
        &self,
        req: pb::RecordEventRequest,
        deadline: impl Into<Deadline>,
    ) -> Result<pb::RecordEventResponse, tonic::Status> {
        self.core
            .unary(
                "record_event",
                record_event_kind(&req),
                req,
                deadline.into(),
                |ch, r| async move { FeatureServiceClient::new(ch).record_event(r).await },
            )
            .await
    }

    /// Streams a catalog upload (JSONL or CSV chunks, the last one marked). Sent
    /// once: a stream cannot be replayed, and a re-import is the caller's choice.
    pub async fn import_catalog(
        &self,
        chunks: impl tokio_stream::Stream<Item = pb::ImportCatalogChunk> + Send + 'static,
        deadline: impl Into<Deadline>,
    ) -> Result<pb::ImportCatalogResponse, tonic::Status> {
        self.core
            .client_stream(
                "import_catalog",
                chunks,
                deadline.into(),
                |ch, r| async move {
                    FeatureServiceClient::new(ch)
                        .max_encoding_message_size(rankmesh_proto::limits::MAX_MESSAGE_BYTES)
                        .import_catalog(r)
                        .await
                },
            )
            .await
    }
}

impl FeatureClient {
    /// The whole catalog in id order, streamed `page_size` items per message
    /// (ScanItems; a read, so retried whole on UNAVAILABLE).
    pub async fn scan_all_items(
        &self,
        page_size: u32,
    ) -> Result<Vec<rankmesh_proto::pb::common::v1::Item>, tonic::Status> {
        self.core
            .upstream()
            .call(|ch| async move {
                let mut stream = FeatureServiceClient::new(ch)
                    .max_decoding_message_size(SCAN_MESSAGE_BYTES)
                    .scan_items(pb::ScanItemsRequest {
                        after_id: String::new(),
                        page_size,
                    })
                    .await?
                    .into_inner();
                let mut items = Vec::new();
                while let Some(page) = stream.message().await? {
                    items.extend(page.items);
                }
                Ok(items)
            })
            .await
    }
}

/// Largest ScanItems message accepted: a page of 1,000 items with long texts.
const SCAN_MESSAGE_BYTES: usize = 64 << 20;

unary_rpcs!(FeatureClient, FeatureServiceClient {
    /// Feature rows for a user, a query and candidates (schema `rankmesh.ltr`).
    Read get_features(pb::GetFeaturesRequest) -> pb::GetFeaturesResponse;
    /// BM25 candidates for a query.
    Read lexical_candidates(pb::LexicalCandidatesRequest) -> pb::LexicalCandidatesResponse;
    /// Display fields of items.
    Read get_items(pb::GetItemsRequest) -> pb::GetItemsResponse;
    /// A user's recent events and affinities.
    Read get_user_profile(pb::GetUserProfileRequest) -> pb::GetUserProfileResponse;
});

/// RecordEvent may be repeated only when it carries its idempotency key.
fn record_event_kind(req: &pb::RecordEventRequest) -> Kind {
    if req.event_id.is_empty() {
        Kind::Once
    } else {
        Kind::Idempotent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_event_is_retried_only_with_its_event_id() {
        let mut req = pb::RecordEventRequest {
            user_id: "u".into(),
            item_id: "i".into(),
            ..Default::default()
        };
        assert_eq!(record_event_kind(&req), Kind::Once);
        req.event_id = "e-1".into();
        assert_eq!(record_event_kind(&req), Kind::Idempotent);
    }
}
