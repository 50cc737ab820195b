//! The ranker's input contract: a named, versioned feature schema and the code that
//! fills its matrix for (user, query, candidates).
//!
//! Change a column's meaning, order or count => bump [`SCHEMA_VERSION`]; rankers are
//! trained against one version and refused by the ranking service on any other.
//! Missing values are the documented defaults (0), never NaN.

use std::collections::{HashMap, HashSet};

use rankmesh_common::filters::normalize_category;

use crate::model::{EventKind, Item, UserProfile};

pub const SCHEMA_NAME: &str = "rankmesh.ltr";
pub const SCHEMA_VERSION: u32 = 1;

/// Column names in matrix order.
pub const COLUMNS: &[&str] = &[
    // query-item
    "bm25",
    "title_overlap",
    "category_overlap",
    "brand_in_query",
    // item
    "price_log",
    "has_price",
    "rating",
    "review_count_log",
    "popularity_log",
    // user-item
    "user_category_affinity",
    "user_top_category_affinity",
    "user_brand_affinity",
    "user_viewed",
    "user_carted",
    "user_bought",
    // user
    "user_events_log",
];

/// Lower-cased alphanumeric tokens with a light plural strip, so "pans" meets "pan".
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| {
            let t = t.to_lowercase();
            match t.strip_suffix('s') {
                Some(stem) if stem.len() >= 3 && !stem.ends_with('s') => stem.to_owned(),
                _ => t,
            }
        })
        .collect()
}

fn overlap(query: &HashSet<String>, text: &str) -> f32 {
    if query.is_empty() {
        return 0.0;
    }
    let words: HashSet<String> = tokens(text).into_iter().collect();
    query.iter().filter(|t| words.contains(*t)).count() as f32 / query.len() as f32
}

fn top_level(category: &str) -> &str {
    category.split(" > ").next().unwrap_or("")
}

/// Builds one row per item, in order.
pub fn matrix(
    query: &str,
    items: &[Item],
    bm25: &HashMap<String, f32>,
    popularity: &[f64],
    profile: Option<&UserProfile>,
) -> Vec<f32> {
    let q: HashSet<String> = tokens(query).into_iter().collect();
    let query_lc = format!(" {} ", tokens(query).join(" "));
    let affinity: HashMap<String, f64> = profile
        .map(|p| {
            p.category_affinity()
                .into_iter()
                .map(|(c, a)| (normalize_category(&c), a))
                .collect()
        })
        .unwrap_or_default();
    let brand_total: f64 = profile.map_or(0.0, |p| p.brand_weight.values().sum());
    let mut seen: HashMap<&str, [bool; 3]> = HashMap::new();
    if let Some(p) = profile {
        for r in &p.recent {
            let flags = seen.entry(r.item_id.as_str()).or_default();
            match r.kind {
                EventKind::View => flags[0] = true,
                EventKind::Cart => flags[1] = true,
                EventKind::Purchase => flags[2] = true,
            }
        }
    }
    let events_log = profile.map_or(0.0, |p| (p.events as f64).ln_1p()) as f32;

    let mut out = Vec::with_capacity(items.len() * COLUMNS.len());
    for (item, pop) in items.iter().zip(popularity) {
        let category = normalize_category(&item.category);
        let top = top_level(&category);
        let brand = item.brand.to_lowercase();
        let brand_tokens = tokens(&brand);
        let brand_in_query =
            !brand_tokens.is_empty() && query_lc.contains(&format!(" {} ", brand_tokens.join(" ")));
        let flags = seen.get(item.id.as_str()).copied().unwrap_or_default();
        let top_affinity: f64 = affinity
            .iter()
            .filter(|(c, _)| top_level(c) == top && !top.is_empty())
            .map(|(_, a)| a)
            .sum();
        let brand_affinity = match profile {
            Some(p) if brand_total > 0.0 => {
                p.brand_weight.get(&brand).copied().unwrap_or(0.0) / brand_total
            }
            _ => 0.0,
        };
        let row = [
            bm25.get(&item.id).copied().unwrap_or(0.0),
            overlap(&q, &item.title),
            overlap(&q, &item.category),
            f32::from(u8::from(brand_in_query)),
            item.price.map_or(0.0, |p| p.ln_1p() as f32),
            f32::from(u8::from(item.price.is_some())),
            item.rating.unwrap_or(0.0) as f32,
            (item.review_count as f64).ln_1p() as f32,
            pop.max(0.0).ln_1p() as f32,
            affinity.get(&category).copied().unwrap_or(0.0) as f32,
            top_affinity as f32,
            brand_affinity as f32,
            f32::from(u8::from(flags[0])),
            f32::from(u8::from(flags[1])),
            f32::from(u8::from(flags[2])),
            events_log,
        ];
        debug_assert_eq!(row.len(), COLUMNS.len());
        out.extend(row.iter().map(|v| if v.is_finite() { *v } else { 0.0 }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, EventKind};

    fn item(id: &str, title: &str, category: &str, brand: &str) -> Item {
        Item {
            id: id.into(),
            title: title.into(),
            description: String::new(),
            category: category.into(),
            brand: brand.into(),
            price: Some(19.0),
            rating: Some(4.0),
            review_count: 10,
            attributes: Default::default(),
        }
    }

    fn col(name: &str) -> usize {
        COLUMNS.iter().position(|c| *c == name).expect("column")
    }

    #[test]
    fn rows_reflect_query_item_and_user() {
        let items = [
            item(
                "a",
                "Red running shoes",
                "Sports > Footwear > Running",
                "Stride",
            ),
            item("b", "Frying pan", "Home > Kitchen", "Chefline"),
        ];
        let mut profile = UserProfile::default();
        profile.apply(
            &Event {
                event_id: "e".into(),
                user_id: "u".into(),
                item_id: "a".into(),
                kind: EventKind::Purchase,
                timestamp_ms: 1,
            },
            "Sports > Footwear > Running",
            "Stride",
        );
        let bm25: HashMap<String, f32> = [("a".to_owned(), 3.5)].into();
        let m = matrix(
            "stride running shoe",
            &items,
            &bm25,
            &[7.0, 0.0],
            Some(&profile),
        );
        let n = COLUMNS.len();
        assert_eq!(m.len(), 2 * n);
        let (a, b) = (&m[..n], &m[n..]);
        assert_eq!(a[col("bm25")], 3.5);
        assert!(
            (a[col("title_overlap")] - 2.0 / 3.0).abs() < 1e-6,
            "running + shoe of 3 tokens"
        );
        assert_eq!(a[col("brand_in_query")], 1.0);
        assert_eq!(a[col("user_bought")], 1.0);
        assert_eq!(a[col("user_category_affinity")], 1.0);
        assert_eq!(a[col("user_top_category_affinity")], 1.0);
        assert!(a[col("popularity_log")] > 0.0);
        assert_eq!(b[col("bm25")], 0.0);
        assert_eq!(b[col("user_category_affinity")], 0.0);
        assert!(m.iter().all(|v| v.is_finite()));
        // Cold start: user columns are zero.
        let cold = matrix("pan", &items, &HashMap::new(), &[0.0, 0.0], None);
        assert_eq!(cold[n + col("user_events_log")], 0.0);
        assert_eq!(cold[n + col("title_overlap")], 1.0);
    }

    #[test]
    fn tokens_strip_plurals_lightly() {
        assert_eq!(tokens("Pans, GLASSES & bus"), vec!["pan", "glasse", "bus"]);
    }
}
