"""GPU (CUDA, OpenCL/Mali) TVMScript kernels of :mod:`.conv_kernels`: one thread per output pixel, the
codebook staged in shared memory. ``simulate=True`` builds the same TIR with serial loops for ``llvm``."""
from __future__ import annotations

from .conv_geom import ConvGeom

__all__ = ["sparse_conv2d_gpu", "dense_conv2d_gpu"]


def _thread_loops(simulate: bool):
    """``loop(extent, thread)`` for TVMScript: ``T.thread_binding`` on the GPU, ``T.serial`` when simulating."""
    from tvm.script import tirx as T

    if simulate:
        return lambda extent, thread: T.serial(extent)
    return lambda extent, thread: T.thread_binding(extent, thread=thread)


def sparse_conv2d_gpu(g: ConvGeom, nnz: int, k: int, col_dtype: str, code_dtype: str, relu: bool, name: str,
                      threads: int, simulate: bool = False, cb_groups: int = 1):
    """CUDA / OpenCL direct sparse convolution (signature of :func:`.conv_kernels.sparse_conv2d_func`).

    Grid ``(ceil(oh*ow / threads), oc, n)`` (``blockIdx.x/y/z``), ``threads`` threads per block, one output
    pixel per thread. Threads first copy the ``k`` centroids of the block's output channel (its row of the flat
    ``(cb_groups * k,)`` codebook) into shared memory (a sibling thread loop; TVM
    inserts the barrier), then walk the output channel's CSR row: decode ``(ic, r, s)`` from ``col``, guard
    the zero-padding border, accumulate ``codebook[code] * x`` in a register; bias and ReLU fused.
    ``simulate=True``: the same TIR with serial loops and a global codebook buffer, for ``llvm`` (tests).
    """
    from tvm.script import tirx as T

    n, c, h, w, oc, oh, ow = g.n, g.c, g.h, g.w, g.oc, g.oh, g.ow
    kh, kw, sh, sw, ph, pw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw
    icg, ocg = g.icg, g.ocg
    kk = kh * kw
    nnz = max(int(nnz), 1)
    npix = oh * ow
    nblk = -(-npix // threads)
    kload = -(-k // threads)
    ncb = cb_groups * k
    rpg = oc // cb_groups
    loop = _thread_loops(simulate)
    scope = "global" if simulate else "shared"
    lscope = "global" if simulate else "local"
    attrs = {"global_symbol": name, "tirx.noalias": True}
    if not simulate:
        attrs["tirx.is_scheduled"] = True

    @T.prim_func
    def kernel(x: T.Buffer((n, c, h, w), "float32"), rowptr: T.Buffer((oc + 1,), "int32"),
               col: T.Buffer((nnz,), col_dtype), code: T.Buffer((nnz,), code_dtype),
               codebook: T.Buffer((ncb,), "float32"), bias: T.Buffer((oc,), "float32"),
               y: T.Buffer((n, oc, oh, ow), "float32")):
        T.func_attr(attrs)
        for b in loop(n, "blockIdx.z"):
            for o in loop(oc, "blockIdx.y"):
                for pb in loop(nblk, "blockIdx.x"):
                    cb = T.alloc_buffer((k,), "float32", scope=scope)
                    for tx in loop(threads, "threadIdx.x"):
                        for t in T.serial(kload):
                            if t * threads + tx < k:
                                cb[t * threads + tx] = codebook[o // rpg * k + t * threads + tx]
                    for tx in loop(threads, "threadIdx.x"):
                        acc = T.alloc_buffer((1,), "float32", scope=lscope)
                        if pb * threads + tx < npix:
                            oy = T.bind((pb * threads + tx) // ow)
                            ox = T.bind((pb * threads + tx) % ow)
                            cbase = T.bind(o // ocg * icg)
                            acc[0] = bias[o]
                            for j in T.serial(rowptr[o], rowptr[o + 1]):
                                cc = T.bind(T.Cast("int32", col[j]))
                                iy = T.bind(oy * sh - ph + T.truncdiv(T.truncmod(cc, kk), kw) * dh)
                                ix = T.bind(ox * sw - pw + T.truncmod(cc, kw) * dw)
                                if iy >= 0 and iy < h and ix >= 0 and ix < w:
                                    xv = T.bind(x[b, cbase + T.truncdiv(cc, kk), iy, ix])
                                    acc[0] = acc[0] + cb[T.Cast("int32", code[j])] * xv
                            if relu:
                                y[b, o, oy, ox] = T.max(acc[0], T.float32(0))
                            else:
                                y[b, o, oy, ox] = acc[0]

    return kernel


def dense_conv2d_gpu(g: ConvGeom, relu: bool, name: str, threads: int, simulate: bool = False):
    """CUDA / OpenCL dense convolution ``name(x, weight, bias, y)``: the grid of :func:`sparse_conv2d_gpu`,
    each thread looping over all ``ic/groups * kh * kw`` taps of its pixel (``simulate`` as there)."""
    from tvm.script import tirx as T

    n, c, h, w, oc, oh, ow = g.n, g.c, g.h, g.w, g.oc, g.oh, g.ow
    kh, kw, sh, sw, ph, pw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw
    icg, ocg = g.icg, g.ocg
    npix = oh * ow
    nblk = -(-npix // threads)
    loop = _thread_loops(simulate)
    lscope = "global" if simulate else "local"
    attrs = {"global_symbol": name, "tirx.noalias": True}
    if not simulate:
        attrs["tirx.is_scheduled"] = True

    @T.prim_func
    def kernel(x: T.Buffer((n, c, h, w), "float32"), weight: T.Buffer((oc, icg, kh, kw), "float32"),
               bias: T.Buffer((oc,), "float32"), y: T.Buffer((n, oc, oh, ow), "float32")):
        T.func_attr(attrs)
        for b in loop(n, "blockIdx.z"):
            for o in loop(oc, "blockIdx.y"):
                for pb in loop(nblk, "blockIdx.x"):
                    for tx in loop(threads, "threadIdx.x"):
                        acc = T.alloc_buffer((1,), "float32", scope=lscope)
                        if pb * threads + tx < npix:
                            oy = T.bind((pb * threads + tx) // ow)
                            ox = T.bind((pb * threads + tx) % ow)
                            cbase = T.bind(o // ocg * icg)
                            acc[0] = bias[o]
                            for ic in T.serial(icg):
                                for r in T.serial(kh):
                                    for s in T.serial(kw):
                                        iy = T.bind(oy * sh - ph + r * dh)
                                        ix = T.bind(ox * sw - pw + s * dw)
                                        if iy >= 0 and iy < h and ix >= 0 and ix < w:
                                            acc[0] = acc[0] + weight[o, ic, r, s] * x[b, cbase + ic, iy, ix]
                            if relu:
                                y[b, o, oy, ox] = T.max(acc[0], T.float32(0))
                            else:
                                y[b, o, oy, ox] = acc[0]

    return kernel
