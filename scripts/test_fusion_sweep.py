"""Unit tests of scripts/fusion_sweep.py (run by scripts/test): rows written as
`meshctl ranker train` writes them read back to the right list ranks, the default
setting is the ranking service's (read from crates/ranking/src/fusion.rs) and
fuses as it does (ties by id), and depths and weights change what they should.

    .venv/bin/python -m unittest discover -s scripts -p 'test_*.py'
"""

import json
import math
import os
import re
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import fusion_sweep as fs  # noqa: E402

COLUMNS = ["bm25", "dense_similarity", "dense_found", "dense_rank_log", "lexical_found", "lexical_rank_log", "rrf"]


def write_rows(d, rows, judged):
    """rows: (qid, item, dense rank or None, lexical rank or None)."""
    with open(f"{d}/schema.json", "w") as f:
        json.dump({"name": "rankmesh.ltr", "version": 2, "columns": COLUMNS}, f)
    x = []
    with open(f"{d}/dev.csv", "w") as f:
        f.write("qid,grade,item_id\n")
        for qid, item, dr, lr in rows:
            f.write(f"{qid},0,{item}\n")
            # An unlisted item gets the list's length as its rank (fusion.rs).
            x.append([1.0, 0.5, float(dr is not None), math.log1p(200 if dr is None else dr),
                      float(lr is not None), math.log1p(200 if lr is None else lr), 0.0])
    np.asarray(x, dtype="<f4").tofile(f"{d}/dev.f32")
    with open(f"{d}/judged.csv", "w") as f:
        f.write("qid,item_id,grade\n")
        for qid, item, g in judged:
            f.write(f"{qid},{item},{g}\n")


class FusionSweep(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        rows = [("0", "a", 0, None), ("0", "b", 1, 0), ("0", "c", None, 1), ("0", "d", 150, None)]
        write_rows(self.dir.name, rows, [("0", "c", 3), ("0", "d", 2), ("0", "z", 1)])
        self.queries = fs.load(self.dir.name, "dev")

    def tearDown(self):
        self.dir.cleanup()

    def test_rows_read_back_to_list_ranks(self):
        labels, cands = self.queries["0"]
        self.assertEqual(sorted(cands), [("a", 0, None), ("b", 1, 0), ("c", None, 1), ("d", 150, None)])
        self.assertEqual(labels, {"c": 3.0, "d": 2.0, "z": 1.0})

    def test_default_is_the_services(self):
        src = open(os.path.join(os.path.dirname(__file__), "..", "crates/ranking/src/fusion.rs")).read()
        found = {name: float(v) for name, v in re.findall(r"const (DEFAULT_\w+): f32 = ([0-9.]+);", src)}
        self.assertEqual(found, {"DEFAULT_K": fs.SERVICE_K, "DEFAULT_LEXICAL_WEIGHT": fs.SERVICE_LEXICAL_WEIGHT})

    def test_fuses_as_the_service(self):
        _, cands = self.queries["0"]
        # Equal weights: b is in both lists; a (dense 0) before c (lexical 1); d last.
        self.assertEqual(fs.fused(cands, 60, 1, 1, 10**9, 10**9), ["b", "a", "c", "d"])
        # The default weighs lexical 2: c (lexical 1) passes a (dense 0).
        self.assertEqual(fs.fused(cands, fs.SERVICE_K, 1, fs.SERVICE_LEXICAL_WEIGHT, 10**9, 10**9),
                         ["b", "c", "a", "d"])

    def test_weights_and_depths(self):
        _, cands = self.queries["0"]
        self.assertEqual(fs.fused(cands, 60, 1, 3, 10**9, 10**9)[:2], ["b", "c"])
        self.assertEqual(fs.fused(cands, 60, 1, 1, 100, 10**9), ["b", "a", "c"])
        _, recall, cand_recall = fs.measure(self.queries, dense_depth=100)
        self.assertEqual((recall, cand_recall), (0.5, 0.5))
        ndcg, recall, cand_recall = fs.measure(self.queries)
        self.assertEqual((recall, cand_recall), (1.0, 1.0))
        self.assertTrue(0 < ndcg < 1)


if __name__ == "__main__":
    unittest.main()
