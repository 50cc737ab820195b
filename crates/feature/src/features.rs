//! The ranker's input contract: a named, versioned feature schema and the code that
//! fills its matrix for (user, query, candidates).
//!
//! Change a column's meaning, order or count => bump [`SCHEMA_VERSION`]; rankers are
//! trained against one version and refused by the ranking service on any other.
//! Missing values are the documented defaults (0), never NaN.

use std::collections::{HashMap, HashSet};

use rankmesh_common::filters::normalize_category;

use crate::domain::{EventKind, Item, UserProfile};
use crate::lexical::QueryScores;
use crate::text;

pub const SCHEMA_NAME: &str = "rankmesh.ltr";
pub const SCHEMA_VERSION: u32 = 2;

/// Column names in matrix order.
pub const COLUMNS: &[&str] = &[
    // query-item: lexical scores
    "bm25",
    "bm25_trigram",
    // query-item: how much of the query the title holds
    "title_overlap",
    "title_idf_overlap",
    "title_fuzzy_overlap",
    "title_fuzzy_idf_overlap",
    "query_missed_idf",
    "title_precision",
    "title_bigram_overlap",
    "title_trigram_dice",
    "head_in_title",
    "head_position",
    "first_match_position",
    "title_lead_in_query",
    "query_in_title",
    "number_match",
    "number_conflict",
    "category_overlap",
    "brand_in_query",
    // query and item shape
    "query_tokens",
    "query_idf",
    "query_has_number",
    "title_tokens_log",
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
    // relative to the request's best candidate (see RELATIVE)
    "bm25_relative",
    "bm25_trigram_relative",
    "title_fuzzy_idf_gap",
];

/// Analyzed tokens (see [`text::tokens`]): what every text feature compares.
pub fn tokens(text: &str) -> Vec<String> {
    text::tokens(text)
}

fn overlap_of(query: &HashSet<String>, text: &str) -> f32 {
    if query.is_empty() {
        return 0.0;
    }
    let analyzed = analyzed(text);
    query
        .iter()
        .filter(|t| analyzed.tokens.contains(*t))
        .count() as f32
        / query.len() as f32
}

/// A catalog text as the features read it: its tokens and their trigrams.
#[derive(Debug)]
struct Analyzed {
    tokens: Vec<String>,
    grams: HashSet<String>,
}

/// Analyzed texts kept between requests: every Search analyzes a few hundred
/// candidate titles, and catalog texts rarely change (keyed by the text itself, so
/// an edited title is analyzed afresh). Cleared when full.
static ANALYZED: std::sync::LazyLock<std::sync::Mutex<HashMap<String, std::sync::Arc<Analyzed>>>> =
    std::sync::LazyLock::new(Default::default);
/// Texts kept in [`ANALYZED`] (a 100k-item catalog's titles fit).
const ANALYZED_CAPACITY: usize = 200_000;

fn analyzed(text: &str) -> std::sync::Arc<Analyzed> {
    let lock = || {
        ANALYZED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(a) = lock().get(text) {
        return std::sync::Arc::clone(a);
    }
    let tokens = tokens(text);
    let a = std::sync::Arc::new(Analyzed {
        grams: text::trigrams(&tokens).into_iter().collect(),
        tokens,
    });
    let mut cache = lock();
    if cache.len() >= ANALYZED_CAPACITY {
        cache.clear();
    }
    cache.insert(text.to_owned(), std::sync::Arc::clone(&a));
    a
}

fn top_level(category: &str) -> &str {
    category.split(" > ").next().unwrap_or("")
}

/// A number in a query or title and the unit written after it, if any.
fn sizes(tokens: &[String]) -> Vec<(&str, Option<&str>)> {
    tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| text::is_number(t) && !t.chars().any(char::is_alphabetic))
        .map(|(i, t)| {
            let unit = tokens
                .get(i + 1)
                .map(String::as_str)
                .filter(|u| text::is_unit(u));
            (t.as_str(), unit)
        })
        .collect()
}

/// What the query says, computed once per request.
struct QueryText {
    /// Distinct content tokens (no stopwords), in query order.
    content: Vec<String>,
    set: HashSet<String>,
    bigrams: HashSet<(String, String)>,
    grams: HashSet<String>,
    /// The product word: the last content token that is not a number or unit
    /// ("cordless drill" -> "drill").
    head: Option<String>,
    joined: String,
    all: Vec<String>,
}

impl QueryText {
    fn new(query: &str) -> Self {
        let all = tokens(query);
        let mut content: Vec<String> = Vec::new();
        for t in &all {
            if !text::is_stopword(t) && !content.contains(t) {
                content.push(t.clone());
            }
        }
        let set: HashSet<String> = content.iter().cloned().collect();
        let words: Vec<&String> = all.iter().filter(|t| !text::is_stopword(t)).collect();
        let bigrams = words
            .windows(2)
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect();
        let head = content
            .iter()
            .rev()
            .find(|t| !text::is_number(t) && !text::is_unit(t) && t.len() > 1)
            .cloned();
        Self {
            grams: text::trigrams(&content).into_iter().collect(),
            joined: padded(&words),
            content,
            set,
            bigrams,
            head,
            all,
        }
    }
}

/// How a title matches the query.
struct TitleMatch {
    overlap: f32,
    idf_overlap: f32,
    fuzzy: f32,
    fuzzy_idf: f32,
    missed_idf: f32,
    precision: f32,
    bigram: f32,
    dice: f32,
    head: f32,
    head_position: f32,
    first_match_position: f32,
    lead: f32,
    phrase: f32,
    number_match: f32,
    conflict: f32,
}

/// A query word meets a title word within a typo or as a prefix ("drils",
/// "refrig").
fn fuzzy_match(t: &str, title: &[String]) -> bool {
    t.len() >= 4
        && !text::is_number(t)
        && title
            .iter()
            .any(|w| w.starts_with(t) || text::within_edits(t, w, if t.len() >= 8 { 2 } else { 1 }))
}

/// Where `pos` (of `len`) is, as (pos + 1) / len: 0 means absent.
fn position(pos: Option<usize>, len: usize) -> f32 {
    pos.map_or(0.0, |p| (p + 1) as f32 / len.max(1) as f32)
}

fn title_features(q: &QueryText, idf: &HashMap<String, f32>, analyzed: &Analyzed) -> TitleMatch {
    let title = analyzed.tokens.as_slice();
    let words: HashSet<&String> = title.iter().collect();
    let n = q.content.len().max(1) as f32;
    let idf_of = |t: &String| idf.get(t).copied().unwrap_or(1.0);
    let idf_total: f32 = q.content.iter().map(idf_of).sum();
    let share = |part: f32| {
        if idf_total > 0.0 {
            part / idf_total
        } else {
            0.0
        }
    };
    let exact: Vec<&String> = q.content.iter().filter(|t| words.contains(t)).collect();
    let fuzzy: Vec<&String> = q
        .content
        .iter()
        .filter(|t| words.contains(t) || fuzzy_match(t, title))
        .collect();
    let fuzzy_idf: f32 = fuzzy.iter().map(|t| idf_of(t)).sum();
    let title_content: Vec<&String> = title.iter().filter(|t| !text::is_stopword(t)).collect();
    let precision = if title_content.is_empty() {
        0.0
    } else {
        title_content.iter().filter(|t| q.set.contains(**t)).count() as f32
            / title_content.len() as f32
    };
    let title_bigrams: HashSet<(&str, &str)> = title_content
        .windows(2)
        .map(|w| (w[0].as_str(), w[1].as_str()))
        .collect();
    let bigram = if q.bigrams.is_empty() {
        0.0
    } else {
        q.bigrams
            .iter()
            .filter(|(a, b)| title_bigrams.contains(&(a.as_str(), b.as_str())))
            .count() as f32
            / q.bigrams.len() as f32
    };
    let grams = &analyzed.grams;
    let dice = if q.grams.is_empty() || grams.is_empty() {
        0.0
    } else {
        2.0 * q.grams.intersection(grams).count() as f32 / (q.grams.len() + grams.len()) as f32
    };
    let head_at = q
        .head
        .as_ref()
        .and_then(|h| title.iter().position(|w| w == h));
    let first_at = title.iter().position(|w| q.set.contains(w));
    let lead = title
        .iter()
        .find(|t| !text::is_stopword(t))
        .is_some_and(|t| q.set.contains(t));
    let title_joined = padded(&title_content);
    let phrase = q.content.len() >= 2 && title_joined.contains(&q.joined);
    let (number_match, conflict) = size_match(&q.all, title);
    TitleMatch {
        overlap: exact.len() as f32 / n,
        idf_overlap: share(exact.iter().map(|t| idf_of(t)).sum()),
        fuzzy: fuzzy.len() as f32 / n,
        fuzzy_idf: share(fuzzy_idf),
        missed_idf: idf_total - fuzzy_idf,
        precision,
        bigram,
        dice,
        head: f32::from(u8::from(head_at.is_some())),
        head_position: position(head_at, title.len()),
        first_match_position: position(first_at, title.len()),
        lead: f32::from(u8::from(lead)),
        phrase: f32::from(u8::from(phrase)),
        number_match,
        conflict,
    }
}

/// Sizes: the share of the query's numbers the title has, and 1 when a size the
/// query names has a unit the title gives with other numbers only ("8 ft" against
/// "6 ft").
fn size_match(query: &[String], title: &[String]) -> (f32, f32) {
    let qs = sizes(query);
    let ts = sizes(title);
    if qs.is_empty() {
        return (0.0, 0.0);
    }
    let title_numbers: HashSet<&str> = ts.iter().map(|(n, _)| *n).collect();
    let found = qs.iter().filter(|(n, _)| title_numbers.contains(n)).count();
    let conflict = qs.iter().any(|(n, unit)| {
        unit.is_some_and(|u| {
            ts.iter().any(|(_, tu)| *tu == Some(u)) && !ts.contains(&(*n, Some(u)))
        })
    });
    (
        found as f32 / qs.len() as f32,
        f32::from(u8::from(conflict)),
    )
}

/// What a user's profile says about any item, worked out once per request.
struct UserSignals<'a> {
    profile: Option<&'a UserProfile>,
    /// Affinity per normalised category.
    affinity: HashMap<String, f64>,
    brand_total: f64,
    /// Per recent item: viewed, carted, bought.
    seen: HashMap<&'a str, [bool; 3]>,
    /// ln(1 + the user's event count).
    events_log: f32,
}

impl<'a> UserSignals<'a> {
    fn new(profile: Option<&'a UserProfile>) -> Self {
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
        Self {
            profile,
            affinity,
            brand_total,
            seen,
            events_log,
        }
    }

    /// The user columns of one item's row, in column order: category, top-level
    /// category and brand affinity; viewed, carted, bought; the user's activity.
    fn of(&self, item: &Item, category: &str, brand: &str) -> [f32; 7] {
        let top = top_level(category);
        let flags = self.seen.get(item.id.as_str()).copied().unwrap_or_default();
        let top_affinity: f64 = self
            .affinity
            .iter()
            .filter(|(c, _)| top_level(c) == top && !top.is_empty())
            .map(|(_, a)| a)
            .sum();
        let brand_affinity = match self.profile {
            Some(p) if self.brand_total > 0.0 => {
                p.brand_weight.get(brand).copied().unwrap_or(0.0) / self.brand_total
            }
            _ => 0.0,
        };
        [
            self.affinity.get(category).copied().unwrap_or(0.0) as f32,
            top_affinity as f32,
            brand_affinity as f32,
            f32::from(u8::from(flags[0])),
            f32::from(u8::from(flags[1])),
            f32::from(u8::from(flags[2])),
            self.events_log,
        ]
    }
}

/// Builds one row per item, in order.
pub fn matrix(
    query: &str,
    items: &[Item],
    scores: &QueryScores,
    popularity: &[f64],
    profile: Option<&UserProfile>,
) -> Vec<f32> {
    let qt = QueryText::new(query);
    // Every query token (stopwords too), from the one analysis of the query.
    let q: HashSet<String> = qt.all.iter().cloned().collect();
    let query_lc = format!(" {} ", qt.all.join(" "));
    let user = UserSignals::new(profile);
    let query_has_number = qt.all.iter().any(|t| text::is_number(t));
    let query_idf: f32 = qt
        .content
        .iter()
        .map(|t| scores.idf.get(t).copied().unwrap_or(1.0))
        .sum();

    let mut out = Vec::with_capacity(items.len() * COLUMNS.len());
    for (item, pop) in items.iter().zip(popularity) {
        let category = normalize_category(&item.category);
        let brand = item.brand.to_lowercase();
        let brand_tokens = &analyzed(&brand).tokens;
        let brand_in_query =
            !brand_tokens.is_empty() && query_lc.contains(&format!(" {} ", brand_tokens.join(" ")));
        let u = user.of(item, &category, &brand);
        let title = analyzed(&item.title);
        let m = title_features(&qt, &scores.idf, &title);
        let row = [
            scores.words.get(&item.id).copied().unwrap_or(0.0),
            scores.grams.get(&item.id).copied().unwrap_or(0.0),
            m.overlap,
            m.idf_overlap,
            m.fuzzy,
            m.fuzzy_idf,
            m.missed_idf,
            m.precision,
            m.bigram,
            m.dice,
            m.head,
            m.head_position,
            m.first_match_position,
            m.lead,
            m.phrase,
            m.number_match,
            m.conflict,
            overlap_of(&q, &item.category),
            f32::from(u8::from(brand_in_query)),
            qt.content.len() as f32,
            query_idf,
            f32::from(u8::from(query_has_number)),
            (title.tokens.len() as f32).ln_1p(),
            item.price.map_or(0.0, |p| p.ln_1p() as f32),
            f32::from(u8::from(item.price.is_some())),
            item.rating.unwrap_or(0.0) as f32,
            (item.review_count as f64).ln_1p() as f32,
            pop.max(0.0).ln_1p() as f32,
            u[0],
            u[1],
            u[2],
            u[3],
            u[4],
            u[5],
            u[6],
        ];
        debug_assert_eq!(row.len() + RELATIVE.len(), COLUMNS.len());
        out.extend(row.iter().map(|v| if v.is_finite() { *v } else { 0.0 }));
        out.extend(std::iter::repeat_n(0.0, RELATIVE.len()));
    }
    relative_to_best(&mut out);
    out
}

/// Columns restated against the best candidate of the same request (value / max
/// for scores, value - max for shares), appended in this order: a score's scale
/// differs from query to query, its place among the query's candidates does not.
const RELATIVE: &[(&str, &str, bool)] = &[
    ("bm25_relative", "bm25", true),
    ("bm25_trigram_relative", "bm25_trigram", true),
    ("title_fuzzy_idf_gap", "title_fuzzy_idf_overlap", false),
];

fn relative_to_best(out: &mut [f32]) {
    let width = COLUMNS.len();
    let col = |name: &str| COLUMNS.iter().position(|c| *c == name).unwrap_or(0);
    let first = width - RELATIVE.len();
    for (k, (_, source, ratio)) in RELATIVE.iter().enumerate() {
        let src = col(source);
        let best = out
            .chunks(width)
            .map(|r| r[src])
            .fold(f32::NEG_INFINITY, f32::max);
        for row in out.chunks_mut(width) {
            row[first + k] = match (*ratio, best > 0.0) {
                (true, true) => row[src] / best,
                (true, false) => 0.0,
                (false, _) if best.is_finite() => row[src] - best,
                (false, _) => 0.0,
            };
        }
    }
}

/// Tokens joined by single spaces with one space either side, so a phrase
/// (`" cordless drill "`) matches at token boundaries only.
fn padded(tokens: &[&String]) -> String {
    let tokens: Vec<&str> = tokens.iter().map(|t| t.as_str()).collect();
    format!(" {} ", tokens.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Event, EventKind};

    fn item(id: &str, title: &str, category: &str, brand: &str) -> Item {
        Item {
            rating: Some(4.0),
            review_count: 10,
            ..crate::domain::test_item(id, title, category, brand, 19.0)
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
        let scores = QueryScores {
            words: [("a".to_owned(), 3.5)].into(),
            ..QueryScores::default()
        };
        let m = matrix(
            "stride running shoe",
            &items,
            &scores,
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
        let cold = matrix("pan", &items, &QueryScores::default(), &[0.0, 0.0], None);
        assert_eq!(cold[n + col("user_events_log")], 0.0);
        assert_eq!(cold[n + col("title_overlap")], 1.0);
    }

    #[test]
    fn title_features_read_sizes_typos_and_phrases() {
        let items = [
            item("a", "Everbilt 2 in. x 4 in. x 8 ft. Stud", "", ""),
            item("b", "Everbilt 2 in. x 4 in. x 10 ft. Stud", "", ""),
            item("c", "Cordless Drill Kit", "", ""),
        ];
        let m = matrix(
            "2x4x8 stud",
            &items,
            &QueryScores::default(),
            &[0.0; 3],
            None,
        );
        let n = COLUMNS.len();
        let row = |i: usize| &m[i * n..(i + 1) * n];
        assert_eq!(row(0)[col("number_match")], 1.0, "2, 4 and 8 are all there");
        assert!(row(1)[col("number_match")] < 1.0);
        assert_eq!(row(0)[col("head_in_title")], 1.0);
        assert_eq!(row(2)[col("head_in_title")], 0.0);
        assert_eq!(row(0)[col("query_has_number")], 1.0);
        let m = matrix(
            "8 ft stud",
            &items,
            &QueryScores::default(),
            &[0.0; 3],
            None,
        );
        assert_eq!(m[col("number_conflict")], 0.0);
        assert_eq!(m[n + col("number_conflict")], 1.0, "10 ft is not 8 ft");
        let m = matrix(
            "cordles drill",
            &items,
            &QueryScores::default(),
            &[0.0; 3],
            None,
        );
        let c = &m[2 * n..];
        assert_eq!(c[col("title_overlap")], 0.5);
        assert_eq!(c[col("title_fuzzy_overlap")], 1.0, "one typo away");
        assert_eq!(c[col("title_bigram_overlap")], 0.0);
        let m = matrix(
            "cordless drill",
            &items,
            &QueryScores::default(),
            &[0.0; 3],
            None,
        );
        assert_eq!(m[2 * n + col("title_bigram_overlap")], 1.0);
        assert_eq!(m[2 * n + col("query_in_title")], 1.0);
        assert_eq!(m[2 * n + col("title_lead_in_query")], 1.0);
        assert!(m.iter().all(|v| v.is_finite()));
        let scores = QueryScores {
            words: [("a".to_owned(), 2.0), ("b".to_owned(), 4.0)].into(),
            ..QueryScores::default()
        };
        let m = matrix("stud", &items, &scores, &[0.0; 3], None);
        assert_eq!(m[col("bm25_relative")], 0.5);
        assert_eq!(m[n + col("bm25_relative")], 1.0);
        assert_eq!(m[2 * n + col("bm25_relative")], 0.0);
        assert_eq!(
            m[2 * n + col("title_fuzzy_idf_gap")],
            -1.0,
            "no match vs a full one"
        );
    }
}
