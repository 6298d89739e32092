"""Build-time calibration: time candidate kernels of one layer on this machine and keep the faster.

The measured thresholds (:func:`~.conv_kernels.use_dense_conv`) are medians over layer classes; a layer near its
class's crossover (e.g. a 1x1 projection with many inputs and few outputs, or a stride-2 depthwise layer) can
go either way. For modules that run here, :class:`~.converters.Converters` times both kernels on random inputs
(interleaved rounds, median; a few milliseconds per layer plus one compile per candidate) when more than one
layout is in play (:func:`.layouts.choose`).
"""
from __future__ import annotations

import statistics
import time
from typing import Sequence

import numpy as np

__all__ = ["faster", "BAND", "MARGIN"]

#: calibrate when the threshold rule's choice flips within +-BAND of the layer's density
BAND = 0.3
#: a later (larger) candidate must take less than MARGIN x the time of the current choice to win: a few percent
#: of speed is not worth 2-8x the weight bytes
MARGIN = 0.85


def faster(target: dict, candidates: Sequence[tuple], x_shape: tuple[int, ...], out_shape: tuple[int, ...],
           rounds: int = 5, calls: int = 3, margin: float = MARGIN) -> int:
    """Index of the candidate ``(prim_func, name, weight_arrays)`` to use, candidates ordered from the smallest
    layout to the largest: walking that order, a candidate replaces the current choice only if it takes less
    than ``margin`` x its time. So the result is faster than every smaller candidate it passed over and within
    ``1 / margin`` of the fastest. Each kernel is called as ``name(x, *weight_arrays, bias, y)`` with random
    float32 ``x`` of ``x_shape`` and ``y`` of ``out_shape``.

    Rounds are interleaved (A B A B ...) so machine noise hits all candidates alike; the median over rounds of
    each candidate's time per call decides (seconds, ``time.perf_counter``)."""
    import tvm

    tgt = tvm.target.Target(target)
    rng = np.random.default_rng(0)
    x = tvm.runtime.tensor(rng.standard_normal(x_shape).astype(np.float32))
    bias = tvm.runtime.tensor(np.zeros(out_shape[1], np.float32))
    runs = []
    for f, name, arrays in candidates:
        fn = tvm.compile(f, target=tgt)[name]
        args = [x] + [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays] + [bias]
        y = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
        fn(*args, y)  # warm-up (first-touch of the workspace)
        runs.append((fn, args, y))
    times: list[list[float]] = [[] for _ in candidates]
    for _ in range(rounds):
        for i, (fn, args, y) in enumerate(runs):
            t = time.perf_counter()
            for _ in range(calls):
                fn(*args, y)
            times[i].append((time.perf_counter() - t) / calls)
    medians = [statistics.median(t) for t in times]
    best = 0
    for i in range(1, len(medians)):
        if medians[i] < margin * medians[best]:
            best = i
    return best
