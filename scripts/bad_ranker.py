"""Writes a deliberately broken copy of a trained ranker, for rollout tests.

The copy keeps the ranker's interface and metadata (so the registry and the
replicas accept it) but it is bad: `nan` makes every score NaN, `constant` makes
every score 0.5, and `slow` keeps the scores exactly but spends about a hundred
milliseconds of matrix products on every call (the p99 rule's case). The rollout
controller must roll such a canary back on its own.

    python scripts/bad_ranker.py {nan|constant|slow} models/ranker/model.onnx OUT.onnx
"""

import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper


# Size and count of the slow variant's matrix products: 4 x 2 x 1024^3 flops, about
# 8.6 GFLOP a call (about 100 ms on one core of these machines).
SLOW_DIM = 1024
SLOW_PRODUCTS = 4


def main() -> None:
    mode, src, dst = sys.argv[1:4]
    model = onnx.load(src)
    graph = model.graph
    out = next(o for o in graph.output if o.name == "score")
    # Rename the producer's output, then derive the real output from it.
    for node in graph.node:
        node.output[:] = ["score_raw" if o == "score" else o for o in node.output]
    if mode == "slow":
        slow(graph, out.name)
        onnx.checker.check_model(model)
        onnx.save(model, dst)
        return
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


def slow(graph, out_name: str) -> None:
    """score = score_raw + 0 * mean(tanh chain of products): the chain starts from
    the input (so ONNX Runtime cannot fold it at load time) and stays bounded (tanh
    of a scaled product), so 0 times it is exactly 0 and the scores are unchanged."""
    features = graph.input[0].name
    rng = np.random.default_rng(7)
    m = (rng.standard_normal((SLOW_DIM, SLOW_DIM)) / np.sqrt(SLOW_DIM)).astype(np.float32)
    graph.initializer.extend(
        [
            numpy_helper.from_array(m, "slow_m"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "slow_zero"),
        ]
    )
    nodes = [
        helper.make_node("ReduceSum", [features], ["slow_sum"], keepdims=0),
        helper.make_node("Sigmoid", ["slow_sum"], ["slow_gate"]),
        helper.make_node("Mul", ["slow_m", "slow_gate"], ["slow_x0"]),
    ]
    for i in range(SLOW_PRODUCTS):
        nodes.append(helper.make_node("MatMul", [f"slow_x{i}", "slow_m"], [f"slow_p{i}"]))
        nodes.append(helper.make_node("Tanh", [f"slow_p{i}"], [f"slow_x{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"slow_x{SLOW_PRODUCTS}"], ["slow_mean"], keepdims=0),
        helper.make_node("Mul", ["slow_mean", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", ["score_raw", "slow_nothing"], [out_name]),
    ]
    graph.node.extend(nodes)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("nan", "constant", "slow"):
        sys.exit(__doc__)
    main()
