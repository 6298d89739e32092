"""Geometry shared by dccomp's TVM convolution kernels (:mod:`.conv_kernels`): output shapes, the padded,
stride-decomposed input workspace, and the register tiles per CPU instruction set. Importing this module does
not import TVM."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["conv2d_out_shape", "ConvGeom", "conv_geom", "CpuTiles", "cpu_tiles", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 32


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


@dataclass(frozen=True)
class ConvGeom:
    """Shapes of one conv layer and of its workspace ``xs[n, c, sh, sw, hq, wq]`` (the zero-padded input split
    into its ``sh * sw`` stride phases, see :mod:`.conv_kernels`), plus the register ``chunk`` (floats) the
    CPU kernels sweep the padded-pitch output plane ``oh x wq`` with. Build it with :func:`conv_geom`."""

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
        """Floats of the workspace (at least one slack float, so the buffer is never empty)."""
        return self.n * self.c * self.nphase * self.plane + max(self.slack, 1)


def conv_geom(n: int, c: int, h: int, w: int, oc: int, kh: int, kw: int, stride, padding, dilation,
              groups: int, chunk: int = DEFAULT_CHUNK) -> ConvGeom:
    """The :class:`ConvGeom` of a layer (``stride``/``padding``/``dilation``: int or ``(y, x)`` pair).

    Raises:
        ValueError: non-positive sizes, ``groups`` not dividing ``c`` and ``oc``, a kernel that does not fit
            the padded input, or a workspace / output too large for the kernels' int32 indexing.
    """
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
    g = ConvGeom(n, c, h, w, oc, kh, kw, sh, sw, ph, pw, dh, dw, groups, oh, ow, hq, wq, chunk, nch, slack)
    biggest = max(g.ws_size, n * oc * nch * chunk, n * oc * oh * ow)
    if biggest >= 2**31:
        raise ValueError(f"conv2d workspace/output of {biggest} floats exceeds int32 indexing; "
                         f"split the batch (n={n}) into smaller ones")
    return g


@dataclass(frozen=True)
class CpuTiles:
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

    def sparse_chunk(self, g: ConvGeom) -> int:
        """4 vectors per accumulator set (less offset-table traffic per FMA) unless padding the plane to a
        multiple of that wastes over 1/16 more lanes than padding it to 2 vectors (small planes)."""
        big, small = 4 * self.lanes, 2 * self.lanes
        p = g.oh * g.wq
        return big if -(-p // big) * big <= -(-p // small) * small * 17 // 16 else small


def cpu_tiles(target) -> CpuTiles:
    """AVX-512: 16 lanes, 32 registers; AVX2: 8 lanes, 16; aarch64 NEON: 4 lanes, 32; otherwise (generic
    x86-64 = SSE2) 4 lanes, 16."""
    import tvm
    from tvm.target import codegen

    from .targets import resolve_target

    t = resolve_target(target)
    if str(t.get("mtriple", "")).startswith(("aarch64", "arm64")):
        return CpuTiles(4, 32)
    tt = tvm.target.Target(t)
    if codegen.target_has_features("avx512f", tt):
        return CpuTiles(16, 32)
    if codegen.target_has_features("avx2", tt):
        return CpuTiles(8, 16)
    return CpuTiles(4, 16)
