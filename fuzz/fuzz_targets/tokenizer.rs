//! Every text the mesh tokenizes from outside: queries and catalog texts through
//! the encoder's tokenizer (the shipped tokenizer.json, truncation as the service
//! sets it) and its length groups, and through the lexical analyzer the features
//! and BM25 use. The input is split into texts at newlines and taken as UTF-8 with
//! invalid bytes replaced (a gRPC string field refuses invalid UTF-8 before this;
//! a file read lossily gets here). Never a panic, and the tensors are rectangular.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use rankmesh_embedding::encoder::{TOKEN_BUDGET, TextTokenizer, length_groups};

/// The service's truncation (`model.max_tokens`' default).
const MAX_TOKENS: usize = 256;

static TOKENIZER: LazyLock<TextTokenizer> = LazyLock::new(|| {
    // scripts/setup exports the encoder into models/; RANKMESH_FUZZ_TOKENIZER
    // names another tokenizer.json.
    let path = std::env::var("RANKMESH_FUZZ_TOKENIZER").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/encoder/int8/tokenizer.json"
        )
        .to_owned()
    });
    let json = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (run scripts/setup to export the encoder)"));
    TextTokenizer::from_bytes(&json, MAX_TOKENS).expect("the shipped tokenizer loads")
});

fuzz_target!(|data: &[u8]| {
    let texts: Vec<String> = data
        .split(|b| *b == b'\n')
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    let batch = TOKENIZER.batch(&texts).expect("any UTF-8 text tokenizes");
    assert_eq!(batch.batch, texts.len());
    assert!(batch.seq >= 1 && batch.seq <= MAX_TOKENS, "seq {}", batch.seq);
    let cells = batch.batch * batch.seq;
    assert_eq!(batch.ids.len(), cells);
    assert_eq!(batch.mask.len(), cells);
    assert_eq!(batch.types.len(), cells);
    assert_eq!(batch.truncated.len(), texts.len());

    let lengths: Vec<usize> = batch
        .mask
        .chunks_exact(batch.seq)
        .map(|row| row.iter().filter(|m| **m == 1).count())
        .collect();
    let groups = length_groups(&lengths, TOKEN_BUDGET);
    let mut seen = vec![false; lengths.len()];
    for group in &groups {
        assert!(!group.is_empty());
        let widest = group.iter().map(|&i| lengths[i].max(1)).max().unwrap_or(1);
        assert!(
            group.len() == 1 || group.len() * widest <= TOKEN_BUDGET,
            "a group of several rows stays within the token budget"
        );
        for &i in group {
            assert!(!seen[i], "text {i} is in two groups");
            seen[i] = true;
        }
    }
    assert!(seen.iter().all(|s| *s), "every text is in a group");

    for text in &texts {
        let tokens = rankmesh_feature::text::tokens(text);
        assert!(tokens.iter().all(|t| !t.is_empty()));
        let _ = rankmesh_feature::text::trigrams(&tokens);
    }
});
