"""Fine-tunes the text encoder (all-MiniLM-L6-v2) on a store's judgments.

Contrastive training over (query, relevant item text) pairs with in-batch negatives
and one hard negative per pair (multiple-negatives ranking loss, scale 20): the
query's judged-irrelevant items first, else an item the stock encoder retrieves for
it (ranks 30..100 of its dense candidates, or of the candidate lists given with
--candidates) that is not judged relevant. Train and dev are split by query exactly
as `meshctl ranker train` splits them (FNV-1a of the query, same seed and share), so
the dev queries are the same.

The BERT forward is written out here in PyTorch over the safetensors names that
scripts/export-encoder turns into ONNX (mean pooling and L2 normalisation in the
graph), so the export has the stock encoder's interface; it is checked against
PyTorch's output (cosine >= 0.999). A time budget (--max-minutes) stops training at
a step boundary; a checkpoint is written every --checkpoint-minutes and at the end,
and --resume continues from it.

Writes OUT/encoder/{fp32,int8}/ (model.onnx, tokenizer.json, signature.json), the
weights (OUT/weights/model.safetensors), OUT/metrics.json (dense retrieval on dev
before and after, exact top-100 by cosine over the whole catalog, with the serving
variants) and OUT/training.json.
"""

import argparse
import csv
import gzip
import importlib.machinery
import importlib.util
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RELEVANT = 2.0  # grade from which an item counts as relevant (as meshctl eval)
DEPTH = 100
SCALE = 20.0
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1
DESCRIPTION_CHARS = 400
HIDDEN, HEADS, LAYERS, EPS = 384, 12, 6, 1e-12


# ---- data ----------------------------------------------------------------------


def open_text(path):
    path = str(path)
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def item_text(item):
    """The text the embedding service embeds for an item (crates/embedding/src/catalog.rs)."""
    t = item["title"].strip()
    for part in (item.get("brand", "").strip(), item.get("category", "").strip()):
        if part:
            t += ". " + part
    d = item.get("description", "").strip()[:DESCRIPTION_CHARS]
    if d:
        t += ". " + d
    return t


def read_catalog(path):
    ids, texts = [], []
    with open_text(path) as f:
        for line in f:
            line = line.strip()
            if line:
                item = json.loads(line)
                ids.append(str(item["id"]))
                texts.append(item_text(item))
    return ids, texts


def read_judgments(path):
    labels = {}
    with open_text(path) as f:
        for row in csv.DictReader(f):
            q, item, g = row["query"].strip(), row["item_id"].strip(), float(row["grade"])
            if q and item:
                labels.setdefault(q, {})[item] = g
    return labels


def is_dev(query, seed, share):
    """As `is_dev` in crates/cli/src/ranker.rs: FNV-1a from OFFSET ^ seed."""
    h = FNV_OFFSET ^ seed
    for b in query.encode("utf-8"):
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return (h % 1_000_000) / 1e6 < share


def split(labels, seed, share):
    train, dev = {}, {}
    for q, l in labels.items():
        (dev if is_dev(q, seed, share) else train)[q] = l
    return train, dev


# ---- metrics (as crates/cli/src/eval.rs) ----------------------------------------


def ndcg10(ranked, labels):
    dcg = sum(labels.get(i, 0.0) / math.log2(r + 2) for r, i in enumerate(ranked[:10]))
    ideal = sorted(labels.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else None


def recall(ranked, labels, k=DEPTH):
    rel = {i for i, g in labels.items() if g >= RELEVANT}
    if not rel:
        return None
    return len(rel & set(ranked[:k])) / len(rel)


def evaluate(rankings, labels):
    n, r = [], []
    for q, l in labels.items():
        ranked = rankings[q]
        x = ndcg10(ranked, l)
        if x is not None:
            n.append(x)
        y = recall(ranked, l)
        if y is not None:
            r.append(y)
    return {"ndcg@10": round(float(np.mean(n)), 4), "recall@100": round(float(np.mean(r)), 4), "queries": len(labels)}


# ---- the encoder in ONNX Runtime (stock, and the export) ------------------------


def export_module():
    """scripts/export-encoder as a module (its build_model writes the ONNX graph)."""
    loader = importlib.machinery.SourceFileLoader("export_encoder", str(HERE / "export-encoder"))
    spec = importlib.util.spec_from_loader("export_encoder", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


class OnnxEncoder:
    def __init__(self, model_path, tokenizer_path, threads):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(str(tokenizer_path))
        self.tok.enable_truncation(256)
        self.tok.enable_padding()

    def encode(self, texts, batch=64):
        # Sorted by length: a batch pads to its longest text (as the service groups).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vecs = [None] * len(texts)
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            enc = self.tok.encode_batch([texts[i] for i in idx])
            feed = {
                "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
            }
            for i, v in zip(idx, self.session.run(None, feed)[0]):
                vecs[i] = v
        return np.stack(vecs).astype(np.float32)


def dense_rankings(encoder, queries, item_vecs, ids, depth=DEPTH):
    qv = encoder.encode(queries, batch=128)
    out = {}
    for s in range(0, len(queries), 256):
        sims = qv[s : s + 256] @ item_vecs.T
        top = np.argpartition(-sims, depth, axis=1)[:, :depth]
        for row, q in enumerate(queries[s : s + 256]):
            t = top[row][np.argsort(-sims[row, top[row]])]
            out[q] = [ids[i] for i in t]
    return out


# ---- the encoder in PyTorch -------------------------------------------------------


def torch_model(weights):
    import torch
    import torch.nn.functional as F

    class Bert(torch.nn.Module):
        """all-MiniLM-L6-v2 with mean pooling and L2 normalisation, parameters named
        as in model.safetensors (BertModel)."""

        def __init__(self, tensors):
            super().__init__()
            # Floats are trained; the rest (position_ids) is carried through as is.
            self.p = torch.nn.ParameterDict(
                {
                    k.replace(".", "__"): torch.nn.Parameter(torch.from_numpy(v.copy()))
                    for k, v in tensors.items()
                    if v.dtype == np.float32
                }
            )
            self.fixed = {k: v for k, v in tensors.items() if v.dtype != np.float32}

        def w(self, name):
            return self.p[name.replace(".", "__")]

        def linear(self, x, prefix):
            return F.linear(x, self.w(prefix + ".weight"), self.w(prefix + ".bias"))

        def norm(self, x, prefix):
            return F.layer_norm(x, (HIDDEN,), self.w(prefix + ".weight"), self.w(prefix + ".bias"), EPS)

        def forward(self, ids, mask, types):
            n, seq = ids.shape
            pos = torch.arange(seq).unsqueeze(0)
            x = (
                F.embedding(ids, self.w("embeddings.word_embeddings.weight"))
                + F.embedding(pos, self.w("embeddings.position_embeddings.weight"))
                + F.embedding(types, self.w("embeddings.token_type_embeddings.weight"))
            )
            x = self.norm(x, "embeddings.LayerNorm")
            bias = (1.0 - mask[:, None, None, :].float()) * -1e9
            head = HIDDEN // HEADS
            for i in range(LAYERS):
                p = f"encoder.layer.{i}"

                def heads(t):
                    return t.view(n, seq, HEADS, head).transpose(1, 2)

                q = heads(self.linear(x, f"{p}.attention.self.query"))
                k = heads(self.linear(x, f"{p}.attention.self.key"))
                v = heads(self.linear(x, f"{p}.attention.self.value"))
                att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head) + bias, dim=-1)
                ctx = (att @ v).transpose(1, 2).reshape(n, seq, HIDDEN)
                x = self.norm(self.linear(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
                h = F.gelu(self.linear(x, f"{p}.intermediate.dense"))
                x = self.norm(self.linear(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
            m = mask.unsqueeze(-1).float()
            pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, dim=-1)

        def tensors(self):
            out = {k.replace("__", "."): v.detach().numpy().copy() for k, v in self.p.items()}
            out.update(self.fixed)
            return out

    return Bert(weights)


def batch_features(tok, texts):
    import torch

    enc = tok.encode_batch(texts)
    return (
        torch.tensor([e.ids for e in enc], dtype=torch.long),
        torch.tensor([e.attention_mask for e in enc], dtype=torch.long),
        torch.tensor([e.type_ids for e in enc], dtype=torch.long),
    )


# ---- training ---------------------------------------------------------------------


def training_pairs(train, ids, texts, candidates, rng):
    """(query, positive text, hard negative text) for every relevant judgment."""
    text_of = dict(zip(ids, texts))
    pairs = []
    for q, l in train.items():
        pos = [i for i, g in l.items() if g >= RELEVANT and i in text_of]
        judged_neg = [i for i, g in l.items() if g < RELEVANT and i in text_of]
        mined = [i for i in candidates.get(q, [])[30:DEPTH] if i not in l and i in text_of]
        for p in pos:
            pool = judged_neg or mined
            if not pool:
                continue
            pairs.append((q, text_of[p], text_of[rng.choice(pool)]))
    return pairs


def save_checkpoint(path, model, opt, sched, step, epoch, order, elapsed, planned):
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
         "epoch": epoch, "order": order, "elapsed": elapsed, "planned": planned},
        tmp,
    )
    os.replace(tmp, path)


def train_model(a, model, tok, pairs, log):
    import torch

    torch.manual_seed(a.seed)
    steps_per_epoch = len(pairs) // a.batch_size
    total = steps_per_epoch * a.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    # Linear warm-up over the first 10% and decay to 0 at the last step. The last
    # step is the epochs' end, or where the time budget ends if that comes first
    # (re-planned from the measured step time after the first steps), so a
    # budget-bound run still ends on a small learning rate.
    plan = {"total": total}

    def schedule(s):
        end = plan["total"]
        warmup = max(1, int(end * 0.1))
        return min((s + 1) / warmup, max(0.0, (end - s) / max(1, end - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    ckpt = a.out / "checkpoint.pt"
    step, epoch, elapsed = 0, 0, 0.0
    rng = random.Random(a.seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    if a.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, epoch, order, elapsed = state["step"], state["epoch"], state["order"], state["elapsed"]
        plan["total"] = state.get("planned", total)
        log(f"resumed at step {step}/{plan['total']} (epoch {epoch + 1}, {elapsed / 60:.1f} min trained)")
    started = time.monotonic() - elapsed
    last_ckpt = time.monotonic()
    budget = a.max_minutes * 60
    losses = []
    model.train()
    stopped = "done"
    first = step
    while step < plan["total"]:
        if time.monotonic() - started >= budget:
            stopped = f"time budget ({a.max_minutes} min)"
            break
        i = step % steps_per_epoch
        if i == 0 and step > 0 and step // steps_per_epoch != epoch:
            epoch = step // steps_per_epoch
            rng = random.Random(a.seed + epoch)
            rng.shuffle(order)
        chunk = [pairs[j] for j in order[i * a.batch_size : (i + 1) * a.batch_size]]
        q = model(*batch_features(tok, [c[0] for c in chunk]))
        d = model(*batch_features(tok, [c[1] for c in chunk] + [c[2] for c in chunk]))
        scores = q @ d.T * SCALE
        loss = torch.nn.functional.cross_entropy(scores, torch.arange(len(chunk)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        losses.append(float(loss.detach()))
        if step == first + 10 and not a.resume:
            per_step = (time.monotonic() - started) / 10
            fits = step + int((budget - (time.monotonic() - started)) / per_step)
            if fits < plan["total"]:
                plan["total"] = fits
                log(f"{per_step:.1f} s a step: {fits} of {total} steps fit the budget; the schedule ends there")
        if step % 10 == 0 or step == plan["total"]:
            spent = time.monotonic() - started
            eta = spent / step * (plan["total"] - step) if step else 0
            log(f"step {step}/{plan['total']} epoch {min(step // steps_per_epoch + 1, a.epochs)}"
                f" loss {np.mean(losses[-10:]):.4f} lr {sched.get_last_lr()[0]:.2e}"
                f" {spent / 60:.1f} min, eta {eta / 60:.1f} min")
        if time.monotonic() - last_ckpt >= a.checkpoint_minutes * 60:
            save_checkpoint(ckpt, model, opt, sched, step, epoch, order, time.monotonic() - started, plan["total"])
            last_ckpt = time.monotonic()
    save_checkpoint(ckpt, model, opt, sched, step, epoch, order, time.monotonic() - started, plan["total"])
    model.eval()
    return {"steps": step, "of": total, "planned": plan["total"], "stopped": stopped, "minutes": round((time.monotonic() - started) / 60, 1),
            "loss_first_10": round(float(np.mean(losses[:10])), 4) if losses else None,
            "loss_last_10": round(float(np.mean(losses[-10:])), 4) if losses else None}


def export(a, model, tokenizer_json, check_texts, tok, threads):
    """ONNX FP32 + INT8 of the trained weights, checked against PyTorch."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from safetensors.numpy import save_file

    ex = export_module()
    tensors = model.tensors()
    (a.out / "weights").mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(a.out / "weights" / "model.safetensors"))
    root = a.out / "encoder"
    fp32, int8 = root / "fp32", root / "int8"
    for d in (fp32, int8):
        d.mkdir(parents=True, exist_ok=True)
    graph = ex.build_model(tensors)
    (fp32 / "model.onnx").write_bytes(graph.SerializeToString())
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32 / "model.onnx"), str(pre), skip_symbolic_shape=True)
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(pre, out, per_channel=True, weight_type=QuantType.QInt8)
        (int8 / "model.onnx").write_bytes(out.read_bytes())
    signature = {
        "inputs": [{"name": n, "dtype": "int64", "shape": [-1, -1]} for n in ex.INPUTS],
        "outputs": [{"name": ex.OUTPUT, "dtype": "float32", "shape": [-1, HIDDEN]}],
        "dim": HIDDEN,
        "max_tokens": ex.MAX_TOKENS,
        "source": f"{ex.SOURCE}, fine-tuned by scripts/train_encoder.py",
    }
    for d in (fp32, int8):
        (d / "tokenizer.json").write_bytes(tokenizer_json)
        (d / "signature.json").write_text(json.dumps(signature, indent=2) + "\n")
    onnx_enc = OnnxEncoder(fp32 / "model.onnx", fp32 / "tokenizer.json", threads)
    got = onnx_enc.encode(check_texts)
    with torch.no_grad():
        want = np.concatenate(
            [model(*batch_features(tok, check_texts[s : s + 64])).numpy() for s in range(0, len(check_texts), 64)]
        )
    cos = np.sum(got * want, axis=1)
    return fp32, int8, {"texts": len(check_texts), "cosine_min": round(float(cos.min()), 6)}


def serving_cost(stock_int8, new_int8, texts, rounds=3, seconds=3.0):
    """Texts per second of the stock and the trained INT8 encoders (what CPU replicas
    serve) at batch 32, measured in alternating rounds in one run; the ratio is
    trained over stock (same architecture: about 1)."""
    batch = texts[:32]
    rates = {"stock": [], "trained": []}
    for _ in range(rounds):
        for name, enc in (("stock", stock_int8), ("trained", new_int8)):
            enc.encode(batch, batch=32)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                enc.encode(batch, batch=32)
                n += len(batch)
            rates[name].append(n / (time.perf_counter() - start))
    stock, trained = float(np.median(rates["stock"])), float(np.median(rates["trained"]))
    return {"batch": 32, "texts_per_s_stock": round(stock, 1), "texts_per_s_trained": round(trained, 1),
            "trained_over_stock": round(trained / stock, 3)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalog", required=True, type=Path)
    p.add_argument("--judgments", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--models", type=Path, default=HERE.parent / "models", help="the stock encoder (models/encoder)")
    p.add_argument("--candidates", type=Path, help="JSONL {query, ids}: the mesh's candidate lists for hard negatives")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dev-share", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--max-minutes", type=float, default=60)
    p.add_argument("--checkpoint-minutes", type=float, default=5)
    p.add_argument("--max-pairs", type=int, default=0, help="train on at most this many pairs (0: all)")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()

    try:
        import torch
    except ImportError:
        sys.exit("PyTorch is not installed: run scripts/setup --train")
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def log(msg):
        print(f"[{(time.monotonic() - t0) / 60:5.1f} min] {msg}", file=sys.stderr, flush=True)

    ids, texts = read_catalog(a.catalog)
    labels = read_judgments(a.judgments)
    train, dev = split(labels, a.seed, a.dev_share)
    log(f"{len(ids)} items; {len(labels)} queries: {len(train)} train, {len(dev)} dev (seed {a.seed}, share {a.dev_share})")

    stock_dir = a.models / "encoder"
    stock = OnnxEncoder(stock_dir / "fp32" / "model.onnx", stock_dir / "fp32" / "tokenizer.json", threads)
    cache = a.out / "stock-items.npy"
    if a.resume and cache.exists():
        stock_items = np.load(cache)
    else:
        log("embedding the catalog with the stock encoder (FP32)")
        stock_items = stock.encode(texts)
        np.save(cache, stock_items)
    metrics = {"split": {"seed": a.seed, "dev_share": a.dev_share, "train_queries": len(train), "dev_queries": len(dev)}}
    metrics["dev_before"] = {"dense_fp32": evaluate(dense_rankings(stock, list(dev), stock_items, ids), dev)}
    log(f"stock encoder on dev: {metrics['dev_before']}")

    if a.candidates:
        candidates = {}
        with open_text(a.candidates) as f:
            for line in f:
                r = json.loads(line)
                candidates[r["query"]] = r["ids"]
    else:
        log("mining hard negatives from the stock encoder's dense candidates")
        candidates = dense_rankings(stock, list(train), stock_items, ids)
    rng = random.Random(a.seed)
    pairs = training_pairs(train, ids, texts, candidates, rng)
    rng.shuffle(pairs)
    if a.max_pairs:
        pairs = pairs[: a.max_pairs]
    log(f"{len(pairs)} training pairs (query, relevant item, hard negative)")

    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    src = export_module().model_dir()
    model = torch_model(load_file(str(src / "model.safetensors")))
    tokenizer_json = (src / "tokenizer.json").read_bytes()
    tok = Tokenizer.from_str(tokenizer_json.decode())
    tok.enable_truncation(256)
    tok.enable_padding()
    # The PyTorch forward must be the ONNX graph's before it is trained.
    probe = list(dev)[:32] + texts[:32]
    with torch.no_grad():
        mine = model(*batch_features(tok, probe)).numpy()
    agree = float(np.min(np.sum(mine * stock.encode(probe), axis=1)))
    log(f"PyTorch forward vs the stock ONNX encoder: cosine min {agree:.6f}")
    if agree < 0.999:
        sys.exit(f"the PyTorch forward does not match the stock encoder (cosine {agree:.6f} < 0.999)")

    log(f"training: batch {a.batch_size}, {a.epochs} epoch(s), lr {a.lr}, budget {a.max_minutes} min, {threads} threads")
    run = train_model(a, model, tok, pairs, log)
    log(f"trained: {run}")

    fp32, int8, check = export(a, model, tokenizer_json, probe + [c[1] for c in pairs[:64]], tok, threads)
    log(f"export vs PyTorch: {check}")
    if check["cosine_min"] < 0.999:
        sys.exit(f"the ONNX export differs from PyTorch (cosine {check['cosine_min']} < 0.999)")

    after = {}
    for name, path in (("dense_fp32", fp32), ("dense_int8", int8)):
        enc = OnnxEncoder(path / "model.onnx", path / "tokenizer.json", threads)
        after[name] = evaluate(dense_rankings(enc, list(dev), enc.encode(texts), ids), dev)
        log(f"fine-tuned {name} on dev: {after[name]}")
    metrics["dev_after"] = after
    stock_int8 = OnnxEncoder(stock_dir / "int8" / "model.onnx", stock_dir / "int8" / "tokenizer.json", threads)
    new_int8 = OnnxEncoder(int8 / "model.onnx", int8 / "tokenizer.json", threads)
    metrics["serving_cost"] = serving_cost(stock_int8, new_int8, [c[1] for c in pairs[:32]])
    log(f"serving cost: {metrics['serving_cost']}")
    metrics["metric"] = {
        "ndcg@10": "linear gain = grade, ideal from the judged grades",
        "recall@100": f"relevant = grade >= {RELEVANT}",
        "retrieval": "exact top-100 by cosine over the whole catalog (the service's HNSW is approximate)",
    }
    (a.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    training = {
        "catalog": str(a.catalog), "judgments": str(a.judgments), "pairs": len(pairs), "batch_size": a.batch_size,
        "epochs": a.epochs, "lr": a.lr, "scale": SCALE, "hard_negatives": "judged < 2, else ranks 30..100 of candidates",
        "candidates": str(a.candidates) if a.candidates else "the stock encoder's dense top 100",
        "threads": threads, "run": run, "export_check": check, "torch": torch.__version__,
    }
    (a.out / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    print(json.dumps({"metrics": metrics, "training": training}, indent=2))


if __name__ == "__main__":
    main()
