"""CPU (``llvm``: x86, aarch64) TVMScript kernels of :mod:`.conv_kernels`: the two direct sparse convolution
schedules on CSR + codebook weights (``plane``, ``chunk``) and the register-blocked dense convolution, all over
the padded, stride-decomposed workspace described in :mod:`.conv_kernels`."""
from __future__ import annotations

from .conv_geom import ConvGeom
from .kernels import _act

__all__ = ["fill_channel_macro", "fill_workspace_macro", "sparse_conv2d_plane", "sparse_conv2d_chunk",
           "dense_conv2d_cpu"]


def tap_macro(k: int, packed: tuple[int, int] | None):
    """TVMScript macro ``tap(col, code, codebook, cbo, j, run, wv, t)``: decode non-zero ``j`` of a row into its
    column (``run[0]``) and weight (``wv[t]``), ``cbo`` = offset of the row's codebook in the flat ``(G * k,)``
    codebook. CSR: ``col[j]`` and ``codebook[cbo + code[j]]``. Packed
    (``packed = (code_bits, esc)``, :class:`~.packed.PackedCSR` entries in ``col``; start a row with
    ``run[0] = -1``): the column advances by gap + 1, or by ``(code + 1) * esc`` for a filler, whose weight is 0."""
    from tvm.script import tirx as T

    use_packed = packed is not None
    pbits, pesc = (packed[0], packed[1]) if use_packed else (0, 0)
    pmask = (1 << pbits) - 1

    @T.macro
    def tap(col, code, codebook, cbo, j, run, wv, t):
        if use_packed:
            e = T.bind(T.Cast("int32", col[j]))
            fl = T.bind(T.shift_right(e, pbits) == pesc)
            cd = T.bind(T.bitwise_and(e, pmask))
            run[0] = run[0] + T.if_then_else(fl, (cd + 1) * pesc, T.shift_right(e, pbits) + 1)
            wv[t] = T.if_then_else(fl, T.float32(0), codebook[cbo + T.min(cd, k - 1)])
        else:
            run[0] = T.Cast("int32", col[j])
            wv[t] = codebook[cbo + T.Cast("int32", code[j])]

    return tap


def fill_channel_macro(g: ConvGeom):
    """TVMScript macro ``fill_channel(x, xs, dst, b, ci)``: copy channel ``ci`` of image ``b`` of ``x`` into the
    zero-padded, stride-decomposed layout (``nphase`` planes of ``hq x wq``) at ``xs[dst:]``. Rows are split
    into left border / contiguous copy / right border (no per-element bounds test); phases no tap reads
    (e.g. the odd phases of a strided 1x1 conv) are only zeroed."""
    from tvm.script import tirx as T

    h, w, sh, sw, ph, pw = g.h, g.w, g.sh, g.sw, g.ph, g.pw
    hq, wq, pl, nph = g.hq, g.wq, g.plane, g.nphase
    used_y = sum(1 << py for py in {r * g.dh % sh for r in range(g.kh)})  # bit py: a tap reads phase row py
    used_x = sum(1 << px for px in {s * g.dw % sw for s in range(g.kw)})
    used_y, used_x = (-1 if sh > 30 else used_y), (-1 if sw > 30 else used_x)  # int32 masks; -1 = all

    @T.macro
    def fill_channel(x, xs, dst, b, ci):
        for p_ in T.serial(nph):
            if T.shift_right(used_y, p_ // sw) % 2 == 1 and T.shift_right(used_x, p_ % sw) % 2 == 1:
                for qy in T.serial(hq):
                    iy = T.bind(qy * sh + p_ // sw - ph)
                    row = T.bind(dst + p_ * pl + qy * wq)
                    if iy >= 0 and iy < h:
                        lo = T.bind(T.min((pw - p_ % sw + sw - 1) // sw, wq))
                        hi = T.bind(T.max(T.min((w - 1 + pw - p_ % sw) // sw + 1, wq), lo))
                        for qx in T.serial(lo):
                            xs[row + qx] = T.float32(0)
                        for qx in T.serial(hi - lo):
                            xs[row + lo + qx] = x[b, ci, iy, (lo + qx) * sw + p_ % sw - pw]
                        for qx in T.serial(wq - hi):
                            xs[row + hi + qx] = T.float32(0)
                    else:
                        for qx in T.serial(wq):
                            xs[row + qx] = T.float32(0)
            else:
                for i in T.serial(pl):
                    xs[dst + p_ * pl + i] = T.float32(0)

    return fill_channel


def fill_workspace_macro(g: ConvGeom):
    """TVMScript macro ``fill(x, xs)``: every channel of every image into the workspace ``xs`` (parallel over
    them, see :func:`fill_channel_macro`), then the zeroed slack after the last plane."""
    from tvm.script import tirx as T

    n, c, pl, nph = g.n, g.c, g.plane, g.nphase
    body = n * c * nph * pl
    slack = max(g.slack, 1)
    fill_channel = fill_channel_macro(g)

    @T.macro
    def fill(x, xs):
        for bc in T.parallel(n * c):
            fill_channel(x, xs, bc * nph * pl, bc // c, bc % c)
        for i in T.serial(slack):
            xs[body + i] = T.float32(0)

    return fill


# ---------------------------------------------------------------------------------------------------------
def sparse_conv2d_plane(g: ConvGeom, nnz: int, k: int, col_dtype: str, code_dtype: str, relu: bool, name: str,
                        packed: tuple[int, int] | None = None, cb_groups: int = 1):
    """``plane`` schedule of the direct sparse convolution (signature of :func:`.conv_kernels.sparse_conv2d_func`).

    Parallel over (image, output channel): copy the group's input channels into a task-private padded,
    stride-decomposed buffer (cache-resident; no separate pass over the whole input), decode the row's
    non-zeros into a per-task (offset, weight) table, then sweep the padded-pitch plane in ``g.chunk``-float
    register tiles, two accumulator sets alternating over the non-zeros. Chosen for depthwise-like layers
    (one input channel per output channel). ``nnz`` = length of ``col``/``code`` (>= 1). ``packed`` =
    ``(code_bits, esc)``: ``col`` holds :class:`~.packed.PackedCSR` entries (``code`` is not read), decoded
    while the table is built (a filler becomes a 0-weight tap).
    """
    from tvm.script import tirx as T

    n, c, h, w, oc, oh, ow = g.n, g.c, g.h, g.w, g.oc, g.oh, g.ow
    kh, kw, sh, sw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.dh, g.dw
    wq, pl, nph, icg, ocg = g.wq, g.plane, g.nphase, g.icg, g.ocg
    kk = kh * kw
    nnz = max(int(nnz), 1)
    tab = max(1, min(nnz, icg * kk))  # longest possible row
    ch, nch = g.chunk, g.nch
    body = icg * nph * pl
    wsl = body + max(g.slack, 1)  # one task's input channels (one for depthwise) + slack
    fill_channel = fill_channel_macro(g)
    # wq == ow: the padded-pitch plane is y's own layout -> full chunks are stored straight into y
    direct = wq == ow
    ohw = oh * ow
    nfull = ohw // ch
    nout = ch if direct else nch * ch
    tap = tap_macro(k, packed)
    ncb = cb_groups * k
    rpg = oc // cb_groups

    @T.prim_func
    def kernel(x: T.Buffer((n, c, h, w), "float32"), rowptr: T.Buffer((oc + 1,), "int32"),
               col: T.Buffer((nnz,), col_dtype), code: T.Buffer((nnz,), code_dtype),
               codebook: T.Buffer((ncb,), "float32"), bias: T.Buffer((oc,), "float32"),
               y: T.Buffer((n, oc, oh, ow), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        yf = T.decl_buffer((n * oc * oh * ow,), "float32", data=y.data)
        for bo in T.parallel(n * oc):
            xs = T.alloc_buffer((wsl,), "float32", scope="global")
            off = T.alloc_buffer((tab,), "int32", scope="global")
            wv = T.alloc_buffer((tab,), "float32", scope="global")
            acc = T.alloc_buffer((2, ch), "float32", scope="global")
            out = T.alloc_buffer((nout,), "float32", scope="global")
            run = T.alloc_buffer((1,), "int32", scope="global")
            b = T.bind(bo // oc)
            o = T.bind(bo % oc)
            lo = T.bind(rowptr[o])
            nr = T.bind(rowptr[o + 1] - lo)
            for ic in T.serial(icg):
                fill_channel(x, xs, ic * nph * pl, b, o // ocg * icg + ic)
            for i in T.serial(wsl - body):
                xs[body + i] = T.float32(0)
            run[0] = -1
            for t in T.serial(nr):
                tap(col, code, codebook, o // rpg * k, lo + t, run, wv, t)
                cc = T.bind(run[0])
                ry = T.bind(T.truncdiv(T.truncmod(cc, kk), kw) * dh)
                rx = T.bind(T.truncmod(cc, kw) * dw)
                off[t] = ((T.truncdiv(cc, kk) * nph + ry % sh * sw + rx % sw) * pl + ry // sh * wq + rx // sw)
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


def sparse_conv2d_chunk(g: ConvGeom, nnz: int, k: int, col_dtype: str, code_dtype: str, relu: bool, name: str,
                        nacc: int = 2, packed: tuple[int, int] | None = None, cb_groups: int = 1):
    """``chunk`` schedule of the direct sparse convolution (signature of :func:`.conv_kernels.sparse_conv2d_func`).

    One parallel pass decodes all non-zeros into global (offset, weight) tables; then, parallel over (image,
    ``g.chunk``-float spatial chunk), every output channel sweeps its table into ``nacc`` independent
    register accumulator sets, so the chunk's input rows stay in cache across all output channels. Output
    goes straight into ``y`` when the workspace row pitch equals ``ow`` (``padding_w == 0``, 1-wide kernels),
    else through a padded-pitch staging buffer. ``nnz`` = length of ``col``/``code`` (>= 1). ``packed``: as in
    :func:`sparse_conv2d_plane`.
    """
    from tvm.script import tirx as T

    n, c, h, w, oc, oh, ow = g.n, g.c, g.h, g.w, g.oc, g.oh, g.ow
    kh, kw, sh, sw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.dh, g.dw
    wq, pl, nph, icg, ocg = g.wq, g.plane, g.nphase, g.icg, g.ocg
    kk = kh * kw
    nnz = max(int(nnz), 1)
    ch, nch = g.chunk, g.nch
    ws = g.ws_size
    fill = fill_workspace_macro(g)
    direct = wq == ow  # the padded-pitch plane is y's own layout: chunks go straight into y
    ohw = oh * ow
    nfull = ohw // ch
    nstage = 1 if direct else n * oc * nch * ch
    img = c * nph * pl
    tap = tap_macro(k, packed)
    ncb = cb_groups * k
    rpg = oc // cb_groups

    @T.prim_func
    def kernel(x: T.Buffer((n, c, h, w), "float32"), rowptr: T.Buffer((oc + 1,), "int32"),
               col: T.Buffer((nnz,), col_dtype), code: T.Buffer((nnz,), code_dtype),
               codebook: T.Buffer((ncb,), "float32"), bias: T.Buffer((oc,), "float32"),
               y: T.Buffer((n, oc, oh, ow), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        yf = T.decl_buffer((n * oc * oh * ow,), "float32", data=y.data)
        xs = T.alloc_buffer((ws,), "float32", scope="global")
        toff = T.alloc_buffer((nnz,), "int32", scope="global")
        tw = T.alloc_buffer((nnz,), "float32", scope="global")
        stage = T.alloc_buffer((nstage,), "float32", scope="global")
        fill(x, xs)
        for o in T.parallel(oc):
            run = T.alloc_buffer((1,), "int32", scope="global")
            run[0] = -1
            for j in T.serial(rowptr[o], rowptr[o + 1]):
                tap(col, code, codebook, o // rpg * k, j, run, tw, j)
                cc = T.bind(run[0])
                ry = T.bind(T.truncdiv(T.truncmod(cc, kk), kw) * dh)
                rx = T.bind(T.truncmod(cc, kw) * dw)
                toff[j] = ((o // ocg * icg + T.truncdiv(cc, kk)) * nph + ry % sh * sw + rx % sw) * pl \
                    + ry // sh * wq + rx // sw
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


def tile_store_macros(g: ConvGeom, relu: bool | str, ob: int):
    """``(store, flush)`` TVMScript macros of the ``ob x chunk`` register-tile kernels (dense and dense-code
    conv): ``store(yf, out, acc, b, o0, q)`` writes chunk ``q`` of output channels ``o0 .. o0+ob-1`` of image
    ``b`` with the activation (straight into ``y``'s flat view ``yf`` when the workspace rows have no padding
    columns, else into the task-local ``out`` rows); ``flush(y, out, b, o0)`` then copies ``out`` into ``y``
    without the padding columns (a no-op in the direct case)."""
    from tvm.script import tirx as T

    oc, oh, ow, wq, ch = g.oc, g.oh, g.ow, g.wq, g.chunk
    direct = wq == ow
    ohw = oh * ow
    nfull = ohw // ch

    @T.macro
    def store(yf, out, acc, b, o0, q):
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

    @T.macro
    def flush(y, out, b, o0):
        if not direct:
            for u in T.serial(ob):
                for oy in T.serial(oh):
                    for ox in T.serial(ow):
                        y[b, o0 + u, oy, ox] = _act(out[u, oy * wq + ox], relu)

    return store, flush


def dense_conv2d_cpu(g: ConvGeom, relu: bool, name: str, ob: int):
    """Dense direct convolution ``name(x, weight, bias, y)`` over the same workspace: parallel over (image,
    block of ``ob`` output channels of one group, ``ob`` dividing ``oc/groups``); per ``g.chunk``-float chunk
    an ``ob x chunk`` register tile, each loaded input vector feeding ``ob`` FMAs."""
    from tvm.script import tirx as T

    n, c, h, w, oc, oh, ow = g.n, g.c, g.h, g.w, g.oc, g.oh, g.ow
    kh, kw, sh, sw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.dh, g.dw
    wq, pl, nph, icg, ocg = g.wq, g.plane, g.nphase, g.icg, g.ocg
    ch, nch = g.chunk, g.nch
    ws = g.ws_size
    fill = fill_workspace_macro(g)
    store, flush = tile_store_macros(g, relu, ob)
    nob = oc // ob
    nout = 1 if wq == ow else nch * ch

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
                store(yf, out, acc, b, o0, q)
            flush(y, out, b, o0)

    return kernel
