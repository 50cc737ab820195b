"""Unit tests of the offline ranker tooling (run by scripts/test).

    .venv/bin/python -m unittest discover -s scripts -p 'test_*.py'
"""

import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import train_ranker  # noqa: E402


class ExportedTreesBranchLikeLightGbm(unittest.TestCase):
    def test_float32_values_next_to_a_threshold(self):
        import lightgbm as lgb
        import onnxruntime as ort

        # Feature 0 takes two adjacent float32 values, so LightGBM's float64 split
        # midpoint lies within an ulp of the data: ONNX's nearest float32 threshold
        # sent the upper value the wrong way (a score gap of about 4 before the fix).
        rng = np.random.default_rng(0)
        low = np.float32(0.3)
        high = np.nextafter(low, np.float32(1))
        x = np.stack(
            [rng.choice([low, high], 4000).astype(np.float32), rng.random(4000).astype(np.float32)],
            1,
        )
        y = ((x[:, 0] > low) * 2 + (x[:, 1] > 0.5)).astype(int)
        data = lgb.Dataset(x, y, group=[20] * 200)
        booster = lgb.train(
            {"objective": "lambdarank", "verbose": -1, "min_data_in_leaf": 5}, data, num_boost_round=20
        )
        model = train_ranker.export_lambdamart(booster, 2, None)
        session = ort.InferenceSession(model.SerializeToString())
        got = session.run(None, {"features": x})[0]
        self.assertLess(float(np.abs(got - booster.predict(x)).max()), 1e-5)


if __name__ == "__main__":
    unittest.main()
