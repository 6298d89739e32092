"""Canonical, length-limited Huffman coding with numpy (Deep Compression, ICLR 2016, §4).

The paper Huffman-codes both the quantized weight indices (cluster ids) and the sparse index gaps offline.
This module provides:

* :func:`code_lengths` -- optimal length-limited code lengths via a vectorized **package-merge** (Larmore &
  Hirschberg 1990).  With a cap no smaller than the unconstrained Huffman depth it returns an optimal Huffman
  code; with a tighter cap it returns the optimal code among those with lengths ``<= max_len``.  Kraft sum is
  always ``<= 1``.
* :func:`canonical_codes` -- canonical (DEFLATE-style) code assignment from lengths, so only the lengths need
  to be stored.
* :func:`encode` / :func:`decode` -- vectorized bit packing and a **block-parallel, table-driven** decoder: the
  encoder records the bit length of every block of ``block_size`` symbols, so the decoder can advance all blocks
  in lock-step, one numpy gather into a ``2**Lmax`` lookup table per step.  The block table is part of the
  encoded bytes (so it is counted in every reported size).
* :class:`HuffmanCoder` -- ``compress(symbols, alphabet_size) -> (payload, meta)`` / ``decompress``; the payload
  is self-contained except for ``meta = {"n": n_symbols, "k": alphabet_size}``.
* :func:`entropy_bits` -- the empirical entropy bound ``n * H`` in bits.

Bit order is MSB-first.  All malformed inputs raise ``ValueError``.

Encoded stream layout of :func:`encode` (all varints are LEB128)::

    uvarint total_bits            # bits of the code stream (excl. padding)
    u8      log2(block_size)
    if n_blocks > 1:
        uvarint min_block_bits
        u8      width             # bits per block-table field
        (n_blocks - 1) fields of `width` bits: block_bits[i] - min_block_bits, byte-padded
    ceil(total_bits / 8) bytes: the concatenated canonical codes, MSB-first, zero-padded

Payload layout of :class:`HuffmanCoder` (version 1)::

    u8      version (=1)
    u8      lengths mode: 0 = dense, 1 = sparse
    dense:  uvarint m (lengths stored for symbols 0..m-1, the rest are 0), u8 w, m fields of w bits (byte-padded)
    sparse: uvarint u (used symbols), u8 wg, u8 w, u fields (symbol gap - 1) of wg bits, u fields (length) of w bits
    if more than one symbol has a non-zero length: the :func:`encode` stream
    (exactly one used symbol: no code stream at all -- the stream is that symbol repeated n times, 0 bits)
"""

from __future__ import annotations

import numpy as np

from .bitio import ByteReader, bit_windows, bits_for, pack_bits, pack_fixed, unpack_fixed, write_uvarint

__all__ = [
    "code_lengths",
    "canonical_codes",
    "kraft_sum",
    "encode",
    "decode",
    "HuffmanCoder",
    "entropy_bits",
    "MAX_CODE_LEN",
    "MAX_ALPHABET",
]

MAX_CODE_LEN = 24          # hard limit: the decoder's lookup table has 2**max(lengths) entries
MAX_ALPHABET = 1 << 24
DEFAULT_BLOCK_SIZE = 4096
_INVALID = np.int32(-32)   # table entry for unused codes: symbol -1, length 0


def entropy_bits(symbols: np.ndarray, alphabet_size: int) -> float:
    """Empirical entropy bound ``n * H(p)`` in bits (reference for paper §4 sizes), ``p`` = symbol frequencies of ``symbols``.

    Args:
        symbols: 1-D integer array with values in ``[0, alphabet_size)``.
        alphabet_size: ``K >= 1``.

    Returns:
        Float number of bits (0.0 for empty or single-valued streams).  No entropy coder that uses a static
        model of these frequencies can beat this (up to the cost of storing the model).

    Raises:
        ValueError: symbols out of range or not integers.
    """
    s = _check_symbols(symbols, alphabet_size)
    if s.size == 0:
        return 0.0
    c = np.bincount(s, minlength=int(alphabet_size)).astype(np.float64)
    c = c[c > 0]
    n = float(s.size)
    return float(-(c * np.log2(c / n)).sum())


def _check_symbols(symbols: np.ndarray, alphabet_size: int) -> np.ndarray:
    k = _check_alphabet(alphabet_size)
    s = np.asarray(symbols)
    if s.ndim != 1:
        s = s.ravel()
    if s.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"symbols must be integers, got dtype {s.dtype}")
    lo, hi = int(s.min()), int(s.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"symbols must be in [0, {k}), got range [{lo}, {hi}]")
    return s if s.dtype == np.int64 or s.dtype.itemsize < 8 else s.astype(np.int64)


def _check_alphabet(alphabet_size: int) -> int:
    if isinstance(alphabet_size, bool) or not isinstance(alphabet_size, (int, np.integer)):
        raise ValueError(f"alphabet_size must be an int, got {alphabet_size!r}")
    k = int(alphabet_size)
    if not 1 <= k <= MAX_ALPHABET:
        raise ValueError(f"alphabet_size must be in [1, {MAX_ALPHABET}], got {k}")
    return k


# ----------------------------------------------------------------------------------------------- code lengths
def code_lengths(counts: np.ndarray, max_len: int = 16) -> np.ndarray:
    """Optimal length-limited prefix-code lengths for symbol frequencies ``counts`` (paper §4).

    Algorithm: package-merge, vectorized per level (``max_len`` stable merges of arrays of at most ``2n``
    elements, ``n`` = used symbols), then the standard boundary back-trace: a leaf's code length is the number
    of levels whose selected prefix contains it.  This is optimal for the constrained problem, and equals
    plain Huffman when ``max_len`` is not binding.

    Args:
        counts: 1-D array of non-negative finite frequencies (ints or floats), length ``K`` (the alphabet size,
            ``1 <= K <= 2**24``).
        max_len: code length cap in bits, ``1 <= max_len <= 24``.

    Returns:
        ``uint8`` array of length ``K``: 0 for zero-count symbols, 1 if exactly one symbol is used, otherwise the
        optimal lengths (all ``<= max_len``, Kraft sum exactly 1).

    Raises:
        ValueError: negative/non-finite counts, bad ``max_len``, or more used symbols than ``2**max_len``.
    """
    c = np.asarray(counts)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array, got shape {c.shape}")
    if c.size > MAX_ALPHABET:
        raise ValueError(f"alphabet too large: {c.size} > {MAX_ALPHABET}")
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or not 1 <= max_len <= MAX_CODE_LEN:
        raise ValueError(f"max_len must be an int in [1, {MAX_CODE_LEN}], got {max_len!r}")
    if np.issubdtype(c.dtype, np.integer):
        if c.min() < 0:
            raise ValueError("counts must be non-negative")
        w_all = c.astype(np.int64)
    else:
        w_all = c.astype(np.float64)
        if not np.all(np.isfinite(w_all)) or w_all.min() < 0:
            raise ValueError("counts must be finite and non-negative")
    lengths = np.zeros(c.size, dtype=np.uint8)
    used = np.flatnonzero(w_all > 0)
    n = used.size
    if n == 0:
        return lengths
    if n == 1:
        lengths[used] = 1
        return lengths
    if n > (1 << int(max_len)):
        raise ValueError(f"{n} used symbols cannot be coded with lengths <= {max_len} bits")
    order = np.argsort(w_all[used], kind="stable")
    leaves = w_all[used][order]
    leaf_flag = np.ones(n, dtype=bool)
    # level 1 (deepest): the leaves; each following level: merge(leaves, pairs of the previous level)
    levels = [leaf_flag]
    prev = leaves
    for _ in range(int(max_len) - 1):
        npk = prev.size // 2
        pk = prev[0 : 2 * npk : 2] + prev[1 : 2 * npk : 2]
        vals = np.concatenate([leaves, pk])
        o = np.argsort(vals, kind="stable")      # leaves before packages on ties
        prev = vals[o]
        levels.append(o < n)
    depth = np.zeros(n, dtype=np.int64)
    sel = 2 * n - 2
    for flags in reversed(levels):
        if sel > flags.size:   # cannot happen when n <= 2**max_len; guard against silent wrong answers
            raise ValueError("package-merge infeasible (internal error)")
        n_leaf = int(np.count_nonzero(flags[:sel]))
        depth[:n_leaf] += 1
        sel = 2 * (sel - n_leaf)
        if sel == 0:
            break
    lengths[used[order]] = depth.astype(np.uint8)
    return lengths


def kraft_sum(lengths: np.ndarray) -> float:
    """Kraft sum ``sum(2**-l)`` over the non-zero entries of ``lengths`` (a prefix code needs ``<= 1``)."""
    ln = np.asarray(lengths).astype(np.int64)
    ln = ln[ln > 0]
    return float(np.ldexp(1.0, -ln).sum()) if ln.size else 0.0


def _check_lengths(lengths: np.ndarray) -> np.ndarray:
    ln = np.asarray(lengths)
    if ln.ndim != 1 or ln.size == 0:
        raise ValueError(f"lengths must be a non-empty 1-D array, got shape {ln.shape}")
    if ln.size > MAX_ALPHABET:
        raise ValueError(f"alphabet too large: {ln.size} > {MAX_ALPHABET}")
    if not np.issubdtype(ln.dtype, np.integer):
        raise ValueError(f"lengths must be integers, got dtype {ln.dtype}")
    ln = ln.astype(np.int64)
    if ln.min() < 0 or ln.max() > MAX_CODE_LEN:
        raise ValueError(f"code lengths must be in [0, {MAX_CODE_LEN}]")
    used = ln[ln > 0]
    if used.size:
        lmax = int(used.max())
        k = int((np.int64(1) << (lmax - used)).sum())
        if k > (1 << lmax):
            raise ValueError(f"code lengths violate the Kraft inequality (sum 2^-l = {k / (1 << lmax):.6f} > 1)")
    return ln


def _canonical_order(ln: np.ndarray) -> np.ndarray:
    used = np.flatnonzero(ln > 0)
    return used[np.argsort(ln[used], kind="stable")]   # by (length, symbol)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code words for ``lengths`` (paper §4; DEFLATE rule: shorter codes first, ties by symbol value).

    Args:
        lengths: 1-D integer array, ``0`` = symbol unused, else ``1..24``; must satisfy Kraft (``<= 1``).

    Returns:
        ``uint32`` array of the same length; ``codes[s]`` holds the ``lengths[s]``-bit code word of ``s``
        (MSB-first), 0 for unused symbols.

    Raises:
        ValueError: bad lengths or Kraft sum > 1.
    """
    ln = _check_lengths(lengths)
    codes = np.zeros(ln.size, dtype=np.uint32)
    order = _canonical_order(ln)
    if order.size == 0:
        return codes
    ls = ln[order]
    lmax = int(ls.max())
    # Left-aligned (lmax-bit) code values are the running Kraft prefix sum; canonical = prefix sum in order.
    step = np.int64(1) << (lmax - ls)
    left = np.cumsum(step) - step
    codes[order] = (left >> (lmax - ls)).astype(np.uint32)
    return codes


# ------------------------------------------------------------------------------------------------ encode/decode
def encode(symbols: np.ndarray, lengths: np.ndarray, block_size: int = DEFAULT_BLOCK_SIZE) -> bytes:
    """Huffman-encode ``symbols`` with the canonical code given by ``lengths`` (paper §4; layout in module doc).

    Args:
        symbols: 1-D integer array, values in ``[0, len(lengths))``, each with ``lengths[s] > 0``.
        lengths: code lengths (Kraft ``<= 1``), e.g. from :func:`code_lengths`.
        block_size: symbols per independently decodable block, a power of two in ``[64, 2**20]``.  The block
            table costs about ``log2(block_size * mean_len)`` bits per block (~0.1% at 4096 symbols).

    Returns:
        ``bytes``: header + block table + code stream.  ``len()`` is the honest encoded size.

    Raises:
        ValueError: bad lengths, symbols out of range or with a zero code length, bad ``block_size``.
    """
    ln = _check_lengths(lengths)
    if not isinstance(block_size, (int, np.integer)) or block_size < 64 or block_size > (1 << 20) or (
        block_size & (block_size - 1)
    ):
        raise ValueError(f"block_size must be a power of two in [64, 2**20], got {block_size!r}")
    s = _check_symbols(symbols, ln.size)
    codes = canonical_codes(ln)
    sl = ln[s]
    if s.size and sl.min() == 0:
        bad = int(s[np.argmin(sl)])
        raise ValueError(f"symbol {bad} occurs in the stream but has code length 0")
    data, total_bits = pack_bits(codes[s], sl)
    n = s.size
    out = bytearray(write_uvarint(total_bits))
    out.append(int(block_size).bit_length() - 1)
    n_blocks = -(-n // block_size)
    if n_blocks > 1:
        bb = np.add.reduceat(sl, np.arange(0, n, block_size, dtype=np.int64))[:-1]
        lo = int(bb.min())
        width = bits_for(int(bb.max()) - lo)
        out += write_uvarint(lo)
        out.append(width)
        out += pack_fixed(bb - lo, width)
    out += data
    return bytes(out)


def _parse_blocks(r: ByteReader, n_symbols: int, min_len: int) -> tuple[int, int, np.ndarray]:
    total_bits = r.uvarint()
    if n_symbols * min_len > total_bits:
        raise ValueError(
            f"corrupt Huffman stream: {n_symbols} symbols need at least {n_symbols * min_len} bits, "
            f"header says {total_bits}"
        )
    log_b = r.u8()
    if not 6 <= log_b <= 20:
        raise ValueError(f"corrupt Huffman stream: block size 2**{log_b} out of range")
    block_size = 1 << log_b
    n_blocks = -(-n_symbols // block_size)
    if n_blocks > 1:
        lo = r.uvarint()
        width = r.u8()
        if width > 32:
            raise ValueError(f"corrupt Huffman stream: block-table width {width} > 32")
        nbytes = ((n_blocks - 1) * width + 7) >> 3
        if nbytes > r.remaining():
            raise ValueError("truncated Huffman stream: block table runs past the end")
        bb = unpack_fixed(r.take(nbytes), width, n_blocks - 1) + lo
        starts = np.concatenate([[0], np.cumsum(bb)]).astype(np.int64)
        if int(starts[-1]) > total_bits:
            raise ValueError("corrupt Huffman stream: block table exceeds the total bit count")
    else:
        starts = np.zeros(max(n_blocks, 0), dtype=np.int64)
    return total_bits, block_size, starts


def decode(data: bytes, lengths: np.ndarray, n_symbols: int) -> np.ndarray:
    """Decode ``n_symbols`` symbols produced by :func:`encode` with the same ``lengths`` (paper §4).

    Block-parallel table decoding: all blocks advance together; each step is one gather from a
    ``2**max(lengths)``-entry table of ``(symbol << 5) | length``.  Sizes declared in the stream are checked
    against ``len(data)`` before anything proportional to them is allocated.

    Args:
        data: bytes from :func:`encode`.
        lengths: the code lengths used for encoding.
        n_symbols: number of symbols to decode (>= 0).

    Returns:
        1-D ``int32`` array of length ``n_symbols``.

    Raises:
        ValueError: truncated/corrupt stream (bit counts inconsistent with the block table, invalid code words,
        trailing garbage), invalid lengths, or ``n_symbols`` too large for the data.
    """
    ln = _check_lengths(lengths)
    n = int(n_symbols)
    if n < 0:
        raise ValueError(f"n_symbols must be >= 0, got {n}")
    used = ln[ln > 0]
    r = ByteReader(data, "Huffman stream")
    if used.size == 0:
        if n:
            raise ValueError("cannot decode symbols: no symbol has a non-zero code length")
        return np.zeros(0, dtype=np.int32)
    min_len, lmax = int(used.min()), int(used.max())
    total_bits, block_size, starts = _parse_blocks(r, n, min_len)
    stream = r.rest()
    if len(stream) != (total_bits + 7) >> 3:
        raise ValueError(
            f"Huffman stream length mismatch: header says {total_bits} bits ({(total_bits + 7) >> 3} bytes), "
            f"got {len(stream)} bytes"
        )
    if n == 0:
        if total_bits:
            raise ValueError("corrupt Huffman stream: bits present for zero symbols")
        return np.zeros(0, dtype=np.int32)
    # lookup table: canonical order fills the left-aligned code space contiguously from 0
    order = _canonical_order(ln)
    entry = ((order.astype(np.int64) << 5) | ln[order]).astype(np.int32)
    table = np.full(1 << lmax, _INVALID, dtype=np.int32)
    filled = np.repeat(entry, np.int64(1) << (lmax - ln[order]))
    table[: filled.size] = filled
    buf = np.frombuffer(stream, dtype=np.uint8)
    steps = min(block_size, n)
    pad = (steps * lmax + 7) // 8 + 8
    win = bit_windows(buf, pad).astype(np.int64)
    n_blocks = starts.size
    last_len = n - (n_blocks - 1) * block_size
    out = np.empty((steps, n_blocks), dtype=np.int32)
    p = starts.copy()
    sh = 32 - lmax
    mask = (1 << lmax) - 1
    p_last = None
    for t in range(steps):
        e = table[(win[p >> 3] >> (sh - (p & 7))) & mask]
        out[t] = e
        p += e & 31
        if t == last_len - 1:
            p_last = int(p[-1])
    ends = np.append(starts[1:], total_bits)
    p[-1] = p_last
    if not np.array_equal(p, ends):
        bad = int(np.flatnonzero(p != ends)[0])
        raise ValueError(
            f"corrupt Huffman stream: block {bad} decoded to bit {int(p[bad])}, expected {int(ends[bad])}"
        )
    res = out.T.reshape(-1)[:n] if n_blocks > 1 else out[:n, 0]
    res = res >> 5
    if res.min() < 0:
        raise ValueError("corrupt Huffman stream: invalid code word")
    if total_bits & 7 and buf[-1] & ((1 << (8 - (total_bits & 7))) - 1):
        raise ValueError("corrupt Huffman stream: non-zero padding bits")
    return res


# -------------------------------------------------------------------------------------------- high-level coder
def _write_lengths(ln: np.ndarray) -> bytes:
    used = np.flatnonzero(ln)
    if used.size == 0:
        return bytes([0]) + write_uvarint(0) + bytes([0])
    m = int(used[-1]) + 1
    w = bits_for(int(ln.max()))
    dense = bytes([0]) + write_uvarint(m) + bytes([w]) + pack_fixed(ln[:m], w)
    gaps = np.diff(used, prepend=-1) - 1
    wg = bits_for(int(gaps.max()))
    sparse = (
        bytes([1]) + write_uvarint(used.size) + bytes([wg, w]) + pack_fixed(gaps, wg) + pack_fixed(ln[used], w)
    )
    return dense if len(dense) <= len(sparse) else sparse


def _read_lengths(r: ByteReader, k: int) -> np.ndarray:
    mode = r.u8()
    ln = np.zeros(k, dtype=np.int64)
    if mode == 0:
        m = r.uvarint()
        w = r.u8()
        if m > k:
            raise ValueError(f"corrupt Huffman payload: {m} code lengths for alphabet size {k}")
        if w > 5:
            raise ValueError(f"corrupt Huffman payload: length width {w} > 5")
        ln[:m] = unpack_fixed(r.take((m * w + 7) >> 3), w, m)
    elif mode == 1:
        u = r.uvarint()
        wg, w = r.u8(), r.u8()
        if u > k or wg > 32 or w > 5:
            raise ValueError("corrupt Huffman payload: bad sparse code-length table header")
        gaps = unpack_fixed(r.take((u * wg + 7) >> 3), wg, u)
        vals = unpack_fixed(r.take((u * w + 7) >> 3), w, u)
        sym = np.cumsum(gaps + 1) - 1
        if u and int(sym[-1]) >= k:
            raise ValueError("corrupt Huffman payload: code-length table names a symbol beyond the alphabet")
        if u and vals.min() == 0:
            raise ValueError("corrupt Huffman payload: zero length in sparse table")
        ln[sym] = vals
    else:
        raise ValueError(f"corrupt Huffman payload: unknown code-length table mode {mode}")
    return ln


def _check_meta(meta: dict) -> tuple[int, int]:
    if not isinstance(meta, dict) or "n" not in meta or "k" not in meta:
        raise ValueError(f"meta must be a dict with 'n' and 'k', got {meta!r}")
    n, k = meta["n"], meta["k"]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"meta['n'] must be a non-negative int, got {n!r}")
    return int(n), _check_alphabet(k)


class HuffmanCoder:
    """Static canonical Huffman coder for one symbol stream (paper §4).

    Args:
        max_len: code-length cap (1..24); 16 costs <= 0.001 bit/symbol on cluster-index and gap streams.
        block_size: symbols per independently decodable block (power of two, 64..2**20).

    ``compress(symbols, alphabet_size) -> (payload, meta)``: ``payload`` (bytes) contains the code-length table,
    block table and code stream -- ``len(payload)`` is the honest size; ``meta = {"n": n_symbols,
    "k": alphabet_size}`` (JSON-serializable).  ``decompress(payload, meta) -> int32 array``.
    A stream with a single distinct symbol costs 0 bits beyond the table.
    """

    name = "huffman"
    VERSION = 1

    def __init__(self, max_len: int = 16, block_size: int = DEFAULT_BLOCK_SIZE):
        if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= MAX_CODE_LEN:
            raise ValueError(f"max_len must be an int in [1, {MAX_CODE_LEN}], got {max_len!r}")
        self.max_len = max_len
        self.block_size = block_size

    def compress(self, symbols: np.ndarray, alphabet_size: int) -> tuple[bytes, dict]:
        """Compress a 1-D integer stream with values in ``[0, alphabet_size)``.

        Returns ``(payload, meta)``.  Raises ``ValueError`` on out-of-range symbols, bad alphabet size, or
        more distinct symbols than ``2**max_len``.
        """
        k = _check_alphabet(alphabet_size)
        s = _check_symbols(symbols, k)
        counts = np.bincount(s, minlength=k) if s.size else np.zeros(k, dtype=np.int64)
        ln = code_lengths(counts, self.max_len)
        out = bytearray([self.VERSION])
        out += _write_lengths(ln)
        if np.count_nonzero(ln) > 1:
            out += encode(s, ln, self.block_size)
        return bytes(out), {"n": int(s.size), "k": k}

    def decompress(self, payload: bytes, meta: dict) -> np.ndarray:
        """Inverse of :meth:`compress`; returns an ``int32`` array of ``meta['n']`` symbols.

        Raises ``ValueError`` on any malformed payload or meta (truncation, bad tables, Kraft violation,
        trailing bytes, inconsistent sizes).
        """
        n, k = _check_meta(meta)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise ValueError(f"payload must be bytes, got {type(payload).__name__}")
        r = ByteReader(payload, "Huffman payload")
        ver = r.u8()
        if ver != self.VERSION:
            raise ValueError(f"unsupported Huffman payload version {ver}")
        ln = _read_lengths(r, k)
        ln = _check_lengths(ln)
        n_used = int(np.count_nonzero(ln))
        if n_used <= 1:
            if r.remaining():
                raise ValueError("corrupt Huffman payload: trailing bytes")
            if n and n_used == 0:
                raise ValueError(f"corrupt Huffman payload: {n} symbols but an empty code table")
            if n > (1 << 31):
                raise ValueError(f"refusing to materialize {n} symbols")
            sym = int(np.flatnonzero(ln)[0]) if n_used else 0
            return np.full(n, sym, dtype=np.int32)
        return decode(r.rest(), ln, n)

    def __repr__(self) -> str:
        return f"HuffmanCoder(max_len={self.max_len}, block_size={self.block_size})"


def optimal_huffman_bits(counts: np.ndarray) -> int:
    """Reference cost (bits) of an unconstrained optimal Huffman code: sum of internal node weights (heapq).

    Independent of :func:`code_lengths`; used by tests and benchmarks as an oracle.
    """
    import heapq

    c = [int(x) for x in np.asarray(counts).ravel() if x > 0]
    if len(c) <= 1:
        return sum(c)
    heapq.heapify(c)
    total = 0
    while len(c) > 1:
        a = heapq.heappop(c)
        b = heapq.heappop(c)
        total += a + b
        heapq.heappush(c, a + b)
    return total

