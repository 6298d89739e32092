"""``cluster``: weight sharing by per-layer (or per-channel-group) 1-D k-means (Deep Compression §3)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dccomp.classify import FC_KINDS
from dccomp.ir import IR, State, Weight, decode_codebook
from dccomp.kmeans import kmeans_1d
from dccomp.pass_infra import Pass, PassContext, PassResult, select_value, selector_problem, validate_selectors

__all__ = ["Cluster", "store_clustered", "cluster_weight", "cluster_weight_grouped", "default_bits", "GRANULARITIES"]

INITS = ("linear", "density", "random", "kmeans++", "optimal")
EMPTY = ("drop", "reseed")
#: ``tensor``: one codebook per weight (the paper); ``channel``: one per group of ``group_size`` dim-0 slices.
GRANULARITIES = ("tensor", "channel")


def default_bits(w: Weight) -> int:
    """The paper's default bits per cluster index: 8 for conv (and embedding), 5 for fully connected (§3);
    recurrent (``rnn``) matrices count as fully connected."""
    return 5 if w.kind in FC_KINDS else 8


def cluster_weight(values: torch.Tensor, mask: torch.Tensor | None, bits: int, init: str = "linear",
                   seed: int = 0, empty: str = "drop", sample_weight: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the surviving entries of one weight.

    Args:
        values: weight tensor (any shape, float).
        mask: bool tensor of the same shape (``True`` = survives) or ``None`` (all survive).
        bits: bits per cluster index; k = 2**bits centroids at most (fewer when there are fewer distinct values).
        init: centroid initialization (``linear`` is the paper's best, §3.2).
        empty: ``"drop"`` (centroids left empty are removed: k' < k) or ``"reseed"`` (each empty centroid is
            moved to the value with the largest error, so all k centroids are used when there are >= k distinct
            surviving values); see :mod:`dccomp.kmeans`.
        sample_weight: optional non-negative importance of each entry (values' shape), e.g. the diagonal of the
            layer's input Hessian (Hessian-weighted k-means, Choi et al. ICLR 2017); ``None``: all equal.

    Returns:
        ``(codebook float32 (k',), indices int64 of values' shape)``; indices are 0 at pruned positions.
    """
    live = mask if mask is not None else torch.ones_like(values, dtype=torch.bool)
    data = values.detach()[live].double().numpy()
    sw = None if sample_weight is None else sample_weight.detach()[live].double().numpy()
    codebook, labels = kmeans_1d(data, 2 ** bits, init=init, seed=seed, empty=empty, sample_weight=sw)
    indices = torch.zeros(values.shape, dtype=torch.int64)
    indices[live] = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return torch.from_numpy(np.asarray(codebook, dtype=np.float32)).clone(), indices


def cluster_weight_grouped(values: torch.Tensor, mask: torch.Tensor | None, bits: int, n_groups: int,
                           init: str = "linear", seed: int = 0, empty: str = "drop",
                           sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster each group of dim-0 slices of one weight with its own codebook (per-channel weight sharing).

    Group ``g`` is the slices ``[g*S, (g+1)*S)`` of dim 0, ``S = shape[0] // n_groups`` (output channels of
    Linear/Conv, input channels of ConvTranspose); its surviving entries get 1-D k-means exactly as
    :func:`cluster_weight` (same ``init``/``empty``; ``seed + g`` for group ``g``). The codebook is padded to the
    largest ``k'`` over the groups: a row's unused entries repeat its largest used centroid (0 for a group with
    no surviving weight), so every row is finite and non-decreasing.

    Args:
        values: weight tensor (float, at least 1-D, ``shape[0]`` divisible by ``n_groups``).
        mask: bool tensor of the same shape (``True`` = survives) or ``None``.
        bits: bits per cluster index; each group gets at most ``2**bits`` centroids.
        n_groups: number of codebooks G, dividing ``shape[0]``.
        sample_weight: optional per-entry importance (values' shape), as in :func:`cluster_weight`.

    Returns:
        ``(codebook float32 (G, k), indices int64 of values' shape)``, ``k = max_g k'_g >= 1``; indices are the
        local cluster index within the slice's row (0 at pruned positions).

    Raises:
        ValueError: ``n_groups`` does not divide ``shape[0]``.
    """
    n0 = int(values.shape[0]) if values.dim() else 0
    if n_groups < 1 or n0 % n_groups or n0 == 0:
        raise ValueError(f"cannot split dim 0 of a weight of shape {tuple(values.shape)} into {n_groups} equal "
                         f"codebook groups; use a number of groups that divides {n0}")
    v = values.detach().reshape(n_groups, -1).double().numpy()
    live = (mask.reshape(n_groups, -1).numpy() if mask is not None else np.ones(v.shape, dtype=bool))
    sw = None if sample_weight is None else sample_weight.detach().reshape(n_groups, -1).double().numpy()
    books, labels = [], []
    for g in range(n_groups):
        cb, lab = kmeans_1d(v[g][live[g]], 2 ** bits, init=init, seed=seed + g, empty=empty,
                            sample_weight=None if sw is None else sw[g][live[g]])
        books.append(cb)
        labels.append(lab)
    k = max(1, max(len(cb) for cb in books))
    codebook = np.zeros((n_groups, k), dtype=np.float32)
    idx = np.zeros(v.shape, dtype=np.int64)
    for g, (cb, lab) in enumerate(zip(books, labels)):
        if len(cb):
            codebook[g, :len(cb)] = cb
            codebook[g, len(cb):] = cb[-1]
        idx[g][live[g]] = lab
    return torch.from_numpy(codebook), torch.from_numpy(idx).reshape(values.shape)


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

    Codebook granularity: ``granularity=tensor`` (default, the paper: one codebook ``(k,)`` per weight) or
    ``channel`` (a ``(G, k)`` codebook, one row per ``group_size`` consecutive dim-0 slices -- output channels of
    Linear/Conv, input channels of ConvTranspose -- each clustered on its own; ``group_size`` must divide
    ``shape[0]``). Per-channel codebooks suit compact networks whose channels have very different ranges
    (MobileNet, EfficientNet after fold-bn); each costs ``k`` centroids in the file, so a 3x3 depthwise channel
    (9 weights) is better left per-tensor: ``granularity_layers`` ``{regex: "tensor"|"channel"}`` overrides the
    granularity per layer, matched like ``layers``.
    """

    name = "cluster"
    requires = State.DENSE
    bits: int | None = None
    layers: dict[str, Any] = field(default_factory=dict)
    init: str = "linear"
    exclude: str | None = None
    seed: int = 0
    empty: str = "drop"
    granularity: str = "tensor"
    group_size: int = 1
    granularity_layers: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_selectors(self.layers, self.exclude)
        validate_selectors(self.granularity_layers)
        for g in [self.granularity] + list(self.granularity_layers.values()):
            if g not in GRANULARITIES:
                raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {g!r}")
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 1:
            raise ValueError(f"group_size must be an integer >= 1 (dim-0 slices per codebook), got "
                             f"{self.group_size!r}")
        if self.group_size != 1 and "channel" not in [self.granularity, *self.granularity_layers.values()]:
            raise ValueError(f"group_size={self.group_size} applies to per-channel codebooks only: add "
                             "granularity=channel (or granularity_layers={regex: channel})")
        for b in ([self.bits] if self.bits is not None else []) + list(self.layers.values()):
            if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= 16:
                raise ValueError(f"bits must be an integer in [1, 16], got {b!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.empty not in EMPTY:
            raise ValueError(f"empty must be one of {', '.join(EMPTY)}, got {self.empty!r}")

    def _granularity(self, w: Weight) -> str:
        return select_value(w, self.granularity_layers, self.granularity)

    def check(self, ir: IR) -> str | None:
        problem = selector_problem(ir, self.layers, self.exclude) or selector_problem(ir, self.granularity_layers)
        if problem:
            return problem
        for w in ir.weights.values():
            if self.exclude and select_value(w, {self.exclude: True}, False):
                continue
            shape = tuple(ir.param(w.name).shape)
            if self._granularity(w) == "channel" and (not shape or shape[0] % self.group_size or not shape[0]):
                n0 = shape[0] if shape else 0
                divisors = [d for d in range(1, n0 + 1) if n0 % d == 0][:12]
                return (f"cluster{{granularity=channel,group_size={self.group_size}}}: group_size must divide dim 0 "
                        f"of {w.name!r} (shape {shape}); divisors of {n0}: {divisors}; choose another group_size, "
                        f"or keep this layer per-tensor with granularity_layers={{...: \"tensor\"}} or exclude")
        return super().check(ir)

    def targets(self, ir: IR) -> list[tuple[int, Weight, int]]:
        """``(position, weight, bits)`` of every weight this pass clusters (``exclude`` left out, recorded in
        ``ir.skipped``), in layer order.

        Raises:
            ValueError: a targeted weight holds NaN or infinite values.
        """
        out = []
        for i, w in enumerate(ir.weights.values()):
            if self.exclude and select_value(w, {self.exclude: True}, False):  # name, module or kind
                ir.skipped[w.name] = f"excluded from {self.name} by exclude={self.exclude!r}"
                continue
            if not torch.isfinite(ir.param(w.name).detach()).all():
                raise ValueError(f"weight {w.name!r} holds NaN or infinite values; k-means cannot cluster them: fix "
                                 "the model's weights (e.g. torch.nan_to_num) or exclude the layer with "
                                 f"{self.name}{{exclude=...}}")
            out.append((i, w, int(select_value(w, self.layers, self.bits if self.bits is not None
                                               else default_bits(w)))))
        return out

    def codebook(self, ir: IR, w: Weight, bits: int, seed: int, sample_weight: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codebook, indices)`` of weight ``w`` by k-means at this pass's granularity (see
        :func:`cluster_weight` / :func:`cluster_weight_grouped`)."""
        p = ir.param(w.name)
        if self._granularity(w) == "channel":
            return cluster_weight_grouped(p, w.mask, bits, p.shape[0] // self.group_size, self.init, seed,
                                          self.empty, sample_weight)
        return cluster_weight(p, w.mask, bits, self.init, seed, self.empty, sample_weight)

    def run(self, ir: IR, ctx: PassContext) -> PassResult:
        for i, w, bits in self.targets(ir):
            codebook, indices = self.codebook(ir, w, bits, ctx.seed + self.seed + i)
            store_clustered(ir, w, codebook, indices)
        ctx.record(k={w.name: w.k for w in ir.weights.values()})
        return PassResult(ir, True)


def store_clustered(ir: IR, w: Weight, codebook: torch.Tensor, indices: torch.Tensor) -> None:
    """Make ``w`` clustered with ``codebook`` ((k,) or (G, k) float32) and ``indices`` (int64, the weight's
    shape): surviving weights take their centroid, pruned ones stay exactly 0, ``w.bits`` = bits used."""
    p = ir.param(w.name)
    with torch.no_grad():
        live = w.mask if w.mask is not None else torch.ones_like(p, dtype=torch.bool)
        new = torch.zeros_like(p)
        if codebook.numel():
            new[live] = decode_codebook(codebook, indices)[live].to(p.dtype)
        p.copy_(new)
    w.codebook, w.indices = codebook, indices
    k = int(codebook.shape[-1])
    w.bits = max(1, math.ceil(math.log2(k))) if k > 1 else 1  # bits used
