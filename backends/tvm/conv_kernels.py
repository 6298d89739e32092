"""TVMScript convolution kernels on Deep-Compression weights: direct sparse convolution on CSR + codebook
weights (CPU, CUDA, OpenCL/Mali) and scheduled dense fallbacks.

A compressed ``Conv2d`` weight ``W`` (``oc x ic/groups x kh x kw``) is kept as a :class:`~.kernels.CSRCodebook`
over rows = output channels and columns = the flat index ``(ic_g * kh + r) * kw + s`` *within the output
channel's group* (:func:`conv_csr`), so each weight costs one column index and one cluster index
(Deep Compression, Han et al. ICLR 2016, §2-3) and the float weights are never materialised.

CPU kernels -- direct sparse convolution (Park et al., ICLR 2017, "Faster CNNs with direct sparse
convolutions and guided pruning"): every non-zero ``W[o, ic, r, s]`` adds ``w * (shifted input plane ic)``
to output plane ``o``. Layout tricks that make the inner loop one contiguous FMA stream for every stride,
padding and dilation:

* The input is copied once into a zero-padded, *stride-decomposed* workspace ``xs[n, c, sh, sw, HQ, WQ]``
  with ``xs[b, ci, py, px, qy, qx] = xpad[b, ci, qy*sh + py, qx*sw + px]``. Tap ``(r, s)`` then reads
  phase ``((r*dh) % sh, (s*dw) % sw)`` at offset ``((r*dh)//sh, (s*dw)//sw)``: unit stride for any stride.
  Phases no tap reads (e.g. 3 of the 4 of a stride-2 1x1 conv) are not copied.
* Output positions are numbered with the workspace's row pitch, ``p = oy * WQ + ox`` (the columns
  ``ow <= ox < WQ`` are computed and discarded), so the input of non-zero ``j`` for position ``p`` is
  ``xs[off_j + p]``: one flat, contiguous, vectorised FMA stream per non-zero.
* Each non-zero is decoded once per call (per image in ``plane``) into ``(off_j, codebook[code_j])``;
  the plane is swept in register tiles of ``chunk`` floats (initialised to the bias), each looping over the
  output channel's non-zeros with 2-4 independent accumulator sets (FMA latency), so a non-zero costs one
  broadcast and ``chunk / lanes`` vector loads + FMAs and the accumulators never leave registers. ReLU is
  fused.

Two schedules (:mod:`.conv_cpu`): ``chunk`` (one parallel pass copies the input, then parallel over spatial
chunks with all output channels inside, so the chunk's input rows are reused from cache by every output
channel) and ``plane`` (parallel over (image, output channel), each task copying its group's input channels
into a private buffer). ``bench/conv_kernels.py --schedules``: ``plane`` is 1.02-1.8x faster on the depthwise
layers and up to 100x slower elsewhere (it re-copies all input channels per output channel), so it is used
only when ``ic/groups == 1``. Register tiles follow the target ISA (:func:`.conv_geom.cpu_tiles`: AVX-512,
AVX2, SSE2, NEON).

The dense fallback (:func:`dense_conv2d_func`) is the same direct convolution over the same workspace with
the weights read densely and ``ob`` = 4 (or 2, 1) output channels of one group sharing every loaded input
vector (register tile ``ob x 2 vectors``). On the AVX-512 host it takes 0.5-1.15x torch's time.

GPU kernels (:mod:`.conv_gpu`; explicit ``T.thread_binding``, ``tirx.is_scheduled``): one thread per output
pixel; grid ``(ceil(oh*ow / threads), oc, n)``; the block first stages the codebook in shared memory (CUDA
``__shared__``, OpenCL ``__local``), then each thread walks its output channel's CSR row (all threads of a
block read the same ``col``/``code`` entry: a broadcast) and gathers ``x`` with border guards (consecutive
threads read consecutive ``ox``: coalesced for stride 1). CUDA blocks have 128 threads, Mali work-groups 64
(fewer, rounded to 32 / 16, for planes smaller than that).
``conv_gpu.sparse_conv2d_gpu(..., simulate=True)`` builds the *same* TIR with serial loops and a global
codebook buffer, which compiles for ``llvm``: that is how the tests check the GPU indexing without a GPU.
The GPU kernels have not been timed (no GPU here).

Measurements (``python bench/conv_kernels.py [--mcpu haswell|generic]``: batch 1, 1 thread, median over 7-9
interleaved rounds on a shared 2-core AMD EPYC (znver5) VM; bench/results/conv_kernels*.json). Sparse/dense =
time of the sparse kernel / the dense TVM fallback on the same target; k = 32 (ResNet) or 16 codebooks::

    layer                   | AVX-512 sparse/dense     | sp/torch  | dense | AVX2 s/d       | SSE2 s/d
    (density ->)            |  0.1  0.2  0.3  0.5  1.0 |  0.1  0.3 | /trch |  0.3  0.5  1.0 |  0.3  0.5  1.0
    RN18 64->64 3x3 @56     | 0.27 0.52 0.78 1.32 2.60 | 0.29 0.83 | 1.06  | 0.49 0.86 1.64 | 0.34 0.56 1.12
    RN18 128->128 3x3 @28   | 0.31 0.63 0.92 1.43 2.68 | 0.35 1.05 | 1.14  | 0.60 1.02 1.78 | 0.43 0.74 1.35
    RN18 256->256 3x3 @14   | 0.33 0.62 0.90 1.42 2.70 | 0.34 0.93 | 1.04  | 0.51 0.85 1.62 | 0.42 0.71 1.34
    RN18 512->512 3x3 @7    | 0.33 0.61 0.86 1.37 2.73 | 0.25 0.63 | 0.74  | 0.57 0.88 1.85 | 0.51 0.82 1.62
    RN18 down 64->128 1x1 s2| 0.44 0.54 0.66 0.90 1.50 | 0.26 0.39 | 0.59  | 0.49 0.71 1.27 | 0.36 0.55 1.02
    MBv2 dw 144 3x3 s1 @56  | 0.50 0.58 0.66 0.82 1.21 | 0.36 0.46 | 0.71  | 0.58 0.75 1.21 | 0.67 0.83 1.27
    MBv2 dw 144 3x3 s2 @56  | 0.82 0.84 0.87 0.91 1.01 | 0.80 0.85 | 0.98  | 0.82 0.87 1.00 | 0.83 0.89 1.09
    MBv2 pw 32->192 1x1 @56 | 0.45 0.55 0.65 0.86 1.42 | 0.26 0.38 | 0.58  | 0.42 0.66 1.23 | 0.33 0.53 1.02
    LeNet-5 conv2 20->50 5x5| 0.20 0.37 0.53 0.87 1.70 | 0.10 0.26 | 0.48  | 0.31 0.50 0.99 | 0.45 0.73 1.42

The sparse kernel's time is close to linear in density; depthwise layers (9 taps per output) are dominated
by the input copy, so sparsity buys them less. The dense fallback on generic x86-64 (SSE2) is 1.1-5x slower
than torch (which dispatches to AVX-512 at run time): compile with ``detect_cpu=True`` for speed.
The benchmark interpolates each layer's crossover density (sparse time == dense time) and prints the median
per layer class (:func:`use_dense_conv`); rounded to 0.05 they are :data:`DENSE_CONV_THRESHOLDS`:

    class (see _conv_class)                   AVX-512      AVX2        SSE2         layers
    reduce (kh*kw > 1, >= 64 taps, oc%4 == 0)  0.35 (0.35)  0.6 (0.58)  0.7 (0.72)   ResNet-18 3x3 (4)
    reduce_odd_oc (dense tile ob = 2 or 1)      0.6 (0.58)   1.0 (1.0)   0.7 (0.70)   LeNet-5 conv2 (oc 50)
    pointwise (1x1)                             0.6 (0.60)   0.8 (0.78)  1.0 (0.98)   RN18 downsample, MBv2 pw
    small (< 64 taps, e.g. depthwise 3x3)       0.8 (0.84)   0.85 (0.88) 0.75 (0.73)  MBv2 depthwise s1, s2

(medians of the final run in parentheses; an earlier full run gave values within 0.1 of these, and near a
crossover the two kernels are within a few percent of each other, so the rounding costs little.)
"""
from __future__ import annotations

import numpy as np

from .conv_cpu import dense_conv2d_cpu, sparse_conv2d_chunk, sparse_conv2d_plane
from .conv_geom import DEFAULT_CHUNK, ConvGeom, conv2d_out_shape, conv_geom, cpu_tiles
from .conv_gpu import dense_conv2d_gpu, sparse_conv2d_gpu
from .kernels import CSRCodebook

__all__ = ["conv_csr", "sparse_conv2d_func", "dense_conv2d_func", "conv2d_out_shape", "use_dense_conv",
           "DENSE_CONV_THRESHOLDS", "GPU_DENSE_CONV_THRESHOLD"]



def conv_csr(indices, codebook, mask, groups: int) -> CSRCodebook:
    """CSR + codebook form of a clustered conv weight (rows = output channels).

    Args:
        indices: cluster indices, integer array ``(oc, ic/groups, kh, kw)`` (numpy or torch).
        codebook: centroids, float ``(k,)`` or per-channel ``(G, k)`` (G dividing ``oc``).
        mask: ``True`` = kept, bool array of ``indices``' shape, or ``None`` (keep entries whose centroid
            is non-zero).
        groups: the convolution's ``groups``; ``oc`` must be a multiple of it.

    Returns:
        ``CSRCodebook`` of shape ``(oc, ic_g * kh * kw)`` whose column ``(ic * kh + r) * kw + s`` is the
        input channel ``ic`` *within the output channel's group* and the tap ``(r, s)``; ``to_dense()``
        reshaped to ``(oc, ic_g, kh, kw)`` is the masked decoded weight.

    Raises:
        ValueError: ``indices`` is not 4-D, ``mask`` has another shape, or ``oc`` is not a multiple of
            ``groups``.
    """
    indices = _as_numpy(indices)
    if indices.ndim != 4:
        raise ValueError(f"conv weight indices must be 4-D (oc, ic/groups, kh, kw), got shape {indices.shape}")
    oc = indices.shape[0]
    if groups < 1 or oc % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide the {oc} output channels")
    if mask is not None:
        mask = _as_numpy(mask)
        if mask.shape != indices.shape:
            raise ValueError(f"mask shape {mask.shape} != indices shape {indices.shape}")
        mask = mask.reshape(oc, -1)
    return CSRCodebook.from_codebook(indices.reshape(oc, -1), _as_numpy(codebook), mask)


def _as_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


# ---------------------------------------------------------------------------------------------------------
# Public factories
# ---------------------------------------------------------------------------------------------------------
_GPU_THREADS = {"cuda": 128, "opencl": 64}
_GPU_GRAIN = {"cuda": 32, "opencl": 16}  # warp / typical Mali-friendly multiple


def _gpu_threads(kind: str, g: ConvGeom) -> int:
    """Threads per block: the target's default, or fewer (a multiple of the warp) for small planes."""
    grain = _GPU_GRAIN[kind]
    return min(_GPU_THREADS[kind], -(-(g.oh * g.ow) // grain) * grain)
_GPU_MAX_K = 4096  # 16 KiB of shared memory


def _cpu_sparse_schedule(g: ConvGeom) -> str:
    """``plane`` (per (image, output channel) plane) when each output channel reads a single input channel
    (depthwise-like: no input reuse across output channels), else ``chunk`` (per spatial chunk, all output
    channels, so the chunk's input stays in L1 across them). Measured: bench/conv_kernels.py --schedules."""
    return "plane" if g.icg == 1 else "chunk"


def _kind(target) -> str:
    from .targets import target_kind

    kind = target_kind(target)
    if kind not in ("llvm", "cuda", "opencl"):
        raise NotImplementedError(f"no conv2d kernel for target kind {kind!r} (have llvm, cuda, opencl)")
    return kind


def sparse_conv2d_func(target: dict, *, n: int, c: int, h: int, w: int, oc: int, kh: int, kw: int,
                       stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1, nnz: int, k: int,
                       col_dtype: str = "uint16", code_dtype: str = "uint8", relu: bool = False,
                       name: str = "dcc_sparse_conv2d", packed: tuple[int, int] | None = None,
                       cb_groups: int = 1):
    """Direct sparse convolution on a CSR + codebook weight (see the module docstring), for ``target``.

    Returns the PrimFunc ``name(x, rowptr, col, code, codebook, bias, y)`` with ``x`` float32
    ``(n, c, h, w)`` (NCHW), ``rowptr`` int32 ``(oc + 1,)``, ``col`` ``col_dtype`` and ``code``
    ``code_dtype`` ``(max(nnz, 1),)`` as built by :func:`conv_csr`, ``codebook`` float32 ``(cb_groups * k,)``
    (the flat ``(G, k)`` per-channel codebooks: output channel o reads row ``o // (oc / G)``), ``bias``
    float32 ``(oc,)`` and ``y`` float32 ``(n, oc, oh, ow)`` (:func:`conv2d_out_shape`, zero padding):
    ``y = act(conv2d(x, W, bias, stride, padding, dilation, groups))``, ``act`` = ReLU if ``relu``.

    ``target`` kind ``llvm`` (x86, aarch64) -> CPU kernel (``plane`` schedule when ``c == groups``, else
    ``chunk``; register tiles from the target's vector ISA), ``cuda`` -> CUDA kernel, ``opencl`` -> OpenCL
    kernel (Mali). The CSR rows must hold each column at most once (as :func:`conv_csr` builds them).

    ``packed=(code_bits, esc)`` (CPU targets): ``col`` holds the entries of a :class:`~.packed.PackedCSR` of
    the same weight (cluster index and relative column in one 8/16-bit entry, ``esc`` = the filler's gap
    value) and ``code`` is not read (pass the same array); the rows are decoded into the kernel's tap table
    once per call, so the compact layout costs no speed.

    Raises:
        ValueError: inconsistent shapes (groups not dividing c/oc, kernel larger than the padded input,
            sizes beyond int32 indexing), ``k < 1``, or ``k > 4096`` on a GPU target (shared memory).
        NotImplementedError: another target kind.
    """
    kind = _kind(target)
    g = conv_geom(n, c, h, w, oc, kh, kw, stride, padding, dilation, groups, DEFAULT_CHUNK)
    if k < 1:
        raise ValueError(f"codebook size k={k} must be >= 1")
    if cb_groups < 1 or oc % cb_groups:
        raise ValueError(f"cb_groups={cb_groups} codebooks must divide the {oc} output channels")
    if kind != "llvm" and k > _GPU_MAX_K:
        raise ValueError(f"the GPU conv kernels stage the codebook in shared memory: k={k} > {_GPU_MAX_K} "
                         "centroids do not fit; cluster with fewer centroids (Deep Compression uses <= 256)")
    if kind == "llvm":
        tiles = cpu_tiles(target)
        if _cpu_sparse_schedule(g) == "plane":
            g = conv_geom(n, c, h, w, oc, kh, kw, stride, padding, dilation, groups, tiles.plane_chunk)
            return sparse_conv2d_plane(g, nnz, k, col_dtype, code_dtype, relu, name, packed, cb_groups)
        g = conv_geom(n, c, h, w, oc, kh, kw, stride, padding, dilation, groups, tiles.sparse_chunk(g))
        return sparse_conv2d_chunk(g, nnz, k, col_dtype, code_dtype, relu, name, nacc=tiles.sparse_nacc,
                                   packed=packed, cb_groups=cb_groups)
    if packed:
        raise ValueError("the packed layout is decoded by the CPU kernels only; GPU kernels take plain CSR")
    return sparse_conv2d_gpu(g, nnz, k, col_dtype, code_dtype, relu, name, _gpu_threads(kind, g),
                             cb_groups=cb_groups)


def dense_conv2d_func(target: dict, *, n: int, c: int, h: int, w: int, oc: int, kh: int, kw: int,
                      stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1, relu: bool = False,
                      name: str = "dcc_dense_conv2d"):
    """Scheduled dense convolution, the fallback for layers too dense for :func:`sparse_conv2d_func`.

    Returns the PrimFunc ``name(x, weight, bias, y)``: ``x`` float32 ``(n, c, h, w)``, ``weight`` float32
    ``(oc, c/groups, kh, kw)``, ``bias`` float32 ``(oc,)``, ``y`` float32 ``(n, oc, oh, ow)``; same result
    as the sparse kernel. CPU: direct convolution over the stride-decomposed workspace with ``ob`` (4, 2 or
    1, dividing the output channels per group) output channels sharing every input vector; GPU: one thread
    per output pixel (see the module docstring).

    Raises:
        ValueError: inconsistent shapes. NotImplementedError: another target kind.
    """
    kind = _kind(target)
    chunk = cpu_tiles(target).dense_chunk if kind == "llvm" else DEFAULT_CHUNK
    g = conv_geom(n, c, h, w, oc, kh, kw, stride, padding, dilation, groups, chunk)
    if kind == "llvm":
        ob = next(b for b in (4, 2, 1) if g.ocg % b == 0)
        return dense_conv2d_cpu(g, relu, name, ob)
    return dense_conv2d_gpu(g, relu, name, _gpu_threads(kind, g))


# Density from which the dense fallback beats the sparse kernel, by CPU vector width (lanes) and layer class
# (see _conv_class); measured with bench/conv_kernels.py (table in the module docstring).
DENSE_CONV_THRESHOLDS: dict[int, dict[str, float]] = {
    16: {"reduce": 0.35, "reduce_odd_oc": 0.6, "pointwise": 0.6, "small": 0.8},    # AVX-512 (znver5)
    8: {"reduce": 0.6, "reduce_odd_oc": 1.0, "pointwise": 0.8, "small": 0.85},     # AVX2 (mcpu=haswell)
    4: {"reduce": 0.7, "reduce_odd_oc": 0.7, "pointwise": 1.0, "small": 0.75},     # SSE2 (generic x86-64)
}
GPU_DENSE_CONV_THRESHOLD = 0.5  # not measured (no GPU here): see use_dense_conv


def _conv_class(oc: int, ic_g: int, kh: int, kw: int) -> str:
    """``pointwise`` (1x1), ``small`` (fewer than 64 taps per output, e.g. depthwise 3x3), ``reduce`` (the
    dense fallback blocks 4 output channels) or ``reduce_odd_oc`` (``oc % 4 != 0``: it blocks only 2 or 1;
    ``oc`` stands in for ``oc / groups``, which the signature does not carry)."""
    if kh * kw == 1:
        return "pointwise"
    if ic_g * kh * kw < 64:
        return "small"
    return "reduce" if oc % 4 == 0 else "reduce_odd_oc"


def use_dense_conv(density: float, oc: int, ic_g: int, kh: int, kw: int, oh: int, ow: int, *,
                   target: dict | None = None) -> bool:
    """True if a conv layer of this weight density should run on :func:`dense_conv2d_func` rather than
    :func:`sparse_conv2d_func`.

    Args:
        density: non-zeros / weights of the layer, in [0, 1].
        oc, ic_g, kh, kw: output channels, input channels per group, kernel size.
        oh, ow: output size. Accepted for the caller's convenience; the measured crossovers did not move
            with the plane size (7x7 ... 56x56), so the rule does not use them.
        target: the target the kernel is compiled for. ``None`` = the generic x86-64 ``llvm`` target
            (dccomp's default). CPU targets pick :data:`DENSE_CONV_THRESHOLDS` by vector width
            (AVX-512 16 lanes, AVX2 8, otherwise 4: SSE2 measured; aarch64 NEON uses that row, unmeasured).
            GPU targets use :data:`GPU_DENSE_CONV_THRESHOLD` = 0.5, *not measured*: both GPU kernels run
            one thread per output pixel over the taps, the sparse one over ``density * taps`` of them with
            one more broadcast load each.

    Returns:
        ``density >= threshold(target, layer class)``.
    """
    if target is not None:
        from .targets import is_gpu

        if is_gpu(target):
            return density >= GPU_DENSE_CONV_THRESHOLD
        lanes = cpu_tiles(target).lanes
    else:
        lanes = 4
    return density >= DENSE_CONV_THRESHOLDS[lanes][_conv_class(oc, ic_g, kh, kw)]
