"""TVMScript convolution kernels on Deep-Compression weights: direct sparse convolution on CSR + codebook
weights (CPU, CUDA, OpenCL/Mali) and scheduled dense fallbacks.

A compressed ``Conv2d`` weight ``W`` (``oc x ic/groups x kh x kw``) is kept as a :class:`~.kernels.CSRCodebook`
over rows = output channels and columns = the flat index ``(ic_g * kh + r) * kw + s`` *within the output
channel's group* (:func:`conv_csr`), so each weight costs one column index and one cluster index
(Deep Compression, Han et al. ICLR 2016, §2-3) and the float weights are never materialised.

CPU kernel -- direct sparse convolution (Park et al., ICLR 2017, "Faster CNNs with direct sparse
convolutions and guided pruning"): every non-zero ``W[o, ic, r, s]`` adds ``w * (shifted input plane ic)``
to output plane ``o``. Layout tricks that make the inner loop one contiguous FMA stream for every stride,
padding and dilation:

* The input is copied once into a zero-padded, *stride-decomposed* workspace ``xs[n, c, sh, sw, HQ, WQ]``
  with ``xs[b, ci, py, px, qy, qx] = xpad[b, ci, qy*sh + py, qx*sw + px]``. Tap ``(r, s)`` then reads
  phase ``((r*dh) % sh, (s*dw) % sw)`` at offset ``((r*dh)//sh, (s*dw)//sw)``: unit stride for any stride.
* Output positions are numbered with the workspace's row pitch, ``p = oy * WQ + ox`` (the columns
  ``ow <= ox < WQ`` are computed and discarded), so the input of tap ``j`` for position ``p`` is
  ``xs[off_j + p]``: one flat, contiguous, vectorised loop per tap over the whole output plane.
* Per (image, output channel) the row's non-zeros are decoded once into a table (``off_j``, ``w_j =
  codebook[code_j]``); the plane is processed in ``chunk``-wide register tiles ``acc`` (initialised to the
  bias) that loop over the whole table, so every non-zero costs one broadcast + ``chunk/lanes`` vector
  loads and FMAs, and the accumulators never leave registers. ReLU is fused into the store.

The dense fallback (:func:`dense_conv2d_func`) is the same direct convolution over the same workspace with
the weights read densely and ``ob`` output channels of one group sharing every loaded input vector (register
blocking ``ob x chunk``).

GPU kernels (explicit ``T.thread_binding``, ``tirx.is_scheduled``): one thread per output pixel; grid
``(ceil(oh*ow / threads), oc, n)``; the block first stages the codebook in shared memory (CUDA ``__shared__``,
OpenCL ``__local``), then each thread walks its output channel's CSR row (all threads of a block read the
same ``col``/``code`` entry: a broadcast) and gathers ``x`` with border guards (consecutive threads read
consecutive ``ox``: coalesced for stride 1). Mali work-groups are 64 work-items, CUDA blocks 128 threads.
The private ``_sparse_conv2d_gpu(..., simulate=True)`` builds the *same* TIR with the thread loops serial
and the shared buffer global, which compiles for ``llvm``: that is how the tests check the GPU indexing
on a machine without a GPU.

Per-layer choice (:func:`use_dense_conv`), measured with ``python bench/conv_kernels.py`` (batch 1, 1 thread,
median of interleaved rounds, host ``mcpu``; see bench/results/conv_kernels.json). Ratios are sparse kernel
time / dense TVM fallback time:

    (filled in from the measurements below)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels import CSRCodebook, _act

__all__ = ["conv_csr", "sparse_conv2d_func", "dense_conv2d_func", "conv2d_out_shape", "use_dense_conv",
           "DENSE_CONV_THRESHOLDS", "GPU_DENSE_CONV_THRESHOLD"]


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")
    return t


def conv2d_out_shape(h: int, w: int, kh: int, kw: int, stride=(1, 1), padding=(0, 0),
                     dilation=(1, 1)) -> tuple[int, int]:
    """Output height and width of a 2-D convolution (zero padding, PyTorch's formula).

    ``oh = (h + 2*ph - dh*(kh - 1) - 1) // sh + 1`` (same for ``ow``). ``stride``/``padding``/``dilation``
    are ints or ``(y, x)`` pairs.

    Raises:
        ValueError: non-positive sizes/strides/dilations, negative padding, or a kernel larger than the
            padded input (no output position).
    """
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if min(h, w, kh, kw) < 1 or min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"conv2d needs h, w, kh, kw, stride, dilation >= 1 and padding >= 0; got h={h} w={w} "
                         f"kh={kh} kw={kw} stride={(sh, sw)} padding={(ph, pw)} dilation={(dh, dw)}")
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d kernel {kh}x{kw} (dilation {(dh, dw)}) does not fit the padded input "
                         f"{h + 2 * ph}x{w + 2 * pw}; use more padding or a smaller kernel")
    return oh, ow


def conv_csr(indices, codebook, mask, groups: int) -> CSRCodebook:
    """CSR + codebook form of a clustered conv weight (rows = output channels).

    Args:
        indices: cluster indices, integer array ``(oc, ic/groups, kh, kw)`` (numpy or torch).
        codebook: centroids, float ``(k,)``.
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
# Geometry shared by the CPU kernels
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Geom:
    n: int
    c: int
    h: int
    w: int
    oc: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    groups: int
    oh: int
    ow: int
    hq: int      # rows of one stride phase of the padded input
    wq: int      # columns (= the flat row pitch of the output tile)
    chunk: int
    nch: int     # chunks per output plane
    slack: int   # zeroed floats after the last plane (reads of discarded columns / the last chunk)

    @property
    def icg(self) -> int:
        return self.c // self.groups

    @property
    def ocg(self) -> int:
        return self.oc // self.groups

    @property
    def plane(self) -> int:
        return self.hq * self.wq

    @property
    def nphase(self) -> int:
        return self.sh * self.sw

    @property
    def ws_size(self) -> int:
        return self.n * self.c * self.nphase * self.plane + self.slack


def _geom(n, c, h, w, oc, kh, kw, stride, padding, dilation, groups, chunk) -> _Geom:
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if min(n, c, oc) < 1:
        raise ValueError(f"conv2d needs n, c, oc >= 1; got n={n} c={c} oc={oc}")
    if groups < 1 or c % groups or oc % groups:
        raise ValueError(f"groups={groups} must divide both the input channels ({c}) and output channels ({oc})")
    oh, ow = conv2d_out_shape(h, w, kh, kw, (sh, sw), (ph, pw), (dh, dw))
    hq = -(-(h + 2 * ph) // sh)
    wq = -(-(w + 2 * pw) // sw)
    nch = -(-(oh * wq) // chunk)
    ay, ax = (kh - 1) * dh // sh, (kw - 1) * dw // sw
    # largest read relative to the start of a phase plane: ay*wq + ax + nch*chunk - 1
    slack = max(0, ay * wq + ax + nch * chunk - hq * wq)
    return _Geom(n, c, h, w, oc, kh, kw, sh, sw, ph, pw, dh, dw, groups, oh, ow, hq, wq, chunk, nch, slack)


# ---------------------------------------------------------------------------------------------------------
# CPU kernels
def _fill_macro(g: _Geom):
    """TVMScript macro ``fill(x, xs)``: copy ``x`` into the zero-padded, stride-decomposed workspace ``xs``
    (module docstring). Rows are split into left border / contiguous copy / right border (no per-element
    bounds test); phases no tap reads (e.g. the odd phases of a strided 1x1 conv) are only zeroed."""
    from tvm.script import tirx as T

    n, c, h, w, sh, sw, ph, pw = g.n, g.c, g.h, g.w, g.sh, g.sw, g.ph, g.pw
    hq, wq, pl, nph = g.hq, g.wq, g.plane, g.nphase
    used_y = sum(1 << py for py in {r * g.dh % sh for r in range(g.kh)})  # bit py: a tap reads phase row py
    used_x = sum(1 << px for px in {s * g.dw % sw for s in range(g.kw)})
    used_y, used_x = (-1 if sh > 30 else used_y), (-1 if sw > 30 else used_x)  # int32 masks; -1 = all
    body = n * c * nph * pl
    slack = max(g.slack, 1)

    @T.macro
    def fill(x, xs):
        for bc in T.parallel(n * c):
            for p_ in T.serial(nph):
                if T.shift_right(used_y, p_ // sw) % 2 == 1 and T.shift_right(used_x, p_ % sw) % 2 == 1:
                    for qy in T.serial(hq):
                        iy = T.bind(qy * sh + p_ // sw - ph)
                        row = T.bind((bc * nph + p_) * pl + qy * wq)
                        if iy >= 0 and iy < h:
                            lo = T.bind(T.min((pw - p_ % sw + sw - 1) // sw, wq))
                            hi = T.bind(T.max(T.min((w - 1 + pw - p_ % sw) // sw + 1, wq), lo))
                            for qx in T.serial(lo):
                                xs[row + qx] = T.float32(0)
                            for qx in T.serial(hi - lo):
                                xs[row + lo + qx] = x[bc // c, bc % c, iy, (lo + qx) * sw + p_ % sw - pw]
                            for qx in T.serial(wq - hi):
                                xs[row + hi + qx] = T.float32(0)
                        else:
                            for qx in T.serial(wq):
                                xs[row + qx] = T.float32(0)
                else:
                    for i in T.serial(pl):
                        xs[(bc * nph + p_) * pl + i] = T.float32(0)
        for i in T.serial(slack):
            xs[body + i] = T.float32(0)

    return fill


# ---------------------------------------------------------------------------------------------------------
def _sparse_conv2d_cpu_plane(g: _Geom, nnz: int, k: int, col_dtype: str, code_dtype: str, relu: bool, name: str):
    from tvm.script import tirx as T

    n, c, h, w, oc, oh, ow = g.n, g.c, g.h, g.w, g.oc, g.oh, g.ow
    kh, kw, sh, sw, ph, pw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw
    hq, wq, pl, nph, icg, ocg = g.hq, g.wq, g.plane, g.nphase, g.icg, g.ocg
    kk = kh * kw
    nnz = max(int(nnz), 1)
    tab = max(1, min(nnz, icg * kk))  # longest possible row
    ch, nch = g.chunk, g.nch
    body = n * c * nph * pl
    slack = max(g.slack, 1)
    ws = body + slack
    fill = _fill_macro(g)
    # wq == ow: the padded-pitch plane is y's own layout -> full chunks are stored straight into y
    direct = wq == ow
    ohw = oh * ow
    nfull = ohw // ch
    nout = ch if direct else nch * ch

    @T.prim_func
    def kernel(x: T.Buffer((n, c, h, w), "float32"), rowptr: T.Buffer((oc + 1,), "int32"),
               col: T.Buffer((nnz,), col_dtype), code: T.Buffer((nnz,), code_dtype),
               codebook: T.Buffer((k,), "float32"), bias: T.Buffer((oc,), "float32"),
               y: T.Buffer((n, oc, oh, ow), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        yf = T.decl_buffer((n * oc * oh * ow,), "float32", data=y.data)
        xs = T.alloc_buffer((ws,), "float32", scope="global")
        fill(x, xs)
        for bo in T.parallel(n * oc):
            off = T.alloc_buffer((tab,), "int32", scope="global")
            wv = T.alloc_buffer((tab,), "float32", scope="global")
            acc = T.alloc_buffer((2, ch), "float32", scope="global")
            out = T.alloc_buffer((nout,), "float32", scope="global")
            b = T.bind(bo // oc)
            o = T.bind(bo % oc)
            lo = T.bind(rowptr[o])
            nr = T.bind(rowptr[o + 1] - lo)
            gbase = T.bind((b * c + o // ocg * icg) * nph * pl)
            for t in T.serial(nr):
                cc = T.bind(T.Cast("int32", col[lo + t]))
                ry = T.bind(T.truncdiv(T.truncmod(cc, kk), kw) * dh)
                rx = T.bind(T.truncmod(cc, kw) * dw)
                off[t] = gbase + ((T.truncdiv(cc, kk) * nph + ry % sh * sw + rx % sw) * pl + ry // sh * wq + rx // sw)
                wv[t] = codebook[T.Cast("int32", code[lo + t])]
            for q in T.serial(nch):
                for v in T.vectorized(ch):
                    acc[0, v] = bias[o]
                for v in T.vectorized(ch):
                    acc[1, v] = T.float32(0)
                for t in T.serial(nr // 2):
                    w0 = T.bind(wv[t * 2])
                    b0 = T.bind(off[t * 2] + q * ch)
                    w1 = T.bind(wv[t * 2 + 1])
                    b1 = T.bind(off[t * 2 + 1] + q * ch)
                    for v in T.vectorized(ch):
                        acc[0, v] = acc[0, v] + w0 * xs[b0 + v]
                    for v in T.vectorized(ch):
                        acc[1, v] = acc[1, v] + w1 * xs[b1 + v]
                for t in T.serial(nr % 2):
                    wt = T.bind(wv[nr - 1])
                    bt = T.bind(off[nr - 1] + q * ch)
                    for v in T.vectorized(ch):
                        acc[0, v] = acc[0, v] + wt * xs[bt + v]
                if direct:
                    if q < nfull:
                        for v in T.vectorized(ch):
                            yf[bo * ohw + q * ch + v] = _act(acc[0, v] + acc[1, v], relu)
                    else:
                        for v in T.vectorized(ch):
                            out[v] = acc[0, v] + acc[1, v]
                        for v in T.serial(ohw - nfull * ch):
                            yf[bo * ohw + nfull * ch + v] = _act(out[v], relu)
                else:
                    for v in T.vectorized(ch):
                        out[q * ch + v] = acc[0, v] + acc[1, v]
            if not direct:
                for oy in T.serial(oh):
                    for ox in T.serial(ow):
                        y[b, o, oy, ox] = _act(out[oy * wq + ox], relu)

    return kernel


def _sparse_conv2d_cpu_chunk(g: _Geom, nnz: int, k: int, col_dtype: str, code_dtype: str, relu: bool, name: str,
                             nacc: int = 2):
    from tvm.script import tirx as T

    n, c, h, w, oc, oh, ow = g.n, g.c, g.h, g.w, g.oc, g.oh, g.ow
    kh, kw, sh, sw, ph, pw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw
    hq, wq, pl, nph, icg, ocg = g.hq, g.wq, g.plane, g.nphase, g.icg, g.ocg
    kk = kh * kw
    nnz = max(int(nnz), 1)
    ch, nch = g.chunk, g.nch
    body = n * c * nph * pl
    slack = max(g.slack, 1)
    ws = body + slack
    fill = _fill_macro(g)
    direct = wq == ow  # the padded-pitch plane is y's own layout: chunks go straight into y
    ohw = oh * ow
    nfull = ohw // ch
    nstage = 1 if direct else n * oc * nch * ch
    img = c * nph * pl

    @T.prim_func
    def kernel(x: T.Buffer((n, c, h, w), "float32"), rowptr: T.Buffer((oc + 1,), "int32"),
               col: T.Buffer((nnz,), col_dtype), code: T.Buffer((nnz,), code_dtype),
               codebook: T.Buffer((k,), "float32"), bias: T.Buffer((oc,), "float32"),
               y: T.Buffer((n, oc, oh, ow), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        yf = T.decl_buffer((n * oc * oh * ow,), "float32", data=y.data)
        xs = T.alloc_buffer((ws,), "float32", scope="global")
        toff = T.alloc_buffer((nnz,), "int32", scope="global")
        tw = T.alloc_buffer((nnz,), "float32", scope="global")
        stage = T.alloc_buffer((nstage,), "float32", scope="global")
        fill(x, xs)
        for o in T.parallel(oc):
            for j in T.serial(rowptr[o], rowptr[o + 1]):
                cc = T.bind(T.Cast("int32", col[j]))
                ry = T.bind(T.truncdiv(T.truncmod(cc, kk), kw) * dh)
                rx = T.bind(T.truncmod(cc, kw) * dw)
                toff[j] = ((o // ocg * icg + T.truncdiv(cc, kk)) * nph + ry % sh * sw + rx % sw) * pl \
                    + ry // sh * wq + rx // sw
                tw[j] = codebook[T.Cast("int32", code[j])]
        for bq in T.parallel(n * nch):
            acc = T.alloc_buffer((nacc, ch), "float32", scope="global")
            b = T.bind(bq // nch)
            q = T.bind(bq % nch)
            base = T.bind(b * img + q * ch)
            for o in T.serial(oc):
                lo = T.bind(rowptr[o])
                nr = T.bind(rowptr[o + 1] - lo)
                for v in T.vectorized(ch):
                    acc[0, v] = bias[o]
                for a in T.unroll(1, nacc):
                    for v in T.vectorized(ch):
                        acc[a, v] = T.float32(0)
                for t in T.serial(nr // nacc):
                    for a in T.unroll(nacc):
                        wa = T.bind(tw[lo + t * nacc + a])
                        ba = T.bind(toff[lo + t * nacc + a] + base)
                        for v in T.vectorized(ch):
                            acc[a, v] = acc[a, v] + wa * xs[ba + v]
                for t in T.serial(nr % nacc):
                    wt = T.bind(tw[lo + nr // nacc * nacc + t])
                    bt = T.bind(toff[lo + nr // nacc * nacc + t] + base)
                    for v in T.vectorized(ch):
                        acc[0, v] = acc[0, v] + wt * xs[bt + v]
                for a in T.unroll(1, nacc):
                    for v in T.vectorized(ch):
                        acc[0, v] = acc[0, v] + acc[a, v]
                if direct:
                    if q < nfull:
                        for v in T.vectorized(ch):
                            yf[(b * oc + o) * ohw + q * ch + v] = _act(acc[0, v], relu)
                    else:
                        for v in T.serial(ohw - nfull * ch):
                            yf[(b * oc + o) * ohw + nfull * ch + v] = _act(acc[0, v], relu)
                else:
                    for v in T.vectorized(ch):
                        stage[((b * oc + o) * nch + q) * ch + v] = acc[0, v]
        if not direct:
            for bo in T.parallel(n * oc):
                for oy in T.serial(oh):
                    for ox in T.serial(ow):
                        y[bo // oc, bo % oc, oy, ox] = _act(stage[bo * nch * ch + oy * wq + ox], relu)

    return kernel


def _dense_conv2d_cpu(g: _Geom, relu: bool, name: str, ob: int):
    from tvm.script import tirx as T

    n, c, h, w, oc, oh, ow = g.n, g.c, g.h, g.w, g.oc, g.oh, g.ow
    kh, kw, sh, sw, ph, pw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw
    hq, wq, pl, nph, icg, ocg = g.hq, g.wq, g.plane, g.nphase, g.icg, g.ocg
    ch, nch = g.chunk, g.nch
    body = n * c * nph * pl
    slack = max(g.slack, 1)
    ws = body + slack
    fill = _fill_macro(g)
    nob = oc // ob
    direct = wq == ow
    ohw = oh * ow
    nfull = ohw // ch
    nout = 1 if direct else nch * ch

    @T.prim_func
    def kernel(x: T.Buffer((n, c, h, w), "float32"), weight: T.Buffer((oc, icg, kh, kw), "float32"),
               bias: T.Buffer((oc,), "float32"), y: T.Buffer((n, oc, oh, ow), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        yf = T.decl_buffer((n * oc * oh * ow,), "float32", data=y.data)
        xs = T.alloc_buffer((ws,), "float32", scope="global")
        fill(x, xs)
        for bo in T.parallel(n * nob):
            acc = T.alloc_buffer((ob, ch), "float32", scope="global")
            out = T.alloc_buffer((ob, nout), "float32", scope="global")
            b = T.bind(bo // nob)
            o0 = T.bind(bo % nob * ob)
            gbase = T.bind((b * c + o0 // ocg * icg) * nph * pl)
            for q in T.serial(nch):
                for u in T.unroll(ob):
                    for v in T.vectorized(ch):
                        acc[u, v] = bias[o0 + u]
                for ic in T.serial(icg):
                    for r in T.serial(kh):
                        for s in T.serial(kw):
                            base = T.bind(gbase + (ic * nph + r * dh % sh * sw + s * dw % sw) * pl
                                          + r * dh // sh * wq + s * dw // sw + q * ch)
                            for u in T.unroll(ob):
                                for v in T.vectorized(ch):
                                    acc[u, v] = acc[u, v] + weight[o0 + u, ic, r, s] * xs[base + v]
                if direct:
                    if q < nfull:
                        for u in T.unroll(ob):
                            for v in T.vectorized(ch):
                                yf[(b * oc + o0 + u) * ohw + q * ch + v] = _act(acc[u, v], relu)
                    else:
                        for u in T.serial(ob):
                            for v in T.serial(ohw - nfull * ch):
                                yf[(b * oc + o0 + u) * ohw + nfull * ch + v] = _act(acc[u, v], relu)
                else:
                    for u in T.unroll(ob):
                        for v in T.vectorized(ch):
                            out[u, q * ch + v] = acc[u, v]
            if not direct:
                for u in T.serial(ob):
                    for oy in T.serial(oh):
                        for ox in T.serial(ow):
                            y[b, o0 + u, oy, ox] = _act(out[u, oy * wq + ox], relu)

    return kernel


# ---------------------------------------------------------------------------------------------------------
# GPU kernels (CUDA, OpenCL); simulate=True -> same TIR with serial loops for llvm (validation)
# ---------------------------------------------------------------------------------------------------------
def _loops(simulate: bool):
    from tvm.script import tirx as T

    if simulate:
        return lambda extent, thread: T.serial(extent)
    return lambda extent, thread: T.thread_binding(extent, thread=thread)


def _sparse_conv2d_gpu(g: _Geom, nnz: int, k: int, col_dtype: str, code_dtype: str, relu: bool, name: str,
                       threads: int, simulate: bool = False):
    from tvm.script import tirx as T

    n, c, h, w, oc, oh, ow = g.n, g.c, g.h, g.w, g.oc, g.oh, g.ow
    kh, kw, sh, sw, ph, pw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw
    icg, ocg = g.icg, g.ocg
    kk = kh * kw
    nnz = max(int(nnz), 1)
    npix = oh * ow
    nblk = -(-npix // threads)
    kload = -(-k // threads)
    loop = _loops(simulate)
    scope = "global" if simulate else "shared"
    lscope = "global" if simulate else "local"
    attrs = {"global_symbol": name, "tirx.noalias": True}
    if not simulate:
        attrs["tirx.is_scheduled"] = True

    @T.prim_func
    def kernel(x: T.Buffer((n, c, h, w), "float32"), rowptr: T.Buffer((oc + 1,), "int32"),
               col: T.Buffer((nnz,), col_dtype), code: T.Buffer((nnz,), code_dtype),
               codebook: T.Buffer((k,), "float32"), bias: T.Buffer((oc,), "float32"),
               y: T.Buffer((n, oc, oh, ow), "float32")):
        T.func_attr(attrs)
        for b in loop(n, "blockIdx.z"):
            for o in loop(oc, "blockIdx.y"):
                for pb in loop(nblk, "blockIdx.x"):
                    cb = T.alloc_buffer((k,), "float32", scope=scope)
                    for tx in loop(threads, "threadIdx.x"):
                        for t in T.serial(kload):
                            if t * threads + tx < k:
                                cb[t * threads + tx] = codebook[t * threads + tx]
                    for tx in loop(threads, "threadIdx.x"):
                        acc = T.alloc_buffer((1,), "float32", scope=lscope)
                        if pb * threads + tx < npix:
                            oy = T.bind((pb * threads + tx) // ow)
                            ox = T.bind((pb * threads + tx) % ow)
                            cbase = T.bind(o // ocg * icg)
                            acc[0] = bias[o]
                            for j in T.serial(rowptr[o], rowptr[o + 1]):
                                cc = T.bind(T.Cast("int32", col[j]))
                                iy = T.bind(oy * sh - ph + cc % kk // kw * dh)
                                ix = T.bind(ox * sw - pw + cc % kw * dw)
                                if iy >= 0 and iy < h and ix >= 0 and ix < w:
                                    acc[0] = acc[0] + cb[T.Cast("int32", code[j])] * x[b, cbase + cc // kk, iy, ix]
                            if relu:
                                y[b, o, oy, ox] = T.max(acc[0], T.float32(0))
                            else:
                                y[b, o, oy, ox] = acc[0]

    return kernel


def _dense_conv2d_gpu(g: _Geom, relu: bool, name: str, threads: int, simulate: bool = False):
    from tvm.script import tirx as T

    n, c, h, w, oc, oh, ow = g.n, g.c, g.h, g.w, g.oc, g.oh, g.ow
    kh, kw, sh, sw, ph, pw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw
    icg, ocg = g.icg, g.ocg
    npix = oh * ow
    nblk = -(-npix // threads)
    loop = _loops(simulate)
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


# ---------------------------------------------------------------------------------------------------------
# Public factories
# ---------------------------------------------------------------------------------------------------------
_GPU_THREADS = {"cuda": 128, "opencl": 64}
_CPU_CHUNK = 32
_GPU_MAX_K = 4096  # 16 KiB of shared memory


def _cpu_sparse_schedule(g: _Geom) -> str:
    """``plane`` (per (image, output channel) plane) when each output channel reads a single input channel
    (depthwise-like: no input reuse across output channels), else ``chunk`` (per spatial chunk, all output
    channels, so the chunk's input stays in L1 across them). Measured: bench/conv_kernels.py --schedules."""
    return "plane" if g.icg == 1 else "chunk"


@dataclass(frozen=True)
class _Tiles:
    """Register tiles for one CPU ISA (``lanes`` floats per vector register, ``nregs`` registers)."""

    lanes: int
    nregs: int

    @property
    def dense_chunk(self) -> int:  # ob=4 output channels x 2 vectors = 8 accumulator registers
        return 2 * self.lanes

    @property
    def plane_chunk(self) -> int:  # 2 accumulator sets x 2 vectors
        return 2 * self.lanes

    @property
    def sparse_nacc(self) -> int:  # independent accumulator sets (FMA chains): 16 or 8 registers
        return 4 if self.nregs >= 32 else 2

    def sparse_chunk(self, g: _Geom) -> int:
        """4 vectors per accumulator set (less offset-table traffic per FMA) unless padding the plane to a
        multiple of that wastes over 1/16 more lanes than padding it to 2 vectors (small planes)."""
        big, small = 4 * self.lanes, 2 * self.lanes
        p = g.oh * g.wq
        return big if -(-p // big) * big <= -(-p // small) * small * 17 // 16 else small


def _cpu_tiles(target) -> _Tiles:
    """AVX-512: 16 lanes, 32 registers; AVX2: 8 lanes, 16; aarch64 NEON: 4 lanes, 32; otherwise (generic
    x86-64 = SSE2) 4 lanes, 16."""
    import tvm
    from tvm.target import codegen

    from .targets import resolve_target

    t = resolve_target(target)
    if str(t.get("mtriple", "")).startswith(("aarch64", "arm64")):
        return _Tiles(4, 32)
    tt = tvm.target.Target(t)
    if codegen.target_has_features("avx512f", tt):
        return _Tiles(16, 32)
    if codegen.target_has_features("avx2", tt):
        return _Tiles(8, 16)
    return _Tiles(4, 16)


def _kind(target) -> str:
    from .targets import target_kind

    kind = target_kind(target)
    if kind not in ("llvm", "cuda", "opencl"):
        raise NotImplementedError(f"no conv2d kernel for target kind {kind!r} (have llvm, cuda, opencl)")
    return kind


def sparse_conv2d_func(target: dict, *, n: int, c: int, h: int, w: int, oc: int, kh: int, kw: int,
                       stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1, nnz: int, k: int,
                       col_dtype: str = "uint16", code_dtype: str = "uint8", relu: bool = False,
                       name: str = "dcc_sparse_conv2d"):
    """Direct sparse convolution on a CSR + codebook weight (see the module docstring), for ``target``.

    Returns the PrimFunc ``name(x, rowptr, col, code, codebook, bias, y)`` with ``x`` float32
    ``(n, c, h, w)`` (NCHW), ``rowptr`` int32 ``(oc + 1,)``, ``col`` ``col_dtype`` and ``code``
    ``code_dtype`` ``(max(nnz, 1),)`` as built by :func:`conv_csr`, ``codebook`` float32 ``(k,)``, ``bias``
    float32 ``(oc,)`` and ``y`` float32 ``(n, oc, oh, ow)`` (:func:`conv2d_out_shape`, zero padding):
    ``y = act(conv2d(x, W, bias, stride, padding, dilation, groups))``, ``act`` = ReLU if ``relu``.

    ``target`` kind ``llvm`` (x86, aarch64) -> CPU kernel, ``cuda`` -> CUDA kernel, ``opencl`` -> OpenCL
    kernel (Mali). The CSR rows must hold each column at most once (as :func:`conv_csr` builds them).

    Raises:
        ValueError: inconsistent shapes (groups not dividing c/oc, kernel larger than the padded input).
        NotImplementedError: another target kind.
    """
    kind = _kind(target)
    g = _geom(n, c, h, w, oc, kh, kw, stride, padding, dilation, groups, _CPU_CHUNK)
    if k < 1:
        raise ValueError(f"codebook size k={k} must be >= 1")
    if kind != "llvm" and k > _GPU_MAX_K:
        raise ValueError(f"the GPU conv kernels stage the codebook in shared memory: k={k} > {_GPU_MAX_K} "
                         "centroids do not fit; cluster with fewer centroids (Deep Compression uses <= 256)")
    if kind == "llvm":
        tiles = _cpu_tiles(target)
        if _cpu_sparse_schedule(g) == "plane":
            g = _geom(n, c, h, w, oc, kh, kw, stride, padding, dilation, groups, tiles.plane_chunk)
            return _sparse_conv2d_cpu_plane(g, nnz, k, col_dtype, code_dtype, relu, name)
        g = _geom(n, c, h, w, oc, kh, kw, stride, padding, dilation, groups, tiles.sparse_chunk(g))
        return _sparse_conv2d_cpu_chunk(g, nnz, k, col_dtype, code_dtype, relu, name, nacc=tiles.sparse_nacc)
    return _sparse_conv2d_gpu(g, nnz, k, col_dtype, code_dtype, relu, name, _GPU_THREADS[kind])


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
    chunk = _cpu_tiles(target).dense_chunk if kind == "llvm" else _CPU_CHUNK
    g = _geom(n, c, h, w, oc, kh, kw, stride, padding, dilation, groups, chunk)
    if kind == "llvm":
        ob = next(b for b in (4, 2, 1) if g.ocg % b == 0)
        return _dense_conv2d_cpu(g, relu, name, ob)
    return _dense_conv2d_gpu(g, relu, name, _GPU_THREADS[kind])


# Density from which the dense fallback beats the sparse kernel, by CPU vector width (lanes) and layer class
# (see _conv_class); measured with bench/conv_kernels.py (table in the module docstring).
DENSE_CONV_THRESHOLDS: dict[int, dict[str, float]] = {
    16: {"reduce": 0.35, "reduce_odd_oc": 0.55, "pointwise": 0.6, "small": 0.6},   # AVX-512 (znver5)
    8: {"reduce": 0.55, "reduce_odd_oc": 1.0, "pointwise": 0.8, "small": 0.7},     # AVX2 (mcpu=haswell)
    4: {"reduce": 0.65, "reduce_odd_oc": 0.7, "pointwise": 0.95, "small": 0.6},    # SSE2 (generic x86-64)
}
GPU_DENSE_CONV_THRESHOLD = 0.5  # not measured (no GPU here): see use_dense_conv


def _conv_class(oc: int, ic_g: int, kh: int, kw: int) -> str:
    """``pointwise`` (1x1), ``small`` (fewer than 64 taps per output, e.g. depthwise 3x3), ``reduce`` (the
    dense fallback blocks 4 output channels) or ``reduce_odd_oc`` (``oc % 4 != 0``: it blocks only 2 or 1)."""
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
        lanes = _cpu_tiles(target).lanes
    else:
        lanes = 4
    return density >= DENSE_CONV_THRESHOLDS[lanes][_conv_class(oc, ic_g, kh, kw)]
