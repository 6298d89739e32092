"""``dccomp.compile``: capture, run the pipeline, lower with a backend. Works on a copy of the user's model."""
from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from . import dist
from .ir import IR
from .manager import PassManager
from .pass_infra import Pass, PassContext
from .registry import get_backend
from .sync import carry_model_state, sync_live_state
from .trace import trace
from .train import Trainer

__all__ = ["compile", "CompiledModel"]


class CompiledModel(nn.Module):
    """A compressed model: callable like the original module.

    Attributes:
        ir: the compressed IR (``print(compiled.ir)`` shows its text form).
        backend: the backend name; ``lowered`` the backend's executable module (the torch backend's
            ``GraphModule``; the TVM backend's ``LoweredModule``, whose ``repr`` lists each layer's kernel).
        records: per-pass measurements (``{"retrain#2": {"eval_accuracy": ...}}``).

    Its parameters (``compiled.parameters()``, the torch backend's copy of the graph) may be changed; what the
    ``.dcc`` file can hold exactly is taken over by :meth:`sync_state` before :meth:`save` and :meth:`report`, and
    a change that breaks a weight's compression state raises :class:`~dccomp.errors.StaleStateError`.
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

    def __getattr__(self, name: str):
        if name == "lowered" and "_lowered_fn" in self.__dict__:  # a backend module that is not an nn.Module
            return self.__dict__["_lowered_fn"]
        return super().__getattr__(name)

    def extra_repr(self) -> str:
        lowered = self.__dict__.get("_lowered_fn")
        return f"backend={self.backend!r}" + (f"\n{lowered!r}" if lowered is not None else "")

    def sync_state(self) -> list[str]:
        """Take the live parameters and buffers into the IR where the file can hold them exactly (raw tensors,
        dense weights, surviving values of pruned weights); returns the names taken. Raises
        :class:`~dccomp.errors.StaleStateError` naming the layers whose pruned entries left 0 or whose clustered
        weights left their centroids (see :func:`dccomp.sync.sync_live_state`)."""
        if "lowered" not in self._modules:
            return []
        return sync_live_state(self.ir, self.lowered)

    def restore_compressed(self) -> None:
        """Discard changes made to the live parameters since compilation (or the last :meth:`sync_state`)."""
        if "lowered" in self._modules:
            own = self.lowered.state_dict(keep_vars=True)
            with torch.no_grad():
                for name, t in self.ir.gm.state_dict().items():
                    if name in own:
                        own[name].data = t.detach().clone().to(own[name].device)

    def forward(self, *args, **kwargs):
        fn = self.lowered if "lowered" in self._modules else self._lowered_fn
        return fn(*args, **kwargs)

    def report(self):
        """Per-layer size table in the paper's columns (Tables 2/3); totals equal the saved file's bytes.
        Returns a :class:`dccomp.report.SizeReport` (``str()`` renders the table, ``.to_dict()`` for JSON)."""
        from .report import size_report

        self.sync_state()
        return size_report(self.ir)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> int:
        """Write the ``.dcc`` file atomically; returns its size in bytes. See :func:`dccomp.save` (which files
        it replaces, ``overwrite``, and the :class:`~dccomp.errors.StaleStateError` check)."""
        from .format import save

        return save(self, path, overwrite=overwrite)


def compile(model: nn.Module | IR | CompiledModel, passes: str | Pass | Sequence[Pass | str] = (), *,
            example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
            example_kwargs: dict[str, Any] | None = None, capture: str = "auto", dynamic_shapes: Any = None,
            concrete_args: dict[str, Any] | None = None, leaf_modules: Iterable[type | str] = (),
            backend: str = "torch", target: Any = None, train_data: Any = None, eval_data: Any = None,
            loss: Callable | None = None, trainer: Trainer | None = None, verify: bool | None = None,
            instruments: Sequence[Any] = (), seed: int | None = None, backend_options: dict | None = None,
            teacher: nn.Module | None = None, recipe: str | os.PathLike | Any = None) -> CompiledModel:
    """Compress ``model`` with ``passes`` and lower it with ``backend``.

    Args:
        model: an ``nn.Module`` (captured with torch.fx or torch.export; the user's module is never modified), or
            an ``IR`` /
            ``CompiledModel`` already compressed (e.g. to lower it with another backend).
        passes: pass objects or pipeline text, e.g.
            ``"prune{sparsity=0.9},retrain{epochs=1},cluster{bits=5},retrain{epochs=1},huffman"`` or
            ``"deep-compression"``.
        example_inputs: tensor(s) used to record shapes (and by backends that need them); ``example_kwargs``
            keyword inputs. torch.export needs at least one of them.
        capture: ``"auto"`` (torch.fx, falling back to torch.export with a warning), ``"fx"`` or ``"export"``;
            ``dynamic_shapes`` goes to ``torch.export.export``. See :func:`dccomp.trace.trace`.
        concrete_args, leaf_modules: forwarded to :func:`dccomp.trace.trace` (torch.fx only).
        backend: registered backend name (``torch``, ``tvm``); ``target`` and ``backend_options`` go to it.
        train_data, eval_data, loss: data for ``retrain`` (Dataset, DataLoader, batches, or ``(X, y)``);
            or give a ready ``trainer``.
        verify: run the IR verifier before and after every pass (default: no, or the recipe's ``verify``).
        instruments: instrument objects (see :mod:`dccomp.instruments`).
        seed: base seed (default 0, or the recipe's); the same inputs and seed give the same compressed model and
            file bytes.
        teacher: model to distil from (``retrain{distill=...}``); by default a frozen copy of the model as it
            was before the pipeline, made only when a pass needs one. A given teacher is copied, not modified.
        recipe: a recipe file (YAML) or :class:`dccomp.recipe.Recipe` instead of ``passes``: its pipeline, and its
            training settings (``data``, ``batch_size``, ``seed``, ``verify``, ...) where the call gives none;
            see :func:`dccomp.recipe.recipe_compile_settings`.

    Under ``torch.distributed`` (more than one rank; every rank calls ``compile`` with the same arguments) a
    pipeline that retrains runs data-parallel: rank 0's model is copied to all ranks first, each rank trains on
    its shard of every batch with gradients all-reduced (:mod:`dccomp.dist`), and the ranks' weights, masks,
    codebooks and cluster indices are checked identical at the end (``RuntimeError`` otherwise).

    Returns:
        CompiledModel, in the mode (``training``) ``model`` was in: a model left in training mode gives a compiled
        model in training mode (dropout active, batch norm on batch statistics); call ``.eval()`` for inference.
        Its IR (and file) holds the model's whole ``state_dict``, entries the forward pass never reads included.

    Raises:
        TracingError, PassError, PipelineSyntaxError, RegistryError, VerificationError, RecipeError: see their
        docs; on any error the user's model is left as it was. TypeError: both ``passes`` and ``recipe``.
    """
    if recipe is not None:
        from .recipe import recipe_compile_settings

        r = recipe_compile_settings(recipe, passes, example_inputs=example_inputs, example_kwargs=example_kwargs,
                                    train_data=train_data, eval_data=eval_data, loss=loss, trainer=trainer,
                                    seed=seed, verify=verify)
        passes, example_inputs, trainer, seed, verify = (r["passes"], r["example_inputs"], r["trainer"], r["seed"],
                                                         r["verify"])
    seed, verify = (0 if seed is None else seed), bool(verify)
    if isinstance(model, CompiledModel):
        model.sync_state()
        ir = model.ir.clone()
    elif isinstance(model, IR):
        ir = model.clone()
    else:
        ir = trace(model, example_inputs, example_kwargs=example_kwargs, concrete_args=concrete_args,
                   leaf_modules=leaf_modules, capture=capture, dynamic_shapes=dynamic_shapes)
        carry_model_state(ir, model)
    if trainer is None and (train_data is not None or eval_data is not None):
        trainer = Trainer(train_data, eval_data, loss)
    manager = PassManager(passes, verify=verify)
    trains = dist.active() and any(p.needs_training_data() for p in manager.passes)
    if trains:  # data-parallel retraining (dccomp.dist): every rank compresses rank 0's model
        dist.broadcast_module(ir.gm)
    if teacher is None and any(getattr(p, "needs_teacher", False) for p in manager.passes):
        teacher = ir.gm
    if teacher is not None:
        with warnings.catch_warnings():  # torch's pytree specs of exported graphs warn when deep-copied
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    ctx = PassContext(trainer=trainer, seed=seed, instruments=list(instruments), teacher=teacher)
    torch.manual_seed(seed)
    ir = manager.run(ir, ctx)
    if trains:
        dist.check_replicated(dist.compression_state(ir), "compression state (weight, mask, codebook, index) tensor")
    if backend_options is not None and not isinstance(backend_options, dict):
        raise TypeError(f"backend_options must be a dict of the backend's options, e.g. {{'weights': 'small'}}; "
                        f"got {type(backend_options).__name__}")
    opts = dict(backend_options or {})
    if target is not None:
        opts["target"] = target
    if example_inputs is not None and backend != "torch":
        opts.setdefault("example_inputs", example_inputs)
    lowered = get_backend(backend)().lower(ir, **opts)
    compiled = CompiledModel(ir, lowered, backend, ctx.records)
    return compiled.train(model.training if isinstance(model, nn.Module) else False)
