//! Catalog filters as every Search, Recommend, Retrieve and LexicalCandidates
//! request carries them: arbitrary bytes decoded as the proto message, then
//! validated; a valid filter is normalised and answers `matches` for any item.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rankmesh_common::filters::Filter;
use rankmesh_proto::pb::common::v1 as pb;

fuzz_target!(|data: &[u8]| {
    let Ok(filters) = pb::Filters::decode(data) else {
        return;
    };
    if let Ok(f) = Filter::from_proto(Some(filters)) {
        // Normalising is idempotent: the normalised filter sent again is accepted
        // and comes back the same.
        let again = Filter::from_proto(Some(pb::Filters {
            category_prefix: f.category_prefix.clone(),
            min_price: f.min_price,
            max_price: f.max_price,
            brands: f.brands.clone(),
        }))
        .expect("a normalised filter is valid");
        assert_eq!(f, again);
    }
});
