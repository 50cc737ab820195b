#!/usr/bin/env python3
"""Train the learning-to-rank model and export it to ONNX.

Input: feature rows from `meshctl features dump` (qid,grade,<columns>) plus the
schema sidecar (<csv>.schema.json). Model: a small MLP (standardise -> 32 ReLU ->
1) trained with the ListNet loss (softmax cross-entropy between the grades'
and the scores' distributions per query) by Adam, in numpy: no PyTorch, no
LightGBM converters, and the exported graph is five plain ONNX ops.

Output (in --out): model.onnx with metadata `feature_schema` (name:version) and
`feature_columns` (the ranking service refuses a ranker whose schema differs),
schema.json, and metrics.json (validation NDCG@10 of the model vs BM25 order).
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN = 32
EPOCHS = 60
LR = 0.01
SEED = 7


def load(path):
    with open(path) as f:
        r = csv.reader(f)
        header = next(r)
        rows = [list(map(float, row)) for row in r]
    a = np.asarray(rows, dtype=np.float64)
    with open(os.path.splitext(path)[0] + ".schema.json") as f:
        schema = json.load(f)
    assert header[2:] == schema["columns"], "CSV columns differ from the schema sidecar"
    return a[:, 0].astype(np.int64), a[:, 1], a[:, 2:].astype(np.float32), schema


def groups(qid):
    order = np.argsort(qid, kind="stable")
    bounds = np.flatnonzero(np.diff(qid[order])) + 1
    return np.split(order, bounds)


def ndcg_at(scores, grades, k=10):
    order = np.argsort(-scores, kind="stable")[:k]
    gains = 2.0 ** grades - 1
    disc = 1 / np.log2(np.arange(2, k + 2))
    dcg = (gains[order] * disc[: len(order)]).sum()
    ideal = np.sort(gains)[::-1][:k]
    idcg = (ideal * disc[: len(ideal)]).sum()
    return dcg / idcg if idcg > 0 else None


def mean_ndcg(score_fn, qid, grades, x):
    vals = [ndcg_at(score_fn(x[g]), grades[g]) for g in groups(qid)]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else 0.0


class Mlp:
    def __init__(self, f, rng):
        self.w1 = (rng.standard_normal((f, HIDDEN)) * np.sqrt(2 / f)).astype(np.float64)
        self.b1 = np.zeros(HIDDEN)
        self.w2 = (rng.standard_normal((HIDDEN, 1)) * np.sqrt(1 / HIDDEN)).astype(np.float64)
        self.b2 = np.zeros(1)
        self.params = [self.w1, self.b1, self.w2, self.b2]

    def forward(self, x):
        h = np.maximum(x @ self.w1 + self.b1, 0)
        return (h @ self.w2 + self.b2)[:, 0], h

    def grads(self, x, dscore, h):
        dw2 = h.T @ dscore[:, None]
        db2 = dscore.sum(keepdims=True)
        dh = dscore[:, None] @ self.w2.T * (h > 0)
        return [x.T @ dh, dh.sum(0), dw2, db2]


def softmax(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def train(qid, grades, xs, rng):
    m = Mlp(xs.shape[1], rng)
    adam_m = [np.zeros_like(p) for p in m.params]
    adam_v = [np.zeros_like(p) for p in m.params]
    step = 0
    gs = [g for g in groups(qid) if grades[g].max() > 0]
    for _epoch in range(EPOCHS):
        rng.shuffle(gs)
        for g in gs:
            x = xs[g]
            s, h = m.forward(x)
            # ListNet: target distribution from grades, predicted from scores.
            p_true = softmax(grades[g].astype(np.float64))
            p_pred = softmax(s)
            dscore = p_pred - p_true
            step += 1
            for i, (p, d) in enumerate(zip(m.params, m.grads(x, dscore, h))):
                adam_m[i] = 0.9 * adam_m[i] + 0.1 * d
                adam_v[i] = 0.999 * adam_v[i] + 0.001 * d * d
                mh = adam_m[i] / (1 - 0.9**step)
                vh = adam_v[i] / (1 - 0.999**step)
                p -= LR * mh / (np.sqrt(vh) + 1e-8)
    return m


def export(m, mean, std, schema, metrics, out):
    f = len(schema["columns"])
    inits = [
        numpy_helper.from_array(mean.astype(np.float32), "mean"),
        numpy_helper.from_array(std.astype(np.float32), "std"),
        numpy_helper.from_array(m.w1.astype(np.float32), "w1"),
        numpy_helper.from_array(m.b1.astype(np.float32), "b1"),
        numpy_helper.from_array(m.w2.astype(np.float32), "w2"),
        numpy_helper.from_array(m.b2.astype(np.float32), "b2"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Sub", ["features", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["scaled"]),
        helper.make_node("Gemm", ["scaled", "w1", "b1"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["col"]),
        helper.make_node("Reshape", ["col", "flat"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "rankmesh_ranker",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", f])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="rankmesh")
    model.ir_version = 8
    helper.set_model_props(
        model,
        {
            "feature_schema": f"{schema['name']}:{schema['version']}",
            "feature_columns": ",".join(schema["columns"]),
            "metrics": json.dumps(metrics),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    os.makedirs(out, exist_ok=True)
    onnx.save(model, os.path.join(out, "model.onnx"))
    with open(os.path.join(out, "schema.json"), "w") as fh:
        json.dump(schema, fh, indent=2)
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    t0 = time.time()
    qid, grades, x, schema = load(a.train)
    tq, tgrades, tx, tschema = load(a.test)
    assert schema == tschema, "train and test rows come from different schemas"
    mean = x.mean(0)
    std = x.std(0)
    std[std < 1e-6] = 1.0
    rng = np.random.default_rng(SEED)
    m = train(qid, grades, (x - mean) / std, rng)

    def model_scores(rows):
        return m.forward((rows - mean) / std)[0]

    bm25 = schema["columns"].index("bm25")
    metrics = {
        "train_rows": int(len(qid)),
        "test_rows": int(len(tq)),
        "test_queries": len(groups(tq)),
        "ndcg@10_model": mean_ndcg(model_scores, tq, tgrades, tx),
        "ndcg@10_bm25": mean_ndcg(lambda r: r[:, bm25], tq, tgrades, tx),
        "ndcg@10_model_train": mean_ndcg(model_scores, qid, grades, x),
        "seconds": round(time.time() - t0, 1),
    }
    export(m, mean, std, schema, metrics, a.out)

    # The exported graph must score exactly like the numpy model.
    import onnxruntime as ort

    sess = ort.InferenceSession(os.path.join(a.out, "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["score"], {"features": tx[:64]})[0]
    want = model_scores(tx[:64])
    assert np.allclose(got, want, atol=1e-3), f"ONNX and numpy disagree: {np.abs(got - want).max()}"
    print(json.dumps(metrics, indent=2))
    if metrics["ndcg@10_model"] <= metrics["ndcg@10_bm25"]:
        print("warning: the model does not beat BM25 order on the held-out queries", file=sys.stderr)


if __name__ == "__main__":
    main()
