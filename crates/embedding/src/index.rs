//! The item-vector index: HNSW (usearch) over unit-length item embeddings, with
//! category, brand and price filters, snapshotted to disk with checksums.
//!
//! Why usearch: it is actively maintained (Unum), fast (SIMD kernels), serialises its
//! graph so a restart neither re-embeds nor rebuilds, and supports predicate-filtered
//! search. Why not only that predicate: when a filter matches few items, HNSW
//! traversal through mostly-rejected nodes loses recall and can return fewer than k.
//! So a filter's matches are counted first; when they are few (`exact_below`), the
//! search is exact over just those items, which is both correct and cheap.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// HNSW parameters; defaults give recall@10 >= 0.95 at 50k-500k items.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexParams {
    /// Graph degree (M).
    pub connectivity: usize,
    /// Candidate list size while inserting (efConstruction).
    pub expansion_add: usize,
    /// Candidate list size while searching (efSearch); raised to k when k is larger.
    pub expansion_search: usize,
    /// A filter matching at most this many items is searched exactly (scoring
    /// 20k rows of 384 floats takes a few milliseconds).
    pub exact_below: usize,
}

impl Default for IndexParams {
    fn default() -> Self {
        Self {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 160,
            exact_below: 20_000,
        }
    }
}

/// What a filter needs to know about an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemMeta {
    pub id: String,
    /// Category path, normalised (see [`normalize_category`]).
    pub category: String,
    /// Lower-cased brand.
    pub brand: String,
    pub price: Option<f64>,
    /// Fingerprint of the text its vector was embedded from
    /// ([`crate::catalog::text_hash`]): a rebuild by the same encoder keeps the
    /// vector of an item whose text has not changed. 0 (snapshots written before
    /// it was kept): unknown, always re-embedded.
    #[serde(default)]
    pub text_hash: u64,
}

pub use rankmesh_common::filters::{Filter, normalize_category};

impl ItemMeta {
    fn passes(&self, filter: &Filter) -> bool {
        filter.matches(&self.category, &self.brand, self.price)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("vector index: {0}")]
    Native(String),
    #[error("vector has dimension {got}, the index has {want}")]
    Dimension { got: usize, want: usize },
    #[error("duplicate item id {0:?}")]
    Duplicate(String),
    #[error("snapshot {path}: {message}")]
    Snapshot { path: PathBuf, message: String },
}

fn native(e: impl std::fmt::Display) -> IndexError {
    IndexError::Native(e.to_string())
}

/// A search hit: item id and cosine similarity.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    pub similarity: f32,
}

/// The index. Reads are concurrent (`&self`); it is built once and swapped whole.
///
/// Vectors live twice: as f16 inside the HNSW graph (half the memory, enough for
/// navigation) and as an f32 row-major matrix used for exact scoring (filtered
/// searches among few items, `get`, recall measurement). Filters are answered from
/// inverted lists (category, brand), so a selective filter costs in proportion to
/// what it matches, not to the catalog.
pub struct VectorIndex {
    index: Index,
    items: Vec<ItemMeta>,
    /// Row `key` is `vectors[key * dim..(key + 1) * dim]`, unit length.
    vectors: Vec<f32>,
    dim: usize,
    params: IndexParams,
    /// Free-form provenance kept with the snapshot (encoder name, version, variant).
    model: String,
    /// Item id -> key (row).
    keys: HashMap<String, u32>,
    /// Normalised category path -> keys, ordered so a prefix is a range.
    by_category: BTreeMap<String, Vec<u32>>,
    /// Lower-cased brand -> keys.
    by_brand: HashMap<String, Vec<u32>>,
    /// Graph searches in flight, at most [`SEARCH_THREADS`]: usearch serves only as
    /// many concurrent searches as it reserved thread contexts for, and refuses the
    /// rest ("Reserve capacity ahead of searches!"), which callers saw as INTERNAL
    /// once more than a core's worth of Retrieve calls overlapped.
    searching: (std::sync::Mutex<usize>, std::sync::Condvar),
}

/// Concurrent graph searches (and the thread contexts reserved for them).
const SEARCH_THREADS: usize = 32;

/// Holds one of the [`SEARCH_THREADS`] slots.
struct SearchSlot<'a>(&'a (std::sync::Mutex<usize>, std::sync::Condvar));

impl<'a> SearchSlot<'a> {
    fn take(gate: &'a (std::sync::Mutex<usize>, std::sync::Condvar)) -> Self {
        let mut busy = gate
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *busy >= SEARCH_THREADS {
            busy = gate
                .1
                .wait(busy)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *busy += 1;
        Self(gate)
    }
}

impl Drop for SearchSlot<'_> {
    fn drop(&mut self) {
        *self
            .0
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) -= 1;
        self.0.1.notify_one();
    }
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("items", &self.items.len())
            .field("dim", &self.dim)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

fn options(dim: usize, params: &IndexParams) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        // Vectors are unit length: inner product is cosine and cheaper.
        metric: MetricKind::IP,
        // The graph only navigates; exact scores come from the f32 matrix.
        quantization: ScalarKind::F16,
        connectivity: params.connectivity,
        expansion_add: params.expansion_add,
        expansion_search: params.expansion_search,
        multi: false,
    }
}

impl VectorIndex {
    /// Builds an index from (meta, vector) pairs. Vectors are L2-normalised here, so
    /// any caller's vectors work with the inner-product metric.
    pub fn build(
        dim: usize,
        params: IndexParams,
        model: &str,
        entries: Vec<(ItemMeta, Vec<f32>)>,
    ) -> Result<Self, IndexError> {
        if entries.len() >= u32::MAX as usize {
            return Err(IndexError::Native(format!(
                "{} items: too many for one index",
                entries.len()
            )));
        }
        let mut items = Vec::with_capacity(entries.len());
        let mut keys = HashMap::with_capacity(entries.len());
        let mut vectors = Vec::with_capacity(entries.len() * dim);
        for (meta, mut v) in entries {
            if v.len() != dim {
                return Err(IndexError::Dimension {
                    got: v.len(),
                    want: dim,
                });
            }
            if keys.insert(meta.id.clone(), items.len() as u32).is_some() {
                return Err(IndexError::Duplicate(meta.id));
            }
            normalize(&mut v);
            vectors.extend_from_slice(&v);
            items.push(meta);
        }
        let index = Index::new(&options(dim, &params)).map_err(native)?;
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        index
            .reserve_capacity_and_threads(items.len().max(1), threads.max(SEARCH_THREADS))
            .map_err(native)?;
        // usearch supports concurrent inserts (one per reserved thread): graph
        // construction dominates build time, so use every core.
        let rows = items.len();
        let per = rows.div_ceil(threads).max(1);
        let (index_ref, vectors_ref) = (&index, &vectors);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..rows)
                .step_by(per)
                .map(|start| {
                    scope.spawn(move || -> Result<(), IndexError> {
                        for key in start..(start + per).min(rows) {
                            index_ref
                                .add(key as u64, &vectors_ref[key * dim..(key + 1) * dim])
                                .map_err(native)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .map_err(|_| IndexError::Native("index build thread panicked".into()))?
            })
        })?;
        let snapshot = SnapshotItems {
            dim,
            params,
            model: model.to_owned(),
            items,
        };
        Ok(Self::assemble(index, vectors, snapshot, keys))
    }

    /// The index over a built or loaded graph, with the filter lists built from the
    /// items.
    fn assemble(
        index: Index,
        vectors: Vec<f32>,
        snapshot: SnapshotItems,
        keys: HashMap<String, u32>,
    ) -> Self {
        let SnapshotItems {
            dim,
            params,
            model,
            items,
        } = snapshot;
        let mut by_category: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let mut by_brand: HashMap<String, Vec<u32>> = HashMap::new();
        for (key, m) in items.iter().enumerate() {
            by_category
                .entry(m.category.clone())
                .or_default()
                .push(key as u32);
            by_brand
                .entry(m.brand.clone())
                .or_default()
                .push(key as u32);
        }
        Self {
            index,
            items,
            vectors,
            dim,
            params,
            model,
            keys,
            by_category,
            by_brand,
            searching: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The parameters it was built with, search settings as configured now.
    pub fn params(&self) -> IndexParams {
        self.params
    }

    fn row(&self, key: u32) -> &[f32] {
        let k = key as usize;
        &self.vectors[k * self.dim..(k + 1) * self.dim]
    }

    /// The stored (normalised) vector and metadata of an item.
    pub fn get(&self, id: &str) -> Option<(ItemMeta, Vec<f32>)> {
        let key = *self.keys.get(id)?;
        Some((self.items[key as usize].clone(), self.row(key).to_vec()))
    }

    /// Every item's metadata, in key order.
    pub fn items(&self) -> &[ItemMeta] {
        &self.items
    }

    /// Keys passing `filter`, ascending. Starts from the narrowest inverted list.
    fn allowed(&self, filter: &Filter) -> Vec<u32> {
        let mut keys: Vec<u32> = if !filter.category_prefix.is_empty() {
            let prefix = filter.category_prefix.as_str();
            self.by_category
                .range(prefix.to_owned()..)
                .take_while(|(c, _)| c.starts_with(prefix))
                .filter(|(c, _)| c.len() == prefix.len() || c[prefix.len()..].starts_with(" > "))
                .flat_map(|(_, ks)| ks.iter().copied())
                .collect()
        } else if !filter.brands.is_empty() {
            filter
                .brands
                .iter()
                .filter_map(|b| self.by_brand.get(b))
                .flat_map(|ks| ks.iter().copied())
                .collect()
        } else {
            (0..self.items.len() as u32).collect()
        };
        keys.retain(|&k| self.items[k as usize].passes(filter));
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Approximate top-k by cosine among items passing `filter`, best first.
    pub fn search(&self, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>, IndexError> {
        if query.len() != self.dim {
            return Err(IndexError::Dimension {
                got: query.len(),
                want: self.dim,
            });
        }
        if k == 0 || self.items.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = query.to_vec();
        normalize(&mut q);
        // usearch widens its candidate list to k by itself when k > efSearch.
        let _slot = SearchSlot::take(&self.searching);
        let matches = if filter.is_empty() {
            self.index.search(&q, k).map_err(native)?
        } else {
            let allowed = self.allowed(filter);
            if allowed.len() <= self.params.exact_below.max(k) {
                return Ok(self.exact_among(&q, k, &allowed));
            }
            let mut bits = vec![0u64; self.items.len().div_ceil(64)];
            for &key in &allowed {
                bits[key as usize / 64] |= 1 << (key % 64);
            }
            let m = self
                .index
                .filtered_search(&q, k, |key| {
                    bits.get(key as usize / 64)
                        .is_some_and(|w| w & (1 << (key % 64)) != 0)
                })
                .map_err(native)?;
            if m.keys.len() < k.min(allowed.len()) {
                // The graph walk ran out of matching nodes: fall back to exact.
                return Ok(self.exact_among(&q, k, &allowed));
            }
            m
        };
        // Rescore the graph's candidates exactly (the graph holds f16).
        let mut hits: Vec<Hit> = matches
            .keys
            .iter()
            .filter_map(|&key| {
                let key = u32::try_from(key).ok()?;
                self.items.get(key as usize).map(|m| Hit {
                    id: m.id.clone(),
                    similarity: dot(&q, self.row(key)),
                })
            })
            .collect();
        hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        Ok(hits)
    }

    /// Exact top-k over `keys` by scoring their f32 rows.
    fn exact_among(&self, q: &[f32], k: usize, keys: &[u32]) -> Vec<Hit> {
        let mut scored: Vec<(f32, u32)> = keys
            .iter()
            .map(|&key| (dot(q, self.row(key)), key))
            .collect();
        let k = k.min(scored.len());
        if k < scored.len() {
            scored.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
            scored.truncate(k);
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored
            .into_iter()
            .map(|(s, key)| Hit {
                id: self.items[key as usize].id.clone(),
                similarity: s,
            })
            .collect()
    }

    /// Exact top-k over every item, for measuring recall.
    pub fn exact_search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, IndexError> {
        if query.len() != self.dim {
            return Err(IndexError::Dimension {
                got: query.len(),
                want: self.dim,
            });
        }
        let mut q = query.to_vec();
        normalize(&mut q);
        let all: Vec<u32> = (0..self.items.len() as u32).collect();
        Ok(self.exact_among(&q, k, &all))
    }

    /// Writes the graph, the vectors and the item metadata to `dir`, then a manifest
    /// with their SHA-256, each through a temp file and rename, so a crash mid-save
    /// leaves the previous snapshot intact.
    pub fn save(&self, dir: &Path) -> Result<(), IndexError> {
        let err = |message: String| IndexError::Snapshot {
            path: dir.to_owned(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let mut graph = vec![0u8; self.index.serialized_length()];
        self.index
            .save_to_buffer(&mut graph)
            .map_err(|e| err(e.to_string()))?;
        let vectors: Vec<u8> = self.vectors.iter().flat_map(|x| x.to_le_bytes()).collect();
        let meta = serde_json::to_vec(&SnapshotItems {
            dim: self.dim,
            params: self.params,
            model: self.model.clone(),
            items: self.items.clone(),
        })
        .map_err(|e| err(e.to_string()))?;
        let manifest = Manifest {
            format: 2,
            graph_sha256: hex(&Sha256::digest(&graph)),
            vectors_sha256: hex(&Sha256::digest(&vectors)),
            items_sha256: hex(&Sha256::digest(&meta)),
            count: self.items.len(),
        };
        for (name, bytes) in [
            ("index.usearch", &graph),
            ("vectors.f32", &vectors),
            ("items.json", &meta),
        ] {
            write_atomic(&dir.join(name), bytes).map_err(|e| err(format!("{name}: {e}")))?;
        }
        let manifest = serde_json::to_vec_pretty(&manifest).map_err(|e| err(e.to_string()))?;
        // The manifest goes last: it only ever names files that are fully written.
        write_atomic(&dir.join("manifest.json"), &manifest).map_err(|e| err(e.to_string()))
    }

    /// Loads a snapshot, refusing it when a checksum or count does not match.
    /// The graph keeps the degree and insert depth it was built with; the search
    /// settings (`expansion_search`, `exact_below`) are `params`', the replica's
    /// configuration now: a snapshot must not pin an operator's later change (a
    /// restart over an unchanged catalog loads the snapshot and never rebuilds).
    pub fn load(dir: &Path, params: IndexParams) -> Result<Self, IndexError> {
        let err = |message: String| IndexError::Snapshot {
            path: dir.to_owned(),
            message,
        };
        let read =
            |name: &str| std::fs::read(dir.join(name)).map_err(|e| err(format!("{name}: {e}")));
        let manifest: Manifest = serde_json::from_slice(&read("manifest.json")?)
            .map_err(|e| err(format!("manifest.json: {e}")))?;
        if manifest.format != 2 {
            return Err(err(format!(
                "unsupported snapshot format {}",
                manifest.format
            )));
        }
        let graph = read("index.usearch")?;
        let vectors = read("vectors.f32")?;
        let meta = read("items.json")?;
        for (name, bytes, want) in [
            ("index.usearch", &graph, &manifest.graph_sha256),
            ("vectors.f32", &vectors, &manifest.vectors_sha256),
            ("items.json", &meta, &manifest.items_sha256),
        ] {
            if &hex(&Sha256::digest(bytes)) != want {
                return Err(err(format!(
                    "{name} checksum mismatch (corrupt or partial)"
                )));
            }
        }
        let mut items: SnapshotItems =
            serde_json::from_slice(&meta).map_err(|e| err(format!("items.json: {e}")))?;
        items.params.expansion_search = params.expansion_search;
        items.params.exact_below = params.exact_below;
        let index = Index::new(&options(items.dim, &items.params)).map_err(native)?;
        index
            .load_from_buffer(&graph)
            .map_err(|e| err(e.to_string()))?;
        index
            .reserve_capacity_and_threads(index.size().max(1), SEARCH_THREADS)
            .map_err(native)?;
        let n = items.items.len();
        if index.size() != n || manifest.count != n || vectors.len() != n * items.dim * 4 {
            return Err(err(format!(
                "graph has {} vectors, metadata {n} items, matrix {} bytes",
                index.size(),
                vectors.len()
            )));
        }
        let vectors: Vec<f32> = vectors
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let keys = items
            .items
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.clone(), i as u32))
            .collect();
        Ok(Self::assemble(index, vectors, items, keys))
    }
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    graph_sha256: String,
    vectors_sha256: String,
    items_sha256: String,
    count: usize,
}

#[derive(Serialize, Deserialize)]
struct SnapshotItems {
    dim: usize,
    params: IndexParams,
    model: String,
    items: Vec<ItemMeta>,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four accumulators let the compiler vectorise without reassociating floats.
    let mut acc = [0f32; 4];
    let chunks = a.len() / 4;
    for i in 0..chunks {
        for j in 0..4 {
            acc[j] += a[i * 4 + j] * b[i * 4 + j];
        }
    }
    let tail: f32 = a[chunks * 4..]
        .iter()
        .zip(&b[chunks * 4..])
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

fn normalize(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random clustered vectors (xorshift), like real
    /// embeddings: items cluster by topic.
    fn vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed.max(1);
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        let centers: Vec<Vec<f32>> = (0..64)
            .map(|_| (0..dim).map(|_| next()).collect())
            .collect();
        (0..n)
            .map(|i| {
                let c = &centers[i % centers.len()];
                c.iter().map(|x| x + 0.6 * next()).collect()
            })
            .collect()
    }

    fn meta(i: usize) -> ItemMeta {
        ItemMeta {
            id: format!("item-{i}"),
            category: normalize_category(if i.is_multiple_of(100) {
                "Home > Kitchen > Pans"
            } else {
                "Electronics > Audio"
            }),
            brand: if i.is_multiple_of(7) {
                "acme".into()
            } else {
                "other".into()
            },
            price: Some((i % 500) as f64),
            text_hash: 0,
        }
    }

    fn build(n: usize, dim: usize) -> VectorIndex {
        build_with(n, dim, IndexParams::default())
    }

    fn build_with(n: usize, dim: usize, params: IndexParams) -> VectorIndex {
        let entries = vectors(n, dim, 7)
            .into_iter()
            .enumerate()
            .map(|(i, v)| (meta(i), v))
            .collect();
        VectorIndex::build(dim, params, "test", entries).expect("build")
    }

    /// `idx` saved to a new folder (returned, so it lives on) and loaded back.
    fn saved_and_loaded(idx: &VectorIndex) -> (tempfile::TempDir, VectorIndex) {
        let dir = tempfile::tempdir().expect("tempdir");
        idx.save(dir.path()).expect("save");
        let loaded = VectorIndex::load(dir.path(), IndexParams::default()).expect("load");
        (dir, loaded)
    }

    #[test]
    fn many_concurrent_searches_all_answer() {
        // More searches at once than cores (and than usearch's reserved contexts
        // before): every one answers instead of "Reserve capacity ahead of searches!".
        let idx = build(2_000, 16);
        let (_dir, loaded) = saved_and_loaded(&idx);
        for index in [&idx, &loaded] {
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..48)
                    .map(|t| {
                        s.spawn(move || {
                            let q = vectors(1, 16, 1000 + t).remove(0);
                            (0..20).all(|_| {
                                index
                                    .search(&q, 10, &Filter::default())
                                    .is_ok_and(|h| h.len() == 10)
                            })
                        })
                    })
                    .collect();
                assert!(workers.into_iter().all(|w| w.join().expect("thread")));
            });
        }
    }

    #[test]
    fn selective_filters_stay_exact() {
        let idx = build(5_000, 32);
        let q = vectors(1, 32, 99).remove(0);
        // 1% of items are pans: exact search among them.
        let f = Filter {
            category_prefix: "home > kitchen".into(),
            ..Filter::default()
        };
        let hits = idx.search(&q, 10, &f).expect("search");
        assert_eq!(hits.len(), 10);
        let all_pans: Vec<Hit> = {
            let mut q2 = q.clone();
            normalize(&mut q2);
            let keys: Vec<u32> = (0..5_000u32).filter(|k| k.is_multiple_of(100)).collect();
            idx.exact_among(&q2, 10, &keys)
        };
        assert_eq!(hits, all_pans);
        // Price and brand together.
        let f = Filter {
            min_price: Some(10.0),
            max_price: Some(20.0),
            brands: vec!["acme".into()],
            ..Filter::default()
        };
        let hits = idx.search(&q, 50, &f).expect("search");
        assert!(!hits.is_empty());
        for h in &hits {
            let i: usize = h.id.trim_start_matches("item-").parse().expect("id");
            assert!(meta(i).passes(&f), "{} violates the filter", h.id);
        }
    }

    #[test]
    fn graph_filtered_path_respects_filters() {
        // exact_below 0 forces the HNSW predicate path even for broad filters.
        let params = IndexParams {
            exact_below: 0,
            ..IndexParams::default()
        };
        let idx = build_with(5_000, 32, params);
        let f = Filter {
            brands: vec!["other".into()],
            max_price: Some(250.0),
            ..Filter::default()
        };
        for q in vectors(20, 32, 3) {
            let hits = idx.search(&q, 10, &f).expect("search");
            assert_eq!(hits.len(), 10);
            for h in &hits {
                let i: usize = h.id.trim_start_matches("item-").parse().expect("id");
                assert!(meta(i).passes(&f), "{} violates the filter", h.id);
            }
            assert!(
                hits.windows(2).all(|w| w[0].similarity >= w[1].similarity),
                "best first"
            );
        }
    }

    #[test]
    fn snapshot_round_trips_and_refuses_corruption() {
        let idx = build(1_000, 16);
        let (dir, back) = saved_and_loaded(&idx);
        let q = vectors(1, 16, 5).remove(0);
        assert_eq!(
            back.search(&q, 5, &Filter::default()).expect("search"),
            idx.search(&q, 5, &Filter::default()).expect("search")
        );
        // Flip one bit in the graph: refused with a clear reason.
        let path = dir.path().join("index.usearch");
        let mut bytes = std::fs::read(&path).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&path, bytes).expect("write");
        let err = VectorIndex::load(dir.path(), IndexParams::default()).expect_err("corrupt");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn a_loaded_snapshot_searches_with_the_configured_settings() {
        // Built with one search depth, restarted with another: the graph keeps its
        // degree, the search follows the configuration (a snapshot used to pin it).
        let built = IndexParams {
            connectivity: 8,
            expansion_search: 16,
            exact_below: 5,
            ..IndexParams::default()
        };
        let idx = build_with(300, 16, built);
        let dir = tempfile::tempdir().expect("tempdir");
        idx.save(dir.path()).expect("save");
        let now = IndexParams {
            expansion_search: 300,
            exact_below: 50,
            ..IndexParams::default()
        };
        let back = VectorIndex::load(dir.path(), now).expect("load");
        let p = back.params();
        assert_eq!((p.connectivity, p.expansion_add), (8, built.expansion_add));
        assert_eq!((p.expansion_search, p.exact_below), (300, 50));
        assert_eq!(back.index.expansion_search(), 300);
        assert_eq!(back.index.connectivity(), 8);
    }

    #[test]
    fn recall_at_10_against_exact_search() {
        let idx = build(5_000, 384);
        let queries = vectors(100, 384, 1234);
        let mut found = 0usize;
        for q in &queries {
            let approx: Vec<String> = idx
                .search(q, 10, &Filter::default())
                .expect("search")
                .into_iter()
                .map(|h| h.id)
                .collect();
            let exact = idx.exact_search(q, 10).expect("exact");
            found += exact.iter().filter(|h| approx.contains(&h.id)).count();
        }
        let recall = found as f64 / (queries.len() * 10) as f64;
        eprintln!("recall@10 over 5000 clustered 384-d vectors: {recall}");
        assert!(recall >= 0.95, "recall@10 = {recall}");
    }

    #[test]
    fn wrong_dimension_is_an_error() {
        let idx = build(10, 8);
        assert!(matches!(
            idx.search(&[0.0; 3], 1, &Filter::default()),
            Err(IndexError::Dimension { got: 3, want: 8 })
        ));
    }
}
