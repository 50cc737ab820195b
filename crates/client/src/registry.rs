//! The model registry: versions, stages and artifacts.
//!
//! Reads need no token; writes (stage changes, key rotation) send the admin token
//! given with [`RegistryClient::with_token`]. Publishing and fetching stream: a
//! publish is sent once, and a fetch answers what arrived before a broken stream,
//! so the caller resumes from its last byte (which only it knows).

use std::time::Duration;

use rankmesh_common::discovery::Resolver;
use rankmesh_proto::pb::registry::v1 as pb;
use rankmesh_proto::pb::registry::v1::model_registry_client::ModelRegistryClient;

use crate::rpc::{Core, Deadline, Kind, unary_rpcs};
use crate::upstream::UpstreamConfig;

/// Largest FetchModel message accepted: a chunk (1 MiB) and its framing, with room.
const FETCH_MESSAGE_BYTES: usize = 8 << 20;

/// What one FetchModel call delivered, in order from the offset asked for.
#[derive(Debug, Default)]
pub struct FetchedPart {
    pub data: Vec<u8>,
    /// The whole artifact's size (0 when no message arrived).
    pub total: u64,
    /// Why the stream stopped early, if it did: `data` is still good, up to there.
    pub broken: Option<tonic::Status>,
}

/// Typed calls to the registry replicas. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    core: Core,
}

impl RegistryClient {
    pub fn new(resolver: Resolver, timeout: Duration) -> Self {
        Self::with_config(resolver, timeout, UpstreamConfig::default())
    }

    pub fn with_config(resolver: Resolver, timeout: Duration, config: UpstreamConfig) -> Self {
        Self {
            core: Core::new("registry", resolver, timeout, config),
        }
    }

    /// Sends `token` (the registry's admin token) as `authorization: Bearer
    /// <token>` with every call.
    pub fn with_token(self, token: &str) -> Self {
        Self {
            core: self.core.with_bearer(token),
        }
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The summary of one model, if the registry has it.
    pub async fn model(
        &self,
        name: &str,
        deadline: impl Into<Deadline>,
    ) -> Result<Option<pb::ModelSummary>, tonic::Status> {
        let listed = self
            .list_models(
                pb::ListModelsRequest {
                    name: name.to_owned(),
                },
                deadline,
            )
            .await?;
        Ok(listed.models.into_iter().find(|m| m.name == name))
    }

    /// Uploads one artifact: the header, its chunks and sidecars, in order. Sent
    /// once: a second attempt would publish a second version.
    pub async fn publish(
        &self,
        parts: Vec<pb::PublishModelRequest>,
        deadline: impl Into<Deadline>,
    ) -> Result<pb::PublishModelResponse, tonic::Status> {
        self.core
            .client_stream(
                "publish_model",
                tokio_stream::iter(parts),
                deadline.into(),
                |ch, r| async move {
                    ModelRegistryClient::new(ch)
                        .max_encoding_message_size(rankmesh_proto::limits::MAX_MESSAGE_BYTES)
                        .publish_model(r)
                        .await
                },
            )
            .await
    }

    /// Streams an artifact's ciphertext (or one sidecar) from `req.offset`; each
    /// chunk's size goes to `progress` as it arrives. A stream that breaks midway
    /// is not an error: the answer carries what arrived and why it stopped, and the
    /// caller resumes after it. Only a call that yields nothing at all fails.
    pub async fn fetch_model(
        &self,
        req: pb::FetchModelRequest,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<FetchedPart, tonic::Status> {
        self.core
            .upstream()
            .call(|ch| {
                let req = req.clone();
                async move {
                    let mut stream = ModelRegistryClient::new(ch)
                        .max_decoding_message_size(FETCH_MESSAGE_BYTES)
                        .fetch_model(req)
                        .await?
                        .into_inner();
                    let mut part = FetchedPart::default();
                    loop {
                        match stream.message().await {
                            Ok(Some(msg)) => {
                                part.total = msg.total_bytes;
                                progress(msg.data.len());
                                part.data.extend_from_slice(&msg.data);
                            }
                            Ok(None) => return Ok(part),
                            Err(e) => {
                                part.broken = Some(e);
                                return Ok(part);
                            }
                        }
                    }
                }
            })
            .await
    }

    /// Ends a canary, or restores the previous production version. Retried only
    /// with `expected_revision` set (a compare-and-set: a repeat after a lost answer
    /// fails the check); without it a repeat would roll back twice.
    pub async fn rollback(
        &self,
        req: pb::RollbackRequest,
        deadline: impl Into<Deadline>,
    ) -> Result<pb::SetStageResponse, tonic::Status> {
        let kind = if req.expected_revision == 0 {
            Kind::Once
        } else {
            Kind::Idempotent
        };
        self.core
            .unary("rollback", kind, req, deadline.into(), |ch, r| async move {
                ModelRegistryClient::new(ch).rollback(r).await
            })
            .await
    }
}

unary_rpcs!(RegistryClient, ModelRegistryClient {
    /// Models with their versions and stages.
    Read list_models(pb::ListModelsRequest) -> pb::ListModelsResponse;
    /// One version's signed manifest.
    Read get_model(pb::GetModelRequest) -> pb::ModelManifest;
    /// Setting a stage twice leaves it as once; with `expected_revision` a repeat
    /// after a lost answer fails the check instead.
    Idempotent set_stage(pb::SetStageRequest) -> pb::SetStageResponse;
    /// Not repeated: a second rotation would retire the key just made.
    Once rotate_key(pb::RotateKeyRequest) -> pb::RotateKeyResponse;
});
