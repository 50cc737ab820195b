"""Bulk embedding with Python onnxruntime: the peer the Rust encoder's bulk
indexing is measured against (cargo bench -p rankmesh-embedding --bench embedding
-- bulk runs it on the same texts, model file, tokenizer, batch size and threads).

It does what a careful Python indexer does (sentence-transformers' encode, for
one): sorts the texts by length, then pads each batch to its longest text and
truncates at 256 tokens. Prints one JSON line: texts, seconds, texts_per_s.
"""

import argparse
import json
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="model.onnx of the encoder")
    p.add_argument("--tokenizer", required=True, help="its tokenizer.json")
    p.add_argument("--texts", required=True, help="one text per line")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=256)
    a = p.parse_args()

    tok = Tokenizer.from_file(a.tokenizer)
    tok.enable_truncation(a.max_tokens)
    pad_id = tok.token_to_id("[PAD]") or 0
    tok.enable_padding(pad_id=pad_id, pad_token="[PAD]")

    options = ort.SessionOptions()
    options.intra_op_num_threads = a.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(a.model, options, providers=["CPUExecutionProvider"])

    with open(a.texts, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f if line.strip()]

    def run(batch: list[str]) -> np.ndarray:
        enc = tok.encode_batch(batch)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        return session.run(["sentence_embedding"], feeds)[0]

    run(texts[: a.batch])  # warm-up: first calls allocate
    start = time.perf_counter()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = [None] * len(texts)
    for i in range(0, len(order), a.batch):
        chunk = order[i : i + a.batch]
        out = run([texts[j] for j in chunk])
        for j, v in zip(chunk, out):
            vectors[j] = v
    seconds = time.perf_counter() - start
    assert all(v is not None for v in vectors)
    print(json.dumps({"texts": len(texts), "seconds": seconds, "texts_per_s": len(texts) / seconds}))


if __name__ == "__main__":
    main()
