"""Bit-level packing helpers shared by the entropy coders (vectorized numpy, no per-element Python loops).

Bit order everywhere is **MSB-first** (big-endian within bytes): the first field occupies the most significant
bits of the first byte, as in the paper's bit-stream layouts (Deep Compression, ICLR 2016, Fig. 2) and in
DEFLATE-style canonical Huffman streams.  Streams are zero-padded to a whole number of bytes.

Public helpers:

* :func:`pack_bits` -- concatenate variable-width unsigned fields into bytes.
* :func:`pack_fixed` / :func:`unpack_fixed` -- fixed-width fields (code-length tables, block offsets, counts).
* :func:`bit_windows` -- a uint32 "peek" array for table-driven decoders.
* :class:`ByteReader` and :func:`write_uvarint` -- LEB128 varints and a bounds-checked reader that raises
  ``ValueError`` (never ``IndexError``) on truncated input.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "pack_bits",
    "pack_fixed",
    "unpack_fixed",
    "bit_windows",
    "write_uvarint",
    "ByteReader",
    "bits_for",
]


def bits_for(max_value: int) -> int:
    """Number of bits needed to store unsigned integers in ``[0, max_value]`` (0 for ``max_value == 0``)."""
    max_value = int(max_value)
    if max_value < 0:
        raise ValueError(f"bits_for: negative value {max_value}")
    return max_value.bit_length()


def pack_bits(values: np.ndarray, widths: np.ndarray) -> tuple[bytes, int]:
    """Concatenate unsigned fields MSB-first into a byte string.

    Args:
        values: 1-D integer array (any int dtype, non-negative), field ``i`` holds ``values[i]``; only the low
            ``widths[i]`` bits are used (callers guarantee ``values[i] < 2**widths[i]``).
        widths: 1-D integer array, same length, each in ``[0, 32]`` bits.  Width-0 fields emit nothing.

    Returns:
        ``(data, n_bits)``: ``data`` has ``ceil(n_bits / 8)`` bytes, the last byte zero-padded at the low end.

    Vectorized: each field is placed into the 64-bit word where it starts, fields straddling a word boundary are
    split, and words are OR-reduced with ``np.bitwise_or.reduceat`` (fields never overlap, so OR == sum).
    """
    values = np.asarray(values).astype(np.uint64, copy=False).ravel()
    widths = np.asarray(widths).astype(np.int64, copy=False).ravel()
    if values.shape != widths.shape:
        raise ValueError(f"pack_bits: {values.size} values but {widths.size} widths")
    if widths.size and (widths.min() < 0 or widths.max() > 32):
        raise ValueError("pack_bits: widths must be in [0, 32]")
    ends = np.cumsum(widths)
    n_bits = int(ends[-1]) if ends.size else 0
    n_bytes = (n_bits + 7) >> 3
    if n_bits == 0:
        return b"", 0
    starts = ends - widths
    keep = widths > 0
    if not keep.all():
        values, widths, starts, ends = values[keep], widths[keep], starts[keep], ends[keep]
    n_words = (n_bits + 63) >> 6
    out = np.zeros(n_words, dtype=np.uint64)
    chunk = 1 << 20  # bound temporaries to a few x 8 MB
    for c0 in range(0, values.size, chunk):
        _pack_chunk(out, values[c0 : c0 + chunk], widths[c0 : c0 + chunk], starts[c0 : c0 + chunk])
    data = out.astype(">u8").tobytes()[:n_bytes]
    return data, n_bits


def _pack_chunk(out: np.ndarray, values: np.ndarray, widths: np.ndarray, starts: np.ndarray) -> None:
    """OR fields (all widths > 0, starts non-decreasing, global bit offsets) into the uint64 word array ``out``."""
    word = starts >> 6                          # word where the field starts
    off = (starts & 63).astype(np.uint64)       # bit offset of its MSB inside that word
    w = widths.astype(np.uint64)
    room = np.uint64(64) - off                  # bits left in the starting word
    fits = w <= room
    spill = np.where(fits, np.uint64(0), w - room)    # bits that go into the next word
    head = (values >> spill) << np.where(fits, room - w, np.uint64(0))
    run_starts = np.flatnonzero(np.r_[True, word[1:] != word[:-1]])
    # |= (not =): the first word of a chunk may already hold bits of the previous chunk.
    out[word[run_starts]] |= np.bitwise_or.reduceat(head, run_starts)
    if not fits.all():
        idx = np.flatnonzero(~fits)
        s = spill[idx]
        tail = (values[idx] & ((np.uint64(1) << s) - np.uint64(1))) << (np.uint64(64) - s)
        out[word[idx] + 1] |= tail   # at most one field straddles each word boundary: no index collisions


def pack_fixed(values: np.ndarray, width: int) -> bytes:
    """Pack ``values`` (non-negative ints ``< 2**width``) into ``ceil(len*width/8)`` bytes, MSB-first.

    ``width`` in ``[0, 32]``; width 0 returns ``b""``.  Raises ``ValueError`` if a value does not fit.
    """
    values = np.asarray(values).ravel()
    if width < 0 or width > 32:
        raise ValueError(f"pack_fixed: width {width} not in [0, 32]")
    if values.size == 0 or width == 0:
        if values.size and width == 0 and np.any(values != 0):
            raise ValueError("pack_fixed: non-zero value with width 0")
        return b""
    if values.min() < 0 or int(values.max()) >= (1 << width):
        raise ValueError(f"pack_fixed: value out of range for {width}-bit fields")
    data, _ = pack_bits(values, np.full(values.size, width, dtype=np.int64))
    return data


def unpack_fixed(data: bytes | np.ndarray, width: int, count: int, bit_offset: int = 0) -> np.ndarray:
    """Read ``count`` fixed-width unsigned fields of ``width`` bits starting at ``bit_offset``.

    Returns an ``int64`` array.  Raises ``ValueError`` if the fields run past the end of ``data``.
    """
    if width < 0 or width > 32:
        raise ValueError(f"unpack_fixed: width {width} not in [0, 32]")
    if count < 0:
        raise ValueError("unpack_fixed: negative count")
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    end_bit = bit_offset + width * count
    if end_bit > 8 * buf.size:
        raise ValueError(
            f"truncated stream: need {end_bit} bits for {count} x {width}-bit fields, have {8 * buf.size}"
        )
    win = bit_windows(buf, 0)
    pos = bit_offset + width * np.arange(count, dtype=np.int64)
    w = win[pos >> 3].astype(np.uint64)
    # window holds 32 bits starting at byte pos>>3; field starts (pos & 7) bits in; width <= 25 handled directly.
    if width <= 25:
        sh = (32 - width - (pos & 7)).astype(np.uint64)
        return ((w >> sh) & np.uint64((1 << width) - 1)).astype(np.int64)
    # wide fields: two halves
    hi_w = width - 16
    hi = unpack_fixed_positions(buf, pos, hi_w)
    lo = unpack_fixed_positions(buf, pos + hi_w, 16)
    return (hi << 16) | lo


def unpack_fixed_positions(buf: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """Read ``width``-bit (<= 25) fields at arbitrary bit positions ``pos`` (int64 array); no bounds check."""
    win = bit_windows(buf, 0)
    w = win[pos >> 3].astype(np.uint64)
    sh = (32 - width - (pos & 7)).astype(np.uint64)
    return ((w >> sh) & np.uint64((1 << width) - 1)).astype(np.int64)


def bit_windows(buf: np.ndarray, pad: int) -> np.ndarray:
    """uint32 array ``win`` with ``win[i]`` = bytes ``buf[i:i+4]`` read big-endian (zero beyond the end).

    ``pad`` extra zero bytes are appended (so that decoders that overrun by at most ``pad`` bytes never index
    out of bounds).  Length: ``buf.size + pad + 1``.  Memory: 4 bytes per input byte.
    """
    b = np.zeros(buf.size + pad + 4, dtype=np.uint32)
    b[: buf.size] = buf
    n = buf.size + pad + 1
    return (b[:n] << 24) | (b[1 : n + 1] << 16) | (b[2 : n + 2] << 8) | b[3 : n + 3]


def write_uvarint(value: int) -> bytes:
    """LEB128 encoding of a non-negative int (7 bits per byte, low groups first)."""
    value = int(value)
    if value < 0:
        raise ValueError(f"write_uvarint: negative value {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class ByteReader:
    """Bounds-checked sequential reader over a bytes-like object; every error is a ``ValueError``."""

    def __init__(self, data: bytes | bytearray | memoryview, what: str = "stream"):
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def uvarint(self, limit: int = 1 << 62) -> int:
        """Read a LEB128 varint; raise ``ValueError`` if truncated, longer than 9 bytes, or ``> limit``."""
        result = 0
        shift = 0
        for _ in range(10):
            if self.pos >= len(self.data):
                raise ValueError(f"truncated {self.what}: varint runs past end at byte {self.pos}")
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if result > limit:
                    raise ValueError(f"corrupt {self.what}: value {result} exceeds limit {limit}")
                return result
            shift += 7
        raise ValueError(f"corrupt {self.what}: varint longer than 10 bytes")

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError(f"truncated {self.what}: expected a byte at offset {self.pos}")
        v = self.data[self.pos]
        self.pos += 1
        return v

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(
                f"truncated {self.what}: need {n} bytes at offset {self.pos}, have {len(self.data) - self.pos}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out
