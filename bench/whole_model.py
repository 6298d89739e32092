"""Whole compressed models through the TVM backend vs torch eager on the dense model (batch 1, 1 thread).

For each model: compress with a pipeline (no retraining: this measures speed and bytes, not accuracy), save the
``.dcc`` file, lower with the TVM backend for the host CPU (``detect_cpu``), check its output against the torch
backend, then time torch eager (dense, float32) and the TVM module in interleaved rounds (A B A B ...) and report
the median of the per-round ratios, plus the artifact's constant bytes against the ``.dcc`` bytes.

    python bench/whole_model.py                      # all models, writes bench/results/whole_model.json
    python bench/whole_model.py --models resnet18 --rounds 5
    python bench/whole_model.py --models mobilenet_v2-c4,mobilenet_v2-c4pc --weights fast,balanced

The ``mobilenet_v2-c*`` settings are what a user would deploy without retraining: fold BatchNorm, cluster every
layer (no pruning) to 4, 6 or 8 bits, Huffman-code. ``...pc``: per-channel codebooks (one ``k``-entry codebook
per output channel, ``cluster{granularity=channel}``, float16 centroids).
"""
from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")  # equal threads for both sides, set before TVM/torch start
os.environ.setdefault("TVM_BIND_THREADS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import dccomp  # noqa: E402
from dccomp.archs import resnet18  # noqa: E402
from dccomp.models import LeNet300100  # noqa: E402

#: model name -> (builder, input shape, pipeline). Sparsities are typical of retrained pruned models (ResNet-18
#: conv layers ~80% pruned; MobileNetV2's pointwise layers ~50%, depthwise layers left dense).
MODELS = {
    "lenet-300-100": (lambda: LeNet300100(), (1, 1, 28, 28), "prune{sparsity=0.92},cluster{bits=4},huffman"),
    "resnet18": (lambda: resnet18(1000), (1, 3, 224, 224),
                 "fold-bn,prune{sparsity=0.8},cluster{bits=5},huffman"),
    "mobilenet_v2": ("mobilenet_v2", (1, 3, 224, 224),
                     "fold-bn,prune{sparsity=0.5,exclude=conv2d.depthwise},cluster{bits=6},huffman"),
    "mobilenet_v2-c4": ("mobilenet_v2", (1, 3, 224, 224), "fold-bn,cluster{bits=4},huffman"),
    "mobilenet_v2-c6": ("mobilenet_v2", (1, 3, 224, 224), "fold-bn,cluster{bits=6},huffman"),
    "mobilenet_v2-c8": ("mobilenet_v2", (1, 3, 224, 224), "fold-bn,cluster{bits=8},huffman"),
    "mobilenet_v2-c4pc": ("mobilenet_v2", (1, 3, 224, 224),
                          "fold-bn,cluster{bits=4,granularity=channel},huffman{codebook_dtype=float16}"),
    "mobilenet_v2-c6pc": ("mobilenet_v2", (1, 3, 224, 224),
                          "fold-bn,cluster{bits=6,granularity=channel},huffman{codebook_dtype=float16}"),
}


def _compress(model, pipeline: str, x):
    """``(compiled model, .dcc bytes)``."""
    comp = dccomp.compile(model, pipeline, example_inputs=x)
    with tempfile.TemporaryDirectory() as d:
        return comp, comp.save(pathlib.Path(d) / "m.dcc")


def _build(spec):
    if callable(spec):
        torch.manual_seed(0)
        return spec(), "random init"
    from dccomp import zoo

    try:
        return zoo.load(spec, pretrained=True), "pretrained"
    except (ImportError, FileNotFoundError):
        return zoo.load(spec, pretrained=False), "random init (weights package not installed)"


def _time(fn, x, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - t) / reps


def run(name: str, rounds: int, reps: int, modes: list[str]) -> list[dict]:
    spec, shape, pipeline = MODELS[name]
    model, origin = _build(spec)
    model.eval()
    torch.manual_seed(0)
    x = torch.randn(*shape)
    t0 = time.perf_counter()
    comp, dcc_bytes = _compress(model, pipeline, x)
    t_compress = time.perf_counter() - t0
    return [_run_mode(name, origin, shape, pipeline, model, comp, dcc_bytes, t_compress, x, rounds, reps, m)
            for m in modes]


def _run_mode(name, origin, shape, pipeline, model, comp, dcc_bytes, t_compress, x, rounds, reps, weights):
    t0 = time.perf_counter()
    tvm_model = dccomp.compile(comp, backend="tvm", example_inputs=x,  # llvm tuned for this CPU
                               backend_options={"weights": weights})
    t_build = time.perf_counter() - t0
    low = tvm_model.lowered if "lowered" in tvm_model._modules else tvm_model._lowered_fn
    with torch.no_grad():
        ref = comp(x)
        err = ((tvm_model(x) - ref).abs().max() / ref.abs().max()).item()
        eager = lambda inp: model(inp)  # noqa: E731
        for _ in range(2):  # warm-up
            eager(x), tvm_model(x)
        ratios, t_eager, t_tvm = [], [], []
        if _time(eager, x, 1) < 1e-3:  # tiny models: more calls per timing
            reps *= 100
        for _ in range(rounds):
            a = _time(eager, x, reps)
            b = _time(tvm_model, x, reps)
            t_eager.append(a), t_tvm.append(b), ratios.append(a / b)
    kinds: dict[str, int] = {}
    layouts: dict[str, int] = {}
    for layer in low.layers:
        kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
        layouts[layer.layout] = layouts.get(layer.layout, 0) + 1
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {
        "model": name, "weights": origin, "kernel_choice": weights, "input": list(shape), "pipeline": pipeline,
        "dense_param_bytes": dense_bytes, "dcc_bytes": dcc_bytes, "file_ratio": dense_bytes / dcc_bytes,
        "artifact_const_bytes": low.weight_nbytes, "artifact_over_dcc": low.weight_nbytes / dcc_bytes,
        "layer_kernels": kinds, "layer_layouts": layouts, "max_rel_err_vs_torch_backend": err,
        "torch_eager_dense_ms_median": 1e3 * statistics.median(t_eager),
        "tvm_compressed_ms_median": 1e3 * statistics.median(t_tvm),
        "speedup_median_of_ratios": statistics.median(ratios), "speedup_per_round": ratios,
        "compress_s": t_compress, "build_s": t_build, "threads": 1, "rounds": rounds, "reps": reps,
        "target": low.target,
    }
    print(f"{name:13s} {origin}, weights={weights}: file {dense_bytes:,} -> {dcc_bytes:,} B "
          f"({out['file_ratio']:.1f}x); artifact "
          f"constants {low.weight_nbytes:,} B = {out['artifact_over_dcc']:.2f}x the .dcc; layouts {layouts}; "
          f"err {err:.1e}\n  torch eager dense {out['torch_eager_dense_ms_median']:.3f} ms, TVM compressed "
          f"{out['tvm_compressed_ms_median']:.3f} ms: {out['speedup_median_of_ratios']:.2f}x "
          f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5, help="calls per timing (x100 for models under 1 ms)")
    ap.add_argument("--weights", default="fast,small,balanced", help="TVM layout choice per layer: fast (the "
                    "measured fastest), small (fewest bytes), balanced (fastest within 1.5x the coded bytes)")
    ap.add_argument("--json", default=str(pathlib.Path(__file__).parent / "results" / "whole_model.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    modes = [wt.strip() for wt in args.weights.split(",") if wt.strip()]
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for m in (m.strip() for m in args.models.split(",") if m.strip()):
        results += run(m, args.rounds, args.reps, modes)
        path.write_text(json.dumps({"batch": 1, "threads": 1, "results": results}, indent=2))  # after each model
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
