//! The `EmbeddingService` gRPC API: request validation, the batcher in front of the
//! encoder, and the vector index behind Retrieve.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use rankmesh_common::batcher::{BatchError, Batcher};
use rankmesh_proto::limits::{MAX_BATCH_TEXTS, MAX_RETRIEVE_K, MAX_TEXT_BYTES};
use rankmesh_proto::pb::common::v1 as common;
use rankmesh_proto::pb::embedding::v1 as pb;
use tonic::{Request, Response, Status};

use crate::catalog::{self, CatalogItem};
use crate::encoder::{Embedded, Encoder};
use crate::index::{Filter, IndexParams, VectorIndex};

/// Texts embedded per batcher submission while building the index.
const BUILD_CHUNK: usize = 256;

/// Everything the service's errors can be; mapped onto gRPC codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    NoIndex(String),
    #[error("{0}")]
    BuildRunning(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<EmbedError> for Status {
    fn from(e: EmbedError) -> Self {
        match e {
            EmbedError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            EmbedError::Overloaded(m) => Status::resource_exhausted(m),
            EmbedError::NoIndex(m) => Status::failed_precondition(m),
            EmbedError::BuildRunning(m) => Status::aborted(m),
            EmbedError::Unavailable(m) => Status::unavailable(m),
            EmbedError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error; see the embedding service log")
            }
        }
    }
}

impl From<BatchError> for EmbedError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::QueueFull { .. } => Self::Overloaded(e.to_string()),
            BatchError::Model(m) => Self::Internal(m),
            BatchError::Stopped => Self::Internal("encoder batcher stopped".into()),
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> EmbedError {
    EmbedError::InvalidArgument {
        field: field.into(),
        message: message.into(),
    }
}

/// Where the items to index come from.
#[derive(Debug)]
pub enum CatalogSource {
    /// Nothing configured: BuildIndex answers FAILED_PRECONDITION.
    None,
    /// A JSONL file in the import format.
    File(std::path::PathBuf),
    /// The feature service's catalog, streamed with ScanItems.
    Feature(rankmesh_client::upstream::Upstream),
}

/// Items per ScanItems message.
const SCAN_PAGE: u32 = 1000;

impl CatalogSource {
    async fn items(&self) -> Result<Vec<CatalogItem>, EmbedError> {
        match self {
            Self::None => Err(EmbedError::NoIndex(
                "no catalog source configured (index.catalog or index.from_feature)".into(),
            )),
            Self::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || catalog::read_jsonl(&path))
                    .await
                    .map_err(|e| EmbedError::Internal(e.to_string()))?
                    .map_err(|e| EmbedError::Internal(e.to_string()))
            }
            Self::Feature(upstream) => upstream
                .call(|ch| async move {
                    use rankmesh_proto::pb::feature::v1 as feat;
                    let mut stream = feat::feature_service_client::FeatureServiceClient::new(ch)
                        .max_decoding_message_size(64 << 20)
                        .scan_items(feat::ScanItemsRequest {
                            after_id: String::new(),
                            page_size: SCAN_PAGE,
                        })
                        .await?
                        .into_inner();
                    let mut out = Vec::new();
                    while let Some(page) = stream.message().await? {
                        out.extend(page.items.into_iter().map(|i| CatalogItem {
                            id: i.id,
                            title: i.title,
                            description: i.description,
                            category: i.category,
                            brand: i.brand,
                            price: i.price,
                        }));
                    }
                    Ok(out)
                })
                .await
                .map_err(|s| EmbedError::Unavailable(format!("feature service: {}", s.message()))),
        }
    }

    pub fn is_configured(&self) -> bool {
        !matches!(self, Self::None)
    }
}

/// Shared state behind the gRPC handlers.
#[derive(Debug)]
pub struct Embedder {
    batcher: Batcher<String, Embedded>,
    encoder: Arc<Encoder>,
    model: common::ModelRef,
    index: ArcSwapOption<VectorIndex>,
    params: IndexParams,
    source: CatalogSource,
    snapshot: Option<std::path::PathBuf>,
    /// One build at a time; a second caller gets ABORTED instead of doubling the work.
    building: tokio::sync::Mutex<()>,
}

impl Embedder {
    pub fn new(
        encoder: Arc<Encoder>,
        batcher: Batcher<String, Embedded>,
        model: common::ModelRef,
        params: IndexParams,
        source: CatalogSource,
        snapshot: Option<std::path::PathBuf>,
    ) -> Self {
        Self {
            batcher,
            encoder,
            model,
            index: ArcSwapOption::empty(),
            params,
            source,
            snapshot,
            building: tokio::sync::Mutex::new(()),
        }
    }

    pub fn model(&self) -> &common::ModelRef {
        &self.model
    }

    /// Whether BuildIndex has somewhere to read the catalog from.
    pub fn has_source(&self) -> bool {
        self.source.is_configured()
    }

    /// Installs an index (e.g. loaded from a snapshot at startup).
    pub fn set_index(&self, index: VectorIndex) {
        metrics::gauge!("rankmesh_index_items").set(index.len() as f64);
        self.index.store(Some(Arc::new(index)));
    }

    pub fn index(&self) -> Option<Arc<VectorIndex>> {
        self.index.load_full()
    }

    /// Validates and embeds texts through the batcher.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Embedded>, EmbedError> {
        if texts.is_empty() {
            return Err(invalid("texts", "at least one text is required"));
        }
        if texts.len() > MAX_BATCH_TEXTS {
            return Err(invalid(
                "texts",
                format!("{} texts; at most {MAX_BATCH_TEXTS} per call", texts.len()),
            ));
        }
        for (i, t) in texts.iter().enumerate() {
            check_text(&format!("texts[{i}]"), t)?;
        }
        Ok(self.batcher.submit(texts).await?)
    }

    /// Nearest items to a text or a vector.
    pub async fn retrieve(
        &self,
        req: pb::RetrieveRequest,
    ) -> Result<pb::RetrieveResponse, EmbedError> {
        let pb::RetrieveRequest { query, k, filters } = req;
        if k == 0 || k > MAX_RETRIEVE_K {
            return Err(invalid(
                "k",
                format!("must be within 1..={MAX_RETRIEVE_K}, got {k}"),
            ));
        }
        let filter = filter_from(filters)?;
        let index = self.index().ok_or_else(|| {
            EmbedError::NoIndex("no vector index yet: call BuildIndex or set index.catalog".into())
        })?;
        let vector = match query {
            None => return Err(invalid("query", "set either text or vector")),
            Some(pb::retrieve_request::Query::Text(t)) => {
                check_text("text", &t)?;
                let mut out = self.batcher.submit(vec![t]).await?;
                out.pop()
                    .ok_or_else(|| EmbedError::Internal("encoder returned no vector".into()))?
                    .vector
            }
            Some(pb::retrieve_request::Query::Vector(v)) => {
                if v.values.len() != index.dim() {
                    return Err(invalid(
                        "vector",
                        format!(
                            "{} values; the index has dimension {}",
                            v.values.len(),
                            index.dim()
                        ),
                    ));
                }
                if let Some(i) = v.values.iter().position(|x| !x.is_finite()) {
                    return Err(invalid(
                        format!("vector.values[{i}]"),
                        "not a finite number",
                    ));
                }
                v.values
            }
        };
        let hits = tokio::task::spawn_blocking(move || index.search(&vector, k as usize, &filter))
            .await
            .map_err(|e| EmbedError::Internal(e.to_string()))?
            .map_err(|e| EmbedError::Internal(e.to_string()))?;
        Ok(pb::RetrieveResponse {
            items: hits
                .into_iter()
                .map(|h| pb::Neighbor {
                    item_id: h.id,
                    similarity: h.similarity,
                })
                .collect(),
            model: Some(self.model.clone()),
        })
    }

    /// Embeds the catalog (or only `ids`, keeping the other items' vectors) and swaps
    /// in the new index, then snapshots it.
    pub async fn build_index(
        &self,
        ids: Vec<String>,
    ) -> Result<pb::BuildIndexResponse, EmbedError> {
        let _guard = self
            .building
            .try_lock()
            .map_err(|_| EmbedError::BuildRunning("an index build is already running".into()))?;
        let started = Instant::now();
        let items = self.source.items().await?;
        let current = self.index();
        let only: std::collections::HashSet<String> = ids.into_iter().collect();
        let mut entries = Vec::with_capacity(items.len());
        let mut to_embed: Vec<&CatalogItem> = Vec::new();
        for item in &items {
            let reuse = if only.is_empty() || only.contains(&item.id) {
                None
            } else {
                current.as_ref().and_then(|idx| idx.get(&item.id))
            };
            match reuse {
                Some((_, v)) => entries.push((item.meta(), v)),
                None => to_embed.push(item),
            }
        }
        for chunk in to_embed.chunks(BUILD_CHUNK) {
            let texts: Vec<String> = chunk.iter().map(|i| i.text()).collect();
            let vectors = self.batcher.submit(texts).await?;
            entries.extend(
                chunk
                    .iter()
                    .map(|i| i.meta())
                    .zip(vectors.into_iter().map(|e| e.vector)),
            );
        }
        let dim = self.encoder.dim();
        let params = self.params;
        let model = format!(
            "{}:{}:{}",
            self.model.name, self.model.version, self.model.variant
        );
        let snapshot = self.snapshot.clone();
        let index = tokio::task::spawn_blocking(move || -> Result<VectorIndex, String> {
            let index =
                VectorIndex::build(dim, params, &model, entries).map_err(|e| e.to_string())?;
            if let Some(dir) = snapshot {
                index.save(&dir).map_err(|e| e.to_string())?;
            }
            Ok(index)
        })
        .await
        .map_err(|e| EmbedError::Internal(e.to_string()))?
        .map_err(EmbedError::Internal)?;
        let indexed = index.len() as u64;
        self.set_index(index);
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            indexed,
            embedded = to_embed.len(),
            elapsed_ms,
            "vector index built"
        );
        Ok(pb::BuildIndexResponse {
            indexed,
            elapsed_ms,
        })
    }
}

fn check_text(field: &str, t: &str) -> Result<(), EmbedError> {
    if t.trim().is_empty() {
        return Err(invalid(field, "empty text"));
    }
    if t.len() > MAX_TEXT_BYTES {
        return Err(invalid(
            field,
            format!("{} bytes; at most {MAX_TEXT_BYTES}", t.len()),
        ));
    }
    Ok(())
}

/// Validates the proto filters.
pub fn filter_from(f: Option<common::Filters>) -> Result<Filter, EmbedError> {
    Filter::from_proto(f).map_err(|e| invalid(e.field, e.message))
}

/// The tonic service.
#[derive(Debug, Clone)]
pub struct EmbeddingApi {
    inner: Arc<Embedder>,
}

impl EmbeddingApi {
    pub fn new(inner: Arc<Embedder>) -> Self {
        Self { inner }
    }
}

#[tonic::async_trait]
impl pb::embedding_service_server::EmbeddingService for EmbeddingApi {
    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let pb::EmbedRequest { texts } = request.into_inner();
        let out = self.inner.embed(texts).await?;
        let dim = self.inner.encoder.dim() as u32;
        let truncated = out
            .iter()
            .enumerate()
            .filter(|(_, e)| e.truncated)
            .map(|(i, _)| i as u32)
            .collect();
        Ok(Response::new(pb::EmbedResponse {
            vectors: out
                .into_iter()
                .map(|e| pb::Vector { values: e.vector })
                .collect(),
            dim,
            truncated,
            model: Some(self.inner.model.clone()),
        }))
    }

    async fn retrieve(
        &self,
        request: Request<pb::RetrieveRequest>,
    ) -> Result<Response<pb::RetrieveResponse>, Status> {
        Ok(Response::new(
            self.inner.retrieve(request.into_inner()).await?,
        ))
    }

    async fn build_index(
        &self,
        request: Request<pb::BuildIndexRequest>,
    ) -> Result<Response<pb::BuildIndexResponse>, Status> {
        let pb::BuildIndexRequest { item_ids } = request.into_inner();
        Ok(Response::new(self.inner.build_index(item_ids).await?))
    }
}
