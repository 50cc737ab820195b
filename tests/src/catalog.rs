//! A small, hand-written catalog in the import format (JSONL), for tests that need
//! real items with clear topics.

use std::path::Path;

/// (id, title, category, brand, price, description)
const ITEMS: &[(&str, &str, &str, &str, f64, &str)] = &[
    (
        "hp-1",
        "Wireless noise cancelling over-ear headphones",
        "Electronics > Audio > Headphones",
        "Sonora",
        199.0,
        "Bluetooth headphones with active noise cancellation and 30 hour battery.",
    ),
    (
        "hp-2",
        "Studio monitor headphones, closed back",
        "Electronics > Audio > Headphones",
        "Acme",
        129.0,
        "Wired headphones for mixing and recording.",
    ),
    (
        "hp-3",
        "True wireless earbuds with charging case",
        "Electronics > Audio > Earbuds",
        "Sonora",
        89.0,
        "In-ear earbuds, noise cancelling, water resistant.",
    ),
    (
        "sp-1",
        "Portable bluetooth speaker",
        "Electronics > Audio > Speakers",
        "Acme",
        59.0,
        "Waterproof speaker with deep bass.",
    ),
    (
        "lt-1",
        "14 inch ultrabook laptop, 16GB RAM",
        "Electronics > Computers > Laptops",
        "Vertex",
        1099.0,
        "Lightweight laptop with long battery life.",
    ),
    (
        "lt-2",
        "Gaming laptop with RTX graphics",
        "Electronics > Computers > Laptops",
        "Vertex",
        1599.0,
        "High refresh screen gaming notebook.",
    ),
    (
        "kb-1",
        "Mechanical keyboard with RGB backlight",
        "Electronics > Computers > Accessories",
        "Acme",
        79.0,
        "Hot-swappable switches, USB-C.",
    ),
    (
        "rs-1",
        "Men's running shoes, lightweight mesh",
        "Sports > Footwear > Running",
        "Stride",
        119.0,
        "Cushioned running shoes for road running.",
    ),
    (
        "rs-2",
        "Women's trail running shoes",
        "Sports > Footwear > Running",
        "Stride",
        139.0,
        "Grippy outsole for trail runs.",
    ),
    (
        "ys-1",
        "Non-slip yoga mat, 6mm",
        "Sports > Fitness > Yoga",
        "Zenfit",
        35.0,
        "Extra thick yoga mat with carrying strap.",
    ),
    (
        "db-1",
        "Adjustable dumbbells set",
        "Sports > Fitness > Weights",
        "Ironclad",
        249.0,
        "Dumbbells adjustable from 2 to 24 kg.",
    ),
    (
        "fp-1",
        "Non-stick frying pan, 28 cm",
        "Home > Kitchen > Cookware",
        "Chefline",
        39.0,
        "Aluminium frying pan with non-stick coating, induction ready.",
    ),
    (
        "fp-2",
        "Cast iron skillet",
        "Home > Kitchen > Cookware",
        "Ironclad",
        49.0,
        "Pre-seasoned cast iron pan for searing.",
    ),
    (
        "cm-1",
        "Espresso coffee machine with milk frother",
        "Home > Kitchen > Appliances",
        "Barista",
        299.0,
        "15 bar pump espresso maker.",
    ),
    (
        "kn-1",
        "Chef's knife, 20 cm, stainless steel",
        "Home > Kitchen > Knives",
        "Chefline",
        69.0,
        "Forged kitchen knife for slicing and dicing.",
    ),
    (
        "sf-1",
        "Three-seat fabric sofa, grey",
        "Home > Furniture > Sofas",
        "Nordhaus",
        899.0,
        "Comfortable living room sofa.",
    ),
    (
        "lm-1",
        "LED desk lamp with dimmer",
        "Home > Lighting > Lamps",
        "Lumen",
        45.0,
        "Adjustable arm desk lamp.",
    ),
    (
        "tb-1",
        "Kids' building blocks set, 500 pieces",
        "Toys > Construction",
        "Brickly",
        49.0,
        "Colourful bricks for creative building.",
    ),
    (
        "bk-1",
        "Hardcover cookbook: Italian pasta",
        "Books > Cooking",
        "Penfold",
        29.0,
        "Recipes for fresh pasta and sauces.",
    ),
    (
        "bk-2",
        "Science fiction novel, paperback",
        "Books > Fiction",
        "Penfold",
        14.0,
        "A space opera about a generation ship.",
    ),
];

/// Writes the catalog as JSONL to `path`.
pub fn write_jsonl(path: &Path) {
    let mut out = String::new();
    for (id, title, category, brand, price, description) in ITEMS {
        let row = serde_json::json!({
            "id": id, "title": title, "category": category, "brand": brand,
            "price": price, "description": description,
        });
        out.push_str(&row.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).expect("write test catalog");
}

/// Where `scripts/setup` exported the models (`$RANKMESH_MODELS`, else `models/`).
pub fn models_dir() -> std::path::PathBuf {
    std::env::var_os("RANKMESH_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}
