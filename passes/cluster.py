"""``cluster``: weight sharing by per-layer 1-D k-means (Deep Compression §3)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dccomp.classify import FC_KINDS
from dccomp.ir import IR, State, Weight
from dccomp.kmeans import kmeans_1d
from dccomp.pass_infra import Pass, PassContext, PassResult, select_value, selector_problem, validate_selectors

__all__ = ["Cluster", "cluster_weight", "default_bits"]

INITS = ("linear", "density", "random", "kmeans++", "optimal")
EMPTY = ("drop", "reseed")


def default_bits(w: Weight) -> int:
    """The paper's default bits per cluster index: 8 for conv (and embedding), 5 for fully connected (§3);
    recurrent (``rnn``) matrices count as fully connected."""
    return 5 if w.kind in FC_KINDS else 8


def cluster_weight(values: torch.Tensor, mask: torch.Tensor | None, bits: int, init: str = "linear",
                   seed: int = 0, empty: str = "drop") -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the surviving entries of one weight.

    Args:
        values: weight tensor (any shape, float).
        mask: bool tensor of the same shape (``True`` = survives) or ``None`` (all survive).
        bits: bits per cluster index; k = 2**bits centroids at most (fewer when there are fewer distinct values).
        init: centroid initialization (``linear`` is the paper's best, §3.2).
        empty: ``"drop"`` (centroids left empty are removed: k' < k) or ``"reseed"`` (each empty centroid is
            moved to the value with the largest error, so all k centroids are used when there are >= k distinct
            surviving values); see :mod:`dccomp.kmeans`.

    Returns:
        ``(codebook float32 (k',), indices int64 of values' shape)``; indices are 0 at pruned positions.
    """
    live = mask if mask is not None else torch.ones_like(values, dtype=torch.bool)
    data = values.detach()[live].double().numpy()
    codebook, labels = kmeans_1d(data, 2 ** bits, init=init, seed=seed, empty=empty)
    indices = torch.zeros(values.shape, dtype=torch.int64)
    indices[live] = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return torch.from_numpy(np.asarray(codebook, dtype=np.float32)).clone(), indices


@dataclass(frozen=True)
class Cluster(Pass):
    """Weight sharing: per-layer 1-D k-means on the surviving (non-zero-mask) weights only.

    Contract: every targeted weight becomes ``clustered``: a float32 codebook of k' <= 2**bits centroids and an
    index per weight; surviving weights are replaced by their centroid, pruned weights stay exactly 0 and are
    not part of the codebook. Layers with fewer distinct values than k keep them exactly (k' = #distinct).

    Options: ``bits`` (default: 8 conv/embedding, 5 fc, as in the paper), ``layers`` ``{regex: bits}`` per
    layer, ``init`` (``linear`` default, ``density``, ``random`` (Forgy), ``kmeans++``, ``optimal``),
    ``exclude`` (regex of weights left dense, matched like ``layers``), ``seed`` (added to the context seed),
    ``empty`` (``drop`` default: centroids that capture no weight are removed; ``reseed``: they are re-seeded at
    the worst-fit weights, so the codebook uses all ``2**bits`` entries -- with the linear init on a pruned
    layer most centroids otherwise fall in the empty middle and are dropped).
    """

    name = "cluster"
    requires = State.DENSE
    bits: int | None = None
    layers: dict[str, Any] = field(default_factory=dict)
    init: str = "linear"
    exclude: str | None = None
    seed: int = 0
    empty: str = "drop"

    def __post_init__(self) -> None:
        validate_selectors(self.layers, self.exclude)
        for b in ([self.bits] if self.bits is not None else []) + list(self.layers.values()):
            if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= 16:
                raise ValueError(f"bits must be an integer in [1, 16], got {b!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.empty not in EMPTY:
            raise ValueError(f"empty must be one of {', '.join(EMPTY)}, got {self.empty!r}")

    def check(self, ir: IR) -> str | None:
        return selector_problem(ir, self.layers, self.exclude) or super().check(ir)

    def run(self, ir: IR, ctx: PassContext) -> PassResult:
        for i, w in enumerate(ir.weights.values()):
            if self.exclude and select_value(w, {self.exclude: True}, False):  # name, module or kind
                ir.skipped[w.name] = f"excluded from cluster by exclude={self.exclude!r}"
                continue
            bits = int(select_value(w, self.layers, self.bits if self.bits is not None else default_bits(w)))
            p = ir.param(w.name)
            codebook, indices = cluster_weight(p, w.mask, bits, self.init, ctx.seed + self.seed + i, self.empty)
            with torch.no_grad():
                live = w.mask if w.mask is not None else torch.ones_like(p, dtype=torch.bool)
                new = torch.zeros_like(p)
                if codebook.numel():
                    new[live] = codebook[indices[live]].to(p.dtype)
                p.copy_(new)
            w.codebook, w.indices = codebook, indices
            w.bits = max(1, math.ceil(math.log2(codebook.numel()))) if codebook.numel() > 1 else 1  # bits used
        ctx.record(k={w.name: w.k for w in ir.weights.values()})
        return PassResult(ir, True)
