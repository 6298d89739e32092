"""Benchmark dccomp.kmeans.kmeans_1d: wall time and WCSS relative to the (near-)optimal clustering.

Data: Laplace(0, 0.05) float32 values (a stand-in for a layer's surviving weights), seed 0.
The reference WCSS is ``init="optimal"`` (Ckmeans.1d.dp on a 65,536-bin histogram, then Lloyd).

Usage::

    python bench/kmeans.py                 # n = 1e6 and 1e7, k = 32 and 256, all inits
    python bench/kmeans.py --n 1000000 --k 32 --empty reseed
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dccomp.kmeans import INITS, kmeans_1d, wcss


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--k", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    ap.add_argument("--empty", nargs="+", default=["drop", "reseed"], choices=["drop", "reseed"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    inits = ["optimal"] + [i for i in args.inits if i != "optimal"]
    print(f"{'n':>10} {'k':>4} {'init':>9} {'empty':>7} {'k_used':>6} {'time_s':>7} {'wcss/opt':>10}")
    for n in args.n:
        x = np.random.default_rng(args.seed).laplace(0.0, 0.05, n).astype(np.float32)
        for k in args.k:
            ref = None
            for init in inits:
                for empty in args.empty:
                    t0 = time.perf_counter()
                    cb, labels = kmeans_1d(x, k, init=init, seed=args.seed, empty=empty)
                    dt = time.perf_counter() - t0
                    e = wcss(x, cb, labels)
                    if ref is None:
                        ref = e
                    print(f"{n:>10} {k:>4} {init:>9} {empty:>7} {len(cb):>6} {dt:>7.2f} {e / ref:>10.6f}",
                          flush=True)


if __name__ == "__main__":
    main()
