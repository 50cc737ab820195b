//! A catalog upload as ImportCatalog parses it: the first byte picks JSONL or CSV,
//! the rest is the file. Never a panic: every row is an item or a row error, an
//! accepted item is already in its normal form, and the reply lists at most
//! `MAX_LISTED_ERRORS` errors while counting them all. (Inputs past `-max_len`
//! are not tried here; the row limit has its own unit tests.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use rankmesh_feature::import::{self, Format, ImportError, MAX_LISTED_ERRORS};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, file)) = data.split_first() else {
        return;
    };
    let format = if selector & 1 == 0 {
        Format::Jsonl
    } else {
        Format::Csv
    };
    let parsed = match import::parse(format, file) {
        Ok(parsed) => parsed,
        // A CSV header the importer does not know, or a CSV row past the row
        // limit (a quote never closed), refuses the whole file.
        Err(ImportError::Header(_) | ImportError::RowTooLong(_)) if format == Format::Csv => {
            return;
        }
        Err(e) => panic!("an in-memory upload fails only on CSV framing: {e}"),
    };
    assert_eq!(
        parsed.errors.len() as u64,
        parsed.rejected.min(MAX_LISTED_ERRORS as u64),
        "every rejected row is counted; the first ones are listed"
    );
    for item in &parsed.items {
        assert_eq!(
            item.clone().validated().as_ref(),
            Ok(item),
            "an accepted item is valid and normalised"
        );
    }
    let mut last = 0;
    for e in &parsed.errors {
        assert!(e.line >= last, "row errors come in file order");
        last = e.line;
    }
});
