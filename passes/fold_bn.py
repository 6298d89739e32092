"""``fold-bn``: fold inference-mode BatchNorm into the preceding Conv / ConvTranspose / Linear.

BatchNorm in inference uses its running statistics, so it is a per-channel affine map
``y = (x - mean) * gamma / sqrt(var + eps) + beta``. Following a layer ``x = W * u + b`` whose output channel
``o`` is BatchNorm's channel ``o``, it folds exactly into that layer (Jacob et al., CVPR 2018, §3.2;
the standard "BN folding" of inference compilers)::

    s_o = gamma_o / sqrt(var_o + eps)      W'_o = s_o * W_o      b'_o = s_o * (b_o - mean_o) + beta_o
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from dccomp.errors import PassError
from dccomp.ir import IR, State
from dccomp.pass_infra import Pass, PassContext, PassResult
from dccomp.trace import build_ir

__all__ = ["FoldBN", "fold_bn_into", "bn_scale_shift"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference-mode BatchNorm as ``y = x * scale + shift`` per channel.

    Returns:
        ``(scale, shift)``, float64 tensors of shape ``(num_features,)``.

    Raises:
        ValueError: the BatchNorm keeps no running statistics (``track_running_stats=False``): it always
            normalizes with batch statistics and is not a fixed affine map.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) normalizes with the "
                         "statistics of each batch, so it cannot be folded")
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def fold_bn_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` into ``layer`` in place (weights rescaled per output channel; a bias created if absent).

    ``layer`` is a ``Conv1d/2d/3d`` (any ``groups``: grouped and depthwise convolutions scale output channel
    ``o`` = weight row ``o``), a ``ConvTranspose1d/2d/3d`` (weight ``(in, out/groups, *k)``: output channel
    ``g * out/groups + j`` is ``weight[g-th block of in, j]``) or a ``Linear`` (row ``o``). Arithmetic is done in
    float64 and rounded once to the weight's dtype.

    Raises:
        ValueError: channel counts differ, or ``bn`` has no running statistics.
        TypeError: ``layer`` is none of the supported types.
    """
    if not isinstance(layer, (*_CONV, *_CONVT, nn.Linear)):
        raise TypeError(f"cannot fold BatchNorm into {type(layer).__name__}; supported: Conv1d/2d/3d, "
                        "ConvTranspose1d/2d/3d, Linear")
    scale, shift = bn_scale_shift(bn)
    w = layer.weight.detach()
    if isinstance(layer, _CONVT):
        g = layer.groups
        out_per_group = w.shape[1]
        n_out = g * out_per_group
        new_w = None
        if n_out == scale.numel():
            view = w.double().reshape(g, w.shape[0] // g, out_per_group, *w.shape[2:])
            new_w = view * scale.reshape(g, 1, out_per_group, *([1] * (w.dim() - 2)))
    else:
        n_out = w.shape[0]
        new_w = w.double() * scale.reshape(-1, *([1] * (w.dim() - 1))) if n_out == scale.numel() else None
    if new_w is None:
        raise ValueError(f"{type(layer).__name__} has {n_out} output channels but the BatchNorm has "
                         f"{scale.numel()} features")
    old_b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(n_out, dtype=torch.float64)
    new_b = old_b * scale + shift
    with torch.no_grad():
        layer.weight.copy_(new_w.reshape(w.shape).to(w.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(new_b.to(w.dtype), requires_grad=layer.weight.requires_grad)
        else:
            layer.bias.copy_(new_b.to(layer.bias.dtype))


def _channel_dim_ok(producer: fx.Node, layer: nn.Module) -> str | None:
    """Why a Linear's output features may not be BatchNorm's channel dim (1), or None. BatchNorm1d normalizes
    dim 1; a Linear's features are its last dim; they coincide only for 2-D outputs."""
    if not isinstance(layer, nn.Linear):
        return None
    meta = producer.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return "the Linear's output shape is unknown (trace with example_inputs to fold Linear + BatchNorm1d)"
    if len(meta.shape) != 2:
        return f"the Linear's output is {len(meta.shape)}-D, so BatchNorm1d does not normalize its features"
    return None


@dataclass(frozen=True)
class FoldBN(Pass):
    """Fold every foldable inference-mode BatchNorm into the layer that produces its input.

    A ``BatchNorm1d/2d/3d`` module call is folded when its input is a ``Conv*``, ``ConvTranspose*`` or
    ``Linear`` module call whose only user is that BatchNorm, the layer's weight is not shared with another op,
    and the BatchNorm has running statistics. The BatchNorm node and module are removed, the layer gets the
    folded weight and bias, and the IR is rebuilt from the rewritten graph (weights keep their state).
    The folded graph computes what the original computes in ``eval()`` mode (up to float rounding: float64
    arithmetic, one rounding to float32), so run it before training-mode uses such as ``retrain`` if BatchNorm
    statistics should stay frozen, and on a model whose BatchNorm statistics are final.

    Contract: needs every folded layer's weight ``dense`` or ``masked`` (a per-channel rescaling keeps
    pruned entries exactly zero); refuses clustered or coded weights (rescaling would break weight sharing:
    run ``fold-bn`` before ``cluster``). Records ``folded`` (``[[layer, batchnorm], ...]``) and ``kept``
    (``{batchnorm: reason}``).
    """

    name = "fold-bn"
    requires = State.DENSE

    def run(self, ir: IR, ctx: PassContext) -> PassResult:
        gm = ir.gm
        modules = dict(gm.named_modules())
        params = dict(gm.named_parameters(remove_duplicate=False))
        owners: dict[int, int] = {}
        for p in params.values():
            owners[id(p)] = owners.get(id(p), 0) + 1
        shared = {n for n, p in params.items() if owners[id(p)] > 1}
        calls: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                calls[str(n.target)] = calls.get(str(n.target), 0) + 1
        folded: list[list[str]] = []
        kept: dict[str, str] = {}
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
                continue
            bn = modules[node.target]
            src = node.args[0] if node.args else None
            layer = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
            why = None
            if not isinstance(layer, (*_CONV, *_CONVT, nn.Linear)):
                why = "its input is not a Conv, ConvTranspose or Linear module call"
            elif len(node.args) != 1 or node.kwargs:
                why = "it is called with extra arguments"
            elif len(src.users) != 1:
                why = f"the output of {src.target!r} has other users besides the BatchNorm"
            elif calls[str(src.target)] > 1:
                why = f"{src.target!r} is called more than once (folding would change its other calls)"
            elif f"{src.target}.weight" in shared:
                why = f"the weight of {src.target!r} is shared with another layer"
            elif bn.running_mean is None:
                why = "it keeps no running statistics (track_running_stats=False)"
            else:
                why = _channel_dim_ok(src, layer)
            if why is None:
                w = ir.weights.get(f"{src.target}.weight")
                if w is not None and w.state >= State.CLUSTERED:
                    raise PassError(
                        f"fold-bn would rescale {w.name!r}, which is already {w.state}: folding BatchNorm "
                        "multiplies each output channel by its own factor, which breaks shared centroids. "
                        "Put fold-bn before cluster (e.g. 'fold-bn,prune{...},cluster{...}').")
                try:
                    fold_bn_into(layer, bn)
                except ValueError as e:
                    why = str(e)
            if why is not None:
                kept[str(node.target)] = why
                continue
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            folded.append([str(src.target), str(node.target)])
        if not folded:
            ctx.record(folded=[], kept=kept)
            return PassResult(ir, False)
        for _, bn_name in folded:
            if not any(n.op == "call_module" and n.target == bn_name for n in gm.graph.nodes):
                gm.delete_submodule(bn_name)
        gm.graph.lint()
        gm.recompile()
        new = build_ir(gm, ir.name)
        for name, w in new.weights.items():  # keep the states (masks) and user choices of existing weights
            old = ir.weights.get(name)
            if old is not None:
                w.mask, w.codebook, w.indices = old.mask, old.codebook, old.indices
                w.bits, w.coded = old.bits, old.coded
        new.skipped = {k: v for k, v in ir.skipped.items() if k in dict(gm.named_parameters())}
        new.input_shapes = ir.input_shapes
        new.capture, new.unused = ir.capture, ir.unused
        # recorded in the file: dccomp.load(path, model=M()) folds the same BatchNorms of M before loading
        new.folded = {**ir.folded, **{bn_name: layer_name for layer_name, bn_name in folded}}
        ctx.record(folded=folded, kept=kept)
        return PassResult(new, True)
