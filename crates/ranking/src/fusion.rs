//! Fusing the retrieval lists into one candidate list, and the ranker columns that
//! describe how each candidate was retrieved.
//!
//! The ranker's input is the feature service's matrix with [`RETRIEVAL_COLUMNS`]
//! appended: only ranking knows a candidate's dense similarity and its place in
//! each list. Search and Featurize build rows through [`append_retrieval`], so a
//! ranker trained on Featurize rows scores exactly what Search feeds it.

use std::collections::HashMap;

/// Reciprocal-rank fusion constant of the `rrf` ranker column (the usual 60). The
/// column is part of the ranker's input schema, so it never follows [`Fusion`]: a
/// ranker trained on it sees the same values whatever order the lists are fused in.
const RRF_K: f32 = 60.0;

/// The default [`Fusion`]: rank offset 20, lexical list weighted 2. Measured with
/// `scripts/fusion_sweep.py` (which reads these two constants) and `meshctl eval`:
/// on the Home Depot dev queries hybrid NDCG@10 0.3955 against 0.3562 for classic
/// RRF (60, equal weights) with the stock encoder, 0.4159 against 0.4026 with one
/// fine-tuned on the store's judgments; on the generated demo store 0.8372 against
/// 0.8260. The lexical list is the stronger one in product search, and a small k
/// trusts each list's first places.
const DEFAULT_K: f32 = 20.0;
const DEFAULT_LEXICAL_WEIGHT: f32 = 2.0;

/// How the lists are fused into the order a search answers in when no ranker
/// scores it (none loaded, or the ranker stage degraded): each list adds
/// `weight / (k + rank + 1)`. The default (`DEFAULT_K`, `DEFAULT_LEXICAL_WEIGHT`)
/// was measured on real shopper queries; which setting suits a store best depends
/// on how its dense and lexical lists compare (`scripts/fusion_sweep.py` measures
/// it on a ranker training run's rows).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fusion {
    /// The rank offset k: smaller favours each list's first places.
    pub k: f32,
    /// Weight of the lexical list; the dense list and any other weigh 1.
    pub lexical_weight: f32,
}

impl Default for Fusion {
    fn default() -> Self {
        Self {
            k: DEFAULT_K,
            lexical_weight: DEFAULT_LEXICAL_WEIGHT,
        }
    }
}

impl Fusion {
    /// `None` when valid, else the offending key and why.
    pub fn invalid(&self) -> Option<(&'static str, f32, &'static str)> {
        [
            ("search.fusion.k", self.k),
            ("search.fusion.lexical_weight", self.lexical_weight),
        ]
        .into_iter()
        .find(|(_, value)| !(value.is_finite() && *value >= 0.0))
        .map(|(key, value)| (key, value, "must be a finite number >= 0"))
    }

    fn weight(&self, source: &str) -> f32 {
        if source == "lexical" {
            self.lexical_weight
        } else {
            1.0
        }
    }
}

/// Columns ranking appends to every feature row, in order.
pub const RETRIEVAL_COLUMNS: &[&str] = &[
    "dense_similarity",
    "dense_gap",
    "dense_found",
    "dense_rank_log",
    "lexical_ratio",
    "lexical_found",
    "lexical_rank_log",
    "rrf",
];

/// One retrieval source's answer: ids best first, with the source's score.
#[derive(Debug, Clone, Default)]
pub struct Retrieved {
    pub source: &'static str,
    pub items: Vec<(String, f32)>,
}

/// Where a candidate stood in one list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placed {
    pub rank: usize,
    pub score: f32,
}

/// A candidate on its way through the stages.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    pub id: String,
    /// Reciprocal-rank fusion of the retrieval lists (k = 60, equal weights): the
    /// ranker's `rrf` column.
    pub rrf: f32,
    /// The fused score in [`Fusion`]'s setting: the order without a ranker.
    pub fused: f32,
    pub score: Option<f32>,
    pub sources: Vec<&'static str>,
    pub dense: Option<Placed>,
    pub lexical: Option<Placed>,
}

/// What the lists say as a whole: the best score and depth of each, so a
/// candidate's score can be read relative to its query's.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListStats {
    dense_top: f32,
    dense_floor: f32,
    dense_len: usize,
    lexical_top: f32,
    lexical_len: usize,
}

/// Fuses the lists (reciprocal-rank fusion as `fusion` says), best first; ties by id.
pub fn fuse(lists: &[Retrieved], fusion: &Fusion) -> (Vec<Candidate>, ListStats) {
    let mut by_id: HashMap<&str, Candidate> = HashMap::new();
    let mut stats = ListStats::default();
    for list in lists {
        for (rank, (id, score)) in list.items.iter().enumerate() {
            let c = by_id.entry(id.as_str()).or_insert_with(|| Candidate {
                id: id.clone(),
                ..Candidate::default()
            });
            c.rrf += 1.0 / (RRF_K + rank as f32 + 1.0);
            c.fused += fusion.weight(list.source) / (fusion.k + rank as f32 + 1.0);
            if !c.sources.contains(&list.source) {
                c.sources.push(list.source);
            }
            let placed = Some(Placed {
                rank,
                score: *score,
            });
            match list.source {
                "dense" if c.dense.is_none() => c.dense = placed,
                "lexical" if c.lexical.is_none() => c.lexical = placed,
                _ => {}
            }
        }
        let top = list.items.first().map_or(0.0, |(_, s)| *s);
        let floor = list.items.last().map_or(0.0, |(_, s)| *s);
        match list.source {
            "dense" => {
                stats.dense_top = top;
                stats.dense_floor = floor;
                stats.dense_len = list.items.len();
            }
            "lexical" => {
                stats.lexical_top = top;
                stats.lexical_len = list.items.len();
            }
            _ => {}
        }
    }
    let mut all: Vec<Candidate> = by_id.into_values().collect();
    all.sort_by(|a, b| b.fused.total_cmp(&a.fused).then_with(|| a.id.cmp(&b.id)));
    (all, stats)
}

/// The retrieval columns of one candidate. An item a list did not return is given
/// that list's floor (it ranked below everything returned).
pub fn retrieval_row(c: &Candidate, stats: &ListStats) -> [f32; 8] {
    let rank_log = |p: Option<Placed>, len: usize| (p.map_or(len, |p| p.rank) as f32).ln_1p();
    let dense = c.dense.map_or(stats.dense_floor, |p| p.score);
    let lexical_ratio = match c.lexical {
        Some(p) if stats.lexical_top > 0.0 => p.score / stats.lexical_top,
        _ => 0.0,
    };
    [
        dense,
        stats.dense_top - dense,
        f32::from(u8::from(c.dense.is_some())),
        rank_log(c.dense, stats.dense_len),
        lexical_ratio,
        f32::from(u8::from(c.lexical.is_some())),
        rank_log(c.lexical, stats.lexical_len),
        c.rrf,
    ]
}

/// Rows for `candidates`: each one's feature-service row (looked up by id in
/// `item_ids`/`values`, `width` wide) followed by its retrieval columns. Candidates
/// without a feature row are dropped (the catalog no longer knows them).
pub fn append_retrieval(
    candidates: &mut Vec<Candidate>,
    stats: &ListStats,
    item_ids: &[String],
    values: &[f32],
    width: usize,
) -> Vec<f32> {
    let position: HashMap<&str, usize> = item_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    candidates.retain(|c| position.contains_key(c.id.as_str()));
    let mut rows = Vec::with_capacity(candidates.len() * (width + RETRIEVAL_COLUMNS.len()));
    for c in candidates.iter() {
        let i = position[c.id.as_str()];
        rows.extend_from_slice(&values[i * width..(i + 1) * width]);
        rows.extend(
            retrieval_row(c, stats)
                .iter()
                .map(|v| if v.is_finite() { *v } else { 0.0 }),
        );
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(source: &'static str, ids: &[(&str, f32)]) -> Retrieved {
        Retrieved {
            source,
            items: ids.iter().map(|(i, s)| ((*i).to_owned(), *s)).collect(),
        }
    }

    #[test]
    fn fusion_rewards_agreement() {
        let (fused, _) = fuse(
            &[
                list("dense", &[("a", 0.9), ("b", 0.8), ("c", 0.7)]),
                list("lexical", &[("c", 12.0), ("d", 6.0)]),
            ],
            &Fusion::default(),
        );
        assert_eq!(fused[0].id, "c", "found by both sources");
        assert_eq!(fused[0].sources, vec!["dense", "lexical"]);
        assert_eq!(fused.len(), 4);
    }

    #[test]
    fn the_setting_orders_but_never_moves_the_rrf_column() {
        let lists = [
            list("dense", &[("a", 0.9), ("b", 0.8)]),
            list("lexical", &[("c", 12.0), ("d", 6.0)]),
        ];
        let ids = |f: &[Candidate]| f.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        let classic = Fusion {
            k: 60.0,
            lexical_weight: 1.0,
        };
        let (even, _) = fuse(&lists, &classic);
        assert_eq!(ids(&even), ["a", "c", "b", "d"], "first places tie: by id");
        // The default weighs the lexical list 2: its two ids come first.
        let (weighted, _) = fuse(&lists, &Fusion::default());
        assert_eq!(ids(&weighted), ["c", "d", "a", "b"]);
        let rrf = |f: &[Candidate], id: &str| f.iter().find(|c| c.id == id).map(|c| c.rrf);
        for id in ["a", "b", "c", "d"] {
            assert_eq!(
                rrf(&even, id),
                rrf(&weighted, id),
                "{id}: the ranker's column"
            );
        }
        assert!(Fusion::default().invalid().is_none());
        let bad = Fusion {
            lexical_weight: f32::NAN,
            ..Fusion::default()
        };
        assert_eq!(
            bad.invalid().map(|(key, ..)| key),
            Some("search.fusion.lexical_weight")
        );
    }

    #[test]
    fn retrieval_columns_place_each_candidate() {
        let (mut fused, stats) = fuse(
            &[
                list("dense", &[("a", 0.9), ("b", 0.5)]),
                list("lexical", &[("b", 10.0), ("d", 5.0)]),
            ],
            &Fusion::default(),
        );
        let ids: Vec<String> = ["a", "b", "d"].map(String::from).to_vec();
        let rows = append_retrieval(&mut fused, &stats, &ids, &[1.0, 2.0, 3.0], 1);
        let w = 1 + RETRIEVAL_COLUMNS.len();
        assert_eq!(rows.len(), 3 * w);
        let row = |id: &str| {
            let i = fused.iter().position(|c| c.id == id).expect("kept");
            &rows[i * w..(i + 1) * w]
        };
        assert_eq!(row("a")[0], 1.0, "the feature row comes first");
        assert_eq!(&row("a")[1..4], &[0.9, 0.0, 1.0]);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert_eq!(row("b")[5], 1.0, "top lexical score");
        assert_eq!(row("d")[5], 0.5);
        // d was not retrieved densely: the dense floor, and not found.
        assert!(close(row("d")[1], 0.5) && close(row("d")[2], 0.4) && row("d")[3] == 0.0);
        assert_eq!(row("d")[4], 2f32.ln_1p(), "ranked below the whole list");
    }

    mod properties {
        //! What fusion promises whatever the lists hold: every id once, best first
        //! with ties by id, and each id's score the sum of its reciprocal ranks.
        use super::super::*;
        use proptest::prelude::*;

        /// Up to three lists of up to 40 ids drawn from a small alphabet, so ids
        /// repeat across lists (and sometimes within one, which fusion must tolerate).
        fn lists() -> impl Strategy<Value = Vec<Retrieved>> {
            let list = |source: &'static str| {
                prop::collection::vec(("[a-h]{1,2}", -10.0f32..10.0), 0..40)
                    .prop_map(move |items| Retrieved { source, items })
            };
            (list("dense"), list("lexical"), list("popular")).prop_map(|(a, b, c)| vec![a, b, c])
        }

        proptest! {
            #[test]
            fn every_id_once_best_first(lists in lists()) {
                let (fused, _) = fuse(&lists, &Fusion::default());
                let mut want: Vec<&str> = lists
                    .iter()
                    .flat_map(|l| l.items.iter().map(|(id, _)| id.as_str()))
                    .collect();
                want.sort_unstable();
                want.dedup();
                let mut got: Vec<&str> = fused.iter().map(|c| c.id.as_str()).collect();
                got.sort_unstable();
                prop_assert_eq!(&got, &want, "every retrieved id, once");
                for w in fused.windows(2) {
                    prop_assert!(
                        w[0].fused > w[1].fused || (w[0].fused == w[1].fused && w[0].id < w[1].id),
                        "{} ({}) before {} ({})", w[0].id, w[0].fused, w[1].id, w[1].fused
                    );
                }
            }

            #[test]
            fn scores_are_summed_reciprocal_ranks(lists in lists()) {
                let (fused, stats) = fuse(&lists, &Fusion::default());
                for c in &fused {
                    let want: f32 = lists
                        .iter()
                        .flat_map(|l| l.items.iter().enumerate())
                        .filter(|(_, (id, _))| *id == c.id)
                        .map(|(rank, _)| 1.0 / (RRF_K + rank as f32 + 1.0))
                        .sum();
                    prop_assert!((c.rrf - want).abs() < 1e-5, "{}: {} vs {}", c.id, c.rrf, want);
                    // Its place in a list is its first one there.
                    for (place, source) in [(c.dense, "dense"), (c.lexical, "lexical")] {
                        let first = lists
                            .iter()
                            .filter(|l| l.source == source)
                            .find_map(|l| l.items.iter().position(|(id, _)| *id == c.id));
                        prop_assert_eq!(place.map(|p| p.rank), first);
                    }
                    // Every retrieval column is a finite number.
                    prop_assert!(retrieval_row(c, &stats).iter().all(|v| v.is_finite()));
                }
            }
        }
    }
}
