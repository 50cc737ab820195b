//! The `FeatureService` gRPC API over a [`FeatureStore`] and the lexical index.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use rankmesh_common::filters::Filter;
use rankmesh_common::rpc::{Blank, RpcError, check_count, check_text, invalid};
use rankmesh_proto::limits::{MAX_CANDIDATES, MAX_CHUNK_BYTES, MAX_QUERY_BYTES, MAX_RETRIEVE_K};
use rankmesh_proto::pb::common::v1 as common;
use rankmesh_proto::pb::feature::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::domain::{Event, EventKind, Item, check_id};
use crate::features;
use crate::import::{self, ChunkReader, Format, ImportError};
use crate::lexical::{LexicalIndex, UpdateError};
use crate::store::{FeatureStore, ImportId, Recorded, StoreError};

/// Events may be stamped at most this far in the future (clock skew).
const MAX_FUTURE_MS: i64 = 3_600_000;
/// Items per ScanItems message unless the caller asks otherwise.
const DEFAULT_PAGE: u32 = 256;
/// Items read from the store at a time to index them.
const INDEX_PAGE: usize = 1000;

/// A store that cannot be reached is worth a retry elsewhere; a backend error is ours.
impl From<StoreError> for RpcError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => {
                Self::Unavailable(format!("feature store unavailable: {m}"))
            }
            StoreError::Full(m) => {
                tracing::warn!(error = %m, "feature store disk full; refusing writes");
                Self::ResourceExhausted(
                    "feature store: disk full; writes are refused until space returns".into(),
                )
            }
            StoreError::Backend(m) => Self::Internal(m),
        }
    }
}

fn id_arg(field: &str, id: &str) -> Result<(), RpcError> {
    check_id(id).map_err(|m| invalid(field, m))
}

/// Shared state behind the handlers.
#[derive(Debug)]
pub struct Features<S> {
    store: S,
    lexical: Arc<LexicalIndex>,
    /// Imports commit one at a time: each is one atomic replace/upsert of the
    /// catalog.
    importing: tokio::sync::Mutex<()>,
}

impl<S: FeatureStore> Features<S> {
    pub fn new(store: S, lexical: Arc<LexicalIndex>) -> Self {
        Self {
            store,
            lexical,
            importing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Rebuilds the lexical index from the store (startup, or after a failed update),
    /// a page at a time.
    pub async fn rebuild_lexical(&self) -> Result<u64, RpcError> {
        let lexical = Arc::clone(&self.lexical);
        let store = self.store.clone();
        let rt = tokio::runtime::Handle::current();
        let indexed = tokio::task::spawn_blocking(move || {
            let mut pages = Pages::new(|after| rt.block_on(store.scan_items(after, INDEX_PAGE)));
            lexical
                .update(true, || pages.next(), || Ok(()))
                .map(|()| pages.rows)
        })
        .await
        .map_err(|e| RpcError::Internal(format!("indexing task failed: {e}")))?;
        indexed.map_err(|e| match e {
            UpdateError::Source(e) => e.into(),
            UpdateError::Index(e) | UpdateError::Stale(e) => RpcError::Internal(e.to_string()),
        })
    }

    pub async fn get_features(
        &self,
        req: pb::GetFeaturesRequest,
    ) -> Result<pb::GetFeaturesResponse, RpcError> {
        let ids = validate_get_features(&req)?;
        let pb::GetFeaturesRequest {
            user_id,
            query,
            with_display: req_display,
            ..
        } = req;

        let (items, profile) = tokio::try_join!(self.store.get_items(&ids), async {
            if user_id.is_empty() {
                Ok(None)
            } else {
                self.store.user_profile(&user_id).await
            }
        })?;
        let mut known = Vec::with_capacity(items.len());
        let mut unknown = Vec::new();
        for (id, item) in ids.into_iter().zip(items) {
            match item {
                Some(i) => known.push(i),
                None => unknown.push(id),
            }
        }
        let known_ids: Vec<String> = known.iter().map(|i| i.id.clone()).collect();
        let popularity = self.store.popularity(&known_ids).await?;
        let lexical = Arc::clone(&self.lexical);
        let q = query.clone();
        let ids_for_bm25 = known_ids.clone();
        let scores =
            rankmesh_common::rpc::blocking(move || lexical.scores_for(&q, &ids_for_bm25)).await?;
        let values = features::matrix(&query, &known, &scores, &popularity, profile.as_ref());
        let display = if req_display {
            known.iter().map(display_of).collect()
        } else {
            Vec::new()
        };
        Ok(pb::GetFeaturesResponse {
            schema: Some(schema()),
            item_ids: known_ids,
            values,
            unknown_item_ids: unknown,
            cold_start_user: profile.is_none(),
            display,
        })
    }

    pub async fn lexical_candidates(
        &self,
        req: pb::LexicalCandidatesRequest,
    ) -> Result<pb::LexicalCandidatesResponse, RpcError> {
        let (k, filter) = validate_lexical_candidates(&req)?;
        let query = req.query;
        let lexical = Arc::clone(&self.lexical);
        let hits =
            rankmesh_common::rpc::blocking(move || lexical.search(&query, k, &filter)).await?;
        Ok(pb::LexicalCandidatesResponse {
            items: hits
                .into_iter()
                .map(|(item_id, score)| pb::ScoredItem { item_id, score })
                .collect(),
        })
    }

    pub async fn record_event(
        &self,
        req: pb::RecordEventRequest,
    ) -> Result<pb::RecordEventResponse, RpcError> {
        let event = event_from(req, rankmesh_common::server::now_ms())?;
        let item = event.item_id.clone();
        match self.store.record_events(vec![event]).await?.pop() {
            Some(Recorded::Applied) => {
                metrics::counter!("rankmesh_events_recorded_total").increment(1);
                Ok(pb::RecordEventResponse { duplicate: false })
            }
            Some(Recorded::Duplicate) => Ok(pb::RecordEventResponse { duplicate: true }),
            Some(Recorded::UnknownItem) => Err(RpcError::NotFound(format!(
                "item_id: unknown item {item:?}"
            ))),
            None => Err(RpcError::Internal("store returned no outcome".into())),
        }
    }

    /// Imports a streamed catalog; see the proto for the contract. The chunks feed
    /// a parser on a blocking thread, whose batches of rows are staged in the store
    /// as they come; the staging becomes the catalog only once the whole upload has
    /// arrived and parsed, so a broken upload imports nothing, and memory holds a
    /// few batches whatever the upload's size.
    pub async fn import(
        &self,
        mut stream: impl Stream<Item = Result<pb::ImportCatalogChunk, Status>> + Unpin,
    ) -> Result<pb::ImportCatalogResponse, RpcError> {
        let first = match stream.next().await {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(upload_broken(&e)),
            None => {
                return Err(invalid(
                    "format",
                    "empty upload: the first chunk names the format",
                ));
            }
        };
        let format = validate_import_header(&first)?;
        let replace = first.replace;
        let started = std::time::Instant::now();

        let staging = Staging::begin(&self.store).await?;
        let (chunks, chunks_rx) = tokio::sync::mpsc::channel(8);
        // One batch in the channel, one being parsed, one being staged.
        let (batches, mut batches_rx) = tokio::sync::mpsc::channel::<Vec<Item>>(1);
        let parser = tokio::task::spawn_blocking(move || {
            import::parse_batches(format, ChunkReader::new(chunks_rx), &mut |batch| {
                batches
                    .blocking_send(batch)
                    .map_err(|_| ImportError::Stopped)
            })
        });
        // When staging fails, dropping the receiver stops the parser at its next
        // batch, and the parser gone stops the feed at its next chunk.
        let stage = async move {
            while let Some(batch) = batches_rx.recv().await {
                self.store.stage_items(&staging.import, batch).await?;
            }
            Ok::<_, StoreError>(staging)
        };
        let (upload_error, staged) = tokio::join!(feed_parser(first, &mut stream, chunks), stage);
        let parsed = parser
            .await
            .map_err(|e| RpcError::Internal(e.to_string()))?;
        if let Some(e) = upload_error {
            return Err(e);
        }
        let staging = staged?;
        let summary = parsed.map_err(|e| match e {
            ImportError::Interrupted => RpcError::Aborted(e.to_string()),
            ImportError::Header(m) => invalid("data", format!("CSV header: {m}")),
            ImportError::TooManyRows => RpcError::ResourceExhausted(e.to_string()),
            ImportError::RowTooLong(_) => invalid("data", e.to_string()),
            ImportError::Io(m) => RpcError::Internal(m),
            ImportError::Stopped => RpcError::Internal(e.to_string()),
        })?;
        // One commit at a time, taken only now: an upload that arrives slowly
        // holds no lock while it does.
        let answer = {
            let _guard = self.importing.lock().await;
            self.commit(staging, summary, replace).await?
        };
        tracing::info!(
            imported = answer.imported,
            rejected = answer.rejected,
            secs = started.elapsed().as_secs_f64(),
            "catalog imported"
        );
        Ok(answer)
    }

    /// Commits a staged import: the lexical index takes the staged rows a page at
    /// a time, then the store commits them, then the index does. The store is the
    /// source of truth: if its commit fails the index drops what it took; if the
    /// index's own commit then fails, it is rebuilt from the store rather than left
    /// half-updated.
    async fn commit(
        &self,
        mut staging: Staging<S>,
        summary: import::Summary,
        replace: bool,
    ) -> Result<pb::ImportCatalogResponse, RpcError> {
        let imported = summary.imported;
        let lexical = Arc::clone(&self.lexical);
        let store = self.store.clone();
        let rt = tokio::runtime::Handle::current();
        // The staging goes with the blocking task, which runs to its end even if
        // the caller goes away: whether the store committed decides its fate
        // there, never an abort racing the commit.
        let updated = tokio::task::spawn_blocking(move || {
            let import = staging.import.clone();
            let mut pages =
                Pages::new(|after| rt.block_on(store.staged_items(&import, after, INDEX_PAGE)));
            let updated = lexical.update(
                replace,
                || pages.next(),
                || rt.block_on(store.commit_import(&import, replace)),
            );
            if matches!(updated, Ok(()) | Err(UpdateError::Stale(_))) {
                staging.committed();
            }
            updated
        })
        .await
        .map_err(|e| RpcError::Internal(format!("indexing task failed: {e}")))?;
        match updated {
            Ok(()) => {}
            Err(UpdateError::Source(e)) => return Err(e.into()),
            Err(UpdateError::Index(e)) => return Err(RpcError::Internal(e.to_string())),
            Err(UpdateError::Stale(e)) => {
                tracing::error!(error = %e, "lexical index update failed after import; rebuilding from the store");
                self.rebuild_lexical().await?;
            }
        }
        metrics::counter!("rankmesh_catalog_rows_imported_total").increment(imported);
        Ok(pb::ImportCatalogResponse {
            imported,
            errors: summary
                .errors
                .into_iter()
                .map(|e| pb::RowError {
                    line: e.line,
                    reason: e.reason,
                })
                .collect(),
            rejected: summary.rejected,
        })
    }

    pub async fn get_items(
        &self,
        req: pb::GetItemsRequest,
    ) -> Result<pb::GetItemsResponse, RpcError> {
        validate_get_items(&req)?;
        let ids = req.ids;
        let got = self.store.get_items(&ids).await?;
        let mut items = Vec::new();
        let mut unknown = Vec::new();
        for (id, item) in ids.into_iter().zip(got) {
            match item {
                Some(i) => items.push(i.into()),
                None => unknown.push(id),
            }
        }
        Ok(pb::GetItemsResponse {
            items,
            unknown_ids: unknown,
        })
    }

    pub async fn user_profile(
        &self,
        req: pb::GetUserProfileRequest,
    ) -> Result<pb::GetUserProfileResponse, RpcError> {
        validate_user_profile(&req)?;
        let user_id = req.user_id.as_str();
        Ok(match self.store.user_profile(user_id).await? {
            None => pb::GetUserProfileResponse {
                cold_start_user: true,
                ..Default::default()
            },
            Some(p) => pb::GetUserProfileResponse {
                recent_item_ids: p.recent.iter().map(|r| r.item_id.clone()).collect(),
                category_affinity: p
                    .category_affinity()
                    .into_iter()
                    .map(|(c, a)| (c, a as f32))
                    .collect(),
                cold_start_user: false,
            },
        })
    }
}

/// Rows read a page at a time through `read(after)`, in id order, until a page
/// comes back empty; counts what it read.
struct Pages<F> {
    read: F,
    after: String,
    rows: u64,
}

impl<F: FnMut(&str) -> Result<Vec<Item>, StoreError>> Pages<F> {
    fn new(read: F) -> Self {
        Self {
            read,
            after: String::new(),
            rows: 0,
        }
    }

    fn next(&mut self) -> Result<Vec<Item>, StoreError> {
        let page = (self.read)(&self.after)?;
        if let Some(last) = page.last() {
            self.after.clone_from(&last.id);
        }
        self.rows += page.len() as u64;
        Ok(page)
    }
}

/// A staged import, aborted when dropped uncommitted: an upload that breaks, fails
/// to parse, or whose caller goes away leaves nothing in the store.
struct Staging<S: FeatureStore> {
    store: S,
    import: ImportId,
    done: bool,
}

impl<S: FeatureStore> Staging<S> {
    async fn begin(store: &S) -> Result<Self, StoreError> {
        Ok(Self {
            store: store.clone(),
            import: store.begin_import().await?,
            done: false,
        })
    }

    /// The store committed it (and so dropped it): nothing to abort.
    fn committed(&mut self) {
        self.done = true;
    }
}

impl<S: FeatureStore> Drop for Staging<S> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (store, import) = (self.store.clone(), self.import.clone());
        // Dropped in an async handler, so a runtime is there; the abort runs on
        // after the call has ended.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.abort_import(&import).await {
                    tracing::warn!(%import, error = %e, "dropping an unfinished import's staging failed");
                }
            });
        }
    }
}

/// Hands an upload's chunks to the parser, in order, until its `last` chunk; an
/// oversized chunk, a broken stream or one that ends early sends the parser an
/// error instead, and is the answer. `None` when the upload arrived whole (or the
/// parser stopped early: its own error is the answer then).
async fn feed_parser(
    first: pb::ImportCatalogChunk,
    stream: &mut (impl Stream<Item = Result<pb::ImportCatalogChunk, Status>> + Unpin),
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, ()>>,
) -> Option<RpcError> {
    let mut chunk = Some((first.data, first.last));
    loop {
        let mut finished = false;
        if let Some((data, last)) = chunk.take() {
            if let Err(e) = check_chunk(&data) {
                let _ = tx.send(Err(())).await;
                return Some(e);
            }
            if !data.is_empty() && tx.send(Ok(data.into())).await.is_err() {
                // The parser stopped early (too many rows, bad header); its error wins.
                return None;
            }
            finished = last;
        }
        if finished {
            let _ = tx.send(Ok(bytes::Bytes::new())).await;
            return None;
        }
        let broken = match stream.next().await {
            Some(Ok(c)) => {
                chunk = Some((c.data, c.last));
                continue;
            }
            Some(Err(e)) => upload_broken(&e),
            // The stream ended without its `last` chunk: treat it as broken.
            None => RpcError::Aborted(
                "upload ended without its last chunk; nothing was imported".to_owned(),
            ),
        };
        let _ = tx.send(Err(())).await;
        return Some(broken);
    }
}

/// The answer to an upload whose stream failed: the server's own limits on it (an
/// upload idle too long, a message over the size limit) keep their codes;
/// anything else broke the stream.
fn upload_broken(e: &Status) -> RpcError {
    match e.code() {
        tonic::Code::DeadlineExceeded => RpcError::DeadlineExceeded(e.message().to_owned()),
        tonic::Code::ResourceExhausted => RpcError::ResourceExhausted(e.message().to_owned()),
        _ => RpcError::Aborted(format!(
            "upload interrupted: {}; nothing was imported",
            e.message()
        )),
    }
}

/// What a result list shows of an item.
fn display_of(item: &Item) -> pb::ItemDisplay {
    pb::ItemDisplay {
        title: item.title.clone(),
        category: item.category.clone(),
        brand: item.brand.clone(),
        price: item.price,
    }
}

// The request checks below are pure and run before any storage is touched, so the
// fuzz target `rpc_requests` runs exactly them on arbitrary decoded messages.

/// Checks a GetFeatures request; answers the candidate ids, duplicates dropped, in
/// the order given.
pub fn validate_get_features(req: &pb::GetFeaturesRequest) -> Result<Vec<String>, RpcError> {
    if !req.user_id.is_empty() {
        id_arg("user_id", &req.user_id)?;
    }
    check_text("query", &req.query, MAX_QUERY_BYTES, Blank::Allowed)?;
    let candidate_ids = &req.candidate_ids;
    if candidate_ids.is_empty() {
        return Err(invalid(
            "candidate_ids",
            "at least one candidate is required",
        ));
    }
    check_ids("candidate_ids", candidate_ids)?;
    let mut seen = HashSet::with_capacity(candidate_ids.len());
    Ok(candidate_ids
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect())
}

/// At most [`MAX_CANDIDATES`] well-formed ids.
fn check_ids(field: &str, ids: &[String]) -> Result<(), RpcError> {
    if ids.len() > MAX_CANDIDATES as usize {
        return Err(invalid(
            field,
            format!("{} ids; at most {MAX_CANDIDATES}", ids.len()),
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        id_arg(&format!("{field}[{i}]"), id)?;
    }
    Ok(())
}

/// Checks a LexicalCandidates request; answers `k` and the filter.
pub fn validate_lexical_candidates(
    req: &pb::LexicalCandidatesRequest,
) -> Result<(usize, Filter), RpcError> {
    check_text("query", &req.query, MAX_QUERY_BYTES, Blank::Refused)?;
    let k = check_count("k", req.k, MAX_RETRIEVE_K)?;
    Ok((k, Filter::from_proto(req.filters.clone())?))
}

/// Checks a RecordEvent request as of `now_ms`; answers the event to record.
pub fn validate_record_event(req: &pb::RecordEventRequest, now_ms: i64) -> Result<Event, RpcError> {
    event_from(req.clone(), now_ms)
}

/// Checks a GetItems request.
pub fn validate_get_items(req: &pb::GetItemsRequest) -> Result<(), RpcError> {
    check_ids("ids", &req.ids)
}

/// Checks a GetUserProfile request.
pub fn validate_user_profile(req: &pb::GetUserProfileRequest) -> Result<(), RpcError> {
    id_arg("user_id", &req.user_id)
}

/// Checks a ScanItems request; answers the page size.
pub fn validate_scan_items(req: &pb::ScanItemsRequest) -> Result<usize, RpcError> {
    if !req.after_id.is_empty() {
        id_arg("after_id", &req.after_id)?;
    }
    let page_size = req.page_size;
    if page_size > MAX_CANDIDATES {
        return Err(invalid(
            "page_size",
            format!("at most {MAX_CANDIDATES}, got {page_size}"),
        ));
    }
    Ok(if page_size == 0 {
        DEFAULT_PAGE
    } else {
        page_size
    } as usize)
}

/// Every ImportCatalog chunk's size limit.
fn check_chunk(data: &[u8]) -> Result<(), RpcError> {
    if data.len() > MAX_CHUNK_BYTES {
        return Err(RpcError::ResourceExhausted(format!(
            "data: chunk of {} bytes; at most {MAX_CHUNK_BYTES}",
            data.len()
        )));
    }
    Ok(())
}

/// Checks the first chunk of an ImportCatalog upload; answers the format it names.
pub fn validate_import_header(first: &pb::ImportCatalogChunk) -> Result<Format, RpcError> {
    check_chunk(&first.data)?;
    match pb::CatalogFormat::try_from(first.format) {
        Ok(pb::CatalogFormat::Jsonl) => Ok(Format::Jsonl),
        Ok(pb::CatalogFormat::Csv) => Ok(Format::Csv),
        _ => Err(invalid(
            "format",
            "set CATALOG_FORMAT_JSONL or CATALOG_FORMAT_CSV on the first chunk",
        )),
    }
}

/// The schema every GetFeatures reply carries.
pub fn schema() -> pb::FeatureSchema {
    pb::FeatureSchema {
        name: features::SCHEMA_NAME.into(),
        version: features::SCHEMA_VERSION,
        columns: features::COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
    }
}

fn event_from(req: pb::RecordEventRequest, now_ms: i64) -> Result<Event, RpcError> {
    let pb::RecordEventRequest {
        event_id,
        user_id,
        item_id,
        r#type,
        timestamp_ms,
    } = req;
    id_arg("event_id", &event_id)?;
    id_arg("user_id", &user_id)?;
    id_arg("item_id", &item_id)?;
    let kind = match pb::EventType::try_from(r#type) {
        Ok(pb::EventType::View) => EventKind::View,
        Ok(pb::EventType::Cart) => EventKind::Cart,
        Ok(pb::EventType::Purchase) => EventKind::Purchase,
        _ => {
            return Err(invalid(
                "type",
                format!("must be VIEW, CART or PURCHASE, got {}", r#type),
            ));
        }
    };
    let timestamp_ms = match timestamp_ms {
        0 => now_ms,
        t if t < 0 => return Err(invalid("timestamp_ms", format!("negative: {t}"))),
        t if t > now_ms + MAX_FUTURE_MS => {
            return Err(invalid(
                "timestamp_ms",
                format!("{t} is more than 1 hour in the future"),
            ));
        }
        t => t,
    };
    Ok(Event {
        event_id,
        user_id,
        item_id,
        kind,
        timestamp_ms,
    })
}

/// The tonic service.
#[derive(Debug)]
pub struct FeatureApi<S> {
    inner: Arc<Features<S>>,
}

impl<S> FeatureApi<S> {
    pub fn new(inner: Arc<Features<S>>) -> Self {
        Self { inner }
    }
}

type ItemStream = Pin<Box<dyn Stream<Item = Result<pb::ScanItemsResponse, Status>> + Send>>;

rankmesh_common::grpc_service! {
    impl<S: FeatureStore> pb::feature_service_server::FeatureService for FeatureApi<S> {
        get_features(pb::GetFeaturesRequest) -> pb::GetFeaturesResponse => get_features;
        lexical_candidates(pb::LexicalCandidatesRequest) -> pb::LexicalCandidatesResponse
            => lexical_candidates;
        record_event(pb::RecordEventRequest) -> pb::RecordEventResponse => record_event;
        import_catalog(Streaming<pb::ImportCatalogChunk>) -> pb::ImportCatalogResponse => import;
        get_items(pb::GetItemsRequest) -> pb::GetItemsResponse => get_items;
        get_user_profile(pb::GetUserProfileRequest) -> pb::GetUserProfileResponse => user_profile;
    }

    type ScanItemsStream = ItemStream;

    async fn scan_items(
        &self,
        request: Request<pb::ScanItemsRequest>,
    ) -> Result<Response<ItemStream>, Status> {
        let request = request.into_inner();
        let page = validate_scan_items(&request)?;
        let after_id = request.after_id;
        let inner = Arc::clone(&self.inner);
        let stream = futures::stream::unfold(Some(after_id), move |after| {
            let inner = Arc::clone(&inner);
            async move {
                let after = after?;
                match inner.store.scan_items(&after, page).await {
                    Ok(items) if items.is_empty() => None,
                    Ok(items) => {
                        let next = items.last().map(|i| i.id.clone());
                        let msg = pb::ScanItemsResponse {
                            items: items.into_iter().map(common::Item::from).collect(),
                        };
                        Some((Ok(msg), next))
                    }
                    Err(e) => Some((Err(Status::from(RpcError::from(e))), None)),
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ts: i64, t: pb::EventType) -> pb::RecordEventRequest {
        pb::RecordEventRequest {
            event_id: "e1".into(),
            user_id: "u1".into(),
            item_id: "i1".into(),
            r#type: t as i32,
            timestamp_ms: ts,
        }
    }

    #[test]
    fn event_validation_names_fields() {
        let now = 1_000_000_000;
        assert_eq!(
            event_from(req(0, pb::EventType::View), now)
                .expect("ok")
                .timestamp_ms,
            now
        );
        let field = |r| match event_from(r, now) {
            Err(RpcError::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(req(-5, pb::EventType::View)), "timestamp_ms");
        assert_eq!(
            field(req(now + 2 * MAX_FUTURE_MS, pb::EventType::View)),
            "timestamp_ms"
        );
        assert_eq!(field(req(0, pb::EventType::Unspecified)), "type");
        let mut r = req(0, pb::EventType::Cart);
        r.user_id = String::new();
        assert_eq!(field(r), "user_id");
    }
}
