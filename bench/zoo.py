"""Compressing real pretrained ImageNet CNNs offline (MobileNetV2, EfficientNet-Lite0), without labels.

    python bench/zoo.py [--models mobilenet_v2,efficientnet_lite0] [--configs fp16,int8-dynamic,cluster8,...]
                        [--eval-views 128] [--train-views 256] [--json bench/results/zoo.json]

Metric (no ImageNet labels offline): on ``--eval-views`` random 224x224 crops of the *eval* photos of
:mod:`dccomp.zoo.photos`, top-1 agreement with the fp32 model and mean KL(fp32 || compressed) in nats.
Distillation uses views of the disjoint *train* photos only. Size: file bytes against the dense fp32 file of
the same format (dccomp: the ``.dcc`` file of the uncompressed traced model; torch baselines: ``torch.save`` of
the fp32 state dict). Each configuration runs in its own process; ``peak_rss_mb`` is that process's peak
resident memory (model, eval views and compression together), ``seconds`` the compression time.

Configurations: ``fp16`` (weights stored as float16), ``int8-dynamic`` (``torch.ao`` dynamic int8 of the
``Linear`` layers, the only ones it supports), ``cluster8-linear`` / ``cluster8`` (post-training 8-bit
clustering, linear / k-means++ init, Huffman coded, no folding, no retraining), ``fold-cluster8`` (fold-bn first),
``best`` (fold-bn, prune the big 1x1/fc layers, distil, cluster with k-means++, distil on unlabelled views,
Huffman), ``best-8x`` (the same recipe, more pruning and fewer bits: sized for >= 8x).

Per-channel codebooks (``cluster{granularity=channel}``): ``pcB`` (B = 3..8) folds BatchNorm, then clusters every
weight with one B-bit k-means++ codebook per output channel (``--group-size`` channels per codebook), except the
first conv and the depthwise convs (a 3x3 depthwise channel has only 9 weights), which keep one 8-bit codebook
per tensor; Huffman, float16 codebooks. ``pcB-distill`` adds unlabelled distillation (``retrain{distill=1}``,
``--epochs``/``--lr``) of the centroids and biases before coding. ``gptq-pcB[-distill]``: the same with the
data-aware ``gptq`` pass instead of ``cluster`` (Hessian-weighted k-means codebooks, GPTQ cluster indices) on
``--calibration`` views of the *train* photos.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

CONFIGS = ("fp16", "int8-dynamic", "cluster8-linear", "cluster8", "fold-cluster8", "best", "best-8x")
#: per-channel codebook configurations (not run by default): ``pc<bits>`` and ``pc<bits>-distill``.
PC_CONFIG = re.compile(r"(gptq-)?pc([3-8])(-distill)?")
#: ``best-8x``: the ``best`` recipe with these options, chosen to land at >= 8x.
AGGRESSIVE = {"sparsity": 0.5, "bits": 5, "other_bits": 6}
TARGET = {"ratio": 8.0, "agreement": 0.95}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _torch_bytes(state: dict) -> int:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer().nbytes


def _alternation(names: list[str]) -> str:
    return "|".join(re.escape(n.rsplit(".", 1)[0]) for n in names)


def big_layers(ir, min_numel: int) -> list[str]:
    """Names of the 1x1-conv and fully connected weights with at least ``min_numel`` entries."""
    out = []
    for w in ir:
        p = ir.param(w.name)
        if p.numel() >= min_numel and (w.kind == "linear" or (p.dim() == 4 and p.shape[2:] == (1, 1))):
            out.append(w.name)
    return out


def best_pipeline(ir, a: argparse.Namespace) -> str:
    """fold-bn, prune ``a.sparsity`` of the big 1x1/fc layers, [distil ``a.pre_epochs``], cluster (``a.bits`` bits
    on them, ``a.other_bits`` elsewhere, k-means++), distil ``a.epochs`` (centroids and biases), Huffman."""
    big = big_layers(ir, a.min_numel)
    rest = [w.name for w in ir if w.name not in big]
    b, r = json.dumps(_alternation(big)), json.dumps(_alternation(rest))  # pipeline strings are JSON strings
    def distil(epochs: float, lr: float) -> str:
        return (f"retrain{{distill=1,distill_loss={a.kd},temperature={a.temperature},epochs={epochs},lr={lr},"
                "optimizer=adam,weight_decay=0,freeze_bn=true}")

    prune = f"prune{{sparsity={a.sparsity},layers={{{b}:{a.sparsity}}},exclude={r}}}," if a.sparsity > 0 else ""
    pre = distil(a.pre_epochs, a.pre_lr) + "," if a.pre_epochs > 0 else ""
    return (f"fold-bn,{prune}{pre}cluster{{bits={a.other_bits},init=kmeans++,layers={{{b}:{a.bits}}}}},"
            + distil(a.epochs, a.lr) + ",huffman")


def distil_pass(a: argparse.Namespace, epochs: float, lr: float) -> str:
    """The unlabelled-distillation ``retrain`` pass of these recipes (Adam, KL to the fp32 model, BN frozen)."""
    return (f"retrain{{distill=1,distill_loss={a.kd},temperature={a.temperature},epochs={epochs},lr={lr},"
            "optimizer=adam,weight_decay=0,freeze_bn=true}")


def channel_pipeline(ir, a: argparse.Namespace, bits: int, distill: bool, gptq: bool = False) -> str:
    """fold-bn, per-channel ``bits``-bit k-means++ codebooks (first conv and depthwise convs: one 8-bit codebook
    per tensor) by ``cluster`` or, with ``gptq``, by the data-aware ``gptq`` pass on ``a.calibration`` views,
    [distil ``a.epochs``], Huffman with float16 codebooks."""
    first = next(iter(ir.weights.values())).name
    small = json.dumps("conv2d.depthwise|" + _alternation([first]))
    calib = f"samples={a.calibration}," if gptq else ""
    cluster = (f"{'gptq' if gptq else 'cluster'}{{bits={bits},{calib}init=kmeans++,granularity=channel,"
               f"group_size={a.group_size},layers={{{small}:8}},granularity_layers={{{small}:\"tensor\"}}}}")
    return "fold-bn," + cluster + ("," + distil_pass(a, a.epochs, a.lr) if distill else "") + \
        ",huffman{codebook_dtype=float16}"


def run_one(model_name: str, config: str, a: argparse.Namespace) -> dict:
    import dccomp
    from dccomp import zoo
    from dccomp.format import file_nbytes

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    model = zoo.load(model_name)
    kw = zoo.trace_options(model_name)
    ev = zoo.photo_views(a.eval_views, split="eval", seed=1)
    dense_ir = dccomp.trace(model, ev[:1], **kw)
    out: dict = {"model": model_name, "config": config, "params": sum(p.numel() for p in model.parameters()),
                 "dense_file_bytes": file_nbytes(dense_ir), "eval_views": a.eval_views}
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    if config in ("fp16", "int8-dynamic"):
        fp32 = _torch_bytes(model.state_dict())
        if config == "fp16":
            small = copy.deepcopy(model).half()
            nbytes = _torch_bytes(small.state_dict())
            student = small.float()  # fp16-stored weights, fp32 compute
        else:
            student = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
            nbytes = _torch_bytes(student.state_dict())
        out.update(file_bytes=nbytes, ratio=fp32 / nbytes, reference_bytes=fp32, size_basis="torch.save state_dict")
    else:
        trainer = None
        pc = PC_CONFIG.fullmatch(config)
        if pc:
            gptq = bool(pc.group(1))
            pipeline = channel_pipeline(dense_ir, a, int(pc.group(2)), bool(pc.group(3)), gptq)
            if gptq or pc.group(3):
                views = zoo.photo_views(a.train_views, split="train", seed=2, size=a.distill_size)
                trainer = dccomp.Trainer(views, batch_size=a.batch_size)
                out.update(train_views=a.train_views, distill_size=a.distill_size, batch_size=a.batch_size)
        elif config in ("best", "best-8x"):
            if config == "best-8x":  # the size target first: more pruning, fewer bits
                a = argparse.Namespace(**{**vars(a), **AGGRESSIVE})
            pipeline = best_pipeline(dense_ir, a)
            views = zoo.photo_views(a.train_views, split="train", seed=2, size=a.distill_size)
            trainer = dccomp.Trainer(views, batch_size=a.batch_size)
            out.update(train_views=a.train_views, distill_size=a.distill_size, batch_size=a.batch_size)
        else:
            pipeline = {"cluster8-linear": "cluster{bits=8},huffman",
                        "cluster8": "cluster{bits=8,init=kmeans++},huffman",
                        "fold-cluster8": "fold-bn,cluster{bits=8,init=kmeans++},huffman"}[config]
        compiled = dccomp.compile(model, pipeline, example_inputs=ev[:1], trainer=trainer, seed=a.seed, **kw)
        student = compiled.eval()
        with tempfile.TemporaryDirectory() as tmp:
            nbytes = compiled.save(os.path.join(tmp, "m.dcc"))
            assert nbytes == os.path.getsize(os.path.join(tmp, "m.dcc"))
        out.update(file_bytes=nbytes, ratio=out["dense_file_bytes"] / nbytes, pipeline=pipeline,
                   layer_bytes={r["layer"]: r["total_bytes"] for r in compiled.report().to_dict()["rows"]},
                   codebook_bytes=sum(r.codebook_bytes for r in compiled.report().rows),
                   size_basis=".dcc file", records={k: {kk: vv for kk, vv in v.items() if kk in ("loss", "steps")}
                                                    for k, v in compiled.records.items() if k.startswith("retrain")})
    out["seconds"] = time.perf_counter() - t0
    out.update(zoo.agreement_kl(student, model, ev))
    out.update(peak_rss_mb=_rss_mb(), rss_before_mb=rss0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--eval-views", type=int, default=128)
    ap.add_argument("--train-views", type=int, default=256)
    ap.add_argument("--distill-size", type=int, default=224, help="side of the distillation views (pixels)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--pre-epochs", type=float, default=0.0, help="distillation epochs between prune and cluster")
    ap.add_argument("--pre-lr", type=float, default=3e-5)
    ap.add_argument("--kd", default="kl")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--sparsity", type=float, default=0.0)
    ap.add_argument("--bits", type=int, default=6)
    ap.add_argument("--other-bits", type=int, default=8, help="cluster bits of the layers that are not big")
    ap.add_argument("--min-numel", type=int, default=100_000)
    ap.add_argument("--group-size", type=int, default=1, help="output channels per codebook (pc* configs)")
    ap.add_argument("--calibration", type=int, default=128, help="calibration views of the gptq-pc* configs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="bench/results/zoo.json")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(run_one(*a.worker, a)))
        return
    results = []
    passthrough = [arg for arg in sys.argv[1:]]
    for model_name in a.models.split(","):
        for config in a.configs.split(","):
            p = subprocess.run([sys.executable, __file__, *passthrough, "--worker", model_name, config],
                               capture_output=True, text=True)
            if p.returncode != 0:
                r = {"model": model_name, "config": config, "error": p.stderr.strip().splitlines()[-1:]}
            else:
                r = json.loads(p.stdout.strip().splitlines()[-1])
            results.append(r)
            if "error" in r:
                print(f"{model_name:<19}{config:<16} ERROR {r['error']}", flush=True)
            else:
                print(f"{model_name:<19}{config:<16}{r['ratio']:>7.2f}x{100 * r['agreement']:>8.1f}%"
                      f"{r['kl']:>9.4f}{r['seconds']:>8.0f}s{r['peak_rss_mb']:>8.0f}MB", flush=True)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"target": TARGET, "args": {k: v for k, v in vars(a).items()
                                                                  if k != "worker"}, "results": results},
                                       indent=2) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
