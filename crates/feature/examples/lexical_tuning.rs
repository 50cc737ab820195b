//! Tunes the lexical analyzer on real judgments, in process: indexes a catalog
//! (JSONL, `id` and `title` at least) and reports, per title-trigram weight, BM25's
//! NDCG@10 (gain = grade) and recall@100 / recall@200 (relevant = grade >= 2) on
//! the judged queries.
//!
//! ```sh
//! gunzip -c ../shared/data/homedepot/catalog.jsonl.gz > /tmp/catalog.jsonl
//! meshctl ranker train ... writes OUT/judgments-dev.csv (or use any judgments CSV)
//! cargo run --release -p rankmesh-feature --example lexical_tuning -- \
//!     /tmp/catalog.jsonl OUT/judgments-dev.csv 0,0.1,0.25,0.5
//! ```

use std::collections::{BTreeMap, HashMap};

use rankmesh_common::filters::Filter;
use rankmesh_feature::domain::Item;
use rankmesh_feature::lexical::LexicalIndex;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, catalog, judgments, boosts] = args.as_slice() else {
        return Err("usage: lexical_tuning CATALOG.jsonl JUDGMENTS.csv BOOST,BOOST,...".into());
    };
    let items: Vec<Item> = std::fs::read_to_string(catalog)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut labels: BTreeMap<String, HashMap<String, f32>> = BTreeMap::new();
    for rec in csv::Reader::from_path(judgments)?.records() {
        let rec = rec?;
        labels
            .entry(rec[0].to_owned())
            .or_default()
            .insert(rec[1].to_owned(), rec[2].parse()?);
    }
    println!("{} items, {} queries", items.len(), labels.len());
    println!(
        "{:>10} {:>9} {:>11} {:>11}",
        "gram_boost", "NDCG@10", "recall@100", "recall@200"
    );
    for boost in boosts.split(',') {
        let boost: f32 = boost.parse()?;
        let index = LexicalIndex::with_gram_boost(boost)?;
        index.upsert(&items, true)?;
        let (mut ndcg, mut r100, mut r200, mut nq, mut nr) = (0.0, 0.0, 0.0, 0usize, 0usize);
        for (q, l) in &labels {
            let hits: Vec<String> = index
                .search(q, 200, &Filter::default())?
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            if let Some(n) = rankmesh_common::relevance::ndcg(&hits, l, 10) {
                ndcg += n;
                nq += 1;
            }
            let rel: Vec<&String> = l
                .iter()
                .filter(|(_, g)| **g >= 2.0)
                .map(|(id, _)| id)
                .collect();
            if !rel.is_empty() {
                let found = |k: usize| {
                    rel.iter()
                        .filter(|id| hits.iter().take(k).any(|h| h == **id))
                        .count() as f64
                        / rel.len() as f64
                };
                r100 += found(100);
                r200 += found(200);
                nr += 1;
            }
        }
        println!(
            "{boost:>10} {:>9.4} {:>11.4} {:>11.4}",
            ndcg / nq.max(1) as f64,
            r100 / nr.max(1) as f64,
            r200 / nr.max(1) as f64
        );
    }
    Ok(())
}
