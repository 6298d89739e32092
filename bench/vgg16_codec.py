"""Encode/decode time of dccomp's weight codec on a VGG-16-sized set of layers (138 M weights).

    python bench/vgg16_codec.py [--coder huffman|ans] [--scale 1.0]

Each VGG-16 layer gets a random pruning mask at the paper's kept fraction (Deep Compression Table 5) and
Laplace-distributed cluster indices (8 bits conv, 5 bits fc), then goes through the same path as a saved model:
``code_weight`` (relative indices + entropy coding) and ``decode_weight`` (back to a dense float32 tensor).
Prints per-layer and total seconds, symbols/s, and MB/s of float32 weights reconstructed (target >= 100 MB/s).
``--scale 0.1`` shrinks every layer's output dimension for a quick run.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dccomp.ir import Weight
from dccomp.wcodec import code_weight, decode_weight

# (name, shape, kept fraction from Deep Compression Table 5, bits)
VGG16 = [("conv1_1", (64, 3, 3, 3), 0.58, 8), ("conv1_2", (64, 64, 3, 3), 0.22, 8),
         ("conv2_1", (128, 64, 3, 3), 0.34, 8), ("conv2_2", (128, 128, 3, 3), 0.36, 8),
         ("conv3_1", (256, 128, 3, 3), 0.53, 8), ("conv3_2", (256, 256, 3, 3), 0.24, 8),
         ("conv3_3", (256, 256, 3, 3), 0.42, 8), ("conv4_1", (512, 256, 3, 3), 0.32, 8),
         ("conv4_2", (512, 512, 3, 3), 0.27, 8), ("conv4_3", (512, 512, 3, 3), 0.34, 8),
         ("conv5_1", (512, 512, 3, 3), 0.35, 8), ("conv5_2", (512, 512, 3, 3), 0.29, 8),
         ("conv5_3", (512, 512, 3, 3), 0.36, 8), ("fc6", (4096, 25088), 0.04, 5),
         ("fc7", (4096, 4096), 0.04, 5), ("fc8", (1000, 4096), 0.23, 5)]


def layer(rng, shape, kept, bits):
    n = int(np.prod(shape))
    mask = torch.from_numpy(rng.random(n, dtype=np.float32) < kept).view(shape)
    k = 2 ** bits
    # cluster indices of Laplace weights: the middle clusters are the busiest (skewed, as after k-means)
    idx = np.clip(np.round(rng.laplace(k / 2, k / 8, n)), 0, k - 1).astype(np.int64)
    codebook = torch.linspace(-1, 1, k)
    indices = torch.from_numpy(idx).view(shape).masked_fill(~mask, 0)
    values = torch.where(mask, codebook[indices], torch.zeros(()))
    kind = "conv2d" if len(shape) == 4 else "linear"
    return values, Weight("w", kind, [], mask=mask, codebook=codebook, indices=indices, bits=bits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coder", default="huffman")
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    tot = {"n": 0, "sym": 0, "bytes": 0, "enc": 0.0, "dec": 0.0}
    print(f"{'layer':<9}{'weights':>11}{'kept':>6}{'coded B':>11}{'enc s':>7}{'dec s':>7}{'dec MB/s':>9}")
    for name, shape, kept, bits in VGG16:
        shape = (max(1, int(shape[0] * a.scale)),) + shape[1:]
        values, w = layer(rng, shape, kept, bits)
        index_bits = 5 if w.kind == "linear" else 8
        t0 = time.perf_counter()
        coded = code_weight(values, w, a.coder, index_bits)
        t1 = time.perf_counter()
        out, _, _ = decode_weight(name, list(shape), coded, w.codebook.numpy(), state=False)  # what load() does
        t2 = time.perf_counter()
        assert torch.equal(out, values), name
        n = values.numel()
        tot["n"] += n
        tot["sym"] += coded.meta["nnz"] + coded.meta["gaps"]["n"]
        tot["bytes"] += coded.nbytes
        tot["enc"] += t1 - t0
        tot["dec"] += t2 - t1
        print(f"{name:<9}{n:>11}{kept:>6.2f}{coded.nbytes:>11}{t1 - t0:>7.2f}{t2 - t1:>7.2f}"
              f"{4 * n / (t2 - t1) / 1e6:>9.0f}")
    print(f"{'total':<9}{tot['n']:>11}{'':>6}{tot['bytes']:>11}{tot['enc']:>7.2f}{tot['dec']:>7.2f}"
          f"{4 * tot['n'] / tot['dec'] / 1e6:>9.0f}")
    print(f"{tot['n'] / 1e6:.1f} M weights ({4 * tot['n'] / 1e6:.0f} MB float32) -> {tot['bytes'] / 1e6:.2f} MB coded "
          f"({a.coder}); encode {tot['sym'] / tot['enc'] / 1e6:.1f} M symbols/s, decode {tot['sym'] / tot['dec'] / 1e6:.1f} "
          f"M symbols/s = {4 * tot['n'] / tot['dec'] / 1e6:.0f} MB/s of float32 weights reconstructed (target >= 100)")


if __name__ == "__main__":
    main()
