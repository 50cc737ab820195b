//! The request path: dense and lexical retrieval in parallel, merge, features, ONNX
//! ranker, top k, display fields.
//!
//! Every stage gets a share of what is left of the caller's deadline. An optional
//! stage that fails or runs out of time is skipped and named in `degraded`: no
//! lexical -> dense only; no dense -> lexical only; no features or no ranker ->
//! retrieval order (reciprocal-rank fusion); no display fields -> ids and scores only.
//! Only when no candidate source answers is the request an error.
//!
//! Stages pass each other a [`StageError`]; the SDK's `tonic::Status` becomes one
//! where each call returns, and only a request's own failure becomes an
//! [`RpcError`], where it leaves the orchestrator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use rankmesh_common::admission::{Admission, Outcome as Admitted};
use rankmesh_common::batcher::{BatchConfig, Batcher};
use rankmesh_common::filters::Filter;
use rankmesh_common::rpc::{Blank, RpcError, check_count, check_text, invalid};
use rankmesh_common::server::ServedModel;
use rankmesh_proto::limits::{MAX_ID_BYTES, MAX_QUERY_BYTES, MAX_RANKING_K};
use rankmesh_proto::pb::common::v1 as common;
use rankmesh_proto::pb::embedding::v1 as emb;
use rankmesh_proto::pb::feature::v1 as feat;
use rankmesh_proto::pb::ranking::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::fusion::{
    Candidate, Fusion, ListStats, RETRIEVAL_COLUMNS, Retrieved, append_retrieval, fuse,
};
use crate::ranker::Ranker;
use crate::rollout::{Outcome, RolloutStats};
use rankmesh_client::{EmbeddingClient, FeatureClient};

/// Candidate generation and deadlines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Candidates asked from each retrieval source.
    pub candidates: u32,
    /// How the lists are fused: the answer's order when no ranker scores it.
    pub fusion: Fusion,
    /// Deadline when the caller sends none, milliseconds.
    pub default_timeout_ms: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            candidates: 200,
            fusion: Fusion::default(),
            default_timeout_ms: 1_000,
        }
    }
}

/// The dense list from a Retrieve answer; the encoder that made it joins the trace.
fn dense_list(r: emb::RetrieveResponse, trace: &mut Trace) -> Retrieved {
    trace.models.extend(r.model);
    Retrieved {
        source: "dense",
        items: r
            .items
            .into_iter()
            .map(|n| (n.item_id, n.similarity))
            .collect(),
    }
}

fn check_user(user: &str, required: bool) -> Result<(), RpcError> {
    if user.is_empty() {
        return if required {
            Err(invalid("user_id", "required"))
        } else {
            Ok(())
        };
    }
    if user.len() > MAX_ID_BYTES || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "user_id",
            format!("1..={MAX_ID_BYTES} bytes without whitespace"),
        ));
    }
    Ok(())
}

/// One candidate's row of a request's feature matrix. The matrix is shared by its
/// rows, not copied row by row: the batcher counts and cuts rows (its limits are
/// in rows), and the batch copies the rows it runs into one tensor.
#[derive(Debug, Clone)]
pub struct MatrixRow {
    matrix: Arc<[f32]>,
    width: usize,
    row: usize,
}

impl MatrixRow {
    /// The rows of a row-major `matrix`, `width` values each.
    pub fn all(matrix: Arc<[f32]>, width: usize) -> Vec<Self> {
        let width = width.max(1);
        (0..matrix.len() / width)
            .map(|row| Self {
                matrix: Arc::clone(&matrix),
                width,
                row,
            })
            .collect()
    }

    pub fn values(&self) -> &[f32] {
        &self.matrix[self.row * self.width..(self.row + 1) * self.width]
    }
}

/// The ranker and its batcher, when one is loaded.
#[derive(Debug)]
pub struct LoadedRanker {
    pub ranker: Arc<Ranker>,
    pub batcher: Batcher<MatrixRow, f32>,
    /// What a Search reply names for it: version, the artifact variant this
    /// replica runs ("fp32" or "int8") and the provider it runs on.
    pub model: common::ModelRef,
}

impl LoadedRanker {
    /// Wraps a loaded ranker in its batcher (one worker per session).
    pub fn new(ranker: Ranker, batch: BatchConfig, variant: &str) -> Self {
        let ranker = Arc::new(ranker);
        let r = Arc::clone(&ranker);
        let batcher = Batcher::new("ranker", batch, move |rows: Vec<MatrixRow>| {
            let width = rows.first().map_or(0, |x| x.width);
            let mut tensor = Vec::with_capacity(rows.len() * width);
            for row in &rows {
                tensor.extend_from_slice(row.values());
            }
            r.score(tensor).map_err(|e| e.to_string())
        });
        let model = common::ModelRef {
            name: "ranker".into(),
            version: ranker.version(),
            variant: variant.to_owned(),
            provider: ranker.provider().as_str().into(),
        };
        Self {
            ranker,
            batcher,
            model,
        }
    }

    /// How `/ready` reports it.
    pub fn served(&self) -> ServedModel {
        rankmesh_common::onnx::served_model(
            "ranker",
            self.model.version,
            &self.model.variant,
            self.ranker.provider(),
        )
    }
}

/// A canary ranker and the share of requests it answers.
#[derive(Debug)]
pub struct Canary {
    pub loaded: Arc<LoadedRanker>,
    pub percent: u32,
}

/// The rankers a replica serves with: production, and optionally a canary that
/// answers `percent` of requests, sticky by routing key.
#[derive(Debug, Default)]
pub struct Rankers {
    pub production: arc_swap::ArcSwapOption<LoadedRanker>,
    pub canary: arc_swap::ArcSwapOption<Canary>,
    pub stats: Arc<RolloutStats>,
}

impl Rankers {
    pub fn new(production: Option<LoadedRanker>) -> Self {
        let r = Self::default();
        r.production.store(production.map(Arc::new));
        r
    }

    /// The ranker for a request with this routing key.
    pub fn pick(&self, routing_key: &str) -> Option<Arc<LoadedRanker>> {
        if let Some(c) = self.canary.load_full()
            && bucket(routing_key) < c.percent
        {
            return Some(Arc::clone(&c.loaded));
        }
        self.production.load_full()
    }
}

/// A stable bucket in 0..100 for a routing key (FNV-1a: same key, same bucket, on
/// every replica and across restarts).
pub fn bucket(key: &str) -> u32 {
    (rankmesh_common::fnv::fnv1a(key.as_bytes()) % 100) as u32
}

/// The orchestrator behind Search and Recommend.
#[derive(Debug)]
pub struct Orchestrator {
    pub embedding: EmbeddingClient,
    pub feature: FeatureClient,
    /// The rankers in use; each swapped atomically when a new version is installed.
    pub rankers: Arc<Rankers>,
    pub config: SearchConfig,
    /// Which calls are admitted (see [`rankmesh_common::admission`]).
    pub admission: Arc<Admission>,
}

/// Every value an answer's `degraded` can hold (the proto's comment on
/// `SearchResponse.degraded` lists the same, checked by a test): the stages that
/// can be skipped or answered from a fallback.
pub const DEGRADED: &[&str] = &[
    "dense",
    "lexical",
    "profile",
    "features",
    "ranker",
    "items",
    "cold_start",
];

/// What every reply carries besides items.
#[derive(Debug, Default)]
struct Trace {
    degraded: Vec<String>,
    stage_ms: HashMap<String, f32>,
    models: Vec<common::ModelRef>,
}

impl Trace {
    fn degrade(&mut self, stage: &'static str, why: &dyn std::fmt::Display) {
        debug_assert!(DEGRADED.contains(&stage), "{stage} is not in DEGRADED");
        tracing::warn!(stage, reason = %why, "stage skipped; answer degraded");
        metrics::counter!("rankmesh_degraded_total", "stage" => stage.to_owned()).increment(1);
        if !self.degraded.iter().any(|d| d == stage) {
            self.degraded.push(stage.to_owned());
        }
    }
    fn time(&mut self, stage: &str, since: Instant) {
        self.stage_ms
            .insert(stage.to_owned(), since.elapsed().as_secs_f32() * 1e3);
    }
}

/// Why a stage produced nothing. An optional stage's error is logged and named in
/// `degraded`; a required one's becomes the request's [`RpcError`].
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The service behind the stage answered an error or could not be reached.
    #[error("{message} ({code:?})")]
    Upstream { code: tonic::Code, message: String },
    /// The stage's share of the deadline ran out.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The ranker ran and failed.
    #[error("ranker: {0}")]
    Ranker(String),
}

impl From<tonic::Status> for StageError {
    fn from(s: tonic::Status) -> Self {
        Self::Upstream {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// What is left of the deadline, as a share for one stage.
fn share(deadline: Instant, fraction: f32) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .mul_f32(fraction)
}

async fn within<T>(
    budget: Duration,
    fut: impl std::future::Future<Output = Result<T, StageError>>,
) -> Result<T, StageError> {
    match tokio::time::timeout(budget, fut).await {
        Ok(r) => r,
        Err(_) => Err(StageError::Timeout(budget)),
    }
}

/// The id of the trace this request is part of (what `meshctl trace` and the trace
/// UI look up); a fresh random id when tracing is off, so replies still carry one
/// to quote in logs.
fn trace_id() -> String {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let id = cx.span().span_context().trace_id();
    if id == opentelemetry::trace::TraceId::INVALID {
        format!("{:032x}", rand::random::<u128>())
    } else {
        id.to_string()
    }
}

/// The ranker's input for a request: rows in candidate order; and, when asked
/// for, each candidate's display fields, read with its features.
#[derive(Debug)]
struct Featurized {
    schema: feat::FeatureSchema,
    /// Row-major, `width` per candidate; shared with the ranker's batch.
    values: Arc<[f32]>,
    width: usize,
    display: HashMap<String, feat::ItemDisplay>,
}

/// The full ranker schema: the feature service's columns, then ranking's own.
fn ranker_schema(served: Option<feat::FeatureSchema>) -> feat::FeatureSchema {
    let mut schema = served.unwrap_or_default();
    schema
        .columns
        .extend(RETRIEVAL_COLUMNS.iter().map(|c| (*c).to_owned()));
    schema
}

/// What a valid Search request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSearch {
    /// The trimmed query.
    pub query: String,
    pub k: usize,
    pub filter: Filter,
}

/// Checks a Search request as the service does, before any backend is called.
/// Pure, so the fuzz target `rpc_requests` runs exactly this on arbitrary decoded
/// messages.
pub fn validate_search(req: &pb::SearchRequest) -> Result<ValidSearch, RpcError> {
    let k = check_count("k", req.k, MAX_RANKING_K)?;
    let (query, filter) = validate_featurize(req)?;
    Ok(ValidSearch { query, k, filter })
}

/// Checks a Featurize request (a Search request whose `k` is ignored); answers the
/// trimmed query and the filter.
pub fn validate_featurize(req: &pb::SearchRequest) -> Result<(String, Filter), RpcError> {
    let query = req.query.trim().to_owned();
    check_text("query", &query, MAX_QUERY_BYTES, Blank::Refused)?;
    check_user(&req.user_id, false)?;
    check_text(
        "routing_key",
        &req.routing_key,
        MAX_ID_BYTES,
        Blank::Allowed,
    )?;
    let filter = Filter::from_proto(req.filters.clone())?;
    Ok((query, filter))
}

/// Checks a Recommend request as the service does; answers `k`.
pub fn validate_recommend(req: &pb::RecommendRequest) -> Result<usize, RpcError> {
    check_user(&req.user_id, true)?;
    check_text(
        "routing_key",
        &req.routing_key,
        MAX_ID_BYTES,
        Blank::Allowed,
    )?;
    let k = check_count("k", req.k, MAX_RANKING_K)?;
    Filter::from_proto(req.filters.clone())?;
    Ok(k)
}

impl Orchestrator {
    /// When a call must be answered: its `grpc-timeout`, else the configured default.
    pub fn deadline<T>(&self, request: &tonic::Request<T>) -> Instant {
        let timeout = rankmesh_common::rpc::grpc_timeout(request.metadata());
        Instant::now() + timeout.unwrap_or(Duration::from_millis(self.config.default_timeout_ms))
    }

    #[tracing::instrument(name = "search", skip_all, fields(k = req.k, degraded, items))]
    pub async fn search(
        &self,
        req: pb::SearchRequest,
        deadline: Instant,
    ) -> Result<pb::SearchResponse, RpcError> {
        let valid = validate_search(&req)?;
        self.admitted(self.search_valid(req, valid, deadline)).await
    }

    async fn search_valid(
        &self,
        req: pb::SearchRequest,
        valid: ValidSearch,
        deadline: Instant,
    ) -> Result<pb::SearchResponse, RpcError> {
        let started = Instant::now();
        let ValidSearch { query, k, .. } = valid;
        let mut trace = Trace::default();
        let (candidates, stats) =
            Box::pin(self.retrieve(&query, req.filters.clone(), deadline, &mut trace)).await?;
        // Sticky canary assignment: the caller's key, else the user, else the query.
        let routing_key = [&req.routing_key, &req.user_id, &query]
            .into_iter()
            .find(|k| !k.is_empty())
            .cloned()
            .unwrap_or_default();
        let request = Finish {
            query,
            user_id: req.user_id,
            routing_key,
            k,
            explain: req.explain,
            recommend: false,
        };
        // Boxed, here and below: the stages' state is large, and an unboxed future
        // this size overflows a worker's 2 MiB stack in debug builds.
        let answer =
            Box::pin(self.finish(request, candidates, stats, deadline, trace, started)).await?;
        let total_ms = answer.stage_ms.get("total").copied().unwrap_or(0.0);
        metrics::histogram!("rankmesh_search_ms").record(f64::from(total_ms));
        Ok(answer)
    }

    /// Runs a validated call if admission lets it in (RESOURCE_EXHAUSTED at once
    /// if not), and tells admission how it went: its latency when answered, a
    /// timeout (or a caller that went away: the permit is dropped) as overload.
    async fn admitted<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, RpcError>>,
    ) -> Result<T, RpcError> {
        let permit = self
            .admission
            .admit()
            .map_err(|r| RpcError::ResourceExhausted(r.to_string()))?;
        let result = Box::pin(work).await;
        permit.finish(match &result {
            Ok(_) => Admitted::Answered,
            Err(RpcError::DeadlineExceeded(_)) => Admitted::TimedOut,
            Err(_) => Admitted::Failed,
        });
        result
    }

    /// The ranker's input for every candidate of a query, as Search computes it.
    #[tracing::instrument(name = "featurize", skip_all, fields(candidates))]
    pub async fn featurize(
        &self,
        req: pb::SearchRequest,
        deadline: Instant,
    ) -> Result<pb::FeaturizeResponse, RpcError> {
        let (query, _) = validate_featurize(&req)?;
        self.admitted(async move {
            let mut trace = Trace::default();
            let (mut candidates, stats) =
                Box::pin(self.retrieve(&query, req.filters.clone(), deadline, &mut trace)).await?;
            let f = self
                .features(
                    &query,
                    &req.user_id,
                    &mut candidates,
                    &stats,
                    deadline,
                    false,
                )
                .await
                .map_err(|e| RpcError::Unavailable(format!("features: {e}")))?;
            tracing::Span::current().record("candidates", candidates.len());
            Ok(pb::FeaturizeResponse {
                schema: Some(f.schema),
                item_ids: candidates.into_iter().map(|c| c.id).collect(),
                values: f.values.to_vec(),
                models: trace.models,
                degraded: trace.degraded,
            })
        })
        .await
    }

    /// Dense and lexical candidates in parallel, fused.
    async fn retrieve(
        &self,
        query: &str,
        filters: Option<common::Filters>,
        deadline: Instant,
        trace: &mut Trace,
    ) -> Result<(Vec<Candidate>, ListStats), RpcError> {
        let t = Instant::now();
        let budget = share(deadline, 0.45);
        let n = self.config.candidates;
        let request = emb::RetrieveRequest {
            query: Some(emb::retrieve_request::Query::Text(query.to_owned())),
            k: n,
            filters: filters.clone(),
        };
        let dense = async {
            let answer = self.embedding.retrieve(request, budget).await;
            answer.map_err(StageError::from)
        };
        let lexical = self.lexical(query, n, filters, budget);
        let span = tracing::info_span!(
            "stage.retrieve",
            dense = tracing::field::Empty,
            lexical = tracing::field::Empty,
            candidates = tracing::field::Empty,
        );
        let (dense, lexical) = async { tokio::join!(dense, lexical) }
            .instrument(span.clone())
            .await;
        trace.time("retrieve", t);
        let mut lists = Vec::new();
        let mut failures = Vec::new();
        match dense {
            Ok(r) => lists.push(dense_list(r, trace)),
            Err(e) => {
                trace.degrade("dense", &e);
                failures.push(format!("dense: {e}"));
            }
        }
        match lexical {
            Ok(items) => lists.push(Retrieved {
                source: "lexical",
                items,
            }),
            Err(e) => {
                trace.degrade("lexical", &e);
                failures.push(format!("lexical: {e}"));
            }
        }
        if lists.is_empty() {
            return Err(RpcError::Unavailable(format!(
                "no candidates could be produced ({})",
                failures.join("; ")
            )));
        }
        let (candidates, stats) = fuse(&lists, &self.config.fusion);
        for list in &lists {
            span.record(list.source, list.items.len());
        }
        span.record("candidates", candidates.len());
        Ok((candidates, stats))
    }

    async fn lexical(
        &self,
        query: &str,
        k: u32,
        filters: Option<common::Filters>,
        budget: Duration,
    ) -> Result<Vec<(String, f32)>, StageError> {
        let r = self
            .feature
            .lexical_candidates(
                feat::LexicalCandidatesRequest {
                    query: query.to_owned(),
                    k,
                    filters,
                },
                budget,
            )
            .await?;
        Ok(r.items.into_iter().map(|i| (i.item_id, i.score)).collect())
    }

    #[tracing::instrument(name = "recommend", skip_all, fields(k = req.k, degraded, items))]
    pub async fn recommend(
        &self,
        req: pb::RecommendRequest,
        deadline: Instant,
    ) -> Result<pb::RecommendResponse, RpcError> {
        let started = Instant::now();
        let k = validate_recommend(&req)?;
        self.admitted(async move {
            let pb::RecommendRequest {
                user_id,
                filters,
                routing_key,
                ..
            } = req;
            let mut trace = Trace::default();
            let (candidates, stats) =
                Box::pin(self.recommend_candidates(&user_id, filters, deadline, &mut trace))
                    .await?;
            // Sticky canary assignment: the caller's key, else the user.
            let routing_key = if routing_key.is_empty() {
                user_id.clone()
            } else {
                routing_key
            };
            let request = Finish {
                query: String::new(),
                user_id,
                routing_key,
                k,
                explain: false,
                recommend: true,
            };
            // Recommendations answer what a search does, less the (query) feature schema.
            let pb::SearchResponse {
                items,
                models,
                trace_id,
                degraded,
                stage_ms,
                feature_schema: _,
            } = Box::pin(self.finish(request, candidates, stats, deadline, trace, started)).await?;
            Ok(pb::RecommendResponse {
                items,
                models,
                trace_id,
                degraded,
                stage_ms,
            })
        })
        .await
    }

    /// Recommend's candidates, as [`Self::retrieve`] is Search's: for a user with
    /// events, what resembles their recent items and their favourite category; for
    /// anyone else, the popular items. Fused.
    async fn recommend_candidates(
        &self,
        user_id: &str,
        filters: Option<common::Filters>,
        deadline: Instant,
        trace: &mut Trace,
    ) -> Result<(Vec<Candidate>, ListStats), RpcError> {
        let t = Instant::now();
        let profile = self
            .feature
            .get_user_profile(
                feat::GetUserProfileRequest {
                    user_id: user_id.to_owned(),
                },
                share(deadline, 0.2),
            )
            .await;
        let profile = match profile {
            Ok(p) if !p.cold_start_user && !p.recent_item_ids.is_empty() => Some(p),
            Ok(_) => None,
            Err(s) => {
                trace.degrade("profile", &StageError::from(s));
                None
            }
        };
        let lists = match profile {
            Some(p) => self.personal_lists(&p, filters, deadline, trace).await,
            None => self.popular_list(filters, deadline, trace).await,
        };
        trace.time("retrieve", t);
        if lists.is_empty() {
            return Err(RpcError::Unavailable(
                "no candidates could be produced".into(),
            ));
        }
        Ok(fuse(&lists, &self.config.fusion))
    }

    /// A known user's candidate lists: dense, near the mean embedding of what they
    /// recently touched; lexical, from their favourite category.
    async fn personal_lists(
        &self,
        profile: &feat::GetUserProfileResponse,
        filters: Option<common::Filters>,
        deadline: Instant,
        trace: &mut Trace,
    ) -> Vec<Retrieved> {
        let mut lists = Vec::new();
        let dense = self
            .user_dense(&profile.recent_item_ids, filters.clone(), deadline)
            .await;
        match dense {
            Ok(Some(r)) => lists.push(dense_list(r, trace)),
            Ok(None) => trace.degrade("dense", &"no embeddable recent items"),
            Err(e) => trace.degrade("dense", &e),
        }
        let favourite = profile
            .category_affinity
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1));
        if let Some((cat, _)) = favourite {
            let mut f = filters.unwrap_or_default();
            if f.category_prefix.is_empty() {
                f.category_prefix.clone_from(cat);
            }
            let leaf = cat.rsplit('>').next().unwrap_or(cat).trim().to_owned();
            let n = self.config.candidates;
            match self.lexical(&leaf, n, Some(f), share(deadline, 0.4)).await {
                Ok(items) => lists.push(Retrieved {
                    source: "lexical",
                    items,
                }),
                Err(e) => trace.degrade("lexical", &e),
            }
        }
        lists
    }

    /// Dense retrieval by the user vector; `None` when none of the recent items
    /// could be embedded.
    async fn user_dense(
        &self,
        recent: &[String],
        filters: Option<common::Filters>,
        deadline: Instant,
    ) -> Result<Option<emb::RetrieveResponse>, StageError> {
        let Some(values) = self.user_vector(recent, share(deadline, 0.4)).await? else {
            return Ok(None);
        };
        let request = emb::RetrieveRequest {
            query: Some(emb::retrieve_request::Query::Vector(emb::Vector { values })),
            k: self.config.candidates,
            filters,
        };
        Ok(Some(
            self.embedding
                .retrieve(request, share(deadline, 0.4))
                .await?,
        ))
    }

    /// Cold start: every item is a candidate; quality and popularity features (the
    /// ranker, or the fallback order) pick the best.
    async fn popular_list(
        &self,
        filters: Option<common::Filters>,
        deadline: Instant,
        trace: &mut Trace,
    ) -> Vec<Retrieved> {
        trace.degrade("cold_start", &"unknown user or no events");
        let n = self.config.candidates;
        match self.lexical("*", n, filters, share(deadline, 0.4)).await {
            Ok(items) => vec![Retrieved {
                source: "popular",
                items,
            }],
            Err(e) => {
                trace.degrade("lexical", &e);
                Vec::new()
            }
        }
    }

    async fn user_vector(
        &self,
        recent: &[String],
        budget: Duration,
    ) -> Result<Option<Vec<f32>>, StageError> {
        let deadline = Instant::now() + budget;
        let ids: Vec<String> = recent.iter().take(10).cloned().collect();
        let items = self
            .feature
            .get_items(feat::GetItemsRequest { ids }, deadline)
            .await?;
        let texts: Vec<String> = items
            .items
            .iter()
            .map(|i| format!("{}. {}. {}", i.title, i.brand, i.category))
            .collect();
        if texts.is_empty() {
            return Ok(None);
        }
        let resp = self
            .embedding
            .embed(emb::EmbedRequest { texts }, deadline)
            .await?;
        let dim = resp.dim as usize;
        let mut mean = vec![0f32; dim];
        for v in &resp.vectors {
            for (m, x) in mean.iter_mut().zip(&v.values) {
                *m += x;
            }
        }
        Ok(Some(mean))
    }

    /// Features, ranker, top k, display fields: the answer to a search (or, less its
    /// schema, a recommendation).
    async fn finish(
        &self,
        req: Finish,
        mut candidates: Vec<Candidate>,
        stats: ListStats,
        deadline: Instant,
        mut trace: Trace,
        started: Instant,
    ) -> Result<pb::SearchResponse, RpcError> {
        let t = Instant::now();
        let features = self
            .features(
                &req.query,
                &req.user_id,
                &mut candidates,
                &stats,
                deadline,
                true,
            )
            .await;
        trace.time("features", t);
        let t = Instant::now();
        let mut rows = match features {
            Err(s) => {
                trace.degrade("features", &s);
                trace.degrade("ranker", &"no features");
                None
            }
            Ok(f) if req.recommend => {
                // The learned ranker is trained on search (query) judgements;
                // recommendations are ordered by the user's own signals.
                personal_order(&mut candidates, &f);
                Some(f)
            }
            Ok(f) => {
                self.score(&req.routing_key, &mut candidates, &f, deadline, &mut trace)
                    .await;
                Some(f)
            }
        };
        let explained = rows.as_ref().filter(|_| req.explain);
        let top = top_k(candidates, explained, req.k);
        trace.time("rank", t);
        let display = rows.as_mut().map(|f| std::mem::take(&mut f.display));
        let items = self.present(top, display, deadline, &mut trace).await;
        if Instant::now() > deadline && items.is_empty() {
            return Err(RpcError::DeadlineExceeded(
                "deadline exceeded during ranking".into(),
            ));
        }
        trace.time("total", started);
        let span = tracing::Span::current();
        span.record("items", items.len());
        if !trace.degraded.is_empty() {
            span.record("degraded", trace.degraded.join(",").as_str());
        }
        Ok(pb::SearchResponse {
            items,
            trace_id: trace_id(),
            models: trace.models,
            degraded: trace.degraded,
            stage_ms: trace.stage_ms,
            feature_schema: rows.filter(|_| req.explain).map(|f| f.schema),
        })
    }

    /// The ranker's input: the feature service's rows for the candidates, with the
    /// retrieval columns appended; candidates the catalog no longer knows are
    /// dropped (they cannot be shown). With `display`, the same call answers
    /// what the reply shows of each candidate: one round trip to the feature
    /// service after retrieval, not two.
    async fn features(
        &self,
        query: &str,
        user_id: &str,
        candidates: &mut Vec<Candidate>,
        stats: &ListStats,
        deadline: Instant,
        display: bool,
    ) -> Result<Featurized, StageError> {
        let ids: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
        let f = self
            .feature
            .get_features(
                feat::GetFeaturesRequest {
                    user_id: user_id.to_owned(),
                    query: query.to_owned(),
                    candidate_ids: ids,
                    with_display: display,
                },
                share(deadline, 0.5),
            )
            .instrument(tracing::info_span!(
                "stage.features",
                candidates = candidates.len()
            ))
            .await?;
        let served_width = f.schema.as_ref().map_or(0, |s| s.columns.len());
        let values = append_retrieval(candidates, stats, &f.item_ids, &f.values, served_width);
        let schema = ranker_schema(f.schema);
        Ok(Featurized {
            width: schema.columns.len().max(1),
            schema,
            values: values.into(),
            display: f.item_ids.into_iter().zip(f.display).collect(),
        })
    }

    /// Scores the candidates with the ranker this request is routed to; on any
    /// failure they keep their retrieval order and the reply says "ranker".
    async fn score(
        &self,
        routing_key: &str,
        candidates: &mut [Candidate],
        f: &Featurized,
        deadline: Instant,
        trace: &mut Trace,
    ) {
        let rank_span = tracing::info_span!(
            "stage.rank",
            ranked = tracing::field::Empty,
            models = tracing::field::Empty,
        );
        let Some(r) = self.rankers.pick(routing_key) else {
            trace.degrade("ranker", &"no ranker loaded");
            return;
        };
        if let Err(e) = r
            .ranker
            .check_schema(&f.schema.name, f.schema.version, &f.schema.columns)
        {
            trace.degrade("ranker", &e);
            return;
        }
        let rows = MatrixRow::all(Arc::clone(&f.values), f.width);
        let scoring = Instant::now();
        let scored = within(share(deadline, 0.6), async {
            r.batcher
                .submit(rows)
                .await
                .map_err(|e| StageError::Ranker(e.to_string()))
        })
        .instrument(rank_span.clone())
        .await;
        let version = r.ranker.version();
        let outcome = match &scored {
            Ok(scores) => Outcome::of(scores),
            Err(_) => Outcome::Error,
        };
        self.rankers
            .stats
            .record(version, scoring.elapsed(), outcome);
        match scored {
            Ok(_) if outcome == Outcome::NonFinite => trace.degrade(
                "ranker",
                &format!("ranker v{version} gave non-finite scores"),
            ),
            Ok(scores) => {
                for (c, s) in candidates.iter_mut().zip(&scores) {
                    c.score = Some(*s);
                }
                trace.models.push(r.model.clone());
                rank_span.record("ranked", scores.len());
                rank_span.record("models", format!("ranker:{version}").as_str());
            }
            Err(s) => trace.degrade("ranker", &s),
        }
    }

    /// The top k with their display fields: those read with the features, else
    /// (no features) fetched now; ids and scores only when they cannot be had.
    async fn present(
        &self,
        ranked: Vec<(Candidate, Vec<f32>)>,
        display: Option<HashMap<String, feat::ItemDisplay>>,
        deadline: Instant,
        trace: &mut Trace,
    ) -> Vec<pb::RankedItem> {
        let t = Instant::now();
        let display = match display {
            Some(d) if ranked.iter().all(|(c, _)| d.contains_key(&c.id)) => d,
            _ => self.fetch_display(&ranked, deadline, trace).await,
        };
        trace.time("items", t);
        ranked
            .into_iter()
            .map(|(c, features)| {
                let d = display.get(&c.id);
                pb::RankedItem {
                    score: c.score.unwrap_or(c.fused),
                    title: d.map(|i| i.title.clone()).unwrap_or_default(),
                    category: d.map(|i| i.category.clone()).unwrap_or_default(),
                    brand: d.map(|i| i.brand.clone()).unwrap_or_default(),
                    price: d.and_then(|i| i.price),
                    sources: c.sources.iter().map(|s| (*s).to_owned()).collect(),
                    item_id: c.id,
                    features,
                }
            })
            .collect()
    }

    /// Display fields of the ranked items by GetItems, for an answer that has
    /// none from the features call; empty (and "items" degraded) when it fails.
    async fn fetch_display(
        &self,
        ranked: &[(Candidate, Vec<f32>)],
        deadline: Instant,
        trace: &mut Trace,
    ) -> HashMap<String, feat::ItemDisplay> {
        let ids: Vec<String> = ranked.iter().map(|(c, _)| c.id.clone()).collect();
        if ids.is_empty() {
            return HashMap::new();
        }
        match self
            .feature
            .get_items(feat::GetItemsRequest { ids }, deadline)
            .await
        {
            Ok(r) => r
                .items
                .into_iter()
                .map(|i| {
                    let shown = feat::ItemDisplay {
                        title: i.title,
                        category: i.category,
                        brand: i.brand,
                        price: i.price,
                    };
                    (i.id, shown)
                })
                .collect(),
            Err(s) => {
                trace.degrade("items", &s);
                HashMap::new()
            }
        }
    }
}

/// What `finish` needs to know of the request.
#[derive(Debug)]
struct Finish {
    query: String,
    user_id: String,
    routing_key: String,
    k: usize,
    explain: bool,
    recommend: bool,
}

/// The best `k` candidates, by ranker score when every candidate has one, else by
/// fused retrieval rank; each with its feature row when `explained` (the rows
/// follow their candidates through the sort), else an empty one.
fn top_k(
    candidates: Vec<Candidate>,
    explained: Option<&Featurized>,
    k: usize,
) -> Vec<(Candidate, Vec<f32>)> {
    let mut ranked: Vec<(Candidate, Vec<f32>)> = match explained {
        Some(f) => candidates
            .into_iter()
            .zip(f.values.chunks(f.width).map(<[f32]>::to_vec))
            .collect(),
        None => candidates.into_iter().map(|c| (c, Vec::new())).collect(),
    };
    ranked.sort_by(|(a, _), (b, _)| match (a.score, b.score) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        _ => b.fused.total_cmp(&a.fused),
    });
    ranked.truncate(k);
    ranked
}

/// Recommendation order: the user's affinity for the item's category and brand,
/// then what shoppers value (popularity, rating); items already bought sink.
fn personal_order(candidates: &mut [Candidate], f: &Featurized) {
    let col = |name: &str| f.schema.columns.iter().position(|c| c == name);
    let weights = [
        ("user_category_affinity", 2.0),
        ("user_top_category_affinity", 1.0),
        ("user_brand_affinity", 0.3),
        ("popularity_log", 0.1),
        ("rating", 0.05),
        ("user_bought", -0.5),
    ];
    let idx: Vec<(usize, f32)> = weights
        .iter()
        .filter_map(|(n, w)| col(n).map(|i| (i, *w)))
        .collect();
    for (c, row) in candidates.iter_mut().zip(f.values.chunks(f.width)) {
        c.score = Some(idx.iter().map(|(j, w)| row[*j] * w).sum::<f32>() + c.rrf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proto's comment on `degraded` names exactly the values the code can
    /// emit, for Search and (by reference) Recommend.
    const PROTO: &str = "rankmesh/ranking/v1/ranking.proto";

    #[test]
    fn degraded_values_are_the_ones_the_proto_lists() {
        let comment = |message| rankmesh_proto::field_comment(PROTO, message, "degraded");
        let c = comment("SearchResponse").expect("SearchResponse.degraded");
        let quoted: Vec<&str> = c.split('"').skip(1).step_by(2).collect();
        let mut listed = quoted.clone();
        listed.sort_unstable();
        let mut emitted = DEGRADED.to_vec();
        emitted.sort_unstable();
        assert_eq!(listed, emitted, "proto comment: {c:?}");
        let r = comment("RecommendResponse").expect("RecommendResponse.degraded");
        assert!(r.contains("SearchResponse.degraded"), "{r:?}");
    }

    #[test]
    fn input_limits_name_fields() {
        assert!(matches!(
            check_count("k", 0, MAX_RANKING_K),
            Err(RpcError::InvalidArgument { field, .. }) if field == "k"
        ));
        assert!(matches!(
            check_count("k", 101, MAX_RANKING_K),
            Err(RpcError::InvalidArgument { field, .. }) if field == "k"
        ));
        assert_eq!(check_count("k", 100, MAX_RANKING_K).expect("ok"), 100);
        assert!(check_user("", false).is_ok());
        assert!(matches!(
            check_user("", true),
            Err(RpcError::InvalidArgument { field, .. }) if field == "user_id"
        ));
        assert!(check_user("a b", false).is_err());
    }
}
