//! Catalog filters (the proto's `Filters`), validated once and shared by every
//! service that filters items (dense retrieval, lexical retrieval, ranking).

use rankmesh_proto::pb::common::v1 as pb;

/// Longest accepted category prefix, bytes (stated in the proto).
pub const MAX_CATEGORY_BYTES: usize = 256;
/// Most brands in one filter (stated in the proto).
pub const MAX_BRANDS: usize = 64;
/// Longest brand in a filter, bytes (stated in the proto): no catalog brand is
/// longer, and each is lower-cased and compared per item.
pub const MAX_BRAND_BYTES: usize = 256;

/// A validated filter. Category and brands are normalised (see
/// [`normalize_category`]; brands lower-cased).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Normalised category prefix; empty matches everything.
    pub category_prefix: String,
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
    /// Lower-cased brands; empty matches everything.
    pub brands: Vec<String>,
}

/// A filter that cannot be used; `field` is the proto path (e.g. `filters.max_price`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FilterError {
    pub field: &'static str,
    pub message: String,
}

/// "Home>Kitchen >  Pans" -> "home > kitchen > pans".
pub fn normalize_category(path: &str) -> String {
    path.split('>')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" > ")
}

/// Every prefix of a normalised category path, shortest first:
/// "a > b > c" -> ["a", "a > b", "a > b > c"].
pub fn category_prefixes(normalized: &str) -> Vec<String> {
    let parts: Vec<&str> = normalized.split(" > ").filter(|s| !s.is_empty()).collect();
    (1..=parts.len()).map(|n| parts[..n].join(" > ")).collect()
}

impl Filter {
    /// Validates the proto filters.
    pub fn from_proto(f: Option<pb::Filters>) -> Result<Self, FilterError> {
        let Some(pb::Filters {
            category_prefix,
            min_price,
            max_price,
            brands,
        }) = f
        else {
            return Ok(Self::default());
        };
        let err = |field, message: String| FilterError { field, message };
        if category_prefix.len() > MAX_CATEGORY_BYTES {
            return Err(err(
                "filters.category_prefix",
                format!(
                    "{} bytes; at most {MAX_CATEGORY_BYTES}",
                    category_prefix.len()
                ),
            ));
        }
        for (name, v) in [
            ("filters.min_price", min_price),
            ("filters.max_price", max_price),
        ] {
            if let Some(p) = v
                && (!p.is_finite() || p < 0.0)
            {
                return Err(err(name, format!("must be a finite number >= 0, got {p}")));
            }
        }
        if let (Some(lo), Some(hi)) = (min_price, max_price)
            && hi < lo
        {
            return Err(err(
                "filters.max_price",
                format!("{hi} is below min_price {lo}"),
            ));
        }
        if brands.len() > MAX_BRANDS {
            return Err(err(
                "filters.brands",
                format!("{} brands; at most {MAX_BRANDS}", brands.len()),
            ));
        }
        if let Some(i) = brands.iter().position(|b| b.len() > MAX_BRAND_BYTES) {
            return Err(err(
                "filters.brands",
                format!(
                    "[{i}]: {} bytes; at most {MAX_BRAND_BYTES}",
                    brands[i].len()
                ),
            ));
        }
        Ok(Self {
            category_prefix: normalize_category(&category_prefix),
            min_price,
            max_price,
            brands: brands
                .iter()
                .map(|b| b.trim().to_lowercase())
                .filter(|b| !b.is_empty())
                .collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.category_prefix.is_empty()
            && self.min_price.is_none()
            && self.max_price.is_none()
            && self.brands.is_empty()
    }

    /// Whether an item passes. `category` must be normalised, `brand` lower-cased.
    pub fn matches(&self, category: &str, brand: &str, price: Option<f64>) -> bool {
        if !self.category_prefix.is_empty() {
            let p = self.category_prefix.as_str();
            // Whole segments only: "home > kitchen" matches "home > kitchen > pans"
            // but not "home > kitchenware".
            let ok = category == p
                || (category.starts_with(p) && category[p.len()..].starts_with(" > "));
            if !ok {
                return false;
            }
        }
        if self.min_price.is_some() || self.max_price.is_some() {
            let Some(p) = price else { return false };
            if self.min_price.is_some_and(|m| p < m) || self.max_price.is_some_and(|m| p > m) {
                return false;
            }
        }
        self.brands.is_empty() || self.brands.iter().any(|b| b == brand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_prefix_matches_whole_segments() {
        let f = Filter {
            category_prefix: normalize_category("home>kitchen"),
            ..Filter::default()
        };
        assert!(f.matches(&normalize_category("Home > Kitchen > Pans"), "", None));
        assert!(f.matches("home > kitchen", "", None));
        assert!(!f.matches("home > kitchenware", "", None));
        assert!(!f.matches("garden", "", None));
        assert_eq!(
            category_prefixes("a > b > c"),
            vec!["a", "a > b", "a > b > c"]
        );
    }

    #[test]
    fn proto_validation_names_fields() {
        let bad = |f: pb::Filters| Filter::from_proto(Some(f)).expect_err("invalid").field;
        assert_eq!(
            bad(pb::Filters {
                min_price: Some(5.0),
                max_price: Some(1.0),
                ..Default::default()
            }),
            "filters.max_price"
        );
        assert_eq!(
            bad(pb::Filters {
                min_price: Some(f64::NAN),
                ..Default::default()
            }),
            "filters.min_price"
        );
        assert_eq!(
            bad(pb::Filters {
                brands: vec!["b".into(); 65],
                ..Default::default()
            }),
            "filters.brands"
        );
        assert_eq!(
            bad(pb::Filters {
                brands: vec!["acme".into(), "b".repeat(MAX_BRAND_BYTES + 1)],
                ..Default::default()
            }),
            "filters.brands"
        );
        let ok = Filter::from_proto(Some(pb::Filters {
            category_prefix: " Home>Kitchen ".into(),
            brands: vec![" ACME ".into(), "".into()],
            ..Default::default()
        }))
        .expect("valid");
        assert_eq!(ok.category_prefix, "home > kitchen");
        assert_eq!(ok.brands, vec!["acme"]);
    }

    mod properties {
        //! Filter semantics against a reference written in segments: what validates
        //! is normalised, and `matches` agrees with `category_prefixes` (what the
        //! indexes store), the inclusive price bounds and the brand list.
        use super::super::*;
        use proptest::prelude::*;

        fn segment() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "Home",
                "home ",
                "Kitchen",
                "kitchenware",
                "Pans",
                " Garden",
                "a",
            ])
            .prop_map(str::to_owned)
        }

        fn path() -> impl Strategy<Value = String> {
            (
                prop::collection::vec(segment(), 0..4),
                prop::sample::select(vec![">", " > ", " >"]),
            )
                .prop_map(|(segments, sep)| segments.join(sep))
        }

        proptest! {
            #[test]
            fn validated_filters_match_like_the_reference(
                prefix in path(),
                min in prop::option::of(0.0f64..100.0),
                span in prop::option::of(0.0f64..100.0),
                brands in prop::collection::vec(prop::sample::select(vec!["Acme", " acme", "Zed", ""]), 0..3),
                category in path(),
                brand in prop::sample::select(vec!["acme", "zed", "other"]),
                price in prop::option::of(0.0f64..200.0),
            ) {
                let max = min.zip(span).map(|(lo, d)| lo + d).or(span);
                let f = Filter::from_proto(Some(pb::Filters {
                    category_prefix: prefix.clone(),
                    min_price: min,
                    max_price: max,
                    brands: brands.iter().map(|b| (*b).to_owned()).collect(),
                }))
                .expect("a valid filter");
                // Normalised once, and stable.
                prop_assert_eq!(normalize_category(&f.category_prefix), f.category_prefix.clone());
                prop_assert!(f.brands.iter().all(|b| !b.is_empty() && *b == b.trim().to_lowercase()));

                let category = normalize_category(&category);
                let by_category = f.category_prefix.is_empty()
                    || category_prefixes(&category).contains(&f.category_prefix);
                let by_price = (min.is_none() && max.is_none())
                    || price.is_some_and(|p| min.is_none_or(|m| p >= m) && max.is_none_or(|m| p <= m));
                let by_brand = f.brands.is_empty() || f.brands.iter().any(|b| b == brand);
                prop_assert_eq!(
                    f.matches(&category, brand, price),
                    by_category && by_price && by_brand,
                    "{:?} on ({:?}, {}, {:?})", f, category, brand, price
                );
            }

            #[test]
            fn invalid_prices_are_refused_never_accepted(
                min in prop::option::of(prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -10.0f64..-0.001, 0.0f64..10.0]),
                max in prop::option::of(prop_oneof![Just(f64::NAN), -10.0f64..-0.001, 0.0f64..10.0]),
            ) {
                let bad = |p: Option<f64>| p.is_some_and(|p| !p.is_finite() || p < 0.0);
                let inverted = matches!((min, max), (Some(lo), Some(hi)) if hi < lo);
                let r = Filter::from_proto(Some(pb::Filters {
                    min_price: min,
                    max_price: max,
                    ..pb::Filters::default()
                }));
                prop_assert_eq!(r.is_err(), bad(min) || bad(max) || inverted, "{:?}", r);
            }
        }
    }
}
