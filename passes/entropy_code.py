"""``entropy-code`` (and its aliases ``huffman``, ``ans``): relative sparse indices + entropy coding (DC §2, §4)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dccomp.ir import IR, State, decode_codebook
from dccomp.pass_infra import Pass, PassContext, PassResult, select_value, selector_problem, validate_selectors
from dccomp.wcodec import ALL_CODERS, code_weight, default_index_bits

__all__ = ["EntropyCode", "Huffman", "Ans", "AUTO_INDEX_BITS"]

#: relative-index widths tried by ``index_bits=auto`` (first wins ties).
AUTO_INDEX_BITS = (3, 4, 5, 6, 7, 8, 10, 12)


@dataclass(frozen=True)
class EntropyCode(Pass):
    """Entropy-code every clustered weight: sparse positions as relative indices of ``index_bits`` bits with
    filler entries (paper Fig. 2), then the gap stream and the cluster-index stream each coded per layer with
    ``coder`` (``huffman``: canonical Huffman, code lengths capped at 16 bits, §4; ``ans``: rANS at the entropy
    bound; ``fixed``: no entropy coding, the paper's P+Q size).

    A layer whose entropy-coded streams would be larger than fixed-width ones (tiny layers, where the code
    tables cost more than they save) is stored with the ``fixed`` coder instead: never worse than P+Q.

    Contract: needs every weight clustered (weights a previous pass skipped stay as they are and are stored raw);
    changes no weight value except with ``codebook_dtype=float16``, which rounds the codebook to float16 first
    so the stored file decodes to exactly the IR's weights. Must be the last pass that changes weights.

    Per-channel codebooks ``(G, k)`` (``cluster{granularity=channel}``) are stored whole (``G * k`` entries, counted
    in the file size) and the codes stream holds local indices in ``[0, k)``.

    Options:

    - ``coder``: ``huffman`` (canonical Huffman), ``ans`` (rANS) or ``fixed`` (no entropy coding).
    - ``index_bits``: width in bits of the relative sparse indices (default: 8 conv, 5 fc, as in the paper;
      ``auto``: per layer, the width of :data:`AUTO_INDEX_BITS` whose coded size is smallest).
    - ``layers``: ``{regex: index_bits}`` per layer, matched against the weight name, module name or layer kind.
    - ``codebook_dtype``: how the centroids are stored, ``float32`` or ``float16`` (rounded first).
    """

    name = "entropy-code"
    requires = State.CLUSTERED
    coder: str = "huffman"
    index_bits: int | str | None = None
    layers: dict[str, Any] = field(default_factory=dict)
    codebook_dtype: str = "float32"

    def __post_init__(self) -> None:
        validate_selectors(self.layers)
        if self.coder not in ALL_CODERS:
            raise ValueError(f"coder must be one of {', '.join(ALL_CODERS)}, got {self.coder!r}")
        if self.name != "entropy-code" and self.coder != self.name:  # the huffman / ans shorthands
            raise ValueError(f"{self.name} codes with {self.name}; for coder={self.coder} write "
                             f"entropy-code{{coder={self.coder}}} (or {self.coder} if it has a shorthand)")
        for b in ([self.index_bits] if self.index_bits is not None else []) + list(self.layers.values()):
            if b != "auto" and (not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= 16):
                raise ValueError(f"index_bits must be an integer in [1, 16] or 'auto', got {b!r}")
        if self.codebook_dtype not in ("float32", "float16"):
            raise ValueError(f"codebook_dtype must be float32 or float16, got {self.codebook_dtype!r}")

    def check(self, ir: IR) -> str | None:
        problem = selector_problem(ir, self.layers)
        if problem:
            return problem
        for w in ir.weights.values():
            if w.name not in ir.skipped and w.state < State.CLUSTERED:
                return (f"'{self.name}' codes cluster indices, but {w.name!r} is {w.state}; run cluster first "
                        f"(e.g. '...,cluster{{bits=5}},{self.name}')")
        return None

    def run(self, ir: IR, ctx: PassContext) -> PassResult:
        for w in ir.weights.values():
            if w.codebook is None:
                continue
            p = ir.param(w.name)
            if self.codebook_dtype == "float16":
                half = w.codebook.half().float()
                if not torch.isfinite(half).all():  # |c| > 65504 would be stored as inf: an unreadable file
                    raise ValueError(f"{w.name!r}: codebook_dtype=float16 cannot hold its centroids (largest "
                                     f"|c| = {float(w.codebook.abs().max()):.6g} > 65504); use codebook_dtype=float32")
                w.codebook = half
                live = w.mask if w.mask is not None else torch.ones_like(p, dtype=torch.bool)
                if bool(live.any()):  # (an all-pruned weight has an empty codebook)
                    with torch.no_grad():
                        p[live] = decode_codebook(w.codebook, w.indices)[live].to(p.dtype)
            bits = select_value(w, self.layers, self.index_bits or default_index_bits(w.kind))
            if bits == "auto":  # the width whose coded streams are smallest (the codes stream does not depend on it)
                tries = [code_weight(p, w, self.coder, b) for b in AUTO_INDEX_BITS] if w.mask is not None else []
                w.coded = min(tries, key=lambda c: c.nbytes) if tries else code_weight(p, w, self.coder, 8)
            else:
                w.coded = code_weight(p, w, self.coder, int(bits))
            if self.coder != "fixed":  # never larger than fixed width (tiny layers: the code tables cost more)
                fixed = code_weight(p, w, "fixed", w.coded.index_bits)
                if fixed.nbytes < w.coded.nbytes:
                    fixed.meta["fallback_from"] = self.coder
                    w.coded = fixed
            w.coded.meta["codebook_dtype"] = self.codebook_dtype
        ctx.record(coded_bytes={w.name: w.coded.nbytes for w in ir.weights.values() if w.coded is not None})
        return PassResult(ir, True)


@dataclass(frozen=True)
class Huffman(EntropyCode):
    """``entropy-code`` with canonical Huffman coding (the paper's choice, §4)."""

    name = "huffman"
    coder: str = "huffman"


@dataclass(frozen=True)
class Ans(EntropyCode):
    """``entropy-code`` with an asymmetric-numeral-system coder (within 0.01% of the entropy bound)."""

    name = "ans"
    coder: str = "ans"
