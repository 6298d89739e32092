"""TVMScript kernels on Deep-Compression weights: CSR + codebook sparse linear layers, plus scheduled dense
fallback (dense linear). Convolution kernels are in :mod:`.conv_kernels`.

A compressed ``Linear`` weight ``W`` (``n_out x n_in``) is stored the way Deep Compression keeps it in memory
(paper §2-3): the surviving weights in CSR order with a *cluster index* per weight instead of a float::

    rowptr    int32   (n_out + 1,)   row i owns entries rowptr[i] .. rowptr[i+1]-1
    col       uint16 or int32 (nnz,) column of each entry (uint16 when n_in <= 65536)
    code      uint8 (k <= 256) or int16/int32  (nnz,)  cluster index of each entry
    codebook  float32 (k,) or (G, k)  shared weights (centroids); G per-channel codebooks: row i uses
                                     codebook i // (n_out / G) (the kernels take it flat, (G * k,))

and every kernel computes ``y[b, i] = act(sum_j codebook[g(i), code[j]] * x[b, col[j]] + bias[i])`` without
ever materialising the float weights.

The kernels are written as TVMScript ``@T.prim_func`` inside factory functions (TVMScript needs its source
file, so they cannot live in ``exec`` strings); shapes are Python ints captured by closure, so every layer
gets a kernel specialised to its shape. All kernels carry ``tirx.noalias``; the GPU kernels carry explicit
``T.thread_binding`` loops and ``tirx.is_scheduled``.

CPU schedule (``sparse_linear_cpu``): ``T.parallel`` over 64-row blocks; batch 1 uses four independent
accumulators per row (breaks the FMA dependency chain); batch B first transposes ``x`` into a ``(n_in, B)``
workspace so the gather ``x[:, col[j]]`` reads one contiguous, vectorised strip per weight and the decoded
weight ``codebook[code[j]]`` is reused for all B inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CSRCodebook", "sparse_linear_cpu", "sparse_linear_cuda", "sparse_linear_opencl", "sparse_linear_func",
    "dense_linear_cpu", "build_sparse_linear", "build_dense_linear", "CompiledKernel",
    "DENSE_DENSITY_THRESHOLD", "DENSE_DENSITY_THRESHOLD_LARGE", "use_dense", "device_kernel_info",
]

# Density (nnz / size) from which the dense kernel replaces the CSR+codebook kernel. Measured with
# `python bench/kernels.py --threshold` (batch 1, 1 thread, generic x86-64 llvm target, 2-core znver4 VM,
# median us, sparse / dense TVM kernel):
#   1024x1024 (4 MiB dense, cache-resident): d=0.1 48/83, 0.2 91/88, 0.3 136/86, 0.4 183/91, 0.5 228/82
#   4096x4096 (64 MiB dense, DRAM-bound):    d=0.1 779/7929, 0.2 1582/7946, 0.3 ~0.8x, 0.4 3195/3791,
#                                            0.5 8004/6508, 0.6 8853/3633 (noisy machine)
# The sparse kernel costs ~5 B + one gather per non-zero, the dense one 4 B per weight streamed with FMA
# vectors: it stops winning at ~20% density while the dense weight fits in cache and at ~40-45% once the
# dense weight has to stream from DRAM.
DENSE_DENSITY_THRESHOLD = 0.2
DENSE_DENSITY_THRESHOLD_LARGE = 0.4
LARGE_WEIGHT_BYTES = 16 << 20  # dense float32 weights above this size stream from DRAM


def use_dense(density: float, numel: int = 0) -> bool:
    """True if a layer of this density (and ``numel`` weights) should run on the dense kernel."""
    thr = DENSE_DENSITY_THRESHOLD_LARGE if 4 * numel > LARGE_WEIGHT_BYTES else DENSE_DENSITY_THRESHOLD
    return density >= thr


# ---------------------------------------------------------------------------------------------------------
# Compressed arrays
# ---------------------------------------------------------------------------------------------------------
class CodebookShape:
    """``k`` and ``groups`` of a layout's ``codebook`` attribute: float32 ``(k,)`` or per-channel ``(G, k)``."""

    codebook: np.ndarray

    @property
    def k(self) -> int:
        """Entries per codebook."""
        return int(self.codebook.shape[-1])

    @property
    def groups(self) -> int:
        """Number of codebooks G (1 for a ``(k,)`` codebook)."""
        return 1 if self.codebook.ndim == 1 else int(self.codebook.shape[0])


@dataclass
class CSRCodebook(CodebookShape):
    """A weight matrix in CSR + codebook form (see the module docstring)."""

    rowptr: np.ndarray   # int32 (n_out + 1,)
    col: np.ndarray      # uint16/int32 (max(nnz, 1),)  -- padded with one 0 entry when nnz == 0
    code: np.ndarray     # uint8/int16/int32 (max(nnz, 1),)
    codebook: np.ndarray  # float32 (k,) or (G, k)
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.rowptr[-1])

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays as stored (rowptr + col + code + codebook)."""
        return int(self.rowptr.nbytes + self.col.nbytes + self.code.nbytes + self.codebook.nbytes)

    @classmethod
    def from_codebook(cls, indices: np.ndarray, codebook: np.ndarray, mask: np.ndarray | None = None,
                      *, col_dtype: str | None = None) -> "CSRCodebook":
        """From cluster indices (``n_out x n_in``), a ``(k,)`` or per-channel ``(G, k)`` codebook (G dividing
        ``n_out``) and an optional mask (``True`` = kept).

        Entries whose decoded value is exactly 0 (masked out, or index pointing at a 0 centroid when no
        mask is given) are dropped.

        Raises:
            ValueError: a codebook that does not fit the rows, or more than 2**31 non-zeros.
        """
        from .dense_code import decode_codebook

        indices = np.asarray(indices)
        if indices.ndim != 2:
            indices = indices.reshape(indices.shape[0], -1)
        codebook = np.asarray(codebook, dtype=np.float32)
        codebook = np.ascontiguousarray(codebook if codebook.ndim == 2 else codebook.reshape(-1))
        if codebook.ndim == 2 and indices.shape[0] % codebook.shape[0]:
            raise ValueError(f"{codebook.shape[0]} codebooks do not divide the {indices.shape[0]} rows")
        if mask is None:
            keep = decode_codebook(codebook, indices) != 0
        else:
            keep = np.asarray(mask, dtype=bool).reshape(indices.shape)
        n_out, n_in = indices.shape
        counts = keep.sum(axis=1)
        rowptr = np.zeros(n_out + 1, dtype=np.int64)
        np.cumsum(counts, out=rowptr[1:])
        if rowptr[-1] >= 2**31:
            raise ValueError("more than 2**31 non-zeros; CSR with int32 row pointers cannot hold it")
        rows, cols = np.nonzero(keep)  # row-major order == CSR order
        col_dtype = col_dtype or ("uint16" if n_in <= 65536 else "int32")
        k = codebook.shape[-1]
        code_dtype = "uint8" if k <= 256 else ("int16" if k <= 32768 else "int32")
        col = cols.astype(col_dtype)
        code = indices[rows, cols].astype(code_dtype)
        if col.size == 0:  # zero-size buffers are awkward for TVM: keep one unused entry
            col = np.zeros(1, col_dtype)
            code = np.zeros(1, code_dtype)
        return cls(rowptr.astype(np.int32), col, code, codebook, (n_out, n_in))

    @classmethod
    def from_dense(cls, weight: np.ndarray, k: int | None = None, **kw) -> "CSRCodebook":
        """From a dense matrix whose non-zeros take few distinct values (exact; for tests and benchmarks)."""
        weight = np.asarray(weight, dtype=np.float32)
        values, inv = np.unique(weight, return_inverse=True)
        return cls.from_codebook(inv.reshape(weight.shape), values, weight != 0, **kw)

    def to_dense(self) -> np.ndarray:
        """The decoded float32 matrix (reference)."""
        n_out, n_in = self.shape
        w = np.zeros(self.shape, dtype=np.float32)
        nnz = self.nnz
        rows = np.repeat(np.arange(n_out), np.diff(self.rowptr))
        cb = self.codebook.reshape(self.groups, self.k)
        grp = rows // (n_out // self.groups)
        w[rows, self.col[:nnz].astype(np.int64)] = cb[grp, self.code[:nnz].astype(np.int64)]
        return w

    def arrays(self) -> list[np.ndarray]:
        """The kernel's weight arguments in order: rowptr, col, code, flat codebook ``(G * k,)``."""
        return [self.rowptr, self.col, self.code, np.ascontiguousarray(self.codebook.reshape(-1))]


def _act(v, relu: bool | str):
    """The fused activation: ``relu`` = ``False`` (none), ``True`` (ReLU) or ``"relu6"`` (min(max(v, 0), 6))."""
    from tvm.script import tirx as T

    if relu == "relu6":
        return T.min(T.max(v, T.float32(0)), T.float32(6))
    return T.max(v, T.float32(0)) if relu else v


# ---------------------------------------------------------------------------------------------------------
# CPU CSR + codebook kernel
# ---------------------------------------------------------------------------------------------------------
def sparse_linear_cpu(n_out: int, n_in: int, nnz: int, k: int, batch: int = 1, *, col_dtype: str = "int32",
                      code_dtype: str = "uint8", relu: bool = False, name: str = "dcc_sparse_linear",
                      block: int = 64, batch_tile: int = 16, cb_groups: int = 1):
    """PrimFunc ``name(x[batch, n_in], rowptr, col, code, codebook, bias[n_out], y[batch, n_out])`` for CPUs.

    ``nnz`` is the length of the ``col``/``code`` buffers (``max(nnz, 1)``); ``codebook`` is float32
    ``(cb_groups * k,)`` (row i reads codebook ``i // (n_out / cb_groups)``). Parallel over ``block``-row
    blocks; see the module docstring for the batch-1 / batch-B schedules.
    """
    from tvm.script import tirx as T

    nnz = max(int(nnz), 1)
    ncb = cb_groups * k
    rpg = n_out // cb_groups
    nblk = (n_out + block - 1) // block

    if batch == 1:
        @T.prim_func
        def kernel(x: T.Buffer((1, n_in), "float32"), rowptr: T.Buffer((n_out + 1,), "int32"),
                   col: T.Buffer((nnz,), col_dtype), code: T.Buffer((nnz,), code_dtype),
                   codebook: T.Buffer((ncb,), "float32"), bias: T.Buffer((n_out,), "float32"),
                   y: T.Buffer((1, n_out), "float32")):
            T.func_attr({"global_symbol": name, "tirx.noalias": True, "op_pattern": 8})
            for blk in T.parallel(nblk):
                # "global" scope + constant 16 bytes -> a stack alloca LLVM keeps in registers ("local"
                # scope would call TVMBackendAllocWorkspace per block).
                acc = T.alloc_buffer((4,), "float32", scope="global")
                for ii in T.serial(T.min(block, n_out - blk * block)):
                    i = T.bind(blk * block + ii)
                    cbo = T.bind(i // rpg * k)
                    lo = T.bind(rowptr[i])
                    n = T.bind(rowptr[i + 1] - lo)
                    acc[0] = T.float32(0)
                    acc[1] = T.float32(0)
                    acc[2] = T.float32(0)
                    acc[3] = T.float32(0)
                    for q in T.serial(n // 4):
                        j = T.bind(lo + q * 4)
                        acc[0] = acc[0] + codebook[cbo + T.Cast("int32", code[j])] * x[0, T.Cast("int32", col[j])]
                        acc[1] = acc[1] + (codebook[cbo + T.Cast("int32", code[j + 1])]
                                           * x[0, T.Cast("int32", col[j + 1])])
                        acc[2] = acc[2] + (codebook[cbo + T.Cast("int32", code[j + 2])]
                                           * x[0, T.Cast("int32", col[j + 2])])
                        acc[3] = acc[3] + (codebook[cbo + T.Cast("int32", code[j + 3])]
                                           * x[0, T.Cast("int32", col[j + 3])])
                    for r in T.serial(n % 4):
                        j = T.bind(lo + (n // 4) * 4 + r)
                        acc[0] = acc[0] + codebook[cbo + T.Cast("int32", code[j])] * x[0, T.Cast("int32", col[j])]
                    if relu:
                        y[0, i] = T.max((acc[0] + acc[1]) + (acc[2] + acc[3]) + bias[i], T.float32(0))
                    else:
                        y[0, i] = (acc[0] + acc[1]) + (acc[2] + acc[3]) + bias[i]

        return kernel

    bt = batch if batch <= batch_tile else batch_tile
    nbt = (batch + bt - 1) // bt
    bp = nbt * bt  # padded batch

    @T.prim_func
    def kernel_b(x: T.Buffer((batch, n_in), "float32"), rowptr: T.Buffer((n_out + 1,), "int32"),
                 col: T.Buffer((nnz,), col_dtype), code: T.Buffer((nnz,), code_dtype),
                 codebook: T.Buffer((ncb,), "float32"), bias: T.Buffer((n_out,), "float32"),
                 y: T.Buffer((batch, n_out), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "op_pattern": 8})
        xt = T.alloc_buffer((n_in, bp), "float32", scope="global")
        for c in T.parallel(n_in):
            for b in T.serial(bp):
                xt[c, b] = T.if_then_else(b < batch, x[T.min(b, batch - 1), c], T.float32(0))
        for blk in T.parallel(nblk):
            acc = T.alloc_buffer((bt,), "float32", scope="global")
            for tb in T.serial(nbt):
                for ii in T.serial(T.min(block, n_out - blk * block)):
                    i = T.bind(blk * block + ii)
                    for v in T.vectorized(bt):
                        acc[v] = T.float32(0)
                    for j in T.serial(rowptr[i], rowptr[i + 1]):
                        w = T.bind(codebook[i // rpg * k + T.Cast("int32", code[j])])
                        c = T.bind(T.Cast("int32", col[j]))
                        for v in T.vectorized(bt):
                            acc[v] = acc[v] + w * xt[c, tb * bt + v]
                    for v in T.serial(bt):
                        if tb * bt + v < batch:
                            if relu:
                                y[tb * bt + v, i] = T.max(acc[v] + bias[i], T.float32(0))
                            else:
                                y[tb * bt + v, i] = acc[v] + bias[i]

    return kernel_b


# ---------------------------------------------------------------------------------------------------------
# GPU CSR + codebook kernels
# ---------------------------------------------------------------------------------------------------------
def sparse_linear_cuda(n_out: int, n_in: int, nnz: int, k: int, batch: int = 1, *, col_dtype: str = "int32",
                       code_dtype: str = "uint8", relu: bool = False, name: str = "dcc_sparse_linear_cuda",
                       warps_per_block: int = 4, cb_groups: int = 1):
    """CUDA PrimFunc (same signature as :func:`sparse_linear_cpu`): one warp per output row.

    Grid ``(ceil(n_out / warps_per_block), batch)``, block ``(32, warps_per_block)``. The block first copies
    the codebook into shared memory (all ``cb_groups * k`` centroids when they fit in 16 KiB; else the kernel
    reads them from global memory); each lane of a row's warp walks the row with stride 32 (coalesced reads
    of ``col``/``code``), and the 32 partial sums are combined with ``__shfl_down_sync``.
    """
    from tvm.script import tirx as T

    nnz = max(int(nnz), 1)
    wpb = warps_per_block
    nrb = (n_out + wpb - 1) // wpb
    nthreads = 32 * wpb
    ncb = cb_groups * k
    rpg = n_out // cb_groups
    staged = ncb <= 4096
    nsh = ncb if staged else 1
    kload = (nsh + nthreads - 1) // nthreads

    @T.prim_func
    def kernel(x: T.Buffer((batch, n_in), "float32"), rowptr: T.Buffer((n_out + 1,), "int32"),
               col: T.Buffer((nnz,), col_dtype), code: T.Buffer((nnz,), code_dtype),
               codebook: T.Buffer((ncb,), "float32"), bias: T.Buffer((n_out,), "float32"),
               y: T.Buffer((batch, n_out), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True})
        for b in T.thread_binding(batch, thread="blockIdx.y"):
            for rb in T.thread_binding(nrb, thread="blockIdx.x"):
                for w in T.thread_binding(wpb, thread="threadIdx.y"):
                    for lane in T.thread_binding(32, thread="threadIdx.x"):
                        cb = T.alloc_buffer((nsh,), "float32", scope="shared")
                        acc = T.alloc_buffer((1,), "float32", scope="local")
                        if staged:
                            for t in T.serial(kload):
                                if t * nthreads + w * 32 + lane < ncb:
                                    cb[t * nthreads + w * 32 + lane] = codebook[t * nthreads + w * 32 + lane]
                            T.tvm_storage_sync("shared")
                        i = T.bind(T.min(rb * wpb + w, n_out - 1))
                        cbo = T.bind(i // rpg * k)
                        lo = T.bind(rowptr[i])
                        hi = T.bind(rowptr[i + 1])
                        acc[0] = T.float32(0)
                        for t in T.serial((hi - lo + 31 - lane) // 32):
                            j = T.bind(lo + lane + t * 32)
                            if staged:
                                acc[0] = acc[0] + cb[cbo + T.Cast("int32", code[j])] * x[b, T.Cast("int32", col[j])]
                            else:
                                acc[0] = acc[0] + (codebook[cbo + T.Cast("int32", code[j])]
                                                   * x[b, T.Cast("int32", col[j])])
                        acc[0] = acc[0] + T.tvm_warp_shuffle_down(T.tvm_warp_activemask(), acc[0], 16, 32, 32)
                        acc[0] = acc[0] + T.tvm_warp_shuffle_down(T.tvm_warp_activemask(), acc[0], 8, 32, 32)
                        acc[0] = acc[0] + T.tvm_warp_shuffle_down(T.tvm_warp_activemask(), acc[0], 4, 32, 32)
                        acc[0] = acc[0] + T.tvm_warp_shuffle_down(T.tvm_warp_activemask(), acc[0], 2, 32, 32)
                        acc[0] = acc[0] + T.tvm_warp_shuffle_down(T.tvm_warp_activemask(), acc[0], 1, 32, 32)
                        if lane == 0 and rb * wpb + w < n_out:
                            if relu:
                                y[b, i] = T.max(acc[0] + bias[i], T.float32(0))
                            else:
                                y[b, i] = acc[0] + bias[i]

    return kernel


def sparse_linear_opencl(n_out: int, n_in: int, nnz: int, k: int, batch: int = 1, *, col_dtype: str = "int32",
                         code_dtype: str = "uint8", relu: bool = False, name: str = "dcc_sparse_linear_cl",
                         group: int = 64, cb_groups: int = 1):
    """OpenCL PrimFunc for Mali GPUs (same signature as :func:`sparse_linear_cpu`): one work-item per row.

    Mali has no fast on-chip shared memory or cross-lane shuffles in portable OpenCL, and its "local"
    memory is ordinary cached global memory, so the scalar CSR schedule (a work-item per row, work-groups of
    ``group`` rows, grid ``(ceil(n_out / group), batch)``) is the usual choice there.
    """
    from tvm.script import tirx as T

    nnz = max(int(nnz), 1)
    ngroups = (n_out + group - 1) // group
    ncb = cb_groups * k
    rpg = n_out // cb_groups

    @T.prim_func
    def kernel(x: T.Buffer((batch, n_in), "float32"), rowptr: T.Buffer((n_out + 1,), "int32"),
               col: T.Buffer((nnz,), col_dtype), code: T.Buffer((nnz,), code_dtype),
               codebook: T.Buffer((ncb,), "float32"), bias: T.Buffer((n_out,), "float32"),
               y: T.Buffer((batch, n_out), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True})
        for b in T.thread_binding(batch, thread="blockIdx.y"):
            for g in T.thread_binding(ngroups, thread="blockIdx.x"):
                for t in T.thread_binding(group, thread="threadIdx.x"):
                    acc = T.alloc_buffer((1,), "float32", scope="local")
                    if g * group + t < n_out:
                        i = T.bind(g * group + t)
                        acc[0] = T.float32(0)
                        for j in T.serial(rowptr[i], rowptr[i + 1]):
                            acc[0] = acc[0] + (codebook[i // rpg * k + T.Cast("int32", code[j])]
                                               * x[b, T.Cast("int32", col[j])])
                        if relu:
                            y[b, i] = T.max(acc[0] + bias[i], T.float32(0))
                        else:
                            y[b, i] = acc[0] + bias[i]

    return kernel


def sparse_linear_func(target, n_out: int, n_in: int, nnz: int, k: int, batch: int = 1, **kw):
    """The CSR + codebook PrimFunc for ``target`` (name or dict, see :mod:`.targets`)."""
    from .targets import target_kind

    kind = target_kind(target)
    cb_groups = int(kw.get("cb_groups", 1))
    if cb_groups < 1 or n_out % cb_groups:
        raise ValueError(f"cb_groups={cb_groups} codebooks must divide the {n_out} output rows")
    if kind == "llvm":
        return sparse_linear_cpu(n_out, n_in, nnz, k, batch, **kw)
    if kind == "cuda":
        return sparse_linear_cuda(n_out, n_in, nnz, k, batch, **kw)
    if kind == "opencl":
        return sparse_linear_opencl(n_out, n_in, nnz, k, batch, **kw)
    raise NotImplementedError(f"no CSR+codebook kernel for target kind {kind!r} (have llvm, cuda, opencl)")


# ---------------------------------------------------------------------------------------------------------
# Dense fallbacks (CPU)
# ---------------------------------------------------------------------------------------------------------
def dense_linear_cpu(n_out: int, n_in: int, batch: int = 1, *, relu: bool = False,
                     name: str = "dcc_dense_linear", block: int = 16, vec: int = 16, batch_tile: int = 4):
    """Scheduled dense ``y[b, i] = act(sum_j W[i, j] x[b, j] + bias[i])`` (``W`` is ``n_out x n_in``).

    Parallel over ``block``-row blocks; per row, ``batch_tile`` inputs at a time share each loaded weight
    vector, the reduction over ``n_in`` runs in ``vec``-wide vector accumulators (two AVX2 / four NEON
    registers: independent FMA chains), then a horizontal sum and a scalar tail for ``n_in % vec``.
    """
    from tvm.script import tirx as T

    nblk = (n_out + block - 1) // block
    nv = n_in // vec
    tail0 = nv * vec
    ntail = n_in - tail0
    bt = min(batch, batch_tile)
    nbt = (batch + bt - 1) // bt

    @T.prim_func
    def kernel(x: T.Buffer((batch, n_in), "float32"), w: T.Buffer((n_out, n_in), "float32"),
               bias: T.Buffer((n_out,), "float32"), y: T.Buffer((batch, n_out), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "op_pattern": 8})
        for blk in T.parallel(nblk):
            acc = T.alloc_buffer((bt, vec), "float32", scope="global")
            tl = T.alloc_buffer((bt,), "float32", scope="global")
            for ii in T.serial(T.min(block, n_out - blk * block)):
                i = T.bind(blk * block + ii)
                for tb in T.serial(nbt):
                    for bb in T.unroll(bt):
                        for v in T.vectorized(vec):
                            acc[bb, v] = T.float32(0)
                        tl[bb] = T.float32(0)
                    for jo in T.serial(nv):
                        for bb in T.unroll(bt):
                            for v in T.vectorized(vec):
                                acc[bb, v] = acc[bb, v] + w[i, jo * vec + v] * x[T.min(tb * bt + bb, batch - 1), jo * vec + v]
                    for bb in T.unroll(bt):
                        for r in T.serial(ntail):
                            tl[bb] = tl[bb] + w[i, tail0 + r] * x[T.min(tb * bt + bb, batch - 1), tail0 + r]
                        for v in T.serial(vec):
                            tl[bb] = tl[bb] + acc[bb, v]
                        if tb * bt + bb < batch:
                            if relu:
                                y[tb * bt + bb, i] = T.max(tl[bb] + bias[i], T.float32(0))
                            else:
                                y[tb * bt + bb, i] = tl[bb] + bias[i]

    return kernel


# ---------------------------------------------------------------------------------------------------------
# Compiled stand-alone kernels (tests, benchmarks)
# ---------------------------------------------------------------------------------------------------------
class CompiledKernel:
    """A compiled kernel with its weight arguments bound as ``tvm.runtime.Tensor`` and a prefetched handle.

    ``__call__(x)`` takes a numpy array (batch, n_in) and returns numpy (batch, n_out); ``run(xt, yt)``
    calls the prefetched function on preallocated TVM tensors (for timing).
    """

    def __init__(self, lib, name: str, weights: list[np.ndarray], out_shape: tuple[int, int], dev=None):
        import tvm

        self.lib = lib
        self.name = name
        self.dev = dev if dev is not None else tvm.cpu()
        self.weights = [tvm.runtime.tensor(a, device=self.dev) for a in weights]
        self.fn = lib[name]
        self.out_shape = out_shape

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import tvm

        xt = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), device=self.dev)
        yt = tvm.runtime.tensor(np.zeros(self.out_shape, np.float32), device=self.dev)
        self.fn(xt, *self.weights, yt)
        return yt.numpy()

    def run(self, xt, yt) -> None:
        self.fn(xt, *self.weights, yt)

    @property
    def weight_nbytes(self) -> int:
        return int(sum(w.numpy().nbytes for w in self.weights))


def build_sparse_linear(csr: CSRCodebook, bias: np.ndarray | None = None, *, batch: int = 1,
                        relu: bool = False, target="llvm", name: str = "dcc_sparse_linear", **kw):
    """Compile the CSR + codebook kernel for ``csr`` and ``target``.

    Returns a :class:`CompiledKernel` for CPU targets; for GPU targets the compiled executable
    (``tvm.compile`` output, whose ``.mod.imports[0]`` is the device module) together with the args, as
    ``(executable, prim_func)`` -- GPU kernels run through :class:`CompiledKernel` with ``dev=tvm.cuda()``.
    """
    import tvm

    from .targets import is_gpu, resolve_target

    n_out, n_in = csr.shape
    tgt = resolve_target(target)
    f = sparse_linear_func(tgt, n_out, n_in, csr.col.shape[0], csr.k, batch, col_dtype=str(csr.col.dtype),
                           code_dtype=str(csr.code.dtype), relu=relu, name=name, cb_groups=csr.groups, **kw)
    lib = tvm.compile(f, target=tvm.target.Target(tgt))
    b = np.zeros(n_out, np.float32) if bias is None else np.asarray(bias, np.float32)
    if is_gpu(tgt):
        return lib, f
    return CompiledKernel(lib, name, csr.arrays() + [b], (batch, n_out))


def build_dense_linear(weight: np.ndarray, bias: np.ndarray | None = None, *, batch: int = 1,
                       relu: bool = False, target="llvm", name: str = "dcc_dense_linear", **kw):
    """Compile the scheduled dense kernel for ``weight`` (CPU targets) -> :class:`CompiledKernel`."""
    import tvm

    from .targets import resolve_target

    weight = np.ascontiguousarray(weight, dtype=np.float32)
    n_out, n_in = weight.shape
    f = dense_linear_cpu(n_out, n_in, batch, relu=relu, name=name, **kw)
    lib = tvm.compile(f, target=tvm.target.Target(resolve_target(target)))
    b = np.zeros(n_out, np.float32) if bias is None else np.asarray(bias, np.float32)
    return CompiledKernel(lib, name, [weight, b], (batch, n_out))


def device_kernel_info(prim_func, target="cuda") -> list[dict]:
    """Device kernels TVM generates for ``prim_func`` on a GPU ``target``, in module order (for exporting
    the kernels to a runtime without TVM, e.g. CuPy).

    Runs the same TIR pipeline as ``tvm.compile`` (``tvm.tirx.build``: BindTarget, default pipeline,
    host/device split, device finalisation) and, for every device ``PrimFunc``, returns ``{"name",
    "params": [{"name", "dtype", "kind": "pointer"|"scalar", "pointee"}...] (the kernel's C argument order,
    which TVM's host/device split chooses and need not match the PrimFunc's buffer order), "grid": [x, y, z],
    "block": [x, y, z], "dyn_shared_bytes", "launch_params"}``. Launch extents must be constants (they
    are for the static-shape kernels in this module); a symbolic one raises ``ValueError``.
    """
    import tvm
    from tvm.target import Target
    from tvm.tirx.build import split_host_device_mods

    from .targets import resolve_target

    tgt = Target(resolve_target(target))
    mod = tvm.IRModule.from_expr(prim_func) if not isinstance(prim_func, tvm.IRModule) else prim_func
    host = Target("llvm" if tvm.runtime.enabled("llvm") else "c")
    mod = tvm.tirx.transform.BindTarget(tgt.with_host(host))(mod)
    pipeline, _fin_host, fin_dev = tvm.tirx.get_default_tir_pipeline(tgt)
    mod = pipeline(mod)
    _host_mod, dev_mods = split_host_device_mods(mod)
    out = []
    for _t, dmod in dev_mods.items():
        dmod = fin_dev()(dmod)
        for gv, f in dmod.functions.items():
            ext = {}

            def visit(node, ext=ext):
                if isinstance(node, tvm.tirx.AttrStmt) and node.attr_key == "thread_extent":
                    tag = node.node.thread_tag
                    val = node.value
                    if not isinstance(val, tvm.tirx.IntImm):
                        raise ValueError(f"non-constant launch extent {tag} = {val} in {gv.name_hint}")
                    if tag in ext and ext[tag] != int(val):
                        raise ValueError(f"conflicting extents for {tag} in {gv.name_hint}")
                    ext[tag] = int(val)

            _walk_stmts(f.body, visit)
            params = []
            for v in f.params:
                ann = getattr(v, "ty", None) if hasattr(v, "ty") else getattr(v, "type_annotation", None)
                elem = getattr(ann, "element_type", None)
                if elem is not None:  # PointerType
                    params.append({"name": v.name, "dtype": "handle", "kind": "pointer",
                                   "pointee": str(getattr(elem, "dtype", elem))})
                else:
                    params.append({"name": v.name, "dtype": str(v.dtype), "kind": "scalar", "pointee": None})
            lp = [str(x) for x in f.attrs.get("tirx.kernel_launch_params", [])] if f.attrs else []
            name = str(f.attrs.get("global_symbol", gv.name_hint)) if f.attrs else gv.name_hint
            out.append({
                "name": name, "params": params,
                "grid": [ext.get("blockIdx.x", 1), ext.get("blockIdx.y", 1), ext.get("blockIdx.z", 1)],
                "block": [ext.get("threadIdx.x", 1), ext.get("threadIdx.y", 1), ext.get("threadIdx.z", 1)],
                "dyn_shared_bytes": 0, "launch_params": lp,
            })
    return out


def _walk_stmts(stmt, fvisit) -> None:
    """Pre-order walk over TIR statements (this TVM build exposes no TIR ``post_order_visit``)."""
    stack = [stmt]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        fvisit(node)
        seq = getattr(node, "seq", None)
        if seq is not None:
            stack.extend(reversed(list(seq)))
        for attr in ("body", "then_case", "else_case", "block"):
            try:
                child = getattr(node, attr, None)
            except Exception:  # noqa: BLE001 - some nodes raise on unknown attributes
                child = None
            if child is not None and not isinstance(child, (list, tuple)) and hasattr(child, "span"):
                stack.append(child)
