"""Fixed-width coder: each symbol in ``ceil(log2(alphabet_size))`` bits (the paper's P+Q columns, no Huffman)."""
from __future__ import annotations

import numpy as np

from .bitio import bits_for, pack_fixed, unpack_fixed

__all__ = ["FixedCoder"]


class FixedCoder:
    """Bit-packs symbols at a fixed width, MSB first. ``compress(symbols, alphabet_size) -> (payload, meta)``,
    ``decompress(payload, meta) -> int32 array``; ``meta = {"n": count, "k": alphabet_size}``.

    Raises:
        ValueError: out-of-range symbols, or a payload whose length is not ``ceil(n * width / 8)`` bytes.
    """

    name = "fixed"

    def compress(self, symbols: np.ndarray, alphabet_size: int) -> tuple[bytes, dict]:
        s = np.asarray(symbols).ravel()
        if alphabet_size < 1:
            raise ValueError(f"alphabet_size must be >= 1, got {alphabet_size}")
        if s.size and (s.min() < 0 or int(s.max()) >= alphabet_size):
            raise ValueError(f"symbols must lie in [0, {alphabet_size})")
        return pack_fixed(s.astype(np.int64), bits_for(alphabet_size - 1)), {"n": int(s.size), "k": int(alphabet_size)}

    def decompress(self, payload: bytes, meta: dict) -> np.ndarray:
        n, k = meta.get("n"), meta.get("k")
        if not (isinstance(n, int) and isinstance(k, int) and n >= 0 and 1 <= k <= 1 << 16):
            raise ValueError(f"fixed coder: invalid meta {meta!r}")
        width = bits_for(k - 1)
        if len(payload) != (n * width + 7) // 8:
            raise ValueError(f"fixed coder: payload is {len(payload)} bytes, {n} x {width}-bit symbols need "
                             f"{(n * width + 7) // 8}")
        out = unpack_fixed(payload, width, n).astype(np.int32)
        if out.size and int(out.max()) >= k:
            raise ValueError(f"fixed coder: symbol {int(out.max())} >= alphabet size {k}")
        return out
