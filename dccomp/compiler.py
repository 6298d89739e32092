"""``dccomp.compile``: trace, run the pipeline, lower with a backend. Works on a copy of the user's model."""
from __future__ import annotations

import copy
import os
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .ir import IR
from .manager import PassManager
from .pass_infra import Pass, PassContext
from .registry import get_backend
from .trace import trace
from .train import Trainer

__all__ = ["compile", "CompiledModel"]


class CompiledModel(nn.Module):
    """A compressed model: callable like the original module.

    Attributes:
        ir: the compressed IR (``print(compiled.ir)`` shows its text form).
        backend: the backend name; ``lowered`` the backend's executable module.
        records: per-pass measurements (``{"retrain#2": {"eval_accuracy": ...}}``).
    """

    def __init__(self, ir: IR, lowered: Callable, backend: str, records: dict | None = None):
        super().__init__()
        self.ir = ir
        self.backend = backend
        self.records = records or {}
        if isinstance(lowered, nn.Module):
            self.lowered = lowered
        else:
            self._lowered_fn = lowered

    def forward(self, *args, **kwargs):
        fn = self.lowered if "lowered" in self._modules else self._lowered_fn
        return fn(*args, **kwargs)

    def report(self):
        """Per-layer size table in the paper's columns (Tables 2/3); totals equal the saved file's bytes.
        Returns a :class:`dccomp.report.SizeReport` (``str()`` renders the table, ``.to_dict()`` for JSON)."""
        from .report import size_report

        return size_report(self.ir)

    def save(self, path: str | os.PathLike) -> int:
        """Write the ``.dcc`` file atomically; returns its size in bytes. See :func:`dccomp.save`."""
        from .format import save

        return save(self, path)


def compile(model: nn.Module | IR | CompiledModel, passes: str | Pass | Sequence[Pass | str] = (), *,
            example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
            concrete_args: dict[str, Any] | None = None, leaf_modules: Iterable[type | str] = (),
            backend: str = "torch", target: Any = None, train_data: Any = None, eval_data: Any = None,
            loss: Callable | None = None, trainer: Trainer | None = None, verify: bool = False,
            instruments: Sequence[Any] = (), seed: int = 0, backend_options: dict | None = None,
            teacher: nn.Module | None = None) -> CompiledModel:
    """Compress ``model`` with ``passes`` and lower it with ``backend``.

    Args:
        model: an ``nn.Module`` (traced with torch.fx; the user's module is never modified), or an ``IR`` /
            ``CompiledModel`` already compressed (e.g. to lower it with another backend).
        passes: pass objects or pipeline text, e.g.
            ``"prune{sparsity=0.9},retrain{epochs=1},cluster{bits=5},retrain{epochs=1},huffman"`` or
            ``"deep-compression"``.
        example_inputs: tensor(s) used to record shapes (and by backends that need them).
        concrete_args, leaf_modules: forwarded to :func:`dccomp.trace.trace`.
        backend: registered backend name (``torch``, ``tvm``); ``target`` and ``backend_options`` go to it.
        train_data, eval_data, loss: data for ``retrain`` (Dataset, DataLoader, batches, or ``(X, y)``);
            or give a ready ``trainer``.
        verify: run the IR verifier before and after every pass.
        instruments: instrument objects (see :mod:`dccomp.instruments`).
        seed: base seed; the same inputs and seed give the same compressed model and file bytes.
        teacher: model to distil from (``retrain{distill=...}``); by default a frozen copy of the model as it
            was before the pipeline, made only when a pass needs one. A given teacher is copied, not modified.

    Returns:
        CompiledModel.

    Raises:
        TracingError, PassError, PipelineSyntaxError, RegistryError, VerificationError: see their docs; on any
        error the user's model is left as it was.
    """
    if isinstance(model, CompiledModel):
        ir = model.ir.clone()
    elif isinstance(model, IR):
        ir = model.clone()
    else:
        ir = trace(model, example_inputs, concrete_args=concrete_args, leaf_modules=leaf_modules)
    if trainer is None and (train_data is not None or eval_data is not None):
        trainer = Trainer(train_data, eval_data, loss)
    manager = PassManager(passes, verify=verify)
    if teacher is None and any(getattr(p, "needs_teacher", False) for p in manager.passes):
        teacher = ir.gm
    if teacher is not None:
        teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    ctx = PassContext(trainer=trainer, seed=seed, instruments=list(instruments), teacher=teacher)
    torch.manual_seed(seed)
    ir = manager.run(ir, ctx)
    opts = dict(backend_options or {})
    if target is not None:
        opts["target"] = target
    if example_inputs is not None and backend != "torch":
        opts.setdefault("example_inputs", example_inputs)
    lowered = get_backend(backend)().lower(ir, **opts)
    return CompiledModel(ir, lowered, backend, ctx.records)
