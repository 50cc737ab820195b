//! Reading catalog items to index from a JSONL file in the catalog import format
//! (one object per line: `id`, `title`, and optionally `description`, `category`,
//! `brand`, `price`, ...). Unknown fields are ignored; a malformed line is an error
//! naming its line number, so a broken catalog never yields a silently partial index.

use std::io::BufRead;
use std::path::Path;

use crate::index::{ItemMeta, normalize_category};

/// The catalog item (one type for every service; the index reads `id`, `title`,
/// `description`, `category`, `brand` and `price`).
pub use rankmesh_common::catalog::Item as CatalogItem;

/// Description characters that go into an item's text; the title, brand and category
/// carry most of the signal, and MiniLM truncates at 256 tokens anyway.
const DESCRIPTION_CHARS: usize = 400;

/// The text embedded for an item.
pub fn text(item: &CatalogItem) -> String {
    let mut t = item.title.trim().to_owned();
    for part in [item.brand.trim(), item.category.trim()] {
        if !part.is_empty() {
            t.push_str(". ");
            t.push_str(part);
        }
    }
    let d: String = item
        .description
        .trim()
        .chars()
        .take(DESCRIPTION_CHARS)
        .collect();
    if !d.is_empty() {
        t.push_str(". ");
        t.push_str(&d);
    }
    t
}

/// What the index keeps of an item: its filter fields, and the fingerprint of
/// `text`, the text its vector is embedded from.
pub fn meta(item: &CatalogItem, text: &str) -> ItemMeta {
    ItemMeta {
        id: item.id.clone(),
        category: normalize_category(&item.category),
        brand: item.brand.trim().to_lowercase(),
        price: item.price.filter(|p| p.is_finite()),
        text_hash: text_hash(text),
    }
}

/// A fingerprint of an item's text, stable across builds, versions and machines
/// (FNV-1a, 64 bits; never 0, which means "unknown"). Kept in the index and its
/// snapshot so an unchanged text is not embedded again.
pub fn text_hash(text: &str) -> u64 {
    rankmesh_common::fnv::fnv1a(text.as_bytes()).max(1)
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Row {
        path: String,
        line: usize,
        message: String,
    },
}

/// Reads every item of a JSONL catalog.
pub fn read_jsonl(path: &Path) -> Result<Vec<CatalogItem>, CatalogError> {
    let p = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| CatalogError::Io {
        path: p.clone(),
        source,
    })?;
    let mut items = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| CatalogError::Io {
            path: p.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let item: CatalogItem = serde_json::from_str(&line).map_err(|e| CatalogError::Row {
            path: p.clone(),
            line: i + 1,
            message: e.to_string(),
        })?;
        if item.id.trim().is_empty() || item.title.trim().is_empty() {
            return Err(CatalogError::Row {
                path: p.clone(),
                line: i + 1,
                message: "id and title are required".into(),
            });
        }
        items.push(item);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_items_and_names_bad_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.jsonl");
        std::fs::write(
            &path,
            "{\"id\":\"a\",\"title\":\"Red shoe\",\"category\":\"Shoes>Running\",\"price\":50,\"extra\":1}\n\n{\"id\":\"b\",\"title\":\"Pan\"}\n",
        )
        .expect("write");
        let items = read_jsonl(&path).expect("valid");
        assert_eq!(items.len(), 2);
        let t = text(&items[0]);
        assert_eq!(t, "Red shoe. Shoes>Running");
        let m = meta(&items[0], &t);
        assert_eq!(m.category, "shoes > running");
        assert_eq!(m.text_hash, text_hash("Red shoe. Shoes>Running"));
        assert_ne!(m.text_hash, text_hash("Red shoe. Shoes>Trail"));
        std::fs::write(&path, "{\"id\":\"a\",\"title\":\"x\"}\n{\"id\":\"b\"\n").expect("write");
        let err = read_jsonl(&path).expect_err("bad line").to_string();
        assert!(err.contains(":2:"), "{err}");
    }
}
