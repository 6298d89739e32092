"""Relative sparse indices with filler entries (Deep Compression, ICLR 2016, §2 and Fig. 2).

The surviving (non-zero) weights of a pruned layer are stored in row-major flat order.  Instead of absolute
positions, each non-zero stores the *gap* to the previous non-zero in a fixed field of ``b = index_bits`` bits.
Gaps that do not fit are bridged with *filler* entries.

Convention used by dccomp (exactly invertible from the gap stream alone)
-----------------------------------------------------------------------
Let ``M = 2**b - 1`` (the largest ``b``-bit value) and let ``p_0 < p_1 < ...`` be the flat positions of the
non-zeros.  Define the distance ``d_i = p_i - p_{i-1}`` with ``p_{-1} = -1``, so ``d_i >= 1`` always (the first
non-zero's distance is its position plus one).

* A field value ``g`` in ``1..M`` is a **real entry**: the cursor advances by ``g`` and a non-zero sits there.
* The field value ``0`` is a **filler**: the cursor advances by ``M`` and *no* weight sits there.

A distance ``d`` is written as ``q = (d - 1) // M`` fillers followed by one real entry ``r = d - q*M`` (so
``1 <= r <= M``).  Hence:

* The decoder recognises fillers from the gap stream alone (``g == 0``); the weight-symbol stream holds exactly
  one symbol per real entry (one per non-zero) and **no symbol per filler** -- unlike the paper's Fig. 2, where a
  filler is an explicit zero weight that also costs a weight code.  A filler costs only its ``b``-bit field
  (which the Huffman stage then codes, as it does every gap).
* Trailing zeros after the last non-zero need no entries; ``n_total`` (the dense size) is stored by the caller
  and used by the decoder only for validation.
* A valid stream never ends with a filler (it would describe no weight); :func:`decode_positions` rejects that.
* ``index_bits`` may be 1..16; with ``b = 1`` (``M = 1``) every skipped zero costs one filler bit, i.e. the
  stream degenerates to a bitmap of the span up to the last non-zero.

Gap arrays are ``uint8`` for ``index_bits <= 8`` and ``uint16`` otherwise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode_positions", "decode_positions", "count_fillers", "gap_dtype"]


def _check_bits(index_bits: int) -> int:
    if isinstance(index_bits, bool) or not isinstance(index_bits, (int, np.integer)):
        raise ValueError(f"index_bits must be an int in [1, 16], got {index_bits!r}")
    index_bits = int(index_bits)
    if not 1 <= index_bits <= 16:
        raise ValueError(f"index_bits must be in [1, 16], got {index_bits}")
    return index_bits


def gap_dtype(index_bits: int) -> np.dtype:
    """dtype of gap arrays for ``index_bits``: ``uint8`` if ``index_bits <= 8`` else ``uint16``."""
    return np.dtype(np.uint8) if _check_bits(index_bits) <= 8 else np.dtype(np.uint16)


def _distances(flat_positions: np.ndarray, n_total: int | None) -> np.ndarray:
    pos = np.asarray(flat_positions)
    if pos.ndim != 1:
        raise ValueError(f"flat_positions must be 1-D, got shape {pos.shape}")
    if pos.size and not np.issubdtype(pos.dtype, np.integer):
        raise ValueError(f"flat_positions must be integers, got dtype {pos.dtype}")
    pos = pos.astype(np.int64, copy=False)
    if pos.size == 0:
        return np.zeros(0, dtype=np.int64)
    d = np.diff(pos, prepend=np.int64(-1))
    if d.min() < 1:
        bad = int(np.argmin(d))
        raise ValueError(
            f"flat_positions must be strictly increasing and >= 0 (violation at index {bad}: {int(pos[bad])})"
        )
    if n_total is not None and int(pos[-1]) >= int(n_total):
        raise ValueError(f"position {int(pos[-1])} out of range for n_total={int(n_total)}")
    return d


def count_fillers(flat_positions: np.ndarray, index_bits: int) -> int:
    """Number of filler entries :func:`encode_positions` will emit (paper §2: these must be counted in sizes).

    Args:
        flat_positions: 1-D sorted, strictly increasing, non-negative integer positions of the non-zeros.
        index_bits: gap field width ``b`` in ``[1, 16]``.

    Returns:
        ``sum((d - 1) // (2**b - 1))`` over the distances ``d`` (see module docstring), as a Python int.

    Raises:
        ValueError: bad ``index_bits`` or positions not strictly increasing / negative.
    """
    m = (1 << _check_bits(index_bits)) - 1
    d = _distances(flat_positions, None)
    return int(((d - 1) // m).sum()) if d.size else 0


def encode_positions(
    flat_positions: np.ndarray, n_total: int, index_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Encode sorted flat positions as relative gaps with fillers (paper §2, Fig. 2; convention in module doc).

    Args:
        flat_positions: 1-D integer array (int64 preferred), strictly increasing, all in ``[0, n_total)``.
        n_total: number of elements of the dense tensor (used for validation only).
        index_bits: field width ``b`` in ``[1, 16]``.

    Returns:
        ``(gaps, is_filler)``: ``gaps`` is a 1-D ``uint8`` (``b <= 8``) or ``uint16`` array of length
        ``len(flat_positions) + count_fillers(...)`` with values in ``[0, 2**b - 1]``; ``is_filler`` is the
        boolean mask ``gaps == 0``.  The number of real entries (``~is_filler``) equals ``len(flat_positions)``
        and they appear in the same order, so weight symbol ``j`` belongs to the ``j``-th real entry.

    Raises:
        ValueError: ``index_bits`` outside 1..16, ``n_total < 0``, positions not strictly increasing, negative
        or ``>= n_total``.
    """
    b = _check_bits(index_bits)
    if int(n_total) < 0:
        raise ValueError(f"n_total must be >= 0, got {n_total}")
    m = (1 << b) - 1
    dt = gap_dtype(b)
    d = _distances(flat_positions, n_total)
    if d.size == 0:
        return np.zeros(0, dtype=dt), np.zeros(0, dtype=bool)
    q = (d - 1) // m
    r = d - q * m
    total = int(d.size + q.sum())
    gaps = np.zeros(total, dtype=dt)
    gaps[np.cumsum(q + 1) - 1] = r.astype(dt)
    return gaps, gaps == 0


def decode_positions(gaps: np.ndarray, index_bits: int, n_total: int) -> np.ndarray:
    """Exact inverse of :func:`encode_positions`.

    Args:
        gaps: 1-D non-negative integer array of ``b``-bit fields (value 0 = filler advancing ``2**b - 1``).
        index_bits: field width ``b`` in ``[1, 16]``.
        n_total: dense size; every decoded position must be ``< n_total``.

    Returns:
        1-D ``int64`` array of strictly increasing flat positions (one per non-filler entry).

    Raises:
        ValueError: a field exceeds ``2**b - 1`` or is negative, the stream ends with a filler (non-canonical /
        truncated), or a position reaches ``n_total``.
    """
    b = _check_bits(index_bits)
    n_total = int(n_total)
    if n_total < 0:
        raise ValueError(f"n_total must be >= 0, got {n_total}")
    m = (1 << b) - 1
    g = np.asarray(gaps)
    if g.ndim != 1:
        raise ValueError(f"gaps must be 1-D, got shape {g.shape}")
    if g.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"gaps must be integers, got dtype {g.dtype}")
    g = g.astype(np.int64)
    if g.min() < 0 or g.max() > m:
        raise ValueError(f"gap field value out of range [0, {m}] for index_bits={b}")
    if g[-1] == 0:
        raise ValueError("sparse index stream ends with a filler entry (truncated or corrupt)")
    adv = np.where(g == 0, m, g)
    cur = np.cumsum(adv) - 1
    pos = cur[g != 0]
    if int(pos[-1]) >= n_total:
        raise ValueError(
            f"sparse index stream decodes to position {int(pos[-1])}, beyond the tensor size n_total={n_total}"
        )
    return pos
