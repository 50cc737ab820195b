//! The embedding service: query embeddings and dense retrieval.

use std::time::Duration;

use rankmesh_common::discovery::Resolver;
use rankmesh_proto::pb::embedding::v1 as pb;
use rankmesh_proto::pb::embedding::v1::embedding_service_client::EmbeddingServiceClient;

use crate::rpc::{Core, unary_rpcs};
use crate::upstream::UpstreamConfig;

/// Typed calls to the embedding replicas. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EmbeddingClient {
    core: Core,
}

impl EmbeddingClient {
    pub fn new(resolver: Resolver, timeout: Duration) -> Self {
        Self::with_config(resolver, timeout, UpstreamConfig::default())
    }

    pub fn with_config(resolver: Resolver, timeout: Duration, config: UpstreamConfig) -> Self {
        Self {
            core: Core::new("embedding", resolver, timeout, config),
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

unary_rpcs!(EmbeddingClient, EmbeddingServiceClient {
    /// Embeddings of texts.
    Read embed(pb::EmbedRequest) -> pb::EmbedResponse;
    /// The nearest items to a vector, with filters.
    Read retrieve(pb::RetrieveRequest) -> pb::RetrieveResponse;
    /// Rebuilds the item index (a rebuild repeated is the same index).
    Idempotent build_index(pb::BuildIndexRequest) -> pb::BuildIndexResponse;
});
