"""The IR verifier: checks the invariants every pass must keep, and names the layer and the broken rule.

Run between passes in tests (and with ``dccomp.compile(..., verify=True)``), as TVM and MLIR do.
"""
from __future__ import annotations

import math

import torch

from .errors import VerificationError
from .ir import IR, Weight, decode_codebook

__all__ = ["verify"]


def _check_weight(ir: IR, w: Weight) -> None:
    try:
        p = ir.param(w.name).detach()
    except KeyError:
        raise VerificationError(w.name, "weight is not a parameter of the model") from None
    if not torch.isfinite(p).all():
        raise VerificationError(w.name, "weight values are finite", "found NaN or Inf")
    if w.mask is not None:
        if tuple(w.mask.shape) != tuple(p.shape):
            raise VerificationError(w.name, "mask shape == weight shape",
                                    f"mask {tuple(w.mask.shape)} vs weight {tuple(p.shape)}")
        if w.mask.dtype != torch.bool:
            raise VerificationError(w.name, "mask dtype is torch.bool", f"got {w.mask.dtype}")
        bad = int((p[~w.mask] != 0).sum())
        if bad:
            raise VerificationError(w.name, "masked (pruned) entries are exactly 0", f"{bad} pruned entries are non-zero")
    if w.codebook is None:
        if w.indices is not None or w.coded is not None:
            raise VerificationError(w.name, "indices/coded streams exist only with a codebook")
        return
    cb, idx = w.codebook, w.indices
    if cb.dim() not in (1, 2) or cb.dtype != torch.float32:
        raise VerificationError(w.name, "codebook is a float32 tensor of shape (k,) or (G, k)",
                                f"got {cb.dtype} {tuple(cb.shape)}")
    if cb.dim() == 2 and (cb.shape[0] < 1 or not p.dim() or p.shape[0] % cb.shape[0] or p.shape[0] == 0):
        raise VerificationError(w.name, "a (G, k) codebook's G divides dim 0 of the weight",
                                f"G={cb.shape[0]}, weight {tuple(p.shape)}")
    if not torch.isfinite(cb).all():
        raise VerificationError(w.name, "codebook entries are finite", "found NaN or Inf")
    if idx is None or tuple(idx.shape) != tuple(p.shape) or idx.dtype.is_floating_point:
        got = None if idx is None else f"{idx.dtype} {tuple(idx.shape)}"
        raise VerificationError(w.name, "cluster indices are integers of the weight's shape", f"got {got}")
    live = w.mask if w.mask is not None else torch.ones_like(p, dtype=torch.bool)
    k = cb.shape[-1]
    if k == 0 and bool(live.any()):
        raise VerificationError(w.name, "a layer with surviving weights has a non-empty codebook")
    live_idx = idx[live]
    if live_idx.numel() and (int(live_idx.min()) < 0 or int(live_idx.max()) >= k):
        raise VerificationError(w.name, "cluster indices < k",
                                f"indices span [{int(live_idx.min())}, {int(live_idx.max())}] with k={k}")
    if live_idx.numel():
        decoded = decode_codebook(cb, idx.long().masked_fill(~live, 0))
        diff = int((p[live] != decoded[live].to(p.dtype)).sum())  # a centroid as the weight's dtype holds it
        if diff:
            raise VerificationError(w.name, "clustered weights == codebook[indices]", f"{diff} weights differ")
    if w.bits is None or (k > 1 and w.bits < math.ceil(math.log2(k))):
        raise VerificationError(w.name, "bits >= ceil(log2(k))", f"bits={w.bits} k={k}")
    if w.coded is not None:
        c = w.coded
        if c.nbytes != sum(len(s) for s in c.streams.values()):
            raise VerificationError(w.name, "coded size == sum of its stream sizes")
        if not 1 <= c.index_bits <= 16:
            raise VerificationError(w.name, "1 <= index_bits <= 16", f"got {c.index_bits}")


def verify(ir: IR) -> None:
    """Check the IR's invariants.

    Checked per weight: mask shape == weight shape and dtype bool; masked entries exactly 0; codebook a finite
    float32 tensor ``(k,)`` or ``(G, k)`` with G dividing dim 0; cluster indices integer, weight-shaped,
    ``0 <= index < k`` at surviving positions; surviving weights == ``codebook[indices]`` (per-channel:
    ``codebook[row, indices]``, :func:`~dccomp.ir.decode_codebook`) exactly (rounded to the weight's dtype: float16/bfloat16 models); ``bits >= ceil(log2 k)``; coded size == sum of its
    streams. Checked for the model: every parameter is either a compressible weight or listed dense, exactly
    once, so sizes add up.

    Raises:
        VerificationError: naming the layer (``.layer``) and the broken invariant (``.invariant``).
    """
    for w in ir.weights.values():
        _check_weight(ir, w)
    names = {n for n, _ in ir.gm.named_parameters()}
    listed = list(ir.weights) + [d.name for d in ir.dense]
    if len(listed) != len(set(listed)):
        dup = sorted({n for n in listed if listed.count(n) > 1})
        raise VerificationError(dup[0], "each parameter is listed once (weight or dense)")
    if set(listed) != names:
        missing = sorted(names - set(listed)) or sorted(set(listed) - names)
        raise VerificationError(missing[0], "parameters listed in the IR == parameters of the model")
