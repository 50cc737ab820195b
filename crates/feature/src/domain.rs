//! The feature service's domain types and their limits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Recent events kept per user.
pub const RECENT_EVENTS: usize = 50;

/// A catalog item, its limits and its validation: one definition for every
/// service that reads the catalog.
pub use rankmesh_common::catalog::{
    Item, MAX_ATTRIBUTES, MAX_DESCRIPTION_BYTES, MAX_TITLE_BYTES, check_id, tidy_category,
};

/// What a user did with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    View,
    Cart,
    Purchase,
}

impl EventKind {
    /// How much an event says about interest; also its weight in popularity.
    pub fn weight(self) -> f64 {
        match self {
            Self::View => 1.0,
            Self::Cart => 3.0,
            Self::Purchase => 5.0,
        }
    }
}

/// A user event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub user_id: String,
    pub item_id: String,
    pub kind: EventKind,
    pub timestamp_ms: i64,
}

/// One remembered interaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recent {
    pub item_id: String,
    pub kind: EventKind,
    pub timestamp_ms: i64,
}

/// What is known about a user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserProfile {
    /// Most recent first, at most [`RECENT_EVENTS`].
    pub recent: Vec<Recent>,
    /// Category path -> summed event weight.
    pub category_weight: BTreeMap<String, f64>,
    /// Lower-cased brand -> summed event weight.
    pub brand_weight: BTreeMap<String, f64>,
    /// Events recorded.
    pub events: u64,
}

impl UserProfile {
    /// Applies an event (the item's category and brand are looked up by the caller).
    pub fn apply(&mut self, event: &Event, category: &str, brand: &str) {
        let w = event.kind.weight();
        self.recent.insert(
            0,
            Recent {
                item_id: event.item_id.clone(),
                kind: event.kind,
                timestamp_ms: event.timestamp_ms,
            },
        );
        // Out-of-order timestamps (retries, clock skew) keep the list newest first.
        self.recent
            .sort_by_key(|r| std::cmp::Reverse(r.timestamp_ms));
        self.recent.truncate(RECENT_EVENTS);
        if !category.is_empty() {
            *self.category_weight.entry(category.to_owned()).or_default() += w;
        }
        if !brand.is_empty() {
            *self.brand_weight.entry(brand.to_lowercase()).or_default() += w;
        }
        self.events += 1;
    }

    /// Category affinities normalised to sum to 1.
    pub fn category_affinity(&self) -> BTreeMap<String, f64> {
        let total: f64 = self.category_weight.values().sum();
        if total <= 0.0 {
            return BTreeMap::new();
        }
        self.category_weight
            .iter()
            .map(|(c, w)| (c.clone(), w / total))
            .collect()
    }
}

/// A catalog item for tests: these fields, no description, rating or attributes.
#[cfg(test)]
pub(crate) fn test_item(id: &str, title: &str, category: &str, brand: &str, price: f64) -> Item {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> Item {
        Item {
            rating: Some(4.5),
            review_count: 3,
            ..test_item("a1", " Pan ", "Home>Kitchen >  Pans", " Acme ", 10.0)
        }
    }

    #[test]
    fn validation_normalises_and_names_fields() {
        let i = item().validated().expect("valid");
        assert_eq!(i.category, "Home > Kitchen > Pans");
        assert_eq!((i.title.as_str(), i.brand.as_str()), ("Pan", "Acme"));
        let bad = |f: fn(&mut Item)| {
            let mut i = item();
            f(&mut i);
            i.validated().expect_err("invalid")
        };
        assert!(bad(|i| i.id = "a b".into()).starts_with("id:"));
        assert!(bad(|i| i.title = "  ".into()).starts_with("title:"));
        assert!(bad(|i| i.price = Some(-1.0)).starts_with("price:"));
        assert!(bad(|i| i.rating = Some(7.0)).starts_with("rating:"));
    }

    #[test]
    fn profile_keeps_newest_first_and_normalises_affinity() {
        let mut p = UserProfile::default();
        let ev = |id: &str, kind, ts| Event {
            event_id: id.into(),
            user_id: "u".into(),
            item_id: id.into(),
            kind,
            timestamp_ms: ts,
        };
        p.apply(&ev("a", EventKind::View, 10), "Books", "X");
        p.apply(&ev("b", EventKind::Purchase, 5), "Home > Kitchen", "Y");
        assert_eq!(p.recent[0].item_id, "a");
        let aff = p.category_affinity();
        assert!((aff["Books"] - 1.0 / 6.0).abs() < 1e-9);
        assert!((aff.values().sum::<f64>() - 1.0).abs() < 1e-9);
    }
}
