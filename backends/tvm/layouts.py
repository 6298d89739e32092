"""Per-layer weight layout choice of the TVM backend among {CSR, packed, dense-code 1..8-bit, dense float32}.

Each compressed linear/conv weight can be stored in several layouts, each with its own kernel:

* ``csr`` -- :class:`~.kernels.CSRCodebook` (column + cluster index per non-zero; every target);
* ``packed`` -- :class:`~.packed.PackedCSR` (relative index + cluster index in one 8/16-bit entry; CPU conv);
* ``code<b>`` (``code4``, ``code6``, ``code8``, ...) -- :class:`~.dense_code.DenseCodes` (a ``b``-bit cluster index
  per weight, ``b = ceil(log2(k))``, plus the 4- and 8-bit layouts above it, which decode faster; pruned weights
  coded as a 0 centroid; CPU, clustered weights);
* ``dense`` -- the decoded float32 weight (CPU).

:func:`choose` picks one per layer from the ``weights=`` option:

* ``"small"``: the fewest bytes.
* ``"fast"``: the fastest. For a module that runs here (``calibrate``, default on in ``lower``) the candidates are
  compiled and timed (:func:`.calibrate.faster`: interleaved rounds, median; a larger layout is taken only if it
  is more than 15% faster than the best smaller one), except that the sparse layouts are not timed when the
  measured sparse/dense crossover rule says dense even at ``density - BAND`` and the dense layouts are not timed
  when it says sparse even at ``density + BAND`` (linear layers pass ``band=0``: the measured threshold decides
  sparse vs not, timing only picks among the dense-side layouts). Without timing, the rule alone: dense-code (else dense
  float32) where it says dense, the sparse layout elsewhere.
* ``"balanced"``: ``"fast"`` among the layouts within a per-layer byte budget, ``max_bytes_ratio`` (default
  1.5) times the layer's coded size in the ``.dcc`` file (entropy-coded streams + codebook; without coded
  streams, the smallest layout's bytes); the smallest layout when none fits. ``max_bytes_ratio`` also applies
  to ``"fast"`` when given.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["Candidate", "choose", "SPARSE_LAYOUTS", "BALANCED_RATIO"]

SPARSE_LAYOUTS = ("csr", "packed")
#: default byte budget of ``weights="balanced"``: per layer, this times the coded (.dcc) size
BALANCED_RATIO = 1.5


@dataclass
class Candidate:
    """One way to store a layer's weight.

    ``layout``: ``csr`` | ``packed`` | ``code<bits>`` | ``dense``; ``nbytes``: bytes of its weight arrays;
    ``func()``: the kernel's PrimFunc; ``arrays()``: the distinct weight arrays (stored once each);
    ``order``: the kernel's weight arguments as indices into ``arrays()`` (the packed kernel reads one array
    twice); ``info``: what LayerInfo reports (dtypes, k, bits, ...).
    """

    layout: str
    nbytes: int
    func: Callable[[], Any]
    arrays: Callable[[], list[np.ndarray]]
    order: tuple[int, ...] | None = None
    info: dict = field(default_factory=dict)

    @property
    def sparse(self) -> bool:
        return self.layout in SPARSE_LAYOUTS

    def kernel_args(self, arrays: list) -> list:
        """``arrays`` (numpy or relax constants, in :meth:`arrays` order) in the kernel's argument order."""
        return list(arrays) if self.order is None else [arrays[i] for i in self.order]


def choose(cands: list[Candidate], options: dict, density: float, rule_dense: Callable[[float], bool],
           timer: Callable[[list[Candidate]], int] | None, coded_nbytes: int | None,
           band: float) -> tuple[Candidate, bool]:
    """``(candidate, chosen_by_timing)`` for one layer (see the module docstring).

    Args:
        cands: the layer's candidates (at least one; the sparse one first).
        options: the backend options (``kernel``, ``weights``, ``max_bytes_ratio``).
        density: non-zeros / weights of the layer.
        rule_dense: the measured sparse/dense crossover rule, ``rule_dense(d)`` = dense is faster at density d.
        timer: times candidates (sorted by bytes, smallest first) and returns the index to use; ``None`` when
            timing is off (cross targets, ``calibrate=False``).
        coded_nbytes: the layer's coded size in the ``.dcc`` file (streams + codebook), ``None`` if not coded.
        band: density band around the crossover in which the sparse and dense layouts are both timed.

    Raises:
        ValueError: no candidates.
    """
    if not cands:
        raise ValueError("no weight layout for this layer")
    sparse = [c for c in cands if c.sparse]
    force = options.get("kernel")
    if force == "sparse" and sparse:
        return sparse[0], False
    if force == "dense":
        dense = [c for c in cands if c.layout == "dense"]
        return (dense or sparse or cands)[0], False
    by_size = sorted(cands, key=lambda c: c.nbytes)
    mode = options.get("weights", "fast")
    if mode == "small":
        return by_size[0], False
    ratio = options.get("max_bytes_ratio")
    if ratio is None and mode == "balanced":
        ratio = BALANCED_RATIO
    pool = by_size
    if ratio is not None:
        ref = coded_nbytes if coded_nbytes is not None else by_size[0].nbytes
        pool = [c for c in by_size if c.nbytes <= ratio * ref] or by_size[:1]
    if len(pool) == 1:
        return pool[0], False
    dense_side = [c for c in pool if not c.sparse]
    sparse_side = [c for c in pool if c.sparse]
    if timer is not None:
        timed = pool
        if not rule_dense(min(1.0, density + band)) and sparse_side:
            timed = sparse_side
        elif rule_dense(max(0.0, density - band)) and dense_side:
            timed = dense_side
        if len(timed) == 1:
            return timed[0], False
        return timed[timer(timed)], True
    if rule_dense(density) and dense_side:
        codes = [c for c in dense_side if c.layout.startswith("code")]
        fast = [c for c in codes if c.layout in ("code4", "code8")]  # byte-aligned codes decode fastest
        return (fast or codes or dense_side)[0], False
    return (sparse_side or pool)[0], False
