//! The lexical index: BM25 (tantivy) over item title, description, brand and
//! category, plus character trigrams of the title for typo tolerance, held in
//! memory and rebuilt from the store at startup, updated on import.
//!
//! Text is cut by [`crate::text`] on both sides (index and query), so sizes, units
//! and model numbers meet however they are written; fields store the analyzed
//! tokens space-separated and tantivy only splits on whitespace.
//!
//! Filters are exact: every item indexes each prefix of its normalised category path
//! (`home`, `home > kitchen`, ...), so a category filter is one term lookup; brands
//! are keyword terms; price is a fast-field range. Filters contribute no score.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::Mutex;

use rankmesh_common::filters::{Filter, category_prefixes, normalize_category};
use tantivy::collector::TopDocs;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, EmptyQuery, EnableScoring, Occur, Query,
    RangeQuery, Scorer, TermQuery, TermSetQuery,
};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::{
    DocId, DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TERMINATED,
    TantivyDocument, Term, doc,
};

use crate::domain::Item;
use crate::text;

/// Memory for the index writer's buffer.
const WRITER_HEAP: usize = 64 * 1024 * 1024;

/// Field weights of the word query. Title words say most about what an item is;
/// descriptions ramble. Tuned on the Home Depot dev split (see the README).
const TITLE_BOOST: f32 = 2.0;
const BRAND_BOOST: f32 = 1.5;
const CATEGORY_BOOST: f32 = 1.0;
const DESCRIPTION_BOOST: f32 = 0.5;
/// Weight of the title-trigram query against the word query: enough to bring in
/// a misspelt match, too little to outrank a real one (tuned on the Home Depot dev
/// split with `cargo run --release -p rankmesh-feature --example lexical_tuning`).
pub const GRAM_BOOST: f32 = 0.25;

#[derive(Debug, thiserror::Error)]
#[error("lexical index: {0}")]
pub struct LexicalError(String);

/// Why [`LexicalIndex::update`] failed, and so what state things are in.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    /// Reading the rows, or committing them at their source, failed: the index is
    /// as it was.
    #[error("{0}")]
    Source(E),
    /// The index refused the rows before the source committed: the index is as it
    /// was.
    #[error(transparent)]
    Index(LexicalError),
    /// The source committed but the index's own commit failed: the index is stale
    /// and must be rebuilt from the source.
    #[error("after the rows were committed: {0}")]
    Stale(LexicalError),
}

fn err(e: impl std::fmt::Display) -> LexicalError {
    LexicalError(e.to_string())
}

#[derive(Debug, Clone, Copy)]
struct Fields {
    id: Field,
    title: Field,
    title_grams: Field,
    description: Field,
    brand: Field,
    category: Field,
    category_path: Field,
    brand_key: Field,
    price: Field,
}

/// BM25 scores of one query for a set of items, by part, and what the catalog says
/// about the query's words.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct QueryScores {
    /// Word query (all text fields); absent: no word matched.
    pub words: HashMap<String, f32>,
    /// Title-trigram query; absent: no trigram matched.
    pub grams: HashMap<String, f32>,
    /// Inverse document frequency in titles of each distinct query token.
    pub idf: HashMap<String, f32>,
}

/// The index; all methods block (call from blocking threads).
pub struct LexicalIndex {
    reader: IndexReader,
    /// One writer per index (tantivy's rule); imports are serialised through it.
    writer: Mutex<IndexWriter>,
    fields: Fields,
    gram_boost: f32,
}

impl std::fmt::Debug for LexicalIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LexicalIndex").finish_non_exhaustive()
    }
}

fn joined(tokens: &[String]) -> String {
    tokens.join(" ")
}

impl LexicalIndex {
    pub fn new() -> Result<Self, LexicalError> {
        Self::with_gram_boost(GRAM_BOOST)
    }

    /// An index whose queries weigh title trigrams by `gram_boost` (0: words only).
    pub fn with_gram_boost(gram_boost: f32) -> Result<Self, LexicalError> {
        let mut sb = Schema::builder();
        // Pre-analyzed by crate::text: tantivy only splits on whitespace.
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("whitespace")
                .set_index_option(IndexRecordOption::WithFreqs),
        );
        let fields = Fields {
            id: sb.add_text_field("id", STRING | STORED),
            title: sb.add_text_field("title", text.clone()),
            title_grams: sb.add_text_field("title_grams", text.clone()),
            description: sb.add_text_field("description", text.clone()),
            brand: sb.add_text_field("brand", text.clone()),
            category: sb.add_text_field("category", text),
            category_path: sb.add_text_field("category_path", STRING),
            brand_key: sb.add_text_field("brand_key", STRING),
            price: sb.add_f64_field("price", INDEXED | FAST),
        };
        let index = Index::create_in_ram(sb.build());
        let writer = index.writer(WRITER_HEAP).map_err(err)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(err)?;
        Ok(Self {
            reader,
            writer: Mutex::new(writer),
            fields,
            gram_boost,
        })
    }

    /// Adds or replaces `items`; with `replace`, everything else is removed.
    pub fn upsert(&self, items: &[Item], replace: bool) -> Result<(), LexicalError> {
        let mut pages = [items.to_vec()].into_iter();
        self.update(
            replace,
            || Ok::<_, LexicalError>(pages.next().unwrap_or_default()),
            || Ok(()),
        )
        .map_err(|e| match e {
            UpdateError::Source(e) | UpdateError::Index(e) | UpdateError::Stale(e) => e,
        })
    }

    /// Adds or replaces the items `next_page` yields (a page at a time, until an
    /// empty one); with `replace`, everything else is removed. Then `commit_source`
    /// commits the same rows where they come from, and only if it succeeds does the
    /// index commit: the index holds one page at a time (and its writer's bounded
    /// heap), never the whole catalog, and an import whose store commit fails leaves
    /// the index as it was.
    pub fn update<E>(
        &self,
        replace: bool,
        mut next_page: impl FnMut() -> Result<Vec<Item>, E>,
        commit_source: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), UpdateError<E>> {
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let staged = (|| {
            if replace {
                writer
                    .delete_all_documents()
                    .map_err(|e| UpdateError::Index(err(e)))?;
            }
            loop {
                let page = next_page().map_err(UpdateError::Source)?;
                if page.is_empty() {
                    return commit_source().map_err(UpdateError::Source);
                }
                for item in &page {
                    if !replace {
                        writer.delete_term(Term::from_field_text(self.fields.id, &item.id));
                    }
                    writer
                        .add_document(self.document(item))
                        .map_err(|e| UpdateError::Index(err(e)))?;
                }
            }
        })();
        if let Err(e) = staged {
            // Nothing committed anywhere: drop what was added.
            if let Err(r) = writer.rollback() {
                tracing::error!(error = %r, "lexical index rollback failed");
            }
            return Err(e);
        }
        writer.commit().map_err(|e| UpdateError::Stale(err(e)))?;
        self.reader.reload().map_err(|e| UpdateError::Stale(err(e)))
    }

    fn document(&self, item: &Item) -> TantivyDocument {
        let f = self.fields;
        let category = normalize_category(&item.category);
        let title = text::tokens(&item.title);
        let mut d = doc!(
            f.id => item.id.as_str(),
            f.title => joined(&title),
            f.title_grams => joined(&text::trigrams(&title)),
            f.description => joined(&text::tokens(&item.description)),
            f.brand => joined(&text::tokens(&item.brand)),
            f.category => joined(&text::tokens(&item.category)),
            f.brand_key => item.brand.to_lowercase(),
        );
        for p in category_prefixes(&category) {
            d.add_text(f.category_path, p);
        }
        if let Some(p) = item.price {
            d.add_f64(f.price, p);
        }
        d
    }

    fn filter_query(&self, filter: &Filter) -> Option<Box<dyn Query>> {
        let f = self.fields;
        let mut parts: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if !filter.category_prefix.is_empty() {
            parts.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(f.category_path, &filter.category_prefix),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        if !filter.brands.is_empty() {
            parts.push((
                Occur::Must,
                Box::new(TermSetQuery::new(
                    filter
                        .brands
                        .iter()
                        .map(|b| Term::from_field_text(f.brand_key, b)),
                )),
            ));
        }
        if filter.min_price.is_some() || filter.max_price.is_some() {
            let bound = |v: Option<f64>| {
                v.map_or(Bound::Unbounded, |p| {
                    Bound::Included(Term::from_field_f64(f.price, p))
                })
            };
            parts.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    bound(filter.min_price),
                    bound(filter.max_price),
                )),
            ));
        }
        (!parts.is_empty()).then(|| Box::new(BooleanQuery::new(parts)) as Box<dyn Query>)
    }

    /// A disjunction of `terms`, each BM25-scored and weighted.
    fn any_of(terms: impl IntoIterator<Item = (Term, f32)>) -> Option<Box<dyn Query>> {
        let clauses: Vec<(Occur, Box<dyn Query>)> = terms
            .into_iter()
            .map(|(term, boost)| {
                let q: Box<dyn Query> = Box::new(BoostQuery::new(
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)),
                    boost,
                ));
                (Occur::Should, q)
            })
            .collect();
        (!clauses.is_empty()).then(|| Box::new(BooleanQuery::new(clauses)) as Box<dyn Query>)
    }

    /// The word query over every text field.
    fn words_query(&self, tokens: &[String]) -> Option<Box<dyn Query>> {
        let f = self.fields;
        let distinct: HashSet<&String> = tokens.iter().collect();
        let mut distinct: Vec<&String> = distinct.into_iter().collect();
        distinct.sort();
        Self::any_of(distinct.into_iter().flat_map(|t| {
            [
                (f.title, TITLE_BOOST),
                (f.description, DESCRIPTION_BOOST),
                (f.brand, BRAND_BOOST),
                (f.category, CATEGORY_BOOST),
            ]
            .map(|(field, boost)| (Term::from_field_text(field, t), boost))
        }))
    }

    /// The title-trigram query (typo tolerance).
    fn grams_query(&self, tokens: &[String], boost: f32) -> Option<Box<dyn Query>> {
        let grams: HashSet<String> = text::trigrams(tokens).into_iter().collect();
        let mut grams: Vec<String> = grams.into_iter().collect();
        grams.sort();
        Self::any_of(
            grams
                .iter()
                .map(|g| (Term::from_field_text(self.fields.title_grams, g), boost)),
        )
    }

    /// The text query (words, then trigrams at a lower weight), restricted by
    /// `restrict` (which adds no score). "*" matches every item (cold start).
    fn scored(&self, query: &str, restrict: Option<Box<dyn Query>>) -> Box<dyn Query> {
        let tokens = text::tokens(query);
        let text: Box<dyn Query> = if query.trim() == "*" {
            Box::new(AllQuery)
        } else {
            let parts: Vec<(Occur, Box<dyn Query>)> = [
                self.words_query(&tokens),
                (self.gram_boost > 0.0)
                    .then(|| self.grams_query(&tokens, self.gram_boost))
                    .flatten(),
            ]
            .into_iter()
            .flatten()
            .map(|q| (Occur::Should, q))
            .collect();
            if parts.is_empty() {
                Box::new(EmptyQuery)
            } else {
                Box::new(BooleanQuery::new(parts))
            }
        };
        Self::restricted(text, restrict)
    }

    fn restricted(text: Box<dyn Query>, restrict: Option<Box<dyn Query>>) -> Box<dyn Query> {
        match restrict {
            None => text,
            Some(r) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, text),
                (Occur::Must, Box::new(ConstScoreQuery::new(r, 0.0))),
            ])),
        }
    }

    fn collect(&self, q: &dyn Query, k: usize) -> Result<Vec<(String, f32)>, LexicalError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let top = searcher
            .search(q, &TopDocs::with_limit(k).order_by_score())
            .map_err(err)?;
        top.into_iter()
            .map(|(score, addr)| {
                let d: TantivyDocument = searcher.doc(addr).map_err(err)?;
                let id = d
                    .get_first(self.fields.id)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned();
                Ok((id, score))
            })
            .collect()
    }

    /// BM25 top-k for `query` among items passing `filter`, best first.
    pub fn search(
        &self,
        query: &str,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<(String, f32)>, LexicalError> {
        let q = self.scored(query, self.filter_query(filter));
        self.collect(q.as_ref(), k)
    }

    /// BM25 scores of `query` for each of `ids`, by part (words, trigrams), and the
    /// title idf of the query's tokens.
    ///
    /// Only the candidates are scored: each is found by its id term, and each
    /// part's scorer seeks from one candidate's document to the next, so the cost
    /// follows the candidates, not the query's matches in the whole catalog (and no
    /// id set is compiled into a query on every call). The scores are the ones a
    /// search with the same part query gives those documents.
    pub fn scores_for(&self, query: &str, ids: &[String]) -> Result<QueryScores, LexicalError> {
        let tokens = text::tokens(query);
        if tokens.is_empty() || ids.is_empty() {
            return Ok(QueryScores::default());
        }
        let searcher = self.reader.searcher();
        let located = self.locate(&searcher, ids)?;
        let part = |q: Option<Box<dyn Query>>| match q {
            None => Ok(HashMap::new()),
            Some(q) => Self::score_located(&searcher, q.as_ref(), &located),
        };
        let docs = searcher.num_docs() as f32;
        let mut idf = HashMap::new();
        for t in &tokens {
            if idf.contains_key(t) {
                continue;
            }
            let df = searcher
                .doc_freq(&Term::from_field_text(self.fields.title, t))
                .map_err(err)? as f32;
            // BM25's idf, floored at 0 for words in most titles.
            idf.insert(t.clone(), ((docs - df + 0.5) / (df + 0.5)).ln_1p().max(0.0));
        }
        Ok(QueryScores {
            words: part(self.words_query(&tokens))?,
            grams: part(self.grams_query(&tokens, 1.0))?,
            idf,
        })
    }

    /// Where each of `ids` lives in `searcher`'s view: per segment, its live
    /// documents in ascending order, each with its id. Unknown ids are left out.
    fn locate<'a>(
        &self,
        searcher: &Searcher,
        ids: &'a [String],
    ) -> Result<Vec<Vec<(DocId, &'a str)>>, LexicalError> {
        let mut by_segment = Vec::with_capacity(searcher.segment_readers().len());
        for segment in searcher.segment_readers() {
            let postings = segment.inverted_index(self.fields.id).map_err(err)?;
            let mut docs = Vec::new();
            for id in ids {
                let term = Term::from_field_text(self.fields.id, id);
                let Some(p) = postings
                    .read_postings(&term, IndexRecordOption::Basic)
                    .map_err(err)?
                else {
                    continue;
                };
                // An upsert deletes the old document and adds a new one: one of the
                // id's documents is alive.
                let mut p = p;
                let mut doc = p.doc();
                while doc != TERMINATED && segment.is_deleted(doc) {
                    doc = p.advance();
                }
                if doc != TERMINATED {
                    docs.push((doc, id.as_str()));
                }
            }
            docs.sort_unstable();
            docs.dedup();
            by_segment.push(docs);
        }
        Ok(by_segment)
    }

    /// `query`'s score for each located document it matches, by id.
    fn score_located(
        searcher: &Searcher,
        query: &dyn Query,
        located: &[Vec<(DocId, &str)>],
    ) -> Result<HashMap<String, f32>, LexicalError> {
        let weight = query
            .weight(EnableScoring::enabled_from_searcher(searcher))
            .map_err(err)?;
        let mut out = HashMap::new();
        for (segment, docs) in searcher.segment_readers().iter().zip(located) {
            if docs.is_empty() {
                continue;
            }
            let mut scorer = weight.scorer(segment, 1.0).map_err(err)?;
            for &(doc, id) in docs {
                // Documents ascend, so the scorer only moves forward.
                if scorer.doc() < doc {
                    scorer.seek(doc);
                }
                match scorer.doc() {
                    TERMINATED => break,
                    d if d == doc => {
                        out.insert(id.to_owned(), scorer.score());
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::domain::test_item as item;

    fn index() -> LexicalIndex {
        let idx = LexicalIndex::new().expect("index");
        idx.upsert(
            &[
                item(
                    "h1",
                    "Wireless headphones",
                    "Electronics > Audio",
                    "Sonora",
                    99.0,
                ),
                item(
                    "h2",
                    "Studio headphone",
                    "Electronics > Audio",
                    "Acme",
                    150.0,
                ),
                item("p1", "Frying pan", "Home > Kitchen", "Acme", 30.0),
                item(
                    "p2",
                    "Sauce pan with lid",
                    "Home > Kitchenware",
                    "Chefline",
                    25.0,
                ),
            ],
            true,
        )
        .expect("upsert");
        idx
    }

    fn found(idx: &LexicalIndex, query: &str) -> Vec<String> {
        let mut ids: Vec<String> = idx
            .search(query, 10, &Filter::default())
            .expect("search")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_paged_update_commits_only_with_its_source() {
        let idx = index();
        let pages = || {
            vec![
                vec![item("d1", "Cordless drill", "Tools", "Volt", 80.0)],
                vec![item("s1", "Circular saw", "Tools", "Volt", 120.0)],
            ]
            .into_iter()
        };
        // The source's commit fails: the index is as it was, replace or not.
        for replace in [true, false] {
            let mut p = pages();
            let r = idx.update(
                replace,
                || Ok::<_, String>(p.next().unwrap_or_default()),
                || Err("disk full".to_owned()),
            );
            assert!(
                matches!(&r, Err(UpdateError::Source(m)) if m == "disk full"),
                "{r:?}"
            );
            assert!(found(&idx, "drill").is_empty());
            assert_eq!(found(&idx, "pan"), ["p1", "p2"]);
        }
        // Reading a page fails: the same.
        let mut calls = 0;
        let r = idx.update(
            true,
            || {
                calls += 1;
                match calls {
                    1 => Ok(vec![item("d1", "Cordless drill", "Tools", "Volt", 80.0)]),
                    _ => Err("redis down".to_owned()),
                }
            },
            || Ok(()),
        );
        assert!(matches!(r, Err(UpdateError::Source(_))));
        assert_eq!(found(&idx, "pan"), ["p1", "p2"]);
        // It commits: every page is in, and a replace removed the rest.
        let mut p = pages();
        idx.update(
            true,
            || Ok::<_, String>(p.next().unwrap_or_default()),
            || Ok(()),
        )
        .expect("update");
        assert_eq!(found(&idx, "drill"), ["d1"]);
        assert_eq!(found(&idx, "saw"), ["s1"]);
        assert!(found(&idx, "pan").is_empty());
    }

    #[test]
    fn stemmed_bm25_with_exact_filters() {
        let idx = index();
        let hits = idx
            .search("headphone", 10, &Filter::default())
            .expect("search");
        let ids: Vec<&str> = hits.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        let kitchen = Filter {
            category_prefix: "home > kitchen".into(),
            ..Filter::default()
        };
        let hits = idx.search("pan", 10, &kitchen).expect("search");
        assert_eq!(
            hits.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["p1"],
            "whole segments only"
        );
        let cheap_acme = Filter {
            max_price: Some(100.0),
            brands: vec!["acme".into()],
            ..Filter::default()
        };
        let hits = idx
            .search("pan headphones", 10, &cheap_acme)
            .expect("search");
        assert_eq!(
            hits.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["p1"]
        );
    }

    /// What `scores_for` must agree with: each part's query run over the whole
    /// index, restricted to the candidates (how it was computed before).
    fn searched_parts(idx: &LexicalIndex, query: &str, ids: &[String]) -> QueryScores {
        let tokens = text::tokens(query);
        let part = |q: Option<Box<dyn Query>>| -> HashMap<String, f32> {
            let only: Box<dyn Query> = Box::new(TermSetQuery::new(
                ids.iter()
                    .map(|id| Term::from_field_text(idx.fields.id, id)),
            ));
            q.map(|q| {
                idx.collect(LexicalIndex::restricted(q, Some(only)).as_ref(), ids.len())
                    .expect("search")
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default()
        };
        QueryScores {
            words: part(idx.words_query(&tokens)),
            grams: part(idx.grams_query(&tokens, 1.0)),
            idf: HashMap::new(),
        }
    }

    #[test]
    fn candidate_scores_are_the_searched_scores_across_segments_and_updates() {
        let idx = LexicalIndex::new().expect("index");
        let titles = [
            "wireless headphones",
            "frying pan",
            "garden hose",
            "steel pan lid",
        ];
        // Several commits: several segments, and replaced items leave deleted
        // documents behind.
        for round in 0..4 {
            let items: Vec<Item> = (0..60)
                .map(|i| {
                    item(
                        &format!("i{}", (i * 7 + round * 13) % 150),
                        &format!("{} model {}", titles[(i + round) % titles.len()], i % 9),
                        "Home > Kitchen",
                        "Acme",
                        10.0,
                    )
                })
                .collect();
            idx.upsert(&items, false).expect("upsert");
        }
        let ids: Vec<String> = (0..160).step_by(3).map(|i| format!("i{i}")).collect();
        for query in ["frying pan", "wireles hedphones model 3", "pan lid", "hose"] {
            let got = idx.scores_for(query, &ids).expect("scores");
            let want = searched_parts(&idx, query, &ids);
            assert!(!want.words.is_empty(), "{query}: nothing matched");
            for (name, got, want) in [
                ("words", &got.words, &want.words),
                ("grams", &got.grams, &want.grams),
            ] {
                assert_eq!(got.len(), want.len(), "{query} {name}");
                for (id, w) in want {
                    let g = got[id];
                    assert!(
                        (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                        "{query} {name} {id}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn scores_for_candidates_and_odd_input() {
        let idx = index();
        let s = idx
            .scores_for("wireless headphones", &["h1".into(), "p1".into()])
            .expect("scores");
        assert!(s.words["h1"] > 0.0);
        assert!(!s.words.contains_key("p1"));
        assert!(s.grams["h1"] > 0.0);
        assert!(s.idf["wireless"] > s.idf["headphon"], "{:?}", s.idf);
        // A typo still finds the item through trigrams.
        let hits = idx
            .search("wireles hedphones", 5, &Filter::default())
            .expect("search");
        assert_eq!(hits[0].0, "h1", "{hits:?}");
        // "*" is every item (cold start); no tokens is none.
        assert_eq!(
            idx.search("*", 10, &Filter::default()).expect("all").len(),
            4
        );
        assert!(
            idx.search("...", 10, &Filter::default())
                .expect("none")
                .is_empty()
        );
        // Query syntax characters are text, not errors.
        assert!(idx.search("5\" pan: \"lid", 5, &Filter::default()).is_ok());
        // Upsert replaces by id.
        idx.upsert(&[item("h1", "Garden hose", "Garden", "X", 10.0)], false)
            .expect("upsert");
        assert_eq!(idx.len(), 4);
        assert!(idx.search("hose", 5, &Filter::default()).expect("search")[0].0 == "h1");
    }
}
