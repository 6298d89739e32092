"""Graph capture: ``torch.fx`` symbolic tracing, or ``torch.export`` (non-strict), into an ``fx.GraphModule``.

Both give a GraphModule whose parameters keep the user's qualified names (``fc1.weight``), so the ``.dcc`` file
and ``dccomp.load(path, model=M())`` see the names of ``M().state_dict()``.

- ``fx``: ``torch.fx`` symbolic tracing (no example inputs needed; shape-generic graph; ``torch.nn`` modules such
  as ``nn.MultiheadAttention``/``nn.LSTM`` stay one call). Fails on data-dependent control flow and iteration
  over traced values, and cannot trace ``*args``/``**kwargs`` forwards faithfully.
- ``export``: ``torch.export.export(model, args, kwargs=..., strict=False, dynamic_shapes=...)`` then
  ``ExportedProgram.module()``: an aten-level graph specialised to the example inputs (except the dimensions
  declared dynamic), captured in eval mode (dropout off, BatchNorm on running statistics).
"""
from __future__ import annotations

import inspect
import traceback
import warnings
from typing import Any, Sequence

import torch
from torch import fx, nn

from .errors import TracingError

__all__ = ["CAPTURES", "fx_capture", "export_capture", "var_args_problem"]

#: accepted values of ``capture=``.
CAPTURES = ("auto", "fx", "export")

_WORKAROUNDS = (
    "Workarounds: pass concrete_args={name: value} to fix the input that decides it; list the submodule in "
    "leaf_modules=[...] so it is kept as one opaque call; rewrite the branch without Python control flow "
    "on tensors (e.g. torch.where); or capture with torch.export (capture='export' with example_inputs=)."
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


def _user_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        if "/torch/" not in fr.filename and not fr.filename.endswith(("dccomp/trace.py", "dccomp/capture.py")):
            return f"{fr.filename}:{fr.lineno}: {(fr.line or '').strip()}"
    return "unknown location"


def var_args_problem(model: nn.Module) -> str | None:
    """Why torch.fx cannot trace ``model.forward`` faithfully (a ``*args``/``**kwargs`` parameter), else ``None``.

    fx passes ``**kwargs`` as one opaque traced value: ``kwargs.get("x") is not None`` is then always true and
    the graph silently computes the wrong branch, so such forwards are captured with torch.export instead.
    """
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    var = [p for p in params if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if not var:
        return None
    names = ", ".join(("**" if p.kind == p.VAR_KEYWORD else "*") + p.name for p in var)
    return (f"{type(model).__name__}.forward takes {names}, which torch.fx traces as one opaque value (a lookup "
            "such as kwargs.get(...) would always look present, so the graph could compute the wrong branch)")


def fx_capture(model: nn.Module, concrete_args: dict | None, leaf_modules: Sequence[type | str]) -> fx.GraphModule:
    """Trace ``model`` with ``torch.fx``; raises :class:`TracingError` naming the construct that failed."""
    name = type(model).__name__
    problem = var_args_problem(model)
    if problem:
        raise TracingError(f"torch.fx cannot trace {name}: {problem}. Capture it with torch.export "
                           "(capture='export' or 'auto', with example_inputs=/example_kwargs=).")
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except (fx.proxy.TraceError, TypeError, RuntimeError, AssertionError, ValueError, AttributeError,
            NotImplementedError) as e:
        msg = str(e)
        where = _user_frame(e)
        if "symbolically traced variables cannot be used as inputs to control flow" in msg:
            construct = "data-dependent control flow (an if/while/assert/bool() on a traced tensor or its shape)"
        elif "Proxy object cannot be iterated" in msg or "Proxy' object is not iterable" in msg:
            construct = ("iteration over a traced value (a for loop, tuple unpacking, len(), or a *args/**kwargs "
                         "call built from a traced value)")
        else:
            construct = f"{type(e).__name__} raised while tracing"
        raise TracingError(f"torch.fx cannot trace {name}: {construct} at {where}. {_WORKAROUNDS} "
                           f"(fx said: {msg})") from e
    gm = fx.GraphModule(tracer.root, graph, name)
    _restore_state(gm, model)
    return gm


def _restore_state(gm: fx.GraphModule, root: nn.Module) -> None:
    """Make ``gm.state_dict()`` hold exactly ``root``'s names: fx copies only the attributes the graph reads
    (an unused parameter would be missing from the .dcc file) and re-registers buffers it copies as persistent
    (a non-persistent buffer would be saved, and ``dccomp.load(path, model=M())`` would refuse the file)."""
    have = {n for n, _ in gm.named_parameters(remove_duplicate=False)}
    have |= {n for n, _ in gm.named_buffers(remove_duplicate=False)}
    non_persistent = {f"{m}.{b}" if m else b for m, mod in root.named_modules(remove_duplicate=False)
                      for b in mod._non_persistent_buffers_set}
    tensors = list(root.named_parameters(remove_duplicate=False)) + list(root.named_buffers(remove_duplicate=False))
    for qual, t in tensors:
        prefix, _, local = qual.rpartition(".")
        owner: nn.Module = gm
        for part in prefix.split(".") if prefix else []:
            if not isinstance(getattr(owner, part, None), nn.Module):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        if qual not in have:
            if isinstance(t, nn.Parameter):
                owner.register_parameter(local, t)
            else:
                owner.register_buffer(local, t, persistent=qual not in non_persistent)
        elif qual in non_persistent:
            owner._non_persistent_buffers_set.add(local)


def _export_error(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("For more information", "The error above occurred",
                                                     "If you would like"))]
    return " ".join(keep[:4])[:600] or type(e).__name__


def _export_batch_dynamic(export, model: nn.Module, args: tuple, kwargs: dict[str, Any]):
    """Export with the leading (batch) dimension of every tensor input, positional or keyword, dynamic
    (``Dim.AUTO``), so the captured model runs at any batch size like the user's module; ``None`` if the model
    does not allow it (then the caller exports with static shapes). A batch of 1 is doubled for the capture
    only: torch.export specializes size-1 dimensions."""
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    if not tensors or any(a.dim() == 0 for a in tensors) or not all(isinstance(a, torch.Tensor) for a in args):
        return None
    batch = {int(a.shape[0]) for a in tensors}
    if len(batch) != 1:  # inputs with different leading dims: not one batch dimension
        return None
    wide = (lambda a: torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.shape[0] == 1 else a)
    spec = (lambda a: {0: torch.export.Dim.AUTO} if isinstance(a, torch.Tensor) else None)
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    dyn = {}
    for name, value in bound.arguments.items():
        kind = inspect.signature(model.forward).parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            dyn[name] = {k: spec(v) for k, v in value.items()}
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            dyn[name] = tuple(spec(v) for v in value)
        else:
            dyn[name] = spec(value)
    try:
        return export(tuple(wide(a) for a in args), dyn, {k: wide(v) for k, v in kwargs.items()})
    except Exception:  # noqa: BLE001 - a model with a fixed batch size: static capture instead
        return None


def export_capture(model: nn.Module, args: tuple, kwargs: dict[str, Any], dynamic_shapes: Any = None
                   ) -> fx.GraphModule:
    """Capture ``model`` (put in eval mode) with ``torch.export.export(..., strict=False)`` and return
    ``ExportedProgram.module()``, whose parameters keep their qualified names. Without ``dynamic_shapes`` (and
    when all tensor inputs share their first dimension) the batch dimension is captured dynamic when the model
    allows it.

    Raises:
        TracingError: no example inputs, export failed (its message, shortened), or the captured module's
            parameter names differ from the model's.
    """
    name = type(model).__name__
    if not args and not kwargs:
        raise TracingError(f"capturing {name} with torch.export needs example inputs: pass example_inputs=(tensor, "
                           "...) and/or example_kwargs={name: tensor} (for the CLI: --input-shape or --data)")
    model.eval()

    def export(a, dyn, kw=kwargs):
        with warnings.catch_warnings():  # RNN modules re-assign _flat_weights during export (harmless)
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*were assigned during export")
            return torch.export.export(model, tuple(a), kwargs=dict(kw) or None, strict=False,
                                       dynamic_shapes=dyn)

    try:
        ep = _export_batch_dynamic(export, model, args, kwargs) if dynamic_shapes is None else None
        if ep is None:
            ep = export(args, dynamic_shapes)
    except Exception as e:  # export raises many types; all mean "this model/input cannot be exported"
        raise TracingError(f"torch.export failed to capture {name}: {_export_error(e)} (at {_user_frame(e)}). "
                           "Check example_inputs/example_kwargs and dynamic_shapes "
                           "(e.g. {'x': {1: torch.export.Dim('seq', min=2)}}).") from e
    gm = ep.module()
    want = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    got = {n for n, _ in gm.named_parameters(remove_duplicate=False)}
    if want != got:
        raise TracingError(f"torch.export renamed parameters of {name}: missing {sorted(want - got)[:5]}, "
                           f"new {sorted(got - want)[:5]}; the .dcc file needs the model's own names. "
                           "Use capture='fx' if the model traces with torch.fx.")
    return gm
