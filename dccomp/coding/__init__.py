"""Entropy and sparse-index coding for dccomp (Deep Compression, ICLR 2016, §2 and §4).

Pure numpy/bytes API, no IR knowledge:

* :mod:`.sparse` -- relative sparse indices with filler entries (``encode_positions`` / ``decode_positions``).
* :mod:`.huffman` -- canonical length-limited Huffman (``HuffmanCoder``, ``code_lengths``, ``encode``, ...).
* :mod:`.ans` -- static-model ANS via ``constriction`` (``AnsCoder``).
* ``CODERS`` -- name -> coder class; every coder has ``compress(symbols, alphabet_size) -> (payload, meta)``
  and ``decompress(payload, meta) -> np.ndarray[int32]``.
"""

from .ans import AnsCoder
from .huffman import (
    HuffmanCoder,
    canonical_codes,
    code_lengths,
    decode,
    encode,
    entropy_bits,
    kraft_sum,
)
from .sparse import count_fillers, decode_positions, encode_positions, gap_dtype

CODERS = {"huffman": HuffmanCoder, "ans": AnsCoder}

__all__ = [
    "CODERS",
    "AnsCoder",
    "HuffmanCoder",
    "canonical_codes",
    "code_lengths",
    "count_fillers",
    "decode",
    "decode_positions",
    "encode",
    "encode_positions",
    "entropy_bits",
    "gap_dtype",
    "kraft_sum",
]
