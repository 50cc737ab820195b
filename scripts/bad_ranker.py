"""Writes a deliberately broken copy of a trained ranker, for rollout tests.

The copy keeps the ranker's interface and metadata (so the registry and the
replicas accept it) but its scores are useless: `nan` makes every score NaN,
`constant` makes every score 0.5. The rollout controller must roll such a canary
back on its own.

    python scripts/bad_ranker.py {nan|constant} models/ranker/model.onnx OUT.onnx
"""

import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper


def main() -> None:
    mode, src, dst = sys.argv[1:4]
    model = onnx.load(src)
    graph = model.graph
    out = next(o for o in graph.output if o.name == "score")
    # Rename the producer's output, then derive the real output from it.
    for node in graph.node:
        node.output[:] = ["score_raw" if o == "score" else o for o in node.output]
    scale = np.array(np.nan if mode == "nan" else 0.0, dtype=np.float32)
    graph.initializer.extend(
        [
            numpy_helper.from_array(scale, "bad_scale"),
            numpy_helper.from_array(np.array(0.5, dtype=np.float32), "bad_shift"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Mul", ["score_raw", "bad_scale"], ["score_scaled"]),
            helper.make_node("Add", ["score_scaled", "bad_shift"], [out.name]),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, dst)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("nan", "constant"):
        sys.exit(__doc__)
    main()
