"""Build dccomp's IR from a PyTorch model, captured with ``torch.fx`` or ``torch.export`` (see :mod:`dccomp.capture`).

Capture works on a deep copy: the user's model is never modified. networkx holds the graph analyses (which
parameters feed which op, layer order, parameters shared by several ops); :mod:`dccomp.classify` decides which
parameters are compressible weights.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import io
import warnings
from typing import Any, Iterable, Mapping, Sequence

import networkx as nx
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

from .capture import CAPTURES, export_capture, fx_capture
from .classify import COMPRESSIBLE_MODULES, LAYER_KINDS, dense_reason, module_weight_kind, op_weight_uses
from .errors import TracingError
from .ir import IR, DenseParam, Op, Weight

__all__ = ["trace", "build_ir", "COMPRESSIBLE_MODULES", "LAYER_KINDS"]


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


def _target_str(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_function":
        t = node.target
        if isinstance(t, torch._ops.OpOverload):  # aten.linear.default -> linear
            return t.__name__.split(".")[0] if "." in t.__name__ else t.__name__
        return getattr(t, "__name__", str(t))
    return str(node.target)


def _owner(modules: Mapping[str, nn.Module], root: nn.Module, pname: str) -> tuple[nn.Module | None, str]:
    """``(module holding parameter pname, its local name)``, looked up in the source model's modules."""
    if "." not in pname:
        return root, pname
    prefix, local = pname.rsplit(".", 1)
    return modules.get(prefix), local


def build_ir(gm: fx.GraphModule, name: str, source: nn.Module | None = None) -> IR:
    """Classify every parameter of ``gm`` and record the ops in topological order.

    Args:
        gm: the captured graph module (torch.fx or ``ExportedProgram.module()``).
        name: model name for the text form.
        source: the module ``gm`` was captured from (same parameter names); its module types decide what a
            parameter is (an exported graph keeps only plain containers). Defaults to ``gm``.

    Returns an IR whose compressible weights are all dense. Tied parameters (one tensor under several names)
    become one :class:`~dccomp.ir.Weight` with several users; its name is the first qualified name.
    """
    source = gm if source is None else source
    src_modules = dict(source.named_modules())
    canon: dict[int, str] = {}
    aliases: dict[str, str] = {}
    params_all = dict(gm.named_parameters(remove_duplicate=False))
    for pname, p in params_all.items():
        canon.setdefault(id(p), pname)
        aliases[pname] = canon[id(p)]

    g = nx.DiGraph()
    ops: list[Op] = []
    kinds: dict[str, list[str]] = {}  # canonical param -> kinds of its weight uses, graph order
    groups: dict[str, int] = {}
    reads: dict[str, list[str]] = {}  # canonical param -> ops reading it
    readers: dict[str, list[str]] = {}  # canonical param -> printable targets of the ops reading it
    via_attr: dict[str, set[str]] = {}  # op name -> canonical params it reads through get_attr nodes
    modules = dict(gm.named_modules())
    param_nodes = {n: aliases[str(n.target)] for n in gm.graph.nodes
                   if n.op == "get_attr" and str(n.target) in aliases}

    def shape_of(n: fx.Node) -> tuple[int, ...] | None:
        return tuple(params_all[str(n.target)].shape) if n in param_nodes else None

    def add_kind(full: str, kind: str, grp: int) -> None:
        kinds.setdefault(full, []).append(kind)
        groups.setdefault(full, grp)

    for node in gm.graph.nodes:
        op = Op(node.name, node.op, _target_str(node), [a.name for a in node.all_input_nodes])
        g.add_node(node.name)
        for a in node.all_input_nodes:
            g.add_edge(a.name, node.name)
        if node.op == "call_module":
            mod = modules[node.target]
            sub = dict(mod.named_modules())
            for local, p in mod.named_parameters(recurse=True, remove_duplicate=False):
                full = aliases[f"{node.target}.{local}"]
                reads.setdefault(full, []).append(node.name)
                readers.setdefault(full, []).append(str(type(mod).__name__))
                owner_name, _, leaf = local.rpartition(".")
                kind = module_weight_kind(sub.get(owner_name), leaf, p)
                if kind is not None and p.dim() >= 2:
                    op.weights.append(full)
                    add_kind(full, kind, int(getattr(sub.get(owner_name), "groups", 1) or 1))
                else:
                    op.params.append(full)
        for inp, kind, grp in op_weight_uses(node, shape_of):
            if inp in param_nodes:
                add_kind(param_nodes[inp], kind, grp)
        for inp in node.all_input_nodes:
            if inp in param_nodes:
                full = param_nodes[inp]
                reads.setdefault(full, []).append(node.name)
                readers.setdefault(full, []).append(op.target)
                via_attr.setdefault(node.name, set()).add(full)
        ops.append(op)
    # parameters read through get_attr (functional and exported graphs): a weight by op use, or by its owner
    for full in {f for fs in via_attr.values() for f in fs}:
        if full not in kinds:
            owner, local = _owner(src_modules, source, full)
            kind = module_weight_kind(owner, local, params_all[full])
            if kind is not None:
                add_kind(full, kind, int(getattr(owner, "groups", 1) or 1))
    order = {n: i for i, n in enumerate(nx.topological_sort(g))}

    weights: dict[str, Weight] = {}
    dense: list[DenseParam] = []
    for pname, p in gm.named_parameters():
        full = aliases[pname]
        users = sorted(set(reads.get(full, [])), key=lambda u: order.get(u, 0))
        ks = kinds.get(full, [])
        if ks and p.dim() >= 2:  # a tied weight takes the kind of its first use
            weights[full] = Weight(full, ks[0], users, groups=groups.get(full, 1))
        else:
            owner, local = _owner(src_modules, source, pname)
            dense.append(DenseParam(full, dense_reason(local, owner, p, readers.get(full, []), bool(ks))))
    for op in ops:
        for full in sorted(via_attr.get(op.name, ()), key=list(params_all).index):
            (op.weights if full in weights else op.params).append(full)
    ordered = dict(sorted(weights.items(), key=lambda kv: min((order.get(u, 0) for u in kv[1].users), default=0)))
    return IR(gm, ordered, dense, ops, name)


def _as_tuple(example_inputs: Any) -> tuple:
    if example_inputs is None:
        return ()
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def _placeholder_values(model: nn.Module, gm: fx.GraphModule, args: tuple, kwargs: dict) -> list[Any]:
    """Example values in the order of ``gm``'s placeholders (fx names them after forward's parameters)."""
    if not kwargs:
        return list(args)
    bound = inspect.signature(model.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return [bound.arguments.get(str(n.target)) for n in gm.graph.nodes if n.op == "placeholder"]


def _shape_prop(model: nn.Module, gm: fx.GraphModule, args: tuple, kwargs: dict, shapes: list) -> None:
    try:
        values = _placeholder_values(model, gm, args, kwargs)
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints tracebacks
            ShapeProp(gm).propagate(*values)
    except Exception as e:  # a wrong example input is the user's error: say so, with the root cause only
        root = e
        while root.__cause__ is not None:
            root = root.__cause__
        lines = [ln for ln in str(root).splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else type(root).__name__
        raise TracingError(f"running {type(model).__name__} on example_inputs of shape "
                           f"{', '.join(str(list(s)) for s in shapes)} failed: {why}. "
                           "Pass inputs the model accepts (for the CLI: --input-shape or --data).") from e


def trace(model: nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None, *,
          example_kwargs: Mapping[str, Any] | None = None, concrete_args: dict[str, Any] | None = None,
          leaf_modules: Iterable[type | str] = (), capture: str = "auto", dynamic_shapes: Any = None) -> IR:
    """Capture ``model`` (a deep copy of it) into dccomp's IR.

    Args:
        model: any ``nn.Module``.
        example_inputs: a tensor or tuple of positional inputs; ``example_kwargs``: keyword inputs
            (``{"attention_mask": tensor}``). With torch.fx they are optional and record output shapes per op
            (ShapeProp, shown in the text form); torch.export needs them.
        concrete_args: fixed values for inputs that decide control flow (``fx.Tracer.trace``; fx only).
        leaf_modules: module classes or qualified names kept as opaque calls (fx only).
        capture: ``"fx"`` (torch.fx symbolic tracing), ``"export"`` (``torch.export.export(strict=False)``,
            eval mode) or ``"auto"`` (default): fx, falling back to torch.export when fx cannot trace the model
            (with a ``UserWarning`` saying so). The IR records which was used in ``ir.capture``.
        dynamic_shapes: passed to ``torch.export.export`` (e.g. ``{"x": {1: torch.export.Dim("seq")}}`` for a
            dynamic sequence length); fx graphs are shape-generic and ignore it.

    Returns:
        IR with every compressible weight in state ``dense``; ``ir.capture`` is ``"fx"`` or ``"export"``.

    Raises:
        TracingError: fx cannot trace the model (data-dependent control flow, iteration over traced values,
            ``*args``/``**kwargs``...) and export is not chosen or fails; export without example inputs; wrong
            example inputs; hooks or parametrizations. The message names the construct and the workarounds.
        TypeError: ``model`` is not an ``nn.Module``. ValueError: unknown ``capture``, or fx-only options
            (``concrete_args``, ``leaf_modules``) with ``capture="export"``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"dccomp can compile torch.nn.Module objects, got {type(model).__name__}")
    if capture not in CAPTURES:
        raise ValueError(f"capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    if capture == "export" and (concrete_args or tuple(leaf_modules)):
        raise ValueError("concrete_args and leaf_modules apply to torch.fx tracing only; with capture='export' "
                         "give example inputs (and dynamic_shapes=) instead, or use capture='fx'")
    _refuse_hooks(model)
    name = type(model).__name__
    model = copy.deepcopy(model)
    args, kwargs = _as_tuple(example_inputs), dict(example_kwargs or {})
    tensors = [t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)]
    shapes = [tuple(t.shape) for t in tensors]
    used = capture
    if capture == "export":
        gm = export_capture(model, args, kwargs, dynamic_shapes)
    else:
        try:
            gm = fx_capture(model, concrete_args, tuple(leaf_modules))
            used = "fx"
        except TracingError as e:
            if capture == "fx":
                raise
            if not args and not kwargs:
                raise TracingError(f"{e} With capture='auto' dccomp falls back to torch.export, which needs "
                                   "example inputs: pass example_inputs= (and example_kwargs=).") from e
            try:
                gm = export_capture(model, args, kwargs, dynamic_shapes)
            except TracingError as e2:
                raise TracingError(f"{e} Falling back to torch.export failed too: {e2}") from e2
            used = "export"
            warnings.warn(f"torch.fx could not trace {name}, so it was captured with torch.export "
                          f"(ir.capture == 'export'); fx said: {str(e)[:300]}", UserWarning, stacklevel=2)
        if used == "fx" and (args or kwargs):
            _shape_prop(model, gm, args, kwargs, shapes)
    ir = build_ir(gm, name, source=model)
    ir.input_shapes = shapes
    ir.capture = used
    return ir
