"""Cluster-index assignment with GPTQ's error feedback (Frantar et al., ICLR 2023, Algorithm 1).

Plain weight sharing (Deep Compression §3) gives each weight its nearest centroid, minimising the weight error
``||W - W_hat||^2``. What matters is the layer's output error on real inputs, ``tr((W - W_hat) H (W - W_hat)^T)``
with ``H = sum x x^T`` the layer-input Hessian (:mod:`dccomp.hessian`). GPTQ quantizes the columns of ``W`` one at
a time and, after each, spreads that column's error over the columns not yet quantized with the inverse Hessian
(the Optimal Brain Surgeon update, OBQ, Frantar & Alistarh NeurIPS 2022, Eq. 3); the weights actually quantized
later are thus the compensated ones. Here the "quantizer" is the weight's codebook: each weight goes to the nearest
centroid of its own codebook row (per-tensor or per-channel codebooks alike), and pruned weights (mask False)
are quantized to exactly 0, their error compensated too.

Columns are processed in lazy batches of ``block`` (GPTQ §3 "lazy batch updates") and the inverse Hessian is
used through its upper Cholesky factor (GPTQ §3 "Cholesky reformulation"), with dampening ``damp * mean(diag H)``
added to ``H`` first. Columns whose input is always zero (``H_jj = 0``) get the nearest centroid and no update.
"""
from __future__ import annotations

import torch

__all__ = ["gptq_assign", "nearest_centroid", "output_error"]


def nearest_centroid(values: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of each value's own sorted codebook row (ties to the lower index).

    Args:
        values: float ``(..., R)``.
        books: float ``(..., R, k)``, each row sorted non-decreasing, ``k >= 1``.

    Returns:
        int64 ``(..., R)`` in ``[0, k)``.
    """
    k = books.shape[-1]
    if k == 1:
        return torch.zeros(values.shape, dtype=torch.int64)
    hi = torch.searchsorted(books.contiguous(), values.unsqueeze(-1).contiguous()).squeeze(-1).clamp(1, k - 1)
    lo = hi - 1
    d_lo = (values - books.gather(-1, lo.unsqueeze(-1)).squeeze(-1)).abs()
    d_hi = (books.gather(-1, hi.unsqueeze(-1)).squeeze(-1) - values).abs()
    return torch.where(d_lo <= d_hi, lo, hi)


def _inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1`` for each of ``(G, D, D)``; dampening grows
    tenfold (up to 4 times) while ``H`` is not numerically positive definite."""
    h = h.clone()
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    dead = diag == 0
    diag[dead] = 1.0
    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    mean = diag.mean(dim=-1).reshape(-1, 1, 1)
    for attempt in range(5):
        lower, info = torch.linalg.cholesky_ex(h + (damp * 10 ** attempt) * mean * eye)
        if not bool(info.any()):
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
    raise ValueError(f"the layer-input Hessian is not positive definite even with dampening {damp * 1e4:g}; "
                     "use more calibration inputs or a larger damp")


def gptq_assign(weight: torch.Tensor, hessian: torch.Tensor, books: torch.Tensor, mask: torch.Tensor | None = None,
                damp: float = 0.01, block: int = 128) -> torch.Tensor:
    """Cluster indices for ``weight`` minimising the output error on the calibration inputs (module doc).

    Args:
        weight: float ``(G, R, D)``: ``G`` Hessian groups (conv groups; 1 for Linear), ``R`` rows (output
            channels) per group, ``D`` inputs per row.
        hessian: float64 ``(G, D, D)``, symmetric positive semi-definite (``sum x x^T``).
        books: float ``(G, R, k)``: the sorted codebook row each weight row uses (repeat a per-tensor codebook).
        mask: bool ``(G, R, D)``, ``False`` where the weight is pruned (quantized to 0, index 0), or ``None``.
        damp: relative dampening of ``H`` (GPTQ's ``percdamp``), ``> 0``.
        block: columns per lazy batch update (any value >= 1 gives the same result up to rounding).

    Returns:
        int64 ``(G, R, D)`` local indices into each row's codebook.

    Raises:
        ValueError: shapes that do not match, ``damp <= 0`` or ``block < 1``, or a Hessian that stays
            indefinite (see :func:`_inverse_factor`).
    """
    if weight.dim() != 3 or hessian.shape != (weight.shape[0], weight.shape[2], weight.shape[2]):
        raise ValueError(f"weight (G, R, D) {tuple(weight.shape)} and hessian (G, D, D) {tuple(hessian.shape)} "
                         "do not match")
    if books.dim() != 3 or books.shape[:2] != weight.shape[:2] or books.shape[2] < 1:
        raise ValueError(f"books must be (G, R, k) with k >= 1 for weight {tuple(weight.shape)}, got "
                         f"{tuple(books.shape)}")
    if mask is not None and mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
    if not damp > 0 or block < 1:
        raise ValueError(f"damp must be > 0 and block >= 1, got damp={damp}, block={block}")
    g, r, d = weight.shape
    w = weight.detach().double().clone()
    books = books.double()
    u = _inverse_factor(hessian.double(), damp)
    out = torch.zeros((g, r, d), dtype=torch.int64)
    for b0 in range(0, d, block):
        b1 = min(d, b0 + block)
        err = torch.zeros((g, r, b1 - b0), dtype=torch.float64)
        for j in range(b0, b1):
            col = w[:, :, j]
            q = nearest_centroid(col, books)
            val = books.gather(-1, q.unsqueeze(-1)).squeeze(-1)
            if mask is not None:
                keep = mask[:, :, j]
                q = torch.where(keep, q, torch.zeros_like(q))
                val = torch.where(keep, val, torch.zeros_like(val))
            out[:, :, j] = q
            e = (col - val) / u[:, j, j].unsqueeze(-1)
            w[:, :, j:b1] -= e.unsqueeze(-1) * u[:, j, j:b1].unsqueeze(1)
            err[:, :, j - b0] = e
        if b1 < d:
            w[:, :, b1:] -= err @ u[:, b0:b1, b1:]
    return out


def output_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """``sum_g tr((W_g - Q_g) H_g (W_g - Q_g)^T)``: the summed squared output error of a layer on the calibration
    inputs the Hessian came from. Shapes as in :func:`gptq_assign` (``quantized`` like ``weight``)."""
    e = (weight.double() - quantized.double())
    return float(torch.einsum("grd,gde,gre->", e, hessian.double(), e))
