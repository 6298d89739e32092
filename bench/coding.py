"""Entropy-coder benchmark: Huffman vs ANS on a synthetic pruned + clustered layer (Deep Compression §2-§4).

Layer: ``--n-weights`` (default 1e7) Laplace weights, magnitude-pruned to ``--density`` (default 10%), survivors
clustered to ``k = 32`` with 1-D Lloyd k-means (linear init).  Streams coded:

* ``idx k=32``   -- cluster indices of the survivors (one per non-zero),
* ``gap b=5`` / ``gap b=8`` -- relative sparse indices with fillers (:mod:`dccomp.coding.sparse`).

For each stream and coder: bytes, bytes / entropy bound, encode and decode throughput (M symbols/s, best of
``--repeat``), and decode throughput in MB/s of float32 weights reconstructed (``n_weights * 4 / decode time``).
A "layer" row sums indices + gaps (decoding both = everything needed to rebuild the dense layer).

Usage: ``python bench/coding.py [--n-weights N] [--density D] [--repeat R] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from dccomp.coding import CODERS, encode_positions, entropy_bits


def lloyd_1d(x: np.ndarray, k: int, iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    c = np.linspace(x.min(), x.max(), k)
    for _ in range(iters):
        idx = np.searchsorted((c[1:] + c[:-1]) / 2, x)
        sums = np.bincount(idx, weights=x, minlength=k)
        cnt = np.bincount(idx, minlength=k)
        c = np.where(cnt > 0, sums / np.maximum(cnt, 1), c)
        c.sort()
    return c, np.searchsorted((c[1:] + c[:-1]) / 2, x)


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-weights", type=int, default=10_000_000)
    ap.add_argument("--density", type=float, default=0.10)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    w = rng.laplace(size=args.n_weights).astype(np.float32)
    thr = np.quantile(np.abs(w), 1 - args.density)
    pos = np.flatnonzero(np.abs(w) > thr)
    _, idx = lloyd_1d(w[pos].astype(np.float64), args.k)

    streams = {f"idx k={args.k}": (idx.astype(np.int64), args.k, 0)}
    for b in (5, 8):
        gaps, filler = encode_positions(pos, args.n_weights, b)
        streams[f"gap b={b}"] = (gaps.astype(np.int64), 1 << b, int(filler.sum()))

    rows = []
    for name, (s, k, fillers) in streams.items():
        h = entropy_bits(s, k) / 8
        for cname, cls in CODERS.items():
            coder = cls()
            te, (payload, meta) = best_time(lambda: coder.compress(s, k), args.repeat)
            td, out = best_time(lambda: coder.decompress(payload, meta), args.repeat)
            assert np.array_equal(out, s), f"{cname} round trip failed on {name}"
            rows.append(
                dict(stream=name, coder=cname, n=int(s.size), fillers=fillers, entropy_bytes=h,
                     bytes=len(payload), x_bound=len(payload) / h if h else float("nan"),
                     bits_per_sym=8 * len(payload) / s.size, enc_msym_s=s.size / te / 1e6,
                     dec_msym_s=s.size / td / 1e6, dec_weight_mb_s=args.n_weights * 4 / td / 1e6,
                     enc_s=te, dec_s=td)
            )
    for b in (5, 8):
        for cname in CODERS:
            parts = [r for r in rows if r["coder"] == cname and r["stream"] in (f"idx k={args.k}", f"gap b={b}")]
            dec_s = sum(r["dec_s"] for r in parts)
            enc_s = sum(r["enc_s"] for r in parts)
            nb = sum(r["bytes"] for r in parts)
            hb = sum(r["entropy_bytes"] for r in parts)
            rows.append(dict(stream=f"layer (idx+gap b={b})", coder=cname, n=sum(r["n"] for r in parts),
                             fillers=parts[1]["fillers"], entropy_bytes=hb, bytes=nb, x_bound=nb / hb,
                             bits_per_sym=float("nan"), enc_msym_s=sum(r["n"] for r in parts) / enc_s / 1e6,
                             dec_msym_s=sum(r["n"] for r in parts) / dec_s / 1e6,
                             dec_weight_mb_s=args.n_weights * 4 / dec_s / 1e6, enc_s=enc_s, dec_s=dec_s,
                             ratio_vs_fp32=args.n_weights * 4 / nb))

    print(f"layer: {args.n_weights:,} Laplace weights, density {args.density:.0%} "
          f"({pos.size:,} non-zeros), k={args.k}")
    hdr = (f"{'stream':<22}{'coder':<9}{'symbols':>11}{'fillers':>9}{'bytes':>11}{'bound':>11}{'x bound':>9}"
           f"{'enc Msym/s':>11}{'dec Msym/s':>11}{'dec MB/s w':>11}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['stream']:<22}{r['coder']:<9}{r['n']:>11,}{r['fillers']:>9,}{r['bytes']:>11,}"
              f"{r['entropy_bytes']:>11,.0f}{r['x_bound']:>9.4f}{r['enc_msym_s']:>11.1f}{r['dec_msym_s']:>11.1f}"
              f"{r['dec_weight_mb_s']:>11.0f}")
    result = dict(config=vars(args), nonzeros=int(pos.size), rows=rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
