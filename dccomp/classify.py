"""Which parameters are compressible weights, and of which layer kind.

A parameter is a compressible weight when the captured graph uses it as the weight of a linear, convolution,
embedding or recurrent op, either

- through its owning module: ``nn.Linear``/``nn.Conv*``/``nn.ConvTranspose*``/``nn.Embedding(Bag)`` ``weight``,
  ``nn.MultiheadAttention`` input projections (``in_proj_weight``, or ``q/k/v_proj_weight``; its ``out_proj`` is
  an ``nn.Linear``), ``nn.LSTM``/``nn.GRU``/``nn.RNN`` matrices (``weight_ih_l*``, ``weight_hh_l*``,
  ``weight_hr_l*``, ``_reverse`` included) and the ``*Cell`` variants (``weight_ih``, ``weight_hh``); these are
  found whether torch.fx keeps the module as one call (a leaf) or torch.export decomposes it into aten ops, or
- directly as the weight argument of a functional op on a parameter: ``F.linear``/``F.conv*``/``F.embedding``
  (torch.fx) or ``aten.linear``/``aten.conv*``/``aten.convolution``/``aten.embedding``/``aten.lstm``... (torch.export).

Kinds: ``linear``, ``conv1d/2d/3d``, ``conv_transpose1d/2d/3d``, ``embedding``, ``rnn``; grouped convolutions get
their own kinds, ``convNd.depthwise`` (groups == in_channels > 1) and ``convNd.grouped`` (1 < groups < in_channels),
so pass selectors (``layers={"conv2d.depthwise": ...}``) can treat them apart (``"conv2d.*"`` matches all three).
"""
from __future__ import annotations

import re
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["COMPRESSIBLE_MODULES", "LAYER_KINDS", "FC_KINDS", "conv_kind", "module_weight_kind", "op_weight_uses",
           "dense_reason"]

#: module class -> layer kind of its ``weight`` (grouped convolutions refined by :func:`conv_kind`).
COMPRESSIBLE_MODULES: dict[type, str] = {
    nn.Linear: "linear",
    nn.Conv1d: "conv1d",
    nn.Conv2d: "conv2d",
    nn.Conv3d: "conv3d",
    nn.ConvTranspose1d: "conv_transpose1d",
    nn.ConvTranspose2d: "conv_transpose2d",
    nn.ConvTranspose3d: "conv_transpose3d",
    nn.Embedding: "embedding",
    nn.EmbeddingBag: "embedding",
}

_CONVS = ("conv1d", "conv2d", "conv3d")

#: every layer kind a compressible weight can have.
LAYER_KINDS: frozenset[str] = frozenset(
    set(COMPRESSIBLE_MODULES.values()) | {"rnn"} | {f"{c}.{v}" for c in _CONVS for v in ("depthwise", "grouped")})

#: kinds whose weights are fully connected matrices (the paper's fc defaults: 5-bit indices and clusters).
FC_KINDS: frozenset[str] = frozenset({"linear", "rnn"})

_MHA_WEIGHTS = frozenset({"in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"})
_RNN_WEIGHT = re.compile(r"weight_(ih|hh|hr)_l\d+(_reverse)?")
_CELL_WEIGHT = re.compile(r"weight_(ih|hh)")
_NORM = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    _NORM = _NORM + (nn.RMSNorm,)


def conv_kind(base: str, groups: int, weight_shape: tuple[int, ...] | torch.Size) -> str:
    """``base`` refined by conv ``groups``: ``convNd.depthwise`` when groups == in_channels > 1 (weight shape
    ``(out, 1, k...)``), ``convNd.grouped`` when 1 < groups < in_channels, else ``base`` (also for non-convs and
    transposed convolutions)."""
    if base not in _CONVS or groups <= 1:
        return base
    return f"{base}.depthwise" if int(weight_shape[1]) == 1 else f"{base}.grouped"


def module_weight_kind(owner: nn.Module | None, local: str, p: torch.Tensor) -> str | None:
    """Layer kind of parameter ``local`` (its name inside ``owner``, the module that holds it), or ``None``."""
    if owner is None:
        return None
    if local == "weight":
        for cls, kind in COMPRESSIBLE_MODULES.items():
            if isinstance(owner, cls):
                return conv_kind(kind, int(getattr(owner, "groups", 1) or 1), p.shape)
    if isinstance(owner, nn.MultiheadAttention) and local in _MHA_WEIGHTS:
        return "linear"
    if isinstance(owner, nn.RNNBase) and _RNN_WEIGHT.fullmatch(local):
        return "rnn"
    if isinstance(owner, nn.RNNCellBase) and _CELL_WEIGHT.fullmatch(local):
        return "rnn"
    return None


def _aten(name: str, *overloads: str) -> list[Any]:
    packet = getattr(torch.ops.aten, name, None)
    return [getattr(packet, o) for o in overloads if packet is not None and o in packet.overloads()]


# op -> (kind, position of the weight argument, position of the ``groups`` argument or None)
_OPS: dict[Any, tuple[str, int, int | None]] = {
    F.linear: ("linear", 1, None),
    F.conv1d: ("conv1d", 1, 6), F.conv2d: ("conv2d", 1, 6), F.conv3d: ("conv3d", 1, 6),
    F.conv_transpose1d: ("conv_transpose1d", 1, 6), F.conv_transpose2d: ("conv_transpose2d", 1, 6),
    F.conv_transpose3d: ("conv_transpose3d", 1, 6),
    F.embedding: ("embedding", 1, None), F.embedding_bag: ("embedding", 1, None),
}
for _op in _aten("linear", "default"):
    _OPS[_op] = ("linear", 1, None)
for _c in _CONVS:
    for _op in _aten(_c, "default", "padding"):
        _OPS[_op] = (_c, 1, 6)
for _c, _o in (("conv_transpose1d", "default"), ("conv_transpose2d", "input"), ("conv_transpose3d", "input")):
    for _op in _aten(_c, _o):
        _OPS[_op] = (_c, 1, 6)
for _name, _o in (("embedding", "default"), ("embedding_bag", "default"), ("embedding_bag", "padding_idx"),
                  ("_embedding_bag", "default")):
    for _op in _aten(_name, _o):
        _OPS[_op] = ("embedding", 0, None)
_CONVOLUTION = set(_aten("convolution", "default"))
#: recurrent aten ops: their flat parameter list is argument 2 (weights and biases interleaved).
_RNN_OPS = set(_aten("lstm", "input") + _aten("gru", "input") + _aten("rnn_tanh", "input") + _aten("rnn_relu", "input"))


def _arg(node: fx.Node, pos: int, name: str, default: Any = None) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def op_weight_uses(node: fx.Node, shape_of: Callable[[fx.Node], tuple[int, ...] | None]
                   ) -> list[tuple[fx.Node, str, int]]:
    """``[(input node, kind, groups)]`` for each input that ``node`` (a ``call_function``) uses as a layer weight.

    ``shape_of(n)`` gives the shape of a parameter node (for ``aten.convolution``'s rank and depthwise tests).
    """
    if node.op != "call_function":
        return []
    target = node.target
    if target in _RNN_OPS:
        params = _arg(node, 2, "params", ())
        return [(p, "rnn", 1) for p in (params if isinstance(params, (list, tuple)) else ())
                if isinstance(p, fx.Node) and (shape_of(p) is not None and len(shape_of(p)) >= 2)]
    if target in _CONVOLUTION:
        w = _arg(node, 1, "weight")
        shape = shape_of(w) if isinstance(w, fx.Node) else None
        if shape is None:
            return []
        transposed, groups = bool(_arg(node, 6, "transposed", False)), int(_arg(node, 8, "groups", 1))
        nd = len(shape) - 2
        base = f"conv_transpose{nd}d" if transposed else f"conv{nd}d"
        return [(w, conv_kind(base, groups, shape), groups)]
    spec = _OPS.get(target)
    if spec is None:
        return []
    kind, pos, gpos = spec
    w = _arg(node, pos, "weight")
    if not isinstance(w, fx.Node):
        return []
    groups = int(_arg(node, gpos, "groups", 1)) if gpos is not None else 1
    shape = shape_of(w)
    return [(w, conv_kind(kind, groups, shape) if shape is not None else kind, groups)]


def dense_reason(local: str, owner: nn.Module | None, p: torch.Tensor, readers: list[str], weight_use: bool) -> str:
    """Why a parameter stays dense, stated from what the graph does with it.

    Args:
        local: the parameter's name inside its owner module; ``owner`` that module (``None`` if unknown);
        p: the parameter; ``readers``: targets of the ops that read it; ``weight_use``: whether some op uses it
            as a layer weight (then it is left dense only for its rank).
    """
    if weight_use:
        return f"{p.dim()}-d weight"
    if local.startswith("bias") or local.endswith("bias"):
        return "bias"
    if owner is not None and isinstance(owner, _NORM):
        return "normalization"
    if not readers:
        return "unused by the traced graph"
    return (f"read by {', '.join(sorted(set(readers)))}, not as the weight of a linear, convolution, embedding "
            "or recurrent layer")
