//! Text analysis shared by the lexical index and the ranker's text features, so a
//! query and a title are cut into the same tokens wherever they are compared.
//!
//! Shopper queries and product titles are full of sizes, units and model numbers
//! ("2x4x8", "3/4 in.", "12ft", "HDX2000"): tokens keep fractions and decimals
//! whole, split letters from digits (keeping the joined form too, so an exact model
//! number still matches best), and spell units one way (`"` and "inches" are both
//! `in`). Words are stemmed (English Snowball, tantivy's stemmer). Character
//! trigrams of each token give typo tolerance ("refridgerator" shares most of its
//! trigrams with "refrigerator").

use tantivy::tokenizer::{Stemmer, TextAnalyzer, TokenStream, WhitespaceTokenizer};

/// Longest token kept (longer runs are noise: hashes, URLs).
const MAX_TOKEN_CHARS: usize = 40;

/// Words that say nothing about what a product is; left out of coverage features
/// (BM25 weighs them down by itself).
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "the", "for", "with", "of", "to", "on", "in", "or", "by", "at", "&",
];

/// One way to spell each unit.
fn unit(token: &str) -> Option<&'static str> {
    Some(match token {
        "in" | "inch" | "inches" | "\"" => "in",
        "ft" | "feet" | "foot" | "'" => "ft",
        "lb" | "lbs" | "pound" | "pounds" => "lb",
        "gal" | "gallon" | "gallons" => "gal",
        "oz" | "ounce" | "ounces" => "oz",
        "qt" | "quart" | "quarts" => "qt",
        "v" | "volt" | "volts" => "volt",
        "w" | "watt" | "watts" => "watt",
        "amp" | "amps" => "amp",
        "sq" | "square" => "sq",
        "cu" | "cubic" => "cu",
        "mm" => "mm",
        "cm" => "cm",
        "yd" | "yard" | "yards" => "yd",
        "pk" | "pack" => "pack",
        "ct" | "count" => "count",
        _ => return None,
    })
}

/// True for a unit spelled the canonical way.
pub fn is_unit(token: &str) -> bool {
    unit(token) == Some(token)
}

/// True for tokens that start with a digit (sizes, counts, model-number parts).
pub fn is_number(token: &str) -> bool {
    token.chars().next().is_some_and(|c| c.is_ascii_digit())
}

pub fn is_stopword(token: &str) -> bool {
    STOPWORDS.contains(&token)
}

/// "1.50" -> "1.5", "2.0" -> "2": the same size written two ways meets.
fn tidy_number(n: &str) -> String {
    if n.contains('.') && !n.contains('/') {
        let t = n.trim_end_matches('0').trim_end_matches('.');
        if t.is_empty() {
            "0".into()
        } else {
            t.to_owned()
        }
    } else {
        n.to_owned()
    }
}

/// Raw tokens: alphanumeric runs, with '.' and '/' kept between digits, and a
/// `"` or `'` right after a digit as a token of its own (inches, feet).
fn raw_tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    let digit = |i: usize| chars.get(i).is_some_and(char::is_ascii_digit);
    for (i, &c) in chars.iter().enumerate() {
        let inside_number = (c == '.' || c == '/') && i > 0 && digit(i - 1) && digit(i + 1);
        if c.is_alphanumeric() || inside_number {
            cur.push(c);
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if (c == '"' || c == '\'') && i > 0 && digit(i - 1) {
                out.push(c.to_string());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out.retain(|t| t.chars().count() <= MAX_TOKEN_CHARS);
    out
}

/// Splits "2x4x8" into 2, x, 4, x, 8 and "hdx2000" into hdx, 2000.
fn split_letters_digits(token: &str) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut cur_digit = None;
    for c in token.chars() {
        let d = c.is_ascii_digit() || c == '.' || c == '/';
        if cur_digit.is_some_and(|p| p != d) {
            parts.push(std::mem::take(&mut cur));
        }
        cur.push(c);
        cur_digit = Some(d);
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
}

/// Tokens of `text` before stemming: lower case, units canonical, numbers tidy.
fn plain_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in raw_tokens(text) {
        let parts = split_letters_digits(&raw);
        let canon = |p: &str| {
            if is_number(p) {
                tidy_number(p)
            } else {
                unit(p).map_or_else(|| p.to_owned(), str::to_owned)
            }
        };
        if parts.len() > 1 {
            out.extend(parts.iter().map(|p| canon(p)));
            // The joined form too ("2x4x8", "hdx2000"), unless it is only a number
            // and its unit ("12ft"), which the parts already say.
            if !(parts.len() == 2 && is_number(&parts[0]) && unit(&parts[1]).is_some()) {
                out.push(raw);
            }
        } else {
            out.push(canon(&raw));
        }
    }
    out
}

thread_local! {
    /// The stemmer, built once per thread (every candidate's title is analyzed on
    /// each request).
    static STEMMER: std::cell::RefCell<TextAnalyzer> = std::cell::RefCell::new(
        TextAnalyzer::builder(WhitespaceTokenizer::default())
            .filter(Stemmer::default())
            .build(),
    );
}

/// Analyzed tokens (what the index stores and queries are cut into): plain tokens
/// with words stemmed.
pub fn tokens(text: &str) -> Vec<String> {
    let plain = plain_tokens(text);
    STEMMER.with_borrow_mut(|analyzer| {
        plain
            .into_iter()
            .map(|t| {
                if t.chars().any(|c| c.is_ascii_digit()) || is_unit(&t) {
                    return t;
                }
                let mut stream = analyzer.token_stream(&t);
                let stemmed = stream.advance().then(|| stream.token().text.clone());
                drop(stream);
                stemmed.unwrap_or(t)
            })
            .collect()
    })
}

/// Character trigrams of each token, with `#` marking token edges ("pan" ->
/// "#pa", "pan", "an#"); tokens of one or two characters are kept whole.
pub fn trigrams(tokens: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tokens {
        let padded: Vec<char> = std::iter::once('#')
            .chain(t.chars())
            .chain(std::iter::once('#'))
            .collect();
        if padded.len() < 5 {
            out.push(t.clone());
            continue;
        }
        for w in padded.windows(3) {
            out.push(w.iter().collect());
        }
    }
    out
}

/// Levenshtein distance over characters, stopping early once it exceeds `max`.
/// No allocation for ASCII tokens up to 62 bytes (nearly all of them: this runs
/// for every query word against every candidate title word).
pub fn within_edits(a: &str, b: &str, max: usize) -> bool {
    if a.is_ascii() && b.is_ascii() {
        edits_within(a.as_bytes(), b.as_bytes(), max)
    } else {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        edits_within(&a, &b, max)
    }
}

fn edits_within<T: PartialEq>(a: &[T], b: &[T], max: usize) -> bool {
    if a.len().abs_diff(b.len()) > max {
        return false;
    }
    let mut stack = [[0usize; 64]; 2];
    let mut heap = Vec::new();
    let (prev, cur) = if b.len() < 63 {
        let [p, c] = &mut stack;
        (&mut p[..], &mut c[..])
    } else {
        heap.resize(2 * (b.len() + 1), 0);
        heap.split_at_mut(b.len() + 1)
    };
    let (mut prev, mut cur) = (prev, cur);
    for (j, p) in prev.iter_mut().enumerate().take(b.len() + 1) {
        *p = j;
    }
    for i in 1..=a.len() {
        cur[0] = i;
        let mut best = cur[0];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            best = best.min(cur[j]);
        }
        if best > max {
            return false;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()] <= max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Vec<String> {
        tokens(s)
    }

    #[test]
    fn sizes_units_and_model_numbers() {
        assert_eq!(t("2x4x8"), ["2", "x", "4", "x", "8", "2x4x8"]);
        assert_eq!(t("3/4 in. Plywood"), ["3/4", "in", "plywood"]);
        assert_eq!(t("3/4\" plywood"), ["3/4", "in", "plywood"]);
        assert_eq!(t("12ft ladder"), ["12", "ft", "ladder"]);
        assert_eq!(t("8' Ladders"), ["8", "ft", "ladder"]);
        assert_eq!(t("HDX2000"), ["hdx", "2000", "hdx2000"]);
        assert_eq!(t("1.50 Gallons"), ["1.5", "gal"]);
        assert_eq!(t("Drills, drilling"), ["drill", "drill"]);
    }

    #[test]
    fn trigrams_meet_across_a_typo() {
        let a = trigrams(&t("refridgerator"));
        let b = trigrams(&t("refrigerator"));
        let shared = a.iter().filter(|g| b.contains(g)).count();
        assert!(shared * 2 > a.len(), "{a:?} vs {b:?}");
        assert_eq!(trigrams(&["x".into()]), ["x"]);
    }

    #[test]
    fn edit_distance_bound() {
        assert!(within_edits("vinyl", "vinal", 1));
        assert!(!within_edits("vinyl", "vynal", 1));
        assert!(within_edits("vinyl", "vynal", 2));
        assert!(within_edits("", "ab", 2));
        assert!(!within_edits("abc", "abcdef", 2));
    }
}
