//! The demo catalog (`deploy/demo/catalog.jsonl`, import format): twenty hand-written
//! items with clear topics, for tests that need real items.

use std::path::PathBuf;

/// Path of the demo catalog in the repository.
pub fn demo_catalog() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo/catalog.jsonl")
}

/// Where `scripts/setup` exported the models (`$RANKMESH_MODELS`, else `models/`).
pub fn models_dir() -> PathBuf {
    std::env::var_os("RANKMESH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

/// The setting that says where the Home Depot set is.
pub const HOMEDEPOT_DIR_VAR: &str = "RANKMESH_HOMEDEPOT_DIR";

/// The Home Depot relevance set: real shopper queries with graded judgments. It is
/// not part of the repository: `$RANKMESH_HOMEDEPOT_DIR`, by default
/// `../shared/data/homedepot` beside the repository. Tests that need it are
/// `#[ignore]`d; `scripts/test` runs them where it is present (and always where
/// `CI=true`).
pub fn homedepot_dir() -> PathBuf {
    std::env::var_os(HOMEDEPOT_DIR_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/homedepot")
        })
}

/// Writes a deterministic slice of the Home Depot set into `dir`: the judgments of
/// `queries` queries (`judgments.csv`) and a catalog of at least `items` products
/// holding every judged one (`catalog.jsonl`). Panics when the set is missing: a
/// test that needs it must not pass without it.
pub fn homedepot_slice(dir: &std::path::Path, queries: usize, items: usize) -> (PathBuf, PathBuf) {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::{BufRead, Write};
    let src = homedepot_dir();
    let open = |name: &str| {
        let path = src.join(name);
        let f = std::fs::File::open(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: this test needs the Home Depot set; set {HOMEDEPOT_DIR_VAR} to the \
                 folder holding judgments.csv.gz and catalog.jsonl.gz",
                path.display()
            )
        });
        std::io::BufReader::new(flate2::read::MultiGzDecoder::new(f))
    };
    // Queries picked by a hash of their text: the same slice everywhere.
    let hash = |s: &str| rankmesh_common::fnv::fnv1a(s.as_bytes());
    let mut by_query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut reader = csv::Reader::from_reader(open("judgments.csv.gz"));
    for rec in reader.records() {
        let rec = rec.expect("judgment row");
        by_query
            .entry(rec[0].to_owned())
            .or_default()
            .push(format!("{},{}", &rec[1], &rec[2]));
    }
    let mut picked: Vec<&String> = by_query.keys().collect();
    picked.sort_by_key(|q| (hash(q), (*q).clone()));
    picked.truncate(queries);
    let judgments = dir.join("judgments.csv");
    let mut w = csv::Writer::from_path(&judgments).expect("judgments.csv");
    w.write_record(["query", "item_id", "grade"])
        .expect("write");
    let mut judged = BTreeSet::new();
    for q in &picked {
        for row in &by_query[*q] {
            let (id, grade) = row.split_once(',').expect("id,grade");
            w.write_record([q.as_str(), id, grade]).expect("write");
            judged.insert(id.to_owned());
        }
    }
    w.flush().expect("flush");
    let mut lines: Vec<(u64, String, bool)> = Vec::new();
    for line in open("catalog.jsonl.gz").lines() {
        let line = line.expect("catalog line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("catalog json");
        let id = v["id"].as_str().expect("id").to_owned();
        lines.push((hash(&id), line, judged.contains(&id)));
    }
    // Every judged product, then others in hash order up to `items`.
    lines.sort_by_key(|(h, _, judged)| (!*judged, *h));
    let catalog = dir.join("catalog.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&catalog).expect("catalog.jsonl"));
    for (_, line, _) in lines.iter().take(items.max(judged.len())) {
        writeln!(f, "{line}").expect("write");
    }
    f.flush().expect("flush");
    (catalog, judgments)
}
