#!/usr/bin/env python3
"""INT8 variant of an ONNX model, checked against its FP32 parent before it is used.

    python scripts/quantize_model.py FP32.onnx OUT.onnx [--tokenizer tokenizer.json]
        [--calibration FILE] [--min-cosine 0.98] [--min-correlation 0.99]

Quantization: dynamic, per output channel, INT8 weights (onnxruntime.quantization:
shape pre-processing, then quantize_dynamic), as scripts/export-encoder does for the
shipped encoder. Weights that are not in a MatMul/Gemm (a tree ensemble's
thresholds) stay as they are.

The check runs both models in ONNX Runtime on a calibration set:
  encoder (an `input_ids` input; needs --tokenizer): texts, one a line in
          --calibration, else a built-in set of shopper queries and product titles;
          the cosine between each text's FP32 and INT8 embeddings (a 3-D output is
          mean-pooled over the attention mask); passes when the mean is at least
          --min-cosine.
  scorer  (one float input [N, D], e.g. the ranker): rows in --calibration
          (little-endian float32, D a row; what `meshctl ranker train` writes as
          train.f32), else 512 standard-normal rows (seeded); the Pearson
          correlation of the scores; passes when at least --min-correlation (scores
          that are constant in FP32 must be equal in INT8).

Prints one JSON line with the figures (and `summary`, them in words). Exit status: 0
passed, 3 below the bound (OUT is removed: nothing may link it), 1 any other error.
The model registry runs it for `PublishHeader.quantize_int8` (`meshctl model publish
--quantize int8`).
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

CALIBRATION_TEXTS = [
    "wireless noise cancelling headphones",
    "red running shoes size 42",
    "stainless steel french press coffee maker",
    "kids waterproof rain jacket with hood",
    "4k ultra hd smart tv 55 inch",
    "organic green tea bags 100 count",
    "ergonomic office chair lumbar support",
    "cordless drill 20v with two batteries",
    "2x4x8 pressure treated lumber",
    "3/4 in. copper pipe fitting elbow",
    "vynal grip strip for stairs",
    "gas grill cover heavy duty",
    "led flush mount ceiling light brushed nickel",
    "Everbilt 1/2 in. x 10 ft. galvanized steel chain",
    "memory foam pillow queen size",
    "yoga mat extra thick non slip",
    "bluetooth speaker portable waterproof",
    "cast iron skillet 12 inch pre-seasoned",
    "mens leather wallet rfid blocking",
    "phone charger usb c fast charging 6 ft",
    "interior latex paint eggshell white 1 gal",
    "toilet flapper universal replacement",
    "cat litter clumping unscented 40 lb",
    "standing desk converter adjustable height",
    "garden hose 50 ft expandable",
    "electric toothbrush with 3 brush heads",
    "window blinds cordless 36 in. wide",
    "power strip surge protector 12 outlets",
    "baby stroller lightweight foldable",
    "Milwaukee M18 impact driver kit",
    "ceramic tile 12 in. x 24 in. gray matte",
    "LED bulb 60 watt equivalent daylight 4 pack",
]


def log(msg):
    print(f"[quantize_model] {msg}", file=sys.stderr, flush=True)


def quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # a graph ORT cannot pre-process still quantizes
            log(f"pre-processing skipped: {e}")
            pre = src
        quantize_dynamic(str(pre), str(dst), per_channel=True, weight_type=QuantType.QInt8)


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def encoder_check(s32, s8, tokenizer: Path, calibration):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_padding()
    tok.enable_truncation(256)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    if calibration:
        texts = [t.strip() for t in Path(calibration).read_text().splitlines() if t.strip()][:256]
    else:
        texts = CALIBRATION_TEXTS
    if not texts:
        raise SystemExit("--calibration: no texts")
    names = {i.name for i in s32.get_inputs()}
    cos = []
    for start in range(0, len(texts), 32):
        enc = tok.encode_batch(texts[start : start + 32])
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64)}
        if "attention_mask" in names:
            feed["attention_mask"] = mask
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.array([e.type_ids for e in enc], dtype=np.int64)
        a, b = (pooled(s.run(None, feed)[0], mask) for s in (s32, s8))
        cos.extend(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12))
    cos = np.asarray(cos)
    return {"kind": "encoder", "calibration": len(texts), "mean_cosine": round(float(cos.mean()), 5),
            "min_cosine": round(float(cos.min()), 5)}


def pooled(out, mask):
    if out.ndim == 3:  # token embeddings: mean over real tokens
        m = mask[..., None].astype(np.float32)
        return (out * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
    return out.reshape(out.shape[0], -1)


def scorer_check(s32, s8, calibration):
    inp = s32.get_inputs()[0]
    width = inp.shape[-1]
    if not isinstance(width, int):
        raise SystemExit(f"input {inp.name}: its last dimension must be fixed, got {inp.shape}")
    if calibration:
        raw = np.fromfile(calibration, dtype="<f4")
        if raw.size == 0 or raw.size % width:
            raise SystemExit(f"--calibration: {raw.size} floats is not a whole number of {width}-wide rows")
        rows = raw.reshape(-1, width)[:4096]
    else:
        rows = np.random.default_rng(7).standard_normal((512, width)).astype(np.float32)
    a = np.asarray(s32.run(None, {inp.name: rows})[0], dtype=np.float64).ravel()
    b = np.asarray(s8.run(None, {inp.name: rows})[0], dtype=np.float64).ravel()
    diff = float(np.abs(a - b).max())
    if a.std() == 0:
        corr = 1.0 if diff == 0 else 0.0
    else:
        corr = float(np.corrcoef(a, b)[0, 1]) if b.std() > 0 else 0.0
    return {"kind": "scorer", "calibration": len(rows), "correlation": round(corr, 6),
            "max_abs_diff": diff}


def summary(r):
    """The figures in words, as the registry and meshctl print them."""
    if r["kind"] == "encoder":
        return (f"mean cosine {r['mean_cosine']} (min {r['min_cosine']}) to FP32 over "
                f"{r['calibration']} calibration texts, at least {r['min_cosine_required']}")
    return (f"score correlation {r['correlation']} (max difference {r['max_abs_diff']}) with "
            f"FP32 over {r['calibration']} calibration rows, at least {r['min_correlation_required']}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fp32", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--tokenizer", type=Path)
    p.add_argument("--calibration", type=Path)
    p.add_argument("--min-cosine", type=float, default=0.98)
    p.add_argument("--min-correlation", type=float, default=0.99)
    a = p.parse_args()

    quantize(a.fp32, a.out)
    s32, s8 = session(a.fp32), session(a.out)
    if "input_ids" in {i.name for i in s32.get_inputs()}:
        if a.tokenizer is None:
            raise SystemExit("an encoder (input_ids) needs --tokenizer to tokenize its calibration texts")
        report = encoder_check(s32, s8, a.tokenizer, a.calibration)
        report["min_cosine_required"] = a.min_cosine
        passed = report["mean_cosine"] >= a.min_cosine
    else:
        report = scorer_check(s32, s8, a.calibration)
        report["min_correlation_required"] = a.min_correlation
        passed = report["correlation"] >= a.min_correlation
    report["bytes_fp32"] = a.fp32.stat().st_size
    report["bytes_int8"] = a.out.stat().st_size
    report["pass"] = passed
    report["summary"] = summary(report)
    print(json.dumps(report), flush=True)
    if not passed:
        os.unlink(a.out)
        sys.exit(3)


if __name__ == "__main__":
    main()
