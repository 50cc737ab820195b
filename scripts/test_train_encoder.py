"""Unit tests of the encoder fine-tuning tooling that need no PyTorch (run by
scripts/test): the split is the ranker's, the metrics are meshctl eval's, the item
text is the embedding service's, and hard negatives never include a relevant item.

    .venv/bin/python -m unittest discover -s scripts -p 'test_*.py'
"""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import train_encoder as te  # noqa: E402


class SplitAsTheRanker(unittest.TestCase):
    def test_fnv1a_matches_the_published_vectors(self):
        # is_dev hashes from OFFSET ^ seed: seed 0 is plain FNV-1a 64
        # (crates/common/src/fnv.rs checks the same vectors).
        def h(data):
            x = te.FNV_OFFSET
            for b in data:
                x = ((x ^ b) * te.FNV_PRIME) & te.MASK64
            return x

        self.assertEqual(h(b"a"), 0xAF63DC4C8601EC8C)
        self.assertEqual(h(b"foobar"), 0x85944171F73967E8)

    def test_the_split_is_by_query_seeded_and_near_its_share(self):
        labels = {f"query {i}": {"a": 3.0} for i in range(5000)}
        train, dev = te.split(labels, 42, 0.2)
        self.assertEqual(set(train) | set(dev), set(labels))
        self.assertFalse(set(train) & set(dev))
        self.assertAlmostEqual(len(dev) / len(labels), 0.2, delta=0.02)
        self.assertEqual(te.split(labels, 42, 0.2), (train, dev))
        self.assertNotEqual(te.split(labels, 7, 0.2)[1], dev)


class MetricsAsMeshctlEval(unittest.TestCase):
    def test_ndcg_uses_linear_gain_and_the_judged_ideal(self):
        labels = {"a": 3.0, "b": 1.0, "c": 2.33}
        # As crates/cli/src/eval.rs's test: b at rank 2 and c at rank 3.
        got = te.ndcg10(["x", "b", "c"], labels)
        import math

        dcg = 1.0 / math.log2(3) + 2.33 / math.log2(4)
        idcg = 3.0 + 2.33 / math.log2(3) + 1.0 / math.log2(4)
        self.assertAlmostEqual(got, dcg / idcg, places=9)
        self.assertIsNone(te.ndcg10(["x"], {"a": 0.0}))

    def test_recall_counts_grade_two_and_up_within_the_depth(self):
        labels = {"a": 3.0, "b": 2.0, "c": 1.67}
        self.assertEqual(te.recall(["a", "c"], labels), 0.5)
        self.assertEqual(te.recall(["x"] * 100 + ["a", "b"], labels), 0.0)
        self.assertIsNone(te.recall(["a"], {"c": 1.0}))


class Training(unittest.TestCase):
    def test_item_text_is_the_embedding_services(self):
        item = {"id": "1", "title": " Pan ", "brand": "Acme", "category": "Home > Kitchen", "description": "x" * 500}
        self.assertEqual(te.item_text(item), "Pan. Acme. Home > Kitchen. " + "x" * 400)
        self.assertEqual(te.item_text({"id": "2", "title": "Saw"}), "Saw")

    def test_hard_negatives_are_judged_low_or_unjudged_candidates(self):
        ids = [f"i{n}" for n in range(200)]
        texts = [f"text {n}" for n in range(200)]
        train = {
            "judged": {"i0": 3.0, "i1": 1.0},
            "mined": {"i2": 2.33},
            "none": {"i3": 1.67},
        }
        candidates = {"mined": ids[:100], "judged": ids[:100]}
        pairs = te.training_pairs(train, ids, texts, candidates, random.Random(0))
        by_query = {}
        for q, pos, neg in pairs:
            by_query.setdefault(q, []).append((pos, neg))
        # A judged-irrelevant item is the negative where there is one.
        self.assertEqual(by_query["judged"], [("text 0", "text 1")])
        # Else a candidate from ranks 30..100 that is not judged.
        ((pos, neg),) = by_query["mined"]
        self.assertEqual(pos, "text 2")
        self.assertIn(int(neg.split()[1]), range(30, 100))
        # No relevant item, no pair.
        self.assertNotIn("none", by_query)


if __name__ == "__main__":
    unittest.main()
