//! `meshctl catalog generate`: a deterministic synthetic store for tests, demos,
//! ranker training and load tests.
//!
//! Same `--seed`, same files, byte for byte (own PRNG, no dependence on a library's
//! algorithm). The world it writes:
//! - a category tree (top > sub > leaf), each leaf with its product nouns, attributes
//!   and price band; brands per top-level category;
//! - items with a latent quality (drives rating) and a Zipf popularity (drives review
//!   counts and how often users meet them);
//! - users with one to three favourite leaves and a favourite brand;
//! - an event log (views, carts, purchases over 30 days) following those tastes;
//! - a query log and graded relevance labels (see [`grade`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::json;

/// (leaf path, nouns, attribute (key, values), price band)
type Leaf = (
    &'static str,
    &'static [&'static str],
    (&'static str, &'static [&'static str]),
    (f64, f64),
);

const LEAVES: &[Leaf] = &[
    (
        "Electronics > Audio > Headphones",
        &["headphones", "earbuds", "headset"],
        ("color", &["black", "white", "silver", "blue"]),
        (20.0, 400.0),
    ),
    (
        "Electronics > Audio > Speakers",
        &["speaker", "soundbar", "subwoofer"],
        ("color", &["black", "grey", "red"]),
        (25.0, 600.0),
    ),
    (
        "Electronics > Computers > Laptops",
        &["laptop", "notebook", "ultrabook"],
        ("ram", &["8GB", "16GB", "32GB"]),
        (300.0, 2500.0),
    ),
    (
        "Electronics > Computers > Accessories",
        &["keyboard", "mouse", "webcam", "monitor"],
        ("connectivity", &["wireless", "usb-c", "bluetooth"]),
        (10.0, 500.0),
    ),
    (
        "Electronics > Phones > Smartphones",
        &["smartphone", "phone"],
        ("storage", &["64GB", "128GB", "256GB"]),
        (150.0, 1400.0),
    ),
    (
        "Electronics > Phones > Cases",
        &["phone case", "screen protector", "charger"],
        ("color", &["black", "clear", "pink", "green"]),
        (5.0, 60.0),
    ),
    (
        "Sports > Footwear > Running",
        &["running shoes", "trail shoes", "racing flats"],
        ("size", &["40", "41", "42", "43", "44"]),
        (40.0, 250.0),
    ),
    (
        "Sports > Footwear > Hiking",
        &["hiking boots", "trekking shoes"],
        ("size", &["40", "42", "44", "46"]),
        (60.0, 300.0),
    ),
    (
        "Sports > Fitness > Yoga",
        &["yoga mat", "yoga block", "resistance band"],
        ("color", &["purple", "teal", "black"]),
        (8.0, 90.0),
    ),
    (
        "Sports > Fitness > Weights",
        &["dumbbells", "kettlebell", "barbell"],
        ("weight", &["5kg", "10kg", "20kg"]),
        (15.0, 400.0),
    ),
    (
        "Sports > Cycling > Helmets",
        &["bike helmet", "cycling helmet"],
        ("size", &["S", "M", "L"]),
        (25.0, 250.0),
    ),
    (
        "Home > Kitchen > Cookware",
        &["frying pan", "saucepan", "wok", "stock pot"],
        ("material", &["stainless steel", "cast iron", "non-stick"]),
        (15.0, 250.0),
    ),
    (
        "Home > Kitchen > Appliances",
        &["coffee machine", "blender", "toaster", "kettle"],
        ("color", &["black", "white", "red", "stainless"]),
        (20.0, 700.0),
    ),
    (
        "Home > Kitchen > Knives",
        &["chef's knife", "bread knife", "knife set"],
        ("material", &["stainless steel", "damascus", "ceramic"]),
        (10.0, 300.0),
    ),
    (
        "Home > Furniture > Sofas",
        &["sofa", "couch", "loveseat"],
        ("color", &["grey", "beige", "green", "blue"]),
        (250.0, 2500.0),
    ),
    (
        "Home > Furniture > Desks",
        &["desk", "standing desk", "office chair"],
        ("material", &["oak", "walnut", "white"]),
        (80.0, 900.0),
    ),
    (
        "Home > Bedding > Sheets",
        &["bed sheets", "duvet cover", "pillowcase"],
        ("material", &["cotton", "linen", "satin"]),
        (15.0, 200.0),
    ),
    (
        "Home > Lighting > Lamps",
        &["desk lamp", "floor lamp", "pendant light"],
        ("color", &["black", "brass", "white"]),
        (15.0, 300.0),
    ),
    (
        "Fashion > Clothing > Jackets",
        &["rain jacket", "down jacket", "fleece jacket"],
        ("size", &["S", "M", "L", "XL"]),
        (30.0, 400.0),
    ),
    (
        "Fashion > Clothing > Tops",
        &["t-shirt", "hoodie", "sweater"],
        ("color", &["black", "white", "navy", "green", "red"]),
        (8.0, 120.0),
    ),
    (
        "Fashion > Clothing > Jeans",
        &["jeans", "chinos"],
        ("fit", &["slim", "regular", "relaxed"]),
        (25.0, 180.0),
    ),
    (
        "Fashion > Accessories > Bags",
        &["backpack", "tote bag", "duffel bag"],
        ("color", &["black", "brown", "olive"]),
        (15.0, 300.0),
    ),
    (
        "Fashion > Accessories > Watches",
        &["watch", "smartwatch"],
        ("strap", &["leather", "steel", "silicone"]),
        (30.0, 900.0),
    ),
    (
        "Beauty > Skin > Moisturizers",
        &["face cream", "moisturizer", "serum"],
        ("skin", &["dry", "oily", "sensitive"]),
        (6.0, 120.0),
    ),
    (
        "Beauty > Hair > Shampoo",
        &["shampoo", "conditioner", "hair oil"],
        ("hair", &["curly", "dry", "colored"]),
        (4.0, 60.0),
    ),
    (
        "Toys > Construction > Blocks",
        &["building blocks", "construction set"],
        ("age", &["3+", "6+", "9+"]),
        (10.0, 200.0),
    ),
    (
        "Toys > Games > Board Games",
        &["board game", "card game", "puzzle"],
        ("players", &["2-4", "2-6", "1-5"]),
        (8.0, 90.0),
    ),
    (
        "Pets > Dogs > Food",
        &["dog food", "dog treats"],
        ("size", &["small breed", "large breed", "puppy"]),
        (5.0, 120.0),
    ),
    (
        "Pets > Cats > Toys",
        &["cat toy", "scratching post", "cat bed"],
        ("color", &["grey", "beige", "blue"]),
        (4.0, 150.0),
    ),
    (
        "Garden > Tools > Lawn",
        &["lawn mower", "hedge trimmer", "leaf blower"],
        ("power", &["electric", "cordless", "petrol"]),
        (40.0, 900.0),
    ),
    (
        "Books > Cooking > Baking",
        &["baking book", "bread cookbook"],
        ("format", &["hardcover", "paperback"]),
        (8.0, 60.0),
    ),
    (
        "Books > Fiction > Sci-Fi",
        &["science fiction novel", "space opera"],
        ("format", &["hardcover", "paperback", "ebook"]),
        (5.0, 40.0),
    ),
];

const ADJECTIVES: &[&str] = &[
    "lightweight",
    "premium",
    "compact",
    "ergonomic",
    "waterproof",
    "classic",
    "professional",
    "eco-friendly",
    "portable",
    "heavy-duty",
    "vintage",
    "smart",
];

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ven", "tor", "sa", "lu", "nor", "dex", "pro", "vi", "zen", "mar",
    "ko", "tri",
];

/// SplitMix64: tiny, fast, and fixed forever, so a seed always means the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

fn brand_name(top: usize, i: usize) -> String {
    let a = SYLLABLES[(top * 7 + i * 3) % SYLLABLES.len()];
    let b = SYLLABLES[(top * 5 + i * 11 + 1) % SYLLABLES.len()];
    let mut s = format!("{a}{b}");
    if let Some(f) = s.get_mut(0..1) {
        f.make_ascii_uppercase();
    }
    s
}

fn top_of(path: &str) -> &str {
    path.split(" > ").next().unwrap_or(path)
}

struct GenItem {
    id: String,
    leaf: usize,
    noun: &'static str,
    adjective: &'static str,
    brand: String,
    attribute: &'static str,
    quality: f64,
    popularity: f64,
}

/// A query's intent: a noun, optionally narrowed by brand, attribute or adjective;
/// or a whole category (`noun` = None: the leaf's own name, e.g. "cookware").
struct Intent {
    text: String,
    leaf: usize,
    noun: Option<&'static str>,
    brand: Option<String>,
    attribute: Option<&'static str>,
    adjective: Option<&'static str>,
}

/// Relevance grade of an item for an intent (0 = not relevant, not written):
/// - a category query (the leaf's name): every item of the leaf 2, well-made ones 3;
/// - same leaf category but another noun: 1;
/// - the intent's noun: 2, plus 1 if every constraint (brand, attribute, adjective)
///   holds;
/// - then +1 for a well-made item (quality in the top 30%), only when the grade is
///   already >= 2: among matching items, shoppers prefer the good ones.
///
/// Maximum 4. Text alone separates 0/1/2/3; telling 3 from 4 needs quality signals
/// (rating, reviews, popularity), which is what a learned ranker adds.
fn grade(intent: &Intent, item: &GenItem) -> u8 {
    if item.leaf != intent.leaf {
        return 0;
    }
    let Some(noun) = intent.noun else {
        // A category query: every item of the category answers it; better ones more.
        return if item.quality >= 0.7 { 3 } else { 2 };
    };
    if item.noun != noun {
        return 1;
    }
    let mut g = 2;
    let holds = intent.brand.as_deref().is_none_or(|b| b == item.brand)
        && intent.attribute.is_none_or(|a| a == item.attribute)
        && intent.adjective.is_none_or(|a| a == item.adjective);
    if holds {
        g += 1;
    }
    if item.quality >= 0.7 {
        g += 1;
    }
    g
}

/// Writes catalog.jsonl, users.jsonl, events.jsonl, queries.txt and labels*.csv.
/// The stages draw from one PRNG in this order, so the files depend on the seed
/// alone.
pub(crate) fn generate(
    items_n: usize,
    users_n: usize,
    seed: u64,
    out: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let write = |name: &str, text: &str| {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    };
    let mut rng = Rng(seed);
    let (items, catalog) = gen_items(&mut rng, items_n)?;
    write("catalog.jsonl", &catalog)?;
    // Items by leaf, for user behaviour and labels.
    let mut by_leaf: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        by_leaf.entry(it.leaf).or_default().push(i);
    }
    let (users, events) = gen_users(&mut rng, users_n, &items, &by_leaf)?;
    write("users.jsonl", &users)?;
    write("events.jsonl", &events)?;
    let log = gen_queries(&mut rng, &items, &by_leaf);
    write("queries.txt", &log.queries)?;
    write("labels.csv", &log.labels)?;
    write("labels-train.csv", &log.train)?;
    write("labels-test.csv", &log.test)
}

/// The items, and the catalog (JSONL, import format) that describes them.
fn gen_items(rng: &mut Rng, items_n: usize) -> anyhow::Result<(Vec<GenItem>, String)> {
    let tops: Vec<&str> = {
        let mut t: Vec<&str> = LEAVES.iter().map(|l| top_of(l.0)).collect();
        t.dedup();
        t
    };
    let mut items = Vec::with_capacity(items_n);
    let mut catalog = String::new();
    for i in 0..items_n {
        let leaf = rng.below(LEAVES.len());
        let (path, nouns, (attr_key, attr_values), (lo, hi)) = LEAVES[leaf];
        let top = tops.iter().position(|t| *t == top_of(path)).unwrap_or(0);
        let noun = *rng.pick(nouns);
        let adjective = *rng.pick(ADJECTIVES);
        let brand = brand_name(top, rng.below(6));
        let attribute = *rng.pick(attr_values);
        let quality = rng.f();
        // Log-uniform within the band, nudged up by quality.
        let price =
            (lo * (hi / lo).powf((rng.f() * 0.8 + quality * 0.2).min(1.0)) * 100.0).round() / 100.0;
        let rating = (2.5 + 2.5 * quality + (rng.f() - 0.5) * 0.6).clamp(1.0, 5.0);
        let popularity = 1.0 / ((i % 997) as f64 + 1.0).powf(0.8) * (0.5 + quality);
        let review_count = (popularity * 4000.0 * rng.f()).round() as u64;
        let id = format!("p{i:06}");
        let title = format!("{brand} {adjective} {noun}, {attribute}");
        let description = format!(
            "The {brand} {noun} is a {adjective} choice in {}. {}: {attribute}. Rated {rating:.1} by {review_count} shoppers.",
            path.to_lowercase(),
            attr_key
        );
        let row = json!({
            "id": id, "title": title, "description": description, "category": path, "brand": brand,
            "price": price, "rating": (rating * 10.0).round() / 10.0, "review_count": review_count,
            "attributes": { attr_key: attribute },
        });
        writeln!(catalog, "{row}")?;
        items.push(GenItem {
            id,
            leaf,
            noun,
            adjective,
            brand,
            attribute,
            quality,
            popularity,
        });
    }
    Ok((items, catalog))
}

/// Users with one to three favourite leaves (users.jsonl) and their event log
/// (events.jsonl): views, carts and purchases over days, following those tastes.
fn gen_users(
    rng: &mut Rng,
    users_n: usize,
    items: &[GenItem],
    by_leaf: &BTreeMap<usize, Vec<usize>>,
) -> anyhow::Result<(String, String)> {
    let leaves_with_items: Vec<usize> = by_leaf.keys().copied().collect();
    let mut users = String::new();
    let mut events = String::new();
    let start_ms: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let mut event_n = 0u64;
    for u in 0..users_n {
        let id = format!("u{u:05}");
        let k = 1 + rng.below(3);
        let favourites: Vec<usize> = (0..k).map(|_| *rng.pick(&leaves_with_items)).collect();
        let names: Vec<&str> = favourites.iter().map(|l| LEAVES[*l].0).collect();
        writeln!(
            users,
            "{}",
            json!({ "id": id, "favourite_categories": names })
        )?;
        let n_events = 5 + rng.below(40);
        let mut t = start_ms + (rng.f() * 86_400_000.0) as i64;
        for _ in 0..n_events {
            // Mostly favourites, sometimes browsing elsewhere.
            let leaf = if rng.f() < 0.85 {
                *rng.pick(&favourites)
            } else {
                *rng.pick(&leaves_with_items)
            };
            let pool = &by_leaf[&leaf];
            // Meet popular items more often: best of three draws by popularity.
            let item = (0..3)
                .map(|_| pool[rng.below(pool.len())])
                .max_by(|a, b| items[*a].popularity.total_cmp(&items[*b].popularity))
                .unwrap_or(pool[0]);
            let it = &items[item];
            let r = rng.f();
            let kind = if r < 0.08 + 0.12 * it.quality {
                "purchase"
            } else if r < 0.25 + 0.1 * it.quality {
                "cart"
            } else {
                "view"
            };
            t += (rng.f() * 3.0 * 3_600_000.0) as i64;
            event_n += 1;
            writeln!(
                events,
                "{}",
                json!({ "event_id": format!("e{event_n:08}"), "user_id": id, "item_id": it.id, "type": kind, "timestamp_ms": t })
            )?;
        }
    }
    Ok((users, events))
}

/// The query log and its graded labels (all, and split train/test by query).
struct QueryLog {
    queries: String,
    labels: String,
    train: String,
    test: String,
}

/// Queries shoppers would type about the catalog's items, each graded against
/// every item of its leaf (see [`grade`]); popular queries repeat in the log.
fn gen_queries(
    rng: &mut Rng,
    items: &[GenItem],
    by_leaf: &BTreeMap<usize, Vec<usize>>,
) -> QueryLog {
    let n_queries = (items.len() / 25).clamp(20, 2000);
    let header = String::from("query,item_id,grade\n");
    let mut log = QueryLog {
        queries: String::new(),
        labels: header.clone(),
        train: header.clone(),
        test: header,
    };
    let mut seen = std::collections::HashSet::new();
    let mut made = 0;
    let mut attempts = 0;
    while made < n_queries && attempts < n_queries * 20 {
        attempts += 1;
        // Intents come from real items, so every query has relevant answers.
        let anchor = &items[rng.below(items.len())];
        let intent = intent_about(rng, anchor);
        if !seen.insert(intent.text.clone()) {
            continue;
        }
        made += 1;
        let held_out = made % 5 == 0;
        let mut graded: Vec<(u8, &str)> = by_leaf[&intent.leaf]
            .iter()
            .map(|&i| (grade(&intent, &items[i]), items[i].id.as_str()))
            .filter(|(g, _)| *g > 0)
            .collect();
        graded.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        graded.truncate(300);
        for (g, id) in graded {
            let line = format!("{},{id},{g}\n", csv_field(&intent.text));
            log.labels.push_str(&line);
            if held_out {
                log.test.push_str(&line);
            } else {
                log.train.push_str(&line);
            }
        }
        // The log repeats popular queries, as real logs do (Zipf-ish).
        let repeats = 1 + (20 / made).min(20);
        for _ in 0..repeats {
            log.queries.push_str(&intent.text);
            log.queries.push('\n');
        }
    }
    log
}

/// A shopper's intent about `anchor`: its noun alone, or narrowed by its brand,
/// attribute or adjective, or its whole category by the leaf's own name.
fn intent_about(rng: &mut Rng, anchor: &GenItem) -> Intent {
    let mut intent = Intent {
        text: String::new(),
        leaf: anchor.leaf,
        noun: Some(anchor.noun),
        brand: None,
        attribute: None,
        adjective: None,
    };
    let mut words = Vec::new();
    match rng.below(5) {
        0 => {}
        1 => {
            intent.brand = Some(anchor.brand.clone());
            words.push(anchor.brand.to_lowercase());
        }
        2 => {
            intent.attribute = Some(anchor.attribute);
        }
        3 => {
            intent.adjective = Some(anchor.adjective);
            words.push(anchor.adjective.to_owned());
        }
        _ => {
            // Browse the category by its own name.
            intent.noun = None;
            let leaf_name = LEAVES[anchor.leaf]
                .0
                .rsplit(" > ")
                .next()
                .unwrap_or_default();
            words.push(leaf_name.to_lowercase());
        }
    }
    if let Some(noun) = intent.noun {
        words.push(noun.to_owned());
    }
    if let Some(a) = intent.attribute {
        words.push(a.to_lowercase());
    }
    intent.text = words.join(" ");
    intent
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_labels_are_consistent() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        generate(500, 20, 7, a.path()).expect("generate");
        generate(500, 20, 7, b.path()).expect("generate");
        for f in [
            "catalog.jsonl",
            "users.jsonl",
            "events.jsonl",
            "queries.txt",
            "labels.csv",
        ] {
            let x = std::fs::read(a.path().join(f)).expect("read");
            let y = std::fs::read(b.path().join(f)).expect("read");
            assert!(x == y, "{f} differs between runs with the same seed");
        }
        let catalog = std::fs::read_to_string(a.path().join("catalog.jsonl")).expect("read");
        assert_eq!(catalog.lines().count(), 500);
        let labels = std::fs::read_to_string(a.path().join("labels.csv")).expect("read");
        let ids: std::collections::HashSet<String> = catalog
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json")["id"]
                    .as_str()
                    .expect("id")
                    .to_owned()
            })
            .collect();
        for line in labels.lines().skip(1) {
            let parts: Vec<&str> = line.rsplitn(3, ',').collect();
            let grade: u8 = parts[0].parse().expect("grade");
            assert!((1..=4).contains(&grade));
            assert!(
                ids.contains(parts[1]),
                "label names an unknown item {}",
                parts[1]
            );
        }
        let other = tempfile::tempdir().expect("tempdir");
        generate(500, 20, 8, other.path()).expect("generate");
        assert_ne!(
            std::fs::read(other.path().join("catalog.jsonl")).expect("read"),
            catalog.into_bytes(),
            "another seed, another catalog"
        );
    }
}
