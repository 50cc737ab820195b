//! The catalog item: the one shape of a product in the catalog import format
//! (JSONL objects or CSV rows), shared by the feature service (which stores and
//! serves items) and the embedding service (which indexes them). [`Item::validated`]
//! is the one check of its fields.

use std::collections::BTreeMap;

use rankmesh_proto::limits::MAX_ID_BYTES;
use rankmesh_proto::pb::common::v1 as pb;
use serde::{Deserialize, Serialize};

/// Longest title, bytes.
pub const MAX_TITLE_BYTES: usize = 1024;
/// Longest description, bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;
/// Most attributes per item.
pub const MAX_ATTRIBUTES: usize = 64;

/// A catalog item. Only `id` and `title` are required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// `>`-separated path, stored as given (trimmed segments joined by " > ").
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub brand: String,
    #[serde(default)]
    pub price: Option<f64>,
    #[serde(default)]
    pub rating: Option<f64>,
    #[serde(default)]
    pub review_count: u64,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Checks an id: 1..=128 bytes, no whitespace or control characters.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!("{} bytes; at most {MAX_ID_BYTES}", id.len()));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{id:?} contains whitespace or control characters"));
    }
    Ok(())
}

/// "Home>Kitchen >  Pans" -> "Home > Kitchen > Pans" (case kept for display).
pub fn tidy_category(path: &str) -> String {
    path.split('>')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" > ")
}

impl Item {
    /// Validates and normalises an item; the error names the field.
    pub fn validated(mut self) -> Result<Self, String> {
        self.id = self.id.trim().to_owned();
        check_id(&self.id).map_err(|e| format!("id: {e}"))?;
        self.title = self.title.trim().to_owned();
        if self.title.is_empty() {
            return Err("title: required".into());
        }
        if self.title.len() > MAX_TITLE_BYTES {
            return Err(format!(
                "title: {} bytes; at most {MAX_TITLE_BYTES}",
                self.title.len()
            ));
        }
        if self.description.len() > MAX_DESCRIPTION_BYTES {
            return Err(format!(
                "description: {} bytes; at most {MAX_DESCRIPTION_BYTES}",
                self.description.len()
            ));
        }
        self.category = tidy_category(&self.category);
        self.brand = self.brand.trim().to_owned();
        if let Some(p) = self.price
            && (!p.is_finite() || p < 0.0)
        {
            return Err(format!("price: must be a finite number >= 0, got {p}"));
        }
        if let Some(r) = self.rating
            && !(0.0..=5.0).contains(&r)
        {
            return Err(format!("rating: must be within 0..=5, got {r}"));
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(format!(
                "attributes: {} entries; at most {MAX_ATTRIBUTES}",
                self.attributes.len()
            ));
        }
        Ok(self)
    }
}
/// An item as the API carries it, taken back (what a ScanItems page holds).
impl From<pb::Item> for Item {
    fn from(i: pb::Item) -> Self {
        let pb::Item {
            id,
            title,
            description,
            category,
            brand,
            price,
            rating,
            review_count,
            attributes,
        } = i;
        Self {
            id,
            title,
            description,
            category,
            brand,
            price,
            rating,
            review_count,
            attributes: attributes.into_iter().collect(),
        }
    }
}

/// The item as the API carries it (`ScanItems`, `GetItems`).
impl From<Item> for pb::Item {
    fn from(i: Item) -> Self {
        Self {
            id: i.id,
            title: i.title,
            description: i.description,
            category: i.category,
            brand: i.brand,
            price: i.price,
            rating: i.rating,
            review_count: i.review_count,
            attributes: i.attributes.into_iter().collect(),
        }
    }
}
