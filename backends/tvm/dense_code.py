"""Dense-code layout: every weight (pruned ones too) as a 4- or 8-bit cluster index into a codebook, and the CPU
kernels (conv2d, linear) that compute on it directly.

Deep Compression's quantisation stage alone (no pruning, or moderate pruning) leaves a weight as ``k`` shared
centroids plus one ``log2(k)``-bit cluster index per weight (Han et al., ICLR 2016, §3). Stored densely, that is
``bits = ceil(log2(kc))`` (1..8) bits per weight instead of 32, with no column indices: the smallest layout once
a layer is denser than about 1/3 (CSR costs ~3 B per non-zero, the packed relative-index layout ~1 B). A pruned
weight is a code whose centroid is exactly 0 (the codebook's own 0 entry, or an appended one)::

    codes     uint8 (ceil(rows * cols * bits / 8),)  flat row-major codes as an LSB-first bit stream: element e
                                                    holds bits [e*bits, (e+1)*bits) (no row padding); 8-bit: one
                                                    byte each; 4-bit: two per byte, low nibble first
    codebook  float32 (G, kc)                       G codebooks (G divides rows; row r uses codebook r // (rows/G))

The conv kernel decodes 8-bit codes with one vector byte load, 4-bit codes byte-wise (one byte, two codes, into
a table split by element parity) and other widths by groups of 8 codes (``bits`` bytes; the table split by
element index mod 8) when the block's range is whole groups; elsewhere (and in the linear kernel) codes of
other widths are read as 32-bit words (a code straddles at most two; the stream is padded to whole words plus
one, at most 7 bytes).

The kernels never hold the decoded float32 weight in the artifact: the conv kernel decodes the ``ob`` rows of its
output-channel block (one byte load + one table lookup per weight) into a small task-local table once per call
and then runs the register-blocked direct convolution of :func:`.conv_cpu.dense_conv2d_cpu` from it, so the
decode is amortised over every output pixel of the plane; the linear kernel decodes one row at a time and reuses
it for every input of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .conv_cpu import fill_workspace_macro, tile_store_macros
from .conv_geom import ConvGeom
from .kernels import CodebookShape, _act

__all__ = ["DenseCodes", "dense_code_conv2d_cpu", "dense_code_linear_cpu", "dense_code_conv2d_func",
           "dense_code_linear_func", "decode_codebook"]


def decode_codebook(codebook: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """:func:`dccomp.ir.decode_codebook` on numpy arrays: float32 ``codebook[row_group, indices]`` for a ``(k,)``
    or ``(G, k)`` codebook.

    Raises:
        ValueError: a codebook that is not 1-D/2-D or whose G does not divide ``indices.shape[0]``.
    """
    import torch

    from dccomp.ir import decode_codebook as decode

    cb = torch.from_numpy(np.ascontiguousarray(codebook, np.float32))
    return decode(cb, torch.from_numpy(np.asarray(indices).astype(np.int64))).numpy()


@dataclass
class DenseCodes(CodebookShape):
    """A ``rows x cols`` weight matrix in the dense-code layout (see the module docstring)."""

    codes: np.ndarray     # uint8 (ceil(rows * cols * bits / 8),)
    codebook: np.ndarray  # float32 (G, kc)
    bits: int             # 1..8
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays as stored (codes + codebook)."""
        return int(self.codes.nbytes + self.codebook.nbytes)

    def arrays(self) -> list[np.ndarray]:
        """The kernel's weight arguments in order: codes, flat codebook ``(G * kc,)``."""
        return [self.codes, np.ascontiguousarray(self.codebook.reshape(-1))]

    @staticmethod
    def nbytes_for(rows: int, cols: int, k: int, groups: int, pruned: bool, zero_in_codebook: bool) -> int | None:
        """Bytes :meth:`from_codebook` would give (``None`` if more than 256 codes are needed), without building."""
        kc = k + (1 if pruned and not zero_in_codebook else 0)
        if kc > 256:
            return None
        return _stream_nbytes(rows * cols, _bits_for(kc)) + 4 * groups * kc

    @classmethod
    def from_codebook(cls, indices: np.ndarray, codebook: np.ndarray, mask: np.ndarray | None = None,
                      bits: int | None = None) -> "DenseCodes | None":
        """From cluster indices (``rows x ...``, flattened to ``rows x cols``), a ``(k,)`` or ``(G, k)`` codebook
        and an optional mask (``True`` = kept). Masked positions get the code of a 0 centroid: a row's own exact
        0 entry when every codebook that serves pruned weights has one, else a 0 column appended to every
        codebook. ``bits``: 1..8; default the fewest that hold the codes, ``ceil(log2(kc))``.

        Returns ``None`` when the codes do not fit (more than 256, or more than ``2**bits``).

        Raises:
            ValueError: bad ``bits``, a codebook that does not fit the indices, or a mask of another shape.
        """
        idx = np.asarray(indices).astype(np.int64)
        rows = idx.shape[0]
        idx = idx.reshape(rows, -1)
        cb = np.asarray(codebook, np.float32)
        cb = cb.reshape(1, -1) if cb.ndim == 1 else cb
        if cb.ndim != 2 or rows % cb.shape[0]:
            raise ValueError(f"codebook of shape {tuple(cb.shape)} does not fit {rows} rows: expected (k,) or "
                             "(G, k) with G dividing the rows")
        if bits is not None and bits not in range(1, 9):
            raise ValueError(f"dense-code bits must be 1..8, got {bits}")
        g, k = cb.shape
        s = rows // g
        grp = np.arange(rows) // s
        if mask is not None:
            mask = np.asarray(mask, bool)
            if mask.size != idx.size:
                raise ValueError(f"mask of {mask.size} elements for indices of {idx.size}")
            pruned = ~mask.reshape(rows, -1)
            if pruned.any():
                rows_pruned = np.unique(grp[pruned.any(axis=1)])
                has0 = (cb == 0)
                if all(has0[r].any() for r in rows_pruned):
                    zero = np.argmax(has0, axis=1)  # first 0 entry of each codebook
                    idx = np.where(pruned, zero[grp][:, None], idx)
                else:
                    cb = np.concatenate([cb, np.zeros((g, 1), np.float32)], axis=1)
                    idx = np.where(pruned, k, idx)
                    k += 1
        if k > 256 or (bits or 8) < _bits_for(k):
            return None
        bits = bits or _bits_for(k)
        codes = _pack(idx.reshape(-1), bits)
        return cls(np.ascontiguousarray(codes), np.ascontiguousarray(cb, np.float32), bits, (rows, idx.shape[1]))

    def to_dense(self) -> np.ndarray:
        """The decoded float32 matrix (reference decoder)."""
        rows, cols = self.shape
        return decode_codebook(self.codebook, _unpack(self.codes, self.bits, rows * cols).reshape(rows, cols))


def _bits_for(kc: int) -> int:
    """Fewest bits that hold ``kc`` codes (at least 1)."""
    return max(1, int(kc - 1).bit_length())


def _stream_nbytes(n: int, bits: int) -> int:
    """Bytes of the code stream of ``n`` codes: ``ceil(n * bits / 8)``, for widths other than 4 and 8 rounded
    up to whole 32-bit words plus one (the kernels read a code's two words)."""
    nb = -(-n * bits // 8)
    return nb if bits in (4, 8) else 4 * (-(-nb // 4) + 1)


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 LSB-first bit stream of ``codes`` (each < 2**bits), :func:`_stream_nbytes` bytes (zero padded)."""
    n = codes.size
    bitv = ((codes.astype(np.int64)[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    out = np.zeros(_stream_nbytes(n, bits), np.uint8)
    packed = np.packbits(bitv, bitorder="little")
    out[: packed.size] = packed
    return out


def _unpack(stream: np.ndarray, bits: int, n: int) -> np.ndarray:
    """The ``n`` codes of :func:`_pack`'s stream (int64)."""
    bitv = np.unpackbits(stream, bitorder="little")[: n * bits].reshape(n, bits).astype(np.int64)
    return (bitv << np.arange(bits)).sum(axis=1)


def _decode_macro(bits: int, k: int, rows_per_group: int):
    """TVMScript macro ``decode(codes, words, codebook, wl, dst, row, e)``: store the centroid of flat element
    ``e`` (of weight row ``row``, which picks the codebook) into ``wl[dst]``: one byte load (8-bit), a byte load
    and a nibble shift (4-bit), or two 32-bit word loads of the stream ``words`` and shifts (other widths); then
    one table lookup."""
    from tvm.script import tirx as T

    four, eight = bits == 4, bits == 8
    s = rows_per_group
    mask = (1 << bits) - 1

    @T.macro
    def decode(codes, words, codebook, wl, dst, row, e):
        if eight:
            wl[dst] = codebook[row // s * k + T.Cast("int32", codes[e])]
        elif four:
            byte = T.bind(T.Cast("int32", codes[T.shift_right(e, 1)]))
            wl[dst] = codebook[row // s * k + T.bitwise_and(T.shift_right(byte, T.bitwise_and(e, 1) * 4), 15)]
        else:
            lo = T.bind(e * bits)
            wi = T.bind(T.shift_right(lo, 5))
            sh = T.bind(T.Cast("uint32", T.bitwise_and(lo, 31)))
            v = T.bind(T.bitwise_or(T.shift_right(words[wi], sh),
                                    T.shift_left(T.shift_left(words[wi + 1], T.uint32(1)), T.uint32(31) - sh)))
            wl[dst] = codebook[row // s * k + T.Cast("int32", T.bitwise_and(v, T.uint32(mask)))]

    return decode


def _ncodes(rows: int, cols: int, bits: int) -> int:
    return max(1, _stream_nbytes(rows * cols, bits))


def dense_code_conv2d_cpu(g: ConvGeom, relu: bool | str, name: str, ob: int, k: int, cb_groups: int, bits: int):
    """Direct convolution on dense codes ``name(x, codes, codebook, bias, y)`` (CPU, ``llvm``).

    ``x`` float32 ``(n, c, h, w)``, ``codes`` uint8 (:class:`DenseCodes` of the ``(oc, c/groups*kh*kw)``
    matrix, ``bits`` 1..8), ``codebook`` float32 ``(cb_groups * k,)`` (flat ``(G, k)``), ``bias`` float32
    ``(oc,)``, ``y`` float32 ``(n, oc, oh, ow)``. Schedule of :func:`.conv_cpu.dense_conv2d_cpu`: the input goes
    once into the padded, stride-decomposed workspace; parallel over (image, block of ``ob`` output channels of
    one group); the block's ``ob`` weight rows are decoded once into a task-local float table, then every
    ``g.chunk``-float chunk of the plane is an ``ob x chunk`` register tile whose input vectors each feed ``ob``
    FMAs. ReLU/ReLU6 and bias fused.
    """
    from tvm.script import tirx as T

    n, c, h, w, oc, oh, ow = g.n, g.c, g.h, g.w, g.oc, g.oh, g.ow
    kh, kw, sh, sw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.dh, g.dw
    wq, pl, nph, icg, ocg = g.wq, g.plane, g.nphase, g.icg, g.ocg
    kk = icg * kh * kw
    ch, nch = g.chunk, g.nch
    ws = g.ws_size
    fill = fill_workspace_macro(g)
    store, flush = tile_store_macros(g, relu, ob)
    nob = oc // ob
    nout = 1 if wq == ow else nch * ch
    ncode = _ncodes(oc, kk, bits)
    ncb = cb_groups * k
    decode = _decode_macro(bits, k, oc // cb_groups)
    kvec = 16  # decode vector (a gather on AVX2/AVX-512)
    nwords = max(1, ncode // 4)
    nkv = kk // kvec
    # 4-bit codes whose block range starts on a byte (ob even or rows of even length): decode byte-wise (one
    # contiguous byte load, two lookups) into a split table, low nibbles (even elements) first, then high ones
    pairs = bits == 4 and (ob % 2 == 0 or kk % 2 == 0)
    octs = bits not in (4, 8) and (ob * kk) % 8 == 0
    ng = ob * kk // 8
    bmask = (1 << bits) - 1
    half = ob * kk // 2
    rpg = oc // cb_groups
    grouped = cb_groups > 1

    @T.prim_func
    def kernel(x: T.Buffer((n, c, h, w), "float32"), codes: T.Buffer((ncode,), "uint8"),
               codebook: T.Buffer((ncb,), "float32"), bias: T.Buffer((oc,), "float32"),
               y: T.Buffer((n, oc, oh, ow), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        yf = T.decl_buffer((n * oc * oh * ow,), "float32", data=y.data)
        words = T.decl_buffer((nwords,), "uint32", data=codes.data)
        xs = T.alloc_buffer((ws,), "float32", scope="global")
        fill(x, xs)
        for bo in T.parallel(n * nob):
            acc = T.alloc_buffer((ob, ch), "float32", scope="global")
            out = T.alloc_buffer((ob, nout), "float32", scope="global")
            wl = T.alloc_buffer((ob * kk,), "float32", scope="global")
            b = T.bind(bo // nob)
            o0 = T.bind(bo % nob * ob)
            gbase = T.bind((b * c + o0 // ocg * icg) * nph * pl)
            if pairs:
                for iq in T.serial(half // kvec):
                    for v in T.vectorized(kvec):
                        byte = T.bind(T.Cast("int32", codes[T.shift_right(o0 * kk, 1) + iq * kvec + v]))
                        cb0 = T.bind(T.if_then_else(grouped, (o0 + (iq * kvec + v) * 2 // kk) // rpg * k, 0))
                        cb1 = T.bind(T.if_then_else(grouped, (o0 + ((iq * kvec + v) * 2 + 1) // kk) // rpg * k, 0))
                        wl[iq * kvec + v] = codebook[cb0 + T.bitwise_and(byte, 15)]
                        wl[half + iq * kvec + v] = codebook[cb1 + T.shift_right(byte, 4)]
                for i in T.serial(half % kvec):
                    byte = T.bind(T.Cast("int32", codes[T.shift_right(o0 * kk, 1) + half // kvec * kvec + i]))
                    cb0 = T.bind(T.if_then_else(grouped, (o0 + (half // kvec * kvec + i) * 2 // kk) // rpg * k, 0))
                    cb1 = T.bind(T.if_then_else(grouped, (o0 + ((half // kvec * kvec + i) * 2 + 1) // kk) // rpg * k, 0))
                    wl[half // kvec * kvec + i] = codebook[cb0 + T.bitwise_and(byte, 15)]
                    wl[half + half // kvec * kvec + i] = codebook[cb1 + T.shift_right(byte, 4)]
            if octs:
                gb = T.bind(o0 * kk // 8 * bits)
                for j in T.unroll(8):
                    for gq in T.serial(ng // kvec):
                        for v in T.vectorized(kvec):
                            g8 = T.bind(gb + (gq * kvec + v) * bits + T.shift_right(j * bits, 3))
                            two = T.bind(T.Cast("int32", codes[g8]) + T.shift_left(
                                T.Cast("int32", codes[T.min(g8 + 1, ncode - 1)]), 8))
                            cbj = T.bind(T.if_then_else(grouped, (o0 + ((gq * kvec + v) * 8 + j) // kk) // rpg * k, 0))
                            wl[j * ng + gq * kvec + v] = codebook[cbj + T.bitwise_and(
                                T.shift_right(two, T.bitwise_and(j * bits, 7)), bmask)]
                    for i in T.serial(ng % kvec):
                        g8 = T.bind(gb + (ng // kvec * kvec + i) * bits + T.shift_right(j * bits, 3))
                        two = T.bind(T.Cast("int32", codes[g8]) + T.shift_left(
                            T.Cast("int32", codes[T.min(g8 + 1, ncode - 1)]), 8))
                        cbj = T.bind(T.if_then_else(grouped, (o0 + ((ng // kvec * kvec + i) * 8 + j) // kk) // rpg * k, 0))
                        wl[j * ng + ng // kvec * kvec + i] = codebook[cbj + T.bitwise_and(
                            T.shift_right(two, T.bitwise_and(j * bits, 7)), bmask)]
            for u in T.serial(0 if pairs or octs else ob):
                for tq in T.serial(nkv):
                    for v in T.vectorized(kvec):
                        decode(codes, words, codebook, wl, u * kk + tq * kvec + v, o0 + u,
                               (o0 + u) * kk + tq * kvec + v)
                for t in T.serial(kk - nkv * kvec):
                    decode(codes, words, codebook, wl, u * kk + nkv * kvec + t, o0 + u, (o0 + u) * kk + nkv * kvec + t)
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
                                tt = T.bind(u * kk + (ic * kh + r) * kw + s)
                                wt = T.bind(T.if_then_else(pairs, wl[T.bitwise_and(tt, 1) * half
                                                                     + T.shift_right(tt, 1)],
                                                           T.if_then_else(octs, wl[T.bitwise_and(tt, 7) * ng
                                                                                   + T.shift_right(tt, 3)],
                                                                          wl[tt])))
                                for v in T.vectorized(ch):
                                    acc[u, v] = acc[u, v] + wt * xs[base + v]
                store(yf, out, acc, b, o0, q)
            flush(y, out, b, o0)

    return kernel


def dense_code_linear_cpu(n_out: int, n_in: int, batch: int, k: int, cb_groups: int, bits: int, *,
                          relu: bool = False, name: str = "dcc_code_linear", block: int = 16, vec: int = 16):
    """Linear layer on dense codes ``name(x[batch, n_in], codes, codebook, bias[n_out], y[batch, n_out])``
    (CPU): ``y[b, i] = act(sum_j codebook[i // (n_out/G), code[i, j]] * x[b, j] + bias[i])``.

    Parallel over ``block``-row blocks; each row is decoded once (one byte load + one table lookup per
    weight, vectorised) into a task-local float row, then every batch input runs a ``vec``-wide vector dot
    product with it, a horizontal sum and a scalar tail for ``n_in % vec``.
    """
    from tvm.script import tirx as T

    nblk = (n_out + block - 1) // block
    nv = n_in // vec
    tail0 = nv * vec
    ntail = n_in - tail0
    ncode = _ncodes(n_out, n_in, bits)
    nwords = max(1, ncode // 4)
    ncb = cb_groups * k
    decode = _decode_macro(bits, k, n_out // cb_groups)

    @T.prim_func
    def kernel(x: T.Buffer((batch, n_in), "float32"), codes: T.Buffer((ncode,), "uint8"),
               codebook: T.Buffer((ncb,), "float32"), bias: T.Buffer((n_out,), "float32"),
               y: T.Buffer((batch, n_out), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "op_pattern": 8})
        words = T.decl_buffer((nwords,), "uint32", data=codes.data)
        for blk in T.parallel(nblk):
            wl = T.alloc_buffer((n_in,), "float32", scope="global")
            acc = T.alloc_buffer((vec,), "float32", scope="global")
            tl = T.alloc_buffer((1,), "float32", scope="global")
            for ii in T.serial(T.min(block, n_out - blk * block)):
                i = T.bind(blk * block + ii)
                for jo in T.serial(nv):
                    for v in T.vectorized(vec):
                        decode(codes, words, codebook, wl, jo * vec + v, i, i * n_in + jo * vec + v)
                for r in T.serial(ntail):
                    decode(codes, words, codebook, wl, tail0 + r, i, i * n_in + tail0 + r)
                for bb in T.serial(batch):
                    for v in T.vectorized(vec):
                        acc[v] = T.float32(0)
                    tl[0] = T.float32(0)
                    for jo in T.serial(nv):
                        for v in T.vectorized(vec):
                            acc[v] = acc[v] + wl[jo * vec + v] * x[bb, jo * vec + v]
                    for r in T.serial(ntail):
                        tl[0] = tl[0] + wl[tail0 + r] * x[bb, tail0 + r]
                    for v in T.serial(vec):
                        tl[0] = tl[0] + acc[v]
                    y[bb, i] = _act(tl[0] + bias[i], relu)

    return kernel


def dense_code_conv2d_func(target: dict, *, n: int, c: int, h: int, w: int, oc: int, kh: int, kw: int,
                           stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1, k: int,
                           cb_groups: int = 1, bits: int = 8, relu: bool | str = False,
                           name: str = "dcc_code_conv2d"):
    """The dense-code conv PrimFunc ``name(x, codes, codebook, bias, y)`` for a CPU ``target``
    (:func:`dense_code_conv2d_cpu`; register tile of the target's ISA, ``ob`` = 4, 2 or 1 output channels).

    Raises:
        ValueError: inconsistent shapes, ``bits`` not in 1..8, ``k`` out of range for ``bits``, or ``cb_groups`` not
            dividing ``oc``.
        NotImplementedError: a GPU target (GPU targets use the CSR kernels).
    """
    from .conv_geom import conv_geom, cpu_tiles
    from .targets import target_kind

    if target_kind(target) != "llvm":
        raise NotImplementedError("the dense-code kernels are CPU (llvm) kernels; GPU targets use the CSR kernels")
    _check_code_args(oc, k, cb_groups, bits)
    g = conv_geom(n, c, h, w, oc, kh, kw, stride, padding, dilation, groups, cpu_tiles(target).dense_chunk)
    ob = next(b for b in (4, 2, 1) if g.ocg % b == 0)
    return dense_code_conv2d_cpu(g, relu, name, ob, k, cb_groups, bits)


def dense_code_linear_func(target: dict, n_out: int, n_in: int, batch: int, *, k: int, cb_groups: int = 1,
                           bits: int = 8, relu: bool = False, name: str = "dcc_code_linear"):
    """The dense-code linear PrimFunc (:func:`dense_code_linear_cpu`) for a CPU ``target``.

    Raises:
        ValueError / NotImplementedError: as :func:`dense_code_conv2d_func`.
    """
    from .targets import target_kind

    if target_kind(target) != "llvm":
        raise NotImplementedError("the dense-code kernels are CPU (llvm) kernels; GPU targets use the CSR kernels")
    _check_code_args(n_out, k, cb_groups, bits)
    return dense_code_linear_cpu(n_out, n_in, batch, k, cb_groups, bits, relu=relu, name=name)


def _check_code_args(rows: int, k: int, cb_groups: int, bits: int) -> None:
    if bits not in range(1, 9):
        raise ValueError(f"dense-code bits must be 1..8, got {bits}")
    if not 1 <= k <= (1 << bits):
        raise ValueError(f"k={k} centroids do not fit {bits}-bit codes (1 <= k <= {1 << bits})")
    if cb_groups < 1 or rows % cb_groups:
        raise ValueError(f"cb_groups={cb_groups} codebooks must divide the {rows} output rows")
