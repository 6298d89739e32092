"""Compact deployed layout: relative-index CSR whose cluster index and column gap share one 8- or 16-bit entry.

Deep Compression stores a pruned weight as (relative index, cluster index) pairs: the gap to the previous
non-zero instead of the absolute column, with a *filler zero* when a gap does not fit its field (Han et al.,
ICLR 2016, §2 and Fig. 2). :class:`PackedCSR` keeps that form in memory::

    rowptr    int32 (n_rows + 1,)   row i owns entries rowptr[i] .. rowptr[i+1]-1
    entries   uint8 | uint16 (n,)   (gap << code_bits) | code ; col = previous col + gap + 1 (previous = -1)
    codebook  float32 (k,) | (G, k) the centroids (G per-channel codebooks: row i uses i // (n_rows / G))

A gap field of all ones (``esc = 2**gap_bits - 1``) marks a *filler* entry: it adds no weight and advances the
column by ``(code + 1) * esc``, so one filler skips up to ``2**code_bits * esc`` columns. Entries are 8 bits when
``code_bits = ceil(log2(k)) <= 6`` leaves a gap field of at least 2 bits, 16 bits otherwise. Against the plain CSR + codebook arrays (:class:`~.kernels.CSRCodebook`: a uint16 column and a
uint8 code, 3 B per non-zero) this is 1 B per non-zero plus fillers for k <= 64: the convolution kernels decode
a row once per output channel, so the smaller layout costs them nothing (:func:`choose_layout`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels import CodebookShape, CSRCodebook

__all__ = ["PackedCSR", "choose_layout"]


@dataclass
class PackedCSR(CodebookShape):
    """A CSR + codebook matrix in the packed relative-index layout (see the module docstring)."""

    rowptr: np.ndarray    # int32 (n_rows + 1,)
    entries: np.ndarray   # uint8 / uint16 (max(n, 1),)
    codebook: np.ndarray  # float32 (k,) or (G, k)
    code_bits: int
    shape: tuple[int, int]

    @property
    def gap_bits(self) -> int:
        return 8 * self.entries.dtype.itemsize - self.code_bits

    @property
    def n_entries(self) -> int:
        return int(self.rowptr[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays as stored (rowptr + entries + codebook)."""
        return int(self.rowptr.nbytes + self.entries.nbytes + self.codebook.nbytes)

    def arrays(self) -> list[np.ndarray]:
        """The kernel's weight arguments in order: rowptr, entries, flat codebook ``(G * k,)``."""
        return [self.rowptr, self.entries, np.ascontiguousarray(self.codebook.reshape(-1))]

    @classmethod
    def from_csr(cls, csr: CSRCodebook, entry_bits: int | None = None) -> "PackedCSR":
        """Pack ``csr`` (exact: :meth:`to_dense` equals ``csr.to_dense()``).

        Args:
            entry_bits: 8 or 16; default: 8 when the gap field keeps >= 2 bits, else 16.

        Raises:
            ValueError: ``entry_bits`` is not 8/16 or leaves no room for a 2-bit gap field.
        """
        k = csr.k
        code_bits = max(1, int(np.ceil(np.log2(max(k, 1)))))  # k = 0: a layer with no survivor
        if entry_bits is None:
            entry_bits = 8 if code_bits <= 6 else 16
        if entry_bits not in (8, 16) or entry_bits - code_bits < 2:
            raise ValueError(f"cannot pack {code_bits}-bit cluster indices (k={k}) into {entry_bits}-bit entries "
                             "with a 2-bit gap field; use entry_bits=16 (k <= 16384)")
        gap_bits = entry_bits - code_bits
        esc = (1 << gap_bits) - 1           # gap field value of a filler entry
        span = (1 << code_bits) * esc       # most columns one filler skips
        n_rows, nnz = csr.shape[0], csr.nnz
        col = csr.col[:nnz].astype(np.int64)
        code = csr.code[:nnz].astype(np.int64)
        row = np.repeat(np.arange(n_rows), np.diff(csr.rowptr))
        prev = np.full(nnz, -1, np.int64)
        if nnz:
            same = row[1:] == row[:-1]
            prev[1:][same] = col[:-1][same]
        gap = col - prev - 1
        skip = (gap // esc) * esc           # columns the fillers before each non-zero skip, a multiple of esc
        n_fill = -(-skip // span)           # ceil
        per_row = np.bincount(row, weights=n_fill + 1, minlength=n_rows).astype(np.int64)
        rowptr = np.zeros(n_rows + 1, np.int64)
        np.cumsum(per_row, out=rowptr[1:])
        entries = np.zeros(max(int(rowptr[-1]), 1), np.int64)
        own = np.cumsum(n_fill + 1) - 1     # index of each non-zero's own entry
        entries[own] = ((gap - skip) << code_bits) | code
        for j in np.flatnonzero(n_fill):    # rare: gaps of >= esc columns
            left = int(skip[j]) // esc      # filler units of esc columns, at most 2**code_bits per entry
            for f in range(int(n_fill[j])):
                units = min(left, 1 << code_bits)
                entries[own[j] - n_fill[j] + f] = (esc << code_bits) | (units - 1)
                left -= units
        dtype = np.uint8 if entry_bits == 8 else np.uint16
        return cls(rowptr.astype(np.int32), entries.astype(dtype), csr.codebook.astype(np.float32), code_bits,
                   csr.shape)

    def to_dense(self) -> np.ndarray:
        """The decoded float32 matrix (reference decoder, the same arithmetic as the kernels)."""
        out = np.zeros(self.shape, np.float32)
        mask = (1 << self.code_bits) - 1
        esc = (1 << self.gap_bits) - 1
        e = self.entries[: self.n_entries].astype(np.int64)
        g, c = e >> self.code_bits, e & mask
        fill = g == esc
        step = np.where(fill, (c + 1) * esc, g + 1)
        cb = self.codebook.reshape(self.groups, self.k)
        rpg = self.shape[0] // self.groups
        for i in range(self.shape[0]):
            lo, hi = int(self.rowptr[i]), int(self.rowptr[i + 1])
            cols = np.cumsum(step[lo:hi]) - 1
            real = ~fill[lo:hi]
            out[i, cols[real]] = cb[i // rpg, c[lo:hi][real]]
        return out


def choose_layout(csr: CSRCodebook) -> CSRCodebook | PackedCSR:
    """The smaller of the plain CSR + codebook arrays and :class:`PackedCSR` (by stored bytes)."""
    if csr.k > 16384:
        return csr
    packed = PackedCSR.from_csr(csr)
    return packed if packed.nbytes < csr.nbytes else csr

