"""Benchmark dccomp's TVM convolution kernels: direct sparse conv (CSR + codebook) vs the scheduled dense
fallback vs torch's F.conv2d, on ResNet-18 / MobileNetV2 / LeNet-5 layers at several densities.

    python bench/conv_kernels.py [--threads 1] [--rounds 7] [--mcpu generic|haswell] [--schedules] [--quick]

Sets TVM_NUM_THREADS / TVM_BIND_THREADS=0 and torch.set_num_threads to the same count before TVM starts its
thread pool. Every variant of a layer (torch, TVM dense, TVM sparse at each density) is timed in interleaved
rounds (shuffled order each round, median of a few calls per round); the reported time is the median over
rounds, and the table prints ratios (the machine is shared: absolute times are noisy). Every kernel is first
checked against F.conv2d on the decoded weight. ``--schedules`` also times both CPU sparse schedules
(``plane`` / ``chunk``, see backends/tvm/conv_kernels.py). ``--mcpu generic`` compiles for the generic x86-64
target (SSE2), ``--mcpu haswell`` for AVX2, instead of the host CPU. Writes
bench/results/conv_kernels[_MCPU].json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

# (name, n, c, h, w, oc, kh, kw, stride, padding, groups, k)
LAYERS = [
    ("resnet18.layer1.conv (64->64 3x3 @56)", 1, 64, 56, 56, 64, 3, 3, 1, 1, 1, 32),
    ("resnet18.layer2.conv (128->128 3x3 @28)", 1, 128, 28, 28, 128, 3, 3, 1, 1, 1, 32),
    ("resnet18.layer3.conv (256->256 3x3 @14)", 1, 256, 14, 14, 256, 3, 3, 1, 1, 1, 32),
    ("resnet18.layer4.conv (512->512 3x3 @7)", 1, 512, 7, 7, 512, 3, 3, 1, 1, 1, 32),
    ("resnet18.layer2.downsample (64->128 1x1 s2 @56)", 1, 64, 56, 56, 128, 1, 1, 2, 0, 1, 32),
    ("mobilenetv2 depthwise (144 3x3 s1 @56)", 1, 144, 56, 56, 144, 3, 3, 1, 1, 144, 16),
    ("mobilenetv2 depthwise (144 3x3 s2 @56)", 1, 144, 56, 56, 144, 3, 3, 2, 1, 144, 16),
    ("mobilenetv2 pointwise (32->192 1x1 @56)", 1, 32, 56, 56, 192, 1, 1, 1, 0, 1, 16),
    ("lenet5.conv2 (20->50 5x5 @12)", 1, 20, 12, 12, 50, 5, 5, 1, 0, 1, 16),
]
DENSITIES = [0.1, 0.2, 0.3, 0.5, 1.0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--round-ms", type=float, default=15.0, help="time per variant per round")
    ap.add_argument("--mcpu", default=None,
                    help="LLVM cpu to compile for (default: the host's; 'generic' = generic x86-64, SSE2; "
                         "e.g. 'haswell' = AVX2, runs on any newer x86 host)")
    ap.add_argument("--schedules", action="store_true", help="time both CPU sparse schedules")
    ap.add_argument("--quick", action="store_true", help="two layers, two densities, 3 rounds (smoke test)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    os.environ["TVM_BIND_THREADS"] = "0"
    import numpy as np
    import torch
    import torch.nn.functional as F
    import tvm

    from dccomp.backends.tvm import conv_kernels as C
    from dccomp.backends.tvm.conv_cpu import sparse_conv2d_chunk, sparse_conv2d_plane
    from dccomp.backends.tvm.conv_geom import DEFAULT_CHUNK, conv_geom
    from dccomp.backends.tvm.targets import resolve_target

    torch.set_num_threads(args.threads)
    if args.mcpu in (None, "host"):
        tdict = resolve_target("llvm", detect_cpu=True)
    elif args.mcpu == "generic":
        tdict = resolve_target("llvm")
    else:
        tdict = {"kind": "llvm", "mcpu": args.mcpu}
    target = tvm.target.Target(tdict)
    rng = np.random.default_rng(0)
    layers, dens, rounds = LAYERS, DENSITIES, args.rounds
    if args.quick:
        layers, dens, rounds = [LAYERS[3], LAYERS[5]], [0.1, 1.0], 3

    def compile_fn(f, name):
        return tvm.compile(f, target=target)[name]

    print(f"threads={args.threads} rounds={rounds} target={tdict} torch={torch.__version__} tvm={tvm.__version__}")
    hdr = (f"{'layer':<50} {'dens':>5} {'nnz':>8} | {'sparse/dense':>12} {'sparse/torch':>12} "
           f"{'dense/torch':>11} {'choice':>7}" + (" | chunk/plane" if args.schedules else ""))
    print(hdr)
    print("-" * len(hdr))
    rows = []
    for (lname, n, c, h, w, oc, kh, kw, s, p, g, k) in layers:
        oh, ow = C.conv2d_out_shape(h, w, kh, kw, s, p, 1)
        geo = dict(n=n, c=c, h=h, w=w, oc=oc, kh=kh, kw=kw, stride=(s, s), padding=(p, p), dilation=(1, 1),
                   groups=g)
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        bias = rng.standard_normal(oc).astype(np.float32)
        idx = rng.integers(0, k, (oc, c // g, kh, kw))
        cb = rng.standard_normal(k).astype(np.float32)
        u = rng.random(idx.shape)
        xt = tvm.runtime.tensor(x)
        xtorch = torch.from_numpy(x)
        btorch = torch.from_numpy(bias)
        variants = {}  # name -> zero-arg callable
        checks = []
        wdense = {}
        for d in dens:
            mask = u < d
            wd = np.where(mask, cb[idx], 0).astype(np.float32)
            wdense[d] = wd
            csr = C.conv_csr(idx, cb, mask, g)
            kinds = ["product"] + (["plane", "chunk"] if args.schedules else [])
            for kind in kinds:
                name = f"bench_sparse_{kind}_{int(d * 100)}"
                kargs = dict(nnz=csr.col.shape[0], k=csr.k, col_dtype=str(csr.col.dtype),
                             code_dtype=str(csr.code.dtype), relu=False, name=name)
                if kind == "product":
                    f = C.sparse_conv2d_func(tdict, **geo, **kargs)
                else:
                    gg = conv_geom(n, c, h, w, oc, kh, kw, (s, s), (p, p), (1, 1), g, DEFAULT_CHUNK)
                    mk = sparse_conv2d_plane if kind == "plane" else sparse_conv2d_chunk
                    f = mk(gg, kargs["nnz"], kargs["k"], kargs["col_dtype"], kargs["code_dtype"], False, name)
                fn = compile_fn(f, name)
                wts = [tvm.runtime.tensor(a) for a in csr.arrays() + [bias]]
                yt = tvm.runtime.tensor(np.zeros((n, oc, oh, ow), np.float32))
                variants[(kind, d)] = (lambda fn=fn, wts=wts, yt=yt: fn(xt, *wts, yt))
                checks.append(((kind, d), yt, wd))
        wd1 = wdense[dens[-1]]
        f = C.dense_conv2d_func(tdict, **geo, relu=False, name="bench_dense")
        fn = compile_fn(f, "bench_dense")
        wts = [tvm.runtime.tensor(wd1), tvm.runtime.tensor(bias)]
        yd = tvm.runtime.tensor(np.zeros((n, oc, oh, ow), np.float32))
        variants[("dense", None)] = (lambda fn=fn, wts=wts, yd=yd: fn(xt, *wts, yd))
        checks.append((("dense", None), yd, wd1))
        wtorch = torch.from_numpy(wd1)
        variants[("torch", None)] = (lambda: F.conv2d(xtorch, wtorch, btorch, s, p, 1, g))
        for key, fn in variants.items():
            fn()
        for key, yt, wd in checks:
            ref = F.conv2d(xtorch, torch.from_numpy(wd), btorch, s, p, 1, g).numpy()
            err = float(np.abs(yt.numpy() - ref).max())
            assert err <= 1e-4 * max(1.0, float(np.abs(ref).max())), (lname, key, err)
        # calls per round: ~round_ms per variant
        reps = {}
        for key, fn in variants.items():
            t = time.perf_counter()
            fn()
            reps[key] = int(min(50, max(3, args.round_ms * 1e-3 / max(time.perf_counter() - t, 1e-6))))
        samples = {key: [] for key in variants}
        keys = list(variants)
        for _ in range(rounds):
            random.shuffle(keys)
            for key in keys:
                fn = variants[key]
                ts = []
                for _ in range(reps[key]):
                    t = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t)
                samples[key].append(float(np.median(ts)))
        med = {key: float(np.median(v)) * 1e6 for key, v in samples.items()}
        td, tt = med[("dense", None)], med[("torch", None)]
        for d in dens:
            ts_ = med[("product", d)]
            nnz = int(np.count_nonzero(u < d))
            row = {"layer": lname, "n": n, "c": c, "h": h, "w": w, "oc": oc, "kh": kh, "kw": kw, "stride": s,
                   "padding": p, "groups": g, "k": k, "oh": oh, "ow": ow, "density": d, "nnz": nnz,
                   "schedule": C._cpu_sparse_schedule(conv_geom(n, c, h, w, oc, kh, kw, s, p, 1, g, DEFAULT_CHUNK)),
                   "sparse_us": ts_, "dense_us": td, "torch_us": tt, "sparse_over_dense": ts_ / td,
                   "sparse_over_torch": ts_ / tt, "dense_over_torch": td / tt,
                   "use_dense_conv": C.use_dense_conv(d, oc, c // g, kh, kw, oh, ow, target=tdict)}
            line = (f"{lname:<50} {d:>5.2f} {nnz:>8} | {ts_ / td:>12.2f} {ts_ / tt:>12.2f} {td / tt:>11.2f} "
                    f"{'dense' if row['use_dense_conv'] else 'sparse':>7}")
            if args.schedules:
                row["plane_us"], row["chunk_us"] = med[("plane", d)], med[("chunk", d)]
                line += f" | {med[('chunk', d)] / med[('plane', d)]:>11.2f}"
            rows.append(row)
            print(line, flush=True)
    # crossover density (sparse time == dense time) per layer, linear between the measured densities;
    # 1.0 when sparse wins everywhere. Median per layer class -> conv_kernels.DENSE_CONV_THRESHOLDS.
    cross, by_class = {}, {}
    for lname in dict.fromkeys(r["layer"] for r in rows):
        rs = [r for r in rows if r["layer"] == lname]
        d_star = 1.0
        for r0, r1 in zip(rs, rs[1:]):
            if r0["sparse_over_dense"] < 1.0 <= r1["sparse_over_dense"]:
                t = (1.0 - r0["sparse_over_dense"]) / (r1["sparse_over_dense"] - r0["sparse_over_dense"])
                d_star = r0["density"] + t * (r1["density"] - r0["density"])
                break
        if rs[0]["sparse_over_dense"] >= 1.0:
            d_star = rs[0]["density"]
        r = rs[0]
        cls = C._conv_class(r["oc"], r["c"] // r["groups"], r["kh"], r["kw"])
        cross[lname] = {"class": cls, "crossover": round(d_star, 3)}
        by_class.setdefault(cls, []).append(d_star)
    print("crossover density per class (median):",
          {k: round(float(np.median(v)), 2) for k, v in sorted(by_class.items())})
    suffix = "" if args.mcpu in (None, "host") else f"_{args.mcpu}"
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"conv_kernels{suffix}.json"
    if not args.quick:
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"threads": args.threads, "rounds": rounds, "target": tdict, "torch": torch.__version__,
                "tvm": tvm.__version__, "machine": platform.machine(), "python": sys.version.split()[0],
                "note": "medians over interleaved rounds on a shared 2-core VM: compare ratios, not absolutes"}
        out.write_text(json.dumps({"meta": meta, "rows": rows, "crossovers": cross}, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
