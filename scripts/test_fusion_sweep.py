"""Unit tests of scripts/fusion_sweep.py (run by scripts/test): rows written as
`meshctl ranker train` writes them read back to the right list ranks, the default
setting fuses as the ranking service does (k = 60, equal weights, ties by id), and
depths and weights change what they should.

    .venv/bin/python -m unittest discover -s scripts -p 'test_*.py'
"""

import json
import math
import os
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

    def test_default_fuses_as_the_service(self):
        _, cands = self.queries["0"]
        # b is in both lists; a (dense 0) and c (lexical 1): a first; d last.
        self.assertEqual(fs.fused(cands, 60, 1, 1, 10**9, 10**9), ["b", "a", "c", "d"])

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
