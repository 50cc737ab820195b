"""The model half of scripts/gpu-check: the encoder and the ranker on ONNX Runtime's
CUDA provider and on CPU, from the same library the services load (the GPU build in
.rankmesh/gpu, first on PYTHONPATH).

Parity: the FP32 encoder's vectors on CUDA against CPU (cosine per text, at least
0.999), the ranker's scores (within 1e-4). Throughput at batch 1 and 32, each
provider timed for a fixed while after a warm-up, side by side in one run; the CPU
side also runs the INT8 encoder, which is what a CPU replica serves.

Prints one JSON object; exits 1 when a parity check fails or CUDA is not used.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

COSINE_MIN = 0.999
SCORE_TOLERANCE = 1e-4
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def session(ort, path, provider, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    providers = [provider] if provider == CPU else [provider, CPU]
    s = ort.InferenceSession(path, sess_options=opts, providers=providers)
    if s.get_providers()[0] != provider:
        raise SystemExit(f"{path}: asked for {provider}, got {s.get_providers()}")
    return s


def texts_of(catalog, n):
    """Titles of the first `n` items, and a few shopper queries."""
    titles = []
    with open(catalog, encoding="utf-8") as f:
        for line in f:
            titles.append(json.loads(line)["title"])
            if len(titles) == n:
                break
    return titles + ["compact frying pan", "running shoes", "noise cancelling headphones"]


def encode_inputs(tokenizer, texts):
    enc = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }


def throughput(run, rows, seconds):
    """Rows per second of `run`, after 3 warm-up calls, over about `seconds`."""
    for _ in range(3):
        run()
    calls, start = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return round(calls * rows / elapsed, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", required=True, help="models/ (encoder/ and ranker/)")
    p.add_argument("--catalog", required=True, help="a catalog in the import format")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
    a = p.parse_args()

    import onnxruntime as ort
    from tokenizers import Tokenizer

    report = {
        "onnxruntime": ort.__version__,
        "onnxruntime_file": ort.__file__,
        "providers_available": ort.get_available_providers(),
    }
    if CUDA not in ort.get_available_providers():
        report["error"] = "this ONNX Runtime has no CUDA provider (PYTHONPATH must put .rankmesh/gpu first)"
        print(json.dumps(report, indent=2))
        return 1
    threads = os.cpu_count() or 1
    failures = []

    # The encoder: parity of the FP32 model, then throughput.
    enc_dir = os.path.join(a.models, "encoder")
    tokenizer = Tokenizer.from_file(os.path.join(enc_dir, "fp32", "tokenizer.json"))
    tokenizer.enable_padding()
    tokenizer.enable_truncation(256)
    fp32 = os.path.join(enc_dir, "fp32", "model.onnx")
    int8 = os.path.join(enc_dir, "int8", "model.onnx")
    gpu_enc = session(ort, fp32, CUDA, threads)
    cpu_enc = session(ort, fp32, CPU, threads)
    cpu_int8 = session(ort, int8, CPU, threads)
    texts = texts_of(a.catalog, 61)
    inputs = encode_inputs(tokenizer, texts)
    on_gpu = gpu_enc.run(None, inputs)[0]
    on_cpu = cpu_enc.run(None, inputs)[0]
    cos = np.sum(on_gpu * on_cpu, axis=1) / (
        np.linalg.norm(on_gpu, axis=1) * np.linalg.norm(on_cpu, axis=1)
    )
    encoder = {
        "texts": len(texts),
        "cosine_min": round(float(cos.min()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "cosine_bound": COSINE_MIN,
    }
    if cos.min() < COSINE_MIN:
        failures.append(f"encoder cosine {cos.min():.6f} < {COSINE_MIN}")
    for batch in (1, 32):
        chunk = texts[:batch]
        feed = encode_inputs(tokenizer, chunk)
        n = len(chunk)
        rates = {
            "cuda_fp32": throughput(lambda: gpu_enc.run(None, feed), n, a.seconds),
            "cpu_fp32": throughput(lambda: cpu_enc.run(None, feed), n, a.seconds),
            "cpu_int8": throughput(lambda: cpu_int8.run(None, feed), n, a.seconds),
        }
        rates["cuda_over_cpu_int8"] = round(rates["cuda_fp32"] / rates["cpu_int8"], 2)
        encoder[f"texts_per_s_batch_{batch}"] = rates
    report["encoder"] = encoder

    # The ranker: parity of the scores, then throughput.
    ranker_path = os.path.join(a.models, "ranker", "model.onnx")
    gpu_rank = session(ort, ranker_path, CUDA, threads)
    cpu_rank = session(ort, ranker_path, CPU, threads)
    meta = cpu_rank.get_modelmeta().custom_metadata_map
    width = len(meta["feature_columns"].split(","))
    rows = np.random.default_rng(7).random((256, width), dtype=np.float32)
    s_gpu = np.asarray(gpu_rank.run(None, {"features": rows})[0]).reshape(-1)
    s_cpu = np.asarray(cpu_rank.run(None, {"features": rows})[0]).reshape(-1)
    diff = float(np.max(np.abs(s_gpu - s_cpu)))
    ranker = {
        "rows": len(rows),
        "columns": width,
        "max_abs_diff": diff,
        "bound": SCORE_TOLERANCE,
        # Tree ensembles (ai.onnx.ml) have CPU kernels only: ONNX Runtime places
        # them on CPU inside a CUDA session, so a tree ranker gains nothing there.
        "operators": sorted({n.op_type for n in _graph_nodes(ranker_path)}),
    }
    if diff > SCORE_TOLERANCE:
        failures.append(f"ranker scores differ by {diff} > {SCORE_TOLERANCE}")
    for batch in (1, 32):
        feed = {"features": rows[:batch]}
        rates = {
            "cuda": throughput(lambda: gpu_rank.run(None, feed), batch, a.seconds),
            "cpu": throughput(lambda: cpu_rank.run(None, feed), batch, a.seconds),
        }
        rates["cuda_over_cpu"] = round(rates["cuda"] / rates["cpu"], 2)
        ranker[f"rows_per_s_batch_{batch}"] = rates
    report["ranker"] = ranker

    report["failures"] = failures
    print(json.dumps(report, indent=2))
    return 1 if failures else 0


def _graph_nodes(path):
    import onnx

    return onnx.load(path, load_external_data=False).graph.node


if __name__ == "__main__":
    sys.exit(main())
