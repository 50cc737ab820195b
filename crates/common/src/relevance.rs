//! Ranking-quality measures over graded judgments, shared by `meshctl eval`,
//! ranker training and the tuning examples, so every figure is computed one way.

use std::collections::HashMap;

/// NDCG@k with linear gain (gain = grade); the ideal ranking is every judged item
/// by grade. `None` when the query has no positive grade.
pub fn ndcg(ranked: &[String], labels: &HashMap<String, f32>, k: usize) -> Option<f64> {
    let disc = |i: usize| 1.0 / ((i + 2) as f64).log2();
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, id)| f64::from(labels.get(id).copied().unwrap_or(0.0)) * disc(i))
        .sum();
    let mut ideal: Vec<f32> = labels.values().copied().collect();
    ideal.sort_unstable_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, g)| f64::from(*g) * disc(i))
        .sum();
    (idcg > 0.0).then(|| dcg / idcg)
}
