"""Benchmark dccomp's TVM CSR + codebook kernel against torch dense, torch sparse CSR and scipy CSR.

    python bench/kernels.py [--threads 1] [--reps 200] [--threshold]

Sets TVM_NUM_THREADS / TVM_BIND_THREADS=0 and torch.set_num_threads to the same count before TVM starts its
thread pool. Times are medians (us) over ``--reps`` calls with prefetched function handles and preallocated
inputs/outputs. ``--threshold`` also sweeps density for the sparse vs dense TVM kernels (the measurement
behind ``kernels.DENSE_DENSITY_THRESHOLD``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--threshold", action="store_true", help="sweep density: sparse vs dense TVM kernel")
    ap.add_argument("--quick", action="store_true", help="fewer layers (smoke test)")
    args = ap.parse_args(argv)

    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    os.environ["TVM_BIND_THREADS"] = "0"
    import numpy as np
    import scipy.sparse as sp
    import torch
    import torch.nn.functional as F
    import tvm

    from dccomp.backends.tvm import kernels as K

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    def median_us(fn, reps=args.reps):
        for _ in range(5):
            fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts)) * 1e6

    def layer(n_out, n_in, density, k=32):
        mask = rng.random((n_out, n_in)) < density
        idx = rng.integers(0, k, (n_out, n_in))
        cb = rng.standard_normal(k).astype(np.float32)
        csr = K.CSRCodebook.from_codebook(idx, cb, mask)
        return csr, np.where(mask, cb[idx], 0).astype(np.float32)

    print(f"threads={args.threads} reps={args.reps} torch={torch.__version__} tvm={tvm.__version__}")
    cases = [((4096, 4096), 0.10, 1), ((4096, 4096), 0.05, 1), ((4096, 4096), 0.10, 16), ((4096, 4096), 0.05, 16),
             ((300, 784), 0.08, 1), ((100, 300), 0.09, 1), ((10, 100), 0.26, 1),
             ((300, 784), 0.08, 16), ((100, 300), 0.09, 16)]
    if args.quick:
        cases = cases[:1] + cases[4:5]
    hdr = (f"{'layer':>10} {'dens':>5} {'B':>3} | {'dcc tvm':>9} {'tvm dense':>9} {'torch':>9} {'torchCSR':>9} "
           f"{'scipy':>9} | {'x torch':>7} {'x tCSR':>7} {'x scipy':>7} | {'artifact B':>10} {'idx+cb B':>9} "
           f"{'dense B':>9}")
    print(hdr)
    print("-" * len(hdr))
    for (n_out, n_in), density, batch in cases:
        csr, w = layer(n_out, n_in, density)
        b = rng.standard_normal(n_out).astype(np.float32)
        x = rng.standard_normal((batch, n_in)).astype(np.float32)
        kern = K.build_sparse_linear(csr, b, batch=batch)
        dk = K.build_dense_linear(w, b, batch=batch)
        xt = tvm.runtime.tensor(x)
        yt = tvm.runtime.tensor(np.zeros((batch, n_out), np.float32))
        y2 = tvm.runtime.tensor(np.zeros((batch, n_out), np.float32))
        kern.run(xt, yt)
        dk.run(xt, y2)
        ref = x.astype(np.float64) @ w.T + b
        assert np.abs(yt.numpy() - ref).max() <= 1e-4 * max(1, np.abs(ref).max())
        assert np.abs(y2.numpy() - ref).max() <= 1e-4 * max(1, np.abs(ref).max())
        fn, dfn = kern.fn, dk.fn
        wargs, dargs = kern.weights, dk.weights
        t_dcc = median_us(lambda: fn(xt, *wargs, yt))
        t_tdense = median_us(lambda: dfn(xt, *dargs, y2))
        tw, tb, tx = torch.from_numpy(w), torch.from_numpy(b), torch.from_numpy(x)
        tcsr = tw.to_sparse_csr()
        with torch.inference_mode():
            t_torch = median_us(lambda: F.linear(tx, tw, tb))
            txT = tx.T.contiguous()
            t_tcsr = median_us(lambda: torch.addmm(tb.unsqueeze(1), tcsr, txT))
        S = sp.csr_matrix(w)
        xT = np.ascontiguousarray(x.T)
        bcol = b[:, None]
        t_scipy = median_us(lambda: S @ xT + bcol)
        # artifact weight memory: what the compiled kernel holds (rowptr, col, code, codebook, bias);
        # "idx+cb": the compressed index + codebook bytes alone (col + code + codebook + rowptr)
        art = kern.weight_nbytes
        print(f"{n_out}x{n_in:<5} {csr.density:5.3f} {batch:3d} | {t_dcc:9.1f} {t_tdense:9.1f} {t_torch:9.1f} "
              f"{t_tcsr:9.1f} {t_scipy:9.1f} | {t_torch / t_dcc:7.2f} {t_tcsr / t_dcc:7.2f} {t_scipy / t_dcc:7.2f} | "
              f"{art:10d} {csr.nbytes:9d} {w.nbytes:9d}")
        sys.stdout.flush()

    # whole model: compressed LeNet-300-100 lowered with the TVM backend vs the dense model in torch eager
    import dccomp
    from dccomp.models import LeNet300100

    torch.manual_seed(0)
    dense = LeNet300100().eval()
    xb = torch.randn(1, 1, 28, 28)
    comp = dccomp.compile(dense, "prune{sparsity=0.92,scope=global},cluster{bits=4}", example_inputs=xb)
    tvm_model = dccomp.compile(comp, backend="tvm", target="llvm", example_inputs=xb)
    with torch.inference_mode():
        err = float((tvm_model(xb) - comp(xb)).abs().max() / comp(xb).abs().max())
        t_eager = median_us(lambda: dense(xb))
        t_tvm = median_us(lambda: tvm_model(xb))
    print(f"\nwhole LeNet-300-100, batch 1 (92% pruned, 4-bit): torch eager dense {t_eager:.1f} us, "
          f"dccomp TVM {t_tvm:.1f} us -> {t_eager / t_tvm:.2f}x (rel err {err:.1e}; includes torch<->TVM calls)")

    if args.threshold:
        print("\ndensity sweep, batch 1: sparse CSR+codebook vs scheduled dense TVM kernel (median us)")
        for n in ((1024, 1024), (4096, 4096)):
            dk = None
            for density in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8):
                csr, w = layer(*n, density)
                b = np.zeros(n[0], np.float32)
                x = rng.standard_normal((1, n[1])).astype(np.float32)
                kern = K.build_sparse_linear(csr, b)
                if dk is None:
                    dk = K.build_dense_linear(w, b)
                xt = tvm.runtime.tensor(x)
                yt = tvm.runtime.tensor(np.zeros((1, n[0]), np.float32))
                reps = max(20, args.reps // 4)
                ts = median_us(lambda: kern.fn(xt, *kern.weights, yt), reps)
                td = median_us(lambda: dk.fn(xt, *dk.weights, yt), reps)
                print(f"  {n[0]}x{n[1]} density {density:.1f}: sparse {ts:8.1f}  dense {td:8.1f}  "
                      f"sparse/dense {ts / td:5.2f}")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
