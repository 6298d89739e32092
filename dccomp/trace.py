"""Build dccomp's IR from a PyTorch model with ``torch.fx``.

Tracing works on a deep copy: the user's model is never modified. networkx holds the graph analyses (which
parameters feed which op, layer order, parameters shared by several ops).
"""
from __future__ import annotations

import contextlib
import copy
import io
import traceback
from typing import Any, Iterable, Sequence

import networkx as nx
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

from .errors import TracingError
from .ir import IR, DenseParam, Op, Weight

__all__ = ["trace", "COMPRESSIBLE_MODULES", "LAYER_KINDS"]

#: module class -> layer kind of its ``weight``.
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

#: every layer kind a compressible weight can have.
LAYER_KINDS: frozenset[str] = frozenset(COMPRESSIBLE_MODULES.values())

#: functional op -> (layer kind, position of the weight argument).
_FUNCTIONAL: dict[Any, tuple[str, int]] = {
    torch.nn.functional.linear: ("linear", 1),
    torch.nn.functional.conv1d: ("conv1d", 1),
    torch.nn.functional.conv2d: ("conv2d", 1),
    torch.nn.functional.conv3d: ("conv3d", 1),
    torch.nn.functional.conv_transpose2d: ("conv_transpose2d", 1),
    torch.nn.functional.embedding: ("embedding", 1),
}

_NORM = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

_WORKAROUNDS = (
    "Workarounds: pass concrete_args={name: value} to fix the input that decides it; list the submodule in "
    "leaf_modules=[...] so it is kept as one opaque call; or rewrite the branch without Python control flow "
    "on tensors (e.g. torch.where)."
)


class _Tracer(fx.Tracer):
    def __init__(self, leaf_modules: Sequence[type | str]):
        super().__init__()
        self._leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
        self._leaf_names = {m for m in leaf_modules if isinstance(m, str)}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self._leaf_names or (self._leaf_types and isinstance(m, self._leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)


def _refuse_hooks(model: nn.Module) -> None:
    for name, m in model.named_modules():
        label = name or type(model).__name__
        hooks = [h for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
                 if getattr(m, h, None)]
        if hooks:
            raise TracingError(
                f"module {label!r} ({type(m).__name__}) has {', '.join(h.strip('_') for h in hooks)} registered; "
                "torch.fx would silently drop them, so the compiled model would compute something else. "
                "Remove the hooks (handle.remove()) before compiling, or fold what they do into forward().")
        if parametrize.is_parametrized(m):
            raise TracingError(
                f"module {label!r} ({type(m).__name__}) has parametrizations "
                f"({', '.join(m.parametrizations.keys())}); dccomp compresses plain parameters. Bake them in "
                "first with torch.nn.utils.parametrize.remove_parametrizations(module, name).")


def _user_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        if "/torch/" not in fr.filename and not fr.filename.endswith("dccomp/trace.py"):
            return f"{fr.filename}:{fr.lineno}: {(fr.line or '').strip()}"
    return "unknown location"


def _symbolic_trace(model: nn.Module, concrete_args: dict | None, leaf_modules) -> fx.GraphModule:
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except (fx.proxy.TraceError, TypeError, RuntimeError, AssertionError, ValueError) as e:
        msg = str(e)
        where = _user_frame(e)
        if isinstance(e, fx.proxy.TraceError) or "symbolically traced variables" in msg or "Proxy" in msg:
            construct = "data-dependent control flow (an if/while/assert/bool() on a traced tensor or its shape)"
            raise TracingError(f"torch.fx cannot trace {type(model).__name__}: {construct} at {where}. "
                               f"{_WORKAROUNDS} (fx said: {msg})") from e
        raise TracingError(f"torch.fx failed to trace {type(model).__name__} at {where}: {msg}. "
                           f"{_WORKAROUNDS}") from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _target_str(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _kind_of(module: nn.Module) -> str | None:
    for cls, kind in COMPRESSIBLE_MODULES.items():
        if type(module) is cls or isinstance(module, cls):
            return kind
    return None


def build_ir(gm: fx.GraphModule, name: str) -> IR:
    """Classify every parameter of ``gm`` and record the ops in topological order.

    Returns an IR whose compressible weights are all dense. Tied parameters (one tensor under several names)
    become one :class:`~dccomp.ir.Weight` with several users; its name is the first qualified name.
    """
    canon: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for pname, p in gm.named_parameters(remove_duplicate=False):
        canon.setdefault(id(p), pname)
        aliases[pname] = canon[id(p)]

    g = nx.DiGraph()
    ops: list[Op] = []
    weights: dict[str, Weight] = {}
    kinds: dict[str, list[str]] = {}  # canonical param -> kinds of its weight uses, graph order
    reads: dict[str, list[str]] = {}  # canonical param -> ops reading it
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        op = Op(node.name, node.op, _target_str(node), [a.name for a in node.all_input_nodes])
        g.add_node(node.name)
        for a in node.all_input_nodes:
            g.add_edge(a.name, node.name)
        if node.op == "call_module":
            mod = modules[node.target]
            kind = _kind_of(mod)
            for local, p in mod.named_parameters(recurse=True, remove_duplicate=False):
                full = aliases[f"{node.target}.{local}"]
                reads.setdefault(full, []).append(node.name)
                if local == "weight" and kind is not None:
                    op.weights.append(full)
                    kinds.setdefault(full, []).append(kind)
                else:
                    op.params.append(full)
        elif node.op == "get_attr" and str(node.target) in aliases:
            full = aliases[str(node.target)]
            for user in node.users:
                reads.setdefault(full, []).append(user.name)
                spec = _FUNCTIONAL.get(user.target) if user.op == "call_function" else None
                if spec and len(user.args) > spec[1] and user.args[spec[1]] is node:
                    kinds.setdefault(full, []).append(spec[0])
        ops.append(op)
    # functional uses: attach weight names to their consuming op
    by_name = {o.name: o for o in ops}
    for full, ks in kinds.items():
        for user in reads[full]:
            if full not in by_name[user].weights and full not in by_name[user].params:
                by_name[user].weights.append(full)
    order = {n: i for i, n in enumerate(nx.topological_sort(g))}

    dense: list[DenseParam] = []
    for pname, p in gm.named_parameters():
        full = aliases[pname]
        users = sorted(set(reads.get(full, [])), key=lambda u: order.get(u, 0))
        ks = kinds.get(full, [])
        if ks and p.dim() >= 2:  # a tied weight takes the kind of its first use
            mod = modules.get(pname.rsplit(".", 1)[0]) if "." in pname else None
            weights[full] = Weight(full, ks[0], users, groups=int(getattr(mod, "groups", 1) or 1))
        else:
            owner = modules.get(pname.rsplit(".", 1)[0]) if "." in pname else gm
            if ks:
                reason = f"{p.dim()}-d weight"
            elif pname.endswith("bias"):
                reason = "bias"
            elif isinstance(owner, _NORM):
                reason = "normalization"
            elif not users:
                reason = "unused by the traced graph"
            else:
                reason = f"not a weight of a supported layer ({type(owner).__name__})"
            dense.append(DenseParam(full, reason))
    ordered = dict(sorted(weights.items(), key=lambda kv: min((order.get(u, 0) for u in kv[1].users), default=0)))
    return IR(gm, ordered, dense, ops, name)


def trace(model: nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None, *,
          concrete_args: dict[str, Any] | None = None,
          leaf_modules: Iterable[type | str] = ()) -> IR:
    """Trace ``model`` (a deep copy of it) into dccomp's IR.

    Args:
        model: any ``nn.Module`` that ``torch.fx`` can trace symbolically.
        example_inputs: a tensor or tuple of tensors; when given, output shapes are recorded per op
            (``torch.fx`` ShapeProp) and shown in the text form.
        concrete_args: fixed values for inputs that decide control flow (passed to ``fx.Tracer.trace``).
        leaf_modules: module classes or qualified names kept as opaque calls (not traced into).

    Returns:
        IR with every compressible weight in state ``dense``.

    Raises:
        TracingError: data-dependent control flow, a tracing failure, or hooks/parametrizations that tracing
            would silently drop; the message names the construct and the workarounds.
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"dccomp can compile torch.nn.Module objects, got {type(model).__name__}")
    _refuse_hooks(model)
    model = copy.deepcopy(model)
    gm = _symbolic_trace(model, concrete_args, tuple(leaf_modules))
    shapes: list[tuple[int, ...]] = []
    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        shapes = [tuple(t.shape) for t in example_inputs]
        try:
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints tracebacks
                ShapeProp(gm).propagate(*example_inputs)
        except Exception as e:  # a wrong example input is the user's error: say so, with the root cause only
            root = e
            while root.__cause__ is not None:
                root = root.__cause__
            lines = [ln for ln in str(root).splitlines() if ln.strip()]
            why = lines[-1].strip() if lines else type(root).__name__
            raise TracingError(f"running {type(model).__name__} on example_inputs of shape "
                               f"{', '.join(str(list(s)) for s in shapes)} failed: {why}. "
                               "Pass inputs the model accepts (for the CLI: --input-shape or --data).") from e
    ir = build_ir(gm, type(model).__name__)
    ir.input_shapes = shapes
    return ir
