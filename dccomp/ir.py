"""dccomp's IR: a traced ``torch.fx`` graph whose compressible parameters carry a compression state.

The states follow Deep Compression (Han, Mao, Dally, ICLR 2016, Fig. 1)::

    dense -> masked (pruning mask) -> clustered (codebook + cluster indices) -> coded (entropy-coded streams)

A :class:`Weight` is one compressible parameter (``Linear``/``Conv*``/``ConvTranspose*``/``Embedding`` weights,
``MultiheadAttention`` projections, ``LSTM``/``GRU``/``RNN`` matrices; see :mod:`dccomp.classify`).
Its values live in the graph module's parameter (so training updates them in place); the state fields hold
the mask, codebook and cluster indices, and the coded streams. Parameters that stay dense (biases, BatchNorm)
are listed in :attr:`IR.dense`, with the reason.
"""
from __future__ import annotations

import copy
import enum
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import fx, nn

__all__ = ["State", "Weight", "Coded", "DenseParam", "Op", "IR", "keep_non_persistent", "decode_codebook",
           "codebook_rows"]


def codebook_rows(codebook: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The codebook row serving each dim-0 slice of a weight of ``shape``: int64 ``(shape[0],)``.

    A 1-D codebook ``(k,)`` serves every slice (all rows 0). A 2-D codebook ``(G, k)`` has one row per group of
    ``S = shape[0] // G`` consecutive dim-0 slices (output channels of Linear/Conv, input channels of
    ConvTranspose): slice ``i`` uses row ``i // S``.

    Raises:
        ValueError: the codebook is not 1-D or 2-D, or ``G`` does not divide ``shape[0]``.
    """
    n0 = int(shape[0]) if len(shape) else 1
    if codebook.dim() == 1:
        return torch.zeros(n0, dtype=torch.int64)
    if codebook.dim() != 2:
        raise ValueError(f"a codebook is 1-D (k,) or 2-D (G, k), got shape {tuple(codebook.shape)}")
    g = int(codebook.shape[0])
    if g < 1 or n0 % g or (n0 == 0 and g != 1):
        raise ValueError(f"a 2-D codebook of {g} rows must divide dim 0 of the weight (shape {tuple(shape)}) into "
                         f"equal groups; use G = a divisor of {n0}")
    return torch.arange(n0, dtype=torch.int64) // (n0 // g)


def decode_codebook(codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The weight values a codebook and its cluster indices stand for (Deep Compression §3, shared weights).

    Args:
        codebook: float tensor ``(k,)`` (one codebook for the tensor) or ``(G, k)`` (G codebooks, G dividing
            ``indices.shape[0]``; row ``g`` serves the dim-0 slices ``[g*S, (g+1)*S)``, ``S = shape[0] // G``).
        indices: int64 tensor of the weight's shape holding local cluster indices in ``[0, k)``.

    Returns:
        float32 tensor of ``indices``' shape: ``codebook[indices]`` or ``codebook[row_group, indices]``. Pruned
        positions are not zeroed here (apply the mask). An empty codebook (a layer with no surviving weight)
        decodes to zeros.

    Raises:
        ValueError: a codebook that is not 1-D/2-D or whose G does not divide dim 0. IndexError: an index >= k.
    """
    cb = codebook.float()
    if cb.numel() == 0:  # every weight pruned: nothing to look up
        return torch.zeros(indices.shape, dtype=torch.float32)
    if cb.dim() == 1:
        return cb[indices]
    rows = codebook_rows(cb, indices.shape)
    k = cb.shape[1]
    gid = rows.reshape((-1,) + (1,) * (indices.dim() - 1)) * k + indices
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= k):
        raise IndexError(f"cluster indices span [{int(indices.min())}, {int(indices.max())}], outside [0, {k})")
    return cb.reshape(-1)[gid]


def keep_non_persistent(src: nn.Module, dst: nn.Module) -> None:
    """Mark in ``dst`` (a deep copy of ``src``) the buffers that are non-persistent in ``src``: deep-copying an
    ``fx.GraphModule`` re-registers every copied buffer as persistent, which would put them in its state_dict
    (and the ``.dcc`` file) although the user's model has no such key."""
    mods = dict(dst.named_modules(remove_duplicate=False))
    for name, m in src.named_modules(remove_duplicate=False):
        if m._non_persistent_buffers_set and name in mods:
            mods[name]._non_persistent_buffers_set |= set(m._non_persistent_buffers_set)


class State(enum.IntEnum):
    """Compression state of a weight, ordered: each state implies the work of the ones before it may be done."""

    DENSE = 0
    MASKED = 1
    CLUSTERED = 2
    CODED = 3

    def __str__(self) -> str:  # "dense", "masked", ...
        return self.name.lower()


@dataclass
class Coded:
    """Entropy-coded form of one weight (Deep Compression §2 and §4).

    Attributes:
        coder: name of the entropy coder (``"huffman"`` or ``"ans"``).
        index_bits: width in bits of each relative index (gap) field; gaps larger than ``2**index_bits - 1``
            are split with filler zeros (paper Fig. 2).
        streams: named byte strings that together with ``meta`` decode back to the weight exactly.
        meta: JSON-serializable decoding parameters (symbol counts, code lengths, ...).
        n_fillers: number of filler zeros inserted.
    """

    coder: str
    index_bits: int
    streams: dict[str, bytes]
    meta: dict[str, Any] = field(default_factory=dict)
    n_fillers: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of all coded streams (the coded size of the weight, excluding the codebook)."""
        return sum(len(b) for b in self.streams.values())


@dataclass
class Weight:
    """One compressible parameter and its compression state.

    Attributes:
        name: qualified parameter name in the module, e.g. ``"fc1.weight"``.
        kind: layer kind: ``linear``, ``conv1d``, ``conv2d``, ``conv3d`` (``convNd.depthwise``/``convNd.grouped``
            for grouped convolutions), ``conv_transpose1d/2d/3d``, ``embedding``, ``rnn`` (LSTM/GRU/RNN matrices).
        users: names of the graph ops (fx node names) that read this weight; more than one means a tied weight.
        mask: ``torch.bool`` tensor of the weight's shape, ``True`` where the weight survives; ``None`` if unpruned.
        codebook: float32 tensor of shape ``(k,)`` (one codebook for the tensor, the paper's) or ``(G, k)`` (G
            codebooks, G dividing ``shape[0]``; row ``g`` serves the dim-0 slices ``[g*S, (g+1)*S)``,
            ``S = shape[0] // G``): the shared weights (centroids), ``None`` until clustered. In a 2-D codebook
            a row's unused entries are padded with its largest used centroid (every row finite).
        indices: int64 tensor of the weight's shape, the local cluster index in ``[0, k)`` of each weight (0 where
            masked out); ``None`` until clustered. Values: :func:`decode_codebook`.
        bits: bits per cluster index actually needed, ``max(1, ceil(log2(k')))`` for the k' centroids kept
            (<= the requested bits; the paper's P+Q weight bits).
        coded: the entropy-coded streams, ``None`` until coded.
        groups: conv groups (1 otherwise), kept for reports and kernels.
    """

    name: str
    kind: str
    users: list[str]
    mask: torch.Tensor | None = None
    codebook: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    bits: int | None = None
    coded: Coded | None = None
    groups: int = 1

    @property
    def state(self) -> State:
        """The furthest compression state reached."""
        if self.coded is not None:
            return State.CODED
        if self.codebook is not None:
            return State.CLUSTERED
        if self.mask is not None:
            return State.MASKED
        return State.DENSE

    @property
    def k(self) -> int | None:
        """Entries per codebook (``codebook.shape[-1]``), ``None`` until clustered."""
        return None if self.codebook is None else int(self.codebook.shape[-1])

    @property
    def n_codebooks(self) -> int | None:
        """Number of codebooks G (1 for a 1-D codebook), ``None`` until clustered."""
        return None if self.codebook is None else (int(self.codebook.shape[0]) if self.codebook.dim() == 2 else 1)


@dataclass
class DenseParam:
    """A parameter left dense (stored raw), with why: ``"bias"``, ``"normalization"``, ``"unused by the traced
    graph"``, ``"read by matmul, not as the weight of a ... layer"``, ``"1-d weight"`` (see
    :func:`dccomp.classify.dense_reason`)."""

    name: str
    reason: str


@dataclass
class Op:
    """One graph node in IR order: ``name`` (fx node name), ``opcode`` (fx op), ``target`` (printable),
    ``args`` (names of the input nodes), ``weights``/``params`` (qualified names of parameters it reads)."""

    name: str
    opcode: str
    target: str
    args: list[str]
    weights: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)


class IR:
    """A traced model plus the compression state of its parameters.

    Attributes:
        gm: the ``torch.fx.GraphModule``; its parameters hold the current weight values (float32).
        weights: compressible weights by qualified name, in layer (topological) order.
        dense: parameters stored raw, with the reason.
        ops: graph nodes in topological order (for the text form and the backends).
        name: model class name.
        skipped: ``{param_name: reason}`` for parameters a pass did not compress (shown in reports).
        input_shapes: shapes of the example inputs used for tracing (may be empty).
        capture: how the graph was captured: ``"fx"`` (torch.fx symbolic tracing) or ``"export"``
            (``torch.export``, an aten-level graph); shown in the text header when not ``"fx"``.
        folded: ``{BatchNorm module: the Conv/Linear module it was folded into}`` (the ``fold-bn`` pass).
        unused: ``{state_dict key: (tensor, "parameter" | "buffer")}`` for entries of the original model's
            ``state_dict`` that the traced graph never reads (``torch.fx`` drops them from ``gm``); saved raw so
            a ``.dcc`` file always holds the whole state dict.
    """

    def __init__(self, gm: fx.GraphModule, weights: dict[str, Weight], dense: list[DenseParam], ops: list[Op],
                 name: str, input_shapes: list[tuple[int, ...]] | None = None):
        self.gm = gm
        self.weights = weights
        self.dense = dense
        self.ops = ops
        self.name = name
        self.skipped: dict[str, str] = {}
        self.input_shapes = input_shapes or []
        self.capture = "fx"
        self.unused: dict[str, tuple[torch.Tensor, str]] = {}
        self.folded: dict[str, str] = {}

    # -- access ------------------------------------------------------------------------------------------
    def param(self, name: str) -> nn.Parameter:
        """The live parameter tensor named ``name`` (raises ``KeyError`` naming it if absent)."""
        params = dict(self.gm.named_parameters(remove_duplicate=False))
        if name not in params:
            raise KeyError(f"no parameter named {name!r} in the model")
        return params[name]

    def __iter__(self) -> Iterator[Weight]:
        return iter(self.weights.values())

    def min_state(self) -> State:
        """The least advanced state over all compressible weights (``DENSE`` if there are none)."""
        return min((w.state for w in self), default=State.DENSE)

    def clone(self) -> "IR":
        """A deep copy: passes run on a clone so a failed pass leaves the previous IR untouched."""
        with warnings.catch_warnings():  # torch's pytree specs of exported graphs warn when deep-copied
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            out = copy.deepcopy(self)
        keep_non_persistent(self.gm, out.gm)
        return out

    def dense_nbytes(self) -> int:
        """Bytes of all parameters as dense float32 (the reference size for compression ratios), including the
        parameters the forward pass never uses (:attr:`unused`, stored raw in the file)."""
        unused = sum(t.numel() * 4 for t, role in getattr(self, "unused", {}).values() if role == "parameter")
        return sum(p.numel() * 4 for p in self.gm.parameters()) + unused

    def __str__(self) -> str:
        from .text import ir_to_text

        return ir_to_text(self)

    __repr__ = __str__
