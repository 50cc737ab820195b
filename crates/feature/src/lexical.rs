//! The lexical index: BM25 (tantivy) over item title, description, brand and
//! category, held in memory and rebuilt from the store at startup, updated on import.
//!
//! Filters are exact: every item indexes each prefix of its normalised category path
//! (`home`, `home > kitchen`, ...), so a category filter is one term lookup; brands
//! are keyword terms; price is a fast-field range. Filters contribute no score.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Mutex;

use rankmesh_common::filters::{Filter, category_prefixes, normalize_category};
use tantivy::collector::TopDocs;
use tantivy::query::{
    BooleanQuery, ConstScoreQuery, Occur, Query, QueryParser, RangeQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term, doc};

use crate::model::Item;

/// Memory for the index writer's buffer.
const WRITER_HEAP: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("lexical index: {0}")]
pub struct LexicalError(String);

fn err(e: impl std::fmt::Display) -> LexicalError {
    LexicalError(e.to_string())
}

#[derive(Debug, Clone, Copy)]
struct Fields {
    id: Field,
    title: Field,
    description: Field,
    brand: Field,
    category: Field,
    category_path: Field,
    brand_key: Field,
    price: Field,
}

/// The index; all methods block (call from blocking threads).
pub struct LexicalIndex {
    reader: IndexReader,
    /// One writer per index (tantivy's rule); imports are serialised through it.
    writer: Mutex<IndexWriter>,
    fields: Fields,
    parser: QueryParser,
}

impl std::fmt::Debug for LexicalIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LexicalIndex").finish_non_exhaustive()
    }
}

impl LexicalIndex {
    pub fn new() -> Result<Self, LexicalError> {
        let mut sb = Schema::builder();
        // English stemming: "headphone" finds "headphones".
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let fields = Fields {
            id: sb.add_text_field("id", STRING | STORED),
            title: sb.add_text_field("title", text.clone()),
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
        let mut parser = QueryParser::for_index(
            &index,
            vec![
                fields.title,
                fields.description,
                fields.brand,
                fields.category,
            ],
        );
        // Title words say most about what an item is; descriptions ramble.
        parser.set_field_boost(fields.title, 2.0);
        parser.set_field_boost(fields.brand, 1.5);
        parser.set_field_boost(fields.description, 0.5);
        Ok(Self {
            reader,
            writer: Mutex::new(writer),
            fields,
            parser,
        })
    }

    /// Adds or replaces `items`; with `replace`, everything else is removed.
    pub fn upsert(&self, items: &[Item], replace: bool) -> Result<(), LexicalError> {
        let f = self.fields;
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if replace {
            writer.delete_all_documents().map_err(err)?;
        }
        for item in items {
            if !replace {
                writer.delete_term(Term::from_field_text(f.id, &item.id));
            }
            let category = normalize_category(&item.category);
            let mut d = doc!(
                f.id => item.id.as_str(),
                f.title => item.title.as_str(),
                f.description => item.description.as_str(),
                f.brand => item.brand.as_str(),
                f.category => item.category.as_str(),
                f.brand_key => item.brand.to_lowercase(),
            );
            for p in category_prefixes(&category) {
                d.add_text(f.category_path, p);
            }
            if let Some(p) = item.price {
                d.add_f64(f.price, p);
            }
            writer.add_document(d).map_err(err)?;
        }
        writer.commit().map_err(err)?;
        self.reader.reload().map_err(err)
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

    /// The text query, restricted by `restrict` (which adds no score).
    fn scored(&self, query: &str, restrict: Option<Box<dyn Query>>) -> Box<dyn Query> {
        // Lenient: storefront input is not query syntax ("5\" pan", "a:b").
        let (text, _ignored) = self.parser.parse_query_lenient(query);
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

    /// BM25 score of `query` for each of `ids` (absent: no matching term).
    pub fn scores_for(
        &self,
        query: &str,
        ids: &[String],
    ) -> Result<HashMap<String, f32>, LexicalError> {
        if query.trim().is_empty() || ids.is_empty() {
            return Ok(HashMap::new());
        }
        let only = TermSetQuery::new(
            ids.iter()
                .map(|id| Term::from_field_text(self.fields.id, id)),
        );
        let q = self.scored(query, Some(Box::new(only)));
        Ok(self.collect(q.as_ref(), ids.len())?.into_iter().collect())
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

    fn item(id: &str, title: &str, category: &str, brand: &str, price: f64) -> Item {
        Item {
            id: id.into(),
            title: title.into(),
            description: String::new(),
            category: category.into(),
            brand: brand.into(),
            price: Some(price),
            rating: None,
            review_count: 0,
            attributes: Default::default(),
        }
    }

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

    #[test]
    fn scores_for_candidates_and_odd_input() {
        let idx = index();
        let s = idx
            .scores_for("wireless headphones", &["h1".into(), "p1".into()])
            .expect("scores");
        assert!(s["h1"] > 0.0);
        assert!(!s.contains_key("p1"));
        // Query syntax characters are text, not errors.
        assert!(idx.search("5\" pan: \"lid", 5, &Filter::default()).is_ok());
        // Upsert replaces by id.
        idx.upsert(&[item("h1", "Garden hose", "Garden", "X", 10.0)], false)
            .expect("upsert");
        assert_eq!(idx.len(), 4);
        assert!(idx.search("hose", 5, &Filter::default()).expect("search")[0].0 == "h1");
    }
}
