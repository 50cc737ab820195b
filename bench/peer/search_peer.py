"""The Python comparison peer for `meshctl bench` (issue 20, item 3(c)): the mesh's
Search and Embed pipeline written as a careful Python team would write it, one
grpcio process with onnxruntime, so `scripts/bench` can hold the Rust mesh's
Search capacity against it at the same rates, with the same load generator.

Same models, catalog and queries as the mesh:
  - encoder: <models>/encoder/int8 (what the embedding service runs on CPU), its
    tokenizer.json unpadded and truncated at 256 tokens, `sentence_embedding`
    (mean-pooled, unit length); query vectors in a 10,000-entry LRU keyed by the
    lower-cased, space-collapsed query, as the embedding service keeps them;
  - dense retrieval: usearch HNSW, the same library and version as the embedding
    service (inner product, f16 graph, M 16, efConstruction 128, efSearch 160),
    its candidates rescored exactly on the f32 vectors; item text as
    crates/embedding/src/catalog.rs makes it (title. brand. category. 400
    description characters);
  - lexical retrieval: BM25 as tantivy scores it (k1 1.2, b 0.75, tantivy's idf
    and its lossy one-byte field norms) over the same analyzed fields and boosts as
    crates/feature/src/lexical.rs (title 2, brand 1.5, category 1, description
    0.5, title trigrams 0.25), the text cut by a port of crates/feature/src/text.rs;
  - 200 candidates from each source, reciprocal-rank fusion with k = 60, the
    feature matrix of crates/feature/src/features.rs (schema rankmesh.ltr:2, 38
    columns in its order) with the 8 retrieval columns of
    crates/ranking/src/fusion.rs, scored by <models>/ranker/model.onnx (the ranker
    `meshctl up` deploys; its `feature_columns` metadata is checked against ours at
    startup), top k (default 10 from the client) with title, category, brand,
    price and sources, and `stage_ms` under the mesh's stage names.

Where it differs, and why:
  - One process, no network hops: what the mesh does in three services and
    three internal RPCs per Search happens in one address space here (the word
    and trigram BM25 passes run once and serve both the candidate list and the
    bm25 columns). No cross-request batching: each Search runs its query through
    the encoder and its rows through the ranker alone (the mesh's batchers merge
    concurrent calls); the dense stage runs on a pool thread beside BM25.
  - Python threads share one interpreter lock: tokenizing, BM25 bookkeeping and
    the per-candidate text features run on one core at a time; onnxruntime,
    numpy and usearch release the lock. `meshctl bench` opens one HTTP/2
    connection, so several processes behind SO_REUSEPORT would not spread its
    load (that takes an L7 proxy in front); this peer is one process.
  - No events store: popularity and user columns are 0, as they are on a mesh
    `meshctl up` started (it imports the catalog, not events.jsonl).
  - Stemming is PyStemmer's English Snowball, tantivy's is frostem's: the same
    algorithm, possibly another Snowball release; Unicode letter classes are
    Python's, not Rust's (the generated catalogs are ASCII).
  - Float32 sums may come out in another order than tantivy's; HNSW graphs built
    twice differ; a filtered dense search is exact over the matching items
    (the mesh goes exact only below 20,000 matches). Recommend and Featurize
    answer UNIMPLEMENTED; deadlines are honoured only by skipping requests whose
    caller has already gone.

Run: python bench/peer/search_peer.py --catalog STORE/catalog.jsonl
     --models models --port 26500; it prints `ready on 127.0.0.1:PORT` once
serving. Item vectors and the HNSW graph are cached beside the catalog
(peer-vectors-<hash>.npy, peer-hnsw-<hash>.usearch), so only the first start
embeds the catalog. Dependencies: bench/peer/requirements.txt.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import collections
import concurrent.futures as cf
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import unicodedata
from pathlib import Path

import numpy as np
import onnxruntime as ort
import Stemmer
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein
from tokenizers import Tokenizer
from usearch.index import Index

log = logging.getLogger("search_peer")

# Limits and defaults, as in crates/proto (limits), ranking (SearchConfig), fusion.
MAX_QUERY_BYTES, MAX_RANKING_K, MAX_ID_BYTES = 1024, 100, 128
MAX_BATCH_TEXTS, MAX_TEXT_BYTES, MAX_MESSAGE_BYTES = 256, 16 * 1024, 16 * 1024 * 1024
CANDIDATES, RRF_K, MAX_TOKENS, QUERY_CACHE_ENTRIES = 200, 60.0, 256, 10_000
TOKEN_BUDGET, DESCRIPTION_CHARS = 8192, 400
HNSW = dict(connectivity=16, expansion_add=128, expansion_search=160)

# ---- Text analysis: a port of crates/feature/src/text.rs ------------------------
STOPWORDS = frozenset("a an and the for with of to on in or by at &".split())
_UNIT_SPELLINGS = {
    "in": "in inch inches \"", "ft": "ft feet foot '", "lb": "lb lbs pound pounds",
    "gal": "gal gallon gallons", "oz": "oz ounce ounces", "qt": "qt quart quarts",
    "volt": "v volt volts", "watt": "w watt watts", "amp": "amp amps", "sq": "sq square",
    "cu": "cu cubic", "mm": "mm", "cm": "cm", "yd": "yd yard yards", "pack": "pk pack",
    "count": "ct count",
}
UNITS = {alias: canon for canon, aliases in _UNIT_SPELLINGS.items() for alias in aliases.split()}
# Alphanumeric runs keeping '.' and '/' between digits; a quote right after a digit
# is a token of its own (inches, feet).
_RAW = re.compile(r"""((?:[^\W_]|(?<=[0-9])[./](?=[0-9]))+)|(?<=[0-9])(["'])""")
_RUNS = re.compile(r"[0-9./]+|[^0-9./]+")
_has_digit = re.compile(r"[0-9]").search
_stemmers = threading.local()  # PyStemmer objects are not thread-safe
_analyzed: dict[str, tuple[str, ...]] = {}


def is_unit(t: str) -> bool:
    return UNITS.get(t) == t


def is_number(t: str) -> bool:
    return bool(t) and "0" <= t[0] <= "9"


def _canon(p: str) -> str:
    if is_number(p):
        return (p.rstrip("0").rstrip(".") or "0") if "." in p and "/" not in p else p
    return UNITS.get(p, p)


def _stem(t: str) -> str:
    st = getattr(_stemmers, "s", None)
    if st is None:
        st = _stemmers.s = Stemmer.Stemmer("english")
    return st.stemWord(t)


def _analyze(raw: str) -> tuple[str, ...]:
    """One raw token's analyzed tokens (memoised: catalog words repeat a lot)."""
    if len(raw) > 40:  # longer runs are noise: hashes, URLs
        return ()
    parts = _RUNS.findall(raw)
    if len(parts) > 1:
        out = [_canon(p) for p in parts]
        # The joined form too ("2x4x8"), unless only a number and its unit ("12ft").
        if not (len(parts) == 2 and is_number(parts[0]) and parts[1] in UNITS):
            out.append(raw)
    else:
        out = [_canon(raw)]
    return tuple(t if _has_digit(t) or is_unit(t) else _stem(t) for t in out)


def tokens(text: str) -> list[str]:
    """Analyzed tokens: lower case, sizes and model numbers split (joined form
    kept), units canonical, numbers tidy, words stemmed."""
    low = text.lower() if text.isascii() else "".join(c.lower() for c in text)
    out: list[str] = []
    for word, quote in _RAW.findall(low):
        raw = word or quote
        a = _analyzed.get(raw)
        if a is None:
            a = _analyze(raw)
            if len(_analyzed) < 1_000_000:
                _analyzed[raw] = a
        out.extend(a)
    return out


def trigrams(toks) -> list[str]:
    out = []
    for t in toks:
        p = f"#{t}#"
        if len(p) < 5:
            out.append(t)
        else:
            out.extend(p[i:i + 3] for i in range(len(p) - 2))
    return out


def sizes(toks) -> tuple:
    """(number, unit or None) for each bare number in `toks`."""
    return tuple(
        (t, toks[i + 1] if i + 1 < len(toks) and is_unit(toks[i + 1]) else None)
        for i, t in enumerate(toks) if is_number(t) and not any(c.isalpha() for c in t))


def normalize_category(path: str) -> str:
    return " > ".join(s for s in (p.strip().lower() for p in path.split(">")) if s)


class Title:
    """What the text features read of a title, analyzed once per item."""
    __slots__ = ("tokens", "first", "grams", "content", "counts", "bigrams", "joined", "sizes", "lead")

    def __init__(self, text: str):
        self.tokens = tokens(text)
        self.first = {}  # each word's first position
        for i, t in enumerate(self.tokens):
            self.first.setdefault(t, i)
        self.grams = frozenset(trigrams(self.tokens))
        self.content = [t for t in self.tokens if t not in STOPWORDS]
        self.counts = dict(collections.Counter(self.content))
        self.bigrams = frozenset(zip(self.content, self.content[1:]))
        self.joined = f" {' '.join(self.content)} "
        self.sizes = sizes(self.tokens)
        self.lead = self.content[0] if self.content else None


# ---- The catalog -----------------------------------------------------------------
class Catalog:
    """Items as the feature service stores them (trimmed, category tidied)."""

    def __init__(self, path: Path):
        self.ids, self.titles, self.categories, self.brands = [], [], [], []
        self.descriptions, prices, static = [], [], []
        for n, line in enumerate(path.open(encoding="utf-8"), 1):
            if not line.strip():
                continue
            r = json.loads(line)
            id_, title = str(r.get("id") or "").strip(), (r.get("title") or "").strip()
            if not id_ or not title:
                log.warning("%s:%d: no id or title; skipped", path, n)
                continue
            price, rating = r.get("price"), r.get("rating")
            self.ids.append(id_)
            self.titles.append(title)
            self.categories.append(" > ".join(s.strip() for s in (r.get("category") or "").split(">") if s.strip()))
            self.brands.append((r.get("brand") or "").strip())
            self.descriptions.append(r.get("description") or "")
            prices.append(math.nan if price is None else float(price))
            static.append([0.0 if price is None else math.log1p(price), float(price is not None),
                           rating or 0.0, math.log1p(r.get("review_count") or 0), 0.0])
        self.prices = np.array(prices)
        self.norm_categories = [normalize_category(c) for c in self.categories]
        self.brand_keys = [b.lower() for b in self.brands]
        self.title_info = [Title(t) for t in self.titles]
        # title_tokens_log, price_log, has_price, rating, review_count_log,
        # popularity_log (no events: 0): the columns that only the item decides
        self.static = np.array([[math.log1p(len(a.tokens)), *s] for a, s in zip(self.title_info, static)],
                               dtype=np.float32)
        self.vocabulary = sorted({w for a in self.title_info for w in a.tokens})
        self.category_words = [frozenset(tokens(c)) for c in self.categories]
        self.brand_phrases = [f" {' '.join(t)} " if (t := tokens(b)) else None for b in self.brand_keys]

    def text(self, i: int) -> str:
        """The text the embedding service embeds for item i."""
        parts = [self.titles[i]] + [p for p in (self.brands[i], self.categories[i]) if p]
        d = self.descriptions[i].strip()[:DESCRIPTION_CHARS]
        return ". ".join(parts + ([d] if d else []))

    def mask(self, f) -> np.ndarray | None:
        """Items passing a proto Filters (checked as the mesh checks them), None
        when it filters nothing."""
        if len(f.category_prefix.encode()) > 256:
            raise Invalid(f"filters.category_prefix: {len(f.category_prefix.encode())} bytes; at most 256")
        for name in ("min_price", "max_price"):
            if f.HasField(name) and not (math.isfinite(v := getattr(f, name)) and v >= 0):
                raise Invalid(f"filters.{name}: must be a finite number >= 0, got {v}")
        if f.HasField("min_price") and f.HasField("max_price") and f.max_price < f.min_price:
            raise Invalid(f"filters.max_price: {f.max_price} is below min_price {f.min_price}")
        if len(f.brands) > 64 or any(len(b.encode()) > 256 for b in f.brands):
            raise Invalid("filters.brands: at most 64 brands of at most 256 bytes each")
        m = None
        if p := normalize_category(f.category_prefix):
            m = np.fromiter((c == p or c.startswith(p + " > ") for c in self.norm_categories), bool, len(self.ids))
        if f.HasField("min_price") or f.HasField("max_price"):
            lo = f.min_price if f.HasField("min_price") else -math.inf
            hi = f.max_price if f.HasField("max_price") else math.inf
            with np.errstate(invalid="ignore"):
                price = (self.prices >= lo) & (self.prices <= hi)
            m = price if m is None else m & price
        brands = {b.strip().lower() for b in f.brands if b.strip()}
        if brands:
            b = np.fromiter((k in brands for k in self.brand_keys), bool, len(self.ids))
            m = b if m is None else m & b
        return m


# ---- BM25, scored as tantivy scores it -------------------------------------------
K1, B = 1.2, 0.75


def _field_norm(b: int) -> int:
    """tantivy's field-norm byte b as a token count (Lucene's SmallFloat, 24 exact)."""
    if b < 24:
        return b
    bits, shift = (b - 24) & 7, ((b - 24) >> 3) - 1
    return 24 + (bits if shift < 0 else (bits | 8) << shift)


# A field of n tokens counts as the largest of these <= n (one byte per field).
FIELD_NORMS = [_field_norm(b) for b in range(256)]
FIELDS = (("title", 2.0), ("description", 0.5), ("brand", 1.5), ("category", 1.0))
GRAM_BOOST = 0.25


class Lexical:
    """Postings per (field, token): doc numbers and each doc's BM25 tf factor."""

    def __init__(self, cat: Catalog):
        self.n = len(cat.ids)
        texts = {"title": [t.tokens for t in cat.title_info],
                 "description": [tokens(d) for d in cat.descriptions],
                 "brand": [tokens(b) for b in cat.brands],
                 "category": [tokens(c) for c in cat.categories]}
        texts["grams"] = [trigrams(t) for t in texts["title"]]
        self.postings: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        for field, docs in texts.items():
            avg = sum(map(len, docs)) / max(self.n, 1) or 1.0  # 0: no term of the field matches
            norm = np.array([K1 * (1 - B + B * FIELD_NORMS[bisect.bisect_right(FIELD_NORMS, len(d)) - 1] / avg)
                             for d in docs], dtype=np.float32)
            acc: dict[str, tuple[list, list]] = collections.defaultdict(lambda: ([], []))
            for doc, toks in enumerate(docs):
                for t, tf in collections.Counter(toks).items():
                    a = acc[t]
                    a[0].append(doc)
                    a[1].append(tf)
            for t, (ds, tfs) in acc.items():
                ds, tfs = np.array(ds, dtype=np.int32), np.array(tfs, dtype=np.float32)
                self.postings[(field, t)] = (ds, tfs / (tfs + norm[ds]))

    def df(self, field: str, term: str) -> int:
        p = self.postings.get((field, term))
        return 0 if p is None else len(p[0])

    def _idf(self, df: int) -> float:
        return math.log1p((self.n - df + 0.5) / (df + 0.5))

    def _score(self, terms) -> np.ndarray:
        s = np.zeros(self.n, dtype=np.float32)
        for field, term, boost in terms:
            p = self.postings.get((field, term))
            if p is not None:
                s[p[0]] += np.float32(self._idf(len(p[0])) * (1 + K1) * boost) * p[1]
        return s

    def scores(self, qtokens: list[str]):
        """Word and title-trigram BM25 of every item, and the title idf of each
        query token (the feature service's QueryScores, over the whole catalog)."""
        words = self._score((f, t, b) for t in sorted(set(qtokens)) for f, b in FIELDS)
        grams = self._score(("grams", g, 1.0) for g in sorted(set(trigrams(qtokens))))
        idf = {t: max(0.0, self._idf(self.df("title", t))) for t in set(qtokens)}
        return words, grams, idf

    def top(self, words, grams, k: int, mask) -> list[tuple[int, float]]:
        total = words + np.float32(GRAM_BOOST) * grams
        hit = total > 0 if mask is None else (total > 0) & mask
        docs = np.flatnonzero(hit)
        if len(docs) > k:
            docs = docs[np.argpartition(-total[docs], k - 1)[:k]]
        docs = docs[np.lexsort((docs, -total[docs]))]
        return [(int(d), float(total[d])) for d in docs]


# ---- The feature matrix: crates/feature/src/features.rs -------------------------
SCHEMA_NAME, SCHEMA_VERSION = "rankmesh.ltr", 2
COLUMNS = [
    "bm25", "bm25_trigram", "title_overlap", "title_idf_overlap", "title_fuzzy_overlap",
    "title_fuzzy_idf_overlap", "query_missed_idf", "title_precision", "title_bigram_overlap",
    "title_trigram_dice", "head_in_title", "head_position", "first_match_position",
    "title_lead_in_query", "query_in_title", "number_match", "number_conflict",
    "category_overlap", "brand_in_query", "query_tokens", "query_idf", "query_has_number",
    "title_tokens_log", "price_log", "has_price", "rating", "review_count_log",
    "popularity_log", "user_category_affinity", "user_top_category_affinity",
    "user_brand_affinity", "user_viewed", "user_carted", "user_bought", "user_events_log",
    "bm25_relative", "bm25_trigram_relative", "title_fuzzy_idf_gap",
]
RETRIEVAL_COLUMNS = ["dense_similarity", "dense_gap", "dense_found", "dense_rank_log",
                     "lexical_ratio", "lexical_found", "lexical_rank_log", "rrf"]
USER_COLUMNS = 7  # no events store: an anonymous (cold-start) user's zeros


def near_words(t: str, vocabulary: list[str]) -> frozenset[str]:
    """Words of the sorted `vocabulary` that start with t or are within 1 edit of
    it (2 from 8 bytes on)."""
    edits = 2 if len(t.encode()) >= 8 else 1
    lo = bisect.bisect_left(vocabulary, t)
    hi = bisect.bisect_left(vocabulary, t + "\U0010ffff", lo)
    close = process.extract(t, vocabulary, scorer=Levenshtein.distance, score_cutoff=edits, limit=None)
    return frozenset(vocabulary[lo:hi]).union(w for w, _, _ in close)


class Query:
    """What the query says, worked out once per request."""

    def __init__(self, text: str, idf: dict[str, float], vocabulary: list[str]):
        self.all = tokens(text)
        self.content = list(dict.fromkeys(t for t in self.all if t not in STOPWORDS))
        self.set = frozenset(self.content)
        words = [t for t in self.all if t not in STOPWORDS]
        self.bigrams = set(zip(words, words[1:]))
        self.grams = frozenset(trigrams(self.content))
        self.head = next((t for t in reversed(self.content)
                          if not is_number(t) and not is_unit(t) and len(t) > 1), None)
        self.joined = f" {' '.join(words)} "
        self.sizes = sizes(self.all)
        self.idf = [idf.get(t, 1.0) for t in self.content]
        self.idf_total = sum(self.idf)
        self.zeros, self.never = [0] * len(self.content), [math.inf] * len(self.content)
        # Per content word, the title words it meets within a typo or as a prefix
        # ("drils", "refrig"): looked up once in the catalog's title vocabulary.
        near = {t: near_words(t, vocabulary) for t in self.content if len(t.encode()) >= 4 and not is_number(t)}
        self.content_idf = [(t, idf, near.get(t)) for t, idf in zip(self.content, self.idf)]
        self.n = max(len(self.content), 1)

    def title_row(self, a: Title) -> tuple:
        """How a title matches the query: title_overlap .. number_conflict."""
        words, n, total = a.first, self.n, self.idf_total
        exact_n = exact_idf = fuzzy_n = fuzzy_idf = 0.0
        for t, idf, near in self.content_idf:
            if t in words:
                exact_n += 1
                exact_idf += idf
            elif near is None or near.isdisjoint(words):
                continue
            fuzzy_n += 1
            fuzzy_idf += idf
        content = a.content
        head_at = words.get(self.head)
        first_at = min(map(words.get, self.content, self.never), default=math.inf)
        size = len(a.tokens) or 1
        number_match = conflict = 0.0
        if self.sizes:
            numbers = {num for num, _ in a.sizes}
            number_match = sum(num in numbers for num, _ in self.sizes) / len(self.sizes)
            conflict = float(any(u is not None and any(tu == u for _, tu in a.sizes) and (num, u) not in a.sizes
                                 for num, u in self.sizes))
        return (
            exact_n / n, exact_idf / total if total > 0 else 0.0, fuzzy_n / n,
            fuzzy_idf / total if total > 0 else 0.0, total - fuzzy_idf,
            sum(map(a.counts.get, self.content, self.zeros)) / len(content) if content else 0.0,
            len(self.bigrams & a.bigrams) / len(self.bigrams) if self.bigrams else 0.0,
            2 * len(self.grams & a.grams) / (len(self.grams) + len(a.grams)) if self.grams and a.grams else 0.0,
            float(head_at is not None), 0.0 if head_at is None else (head_at + 1) / size,
            0.0 if first_at == math.inf else (first_at + 1) / size,
            float(a.lead is not None and a.lead in self.set),
            float(len(content) >= 2 and self.joined in a.joined), number_match, conflict,
        )


def feature_matrix(cat: Catalog, text: str, items: list[int], words, grams, idf) -> np.ndarray:
    """The feature service's rows for `items`, in order (38 columns)."""
    q = Query(text, idf, cat.vocabulary)
    qall = frozenset(q.all)
    query_lc = f" {' '.join(q.all)} "
    shape = [len(q.content), q.idf_total, float(any(is_number(t) for t in q.all))]
    rows: list[float] = []
    row, nq = rows.extend, len(qall)
    for i in items:
        row(q.title_row(cat.title_info[i]))
        bp = cat.brand_phrases[i]
        row((len(qall.intersection(cat.category_words[i])) / nq if nq else 0.0,
             float(bp is not None and bp in query_lc)))
    m = np.zeros((len(items), len(COLUMNS)), dtype=np.float32)
    ix = np.array(items, dtype=np.int64)
    m[:, 0], m[:, 1] = words[ix], grams[ix]
    m[:, 2:19] = np.array(rows, dtype=np.float32).reshape(len(items), 17)
    m[:, 19:22] = shape
    m[:, 22:28] = cat.static[ix]
    m[:, :35] = np.nan_to_num(m[:, :35], nan=0.0, posinf=0.0, neginf=0.0)
    # Restated against the request's best candidate: value / max, value - max.
    for dst, src, ratio in ((35, 0, True), (36, 1, True), (37, 5, False)):
        best = m[:, src].max(initial=-np.inf)
        m[:, dst] = (m[:, src] / best if best > 0 else 0.0) if ratio else m[:, src] - best
    return m


# ---- Models ------------------------------------------------------------------------
def session(path: Path, threads: int) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the mesh: no spinning
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def length_groups(lengths: list[int], budget: int = TOKEN_BUDGET) -> list[list[int]]:
    """Texts in groups of similar token length (crates/embedding/src/encoder.rs)."""
    groups, group, real = [], [], 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        n = max(lengths[i], 1)
        padded = (len(group) + 1) * n
        if group and (padded > budget or (len(group) >= 4 and 2 * padded > 3 * (real + n))):
            groups.append(group)
            group, real = [], 0
        real += n
        group.append(i)
    return groups + ([group] if group else [])


class Encoder:
    def __init__(self, directory: Path, threads: int):
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.pad = self.tokenizer.token_to_id("[PAD]") or 0
        self.model_path = directory / "model.onnx"
        self.session = session(self.model_path, threads)
        self.dim = next(o.shape[-1] for o in self.session.get_outputs() if o.name == "sentence_embedding")
        self.cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self.lock = threading.Lock()

    def encode(self, texts: list[str], s: ort.InferenceSession | None = None):
        """Vectors in order, and which texts were truncated."""
        encs = self.tokenizer.encode_batch(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for g in length_groups([len(e.ids) for e in encs]):
            seq = max(len(encs[i].ids) for i in g)
            feeds = {k: np.zeros((len(g), seq), dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
            feeds["input_ids"][:] = self.pad
            for row, i in enumerate(g):
                e = encs[i]
                feeds["input_ids"][row, :len(e.ids)] = e.ids
                feeds["attention_mask"][row, :len(e.ids)] = e.attention_mask
                feeds["token_type_ids"][row, :len(e.ids)] = e.type_ids
            out[g] = (s or self.session).run(["sentence_embedding"], feeds)[0]
        return out, [bool(e.overflowing) for e in encs]

    def query_vector(self, text: str) -> np.ndarray:
        key = " ".join(text.split()).lower()
        with self.lock:
            v = self.cache.get(key)
            if v is not None:
                self.cache.move_to_end(key)
                return v
        v = self.encode([key])[0][0]
        with self.lock:
            self.cache[key] = v
            if len(self.cache) > QUERY_CACHE_ENTRIES:
                self.cache.popitem(last=False)
        return v


def item_vectors(cat: Catalog, enc: Encoder, catalog_path: Path):
    """Item vectors and the HNSW graph, from the cache beside the catalog if there."""
    texts = [cat.text(i) for i in range(len(cat.ids))]
    h = hashlib.sha256(enc.model_path.read_bytes())
    h.update(f"{MAX_TOKENS} {sorted(HNSW.items())}".encode())
    for id_, t in zip(cat.ids, texts):
        h.update(f"{id_}\0{t}\0".encode())
    digest = h.hexdigest()[:16]
    vec_path = catalog_path.parent / f"peer-vectors-{digest}.npy"
    graph_path = catalog_path.parent / f"peer-hnsw-{digest}.usearch"
    if vec_path.exists():
        vectors = np.load(vec_path)
    else:
        started = time.monotonic()
        log.info("embedding %d items (first start; cached in %s)", len(texts), vec_path.name)
        bulk, chunk = session(enc.model_path, os.cpu_count() or 1), 5000
        vectors = np.empty((len(texts), enc.dim), dtype=np.float32)
        for at in range(0, len(texts), chunk):
            vectors[at:at + chunk] = enc.encode(texts[at:at + chunk], bulk)[0]
            log.info("embedded %d of %d", min(at + chunk, len(texts)), len(texts))
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        np.save(vec_path.with_suffix(".tmp.npy"), vectors)
        os.replace(vec_path.with_suffix(".tmp.npy"), vec_path)
        log.info("embedded in %.1f s", time.monotonic() - started)
    index = Index(ndim=vectors.shape[1], metric="ip", dtype="f16", **HNSW)
    if graph_path.exists():
        index.load(str(graph_path))
    else:
        index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=os.cpu_count() or 1)
        index.save(str(graph_path.with_suffix(".tmp")))
        os.replace(graph_path.with_suffix(".tmp"), graph_path)
    return vectors, index


# ---- The services -------------------------------------------------------------------
class Invalid(Exception):
    """A request field the caller must fix (INVALID_ARGUMENT, naming the field)."""


def check_text(field: str, text: str, max_bytes: int, blank_ok: bool = False):
    if not blank_ok and not text.strip():
        raise Invalid(f"{field}: must not be empty")
    if len(text.encode()) > max_bytes:
        raise Invalid(f"{field}: {len(text.encode())} bytes; at most {max_bytes}")


def check_id(field: str, id_: str, blank_ok: bool = False):
    if id_ or not blank_ok:
        if not id_ or len(id_.encode()) > MAX_ID_BYTES or any(c.isspace() or unicodedata.category(c) == "Cc" for c in id_):
            raise Invalid(f"{field}: 1..={MAX_ID_BYTES} bytes without whitespace")


class Peer:
    def __init__(self, args, pb):
        self.pb = pb
        started = time.monotonic()
        self.cat = Catalog(args.catalog)
        self.lexical = Lexical(self.cat)
        log.info("%d items, lexical index in %.1f s", len(self.cat.ids), time.monotonic() - started)
        self.encoder = Encoder(args.models / "encoder" / "int8", args.threads)
        self.vectors, self.index = item_vectors(self.cat, self.encoder, args.catalog)
        self.ranker = session(args.models / "ranker" / "model.onnx", args.threads)
        meta = self.ranker.get_modelmeta().custom_metadata_map
        want = (f"{SCHEMA_NAME}:{SCHEMA_VERSION}", COLUMNS + RETRIEVAL_COLUMNS)
        got = (meta.get("feature_schema"), [c.strip() for c in meta.get("feature_columns", "").split(",")])
        if got != want:
            raise SystemExit(f"ranker schema {got} is not the peer's {want}")
        self.schema = pb.feature.FeatureSchema(name=SCHEMA_NAME, version=SCHEMA_VERSION, columns=want[1])
        self.models = [pb.common.ModelRef(name="encoder", version=1, variant="int8"),
                       pb.common.ModelRef(name="ranker", version=1, variant="fp32")]
        self.dense_pool = cf.ThreadPoolExecutor(args.workers, thread_name_prefix="dense")
        log.info("loaded in %.1f s", time.monotonic() - started)

    def dense(self, query: str, k: int, mask) -> list[tuple[int, float]]:
        q = self.encoder.query_vector(query)
        if mask is None:
            keys = self.index.search(q, k).keys.astype(np.int64)
        else:
            keys = np.flatnonzero(mask)
        sims = self.vectors[keys] @ q  # exact rescoring on the f32 vectors
        best = np.argsort(-sims, kind="stable")[:k]
        return [(int(keys[j]), float(sims[j])) for j in best]

    def search(self, req, context):
        t0 = time.perf_counter()
        pb, cat = self.pb, self.cat
        if not 1 <= req.k <= MAX_RANKING_K:
            raise Invalid(f"k: must be within 1..={MAX_RANKING_K}, got {req.k}")
        query = req.query.strip()
        check_text("query", query, MAX_QUERY_BYTES)
        check_id("user_id", req.user_id, blank_ok=True)
        check_text("routing_key", req.routing_key, MAX_ID_BYTES, blank_ok=True)
        mask = cat.mask(req.filters) if req.HasField("filters") else None
        stage: dict[str, float] = {}

        # Retrieve: dense (encoder, HNSW) on a pool thread while BM25 runs here.
        dense_f = self.dense_pool.submit(self.dense, query, CANDIDATES, mask)
        qtokens = tokens(query)
        words, grams, idf = self.lexical.scores(qtokens)
        if query == "*":  # every item (tantivy's AllQuery, score 1)
            pool = np.arange(len(cat.ids)) if mask is None else np.flatnonzero(mask)
            lex = [(int(i), 1.0) for i in pool[:CANDIDATES]]
        else:
            lex = self.lexical.top(words, grams, CANDIDATES, mask)
        dense = dense_f.result()
        fused: dict[int, list] = {}  # item -> [rrf, dense (rank, score), lexical (rank, score), sources]
        for source, hits in (("dense", dense), ("lexical", lex)):
            for rank, (i, s) in enumerate(hits):
                c = fused.setdefault(i, [0.0, None, None, []])
                c[0] += 1.0 / (RRF_K + rank + 1)
                c[3].append(source)
                c[1 if source == "dense" else 2] = (rank, s)
        order = sorted(fused, key=lambda i: (-fused[i][0], cat.ids[i]))
        t1 = time.perf_counter()
        stage["retrieve"] = (t1 - t0) * 1e3

        if not order:
            return pb.ranking.SearchResponse(trace_id=secrets.token_hex(16), stage_ms=stage)

        # Features: the feature service's 38 columns, then ranking's 8.
        m = feature_matrix(cat, query, order, words, grams, idf)
        dense_top, dense_floor = (dense[0][1], dense[-1][1]) if dense else (0.0, 0.0)
        lex_top = lex[0][1] if lex else 0.0
        retr = []
        for i in order:
            rrf, d, lx, _ = fused[i]
            sim = d[1] if d else dense_floor
            retr.append([sim, dense_top - sim, float(d is not None), math.log1p(d[0] if d else len(dense)),
                         lx[1] / lex_top if lx and lex_top > 0 else 0.0, float(lx is not None),
                         math.log1p(lx[0] if lx else len(lex)), rrf])
        rows = np.hstack([m, np.nan_to_num(np.array(retr, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)])
        t2 = time.perf_counter()
        stage["features"] = (t2 - t1) * 1e3

        # Rank: the ONNX ranker, retrieval order if it gives non-finite scores.
        scores = self.ranker.run(["score"], {"features": rows})[0].reshape(-1)
        degraded, models = [], self.models
        if np.all(np.isfinite(scores)):
            top = np.argsort(-scores, kind="stable")[:req.k]
        else:
            degraded, models = ["ranker"], self.models[:1]
            scores = np.array([fused[i][0] for i in order], dtype=np.float32)
            top = np.arange(min(req.k, len(order)))
        t3 = time.perf_counter()
        stage["rank"] = (t3 - t2) * 1e3
        items = []
        for j in top:
            i = order[j]
            price = cat.prices[i]
            items.append(pb.ranking.RankedItem(
                item_id=cat.ids[i], score=float(scores[j]), title=cat.titles[i],
                category=cat.categories[i], brand=cat.brands[i],
                price=None if math.isnan(price) else float(price), sources=fused[i][3],
                features=rows[j].tolist() if req.explain else ()))
        t4 = time.perf_counter()
        stage["items"], stage["total"] = (t4 - t3) * 1e3, (t4 - t0) * 1e3
        return pb.ranking.SearchResponse(
            items=items, models=models, trace_id=secrets.token_hex(16), degraded=degraded,
            stage_ms=stage, feature_schema=self.schema if req.explain else None)

    def embed(self, req, context):
        pb = self.pb
        if not req.texts:
            raise Invalid("texts: at least one text is required")
        if len(req.texts) > MAX_BATCH_TEXTS:
            raise Invalid(f"texts: {len(req.texts)} texts; at most {MAX_BATCH_TEXTS} per call")
        for i, t in enumerate(req.texts):
            check_text(f"texts[{i}]", t, MAX_TEXT_BYTES)
        vectors, truncated = self.encoder.encode(list(req.texts))
        return pb.embedding.EmbedResponse(
            vectors=[pb.embedding.Vector(values=v) for v in vectors.tolist()], dim=self.encoder.dim,
            truncated=[i for i, t in enumerate(truncated) if t], model=self.models[0])


# ---- gRPC ---------------------------------------------------------------------------
def load_protos(proto_root: Path):
    """Generates the Python stubs from proto/ into a temporary folder and imports them."""
    import grpc_tools
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="rankmesh-peer-pb-")
    files = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    if protoc.main(["protoc", f"-I{proto_root}", f"-I{wkt}", f"--python_out={out}", f"--grpc_python_out={out}", *files]):
        raise SystemExit(f"protoc failed on {proto_root}")
    sys.path.insert(0, out)
    try:
        from rankmesh.common.v1 import common_pb2
        from rankmesh.embedding.v1 import embedding_pb2, embedding_pb2_grpc
        from rankmesh.feature.v1 import feature_pb2
        from rankmesh.ranking.v1 import ranking_pb2, ranking_pb2_grpc
    finally:
        sys.path.remove(out)
        shutil.rmtree(out, ignore_errors=True)
    return argparse.Namespace(common=common_pb2, feature=feature_pb2, ranking=ranking_pb2,
                              embedding=embedding_pb2, ranking_grpc=ranking_pb2_grpc,
                              embedding_grpc=embedding_pb2_grpc)


def handler(fn):
    """A unary handler: INVALID_ARGUMENT for Invalid, INTERNAL (logged) otherwise;
    a request whose caller has already gone is not worked on."""
    import grpc

    def call(self, req, context):
        if not context.is_active():
            context.abort(grpc.StatusCode.CANCELLED, "the caller went away")
        try:
            return fn(req, context)
        except Invalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception:
            log.exception("%s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", type=Path, required=True, help="catalog.jsonl of the store")
    p.add_argument("--models", type=Path, required=True, help="exported models (encoder/, ranker/)")
    p.add_argument("--port", type=int, default=0, help="0: any free port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1),
                   help="gRPC handler threads (default: 2 per core)")
    p.add_argument("--threads", type=int, default=1,
                   help="onnxruntime intra-op threads per session; concurrency comes from --workers")
    p.add_argument("--max-concurrent", type=int, default=0,
                   help="RPCs in progress or queued before RESOURCE_EXHAUSTED (default: 8 per worker)")
    p.add_argument("--proto", type=Path, default=Path(__file__).resolve().parents[2] / "proto")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    pb = load_protos(args.proto)
    peer = Peer(args, pb)
    # The catalog, index and caches are a million long-lived objects: out of the
    # collector's sight, a full collection stops taking hundreds of milliseconds.
    gc.collect()
    gc.freeze()
    ranking = type("Ranking", (pb.ranking_grpc.RankingServiceServicer,), {"Search": handler(peer.search)})
    embedding = type("Embedding", (pb.embedding_grpc.EmbeddingServiceServicer,), {"Embed": handler(peer.embed)})
    server = grpc.server(
        cf.ThreadPoolExecutor(args.workers, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=args.max_concurrent or 8 * args.workers,
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)])
    pb.ranking_grpc.add_RankingServiceServicer_to_server(ranking(), server)
    pb.embedding_grpc.add_EmbeddingServiceServicer_to_server(embedding(), server)
    checks = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    names = ("", "rankmesh.ranking.v1.RankingService", "rankmesh.embedding.v1.EmbeddingService")
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    for n in names:
        checks.set(n, health_pb2.HealthCheckResponse.SERVING)

    def stop(signum, _frame):
        log.info("signal %d: draining", signum)
        for n in names:  # NOT_SERVING first, so balancers stop sending
            checks.set(n, health_pb2.HealthCheckResponse.NOT_SERVING)
        server.stop(grace=5)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"ready on {args.host}:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
