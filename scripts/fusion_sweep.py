#!/usr/bin/env python3
"""Reciprocal-rank fusion settings and per-list depths, measured offline.

`meshctl ranker train` keeps the rows Search fed the ranker (DIR/rows: every
candidate's retrieval columns, its place in the dense and lexical lists). From them
this recomputes the hybrid (fused) order for other fusion constants, list weights and
list depths, without a mesh, and prints hybrid NDCG@10, recall@100 and candidate
recall as `meshctl eval` computes them (relevant = grade >= 2; the ideal ranking from
every judged item, judged.csv). Pick settings on `--split train`, report on dev.

    .venv/bin/python scripts/fusion_sweep.py DIR/rows [--split dev]

The service's default setting (search.fusion in crates/ranking/src/fusion.rs: k =
20, lexical weighted 2) is SERVICE_K and SERVICE_LEXICAL_WEIGHT here; the first line
printed is that setting, so the rows of a mesh on the defaults reproduce `meshctl
eval`'s hybrid. Depths are measured in it.
"""

import argparse
import collections
import csv
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
# The metrics as meshctl eval computes them (and as the encoder trainer reports them).
from train_encoder import DEPTH, ndcg10, recall  # noqa: E402


def load(rows_dir, split):
    """Per query: (labels, [(item, dense rank or None, lexical rank or None)])."""
    cols = json.load(open(f"{rows_dir}/schema.json"))["columns"]
    at = {n: i for i, n in enumerate(cols)}
    x = np.fromfile(f"{rows_dir}/{split}.f32", dtype="<f4").reshape(-1, len(cols))
    with open(f"{rows_dir}/{split}.csv") as f:
        meta = list(csv.DictReader(f))
    if len(meta) != len(x):
        raise SystemExit(f"{rows_dir}: {len(meta)} rows in {split}.csv, {len(x)} in {split}.f32")
    judged = collections.defaultdict(dict)
    with open(f"{rows_dir}/judged.csv") as f:
        for r in csv.DictReader(f):
            judged[r["qid"]][r["item_id"]] = float(r["grade"])

    def rank(found, rank_log):
        # rank_log is ln(1 + rank) (fusion.rs retrieval_row); found says it was listed.
        return int(round(math.expm1(rank_log))) if found > 0.5 else None

    queries = collections.defaultdict(list)
    for m, row in zip(meta, x):
        queries[m["qid"]].append(
            (
                m["item_id"],
                rank(row[at["dense_found"]], row[at["dense_rank_log"]]),
                rank(row[at["lexical_found"]], row[at["lexical_rank_log"]]),
            )
        )
    return {q: (judged[q], c) for q, c in queries.items()}


# The ranking service's default search.fusion (checked against fusion.rs by
# test_fusion_sweep.py).
SERVICE_K = 20.0
SERVICE_LEXICAL_WEIGHT = 2.0


def fused(candidates, k, dense_weight, lexical_weight, dense_depth, lexical_depth):
    """The candidates the depths keep, in weighted reciprocal-rank order (ties by id)."""
    scored = []
    for item, d, lx in candidates:
        s, kept = 0.0, False
        if d is not None and d < dense_depth:
            s, kept = s + dense_weight / (k + d + 1), True
        if lx is not None and lx < lexical_depth:
            s, kept = s + lexical_weight / (k + lx + 1), True
        if kept:
            scored.append((-s, item))
    scored.sort()
    return [i for _, i in scored]


def measure(queries, k=SERVICE_K, dense_weight=1.0, lexical_weight=SERVICE_LEXICAL_WEIGHT, dense_depth=10**9, lexical_depth=10**9):
    """Mean hybrid NDCG@10, recall@100 and candidate recall over the queries."""
    n, r, c = [], [], []
    for labels, cands in queries.values():
        ranked = fused(cands, k, dense_weight, lexical_weight, dense_depth, lexical_depth)
        for out, v in ((n, ndcg10(ranked, labels)), (r, recall(ranked, labels, DEPTH)),
                       (c, recall(ranked, labels, len(ranked)))):
            if v is not None:
                out.append(v)
    mean = lambda v: sum(v) / len(v) if v else 0.0  # noqa: E731
    return mean(n), mean(r), mean(c)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", help="a ranker training run's rows folder (DIR/rows)")
    ap.add_argument("--split", default="dev", choices=["train", "dev"])
    ap.add_argument("--k", type=float, nargs="+", default=[SERVICE_K, 5, 10, 30, 60])
    ap.add_argument("--lexical-weight", type=float, nargs="+",
                    default=[SERVICE_LEXICAL_WEIGHT, 1.0, 1.25, 1.5, 3.0])
    ap.add_argument("--depths", nargs="+", default=["100:100", "100:200", "200:100", "150:150"],
                    help="dense:lexical list depths to try (at most what the rows hold)")
    a = ap.parse_args()
    queries = load(a.rows, a.split)
    print(f"{len(queries)} {a.split} queries; hybrid NDCG@10, recall@100, candidate recall")
    results = []
    for k in a.k:
        for w in a.lexical_weight:
            m = measure(queries, k=k, lexical_weight=w)
            results.append((m, k, w))
            print(f"k {k:>5g} lexical weight {w:<5g} {m[0]:.4f} {m[1]:.4f} {m[2]:.4f}", flush=True)
    best = max(results)
    print(f"best NDCG@10: k {best[1]:g}, lexical weight {best[2]:g}: {best[0][0]:.4f} {best[0][1]:.4f}")
    for spec in a.depths:
        dd, ld = (int(v) for v in spec.split(":"))
        m = measure(queries, dense_depth=dd, lexical_depth=ld)
        print(f"depth dense {dd} lexical {ld}: {m[0]:.4f} {m[1]:.4f} {m[2]:.4f}")


if __name__ == "__main__":
    main()
