"""Coding one weight into byte streams and back (Deep Compression §2 and §4).

A weight is stored according to its state:

- ``dense``: ``values`` = float32 raw, all entries.
- ``masked``: ``gaps`` = relative sparse indices (``index_bits`` fields, filler entries, see
  :mod:`dccomp.coding.sparse`), ``values`` = float32 raw survivors.
- ``clustered``/``coded``: ``gaps`` as above (absent when the weight has no mask), ``codes`` = cluster index of
  each survivor; the codebook is stored beside (float32, or float16 when the codebook was rounded to it). A
  per-channel codebook ``(G, k)`` (see :func:`dccomp.ir.decode_codebook`) keeps the codes local (alphabet
  ``k``); a survivor at flat position ``p`` decodes with row ``(p // (n / shape[0])) // (shape[0] / G)``.

Symbol streams go through a coder: ``fixed`` (fixed width: the paper's P+Q), ``huffman`` (canonical Huffman,
P+Q+H) or ``ans``. Decoding validates every count against the declared shape and raises ``FormatError``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .coding import CODERS
from .coding.fixed import FixedCoder
from .coding.sparse import decode_positions, encode_positions
from .errors import FormatError
from .classify import FC_KINDS
from .ir import Coded, Weight

__all__ = ["ALL_CODERS", "code_weight", "decode_weight", "default_index_bits"]

ALL_CODERS = {"fixed": FixedCoder, **CODERS}

#: largest tensor a file may declare (elements); guards allocation before decoding.
MAX_ELEMENTS = 1 << 34


def default_index_bits(kind: str) -> int:
    """Paper's relative-index width: 8 bits for conv, 5 for fully connected (§2; recurrent matrices included)."""
    return 5 if kind in FC_KINDS else 8


def code_weight(values: torch.Tensor, w: Weight, coder: str, index_bits: int) -> Coded:
    """Encode one weight's current state into streams.

    Args:
        values: the weight tensor (float, any shape).
        w: its IR entry (mask / codebook / indices decide what is stored).
        coder: ``fixed``, ``huffman`` or ``ans``.
        index_bits: relative index width, 1..16.

    Returns:
        :class:`~dccomp.ir.Coded` whose ``meta`` holds everything :func:`decode_weight` needs besides the
        streams (counts, coder metas) and whose streams hold the data.
    """
    c = ALL_CODERS[coder]()
    flat = values.detach().reshape(-1).float()
    meta: dict[str, Any] = {"n": int(flat.numel())}
    streams: dict[str, bytes] = {}
    n_fillers = 0
    if w.mask is not None:
        live = w.mask.reshape(-1)
        pos = torch.nonzero(live).reshape(-1).numpy()
        gaps, is_filler = encode_positions(pos, flat.numel(), index_bits)
        n_fillers = int(is_filler.sum())
        streams["gaps"], meta["gaps"] = c.compress(gaps.astype(np.int32), 1 << index_bits)
        meta["nnz"] = int(pos.size)
    else:
        live = torch.ones_like(flat, dtype=torch.bool)
        meta["nnz"] = int(flat.numel())
    if w.codebook is not None:
        k = max(int(w.codebook.shape[-1]), 1)
        codes = w.indices.reshape(-1)[live].numpy().astype(np.int32)
        streams["codes"], meta["codes"] = c.compress(codes, k)
        meta["k"] = int(w.codebook.shape[-1])
    else:
        streams["values"] = flat[live].numpy().astype("<f4").tobytes()
    return Coded(coder, index_bits, streams, meta, n_fillers)


def _int(meta: dict, key: str, lo: int, hi: int, where: str) -> int:
    v = meta.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise FormatError(f"{where}: field {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def decode_weight(name: str, shape: list[int], coded: Coded, codebook: np.ndarray | None, *, state: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Inverse of :func:`code_weight`.

    Args:
        codebook: ``(k,)`` or ``(G, k)`` float array (G dividing ``shape[0]``), or ``None`` when not clustered.
        state: also rebuild the dense mask and cluster-index tensors (the IR's state); ``False`` returns only
            the weight values (what loading into a model needs: 9x less memory traffic than int64 indices).

    Returns:
        ``(values float32 of shape, mask bool or None, indices int64 or None)``.

    Raises:
        FormatError: unknown coder, counts inconsistent with the shape, a stream that does not decode.
    """
    where = f"tensor {name!r}"
    if coded.coder not in ALL_CODERS:
        raise FormatError(f"{where}: unknown coder {coded.coder!r}; this dccomp reads {', '.join(ALL_CODERS)}")
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise FormatError(f"{where}: shape {shape} declares {n} elements, more than the limit {MAX_ELEMENTS}")
    m = coded.meta
    if _int(m, "n", 0, MAX_ELEMENTS, where) != n:
        raise FormatError(f"{where}: declared {m['n']} elements but shape {shape} holds {n}")
    nnz = _int(m, "nnz", 0, n, where)
    c = ALL_CODERS[coded.coder]()
    expected = {"gaps"} if "gaps" in m else set()
    expected |= {"codes"} if codebook is not None else {"values"}
    if set(coded.streams) != expected:
        raise FormatError(f"{where}: streams {sorted(coded.streams)} do not match its encoding {sorted(expected)}")

    def run(stream: str, alphabet: int, most: int, exact: bool) -> np.ndarray:
        sm = m.get(stream)
        if not isinstance(sm, dict) or sm.get("k") != alphabet:
            raise FormatError(f"{where}: stream {stream!r} declares alphabet {sm!r}, expected {alphabet}")
        count = sm.get("n")
        if type(count) is not int or count < 0 or count > most or (exact and count != most):
            raise FormatError(f"{where}: stream {stream!r} declares {count!r} symbols, expected "
                              f"{'exactly' if exact else 'at most'} {most}")
        try:
            return c.decompress(coded.streams[stream], sm)
        except ValueError as e:
            raise FormatError(f"{where}: stream {stream!r} does not decode: {e}") from None

    mask = None
    if "gaps" in m:
        if not 1 <= coded.index_bits <= 16:
            raise FormatError(f"{where}: index_bits {coded.index_bits} not in [1, 16]")
        gaps = run("gaps", 1 << coded.index_bits, nnz + n // ((1 << coded.index_bits) - 1) + 1, False)
        try:
            pos = decode_positions(gaps, coded.index_bits, n)
        except ValueError as e:
            raise FormatError(f"{where}: sparse index stream is invalid: {e}") from None
        if pos.size != nnz:
            raise FormatError(f"{where}: sparse indices give {pos.size} weights, declared {nnz}")
        if state:
            mflat = np.zeros(n, dtype=bool)
            mflat[pos] = True
            mask = torch.from_numpy(mflat).reshape(shape)
    elif nnz != n:
        raise FormatError(f"{where}: no sparse indices but only {nnz} of {n} weights declared")
    # scatter by flat position (O(nnz)), not by boolean mask (O(n))
    sparse = "gaps" in m
    out = np.zeros(n, dtype=np.float32)
    indices = None
    if codebook is not None:
        if codebook.ndim not in (1, 2):
            raise FormatError(f"{where}: codebook must be 1-D (k,) or 2-D (G, k), got shape {codebook.shape}")
        k = int(codebook.shape[-1])
        n_rows = 1 if codebook.ndim == 1 else int(codebook.shape[0])
        n0 = shape[0] if shape else 1
        if codebook.ndim == 2 and (n_rows < 1 or n0 % n_rows or (n0 == 0 and n_rows != 1)):
            raise FormatError(f"{where}: a codebook of {n_rows} rows must divide dim 0 ({n0}) of shape {shape}")
        if _int(m, "k", 0, 1 << 16, where) != k:
            raise FormatError(f"{where}: codebook has {k} entries, declared {m['k']}")
        if nnz and k == 0:
            raise FormatError(f"{where}: {nnz} weights but an empty codebook")
        codes = run("codes", max(k, 1), nnz, True)
        if codes.size != nnz or (codes.size and int(codes.max()) >= k):
            raise FormatError(f"{where}: cluster indices out of range for k={k}")
        if not nnz:
            vals = np.zeros(0, np.float32)
        elif codebook.ndim == 1:
            vals = codebook.astype(np.float32)[codes]
        else:  # row of each survivor: its dim-0 slice // slices per row
            per_row = (n // n0) * (n0 // n_rows)  # flat elements served by one codebook row
            at = pos if sparse else np.arange(n, dtype=np.int64)
            vals = codebook.astype(np.float32).reshape(-1)[(at // per_row) * k + codes]
        if sparse:
            out[pos] = vals
        else:
            out[:] = vals
        if state:
            idx = np.zeros(n, dtype=np.int64)
            idx[pos if sparse else slice(None)] = codes
            indices = torch.from_numpy(idx).reshape(shape)
    else:
        raw = coded.streams["values"]
        if len(raw) != 4 * nnz:
            raise FormatError(f"{where}: raw values are {len(raw)} bytes, {nnz} float32 need {4 * nnz}")
        vals = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if sparse:
            out[pos] = vals
        else:
            out[:] = vals
    out = torch.from_numpy(out)
    return out.reshape(shape), mask, indices
