//! The item-vector index: HNSW (usearch) over unit-length item embeddings, with
//! category, brand and price filters, snapshotted to disk with checksums.
//!
//! Why usearch: it is actively maintained (Unum), fast (SIMD kernels), serialises its
//! graph so a restart neither re-embeds nor rebuilds, and supports predicate-filtered
//! search. Why not only that predicate: when a filter matches few items, HNSW
//! traversal through mostly-rejected nodes loses recall and can return fewer than k.
//! So a filter's matches are counted first; when they are few (`exact_below`), the
//! search is exact over just those items, which is both correct and cheap.

use std::collections::HashMap;
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
    /// A filter matching at most this many items is searched exactly.
    pub exact_below: usize,
}

impl Default for IndexParams {
    fn default() -> Self {
        Self {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 96,
            exact_below: 5_000,
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
}

/// A validated filter (see the proto's `Filters`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Normalised category prefix; empty matches everything.
    pub category_prefix: String,
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
    /// Lower-cased brands; empty matches everything.
    pub brands: Vec<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.category_prefix.is_empty()
            && self.min_price.is_none()
            && self.max_price.is_none()
            && self.brands.is_empty()
    }

    pub fn matches(&self, item: &ItemMeta) -> bool {
        if !self.category_prefix.is_empty() {
            let c = &item.category;
            // Whole segments only: "home > kitchen" matches "home > kitchen > pans"
            // but not "home > kitchenware".
            let ok = c == &self.category_prefix
                || (c.starts_with(&self.category_prefix)
                    && c[self.category_prefix.len()..].starts_with(" > "));
            if !ok {
                return false;
            }
        }
        if self.min_price.is_some() || self.max_price.is_some() {
            let Some(p) = item.price else { return false };
            if self.min_price.is_some_and(|m| p < m) || self.max_price.is_some_and(|m| p > m) {
                return false;
            }
        }
        self.brands.is_empty() || self.brands.iter().any(|b| b == &item.brand)
    }
}

/// "Home>Kitchen >  Pans" -> "home > kitchen > pans".
pub fn normalize_category(path: &str) -> String {
    path.split('>')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" > ")
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
pub struct VectorIndex {
    index: Index,
    items: Vec<ItemMeta>,
    dim: usize,
    params: IndexParams,
    /// Free-form provenance kept with the snapshot (encoder name, version, variant).
    model: String,
    /// Item id -> key (position in `items`).
    keys: HashMap<String, u64>,
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
        quantization: ScalarKind::F32,
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
        let index = Index::new(&options(dim, &params)).map_err(native)?;
        index.reserve(entries.len().max(1)).map_err(native)?;
        let mut items = Vec::with_capacity(entries.len());
        let mut keys = HashMap::with_capacity(entries.len());
        for (meta, mut v) in entries {
            if v.len() != dim {
                return Err(IndexError::Dimension {
                    got: v.len(),
                    want: dim,
                });
            }
            if keys.insert(meta.id.clone(), items.len() as u64).is_some() {
                return Err(IndexError::Duplicate(meta.id));
            }
            normalize(&mut v);
            index.add(items.len() as u64, &v).map_err(native)?;
            items.push(meta);
        }
        Ok(Self {
            index,
            items,
            dim,
            params,
            model: model.to_owned(),
            keys,
        })
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

    /// The stored (normalised) vector and metadata of an item.
    pub fn get(&self, id: &str) -> Option<(ItemMeta, Vec<f32>)> {
        let key = *self.keys.get(id)?;
        let mut buf = vec![0f32; self.dim];
        self.index.get(key, &mut buf).ok()?;
        Some((self.items[key as usize].clone(), buf))
    }

    /// Every item's metadata, in key order.
    pub fn items(&self) -> &[ItemMeta] {
        &self.items
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
        let matches = if filter.is_empty() {
            self.index.search(&q, k).map_err(native)?
        } else {
            let allowed: Vec<u64> = (0..self.items.len() as u64)
                .filter(|&key| filter.matches(&self.items[key as usize]))
                .collect();
            if allowed.len() <= self.params.exact_below.max(k) {
                return self.exact_among(&q, k, &allowed);
            }
            let m = self
                .index
                .filtered_search(&q, k, |key| filter.matches(&self.items[key as usize]))
                .map_err(native)?;
            if m.keys.len() < k.min(allowed.len()) {
                // The graph walk ran out of matching nodes: fall back to exact.
                return self.exact_among(&q, k, &allowed);
            }
            m
        };
        Ok(matches
            .keys
            .iter()
            .zip(&matches.distances)
            .filter_map(|(key, dist)| {
                self.items.get(*key as usize).map(|m| Hit {
                    id: m.id.clone(),
                    // usearch's IP distance is 1 - dot.
                    similarity: 1.0 - dist,
                })
            })
            .collect())
    }

    /// Exact top-k over `keys` (sorted ascending).
    fn exact_among(&self, q: &[f32], k: usize, keys: &[u64]) -> Result<Vec<Hit>, IndexError> {
        let mut buf = vec![0f32; self.dim];
        let mut scored: Vec<(f32, u64)> = Vec::with_capacity(keys.len());
        for &key in keys {
            self.index.get(key, &mut buf).map_err(native)?;
            scored.push((dot(q, &buf), key));
        }
        let k = k.min(scored.len());
        if k < scored.len() {
            scored.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
            scored.truncate(k);
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(scored
            .into_iter()
            .map(|(s, key)| Hit {
                id: self.items[key as usize].id.clone(),
                similarity: s,
            })
            .collect())
    }

    /// Exact top-k by brute force, for measuring recall.
    pub fn exact_search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, IndexError> {
        let mut q = query.to_vec();
        normalize(&mut q);
        let all: Vec<u64> = (0..self.items.len() as u64).collect();
        self.exact_among(&q, k, &all)
    }

    /// Writes `<dir>/index.usearch`, `<dir>/items.json` and a manifest with their
    /// SHA-256, each through a temp file and rename, so a crash mid-save leaves the
    /// previous snapshot intact.
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
        let meta = serde_json::to_vec(&SnapshotItems {
            dim: self.dim,
            params: self.params,
            model: self.model.clone(),
            items: self.items.clone(),
        })
        .map_err(|e| err(e.to_string()))?;
        let manifest = Manifest {
            format: 1,
            graph_sha256: hex(&Sha256::digest(&graph)),
            items_sha256: hex(&Sha256::digest(&meta)),
            count: self.items.len(),
        };
        write_atomic(&dir.join("index.usearch"), &graph).map_err(|e| err(e.to_string()))?;
        write_atomic(&dir.join("items.json"), &meta).map_err(|e| err(e.to_string()))?;
        let manifest = serde_json::to_vec_pretty(&manifest).map_err(|e| err(e.to_string()))?;
        // The manifest goes last: it only ever names files that are fully written.
        write_atomic(&dir.join("manifest.json"), &manifest).map_err(|e| err(e.to_string()))
    }

    /// Loads a snapshot, refusing it when a checksum or count does not match.
    pub fn load(dir: &Path) -> Result<Self, IndexError> {
        let err = |message: String| IndexError::Snapshot {
            path: dir.to_owned(),
            message,
        };
        let read =
            |name: &str| std::fs::read(dir.join(name)).map_err(|e| err(format!("{name}: {e}")));
        let manifest: Manifest = serde_json::from_slice(&read("manifest.json")?)
            .map_err(|e| err(format!("manifest.json: {e}")))?;
        if manifest.format != 1 {
            return Err(err(format!("unknown snapshot format {}", manifest.format)));
        }
        let graph = read("index.usearch")?;
        let meta = read("items.json")?;
        if hex(&Sha256::digest(&graph)) != manifest.graph_sha256 {
            return Err(err(
                "index.usearch checksum mismatch (corrupt or partial)".into()
            ));
        }
        if hex(&Sha256::digest(&meta)) != manifest.items_sha256 {
            return Err(err(
                "items.json checksum mismatch (corrupt or partial)".into()
            ));
        }
        let items: SnapshotItems =
            serde_json::from_slice(&meta).map_err(|e| err(format!("items.json: {e}")))?;
        let index = Index::new(&options(items.dim, &items.params)).map_err(native)?;
        index
            .load_from_buffer(&graph)
            .map_err(|e| err(e.to_string()))?;
        if index.size() != items.items.len() || manifest.count != items.items.len() {
            return Err(err(format!(
                "graph has {} vectors, metadata {} items",
                index.size(),
                items.items.len()
            )));
        }
        let keys = items
            .items
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.clone(), i as u64))
            .collect();
        Ok(Self {
            index,
            items: items.items,
            dim: items.dim,
            params: items.params,
            model: items.model,
            keys,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    graph_sha256: String,
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
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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
        }
    }

    fn build(n: usize, dim: usize) -> VectorIndex {
        let entries = vectors(n, dim, 7)
            .into_iter()
            .enumerate()
            .map(|(i, v)| (meta(i), v))
            .collect();
        VectorIndex::build(dim, IndexParams::default(), "test", entries).expect("build")
    }

    #[test]
    fn category_filter_matches_whole_segments() {
        let f = Filter {
            category_prefix: normalize_category("home>kitchen"),
            ..Filter::default()
        };
        let item = |c: &str| ItemMeta {
            id: "x".into(),
            category: normalize_category(c),
            brand: String::new(),
            price: None,
        };
        assert!(f.matches(&item("Home > Kitchen > Pans")));
        assert!(f.matches(&item("home > kitchen")));
        assert!(!f.matches(&item("Home > Kitchenware")));
        assert!(!f.matches(&item("Garden")));
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
            let keys: Vec<u64> = (0..5_000u64).filter(|k| k.is_multiple_of(100)).collect();
            idx.exact_among(&q2, 10, &keys).expect("exact")
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
            assert!(f.matches(&meta(i)), "{} violates the filter", h.id);
        }
    }

    #[test]
    fn snapshot_round_trips_and_refuses_corruption() {
        let idx = build(1_000, 16);
        let dir = tempfile::tempdir().expect("tempdir");
        idx.save(dir.path()).expect("save");
        let back = VectorIndex::load(dir.path()).expect("load");
        let q = vectors(1, 16, 5).remove(0);
        assert_eq!(
            back.search(&q, 5, &Filter::default()).expect("search"),
            idx.search(&q, 5, &Filter::default()).expect("search")
        );
        // Flip one byte in the graph: refused with a clear reason.
        let path = dir.path().join("index.usearch");
        let mut bytes = std::fs::read(&path).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&path, bytes).expect("write");
        let err = VectorIndex::load(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
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
