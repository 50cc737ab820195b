#!/usr/bin/env python3
"""Train the learning-to-rank model from `meshctl ranker train` rows; export ONNX.

Input (--rows DIR, written by the ranking service's Featurize through meshctl):
  schema.json            name, version, columns of the ranker's input
  train.csv, train.f32   per row: qid, grade (0 = unjudged candidate), item_id; the
  dev.csv, dev.f32       rows themselves as little-endian float32, row-major
  judged.csv             every judgment by qid (the ideal ranking of NDCG counts
                         judged items that never became candidates)

Models (--algo auto tries both and keeps the better on dev NDCG@10):
  lambdamart  LightGBM lambdarank with linear label gains (gain = grade, as the
              evaluation), early-stopped on a slice of the train queries; exported
              with onnxmltools (ai.onnx.ml TreeEnsembleRegressor, run by ORT).
  mlp         standardise -> 64 ReLU -> 1, ListNet (softmax cross-entropy between
              the grades' and the scores' distributions per query), Adam, numpy.

Training sees every judged candidate and a sample of unjudged ones per query (the
top of the fused list, the hardest negatives, plus a random draw); dev is scored on
every candidate, as Search does.

Output (--out): model.onnx (metadata feature_schema, feature_columns, metrics),
schema.json, and training.json (dev NDCG@10 of every model and of the retrieval
orders).
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

NEG_TOP = 0  # unjudged candidates kept per training query: the first of the fused list
NEG_RANDOM = 150  # ... and a random draw from the rest (measured best on dev)
GRADE_STEPS = 3  # grades are multiples of 1/3 (means of three raters): label = round(3 g)


def log(msg):
    print(f"[train_ranker] {msg}", file=sys.stderr, flush=True)


def load_split(rows, name, width):
    qid, grade = [], []
    with open(os.path.join(rows, f"{name}.csv")) as f:
        r = csv.reader(f)
        next(r)
        for row in r:
            qid.append(int(row[0]))
            grade.append(float(row[1]))
    x = np.fromfile(os.path.join(rows, f"{name}.f32"), dtype="<f4")
    assert x.size == len(qid) * width, f"{name}: {x.size} values for {len(qid)} rows of {width}"
    return np.asarray(qid, dtype=np.int64), np.asarray(grade, dtype=np.float64), x.reshape(len(qid), width)


def load_judged(rows):
    judged = {}
    with open(os.path.join(rows, "judged.csv")) as f:
        r = csv.reader(f)
        next(r)
        for row in r:
            judged.setdefault(int(row[0]), []).append(float(row[2]))
    return judged


def groups(qid):
    """Row indices of each query, in order of first appearance (rows are grouped)."""
    bounds = np.flatnonzero(np.diff(qid)) + 1
    return np.split(np.arange(len(qid)), bounds)


def ndcg10(scores, grades, ideal):
    """Linear gain (gain = grade); `ideal` is every judged grade of the query."""
    order = np.argsort(-scores, kind="stable")[:10]
    disc = 1 / np.log2(np.arange(2, 12))
    dcg = float((grades[order] * disc[: len(order)]).sum())
    best = np.sort(np.asarray(ideal))[::-1][:10]
    idcg = float((best * disc[: len(best)]).sum())
    return dcg / idcg if idcg > 0 else None


def mean_ndcg(score_fn, qid, grades, x, judged):
    vals = []
    for g in groups(qid):
        v = ndcg10(score_fn(x[g]), grades[g], judged.get(int(qid[g[0]]), []))
        if v is not None:
            vals.append(v)
    return float(np.mean(vals)) if vals else 0.0


def sample(qid, grades, x, rrf_col, rng):
    keep = []
    for g in groups(qid):
        judged = g[grades[g] > 0]
        unjudged = g[grades[g] == 0]
        if len(judged) == 0:
            continue
        order = unjudged[np.argsort(-x[unjudged, rrf_col], kind="stable")]
        top, rest = order[:NEG_TOP], order[NEG_TOP:]
        if len(rest) > NEG_RANDOM:
            rest = rng.choice(rest, NEG_RANDOM, replace=False)
        keep.append(np.sort(np.concatenate([judged, top, rest])))
    idx = np.concatenate(keep)
    return qid[idx], grades[idx], x[idx]


def train_lambdamart(qid, grades, x, seed):
    import lightgbm as lgb

    labels = np.rint(grades * GRADE_STEPS).astype(np.int32)
    gs = groups(qid)
    rng = np.random.default_rng(seed)
    valid_q = rng.random(len(gs)) < 0.1
    def subset(mask):
        idx = np.concatenate([g for g, m in zip(gs, mask) if m])
        return lgb.Dataset(x[idx], labels[idx], group=[len(g) for g, m in zip(gs, mask) if m], free_raw_data=False)
    train = subset(~valid_q)
    valid = subset(valid_q)
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        # Linear gain, as the evaluation: label i is grade i/3.
        "label_gain": [i / GRADE_STEPS for i in range(int(labels.max()) + 1)],
        "lambdarank_truncation_level": 20,
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "num_threads": 2,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }
    booster = lgb.train(
        params,
        train,
        num_boost_round=800,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(50, verbose=False), lgb.log_evaluation(100)],
    )
    log(f"lambdamart: {booster.best_iteration} trees (early-stopped on {int(valid_q.sum())} train queries)")
    return booster


def round_thresholds_down(model, booster):
    """Makes the exported trees branch exactly as LightGBM does on float32 inputs.

    LightGBM tests `x <= t` with a float64 threshold; ONNX stores thresholds as
    float32 rounded to nearest, so a feature value equal to the float32 just above
    t went left in training and right in ONNX (seen: a 0.023 score gap on the
    Home Depot slice). For a float32 x, `x <= t` holds exactly when x is at most the
    largest float32 not above t, so that is what gets stored.
    """
    exact = {}

    def walk(node):
        if "split_feature" in node:
            t = float(node["threshold"])
            exact.setdefault((node["split_feature"], float(np.float32(t))), set()).add(t)
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    for node in model.graph.node:
        if node.op_type != "TreeEnsembleRegressor":
            continue
        attrs = {a.name: a for a in node.attribute}
        features = attrs["nodes_featureids"].ints
        modes = attrs["nodes_modes"].strings
        values = attrs["nodes_values"].floats
        for i, (f, mode) in enumerate(zip(features, modes)):
            if mode != b"BRANCH_LEQ":
                continue
            # Two thresholds within an ulp of each other on one feature cannot be
            # told apart here; the smaller (the one that sends fewer rows left) wins.
            t = min(exact.get((f, float(values[i])), {values[i]}))
            down = np.float32(t)
            if float(down) > t:
                down = np.nextafter(down, np.float32(-np.inf))
            values[i] = float(down)


def export_lambdamart(booster, width, path):
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_lightgbm(
        booster,
        initial_types=[("features", FloatTensorType([None, width]))],
        target_opset=15,
        zipmap=False,
    )
    round_thresholds_down(model, booster)
    graph = model.graph
    out = graph.output[0].name
    graph.node.append(helper.make_node("Reshape", [out, "flat"], ["score"]))
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"]))
    return model


class Mlp:
    HIDDEN = 64

    def __init__(self, f, rng):
        h = self.HIDDEN
        self.w1 = rng.standard_normal((f, h)) * np.sqrt(2 / f)
        self.b1 = np.zeros(h)
        self.w2 = rng.standard_normal((h, 1)) * np.sqrt(1 / h)
        self.b2 = np.zeros(1)
        self.params = [self.w1, self.b1, self.w2, self.b2]

    def forward(self, x):
        h = np.maximum(x @ self.w1 + self.b1, 0)
        return (h @ self.w2 + self.b2)[:, 0], h

    def grads(self, x, dscore, h):
        dh = dscore[:, None] @ self.w2.T * (h > 0)
        return [x.T @ dh, dh.sum(0), h.T @ dscore[:, None], dscore.sum(keepdims=True)]


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def train_mlp(qid, grades, x, seed, epochs=12, lr=0.003):
    rng = np.random.default_rng(seed)
    mean = x.mean(0)
    std = x.std(0)
    std[std < 1e-6] = 1.0
    xs = (x - mean) / std
    m = Mlp(x.shape[1], rng)
    am = [np.zeros_like(p) for p in m.params]
    av = [np.zeros_like(p) for p in m.params]
    step = 0
    gs = [g for g in groups(qid) if grades[g].max() > 0]
    for epoch in range(epochs):
        rng.shuffle(gs)
        for g in gs:
            s, h = m.forward(xs[g])
            # ListNet with the grades as the target's logits (sharpened).
            dscore = softmax(s) - softmax(2.0 * grades[g])
            step += 1
            for i, (p, d) in enumerate(zip(m.params, m.grads(xs[g], dscore, h))):
                am[i] = 0.9 * am[i] + 0.1 * d
                av[i] = 0.999 * av[i] + 0.001 * d * d
                p -= lr * (am[i] / (1 - 0.9**step)) / (np.sqrt(av[i] / (1 - 0.999**step)) + 1e-8)
        log(f"mlp: epoch {epoch + 1}/{epochs}")
    return m, mean, std


def export_mlp(m, mean, std, width):
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
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="rankmesh")


def finish(model, schema, metrics, path):
    model.ir_version = min(model.ir_version or 8, 9)
    helper.set_model_props(
        model,
        {
            "feature_schema": f"{schema['name']}:{schema['version']}",
            "feature_columns": ",".join(schema["columns"]),
            "metrics": json.dumps(metrics),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def onnx_scores(path, x):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(["score"], {"features": x.astype(np.float32)})[0]


def load_rows(rows, width):
    qid, grades, x = load_split(rows, "train", width)
    dq, dgrades, dx = load_split(rows, "dev", width)
    return (qid, grades, x), (dq, dgrades, dx, load_judged(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", required=True)
    ap.add_argument(
        "--extra-rows",
        action="append",
        default=[],
        help="another store's rows (same schema) trained on jointly; its train queries are "
        "repeated up to a tenth of the main set's, and its dev split is reported too",
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--algo", default="auto", choices=["auto", "lambdamart", "mlp"])
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    t0 = time.time()
    with open(os.path.join(a.rows, "schema.json")) as f:
        schema = json.load(f)
    cols = schema["columns"]
    width = len(cols)
    (qid, grades, x), main_dev = load_rows(a.rows, width)
    rng = np.random.default_rng(a.seed)
    sq, sg, sx = sample(qid, grades, x, cols.index("rrf"), rng)
    devs = {a.rows: main_dev}
    main_queries = len(groups(sq))
    for extra in a.extra_rows:
        with open(os.path.join(extra, "schema.json")) as f:
            assert json.load(f) == schema, f"{extra}: another feature schema"
        (eq, eg, ex), devs[extra] = load_rows(extra, width)
        eq, eg, ex = sample(eq, eg, ex, cols.index("rrf"), rng)
        n = len(groups(eq))
        repeat = max(1, main_queries // (10 * max(n, 1)))
        offset = int(sq.max()) + 1
        span = int(eq.max()) + 1
        for r in range(repeat):
            sq = np.concatenate([sq, eq + offset + r * span])
            sg = np.concatenate([sg, eg])
            sx = np.concatenate([sx, ex])
        log(f"{extra}: {n} train queries, repeated {repeat}x")
    log(f"{len(qid)} train rows -> {len(sq)} sampled; {len(main_dev[0])} dev rows; {width} columns")

    def dev_all(score_fn):
        return {k: mean_ndcg(score_fn, dq, dg, dx, judged) for k, (dq, dg, dx, judged) in devs.items()}

    results = {
        "retrieval order (rrf)": dev_all(lambda r: r[:, cols.index("rrf")]),
        "bm25": dev_all(lambda r: r[:, cols.index("bm25")]),
    }
    candidates = {}
    os.makedirs(a.out, exist_ok=True)
    if a.algo in ("auto", "lambdamart"):
        t = time.time()
        booster = train_lambdamart(sq, sg, sx, a.seed)
        fn = lambda r: booster.predict(r, num_iteration=booster.best_iteration)  # noqa: E731
        results["lambdamart"] = dev_all(fn)
        candidates["lambdamart"] = (export_lambdamart(booster, width, None), fn)
        log(f"lambdamart: dev NDCG@10 {results['lambdamart']} ({time.time() - t:.0f}s)")
    if a.algo in ("auto", "mlp"):
        t = time.time()
        m, mean, std = train_mlp(sq, sg, sx, a.seed)
        fn = lambda r: m.forward((r - mean) / std)[0]  # noqa: E731
        results["mlp"] = dev_all(fn)
        candidates["mlp"] = (export_mlp(m, mean, std, width), fn)
        log(f"mlp: dev NDCG@10 {results['mlp']} ({time.time() - t:.0f}s)")
    # The better on the stores' dev splits, on average.
    score = {k: float(np.mean(list(results[k].values()))) for k in candidates}
    dx = main_dev[2]
    chosen = max(candidates, key=lambda k: score[k])
    model, fn = candidates[chosen]
    metrics = {"chosen": chosen, "dev_ndcg@10": results[chosen][a.rows], "train_queries": len(groups(qid)), "dev_queries": len(groups(main_dev[0]))}
    path = os.path.join(a.out, "model.onnx")
    finish(model, schema, metrics, path)
    # The exported graph must score like the trained model.
    probe = dx[: min(len(dx), 4096)]
    got = onnx_scores(path, probe)
    want = np.asarray(fn(probe), dtype=np.float64)
    diff = float(np.abs(got - want).max())
    assert diff < 1e-3, f"ONNX and the trained {chosen} disagree by {diff}"
    training = {
        "chosen": chosen,
        "models": {k: {"dev_ndcg@10": v[a.rows], "dev_ndcg@10_by_rows": v} for k, v in results.items()},
        "train_rows_sampled": int(len(sq)),
        "dev_rows": int(len(main_dev[0])),
        "onnx_max_abs_diff": diff,
        "seconds": round(time.time() - t0, 1),
    }
    with open(os.path.join(a.out, "training.json"), "w") as f:
        json.dump(training, f, indent=2)
    with open(os.path.join(a.out, "schema.json"), "w") as f:
        json.dump(schema, f, indent=2)
    print(json.dumps(training, indent=2))


if __name__ == "__main__":
    main()
