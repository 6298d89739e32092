"""``gptq``: data-aware weight sharing -- codebooks from Hessian-weighted k-means, cluster indices from GPTQ."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from dccomp.errors import PassError
from dccomp.gptq import gptq_assign, output_error
from dccomp.hessian import input_hessians, unsupported_reason
from dccomp.ir import IR, Weight, codebook_rows, decode_codebook
from dccomp.pass_infra import PassContext, PassResult
from dccomp.train import _as_loader, split_batch

from .cluster import Cluster, store_clustered
from .retrain import repad_unused

__all__ = ["GPTQ"]


@dataclass(frozen=True)
class GPTQ(Cluster):
    """Weight sharing that minimises each layer's *output* error on calibration inputs, not its weight error.

    Needs inputs only (no labels): the first ``samples`` inputs of the training data (``train_data`` /
    ``trainer``; labels, if any, are ignored). For each Linear/Conv1d/Conv2d weight:

    1. the layer-input Hessian ``H = sum x x^T`` is accumulated over the calibration inputs, run through the model
       as it is before this pass (:mod:`dccomp.hessian`);
    2. its codebook comes from k-means on the surviving weights as in ``cluster`` (same ``bits``, ``layers``,
       ``init``, ``granularity``, ``group_size``... options), each weight weighted by ``H_jj`` of its input
       (``hessian_weighted``, Hessian-weighted k-means, Choi et al., ICLR 2017, §4);
    3. its cluster indices come from GPTQ (Frantar et al., ICLR 2023, Alg. 1, :mod:`dccomp.gptq`): column by
       column, the nearest centroid of the *error-compensated* weights, pruned weights staying exactly 0;
    4. centroids no surviving weight uses any more are dropped (per-channel rows repeat their largest used one).

    Contract as ``cluster``: every targeted weight becomes ``clustered``, weights equal their centroids, pruned
    weights stay 0. Weights whose op is not a Linear/Conv1d/Conv2d, or that are read by several ops (embeddings,
    recurrent and attention matrices, transposed convs, tied weights), are clustered as ``cluster`` does (plain
    k-means); the pass records which under ``fallback``, and the output error before/after GPTQ relative to plain
    nearest-centroid assignment under ``error_ratio`` (< 1 is better).

    Calibration runs the model before compression, layer by layer independently (not sequentially).

    Options beyond ``cluster``'s (defaults differ: ``init=kmeans++``, ``empty=reseed``): ``samples`` (calibration
    inputs, >= 1), ``batch_size`` (inputs per calibration forward pass), ``damp`` (dampening of ``H``, relative to
    its mean diagonal, GPTQ's ``percdamp``), ``block_size`` (columns per lazy update), ``hessian_weighted`` (weight k-means by ``H_jj``, step 2).
    """

    name = "gptq"
    init: str = "kmeans++"
    empty: str = "reseed"
    samples: int = 128
    batch_size: int = 16
    damp: float = 0.01
    block_size: int = 128
    hessian_weighted: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for opt in ("samples", "batch_size", "block_size"):
            v = getattr(self, opt)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{opt} must be an integer >= 1, got {v!r}")
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not 0 < self.damp < 1:
            raise ValueError(f"damp must be a number in (0, 1) (dampening relative to the Hessian's mean diagonal), "
                             f"got {self.damp!r}")

    def needs_training_data(self) -> bool:
        return True

    def _calibration(self, ctx: PassContext) -> Iterator[Any]:
        if ctx.trainer is None or ctx.trainer.train_data is None:
            raise PassError(f"'{self.name}' needs calibration inputs (no labels needed): pass train_data= (a tensor "
                            "of inputs, a Dataset or DataLoader) to dccomp.compile, or --data on the command line")
        seen = 0
        for batch in _as_loader(ctx.trainer.train_data, self.batch_size, False, 0, "train_data"):
            x = split_batch(batch)[0]
            n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
            take = min(n, self.samples - seen)
            yield {k: v[:take] for k, v in x.items()} if isinstance(x, dict) else x[:take]
            seen += take
            if seen >= self.samples:
                return

    def run(self, ir: IR, ctx: PassContext) -> PassResult:
        targets = self.targets(ir)
        nodes = {n.name: n for n in ir.gm.graph.nodes}
        fallback: dict[str, str] = {}
        for _, w, _ in targets:
            if len(w.users) != 1:
                fallback[w.name] = f"read by {len(w.users)} ops"
            else:
                reason = unsupported_reason(ir.gm, nodes[w.users[0]])
                if reason:
                    fallback[w.name] = reason
        supported = [w.name for _, w, _ in targets if w.name not in fallback]
        hessians = input_hessians(ir, supported, self._calibration(ctx)) if supported else {}
        ratios: dict[str, float] = {}
        for i, w, bits in targets:
            seed = ctx.seed + self.seed + i
            lh = hessians.get(w.name)
            if lh is None:
                fallback.setdefault(w.name, "its op never ran on the calibration inputs")
                codebook, indices = self.codebook(ir, w, bits, seed)
            else:
                codebook, indices, ratios[w.name] = self._assign(ir, w, bits, seed, lh.h)
            store_clustered(ir, w, codebook, indices)
        ctx.record(k={w.name: w.k for w in ir.weights.values()}, fallback=fallback, error_ratio=ratios,
                   samples=min(self.samples, max((h.rows for h in hessians.values()), default=0)))
        return PassResult(ir, True)

    def _assign(self, ir: IR, w: Weight, bits: int, seed: int, h: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, float]:
        p = ir.param(w.name).detach()
        shape = p.shape
        g, d = h.shape[0], h.shape[1]
        grouped = p.reshape(g, shape[0] // g, d)  # (G, R, D): rows of each Hessian group
        importance = None
        if self.hessian_weighted:
            diag = torch.diagonal(h, dim1=-2, dim2=-1)
            importance = (diag / diag.mean().clamp_min(1e-30)).unsqueeze(1).expand_as(grouped).reshape(shape)
        codebook, nearest = self.codebook(ir, w, bits, seed, importance)
        if codebook.numel() == 0:  # every weight pruned
            return codebook, nearest, 1.0
        table = codebook if codebook.dim() == 2 else codebook.unsqueeze(0)
        books = table[codebook_rows(codebook, shape)].reshape(g, shape[0] // g, -1)  # each row's codebook
        mask = None if w.mask is None else w.mask.reshape(g, shape[0] // g, d)
        idx = gptq_assign(grouped, h, books, mask, self.damp, self.block_size).reshape(shape)
        live = w.mask if w.mask is not None else torch.ones(shape, dtype=torch.bool)
        before = output_error(grouped, (decode_codebook(codebook, nearest) * live).reshape(grouped.shape), h)
        after = output_error(grouped, (decode_codebook(codebook, idx) * live).reshape(grouped.shape), h)
        codebook, idx = _compact(codebook, idx, w.mask)
        return codebook, idx, after / before if before > 0 else 1.0


def _compact(codebook: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the entries of a 1-D codebook no surviving weight uses (re-indexing); a 2-D codebook's unused entries
    are repadded (:func:`repad_unused`). Pruned positions keep index 0."""
    if codebook.dim() == 2:
        return repad_unused(codebook, indices, mask), indices
    live = indices[mask] if mask is not None else indices.reshape(-1)
    used = torch.bincount(live.reshape(-1), minlength=codebook.numel()) > 0
    remap = torch.cumsum(used.long(), 0) - 1
    out = remap[indices].clamp_min(0)
    if mask is not None:
        out = torch.where(mask, out, torch.zeros_like(out))
    return codebook[used].clone(), out
