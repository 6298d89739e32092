"""Layer-input Hessians of a traced model on calibration inputs (for data-aware weight sharing, :mod:`dccomp.gptq`).

For a layer ``y = W x`` and the squared error of its output, ``sum ||(W - W_hat) x||^2`` over calibration inputs,
the Hessian with respect to each row of ``W`` is ``H = 2 sum x x^T`` (Frantar & Alistarh, *Optimal Brain
Compression*, NeurIPS 2022, Eq. 1; GPTQ, Frantar et al., ICLR 2023, §3). A convolution is the same problem on its
unfolded input patches (im2col): ``x`` runs over every output position of every calibration input, and a conv with
``groups`` > 1 has one Hessian per group (a depthwise 3x3 conv: one 9x9 Hessian per channel).

Supported ops (each weight read by exactly one op): ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` (any groups,
stride, padding -- ``"same"`` and non-zero padding modes included -- and dilation) called as modules, and
``F.linear`` / ``F.conv1d`` / ``F.conv2d`` / ``aten.linear`` / ``aten.conv1d`` / ``aten.conv2d`` /
``aten.convolution`` (not transposed) on the model's own parameter (torch.fx and torch.export graphs).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from .ir import IR

__all__ = ["LayerHessian", "input_hessians", "unsupported_reason"]

#: elements of unfolded patches handled at once (bounds the memory of one conv's im2col to ~256 MB of float32).
_CHUNK_ELEMENTS = 1 << 26

_LINEAR_FNS = {F.linear, torch.ops.aten.linear.default}
_CONV_FNS = {F.conv1d: 1, F.conv2d: 2, torch.ops.aten.conv1d.default: 1, torch.ops.aten.conv2d.default: 2}


@dataclass
class LayerHessian:
    """The accumulated ``sum x x^T`` of one weight's layer inputs.

    Attributes:
        h: float64 ``(G, D, D)``: one Hessian per conv group (``G = 1`` for Linear), ``D`` = inputs per output
            (``in_features``, or ``in_channels / groups * prod(kernel_size)``), in the order of the weight's
            flattened row ``weight.reshape(out, -1)``.
        rows: input vectors summed (calibration tokens or output positions).
    """

    h: torch.Tensor
    rows: int = 0


@dataclass
class _Site:
    weight: str
    kind: str  # "linear" or "conv"
    dims: int = 0  # conv spatial dims
    groups: int = 1


def _conv_site(weight: str, dims: int, groups: int) -> _Site:
    return _Site(weight, "conv", dims, groups)


def unsupported_reason(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """Why the input Hessian of the op ``node`` cannot be collected (a message), or ``None`` if it can."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv1d, nn.Conv2d)) and not isinstance(
                m, nn.modules.conv._ConvTransposeNd)):
            return None
        return f"its op is a {type(m).__name__}, not a Linear/Conv1d/Conv2d"
    if node.op == "call_function":
        if node.target in _LINEAR_FNS or node.target in _CONV_FNS:
            return None
        if node.target is torch.ops.aten.convolution.default:
            return "its op is a transposed convolution" if node.args[6] else None
        return f"its op is {getattr(node.target, '__name__', node.target)}, not a linear or convolution"
    return f"its op is a {node.op} node"


def _site(gm: fx.GraphModule, node: fx.Node, weight: str) -> _Site:
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        return _Site(weight, "linear") if isinstance(m, nn.Linear) else _conv_site(weight, m.weight.dim() - 2,
                                                                                     m.groups)
    if node.target in _LINEAR_FNS:
        return _Site(weight, "linear")
    return _conv_site(weight, 0, 1)  # functional conv: geometry read from the call's arguments


def _patches(x: torch.Tensor, kernel: tuple[int, ...], stride: Any, padding: Any, dilation: Any,
             dims: int) -> torch.Tensor:
    """im2col of ``x`` ``(N, C, *spatial)`` for a ``dims``-D conv: ``(N, C * prod(kernel), L)``."""
    def pair(v: Any) -> tuple[int, ...]:
        v = tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims
        return v * dims if len(v) == 1 else v
    stride, dilation = pair(stride), pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * dims
        else:  # "same" (stride 1): torch pads the extra element on the right
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            pads: list[int] = []
            for t in reversed(total):
                pads += [t // 2, t - t // 2]
            x = F.pad(x, pads)
            padding = (0,) * dims
    padding = pair(padding)
    if dims == 1:
        x, kernel, stride, padding, dilation = (x.unsqueeze(-2), (1, *kernel), (1, *stride), (0, *padding),
                                                (1, *dilation))
    return F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)


class _Recorder(fx.Interpreter):
    """Runs the graph and accumulates ``sum x x^T`` at the watched ops."""

    def __init__(self, gm: fx.GraphModule, sites: dict[str, _Site]):
        super().__init__(gm)
        self.sites = sites
        self.out: dict[str, LayerHessian] = {}

    def run_node(self, n: fx.Node) -> Any:
        site = self.sites.get(n.name)
        if site is not None:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            self._observe(n, site, args, kwargs)
        return super().run_node(n)

    def _observe(self, n: fx.Node, site: _Site, args: tuple, kwargs: dict) -> None:
        x = (args[0] if args else kwargs["input"]).detach().float()
        if site.kind == "linear":
            flat = x.reshape(-1, x.shape[-1])
            self._add(site.weight, (flat.T @ flat).unsqueeze(0), flat.shape[0])
            return
        if n.op == "call_module":
            m = self.module.get_submodule(str(n.target))
            if m.padding_mode != "zeros":
                x = F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
                padding: Any = 0
            else:
                padding = m.padding
            kernel, stride, dilation, groups, dims = (tuple(m.kernel_size), m.stride, m.dilation, m.groups,
                                                      site.dims)
        else:
            w = args[1]
            dims = w.dim() - 2
            if n.target is torch.ops.aten.convolution.default:
                stride, padding, dilation, groups = args[3], args[4], args[5], args[8]
            else:
                geo = list(args[3:7]) + [None] * (4 - len(args[3:7]))
                names = ("stride", "padding", "dilation", "groups")
                stride, padding, dilation, groups = (kwargs.get(k, v) for k, v in zip(names, geo))
                stride = 1 if stride is None else stride
                padding = 0 if padding is None else padding
                dilation = 1 if dilation is None else dilation
                groups = 1 if groups is None else groups
            kernel = tuple(w.shape[2:])
        if x.dim() == dims + 1:  # unbatched conv input
            x = x.unsqueeze(0)
        per_image = x[0].numel() * max(1, int(torch.tensor(kernel).prod()))
        step = max(1, _CHUNK_ELEMENTS // max(1, per_image))
        for i in range(0, x.shape[0], step):
            u = _patches(x[i:i + step], kernel, stride, padding, dilation, dims)  # (n, C*K, L)
            nb, ck, length = u.shape
            d = ck // groups
            u = u.reshape(nb, groups, d, length).permute(1, 2, 0, 3).reshape(groups, d, nb * length)
            self._add(site.weight, u @ u.transpose(1, 2), nb * length)

    def _add(self, weight: str, h: torch.Tensor, rows: int) -> None:
        acc = self.out.get(weight)
        if acc is None:
            self.out[weight] = LayerHessian(h.double(), rows)
        else:
            acc.h += h.double()
            acc.rows += rows


def input_hessians(ir: IR, weights: Iterable[str], batches: Iterable[Any]) -> dict[str, LayerHessian]:
    """Accumulate the layer-input Hessian of each weight in ``weights`` over ``batches`` (see the module doc).

    Args:
        ir: the traced model (run as it is, in its current mode, under ``torch.no_grad``).
        weights: names of weights whose single op :func:`unsupported_reason` accepts.
        batches: model inputs: tensors, or dicts of keyword inputs (``model(**batch)``).

    Returns:
        ``{weight name: LayerHessian}`` for every weight whose op ran at least once.

    Raises:
        ValueError: a weight is read by several ops or by an unsupported op (the message says which).
    """
    nodes = {n.name: n for n in ir.gm.graph.nodes}
    sites = {}
    for name in weights:
        users = ir.weights[name].users
        if len(users) != 1:
            raise ValueError(f"{name!r} is read by {len(users)} ops ({', '.join(users)}); a layer-input Hessian "
                             "needs exactly one")
        node = nodes[users[0]]
        reason = unsupported_reason(ir.gm, node)
        if reason:
            raise ValueError(f"{name!r}: {reason}")
        sites[node.name] = _site(ir.gm, node, name)
    rec = _Recorder(ir.gm, sites)
    signature = inspect.signature(ir.gm.forward)
    with torch.no_grad():
        for x in batches:
            if isinstance(x, Mapping):  # keyword inputs: bound to the graph's placeholders by name
                bound = signature.bind(**x)
                bound.apply_defaults()
                rec.run(*bound.args)
            else:
                rec.run(x)
    return rec.out
