//! The `EmbeddingService` gRPC API: request validation, the batcher in front of the
//! encoder, and the vector index behind Retrieve.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use rankmesh_common::batcher::{BatchConfig, Batcher};
use rankmesh_common::rpc::{Blank, RpcError, check_count, check_text, invalid};
use rankmesh_proto::limits::{MAX_BATCH_TEXTS, MAX_RETRIEVE_K, MAX_TEXT_BYTES};
use rankmesh_proto::pb::common::v1 as common;
use rankmesh_proto::pb::embedding::v1 as pb;
use tracing::Instrument;

use crate::catalog::{self, CatalogItem};
use crate::encoder::{Embedded, Encoder};
use crate::index::{Filter, IndexParams, ItemMeta, VectorIndex};

/// Texts embedded per batcher submission while building the index.
const BUILD_CHUNK: usize = 256;
/// Most values in a query vector: well above any sentence encoder's dimension.
pub const MAX_VECTOR_DIM: usize = 4096;
/// Most item ids one BuildIndex call re-embeds (stated in the proto).
pub const MAX_REINDEX_IDS: usize = 100_000;

/// Where the items to index come from.
#[derive(Debug)]
pub enum CatalogSource {
    /// Nothing configured: BuildIndex answers FAILED_PRECONDITION.
    None,
    /// A JSONL file in the import format.
    File(std::path::PathBuf),
    /// The feature service's catalog, streamed with ScanItems.
    Feature(rankmesh_client::FeatureClient),
}

/// Items per ScanItems message.
const SCAN_PAGE: u32 = 1000;

impl CatalogSource {
    async fn items(&self) -> Result<Vec<CatalogItem>, RpcError> {
        match self {
            Self::None => Err(RpcError::FailedPrecondition(
                "no catalog source configured (index.catalog or index.from_feature)".into(),
            )),
            Self::File(path) => {
                let path = path.clone();
                rankmesh_common::rpc::blocking(move || catalog::read_jsonl(&path)).await
            }
            Self::Feature(feature) => {
                let items = feature.scan_all_items(SCAN_PAGE).await.map_err(|s| {
                    RpcError::Unavailable(format!("feature service: {}", s.message()))
                })?;
                Ok(items.into_iter().map(CatalogItem::from).collect())
            }
        }
    }

    pub fn is_configured(&self) -> bool {
        !matches!(self, Self::None)
    }
}

/// An encoder with its batcher and the version it is.
#[derive(Debug)]
pub struct LoadedEncoder {
    pub encoder: Arc<Encoder>,
    pub batcher: Batcher<String, Embedded>,
    pub model: common::ModelRef,
    /// Query vectors by normalized query text, for this encoder only (a new
    /// encoder starts with an empty cache).
    queries: QueryCache,
}

/// Entries in the query-vector cache (384 floats each: about 15 MB when full).
const QUERY_CACHE_ENTRIES: u32 = 10_000;

/// An LRU of query vectors: storefront traffic repeats its head queries a lot.
struct QueryCache(std::sync::Mutex<schnellru::LruMap<String, Vec<f32>>>);

impl std::fmt::Debug for QueryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryCache").finish_non_exhaustive()
    }
}

impl QueryCache {
    fn new() -> Self {
        Self(std::sync::Mutex::new(schnellru::LruMap::new(
            schnellru::ByLength::new(QUERY_CACHE_ENTRIES),
        )))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, schnellru::LruMap<String, Vec<f32>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The cache key, and the text embedded on a miss: the encoder is uncased and
/// splits on whitespace, so case and runs of spaces do not change the vector.
fn normalize_query(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

impl LoadedEncoder {
    /// The vector of a query text, from the cache or the encoder.
    pub async fn query_vector(&self, text: &str) -> Result<Vec<f32>, RpcError> {
        let key = normalize_query(text);
        let cached = self.queries.lock().get(&key).cloned();
        let hit = cached.is_some();
        metrics::counter!(
            "rankmesh_cache_requests_total",
            "cache" => "query_vector",
            "result" => if hit { "hit" } else { "miss" },
        )
        .increment(1);
        tracing::Span::current().record("cache", if hit { "hit" } else { "miss" });
        if let Some(v) = cached {
            return Ok(v);
        }
        let mut out = self.batcher.submit(vec![key.clone()]).await?;
        let v = out
            .pop()
            .ok_or_else(|| RpcError::Internal("encoder returned no vector".into()))?
            .vector;
        self.queries.lock().insert(key, v.clone());
        Ok(v)
    }
}

impl LoadedEncoder {
    /// Wraps `encoder`, which `model` names (its provider is filled in here: it
    /// is known once the sessions exist).
    pub fn new(encoder: Encoder, mut model: common::ModelRef, batch: BatchConfig) -> Self {
        model.provider = encoder.provider().as_str().to_owned();
        let encoder = Arc::new(encoder);
        let enc = Arc::clone(&encoder);
        let batcher = Batcher::new("encoder", batch, move |texts: Vec<String>| {
            enc.encode(&texts).map_err(|e| e.to_string())
        });
        metrics::gauge!("rankmesh_model_version", "model" => "encoder", "stage" => "production")
            .set(model.version as f64);
        Self {
            encoder,
            batcher,
            model,
            queries: QueryCache::new(),
        }
    }

    /// How `/ready` reports it.
    pub fn served(&self) -> rankmesh_common::server::ServedModel {
        rankmesh_common::onnx::served_model(
            &self.model.name,
            self.model.version,
            &self.model.variant,
            self.encoder.provider(),
        )
    }

    /// What an index built with this encoder records (vectors from another encoder
    /// are in another space and must not be mixed).
    pub fn tag(&self) -> String {
        format!(
            "{}:{}:{}",
            self.model.name, self.model.version, self.model.variant
        )
    }
}

/// An encoder and the index its vectors built: swapped together, so a query is
/// always embedded by the encoder that embedded the items it is compared with.
#[derive(Debug)]
struct Generation {
    encoder: Arc<LoadedEncoder>,
    index: Option<Arc<VectorIndex>>,
}

/// What a build made: the new index, None when the current one is already up to
/// date; and how many items it embedded.
struct Built {
    index: Option<VectorIndex>,
    embedded: usize,
}

/// Shared state behind the gRPC handlers.
#[derive(Debug)]
pub struct Embedder {
    current: ArcSwap<Generation>,
    params: IndexParams,
    source: CatalogSource,
    snapshot: Option<std::path::PathBuf>,
    /// One build (or encoder swap) at a time; a second BuildIndex caller gets
    /// ABORTED instead of doubling the work.
    building: tokio::sync::Mutex<()>,
}

impl Embedder {
    pub fn new(
        encoder: LoadedEncoder,
        params: IndexParams,
        source: CatalogSource,
        snapshot: Option<std::path::PathBuf>,
    ) -> Self {
        Self {
            current: ArcSwap::from_pointee(Generation {
                encoder: Arc::new(encoder),
                index: None,
            }),
            params,
            source,
            snapshot,
            building: tokio::sync::Mutex::new(()),
        }
    }

    pub fn model(&self) -> common::ModelRef {
        self.current.load().encoder.model.clone()
    }

    pub fn encoder(&self) -> Arc<LoadedEncoder> {
        Arc::clone(&self.current.load().encoder)
    }

    /// Replaces the encoder: with a catalog source, re-embeds every item with the
    /// new encoder first and swaps encoder and index together; requests keep being
    /// served by the old pair meanwhile. Without a source, an existing index cannot
    /// be re-embedded, so the swap is refused.
    pub async fn swap_encoder(&self, next: LoadedEncoder) -> Result<u64, RpcError> {
        let _guard = self.building.lock().await;
        let next = Arc::new(next);
        let had_index = self.index().is_some();
        let index = if self.source.is_configured() {
            let built = self.build_with(&next, &[], None).await?;
            built.index.map(Arc::new)
        } else if had_index {
            return Err(RpcError::Internal(
                "the index cannot be re-embedded without a catalog source; keeping the current encoder".into(),
            ));
        } else {
            None
        };
        let items = index.as_ref().map_or(0, |i| i.len() as u64);
        if let Some(i) = &index {
            metrics::gauge!("rankmesh_index_items").set(i.len() as f64);
        }
        self.current.store(Arc::new(Generation {
            encoder: next,
            index,
        }));
        Ok(items)
    }

    /// Whether BuildIndex has somewhere to read the catalog from.
    pub fn has_source(&self) -> bool {
        self.source.is_configured()
    }

    /// Installs an index (e.g. loaded from a snapshot at startup); refused when it
    /// was built by another encoder than the current one.
    pub fn set_index(&self, index: VectorIndex) -> Result<(), RpcError> {
        let current = self.current.load_full();
        if index.model() != current.encoder.tag() {
            return Err(RpcError::Internal(format!(
                "index built by {}, but the encoder is {}",
                index.model(),
                current.encoder.tag()
            )));
        }
        metrics::gauge!("rankmesh_index_items").set(index.len() as f64);
        self.current.store(Arc::new(Generation {
            encoder: Arc::clone(&current.encoder),
            index: Some(Arc::new(index)),
        }));
        Ok(())
    }

    pub fn index(&self) -> Option<Arc<VectorIndex>> {
        self.current.load().index.clone()
    }

    /// Validates and embeds texts through the batcher; the reply names the encoder
    /// that embedded them.
    pub async fn embed(&self, req: pb::EmbedRequest) -> Result<pb::EmbedResponse, RpcError> {
        validate_embed(&req)?;
        let pb::EmbedRequest { texts } = req;
        let encoder = self.encoder();
        let out: Vec<Embedded> = encoder.batcher.submit(texts).await?;
        let truncated = out
            .iter()
            .enumerate()
            .filter(|(_, e)| e.truncated)
            .map(|(i, _)| i as u32)
            .collect();
        Ok(pb::EmbedResponse {
            vectors: out
                .into_iter()
                .map(|e| pb::Vector { values: e.vector })
                .collect(),
            dim: encoder.encoder.dim() as u32,
            truncated,
            model: Some(encoder.model.clone()),
        })
    }

    /// Nearest items to a text or a vector.
    pub async fn retrieve(
        &self,
        req: pb::RetrieveRequest,
    ) -> Result<pb::RetrieveResponse, RpcError> {
        let (k, filter) = validate_retrieve(&req)?;
        let query = req.query;
        // One generation for the whole call: the query is embedded by the encoder
        // that embedded the items.
        let generation = self.current.load_full();
        let index = generation.index.clone().ok_or_else(|| {
            RpcError::FailedPrecondition(
                "no vector index yet: call BuildIndex or set index.catalog".into(),
            )
        })?;
        let vector = match query {
            None => return Err(invalid("query", "set either text or vector")),
            Some(pb::retrieve_request::Query::Text(t)) => {
                generation
                    .encoder
                    .query_vector(&t)
                    .instrument(tracing::info_span!(
                        "embed.query",
                        cache = tracing::field::Empty
                    ))
                    .await?
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
                v.values
            }
        };
        let hits =
            rankmesh_common::rpc::blocking(move || index.search(&vector, k, &filter)).await?;
        Ok(pb::RetrieveResponse {
            items: hits
                .into_iter()
                .map(|h| pb::Neighbor {
                    item_id: h.id,
                    similarity: h.similarity,
                })
                .collect(),
            model: Some(generation.encoder.model.clone()),
        })
    }

    /// Brings the index up to date with the catalog and swaps it in, then snapshots
    /// it. Only what changed is embedded: every item with `ids`, else an item whose
    /// text differs from the one its vector was made from (or that the index lacks);
    /// when nothing changed at all, the current index is kept as it is (a restart
    /// over an unchanged catalog costs a catalog scan, not an embedding pass).
    pub async fn build_index(
        &self,
        req: pb::BuildIndexRequest,
    ) -> Result<pb::BuildIndexResponse, RpcError> {
        validate_build_index(&req)?;
        let ids = req.item_ids;
        let _guard = self
            .building
            .try_lock()
            .map_err(|_| RpcError::Aborted("an index build is already running".into()))?;
        let started = Instant::now();
        let generation = self.current.load_full();
        let built = self
            .build_with(&generation.encoder, &ids, generation.index.as_deref())
            .await?;
        let embedded = built.embedded as u64;
        let indexed = match built.index {
            Some(index) => {
                let n = index.len() as u64;
                self.set_index(index)?;
                n
            }
            None => generation.index.as_ref().map_or(0, |i| i.len() as u64),
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(pb::BuildIndexResponse {
            indexed,
            elapsed_ms,
            embedded,
        })
    }

    /// Embeds the catalog with `encoder` and builds the index, then snapshots it.
    /// With `current` built by the same encoder, its vectors are kept for the items
    /// whose text is unchanged (with `ids`: for every item not listed), and when
    /// that is every item and nothing else changed, no index is built
    /// ([`Built::index`] is None).
    async fn build_with(
        &self,
        encoder: &LoadedEncoder,
        ids: &[String],
        current: Option<&VectorIndex>,
    ) -> Result<Built, RpcError> {
        let started = Instant::now();
        let items = self.source.items().await?;
        let tag = encoder.tag();
        let current = current.filter(|i| i.model() == tag);
        let only: std::collections::HashSet<&String> = ids.iter().collect();
        let mut entries = Vec::with_capacity(items.len());
        let mut to_embed: Vec<(ItemMeta, String)> = Vec::new();
        // Whether `entries` says exactly what `current` holds, so far.
        let mut same = current.is_some_and(|c| c.len() == items.len());
        for item in &items {
            let text = catalog::text(item);
            let meta = catalog::meta(item, &text);
            let kept = match current.and_then(|idx| idx.get(&item.id)) {
                Some((old, v)) if only.is_empty() => {
                    (old.text_hash == meta.text_hash && meta.text_hash != 0).then_some((old, v))
                }
                Some((old, v)) if !only.contains(&item.id) => Some((old, v)),
                _ => None,
            };
            match kept {
                Some((old, v)) => {
                    same &= old == meta;
                    entries.push((meta, v));
                }
                None => to_embed.push((meta, text)),
            }
        }
        if same && to_embed.is_empty() {
            tracing::info!(
                indexed = entries.len(),
                encoder = %tag,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "vector index unchanged: catalog and encoder as indexed"
            );
            return Ok(Built {
                index: None,
                embedded: 0,
            });
        }
        let embedded = to_embed.len();
        // Texts of similar length batch together: a model call pads every row to
        // its longest (the order items are indexed in does not matter).
        to_embed.sort_by_key(|(_, t)| t.len());
        for chunk in to_embed.chunks(BUILD_CHUNK) {
            let texts: Vec<String> = chunk.iter().map(|(_, t)| t.clone()).collect();
            let vectors = encoder.batcher.submit(texts).await?;
            entries.extend(
                chunk
                    .iter()
                    .map(|(m, _)| m.clone())
                    .zip(vectors.into_iter().map(|e| e.vector)),
            );
        }
        let dim = encoder.encoder.dim();
        let params = self.params;
        let snapshot = self.snapshot.clone();
        let index = rankmesh_common::rpc::blocking(move || -> Result<VectorIndex, String> {
            let index =
                VectorIndex::build(dim, params, &tag, entries).map_err(|e| e.to_string())?;
            if let Some(dir) = snapshot {
                index.save(&dir).map_err(|e| e.to_string())?;
            }
            Ok(index)
        })
        .await?;
        tracing::info!(
            indexed = index.len(),
            embedded,
            encoder = %encoder.tag(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "vector index built"
        );
        Ok(Built {
            index: Some(index),
            embedded,
        })
    }
}

/// Checks an Embed request as the service does, before the batcher sees it. The
/// request checks here are pure, so the fuzz target `rpc_requests` runs exactly
/// them on arbitrary decoded messages.
pub fn validate_embed(req: &pb::EmbedRequest) -> Result<(), RpcError> {
    let texts = &req.texts;
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
        check_text(&format!("texts[{i}]"), t, MAX_TEXT_BYTES, Blank::Refused)?;
    }
    Ok(())
}

/// Checks a Retrieve request as far as it can be without the index (whose
/// dimension a query vector must match): answers `k` and the filter.
pub fn validate_retrieve(req: &pb::RetrieveRequest) -> Result<(usize, Filter), RpcError> {
    let k = check_count("k", req.k, MAX_RETRIEVE_K)?;
    let filter = filter_from(req.filters.clone())?;
    match &req.query {
        None => return Err(invalid("query", "set either text or vector")),
        Some(pb::retrieve_request::Query::Text(t)) => {
            check_text("text", t, MAX_TEXT_BYTES, Blank::Refused)?;
        }
        Some(pb::retrieve_request::Query::Vector(v)) => {
            if v.values.is_empty() || v.values.len() > MAX_VECTOR_DIM {
                return Err(invalid(
                    "vector",
                    format!("{} values; 1..={MAX_VECTOR_DIM}", v.values.len()),
                ));
            }
            if let Some(i) = v.values.iter().position(|x| !x.is_finite()) {
                return Err(invalid(
                    format!("vector.values[{i}]"),
                    "not a finite number",
                ));
            }
        }
    }
    Ok((k, filter))
}

/// Checks a BuildIndex request: at most [`MAX_REINDEX_IDS`] well-formed item ids.
pub fn validate_build_index(req: &pb::BuildIndexRequest) -> Result<(), RpcError> {
    if req.item_ids.len() > MAX_REINDEX_IDS {
        return Err(invalid(
            "item_ids",
            format!(
                "{} ids; at most {MAX_REINDEX_IDS} (leave it empty to re-embed the whole catalog)",
                req.item_ids.len()
            ),
        ));
    }
    for (i, id) in req.item_ids.iter().enumerate() {
        rankmesh_common::catalog::check_id(id).map_err(|m| invalid(format!("item_ids[{i}]"), m))?;
    }
    Ok(())
}

/// Validates the proto filters.
pub fn filter_from(f: Option<common::Filters>) -> Result<Filter, RpcError> {
    Ok(Filter::from_proto(f)?)
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

rankmesh_common::grpc_service! {
    impl pb::embedding_service_server::EmbeddingService for EmbeddingApi {
        embed(pb::EmbedRequest) -> pb::EmbedResponse => embed;
        retrieve(pb::RetrieveRequest) -> pb::RetrieveResponse => retrieve;
        build_index(pb::BuildIndexRequest) -> pb::BuildIndexResponse => build_index;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_that_embed_alike_share_a_cache_key() {
        assert_eq!(normalize_query("  Pan   for\tEGGS "), "pan for eggs");
        assert_ne!(
            normalize_query("pan for eggs"),
            normalize_query("pans for eggs")
        );
    }
}
